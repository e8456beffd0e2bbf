//! What the client's token is: `GET /api/v2/tokens/me`.

use http::Method;
use serde::Deserialize;

use crate::client::GenesysClient;
use crate::error::GenesysError;

/// An entity of the API by its id (and its name, when given).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct NamedEntity {
    /// Its id.
    pub id: String,
    /// Its name.
    #[serde(default)]
    pub name: Option<String>,
}

/// What the API says of a token (its `TokenInfo`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[non_exhaustive]
pub struct TokenInfo {
    /// The organization the token acts in.
    #[serde(default)]
    pub organization: Option<NamedEntity>,
    /// The organization its user or client belongs to (another one for a trustee's token).
    #[serde(default, rename = "homeOrganization")]
    pub home_organization: Option<NamedEntity>,
    /// The OAuth client it was issued to.
    #[serde(default, rename = "OAuthClient")]
    pub oauth_client: Option<NamedEntity>,
}

impl GenesysClient {
    /// What the API says of the client's token (`GET /api/v2/tokens/me`): the organization it
    /// acts in, and the OAuth client it was issued to. Needs no permission.
    pub async fn token_info(&self) -> Result<TokenInfo, GenesysError> {
        self.json(Method::GET, "/api/v2/tokens/me", None, None)
            .await
    }
}
