//! The real deliverers: each job's unit of work sent through a [`GenesysClient`], and the client
//! built from the common flags and the environment.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use genesys_client::builder::DynTokenSource;
use genesys_client::config::Origin;
use genesys_client::{
    GenesysClient, GenesysClientBuilder, GenesysError, PacingSource, Region, UpdateUserOptions,
};
use genesys_tower::auth::RedisTokenCache;
use genesys_tower::concurrency::RedisPacer;
use genesys_tower::idempotency::{IdempotencyKey, MemoryStore};
use genesys_tower::retry::RetrySafety;
use http::{Method, Request, header};
use serde_json::Value;

use crate::cli::Common;
use crate::departures::WatchedClient;
use crate::error::CliError;
use crate::job::{Deliver, Replay, Undelivered, UnitCtx};
use crate::journal::fnv1a;
use crate::policy::watch::Policies;
use crate::records::UserUpdate;
use crate::report::Pace;
use crate::settings::{self, Profile};

/// The environment variables holding the OAuth client id: Genesys's own name first (its CLI,
/// Terraform provider and samples use it), then the older one.
pub(crate) const CLIENT_ID_VARS: [&str; 2] = ["GENESYSCLOUD_OAUTHCLIENT_ID", "GENESYS_CLIENT_ID"];
/// The environment variables holding the OAuth client secret.
pub(crate) const CLIENT_SECRET_VARS: [&str; 2] =
    ["GENESYSCLOUD_OAUTHCLIENT_SECRET", "GENESYS_CLIENT_SECRET"];
/// The environment variables holding the region, when `--region` and `--base-url` are absent.
pub(crate) const REGION_VARS: [&str; 2] = ["GENESYSCLOUD_REGION", "GENESYS_REGION"];
/// The environment variable holding a ready access token (used instead of client credentials).
pub(crate) const ACCESS_TOKEN_VAR: &str = "GENESYSCLOUD_ACCESS_TOKEN";

/// The first of `names` set to a non-empty value.
fn env_first(names: &[&str]) -> Option<String> {
    names.iter().find_map(|name| {
        std::env::var(name)
            .ok()
            .map(|v| v.trim().to_owned())
            .filter(|v| !v.is_empty())
    })
}

/// How the job authenticates.
enum Credentials {
    Client {
        id: String,
        secret: String,
        /// Where they came from, for `config show`.
        from: String,
    },
    Token(String),
}

/// Reads the credentials from the environment, else through the profile (its client id, and
/// the variables it names), or says how to provide them (exit 2).
fn credentials(profile: Option<&Profile>) -> Result<Credentials, CliError> {
    if let Some(token) = env_first(&[ACCESS_TOKEN_VAR]) {
        return Ok(Credentials::Token(token));
    }
    if let (Some(id), Some(secret)) = (env_first(&CLIENT_ID_VARS), env_first(&CLIENT_SECRET_VARS)) {
        let from = "GENESYSCLOUD_OAUTHCLIENT_ID/SECRET or GENESYS_CLIENT_ID/SECRET".to_owned();
        return Ok(Credentials::Client { id, secret, from });
    }
    if let Some(p) = profile {
        let id = match (&p.client_id, &p.client_id_env) {
            (Some(id), _) => Some(id.clone()),
            (None, Some(var)) => env_first(&[var]),
            (None, None) => None,
        };
        let secret = p.client_secret_env.as_deref().and_then(|v| env_first(&[v]));
        match (id, secret) {
            (Some(id), Some(secret)) => {
                let from = format!(
                    "profile {}: client id {}, secret from {}",
                    p.name,
                    p.client_id_env
                        .as_deref()
                        .map_or_else(|| "in the file".to_owned(), |v| format!("from {v}")),
                    p.client_secret_env.as_deref().unwrap_or_default()
                );
                return Ok(Credentials::Client { id, secret, from });
            }
            (id, _) if p.client_id.is_some() || p.client_id_env.is_some() => {
                return Err(CliError::usage(format!(
                    "no credentials for profile {}: {}",
                    p.name,
                    match (id, &p.client_id_env, &p.client_secret_env) {
                        (None, Some(var), _) => format!("its client_id_env {var} is not set"),
                        (_, _, Some(var)) => format!("its client_secret_env {var} is not set"),
                        _ => "it names no client_secret_env (the variable holding the secret)"
                            .to_owned(),
                    }
                )));
            }
            _ => {}
        }
    }
    match (env_first(&CLIENT_ID_VARS), env_first(&CLIENT_SECRET_VARS)) {
        (Some(id), Some(secret)) => Ok(Credentials::Client {
            id,
            secret,
            from: String::new(),
        }),
        (id, secret) => {
            let missing: Vec<&str> = [
                (CLIENT_ID_VARS[0], id.is_none()),
                (CLIENT_SECRET_VARS[0], secret.is_none()),
            ]
            .into_iter()
            .filter_map(|(n, m)| m.then_some(n))
            .collect();
            Err(CliError::usage(format!(
                "no credentials: set {} (or GENESYS_CLIENT_ID and GENESYS_CLIENT_SECRET) to an \
                 OAuth client-credentials client of your org (Admin > Integrations > OAuth), or \
                 {ACCESS_TOKEN_VAR} to a token; or run `gcx demo` to try gcx without an account",
                missing.join(" and ")
            )))
        }
    }
}

