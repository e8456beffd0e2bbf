//! The real deliverers: each job's unit of work sent through a [`GenesysClient`], and the client
//! built from the common flags and the environment.

use std::sync::Arc;

use genesys_client::{GenesysClient, GenesysClientBuilder, GenesysError, Region};
use genesys_tower::idempotency::{IdempotencyKey, MemoryStore};
use genesys_tower::retry::RetrySafety;
use http::{Method, Request, header};
use serde_json::Value;

use crate::cli::Common;
use crate::error::CliError;
use crate::job::Deliver;
use crate::records::UserUpdate;

/// The environment variable holding the OAuth client id.
pub(crate) const CLIENT_ID_VAR: &str = "GENESYS_CLIENT_ID";
/// The environment variable holding the OAuth client secret.
pub(crate) const CLIENT_SECRET_VAR: &str = "GENESYS_CLIENT_SECRET";

/// Reads the credentials from the environment, or says how to provide them (exit 2).
pub(crate) fn credentials() -> Result<(String, String), CliError> {
    let get = |name: &str| {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    };
    match (get(CLIENT_ID_VAR), get(CLIENT_SECRET_VAR)) {
        (Some(id), Some(secret)) => Ok((id, secret)),
        (id, secret) => {
            let missing: Vec<&str> = [
                (CLIENT_ID_VAR, id.is_none()),
                (CLIENT_SECRET_VAR, secret.is_none()),
            ]
            .into_iter()
            .filter_map(|(n, m)| m.then_some(n))
            .collect();
            Err(CliError::usage(format!(
                "no credentials: set {} to an OAuth client-credentials client of your org \
                 (Admin > Integrations > OAuth), or run `gcx demo` to try gcx without an account",
                missing.join(" and ")
            )))
        }
    }
}

/// The client builder from the common flags: `--region` or `--base-url` (and `--login-url`),
/// credentials from the environment, `--concurrency`, `--rate-limit`. It sends nothing: a
/// configuration error is found here, before anything else.
pub(crate) fn client_builder(common: &Common) -> Result<GenesysClientBuilder, CliError> {
    let (id, secret) = credentials()?;
    let mut builder = GenesysClient::builder()
        .client_credentials(id, secret)
        .max_in_flight(crate::app::concurrency(common))
        .idempotency_store(crate::deliver::small_store())
        .user_agent(concat!("gcx/", env!("CARGO_PKG_VERSION")));
    builder = match (&common.region, &common.base_url) {
        (Some(region), _) => {
            let region: Region = region.parse().map_err(|e| {
                CliError::usage(format!(
                    "--region {region}: {e}; use a name such as us-east-1 or eu-west-1, or a \
                     domain such as mypurecloud.ie"
                ))
            })?;
            builder.region(region)
        }
        (None, Some(url)) => builder.base_url(url.clone()),
        (None, None) => {
            return Err(CliError::usage(
                "no API to talk to: give --region (e.g. --region us-east-1) or --base-url URL",
            ));
        }
    };
    if let Some(login) = &common.login_url {
        builder = builder.login_url(login.clone());
    }
    if let Some(rate) = common.rate_limit {
        builder = builder.pacing(u64::from(rate.requests), rate.window);
    }
    Ok(builder)
}

/// Builds the client. Without `--rate-limit`, it paces by the org's own limit, read once from
/// `/api/v2/organizations/limits/namespaces/platform.api` (300 per 60 s when it cannot be read);
/// refused credentials end the run here, before any record is sent.
pub(crate) async fn build_client(
    builder: GenesysClientBuilder,
    common: &Common,
) -> Result<GenesysClient, CliError> {
    let builder = if common.rate_limit.is_none() {
        builder.discover_limits().await.map_err(|e| {
            CliError::usage(format!(
                "{e}; nothing was sent: check GENESYS_CLIENT_ID, GENESYS_CLIENT_SECRET and the \
                 region"
            ))
        })?
    } else {
        builder
    };
    builder
        .build()
        .map_err(|e| CliError::usage(format!("cannot set up the client: {e}")))
}

/// The idempotency store of a job's client. A bulk job makes each logical call once, so the
/// store only has to keep keys stable across retries and answer repeats within the run; a small
/// bound keeps memory flat however long the input (the default store may grow to 64 MiB).
pub(crate) fn small_store() -> MemoryStore {
    MemoryStore::with_capacity(1024 * 1024)
}

