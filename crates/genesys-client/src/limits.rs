//! Organization limits: `GET /api/v2/organizations/limits/namespaces/{namespace}`.

use std::fmt;
use std::time::Duration;

use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::builder::GenesysClientBuilder;
use crate::client::{GenesysClient, segment};
use crate::error::GenesysError;
use genesys_tower::Metrics;

/// The namespace that holds the Platform API's request limits.
pub const PLATFORM_API_NAMESPACE: &str = "platform.api";
/// The key of the request rate per client-credentials token, per minute (default 300).
pub const TOKEN_RATE_PER_MINUTE: &str = "client.credentials.token.rate.per.minute";

/// The limits of one namespace: the API's `LimitsEntityListing` (`{"entities": [{"key",
/// "namespace", "value"}], "pageSize", ...}`); an older `{"namespace", "limits": [...]}` shape is
/// read too.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct NamespaceLimits {
    /// The namespace (empty in a listing: each limit names its own).
    pub namespace: String,
    /// Its limits (`entities` in the listing).
    #[serde(alias = "entities")]
    pub limits: Vec<Limit>,
}

/// One limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Limit {
    /// The limit's key, such as `client.credentials.token.rate.per.minute`.
    pub key: String,
    /// The limit's namespace, such as `platform.api`.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub namespace: String,
    /// Its value.
    pub value: Value,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl NamespaceLimits {
    /// The numeric value of the limit named `key`.
    pub fn value_of(&self, key: &str) -> Option<f64> {
        self.limits
            .iter()
            .find(|l| l.key == key)
            .and_then(|l| match &l.value {
                Value::Number(n) => n.as_f64(),
                Value::String(s) => s.trim_matches(|c| c == ' ' || c == '\t').parse().ok(),
                _ => None,
            })
    }

    /// The pacing that the limit named `key` allows per `window`: see [`pacing_from_limit`].
    /// `None` when the limit is absent; an error (with a message) when its value cannot pace.
    pub fn pacing_for(
        &self,
        key: &str,
        window: Duration,
    ) -> Option<Result<(u64, Duration), InvalidLimit>> {
        self.limits.iter().find(|l| l.key == key)?;
        Some(match self.value_of(key) {
            Some(v) => pacing_from_limit(key, v, window),
            None => Err(InvalidLimit(format!("the limit `{key}` is not a number"))),
        })
    }
}

/// A limit value that cannot be used for pacing, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InvalidLimit(String);

impl fmt::Display for InvalidLimit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InvalidLimit {}

/// Turns a limit's value (requests per `window`) into a pacing rate.
///
/// A value below 1 (or not finite) is refused with a message: less than one request per window
/// cannot be paced. A fractional value is rounded down; one beyond `u64` is cut to `u64::MAX`.
///
/// ```
/// use std::time::Duration;
/// use genesys_client::limits::pacing_from_limit;
///
/// let minute = Duration::from_secs(60);
/// assert_eq!(pacing_from_limit("k", 300.0, minute), Ok((300, minute)));
/// assert!(pacing_from_limit("k", 0.5, minute).is_err());
/// ```
pub fn pacing_from_limit(
    key: &str,
    value: f64,
    window: Duration,
) -> Result<(u64, Duration), InvalidLimit> {
    if window.is_zero() {
        return Err(InvalidLimit(format!("the limit `{key}` has a window of 0")));
    }
    if !value.is_finite() || value < 1.0 {
        return Err(InvalidLimit(format!(
            "the limit `{key}` is {value}, less than one request per {} s: it cannot pace \
             requests",
            window.as_secs_f64()
        )));
    }
    // `as` saturates: a value beyond u64 becomes u64::MAX.
    Ok((value.floor() as u64, window))
}

impl GenesysClient {
    /// The org's limits in `namespace` (`platform.api`, ...).
    pub async fn organization_limits(
        &self,
        namespace: &str,
    ) -> Result<NamespaceLimits, GenesysError> {
        let path = format!(
            "/api/v2/organizations/limits/namespaces/{}",
            segment(namespace)
        );
        let mut limits: NamespaceLimits = self.json(Method::GET, &path, None, None).await?;
        if limits.namespace.is_empty() {
            limits.namespace = namespace.to_owned();
        }
        Ok(limits)
    }
}

