//! Request handling: routing, authentication, quota, faults, and the handlers.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::Duration;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::{Map, Value, json};

use crate::conn::ConnCtl;
use crate::data::lock;
use crate::error::{
    ApiError, Detail, Resp, json_bytes, json_response, nested_error, oauth_error, text_response,
};
use crate::faults::{Fault, rng_for};
use crate::state::{Effect, Quota, Route, RouteNames, Shared, Stored, TokenCheck, fnv1a};

const STREAM_FAULTS: u64 = 10;
const STREAM_TOKEN_FAULTS: u64 = 11;
const STREAM_HEADERS: u64 = 12;
const STREAM_VARIANTS: u64 = 13;
const STREAM_TOKEN_VARIANTS: u64 = 14;

/// The longest `Idempotency-Key` accepted, in bytes.
pub(crate) const MAX_IDEMPOTENCY_KEY: usize = 255;

const NS_PLATFORM: &str = "platform.api";

thread_local! {
    static FAST_RNG: RefCell<SmallRng> = RefCell::new(SmallRng::from_os_rng());
}

fn correlation_id() -> String {
    let bytes: [u8; 16] = FAST_RNG.with(|r| r.borrow_mut().random());
    uuid::Builder::from_random_bytes(bytes)
        .into_uuid()
        .to_string()
}

mod actions;
mod ingest;
mod integrations;
mod limits;
mod oauth;
mod tokens;
mod users;

/// What serves a route.
#[derive(Clone, Copy)]
pub(crate) enum Serve {
    /// The API pipeline (latency, body limit, authentication, quota, faults), then the handler.
    Api(Handler),
    /// `POST /oauth/token`.
    Token,
    /// The simulator's own ledger (no authentication).
    Ledger,
    /// The simulator's own statistics (no authentication).
    Stats,
    /// The same statistics in the Prometheus text format (no authentication).
    Metrics,
}

/// A handler of the API pipeline.
pub(crate) type Handler = fn(&Ctx<'_>, &Call<'_>) -> Handled;

/// One route: the one place a route is declared. Matching, dispatch, the ledger's and the
/// statistics' route names and the 405 `Allow` header are derived from [`ROUTES`].
pub(crate) struct RouteDef {
    pub(crate) method: Method,
    /// The path, `{name}` for a parameter (one segment); [`INGESTION`] for the configured
    /// ingestion path.
    pub(crate) template: &'static str,
    /// Whether the request's body is read (and limited).
    pub(crate) has_body: bool,
    pub(crate) serve: Serve,
}

/// How many routes [`ROUTES`] holds.
pub(crate) const ROUTE_COUNT: usize = 14;

use crate::config::DRAIN_CAP;
use crate::config::INGESTION_TEMPLATE as INGESTION;

/// Every route of the simulator.
pub(crate) static ROUTES: [RouteDef; ROUTE_COUNT] = [
    RouteDef {
        method: Method::POST,
        template: "/oauth/token",
        has_body: true,
        serve: Serve::Token,
    },
    RouteDef {
        method: Method::GET,
        template: "/api/v2/users",
        has_body: false,
        serve: Serve::Api(users::list_users),
    },
    RouteDef {
        method: Method::GET,
        template: "/api/v2/users/{userId}",
        has_body: false,
        serve: Serve::Api(users::get_user),
    },
    RouteDef {
        method: Method::PATCH,
        template: "/api/v2/users/{userId}",
        has_body: true,
        serve: Serve::Api(users::patch_user),
    },
    RouteDef {
        method: Method::POST,
        template: "/api/v2/integrations/actions/{actionId}/execute",
        has_body: true,
        serve: Serve::Api(actions::execute),
    },
    RouteDef {
        method: Method::POST,
        template: "/api/v2/integrations/actions/{actionId}/test",
        has_body: true,
        serve: Serve::Api(actions::test),
    },
    RouteDef {
        method: Method::POST,
        template: INGESTION,
        has_body: true,
        serve: Serve::Api(ingest::ingest),
    },
    RouteDef {
        method: Method::GET,
        template: "/api/v2/integrations/{integrationId}/config/current",
        has_body: false,
        serve: Serve::Api(integrations::get_config),
    },
    RouteDef {
        method: Method::PUT,
        template: "/api/v2/integrations/{integrationId}/config/current",
        has_body: true,
        serve: Serve::Api(integrations::put_config),
    },
    RouteDef {
        method: Method::GET,
        template: "/api/v2/organizations/limits/namespaces/{namespace}",
        has_body: false,
        serve: Serve::Api(limits::limits),
    },
    RouteDef {
        method: Method::GET,
        template: "/api/v2/tokens/me",
        has_body: false,
        serve: Serve::Api(tokens::me),
    },
    RouteDef {
        method: Method::GET,
        template: "/sim/ledger",
        has_body: false,
        serve: Serve::Ledger,
    },
    RouteDef {
        method: Method::GET,
        template: "/sim/stats",
        has_body: false,
        serve: Serve::Stats,
    },
    RouteDef {
        method: Method::GET,
        template: "/sim/metrics",
        has_body: false,
        serve: Serve::Metrics,
    },
];