/// The reason a unit failed, as the report shows it.
pub(crate) fn reason(e: &GenesysError) -> String {
    e.to_string()
}

/// `gcx users patch`: one user a unit, through [`GenesysClient::update_user`] (GET the version,
/// PATCH, resolve conflicts).
#[derive(Debug, Clone)]
pub(crate) struct Users(pub(crate) GenesysClient);

impl Deliver for Users {
    type Item = UserUpdate;

    async fn deliver(&self, items: Vec<UserUpdate>) -> Result<(), String> {
        for u in items {
            self.0
                .update_user(&u.user_id, u.fields)
                .await
                .map_err(|e| reason(&e))?;
        }
        Ok(())
    }
}

/// FNV-1a 64: a stable, dependency-free fingerprint for idempotency keys.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// `gcx ingest`: one chunk a unit, one POST of a JSON array with an `Idempotency-Key` derived
/// from the chunk's content, so a retry (and a re-run of the same chunk) carries the same key and
/// the endpoint, which deduplicates by key, applies it once.
#[derive(Debug, Clone)]
pub(crate) struct Ingest {
    pub(crate) client: GenesysClient,
    pub(crate) path: Arc<str>,
}

impl Deliver for Ingest {
    type Item = Value;

    async fn deliver(&self, items: Vec<Value>) -> Result<(), String> {
        let body = serde_json::to_vec(&items).map_err(|e| e.to_string())?;
        let key = format!("gcx-ingest-{:016x}-{}", fnv1a(&body), items.len());
        let request = Request::builder()
            .method(Method::POST)
            .uri(&*self.path)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .extension(IdempotencyKey::new(key))
            .extension(RetrySafety::KeyHonoured)
            .body(genesys_tower::Body::from(body))
            .map_err(|e| format!("invalid request: {e}"))?;
        self.client
            .call(request)
            .await
            .map(drop)
            .map_err(|e| reason(&e))
    }
}

/// `gcx actions execute`: one execution a unit. Never replayed after an ambiguous failure (data
/// actions do not honour `Idempotency-Key`); the key, when given, lets the client stack answer a
/// repeat from its own store.
#[derive(Debug, Clone)]
pub(crate) struct Actions {
    pub(crate) client: GenesysClient,
    pub(crate) action_id: Arc<str>,
    pub(crate) key: Option<Arc<str>>,
    /// Per-line keys (`KEY-<hash of the line>`) for a batch; the key as given for one input.
    pub(crate) per_line_keys: bool,
    /// Print each output on stdout (a single execution).
    pub(crate) print_output: bool,
}

impl Deliver for Actions {
    type Item = Value;

    async fn deliver(&self, items: Vec<Value>) -> Result<(), String> {
        for input in items {
            let body = serde_json::to_vec(&input).map_err(|e| e.to_string())?;
            let path = format!(
                "/api/v2/integrations/actions/{}/execute",
                percent_segment(&self.action_id)
            );
            let mut builder = Request::builder()
                .method(Method::POST)
                .uri(path)
                .header(header::CONTENT_TYPE, "application/json")
                .header(header::ACCEPT, "application/json")
                .extension(RetrySafety::Unsafe);
            if let Some(key) = &self.key {
                let key = if self.per_line_keys {
                    format!("{key}-{:016x}", fnv1a(&body))
                } else {
                    key.to_string()
                };
                builder = builder.extension(IdempotencyKey::new(key));
            }
            let request = builder
                .body(genesys_tower::Body::from(body))
                .map_err(|e| format!("invalid request: {e}"))?;
            let response = self.client.call(request).await.map_err(|e| reason(&e))?;
            if self.print_output {
                println!("{}", String::from_utf8_lossy(&response.body));
            }
        }
        Ok(())
    }
}

/// Escapes a path segment (an action id may hold characters a path cannot).
fn percent_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_escaped() {
        assert_eq!(percent_segment("custom_-_1a/b c"), "custom_-_1a%2Fb%20c");
    }

    #[test]
    fn fnv_is_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_ne!(fnv1a(b"a"), fnv1a(b"b"));
    }
}
