//! Integration config: `GET/PUT /api/v2/integrations/{integrationId}/config/current`.
//!
//! A PUT must carry the config's current `version`; a stale one is refused with a conflict. PUT is
//! idempotent by method, and with the version it is a conditional write as well, so the retry
//! layer may replay it after an ambiguous failure. When the first copy had landed, the replay
//! meets a version conflict: the config is then read again, and if it already holds what was
//! sent, the write is done and the stored config is returned.

use http::Method;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::client::{GenesysClient, segment};
use crate::error::GenesysError;

/// The current config of an integration.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[non_exhaustive]
pub struct IntegrationConfig {
    /// The config's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// The version; a PUT must send the current one.
    #[serde(default)]
    pub version: u64,
    /// The integration type's properties (for `amazon-eventbridge-source`: `awsAccountId`,
    /// `awsAccountRegion`, `eventSourceSuffix`, `eventFilter`).
    #[serde(default)]
    pub properties: Value,
    /// Advanced settings.
    #[serde(default)]
    pub advanced: Value,
    /// Notes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub notes: Option<String>,
    /// Credential references.
    #[serde(default)]
    pub credentials: Value,
    /// Every other field, as sent.
    #[serde(flatten)]
    pub other: Map<String, Value>,
}

impl GenesysClient {
    /// `GET /api/v2/integrations/{id}/config/current`.
    pub async fn get_integration_config(
        &self,
        integration_id: &str,
    ) -> Result<IntegrationConfig, GenesysError> {
        let path = format!(
            "/api/v2/integrations/{}/config/current",
            segment(integration_id)
        );
        self.json(Method::GET, &path, None, None).await
    }

    /// `PUT /api/v2/integrations/{id}/config/current` with `config`, whose `version` must be the
    /// current one (read it with [`get_integration_config`](Self::get_integration_config)).
    /// Returns the config as stored, with its new version.
    pub async fn put_integration_config(
        &self,
        integration_id: &str,
        config: &IntegrationConfig,
    ) -> Result<IntegrationConfig, GenesysError> {
        let path = format!(
            "/api/v2/integrations/{}/config/current",
            segment(integration_id)
        );
        let body = serde_json::to_value(config)
            .map_err(|e| GenesysError::Config(format!("the config is not JSON: {e}")))?;
        match self.json(Method::PUT, &path, Some(&body), None).await {
            Err(GenesysError::Api(e)) if e.is_version_conflict() => {
                // Our own earlier copy may be the write that moved the version on.
                let current = self.get_integration_config(integration_id).await?;
                if current.same_content(config) {
                    tracing::debug!(
                        integration = integration_id,
                        "conflict, and the config already holds what was sent"
                    );
                    Ok(current)
                } else {
                    Err(GenesysError::Api(e))
                }
            }
            other => other,
        }
    }
}

impl IntegrationConfig {
    /// Whether two configs hold the same settings, whatever their versions (and the fields the
    /// server adds).
    fn same_content(&self, other: &IntegrationConfig) -> bool {
        self.name == other.name
            && self.properties == other.properties
            && self.advanced == other.advanced
            && self.notes == other.notes
            && self.credentials == other.credentials
    }
}