/// The client builder from the common flags: `--region` or `--base-url` (and `--login-url`),
/// credentials from the environment, `--concurrency`, `--rate-limit`. It sends nothing: a
/// configuration error is found here, before anything else.
pub(crate) fn client_builder(
    common: &Common,
) -> Result<(GenesysClientBuilder, Option<Policies>), CliError> {
    let mut builder = GenesysClient::builder();
    let settings = settings::load(common)?;
    let profile = settings.profile.as_ref();
    let layered = &settings.layered;
    // The policy store's versions, when it has any: each call's retry policy from a switch.
    let policies = Policies::from_settings(&settings);
    if layered.is_default() {
        builder = builder.max_in_flight(job_concurrency(common, layered));
    } else {
        builder = builder.config(layered.config());
        // The flag wins over the file and the environment; without either, gcx's default.
        builder = builder.max_in_flight(job_concurrency(common, layered));
    }
    // A Redis store named by the configuration is kept; else a small one in memory.
    if layered.config().idempotency.redis_url().is_none() {
        builder = builder.idempotency_store(crate::deliver::small_store());
    }
    let mut builder = builder.user_agent(concat!("gcx/", env!("CARGO_PKG_VERSION")));
    builder = match credentials(profile)? {
        Credentials::Client { id, secret, .. } => builder.client_credentials(id, secret),
        Credentials::Token(token) => {
            let token: Arc<str> = token.into();
            builder.token_source(genesys_tower::auth::token_source_fn(move || {
                let token = token.clone();
                // Its lifetime is unknown here: a refused token ends the job (a 401 after the
                // stack's one re-send).
                async move { Ok(genesys_tower::auth::Token::new(&*token, None)) }
            }))
        }
    };
    let (region, base_url) = api(common, profile);
    // The profile's login host goes with the profile's API only: a flag or the environment
    // that names another API means that API's own login host (else a token of one would be
    // fetched for the other, with credentials that may be that other's).
    let api_from_profile = region
        .as_ref()
        .or(base_url.as_ref())
        .is_some_and(|(_, from)| from.starts_with("profile "));
    builder = match (region, &base_url) {
        (Some((region, from)), _) => {
            let region: Region = region.parse().map_err(|e| {
                CliError::usage(format!(
                    "{from} {region}: {e}; use a name such as us-east-1 or eu-west-1, or a \
                     domain such as mypurecloud.ie"
                ))
            })?;
            builder.region(region)
        }
        (None, Some((url, _))) => builder.base_url(url.clone()),
        (None, None) => {
            return Err(CliError::usage(
                "no API to talk to: give --region (e.g. --region us-east-1, or set \
                 GENESYSCLOUD_REGION) or --base-url URL",
            ));
        }
    };
    if let Some(login) = common.login_url.as_ref().or(profile
        .filter(|_| api_from_profile)
        .and_then(|p| p.login_url.as_ref()))
    {
        builder = builder.login_url(login.clone());
    }
    // A ready token is the user's own: never shared through Redis (another user of the same
    // Redis would get it). Only a client-credentials token is the fleet's.
    let client_credentials = matches!(credentials(profile), Ok(Credentials::Client { .. }));
    if let Some(url) = common.fleet_redis.clone().filter(|_| client_credentials) {
        // One token for the fleet: one fetch between the workers, and one more for all of them
        // when it expires or the API refuses it.
        let key = fleet_key(common, "token");
        builder = builder.wrap_token_source(move |login| {
            match RedisTokenCache::open(&url, key.clone(), login.clone()) {
                Ok(shared) => DynTokenSource::new(shared),
                Err(e) => {
                    tracing::warn!(error = %e, "--fleet-redis: this worker fetches its own token");
                    login
                }
            }
        });
    }
    if let Some(p) = &policies {
        builder = builder.retry_switch(p.switch.clone());
    }
    Ok((builder, policies))
}

/// Builds the client. Without `--rate-limit`, it paces by the org's own limit, read once from
/// `/api/v2/organizations/limits/namespaces/platform.api` (300 per 60 s when it cannot be read);
/// with it, the same request checks the credentials with the job's own client (its token is the
/// job's first). Either way, refused credentials end the run here with exit 2, before any record
/// is sent.
pub(crate) async fn build_client(
    builder: GenesysClientBuilder,
    common: &Common,
) -> Result<(WatchedClient, Option<Pace>), CliError> {
    let refused = |e: GenesysError| {
        if let GenesysError::Config(_) = e {
            // A setting the client cannot be built with (a proxy variable it cannot use).
            return CliError::usage(format!("cannot set up the client: {e}"));
        }
        if e.is_proxy_refusal() {
            return CliError::usage(format!(
                "{e}; nothing was sent: check the proxy's URL and credentials (https_proxy, \
                 http_proxy or all_proxy, or their upper-case forms), or list the host in \
                 no_proxy"
            ));
        }
        if e.is_token_unavailable() {
            // Not the credentials' fault: the login host did not judge them.
            return CliError::runtime(format!(
                "{e}; nothing was sent: the login host is unavailable, run the same command \
                 again later (or check --login-url and the network if it never answers)"
            ));
        }
        if let GenesysError::OAuth(o) = &e
            && !o.is_bad_credentials()
        {
            // Not a verdict on the credentials either: a request the login host would not take,
            // or an answer from something else on the way.
            return CliError::usage(format!(
                "{e}; nothing was sent: check the login URL (--login-url, or the region), and \
                 any proxy or firewall on the way to it"
            ));
        }
        CliError::usage(format!(
            "{e}; nothing was sent: check the client id and secret \
             (GENESYSCLOUD_OAUTHCLIENT_ID/SECRET or GENESYS_CLIENT_ID/SECRET) and the region"
        ))
    };
    let builder = match common.rate_limit {
        None => builder.discover_limits().await.map_err(refused)?,
        // The user's own pace: where pacing starts, and a ceiling it never passes.
        Some(rate) => builder
            .pacing(u64::from(rate.requests), rate.window)
            .max_rate(u64::from(rate.requests), rate.window),
    };
    let (builder, fleet) = match &common.fleet_redis {
        None => (builder, None),
        Some(url) => {
            let (requests, window) = builder
                .pacing_setting()
                .unwrap_or((300, std::time::Duration::from_secs(60)));
            let workers = common
                .fleet_size
                .or(common.shard.map(|s| s.count))
                .unwrap_or(1);
            let pacer = RedisPacer::open(url, fleet_key(common, "pacing"), requests, window)
                .map_err(|e| CliError::usage(format!("--fleet-redis {}: {e}", redact_url(url))))?
                .expected_processes(u64::from(workers));
            (builder.shared_pacing(pacer), Some(workers))
        }
    };
    let pace = builder.pacing_setting().map(|(requests, window)| Pace {
        requests,
        window_s: window.as_secs_f64(),
        source: {
            let source = match (common.rate_limit, builder.pacing_source()) {
                (Some(_), _) => "--rate-limit".to_owned(),
                (None, PacingSource::OrgLimit) => {
                    "the org's own limit, read at start; adapted to what the server says".to_owned()
                }
                (None, other) => format!("{other}; the org's own limit was not found"),
            };
            match fleet {
                Some(workers) => format!(
                    "{source}; shared through Redis by the fleet (a share of 1/{workers} if \
                     Redis is unreachable)"
                ),
                None => source,
            }
        },
    });
    let client = WatchedClient::build(builder)
        .map_err(|e| CliError::usage(format!("cannot set up the client: {e}")))?;
    if common.rate_limit.is_some() {
        // Anything but a refusal (no permission, an older org) says nothing against the
        // credentials.
        match client
            .organization_limits(genesys_client::limits::PLATFORM_API_NAMESPACE)
            .await
        {
            Err(e @ GenesysError::OAuth(_)) => return Err(refused(e)),
            Err(e) if e.is_token_unavailable() => return Err(refused(e)),
            Err(e) if e.is_proxy_refusal() => return Err(refused(e)),
            _ => {}
        }
    }
    Ok((client, pace))
}

/// A value, and where it came from.
type Sourced = Option<(String, String)>;

