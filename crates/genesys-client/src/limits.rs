//! Organization limits: `GET /api/v2/organizations/limits/namespaces/{namespace}`.

use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::client::{GenesysClient, segment};
use crate::error::GenesysError;

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
                Value::String(s) => s.trim().parse().ok(),
                _ => None,
            })
    }
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
}