/// What a handler is given besides the context: the path parameter, the body, the query.
pub(crate) struct Call<'a> {
    pub(crate) param: &'a str,
    pub(crate) body: &'a [u8],
    pub(crate) query: Option<&'a str>,
}

enum Routing<'a> {
    /// The route's index in [`ROUTES`], its id, and its path parameter.
    Found((usize, Route), &'a str),
    /// The path exists with other methods: the `Allow` header's value.
    WrongMethod(String),
    NotFound,
}

/// The path parameter of `path` under `template` (empty without one), if it matches.
fn matches<'p>(template: &str, path: &'p str, ingestion_path: &str) -> Option<&'p str> {
    if template == INGESTION {
        return (path == ingestion_path).then_some("");
    }
    let mut param = "";
    let mut segs = path.trim_start_matches('/').split('/');
    for t in template.trim_start_matches('/').split('/') {
        let s = segs.next()?;
        if t.starts_with('{') && t.ends_with('}') {
            if s.is_empty() {
                return None;
            }
            param = s;
        } else if t != s {
            return None;
        }
    }
    segs.next().is_none().then_some(param)
}

fn route<'a>(sh: &Shared, method: &Method, path: &'a str) -> Routing<'a> {
    let mut allowed: Vec<&str> = Vec::new();
    for (i, def) in ROUTES.iter().enumerate() {
        if let Some(param) = matches(def.template, path, &sh.cfg.ingestion_path) {
            if def.method == *method {
                return Routing::Found((i, Route::at(i)), param);
            }
            allowed.push(def.method.as_str());
        }
    }
    if allowed.is_empty() {
        Routing::NotFound
    } else {
        Routing::WrongMethod(allowed.join(", "))
    }
}

/// The names of the routes, by index, for the statistics and the ledger.
pub(crate) fn names() -> RouteNames {
    ROUTES
        .iter()
        .map(|d| (d.method.as_str(), d.template))
        .collect()
}

/// Handles one request. On a connection-reset fault this future never completes: it has
/// asked the connection task to drop the connection, which drops this future too.
pub(crate) async fn handle(sh: Arc<Shared>, conn: Arc<ConnCtl>, req: Request<Incoming>) -> Resp {
    let cid = correlation_id();
    let path = req.uri().path().to_string();
    let (route, mut resp) = match route(&sh, req.method(), &path) {
        Routing::Found((index, route), param) => {
            let def = &ROUTES[index];
            let resp = match def.serve {
                Serve::Token => oauth::oauth_token(&sh, req).await,
                Serve::Ledger => json_response(StatusCode::OK, &*lock(&sh.ledger)),
                Serve::Stats => json_response(StatusCode::OK, &sh.stats()),
                Serve::Metrics => text_response(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    sh.stats().prometheus(),
                ),
                Serve::Api(handler) => {
                    api(&sh, &conn, (def, route), param, handler, req, &cid).await
                }
            };
            (route, resp)
        }
        Routing::WrongMethod(allowed) => {
            let resp = ApiError::new(
                405,
                "method.not.allowed",
                format!("{} is not allowed on {path}", req.method()),
            )
            .header("allow", &allowed)
            .into_response(&cid);
            (Route::OTHER, resp)
        }
        Routing::NotFound => (
            Route::OTHER,
            ApiError::not_found("The requested operation failed with status 404")
                .into_response(&cid),
        ),
    };
    if let Ok(v) = HeaderValue::from_str(&cid) {
        resp.headers_mut().insert("inin-correlation-id", v);
    }
    sh.stats.record(route, resp.status().as_u16());
    resp
}

enum BodyError {
    /// Too large; `drained` says whether the whole body was read (else close the connection).
    TooLarge {
        drained: bool,
    },
    Broken,
    /// No part of the body came for [`BODY_READ_TIMEOUT`].
    TimedOut,
}