/// The API a job writes to, as the flags, the environment or the profile name it: the
/// region's name however it was spelled (`region us-east-1` for `US-EAST-1` or
/// `mypurecloud.com`), or the base URL without credentials; `None` when nothing names one.
pub(crate) fn api_target(common: &Common, profile: Option<&Profile>) -> Option<String> {
    match api(common, profile) {
        (Some((region, _)), _) => Some(match region.parse::<Region>() {
            Ok(region) => format!("region {}", region.name()),
            Err(_) => format!("region {region}"),
        }),
        (None, Some((url, _))) => Some(redact_url(url.trim_end_matches('/'))),
        (None, None) => None,
    }
}

/// The API to talk to: the region, or the base URL, each with where it came from. `--region`
/// or `--base-url`, else `GENESYSCLOUD_REGION`, else the profile's.
fn api(common: &Common, profile: Option<&Profile>) -> (Sourced, Sourced) {
    match (&common.region, &common.base_url) {
        (Some(region), _) => return (Some((region.clone(), "--region".into())), None),
        (None, Some(url)) => return (None, Some((url.clone(), "--base-url".into()))),
        (None, None) => {}
    }
    if let Some(region) = env_first(&REGION_VARS) {
        return (Some((region, "GENESYSCLOUD_REGION".into())), None);
    }
    let Some(p) = profile else {
        return (None, None);
    };
    let from = format!("profile {}", p.name);
    (
        p.region.clone().map(|r| (r, from.clone())),
        p.base_url.clone().map(|u| (u, from)),
    )
}

/// Requests in flight at once for a job: `--concurrency`, else `concurrency.limit` where a
/// file, a profile, the environment or the policy store sets it, else gcx's default (8, not
/// the client's 16: a bulk job shares its org's quota with everything else the org runs).
pub(crate) fn job_concurrency(common: &Common, layered: &genesys_client::config::Layered) -> usize {
    match (common.concurrency, layered.origin("concurrency.limit")) {
        (Some(n), _) => n as usize,
        (None, Some(origin)) if *origin != Origin::Default => {
            layered.config().concurrency.limit as usize
        }
        (None, _) => crate::cli::DEFAULT_CONCURRENCY,
    }
}

/// `gcx config show`: every setting with its value and where it came from, then the
/// credentials a job would use (never the secret).
pub(crate) fn show_config(common: &Common) -> Result<u8, CliError> {
    let settings = settings::load(common)?;
    let profile = settings.profile.as_ref();
    let mut layered = settings.layered.clone();
    if let Some(n) = common.concurrency {
        layered = layered
            .set(
                "concurrency.limit",
                serde_json::json!(n),
                Origin::Flag("--concurrency".into()),
            )
            .map_err(|e| CliError::usage(format!("--concurrency: {e}")))?;
    } else if layered.origin("concurrency.limit") == Some(&Origin::Default) {
        // What a job runs with when nothing sets it.
        layered = layered
            .set(
                "concurrency.limit",
                serde_json::json!(crate::cli::DEFAULT_CONCURRENCY),
                Origin::Default,
            )
            .map_err(|e| CliError::runtime(format!("gcx's default concurrency: {e}")))?;
    }
    if let Some(rate) = common.rate_limit {
        let text = format!("{}/{}", rate.requests, rate.window.as_secs_f64());
        layered = layered
            .set(
                "pacing.rate",
                serde_json::json!(text),
                Origin::Flag("--rate-limit".into()),
            )
            .map_err(|e| CliError::usage(format!("--rate-limit: {e}")))?;
    }
    let credentials = match credentials(profile) {
        Ok(Credentials::Client { id, from, .. }) => {
            format!("client credentials: client id {id} ({from}), secret set (not shown)")
        }
        Ok(Credentials::Token(_)) => {
            "a ready access token (GENESYSCLOUD_ACCESS_TOKEN, not shown)".to_owned()
        }
        Err(e) => format!("none: {e}"),
    };
    let (region, base_url) = api(common, profile);
    let mut connection: Vec<(&str, String, String)> = Vec::new();
    match (region, base_url) {
        (Some((r, from)), _) => connection.push(("region", r, from)),
        (None, Some((u, from))) => connection.push(("base_url", u, from)),
        (None, None) => connection.push(("region", "(none)".into(), "not set".into())),
    }
    if let Some(login) = &common.login_url {
        connection.push(("login_url", login.clone(), "--login-url".into()));
    } else if let Some(p) = profile.filter(|p| p.login_url.is_some()) {
        let login = p.login_url.clone().unwrap_or_default();
        connection.push(("login_url", login, format!("profile {}", p.name)));
    }
    if common.json {
        let settings: Vec<Value> = layered
            .entries()
            .into_iter()
            .map(|(key, value, origin)| serde_json::json!({"key": key, "value": value, "from": origin}))
            .collect();
        let connection: Vec<Value> = connection
            .iter()
            .map(|(key, value, origin)| serde_json::json!({"key": key, "value": value, "from": origin}))
            .collect();
        let out = serde_json::json!({
            "profile": profile.map(|p| p.name.clone()),
            "connection": connection,
            "settings": settings,
            "credentials": credentials,
        });
        out!("{out}");
    } else {
        let entries = layered.entries();
        let width = entries.iter().map(|(k, _, _)| k.len()).max().unwrap_or(0);
        for (key, value, origin) in entries {
            let value = match value {
                Value::Null => "(unset)".to_owned(),
                Value::String(s) => s,
                other => other.to_string(),
            };
            out!("{key:<width$}  {value:<12}  {origin}");
        }
        out!();
        if let Some(p) = profile {
            out!("profile      {}", p.name);
        }
        for (key, value, origin) in &connection {
            out!("{key:<12} {value}  ({origin})");
        }
        out!("credentials  {credentials}");
    }
    Ok(0)
}

/// The Redis key the fleet shares its `what` (pacing, token) under: the API (its region's
/// name however it is spelled, or its URL without a trailing `/`) and the OAuth client, whose
/// quota and token it is (no secret in it).
pub(crate) fn fleet_key(common: &Common, what: &str) -> String {
    let profile = settings::load(common).ok().and_then(|s| s.profile);
    let api = api_target(common, profile.as_ref()).unwrap_or_default();
    let client = match credentials(profile.as_ref()) {
        Ok(Credentials::Client { id, .. }) => id,
        // The quota of a ready token is its own: keyed by a hash of it, never the token.
        Ok(Credentials::Token(token)) => format!("token-{:016x}", fnv1a(token.as_bytes())),
        Err(_) => "none".to_owned(),
    };
    format!("gcx:{what}:{api}:{client}")
}

