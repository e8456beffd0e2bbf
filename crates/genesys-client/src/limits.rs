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

/// The limits of one namespace.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct NamespaceLimits {
    /// The namespace.
    pub namespace: String,
    /// Its limits.
    pub limits: Vec<Limit>,
}

/// One limit.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default)]
#[non_exhaustive]
pub struct Limit {
    /// The limit's key, such as `client.credentials.token.rate.per.minute`.
    pub key: String,
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
        self.json(Method::GET, &path, None, None).await
    }
}