/// The longest pause while a request's body comes in, as a real server allows: a client that
/// sends part of a body and stops is answered 408 and disconnected rather than held for ever.
pub(crate) const BODY_READ_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);

/// Reads a body of at most `max` bytes; a larger one is drained (up to a cap) and refused.
async fn read_body(
    headers: &HeaderMap,
    mut body: Incoming,
    max: usize,
) -> Result<Bytes, BodyError> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_CAP) {
        return Err(BodyError::TooLarge { drained: false });
    }
    let mut buf = BytesMut::new();
    let mut total = 0usize;
    loop {
        let next = tokio::time::timeout(BODY_READ_TIMEOUT, body.frame());
        let Some(frame) = next.await.map_err(|_| BodyError::TimedOut)? else {
            break;
        };
        let frame = frame.map_err(|_| BodyError::Broken)?;
        if let Ok(data) = frame.into_data() {
            total += data.len();
            if total > DRAIN_CAP {
                return Err(BodyError::TooLarge { drained: false });
            }
            if total <= max {
                buf.extend_from_slice(&data);
            }
        }
    }
    if total > max {
        return Err(BodyError::TooLarge { drained: true });
    }
    Ok(buf.freeze())
}

fn too_large(max: usize, drained: bool) -> ApiError {
    let e = ApiError::new(
        413,
        "request.entity.too.large",
        format!("The request body exceeds the maximum of [{max}] bytes"),
    )
    .params(
        "The request body exceeds the maximum of [{max}] bytes",
        &[("max", &max.to_string())],
    )
    .limit("request.bytes.max", NS_PLATFORM, max as u64);
    if drained {
        e
    } else {
        e.header("connection", "close")
    }
}