/// The organization a ready token acts in (`GET /api/v2/tokens/me`), which names a fleet job
/// run on ready tokens: `None` with client credentials (their id names it). When the API does
/// not say, the job cannot be named as its other workers name it: refused (exit 2).
pub(crate) async fn token_organization(common: &Common) -> Result<Option<String>, CliError> {
    let profile = settings::load(common)?.profile;
    let Credentials::Token(_) = credentials(profile.as_ref())? else {
        return Ok(None);
    };
    let refused = |why: String| {
        CliError::usage(format!(
            "a fleet job on a ready token is named by the organization the token acts in, and \
             GET /api/v2/tokens/me did not say it ({why}); nothing was sent: run the worker \
             again, or give the fleet an OAuth client (GENESYSCLOUD_OAUTHCLIENT_ID and _SECRET)"
        ))
    };
    let client = client_builder(common)?
        .0
        .build()
        .map_err(|e| refused(e.to_string()))?;
    // Retried as any GET is, within a bound: the worker has sent nothing yet.
    let asked = tokio::time::timeout(TOKEN_INFO_TIMEOUT, client.token_info()).await;
    match asked {
        Ok(Ok(info)) => match info.organization {
            Some(org) => Ok(Some(org.id)),
            None => Err(refused("its answer names no organization".to_owned())),
        },
        Ok(Err(e)) => Err(refused(e.to_string())),
        Err(_) => Err(refused(format!(
            "no answer within {} s",
            TOKEN_INFO_TIMEOUT.as_secs()
        ))),
    }
}

/// How long a fleet worker on a ready token waits for the token's organization.
const TOKEN_INFO_TIMEOUT: Duration = Duration::from_secs(60);

/// The prefix of a fleet job's record in Redis: the API and the endpoint it writes to (as the
/// journal names them) and the OAuth client, or for a ready token the organization it acts in
/// (`organization`, from [`token_organization`]: the workers of a job resumed later hold new
/// tokens); and the prefix an earlier gcx gave the same job (the API as spelled, and a hash of a
/// ready token), `None` when it is the same.
pub(crate) fn fleet_job_keys(
    common: &Common,
    endpoint: Option<&str>,
    organization: Option<&str>,
) -> (String, Option<String>) {
    let profile = settings::load(common).ok().and_then(|s| s.profile);
    let target = [
        api_target(common, profile.as_ref()),
        endpoint.map(str::to_owned),
    ]
    .into_iter()
    .flatten()
    .collect::<Vec<_>>()
    .join(" ");
    let hashed = |token: &str| format!("token-{:016x}", fnv1a(token.as_bytes()));
    let client = match (credentials(profile.as_ref()), organization) {
        (Ok(Credentials::Client { id, .. }), _) => id,
        (Ok(Credentials::Token(_)), Some(org)) => format!("org-{org}"),
        (Ok(Credentials::Token(token)), None) => hashed(&token),
        (Err(_), _) => "none".to_owned(),
    };
    let now = format!("gcx:job:{target}:{client}");
    let api = match api(common, profile.as_ref()) {
        (_, Some((url, _))) | (Some((url, _)), None) => url,
        (None, None) => String::new(),
    };
    let client = match credentials(profile.as_ref()) {
        Ok(Credentials::Token(token)) => hashed(&token),
        _ => client,
    };
    let before = format!("gcx:job:{api}:{client}");
    let before = (before != now).then_some(before);
    (now, before)
}

/// A Redis URL without its user and password (nor its query, which may hold them), for
/// messages.
pub(crate) fn redact_url(url: &str) -> String {
    let (scheme, rest) = url.split_once("://").unwrap_or(("", url));
    // The credentials end at the last `@` (a password may hold an `@`, or a `?`).
    let (user, host) = match rest.rsplit_once('@') {
        Some((_, host)) => ("…@", host),
        None => ("", rest),
    };
    let (host, query) = match host.split_once('?') {
        Some((host, _)) => (host, "?…"),
        None => (host, ""),
    };
    format!("{scheme}://{user}{host}{query}")
}

/// The idempotency store of a job's client. A bulk job makes each logical call once, so the
/// store only has to keep keys stable across retries and answer repeats within the run; a small
/// bound keeps memory flat however long the input (the default store may grow to 64 MiB).
pub(crate) fn small_store() -> MemoryStore {
    MemoryStore::with_capacity(1024 * 1024)
}

/// The longest a job waits while it is turned away: no access token to be had, the login host
/// unavailable (it answers 429 or 5xx past the token source's own retries, or cannot be
/// reached), or the API asking to wait longer than a call waits (a 429's `Retry-After` past the
/// retry policy's `max_retry_after`, a daily quota's, say). Past it, or for a hint longer than
/// what is left of it, the job stops, for the same command to resume. A shorter spell only
/// slows the job down.
pub(crate) const TURNED_AWAY_MAX: Duration = Duration::from_secs(15 * 60);

/// The longest wait between two tries for a token, while the login host is unavailable.
const LOGIN_RETRY_MAX: Duration = Duration::from_secs(30);

/// Why a call that sent nothing (or nothing that was applied) may be made again later.
enum TurnedAway {
    /// No token: tried again after a backoff.
    NoToken,
    /// The API asked to wait this long (a 429 or 503 whose hint the call would not wait for).
    Asked(Duration),
}

impl TurnedAway {
    fn of(e: &GenesysError) -> Option<Self> {
        if e.is_token_unavailable() {
            return Some(TurnedAway::NoToken);
        }
        if e.may_have_been_applied() {
            return None;
        }
        match e {
            GenesysError::RetryAfterTooLong { retry_after, .. } => {
                Some(TurnedAway::Asked(*retry_after))
            }
            GenesysError::DeadlineExceeded {
                retry_after: Some(hint),
                ..
            } => Some(TurnedAway::Asked(*hint)),
            _ => None,
        }
    }
}