impl GenesysClientBuilder {
    /// Reads the org's own rate limit (`client.credentials.token.rate.per.minute` in the
    /// `platform.api` namespace of `GET /api/v2/organizations/limits/namespaces/{namespace}`)
    /// and paces the client by it, per 60 s. When the limit cannot be read (no permission, an
    /// older org, a proxy), the pacing stays as it was (300 per 60 s by default).
    ///
    /// It fetches a token and makes one request; refused credentials end it with
    /// [`GenesysError::OAuth`], and so does a token that cannot be had while the login host is
    /// unavailable ([`GenesysError::is_token_unavailable`], a transport error when the host
    /// cannot be reached): the client could send nothing either.
    pub async fn discover_limits(mut self) -> Result<Self, GenesysError> {
        let probe = self.clone().metrics(Metrics::new()).build()?;
        match probe.organization_limits(PLATFORM_API_NAMESPACE).await {
            Ok(limits) => {
                match limits.pacing_for(TOKEN_RATE_PER_MINUTE, Duration::from_secs(60)) {
                    Some(Ok((n, window))) => {
                        tracing::debug!(per_minute = n, "pacing from the org's limits");
                        self.org_pacing(n, window);
                    }
                    Some(Err(e)) => {
                        tracing::warn!(error = %e, "ignoring the org's limit; keeping the pacing")
                    }
                    None => tracing::warn!(
                        "the org's limits do not name {}; keeping the pacing",
                        TOKEN_RATE_PER_MINUTE
                    ),
                }
                Ok(self)
            }
            Err(e @ GenesysError::OAuth(_)) => Err(e),
            Err(e) if e.is_token_unavailable() => Err(e),
            // A proxy that refuses the tunnel would refuse the job's every request.
            Err(e) if e.is_proxy_refusal() => Err(e),
            Err(e) => {
                tracing::warn!(error = %e, "the org's limits could not be read; keeping the pacing");
                Ok(self)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_api_listing_and_the_older_shape_are_read() {
        let listing: NamespaceLimits = serde_json::from_str(
            r#"{"entities":[{"key":"client.credentials.token.rate.per.minute","namespace":"platform.api","value":450},
                {"key":"request.bytes.max","namespace":"platform.api","value":512000}],
               "pageSize":25,"pageNumber":1,"total":2,"pageCount":1}"#,
        )
        .unwrap();
        assert_eq!(listing.value_of(TOKEN_RATE_PER_MINUTE), Some(450.0));
        assert_eq!(listing.limits[0].namespace, "platform.api");
        let older: NamespaceLimits = serde_json::from_str(
            r#"{"namespace":"platform.api","limits":[{"key":"client.credentials.token.rate.per.minute","value":"300"}]}"#,
        )
        .unwrap();
        assert_eq!(older.value_of(TOKEN_RATE_PER_MINUTE), Some(300.0));
    }

    fn limits(value: Value) -> NamespaceLimits {
        NamespaceLimits {
            namespace: PLATFORM_API_NAMESPACE.into(),
            limits: vec![Limit {
                key: TOKEN_RATE_PER_MINUTE.into(),
                namespace: PLATFORM_API_NAMESPACE.into(),
                value,
                other: Map::new(),
            }],
        }
    }

    #[test]
    fn limits_below_one_are_refused_with_a_message() {
        let minute = Duration::from_secs(60);
        for v in [
            serde_json::json!(0.5),
            serde_json::json!(0),
            serde_json::json!(-3),
            serde_json::json!("0.9"),
            serde_json::json!("lots"),
            serde_json::json!(null),
        ] {
            let e = limits(v.clone())
                .pacing_for(TOKEN_RATE_PER_MINUTE, minute)
                .unwrap()
                .unwrap_err();
            assert!(e.to_string().contains(TOKEN_RATE_PER_MINUTE), "{v}: {e}");
        }
        assert_eq!(
            limits(serde_json::json!(1e30)).pacing_for(TOKEN_RATE_PER_MINUTE, minute),
            Some(Ok((u64::MAX, minute)))
        );
        assert_eq!(
            limits(serde_json::json!("40.7")).pacing_for(TOKEN_RATE_PER_MINUTE, minute),
            Some(Ok((40, minute)))
        );
        assert!(
            limits(serde_json::json!(1))
                .pacing_for("other", minute)
                .is_none()
        );
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(crate::fuzz_cases(4000)))]

        #[test]
        fn any_limits_body_is_read_without_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..96), v in proptest::num::f64::ANY) {
            if let Ok(l) = serde_json::from_slice::<NamespaceLimits>(&body) {
                let _ = l.pacing_for(TOKEN_RATE_PER_MINUTE, Duration::from_secs(60));
            }
            match pacing_from_limit("k", v, Duration::from_secs(60)) {
                Ok((n, _)) => proptest::prop_assert!(n >= 1),
                Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
            }
        }
    }
}