fn bearer(headers: &HeaderMap) -> Option<&str> {
    let v = headers.get(AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = v.split_once(' ')?;
    scheme
        .eq_ignore_ascii_case("bearer")
        .then(|| token.trim())
        .filter(|t| !t.is_empty())
}

/// Adds `inin-ratelimit-*` to the answer of the `n`-th API request, when configured (and when
/// this request is among the configured share).
/// Whose quota is spent.
#[derive(Clone, Copy)]
enum Kind {
    Token,
    Client,
}

/// `n` requests per `window` as the rate per minute a `*.rate.per.minute` limit names (rounded
/// down): the value the limits endpoint and a 429's `limit` give for the same quota.
pub(crate) fn per_minute(n: u32, window: Duration) -> u64 {
    let per_minute = u128::from(n) * 60_000 / window.as_millis().max(1);
    u64::try_from(per_minute).unwrap_or(u64::MAX)
}

/// Whether the `n`-th API request is answered in the real API's other words, when it has two
/// for the answer (a seeded draw: see `SimConfig::code_variants`).
fn variant(sh: &Shared, n: u64) -> bool {
    let share = sh.cfg.code_variants;
    share > 0.0 && rng_for(sh.cfg.seed, STREAM_VARIANTS, n).random::<f64>() < share
}

/// A 429 for a spent quota, as Genesys words it (its newer code on a share of them).
fn rate_limited(sh: &Shared, q: Quota, window: Duration, kind: Kind, cid: &str, n: u64) -> Resp {
    sh.stats.rate_limited.fetch_add(1, Relaxed);
    let code = if variant(sh, n) {
        "too.many.requests.retry.after"
    } else {
        "too.many.requests"
    };
    // The message counts whole seconds (a window under a second reads as 1).
    let window_secs = window.as_secs().max(1);
    let rate = per_minute(q.allowed, window);
    let msg = format!(
        "Rate limit exceeded the maximum [{}] requests within [{window_secs}] seconds",
        q.allowed
    );
    let mut resp = ApiError::new(429, code, msg)
        .params(
            "Rate limit exceeded the maximum [{limit}] requests within [{window}] seconds",
            &[
                ("limit", &q.allowed.to_string()),
                ("window", &window_secs.to_string()),
            ],
        )
        .limit(
            match kind {
                Kind::Token => "client.credentials.token.rate.per.minute",
                Kind::Client => "client.credentials.client.rate.per.minute",
            },
            NS_PLATFORM,
            rate,
        )
        .header("retry-after", sh.cfg.retry_after_format.value(q.reset_secs))
        .into_response(cid);
    add_quota_headers(sh, &mut resp, Some(q), n);
    resp
}

fn add_quota_headers(sh: &Shared, resp: &mut Resp, quota: Option<Quota>, n: u64) {
    if !sh.cfg.ratelimit_headers {
        return;
    }
    let share = sh.cfg.ratelimit_headers_share;
    if share < 1.0 && rng_for(sh.cfg.seed, STREAM_HEADERS, n).random::<f64>() >= share {
        return;
    }
    if let Some(q) = quota {
        let h = resp.headers_mut();
        h.insert("inin-ratelimit-allowed", HeaderValue::from(q.allowed));
        h.insert("inin-ratelimit-count", HeaderValue::from(q.count));
        h.insert("inin-ratelimit-reset", HeaderValue::from(q.reset_secs));
    }
}

/// The API pipeline: latency, body limit, authentication, quota, faults, the handler.
async fn api(
    sh: &Shared,
    conn: &ConnCtl,
    (def, route): (&RouteDef, Route),
    param: &str,
    handler: Handler,
    req: Request<Incoming>,
    cid: &str,
) -> Resp {
    let n = sh.api_seq.fetch_add(1, Relaxed);
    let mut rng = rng_for(sh.cfg.seed, STREAM_FAULTS, n);
    if let Some(delay) = sh.cfg.faults.latency(&mut rng) {
        sh.stats.fault("latency");
        tokio::time::sleep(delay).await;
    }
    // A key is a client's choice of at most a few dozen characters; a longer one is refused
    // rather than copied into every ledger entry of the request.
    if req
        .headers()
        .get("idempotency-key")
        .is_some_and(|key| key.len() > MAX_IDEMPOTENCY_KEY)
    {
        return ApiError::new(
            400,
            "bad.request",
            format!("The Idempotency-Key header is longer than [{MAX_IDEMPOTENCY_KEY}] bytes"),
        )
        .into_response(cid);
    }
    let (parts, body) = req.into_parts();
    let body = if def.has_body {
        match read_body(&parts.headers, body, sh.cfg.max_body_bytes).await {
            Ok(b) => b,
            Err(BodyError::TooLarge { drained }) => {
                return too_large(sh.cfg.max_body_bytes, drained).into_response(cid);
            }
            Err(BodyError::Broken) => {
                return ApiError::bad_request("The request body could not be read")
                    .into_response(cid);
            }
            Err(BodyError::TimedOut) => {
                return ApiError::new(
                    408,
                    "request.timeout",
                    "The request body did not arrive in time".to_owned(),
                )
                .into_response(cid);
            }
        }
    } else {
        Bytes::new()
    };

    // The real API's other words for this answer (see `SimConfig::code_variants`).
    let variant = variant(sh, n);
    let unauthorized = |rule: bool| {
        if rule {
            "authentication.required"
        } else {
            "bad.credentials"
        }
    };
    let Some(token) = bearer(&parts.headers) else {
        return ApiError::new(
            401,
            unauthorized(!variant),
            "No authentication bearer token specified in authorization header.",
        )
        .into_response(cid);
    };
    let (client, quota) = match sh.tokens.check(token, sh.cfg.rate_limit) {
        TokenCheck::Ok(client, quota) => (client, quota),
        TokenCheck::Unknown | TokenCheck::Expired => {
            return ApiError::new(401, unauthorized(variant), "Invalid login credentials.")
                .into_response(cid);
        }
        TokenCheck::Limited(q) => {
            let window = sh
                .cfg
                .rate_limit
                .map_or(Duration::from_secs(60), |(_, w)| w);
            return rate_limited(sh, q, window, Kind::Token, cid, n);
        }
    };
    // The client's own quota, across its tokens: what a fleet with one client shares.
    let quota = match sh.cfg.client_rate_limit {
        None => quota,
        Some(limit) => match sh.client_quotas.take(&client, limit) {
            Ok(q) => Some(q),
            Err(q) => return rate_limited(sh, q, limit.1, Kind::Client, cid, n),
        },
    };

    // Drawn for every request, so that a target leaves the others' draws as they were.
    let fault = sh.cfg.faults.decide(&mut rng);
    let fault = match &sh.cfg.faults_only_for {
        Some(target) if !target.matches(&parts.headers, &client) => Fault::None,
        _ => fault,
    };
    if let Some(kind) = fault.kind() {
        sh.stats.fault(kind);
    }
    let early = match fault {
        Fault::ServerError(status) => {
            let (code, msg) = match status {
                500 => (
                    "internal.server.error",
                    "The server encountered an unexpected error",
                ),
                502 => (
                    "bad.gateway",
                    "The upstream service returned an invalid response",
                ),
                503 => (
                    "service.unavailable",
                    "The service is currently unavailable",
                ),
                _ => (
                    "gateway.timeout",
                    "The upstream service did not respond in time",
                ),
            };
            Some(ApiError::new(status, code, msg).into_response(cid))
        }
        Fault::RetryAfter503(secs) => Some(
            ApiError::new(
                503,
                "service.unavailable",
                "The service is currently unavailable",
            )
            .header("retry-after", sh.cfg.retry_after_format.value(secs))
            .into_response(cid),
        ),
        Fault::LongRetryAfter(secs) => Some(
            ApiError::new(
                429,
                "too.many.requests.retry.after",
                format!("Rate limit exceeded; retry after [{secs}] seconds"),
            )
            .params(
                "Rate limit exceeded; retry after [{retryAfter}] seconds",
                &[("retryAfter", &secs.to_string())],
            )
            .header("retry-after", sh.cfg.retry_after_format.value(secs))
            .into_response(cid),
        ),
        Fault::ResetBefore => conn.reset().await,
        Fault::None
        | Fault::ResetAfter
        | Fault::Body(_)
        | Fault::GatewayAfter
        | Fault::CdnAfter
        | Fault::StalePage => None,
    };
    let mut resp = match early {
        Some(r) => r,
        None => {
            let ctx = Ctx {
                sh,
                cid,
                headers: &parts.headers,
                client: &client,
                route,
                variant,
            };
            let call = Call {
                param,
                body: &body,
                // A cache that ignores the query string serves the answer to the bare path.
                query: parts.uri.query().filter(|_| fault != Fault::StalePage),
            };
            handler(&ctx, &call).unwrap_or_else(|e| e.into_response(cid))
        }
    };
    add_quota_headers(sh, &mut resp, quota, n);
    if let Fault::Body(body) = fault {
        // The server (see `server::SimBody`) sends this answer's body badly.
        resp.extensions_mut().insert(body);
    }
    if fault == Fault::ResetAfter {
        // The effect is applied and in the ledger; the caller never learns it.
        conn.reset::<()>().await;
    }
    if fault == Fault::GatewayAfter {
        // The effect is applied and in the ledger; the caller hears a gateway that gave up.
        resp = ApiError::new(
            504,
            "gateway.timeout",
            "The upstream service did not respond in time",
        )
        .into_response(cid);
    }
    if fault == Fault::CdnAfter {
        // The effect is applied; the caller hears a CDN's page, not the API's JSON.
        let mut page = http::Response::new(http_body_util::Full::new(Bytes::from_static(
            b"<!DOCTYPE html><html><head><title>520: Web server is returning an unknown error\
              </title></head><body><h1>Web server is returning an unknown error</h1></body></html>",
        )));
        *page.status_mut() = StatusCode::from_u16(520).unwrap_or(StatusCode::BAD_GATEWAY);
        page.headers_mut().insert(
            CONTENT_TYPE,
            HeaderValue::from_static("text/html; charset=UTF-8"),
        );
        resp = page;
    }
    resp
}

/// What every handler of the API pipeline sees.
pub(crate) struct Ctx<'a> {
    sh: &'a Shared,
    cid: &'a str,
    headers: &'a HeaderMap,
    client: &'a Arc<str>,
    /// The route being served.
    route: Route,
    /// The answer is in the real API's other words, where it has two.
    variant: bool,
}

impl Ctx<'_> {
    fn idempotency_key(&self) -> Option<&str> {
        self.headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
    }

    /// Records an applied effect of this route in the ledger.
    fn record(&self, entity: String, payload: &[u8]) {
        self.sh.record(Effect {
            route: self.route,
            entity,
            idempotency_key: self.idempotency_key(),
            payload,
            correlation_id: self.cid,
        });
    }
}

pub(crate) type Handled = Result<Resp, ApiError>;

fn parse_object(body: &[u8]) -> Result<Map<String, Value>, ApiError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(m)) => Ok(m),
        Ok(_) => Err(ApiError::bad_request(
            "The request body must be a JSON object",
        )),
        Err(e) => Err(ApiError::bad_request(format!(
            "The request body could not be parsed as JSON: {e}"
        ))),
    }
}

fn query_param<'q>(query: Option<&'q str>, name: &str) -> Option<&'q str> {
    query?
        .split('&')
        .filter_map(|kv| kv.split_once('=').or(Some((kv, ""))))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}