/// `call`'s outcome; made again while it is turned away with nothing applied
/// ([`TurnedAway`]): without a token, 1 s after the first failure, then twice as long each time
/// up to [`LOGIN_RETRY_MAX`]; asked to wait, after the wait asked for. The unit holds its place
/// in the job meanwhile, so that a job turned away waits rather than fail record after record.
/// It gives up, unsent, once the job has been turned away for [`TURNED_AWAY_MAX`] (counted from
/// the first unit of the run that was: the job then stops), at once for a wait longer than
/// what is left of it, when the job stops, or when a fleet shard's lease lapses.
async fn patiently<T, F, Fut>(unit: &UnitCtx, mut call: F) -> Result<T, Undelivered>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, GenesysError>>,
{
    let mut warned = false;
    let mut backoff = Duration::from_secs(1);
    loop {
        let (e, away) = match call().await {
            Ok(value) => {
                unit.gate.outage_over();
                return Ok(value);
            }
            Err(e) => match TurnedAway::of(&e) {
                Some(away) => (e, away),
                None => {
                    // An answer that is not a turn-away: whatever turned the job away is over.
                    unit.gate.outage_over();
                    return Err(Undelivered::from_error(&e));
                }
            },
        };
        let now = tokio::time::Instant::now();
        let since = unit.gate.outage_since(now);
        let left = TURNED_AWAY_MAX.saturating_sub(now.duration_since(since));
        let wait = match away {
            TurnedAway::NoToken => backoff.min(left),
            TurnedAway::Asked(hint) => hint,
        };
        if left.is_zero() || wait > left {
            let (what, how_long) = match away {
                TurnedAway::NoToken => (
                    "no access token could be had, the login host unavailable",
                    format!("for {} minutes", TURNED_AWAY_MAX.as_secs() / 60),
                ),
                TurnedAway::Asked(hint) => {
                    ("the API asks to wait", format!("{} s", hint.as_secs()))
                }
            };
            return Err(Undelivered::Unavailable(format!(
                "{what} {how_long} ({e}); run the same command again later to resume"
            )));
        }
        if !std::mem::replace(&mut warned, true) {
            tracing::warn!("turned away ({e}): waiting {} s", wait.as_secs());
        }
        // In steps of a second at most, so that a fleet lease that lapses meanwhile ends the
        // wait soon after (a stopping job ends it at once).
        let until = tokio::time::Instant::now() + wait;
        loop {
            let step = until.min(tokio::time::Instant::now() + Duration::from_secs(1));
            tokio::select! {
                () = tokio::time::sleep_until(step) => {}
                () = unit.gate.stopping() => {}
            }
            unit.may_send()?;
            if step >= until {
                break;
            }
        }
        if let TurnedAway::NoToken = away {
            backoff = backoff.saturating_mul(2).min(LOGIN_RETRY_MAX);
        }
    }
}

/// PATCHes of one line, each after a fresh read, before a version conflict fails it.
const CONFLICT_ATTEMPTS: u32 = 5;

/// `gcx users patch`: one user a unit: GET the version, PATCH with it, resolve conflicts
/// ([`GenesysClient::update_user_with`]). Lines about the same user go one after another, in
/// the input's order. The PATCH is conditional on the version, so a unit whose
/// outcome is unknown is resolved by reading the user: already as requested means delivered,
/// with no second PATCH.
#[derive(Debug, Clone)]
pub(crate) struct Users(pub(crate) WatchedClient);

impl Deliver for Users {
    type Item = UserUpdate;
    const REPLAY: Replay = Replay::Safe;

    /// It sends through its [`WatchedClient`] alone.
    fn watches_departures(&self) -> bool {
        true
    }
    // Several lines about one user: applied in their order, so the last one holds.
    const ENTITY: Option<&'static str> = Some("user id");
    // A line too large for one PATCH is quarantined rather than refused with a 413.
    const MAX_UNIT_BYTES: Option<usize> = Some(MAX_REQUEST_BYTES);

    /// The PATCH's body: the fields, and the version the client adds (`,"version":` and at
    /// most 20 digits).
    fn wire_size(u: &UserUpdate) -> usize {
        json_size(&u.fields).saturating_add(31)
    }

    async fn deliver(&self, unit: UnitCtx, items: Vec<UserUpdate>) -> Result<(), Undelivered> {
        // In a fleet, a version conflict comes back here, so that the lease is checked before
        // the user is read and patched again: a conflict may be the taker's doing, once the
        // lease lapsed during the PATCH's waits (a 429's hold), and this line must not then be
        // applied over a later one the taker applied.
        let fleet = unit.fence.is_some();
        for u in items {
            let mut conflicts = 0;
            loop {
                let current = patiently(&unit, || self.0.get_user(&u.user_id)).await?;
                // The lease may have lapsed while the read waited (a 429's hold, a slow
                // answer): the taker may have applied this line, and later ones, since; the
                // line is its own to count.
                unit.lease_holds()?;
                if (unit.resumed || conflicts > 0) && current.holds(&u.fields) {
                    // An earlier run's PATCH landed and its answer (or its journal entry) was
                    // lost, or the PATCH that conflicted was another's with the same fields.
                    break;
                }
                if let Some(j) = &unit.journal {
                    j.read_version(unit.line, current.version);
                }
                let back_here = fleet && conflicts + 1 < CONFLICT_ATTEMPTS;
                let options = UpdateUserOptions::default()
                    .known_version(current.version)
                    .max_attempts(if fleet { 1 } else { CONFLICT_ATTEMPTS });
                let patched = patiently(&unit, || async {
                    match self
                        .0
                        .update_user_with(&u.user_id, &u.fields, options)
                        .await
                    {
                        Err(GenesysError::Api(e)) if back_here && e.is_version_conflict() => {
                            Ok(false)
                        }
                        other => other.map(|_| true),
                    }
                })
                .await?;
                if patched {
                    break;
                }
                conflicts += 1;
            }
        }
        Ok(())
    }
}

/// `gcx ingest`: one chunk a unit (split into several when its request would pass
/// [`MAX_REQUEST_BYTES`]), one POST of a JSON array with the unit's `Idempotency-Key`
/// (derived from the job and the chunk's first line). To an endpoint that deduplicates by key,
/// a retry and a resumed run carry the same key, and the chunk is applied once. To any other
/// (a real bulk endpoint of the API: none honours the key), a chunk whose outcome is unknown is
/// never sent again automatically, as a data action's execution is not.
#[derive(Debug, Clone)]
pub(crate) struct Ingest {
    pub(crate) client: WatchedClient,
    pub(crate) path: Arc<str>,
    /// Whether the endpoint deduplicates requests by their `Idempotency-Key`.
    pub(crate) deduplicates: bool,
}

/// The most bytes a request body to the API may hold: the Platform API's `request.bytes.max`
/// (512,000 for every org; larger requests are answered 413).
pub(crate) const MAX_REQUEST_BYTES: usize = 512_000;

/// Counts the bytes written to it.
struct Counter(usize);

impl std::io::Write for Counter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0 = self.0.saturating_add(buf.len());
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The bytes `value` takes as JSON.
fn json_size(value: &impl serde::Serialize) -> usize {
    let mut counter = Counter(0);
    // Writing to a counter cannot fail, and a map of JSON values always serializes.
    match serde_json::to_writer(&mut counter, value) {
        Ok(()) => counter.0,
        Err(_) => usize::MAX,
    }
}

impl Deliver for Ingest {
    type Item = Value;
    const REPLAY: Replay = Replay::Safe;

    /// It sends through its [`WatchedClient`] alone.
    fn watches_departures(&self) -> bool {
        true
    }
    // A chunk whose request would be larger goes as several requests.
    const MAX_UNIT_BYTES: Option<usize> = Some(MAX_REQUEST_BYTES);

    fn replay(&self) -> Replay {
        match self.deduplicates {
            true => Replay::Safe,
            false => Replay::Never,
        }
    }

    fn wire_size(item: &Value) -> usize {
        json_size(item)
    }

    async fn deliver(&self, unit: UnitCtx, items: Vec<Value>) -> Result<(), Undelivered> {
        let body = serde_json::to_vec(&items).map_err(|e| Undelivered::Failed(e.to_string()))?;
        let body = bytes::Bytes::from(body);
        let (head, ()) = Request::builder()
            .method(Method::POST)
            .uri(&*self.path)
            .header(header::CONTENT_TYPE, "application/json")
            .header(header::ACCEPT, "application/json")
            .extension(IdempotencyKey::new(unit.key.clone()))
            // Without a key the endpoint honours, a gateway's 500, 502 or 504, or a connection
            // lost once the request left, is an unknown outcome, never retried.
            .extension(match self.deduplicates {
                true => RetrySafety::KeyHonoured,
                false => RetrySafety::Unsafe,
            })
            .body(())
            .map_err(|e| Undelivered::Failed(format!("invalid request: {e}")))?
            .into_parts();
        patiently(&unit, || {
            let body = genesys_tower::Body::from_bytes(body.clone());
            let request = Request::from_parts(head.clone(), body);
            async move { self.client.call(request).await.map(drop) }
        })
        .await
    }
}

/// `gcx actions execute`: one execution a unit. Never replayed after an ambiguous failure (data
/// actions do not honour `Idempotency-Key`), neither by the stack nor by a resumed job: the
/// journal has its start on disk before it is sent, and an unknown outcome is listed.
#[derive(Debug, Clone)]
pub(crate) struct Actions {
    pub(crate) client: WatchedClient,
    pub(crate) action_id: Arc<str>,
    pub(crate) key: Option<Arc<str>>,
    /// Per-line keys (`KEY-<hash of the line>`) for a batch; the key as given for one input.
    pub(crate) per_line_keys: bool,
    /// Print each output on stdout (a single execution).
    pub(crate) print_output: bool,
}

impl Deliver for Actions {
    type Item = Value;
    const REPLAY: Replay = Replay::Never;

    /// It sends through its [`WatchedClient`] alone; but with `--idempotency-key`, two lines
    /// alike share a key, and the second one's unit may wait on the first one's execution (the
    /// idempotency layer joins them) without sending anything itself: stopped there, it is in
    /// doubt all the same.
    fn watches_departures(&self) -> bool {
        !(self.key.is_some() && self.per_line_keys)
    }
    // An input too large for one request is quarantined rather than refused with a 413.
    const MAX_UNIT_BYTES: Option<usize> = Some(MAX_REQUEST_BYTES);

    fn wire_size(input: &Value) -> usize {
        json_size(input)
    }

    async fn deliver(&self, unit: UnitCtx, items: Vec<Value>) -> Result<(), Undelivered> {
        for input in items {
            let body =
                serde_json::to_vec(&input).map_err(|e| Undelivered::Failed(e.to_string()))?;
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
            let key = match &self.key {
                Some(key) if self.per_line_keys => format!("{key}-{:016x}", fnv1a(&body)),
                Some(key) => key.to_string(),
                None => unit.key.clone(),
            };
            builder = builder.extension(IdempotencyKey::new(key));
            let (head, ()) = builder
                .body(())
                .map_err(|e| Undelivered::Failed(format!("invalid request: {e}")))?
                .into_parts();
            let body = bytes::Bytes::from(body);
            // Marked unsafe to repeat: a gateway's 500, 502 or 504, which may come after the
            // action ran, is an unknown outcome. Sent again only when no token could be had, so
            // that it was not sent at all.
            let response = patiently(&unit, || {
                let request = Request::from_parts(
                    head.clone(),
                    genesys_tower::Body::from_bytes(body.clone()),
                );
                async move { self.client.call(request).await }
            })
            .await?;
            if self.print_output {
                out!("{}", String::from_utf8_lossy(&response.body));
            }
        }
        Ok(())
    }
}

/// Escapes a path segment (an action id may hold characters a path cannot): everything but
/// RFC 3986's unreserved characters.
fn percent_segment(s: &str) -> String {
    const SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
        .remove(b'-')
        .remove(b'.')
        .remove(b'_')
        .remove(b'~');
    percent_encoding::utf8_percent_encode(s, SEGMENT).to_string()
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicU32, Ordering};

    use genesys_client::{OAuthError, OAuthErrorKind};

    use super::*;

    fn login(status: u16, code: &str) -> GenesysError {
        GenesysError::OAuth(OAuthError {
            error: OAuthErrorKind::Other(code.to_owned()),
            description: None,
            status: http::StatusCode::from_u16(status).unwrap(),
        })
    }

    fn unit() -> UnitCtx {
        UnitCtx {
            line: 1,
            key: "k".to_owned(),
            resumed: false,
            journal: None,
            gate: Arc::default(),
            fence: None,
        }
    }

    /// A call that finds no token is made again, waiting longer each time: it goes through
    /// once the login host is back, and the job stops once it has been down for 15 minutes.
    #[tokio::test(start_paused = true)]
    async fn a_call_waits_for_the_login_host_then_gives_up() {
        let calls = AtomicU32::new(0);
        let back_after = |n: u32| {
            let calls = &calls;
            move || {
                let i = calls.fetch_add(1, Ordering::SeqCst);
                async move {
                    match i < n {
                        true => Err(login(503, "temporarily_unavailable")),
                        false => Ok(i),
                    }
                }
            }
        };
        let start = tokio::time::Instant::now();
        assert_eq!(patiently(&unit(), back_after(4)).await, Ok(4));
        // Waits of 1, 2, 4 and 8 s.
        assert_eq!(start.elapsed(), Duration::from_secs(15));

        calls.store(0, Ordering::SeqCst);
        let start = tokio::time::Instant::now();
        let Err(Undelivered::Unavailable(reason)) = patiently(&unit(), back_after(u32::MAX)).await
        else {
            panic!("the job stops");
        };
        assert_eq!(start.elapsed(), TURNED_AWAY_MAX);
        assert!(reason.contains("15 minutes"), "{reason}");
        // 1 + 2 + 4 + 8 + 16 s, then every 30 s.
        assert_eq!(calls.load(Ordering::SeqCst), 6 + (900 - 31) / 30 + 1);

        // The outage is the run's: a unit that meets it ten minutes after another did waits
        // the five minutes left.
        let late = unit();
        late.gate.outage_since(tokio::time::Instant::now());
        tokio::time::advance(Duration::from_secs(600)).await;
        let start = tokio::time::Instant::now();
        let gave_up = patiently(&late, back_after(u32::MAX)).await;
        assert!(matches!(gave_up, Err(Undelivered::Unavailable(_))));
        assert_eq!(start.elapsed(), Duration::from_secs(300));

        // Refused credentials are not waited on.
        calls.store(0, Ordering::SeqCst);
        let refused = patiently(&unit(), || {
            calls.fetch_add(1, Ordering::SeqCst);
            async { Err::<(), _>(login(401, "invalid_client")) }
        })
        .await;
        assert!(matches!(refused, Err(Undelivered::CredentialsRefused(_))));
        assert_eq!(calls.load(Ordering::SeqCst), 1);
    }

    /// The API asking to wait longer than a call waits: the unit waits what it asks and goes
    /// on; a wait longer than the job's patience stops the job at once, unsent.
    #[tokio::test(start_paused = true)]
    async fn a_call_asked_to_wait_waits_or_stops_the_job() {
        let asked = |secs: u64| GenesysError::RetryAfterTooLong {
            retry_after: Duration::from_secs(secs),
            source: "429".into(),
        };
        let calls = AtomicU32::new(0);
        let start = tokio::time::Instant::now();
        let r = patiently(&unit(), || {
            let i = calls.fetch_add(1, Ordering::SeqCst);
            async move { if i < 2 { Err(asked(200)) } else { Ok(i) } }
        })
        .await;
        assert_eq!(r, Ok(2));
        assert_eq!(start.elapsed(), Duration::from_secs(400));

        let start = tokio::time::Instant::now();
        let Err(Undelivered::Unavailable(reason)) =
            patiently(&unit(), || async { Err::<(), _>(asked(3600)) }).await
        else {
            panic!("the job stops");
        };
        assert_eq!(
            start.elapsed(),
            Duration::ZERO,
            "no wait for what will not be waited out"
        );
        assert!(reason.contains("the API asks to wait 3600 s"), "{reason}");
    }

    /// A wait ends, unsent, within a second of the unit's fleet lease lapsing (left to the
    /// worker that takes the shard over), however long the wait asked.
    #[tokio::test(start_paused = true)]
    async fn a_lapsed_lease_ends_a_wait() {
        let fence = crate::fleet::Fence::holding();
        let waiting = UnitCtx {
            fence: Some(fence.clone()),
            ..unit()
        };
        let start = tokio::time::Instant::now();
        let lapse = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(100)).await;
            fence.lose();
        });
        let r = patiently(&waiting, || async {
            Err::<(), _>(GenesysError::RetryAfterTooLong {
                retry_after: Duration::from_secs(600),
                source: "429".into(),
            })
        })
        .await;
        assert!(matches!(r, Err(Undelivered::LeftToFleet)), "{r:?}");
        assert!(
            start.elapsed() <= Duration::from_secs(101),
            "{:?}",
            start.elapsed()
        );
        lapse.await.unwrap();
    }

    /// An execution answered 429 and waiting to be sent again has nothing in doubt: stopped
    /// there, its unit is listed as not sent. Through the client's whole stack, on the
    /// simulator's quota.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_execution_waiting_after_a_429_is_not_in_doubt() {
        let sim = genesys_sim::Simulator::spawn(
            genesys_sim::SimConfig::default()
                .users(1)
                .rate_limit(Some((1, Duration::from_secs(60))))
                // No headers to learn the quota from: the execution is sent, and answered 429.
                .ratelimit_headers(false),
        )
        .await
        .unwrap();
        let builder = GenesysClient::builder()
            .base_url(sim.base_url())
            .client_credentials("demo-client", "demo-secret")
            .no_pacing();
        let client = WatchedClient::build(builder).unwrap();
        // The window's one request.
        client.token_info().await.unwrap();
        let actions = Actions {
            client,
            action_id: "echo".into(),
            key: None,
            per_line_keys: false,
            print_output: false,
        };
        let departures = crate::departures::Departures::default();
        let counted = departures.clone();
        let task = tokio::spawn(async move {
            let execution = actions.deliver(unit(), vec![serde_json::json!({"n": 1})]);
            counted.scope(execution).await
        });
        let start = std::time::Instant::now();
        while sim.stats().rate_limited == 0 {
            assert!(start.elapsed() < Duration::from_secs(60), "no 429");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        // Once the client has the 429 (the simulator counts it before it goes), the unit waits
        // to send again, with nothing in doubt.
        while departures.in_doubt() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "still in doubt after its 429"
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        task.abort();
        assert!(task.await.unwrap_err().is_cancelled());
        assert!(!departures.in_doubt(), "answered 429: not processed");
        assert_eq!(sim.ledger_count_for("echo"), 0);
    }

    /// Identical lines of a batch with `--idempotency-key` share a key: their units are not
    /// taken as watched (one may wait on another's execution without sending anything).
    #[test]
    fn actions_with_shared_keys_are_not_watched() {
        let builder = GenesysClient::builder()
            .base_url("http://127.0.0.1:9")
            .client_credentials("demo-client", "demo-secret");
        let client = WatchedClient::build(builder).unwrap();
        for (key, per_line_keys, watched) in [
            (None, false, true),
            (None, true, true),
            (Some("order"), false, true),
            (Some("order"), true, false),
        ] {
            let actions = Actions {
                client: client.clone(),
                action_id: "echo".into(),
                key: key.map(Into::into),
                per_line_keys,
                print_output: false,
            };
            assert_eq!(
                actions.watches_departures(),
                watched,
                "{key:?}, {per_line_keys}"
            );
        }
    }

    /// A fleet lease that lapses while a user is read: the PATCH is not sent (the worker that
    /// takes the shard over may have applied this line, and a later one about the user).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_lapsed_during_the_read_sends_no_patch() {
        let sim = genesys_sim::Simulator::spawn(
            genesys_sim::SimConfig::default()
                .users(1)
                .rate_limit(None)
                .faults("latency=300ms..300ms".parse().unwrap()),
        )
        .await
        .unwrap();
        let builder = GenesysClient::builder()
            .base_url(sim.base_url())
            .client_credentials("demo-client", "demo-secret");
        let client = WatchedClient::build(builder).unwrap();
        let user = sim.user_ids().remove(0);
        let fence = crate::fleet::Fence::holding();
        let unit = UnitCtx {
            fence: Some(fence.clone()),
            ..unit()
        };
        let lapse = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            fence.lose();
        });
        let update = UserUpdate {
            user_id: user.clone(),
            fields: serde_json::json!({"title": "Late"})
                .as_object()
                .unwrap()
                .clone(),
        };
        let r = Users(client).deliver(unit, vec![update]).await;
        lapse.await.unwrap();
        assert!(matches!(r, Err(Undelivered::LeftToFleet)), "{r:?}");
        assert_eq!(sim.ledger_count_for(&user), 0, "no PATCH sent");
    }

    /// In a fleet, a PATCH that conflicts because the lease lapsed and the taker patched the
    /// user meanwhile (this line, then a later one) is not applied again over the taker's: the
    /// line is left to the taker, and the later line holds.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_conflict_after_the_lease_lapsed_is_left_to_the_taker() {
        use std::sync::atomic::AtomicBool;

        let sim = genesys_sim::Simulator::spawn(
            genesys_sim::SimConfig::default().users(1).rate_limit(None),
        )
        .await
        .unwrap();
        let user = sim.user_ids().remove(0);
        let credentials = |b: genesys_client::GenesysClientBuilder| {
            b.base_url(sim.base_url())
                .client_credentials("demo-client", "demo-secret")
        };
        let taker = credentials(GenesysClient::builder()).build().unwrap();
        let fence = crate::fleet::Fence::holding();
        let hyper =
            hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
                .build_http::<genesys_tower::Body>();
        let taken = Arc::new(AtomicBool::new(false));
        let (lapse, id) = (fence.clone(), user.clone());
        let leaf = tower::service_fn(move |req: http::Request<genesys_tower::Body>| {
            let (hyper, lapse, taker, id, taken) = (
                hyper.clone(),
                lapse.clone(),
                taker.clone(),
                id.clone(),
                taken.clone(),
            );
            async move {
                if req.method() == Method::PATCH && !taken.swap(true, Ordering::SeqCst) {
                    // The lease lapses as the PATCH waits; the taker applies a later line.
                    lapse.lose();
                    let later = serde_json::json!({"title": "Later"});
                    let later = later.as_object().unwrap();
                    taker
                        .update_user_with(&id, later, UpdateUserOptions::default())
                        .await
                        .unwrap();
                }
                hyper.request(req).await
            }
        });
        let client = WatchedClient::over(credentials(GenesysClient::builder()), leaf).unwrap();
        let unit = UnitCtx {
            fence: Some(fence),
            ..unit()
        };
        let earlier = UserUpdate {
            user_id: user.clone(),
            fields: serde_json::json!({"title": "Earlier"})
                .as_object()
                .unwrap()
                .clone(),
        };
        let r = Users(client).deliver(unit, vec![earlier]).await;
        assert!(matches!(r, Err(Undelivered::LeftToFleet)), "{r:?}");
        assert_eq!(sim.user(&user).unwrap()["title"], "Later");
    }

    /// Another answer than a turn-away ends the outage the run's units count: a later one is
    /// counted afresh, not from the first.
    #[tokio::test(start_paused = true)]
    async fn an_answer_ends_the_outage_clock() {
        let u = unit();
        let calls = AtomicU32::new(0);
        let r = patiently(&u, || {
            let i = calls.fetch_add(1, Ordering::SeqCst);
            async move {
                match i {
                    0 => Err::<(), _>(login(503, "temporarily_unavailable")),
                    _ => Err(GenesysError::Config("not found".into())),
                }
            }
        })
        .await;
        assert!(matches!(r, Err(Undelivered::Failed(_))), "{r:?}");
        tokio::time::advance(Duration::from_secs(1000)).await;
        let now = tokio::time::Instant::now();
        assert_eq!(u.gate.outage_since(now), now, "counted afresh");
    }

    /// A unit waiting for the login host gives up at once, unsent, when the job stops (a
    /// Ctrl-C, another unit that gave up): it is listed as not started, never as unknown.
    #[tokio::test(start_paused = true)]
    async fn a_job_that_stops_ends_the_wait_unsent() {
        let waiting = unit();
        let gate = waiting.gate.clone();
        let start = tokio::time::Instant::now();
        let stopper = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_secs(100)).await;
            gate.stop();
        });
        let r = patiently(&waiting, || async {
            Err::<(), _>(login(503, "temporarily_unavailable"))
        })
        .await;
        assert!(matches!(r, Err(Undelivered::NotSent(_))), "{r:?}");
        assert_eq!(start.elapsed(), Duration::from_secs(100));
        stopper.await.unwrap();
    }

    /// A journal's API is named the same however the region is spelled, and a base URL
    /// without its credentials.
    #[test]
    fn the_api_a_job_writes_to_is_named_one_way() {
        use clap::Parser;
        let target = |args: &[&str]| {
            let argv = [&["gcx"], args, &["config", "show"]].concat();
            api_target(&crate::cli::Cli::try_parse_from(argv).unwrap().common, None)
        };
        for spelling in [
            "us-east-1",
            "US-EAST-1",
            "mypurecloud.com",
            "api.mypurecloud.com",
        ] {
            assert_eq!(
                target(&["--region", spelling]).as_deref(),
                Some("region us-east-1"),
                "{spelling}"
            );
        }
        assert_eq!(
            target(&["--base-url", "https://user:s3cr3t@api.example.test/"]).as_deref(),
            Some("https://…@api.example.test")
        );
    }

    /// A job's concurrency: the flag, else `concurrency.limit` where something sets it, else
    /// 8, whatever else the configuration sets.
    #[test]
    fn a_jobs_concurrency_is_the_flag_the_configured_limit_or_eight() {
        use clap::Parser;
        let dir = std::env::temp_dir().join(format!("gcx-concurrency-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let retry_only = dir.join("retry.toml");
        std::fs::write(&retry_only, "[retry]\nmax_attempts = 4\n").unwrap();
        let limit = dir.join("limit.toml");
        std::fs::write(&limit, "[concurrency]\nlimit = 24\n").unwrap();
        let concurrency = |args: &[&str]| {
            let argv = [&["gcx"], args, &["config", "show"]].concat();
            let common = crate::cli::Cli::try_parse_from(argv).unwrap().common;
            let settings = settings::load(&common).unwrap();
            job_concurrency(&common, &settings.layered)
        };
        let retry_only = retry_only.to_str().unwrap();
        let limit = limit.to_str().unwrap();
        assert_eq!(concurrency(&["--config", retry_only]), 8);
        assert_eq!(concurrency(&["--config", limit]), 24);
        assert_eq!(concurrency(&["--config", limit, "--concurrency", "3"]), 3);
    }

    #[test]
    fn segments_are_escaped() {
        assert_eq!(percent_segment("custom_-_1a/b c"), "custom_-_1a%2Fb%20c");
    }

    #[test]
    fn redis_urls_are_shown_without_their_credentials() {
        for (url, shown) in [
            ("redis://127.0.0.1:6379", "redis://127.0.0.1:6379"),
            ("redis://user:p@ss@host:6379/0", "redis://…@host:6379/0"),
            ("redis://:pa?ss@host", "redis://…@host"),
            (
                "redis+unix:///run/redis.sock?pass=secret",
                "redis+unix:///run/redis.sock?…",
            ),
        ] {
            assert_eq!(redact_url(url), shown);
        }
    }
}
