//! Seed 003's data action service: `POST /invoke-data-action` runs a Genesys Cloud data action
//! once per idempotency key, whatever its callers retry.
//!
//! Genesys data actions do not honour `Idempotency-Key`, so the deduplication happens here, in
//! front of the call: the server-side [`ServerIdempotencyLayer`] claims each key in a shared store
//! (Redis for several instances behind a load balancer, memory for one process), runs the action
//! once, keeps its answer, and answers every repeat with it (`Idempotent-Replayed: true`).
//!
//! # The request
//!
//! ```text
//! POST /invoke-data-action
//! Content-Type: application/json
//! Idempotency-Key: evt-2023-11-05-a1b2c3d4          (or "idempotency_key" in the body)
//!
//! {"idempotency_key": "evt-2023-11-05-a1b2c3d4",
//!  "action_id": "custom_-_3f1a...",                  (optional: the service's default action)
//!  "input_payload": {"contactId": "c-9876543210", "newStatus": "resolved"}}
//! ```
//!
//! The key may be sent in the `Idempotency-Key` header, in the body (seed 003's shape), or in
//! both; when both are sent they **must be equal** (400 `idempotency_key_mismatch` otherwise),
//! because a caller who sends two different keys has a bug that no choice of ours can fix.
//!
//! Before the idempotency layer sees the request, the body is checked (a JSON object with
//! `input_payload`, an object, and nothing but `idempotency_key` and `action_id` beside it), the
//! key is lifted into the header, and the body is rewritten to a canonical form: the key removed,
//! the default action filled in, object keys sorted. So the payload fingerprint does not depend
//! on where the key was sent, on whitespace, or on key order: the same operation sent in the
//! header form and in the body form is the same request; a different input or action is not
//! (422 `idempotency_key_reused`).
//!
//! # The answers
//!
//! | answer | when | stored for the key |
//! | --- | --- | --- |
//! | 200 `{"status":"completed","output":...,"execution_id":...}` | the action ran | yes: every repeat gets these bytes |
//! | 400 `invalid_request`, `idempotency_key_missing`, `idempotency_key_mismatch`, `idempotency_key_invalid`, `action_id_missing` | the request is malformed | no (nothing ran) |
//! | 409 `idempotency_request_in_progress` | the key is running elsewhere and did not finish within the wait ([`DataActionService::wait_in_flight`]) | no |
//! | 413 `request_body_too_large` | body over 1 MiB | no |
//! | 422 `idempotency_key_reused` | the key was used for another action or input | no (the first use stays) |
//! | 422 `genesys_rejected` | Genesys answered 4xx (bad input, unknown action): its status, code, message and correlation id are in `genesys` | no: fix the input, retry with the same key |
//! | 502 `genesys_auth_failed` | the login host refused the service's credentials, or Genesys answered 401/403 | no: the action did not run |
//! | 503 `genesys_unavailable`, `genesys_rate_limited` (with `Retry-After`) | Genesys stayed unavailable or rate limited after the client's retries; nothing ran | no: retry later with the same key |
//! | 503 `idempotency_store_unavailable` | the store (Redis) cannot be reached; nothing ran | no |
//! | 504 `outcome_unknown`, `genesys_output_unreadable` | the action **may have run** (a reset or timeout after sending, a Genesys 5xx, an unreadable answer) | **yes**: a retry with the same key gets this answer and never runs the action a second time |
//!
//! A caller who hangs up does not cancel its call: each request runs on a task of its own, so an
//! action already sent to Genesys Cloud finishes and its answer is stored for the key, and the
//! caller's retry gets it instead of running the action again.
//!
//! Every error body is `{"error": "<code>", "message": "<what happened and what to do>"}`; the
//! service's own errors add `"action_may_have_run": true|false`.
//!
//! Only 2xx and 504 are stored ([`is_stored`]): a stored failure would keep a caller from ever
//! getting the action run under its key, so failures where nothing ran are released; and an
//! answer where the action may have run must be stored, or a retry could run it twice.
//!
//! # Example
//!
//! ```no_run
//! use examples::data_action_service::{DataActionService, client_builder};
//! use genesys_tower::idempotency::RedisStore;
//!
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let client = client_builder()
//!     .base_url("http://127.0.0.1:8080") // a simulator; or .region(..) for a real org
//!     .client_credentials("demo-client", "demo-secret")
//!     .build()?;
//! let app = DataActionService::new(client)
//!     .store(RedisStore::open("redis://127.0.0.1:6379")?.prefix("data-action-service:"))
//!     .default_action_id("echo")
//!     .router();
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(()) }
//! ```

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::middleware::{self, Next};
use axum::response::Response;
use axum::routing::post;
use genesys_client::{GenesysClient, GenesysClientBuilder, GenesysError};
use genesys_tower::Metrics;
use genesys_tower::body::DEFAULT_REPLAY_LIMIT;
use genesys_tower::idempotency::server::ServerIdempotencyLayer;
use genesys_tower::idempotency::{IDEMPOTENCY_KEY, IdempotencyKey, IdempotencyStore, MemoryStore};
use http::{HeaderValue, Method, StatusCode, header};
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{Map, Value, json};

/// The route.
pub const ROUTE: &str = "/invoke-data-action";

/// The largest request body read (1 MiB): the limit on what the caller sent.
pub const BODY_LIMIT: usize = DEFAULT_REPLAY_LIMIT;

/// The idempotency layer's limit, on the body after its canonical rewrite: the caller's body
/// is checked against [`BODY_LIMIT`] before the rewrite, which adds the action id and may
/// lengthen numbers (`1e2` becomes `100.0`), so the rewritten body gets room to grow.
const CANONICAL_BODY_LIMIT: usize = 2 * BODY_LIMIT + 4096;

/// The longest a data action call may take in the handler, retries included (90 s by default).
/// Past it the handler answers 504 `outcome_unknown`, so that a handler never outlives its lock.
pub const DEFAULT_CALL_TIMEOUT: Duration = Duration::from_secs(90);

/// The total deadline of [`client_builder`]'s retry policy (60 s): with one attempt timeout on
/// top (an attempt in flight is not cut), it fits in [`DEFAULT_CALL_TIMEOUT`].
pub const CLIENT_DEADLINE: Duration = Duration::from_secs(60);

/// The per-attempt timeout of [`client_builder`] (20 s).
pub const CLIENT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(20);

/// How much longer than the call timeout a key stays locked by default (30 s), so that a lock
/// never expires under a handler that is still running.
pub const LOCK_MARGIN: Duration = Duration::from_secs(30);

/// How long answers are kept for replay by default (24 h).
pub const DEFAULT_RETENTION: Duration = Duration::from_secs(24 * 60 * 60);

/// A [`GenesysClient`] builder set up for this service; add the target (`base_url` or `region`)
/// and the credentials, then `build()`.
///
/// - No client-side idempotency layer: data actions ignore keys, and the service's own layer
///   already answers repeats; a client layer would only keep a second copy of every answer.
/// - The client's own classification for data actions: a 500, 502 or 504 can hide an action
///   that ran, so it ends the call as an unknown outcome, never replayed; 429, 503 and
///   connection failures before sending are still retried: nothing ran.
/// - A total deadline of [`CLIENT_DEADLINE`] and an attempt timeout of
///   [`CLIENT_ATTEMPT_TIMEOUT`], which fit in the service's [`DEFAULT_CALL_TIMEOUT`].
pub fn client_builder() -> GenesysClientBuilder {
    GenesysClient::builder()
        .no_idempotency()
        .attempt_timeout(CLIENT_ATTEMPT_TIMEOUT)
        .retry_policy(
            GenesysClient::retry_policy_builder()
                .deadline(CLIENT_DEADLINE)
                .build(),
        )
}

/// Which answers are kept for replay: 2xx (the action ran) and 504 (it may have run).
///
/// Everything else is released, so that a caller can retry with the same key: those answers
/// say that nothing ran.
pub fn is_stored(status: StatusCode) -> bool {
    status.is_success() || status == StatusCode::GATEWAY_TIMEOUT
}

/// The service: configure it, then build its [`router`](DataActionService::router).
#[derive(Clone)]
#[must_use]
pub struct DataActionService {
    client: GenesysClient,
    store: Arc<dyn IdempotencyStore>,
    default_action_id: Option<String>,
    call_timeout: Duration,
    lock_ttl: Option<Duration>,
    retention: Duration,
    wait_in_flight: Option<Duration>,
    metrics: Metrics,
}

impl DataActionService {
    /// A service that runs actions through `client` (build it from [`client_builder`]), with a
    /// [`MemoryStore`] (one process; give several instances one Redis store with
    /// [`store`](Self::store)), no default action, and the defaults below.
    pub fn new(client: GenesysClient) -> Self {
        DataActionService {
            client,
            store: Arc::new(MemoryStore::new()),
            default_action_id: None,
            call_timeout: DEFAULT_CALL_TIMEOUT,
            lock_ttl: None,
            retention: DEFAULT_RETENTION,
            wait_in_flight: Some(DEFAULT_CALL_TIMEOUT),
            metrics: Metrics::new(),
        }
    }

    /// The idempotency store; instances behind one load balancer must share one (Redis).
    pub fn store(mut self, store: impl IdempotencyStore) -> Self {
        self.store = Arc::new(store);
        self
    }

    /// The action run when a request names none (default: none, `action_id` is required).
    pub fn default_action_id(mut self, id: impl Into<String>) -> Self {
        self.default_action_id = Some(id.into());
        self
    }

    /// The longest a call to Genesys may take in the handler (default [`DEFAULT_CALL_TIMEOUT`]);
    /// past it the answer is 504 `outcome_unknown`. Keep the client's deadline plus one attempt
    /// timeout below it.
    pub fn call_timeout(mut self, timeout: Duration) -> Self {
        self.call_timeout = timeout;
        self
    }

    /// The lease of a claim on a key (default: the call timeout plus [`LOCK_MARGIN`]). The
    /// layer renews it while the handler runs; once it ends without an answer (the instance
    /// died, or lost Redis), repeats are told the outcome is unknown, and the action never runs
    /// twice.
    pub fn lock_ttl(mut self, ttl: Duration) -> Self {
        self.lock_ttl = Some(ttl);
        self
    }

    /// How long answers are kept for replay (default 24 h).
    pub fn retention(mut self, retention: Duration) -> Self {
        self.retention = retention;
        self
    }

    /// A request whose key is still running (on any instance) waits up to `timeout` for its
    /// answer (default: the call timeout), then gets 409.
    pub fn wait_in_flight(mut self, timeout: Duration) -> Self {
        self.wait_in_flight = Some(timeout);
        self
    }

    /// A request whose key is still running gets 409 with `Retry-After: 1` at once.
    pub fn reject_in_flight(mut self) -> Self {
        self.wait_in_flight = None;
        self
    }

    /// Counters of the idempotency layer (replays, joins) to feed.
    pub fn metrics(mut self, metrics: Metrics) -> Self {
        self.metrics = metrics;
        self
    }

    /// The axum router: `POST` [`ROUTE`], behind the body-key check and the idempotency layer.
    pub fn router(self) -> Router {
        let lock_ttl = self.lock_ttl.unwrap_or(self.call_timeout + LOCK_MARGIN);
        let mut idempotency = ServerIdempotencyLayer::new()
            .store(self.store.clone())
            .metrics(self.metrics.clone())
            .require_key(true)
            .body_limit(CANONICAL_BODY_LIMIT)
            .lock_ttl(lock_ttl)
            .retention(self.retention)
            .store_if(is_stored);
        if let Some(wait) = self.wait_in_flight {
            idempotency = idempotency.wait_in_flight(wait);
        }
        let shared = Arc::new(Shared {
            client: self.client,
            default_action_id: self.default_action_id,
            call_timeout: self.call_timeout,
        });
        // route_layer: the last one added runs first. So a request is first detached from its
        // connection, then its body key is lifted into the header, then the idempotency layer
        // looks for it.
        Router::new()
            .route(ROUTE, post(invoke))
            .route_layer(idempotency)
            .route_layer(middleware::from_fn_with_state(
                shared.clone(),
                lift_body_key,
            ))
            .route_layer(middleware::from_fn(run_detached))
            .with_state(shared)
    }
}

impl fmt::Debug for DataActionService {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DataActionService")
            .field("client", &self.client)
            .field("default_action_id", &self.default_action_id)
            .field("call_timeout", &self.call_timeout)
            .field("lock_ttl", &self.lock_ttl)
            .field("retention", &self.retention)
            .field("wait_in_flight", &self.wait_in_flight)
            .finish_non_exhaustive()
    }
}

struct Shared {
    client: GenesysClient,
    default_action_id: Option<String>,
    call_timeout: Duration,
}

/// One invocation, as the body gives it.
struct Invocation {
    key: Option<String>,
    action_id: Option<String>,
    input: Map<String, Value>,
}

const SHAPE: &str = "send {\"idempotency_key\": \"<key>\", \"action_id\": \"<optional>\", \
                     \"input_payload\": {...}}";

fn parse_invocation(bytes: &[u8]) -> Result<Invocation, String> {
    let value: Value = serde_json::from_slice(bytes)
        .map_err(|e| format!("the request body is not JSON ({e}): {SHAPE}"))?;
    let Value::Object(mut fields) = value else {
        return Err(format!("the request body must be a JSON object: {SHAPE}"));
    };
    let mut string = |name: &str| match fields.remove(name) {
        None | Some(Value::Null) => Ok(None),
        Some(Value::String(s)) if !s.is_empty() => Ok(Some(s)),
        Some(_) => Err(format!("\"{name}\" must be a non-empty string")),
    };
    let key = string("idempotency_key")?;
    let action_id = string("action_id")?;
    let input = match fields.remove("input_payload") {
        Some(Value::Object(input)) => input,
        Some(_) => {
            return Err(
                "\"input_payload\" must be a JSON object: the data action's input".to_owned(),
            );
        }
        None => {
            return Err(format!(
                "\"input_payload\" is required (the data action's input, a JSON object): {SHAPE}"
            ));
        }
    };
    if let Some(unknown) = fields.keys().next() {
        return Err(format!(
            "unknown field {unknown:?}: the body takes idempotency_key, action_id and \
             input_payload"
        ));
    }
    Ok(Invocation {
        key,
        action_id,
        input,
    })
}

/// The same JSON with every object's keys in order, so that equal payloads are equal bytes.
fn canonical(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            Value::Object(
                entries
                    .into_iter()
                    .map(|(k, v)| (k, canonical(v)))
                    .collect(),
            )
        }
        Value::Array(items) => Value::Array(items.into_iter().map(canonical).collect()),
        other => other,
    }
}

/// Runs the rest of the request (the idempotency layer and the handler) on a task of its own, so
/// that a caller who hangs up does not cancel it halfway: the action may already be running in
/// Genesys Cloud, and its answer must still be stored for the key, or the caller's retry (after
/// the lock expires) would run it a second time. The caller who stayed gets the answer as usual.
async fn run_detached(request: Request, next: Next) -> Response {
    match tokio::spawn(next.run(request)).await {
        Ok(response) => response,
        Err(e) => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "internal_error",
            format!("the request's task failed ({e}); the data action may have run"),
        ),
    }
}

/// Checks the body, lifts its key into the `Idempotency-Key` header, and rewrites the body to
/// its canonical form, before the idempotency layer fingerprints it.
async fn lift_body_key(
    State(shared): State<Arc<Shared>>,
    request: Request,
    next: Next,
) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let (mut parts, body) = request.into_parts();
    let bytes = match Limited::new(body, BODY_LIMIT).collect().await {
        Ok(collected) => collected.to_bytes(),
        Err(e) if e.is::<LengthLimitError>() => {
            return error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "request_body_too_large",
                format!("the request body is larger than {BODY_LIMIT} bytes"),
            );
        }
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "request_body_unreadable",
                format!("the request body could not be read: {e}"),
            );
        }
    };
    let invocation = match parse_invocation(&bytes) {
        Ok(invocation) => invocation,
        Err(message) => return error(StatusCode::BAD_REQUEST, "invalid_request", message),
    };

    // Several headers, or one that is not text, are left to the idempotency layer to refuse.
    let header_key = parts.headers.get(IDEMPOTENCY_KEY);
    match (header_key, invocation.key.as_deref()) {
        (None, None) => {
            return error(
                StatusCode::BAD_REQUEST,
                "idempotency_key_missing",
                "this endpoint requires an idempotency key: send it as the Idempotency-Key \
                 header or as \"idempotency_key\" in the body, a unique key (a UUID) per \
                 operation and the same key when you retry it"
                    .to_owned(),
            );
        }
        (Some(header), Some(body)) if header.as_bytes() != body.as_bytes() => {
            return error(
                StatusCode::BAD_REQUEST,
                "idempotency_key_mismatch",
                "the Idempotency-Key header and \"idempotency_key\" in the body differ: send \
                 one key, or the same key in both"
                    .to_owned(),
            );
        }
        (None, Some(body)) => match HeaderValue::from_str(body) {
            Ok(value) => {
                parts.headers.insert(IDEMPOTENCY_KEY, value);
            }
            Err(_) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "idempotency_key_invalid",
                    "the idempotency key must be visible ASCII (a UUID is a good key)".to_owned(),
                );
            }
        },
        _ => {}
    }

    let Some(action_id) = invocation
        .action_id
        .or_else(|| shared.default_action_id.clone())
    else {
        return error(
            StatusCode::BAD_REQUEST,
            "action_id_missing",
            "this service has no default data action: send \"action_id\" in the body".to_owned(),
        );
    };
    let body = json!({
        "action_id": action_id,
        "input_payload": canonical(Value::Object(invocation.input)),
    });
    let body = serde_json::to_vec(&body).expect("a JSON value always serializes");
    parts.headers.remove(header::CONTENT_LENGTH);
    parts.headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    next.run(Request::from_parts(parts, Body::from(body))).await
}

/// The handler: runs the action once (the layers above made sure of that) and answers.
async fn invoke(State(shared): State<Arc<Shared>>, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let key = parts
        .extensions
        .get::<IdempotencyKey>()
        .map(|k| k.as_str().to_owned())
        .unwrap_or_default();
    // The body was checked and rewritten by `lift_body_key`; read it again, defensively.
    let canonical = match body.collect().await.map(|b| b.to_bytes()) {
        Ok(bytes) => bytes,
        Err(e) => {
            return error(
                StatusCode::BAD_REQUEST,
                "request_body_unreadable",
                format!("the request body could not be read: {e}"),
            );
        }
    };
    let (action_id, input) = match serde_json::from_slice::<Value>(&canonical) {
        Ok(Value::Object(mut fields)) => (
            fields
                .remove("action_id")
                .and_then(|v| v.as_str().map(str::to_owned))
                .unwrap_or_default(),
            fields.remove("input_payload").unwrap_or(Value::Null),
        ),
        _ => {
            return error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                format!("the request body is not a JSON object: {SHAPE}"),
            );
        }
    };

    let call = shared.client.execute_action(&action_id, &input);
    let outcome = tokio::time::timeout(shared.call_timeout, call).await;
    match outcome {
        Ok(Ok(output)) => {
            let execution_id = uuid::Uuid::new_v4().to_string();
            tracing::info!(key, action_id, execution_id, "data action executed");
            json_response(
                StatusCode::OK,
                &json!({
                    "status": "completed",
                    "idempotency_key": key,
                    "action_id": action_id,
                    "execution_id": execution_id,
                    "completed_at": httpdate::fmt_http_date(SystemTime::now()),
                    "output": output,
                }),
            )
        }
        Ok(Err(e)) => {
            tracing::warn!(key, action_id, error = %e, "data action failed");
            genesys_error(&e)
        }
        Err(_) => {
            tracing::warn!(key, action_id, "data action call timed out");
            json_response(
                StatusCode::GATEWAY_TIMEOUT,
                &json!({
                    "error": "outcome_unknown",
                    "message": format!(
                        "the call to Genesys Cloud did not finish within {} s: the data action \
                         may have run. {KEPT}",
                        shared.call_timeout.as_secs_f64()
                    ),
                    "action_may_have_run": true,
                }),
            )
        }
    }
}

const KEPT: &str = "This answer is kept for the idempotency key: a retry with the same key gets \
                    it again and never runs the action twice. Check the action's effect before \
                    running the operation again under a new key.";

/// The answer for a failed call: see the table in the [module docs](self).
pub fn genesys_error(e: &GenesysError) -> Response {
    let (status, code, ran, retry_after) = match e {
        // Whatever the last answer said, an attempt before it may have run the action.
        e if e.may_have_been_applied() => {
            (StatusCode::GATEWAY_TIMEOUT, "outcome_unknown", true, None)
        }
        GenesysError::Api(api) => match api.status() {
            StatusCode::UNAUTHORIZED | StatusCode::FORBIDDEN => {
                (StatusCode::BAD_GATEWAY, "genesys_auth_failed", false, None)
            }
            StatusCode::TOO_MANY_REQUESTS => (
                StatusCode::SERVICE_UNAVAILABLE,
                "genesys_rate_limited",
                false,
                Some(api.retry_after().unwrap_or(Duration::from_secs(60))),
            ),
            StatusCode::SERVICE_UNAVAILABLE => (
                StatusCode::SERVICE_UNAVAILABLE,
                "genesys_unavailable",
                false,
                Some(api.retry_after().unwrap_or(Duration::from_secs(5))),
            ),
            // The request may have arrived whole after all: the server gave up waiting for it,
            // or a timeout on the way made the 408 up.
            StatusCode::REQUEST_TIMEOUT => {
                (StatusCode::GATEWAY_TIMEOUT, "outcome_unknown", true, None)
            }
            s if s.is_client_error() => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "genesys_rejected",
                false,
                None,
            ),
            // 500, 502, 504: a gateway error can hide an action that ran.
            _ => (StatusCode::GATEWAY_TIMEOUT, "outcome_unknown", true, None),
        },
        GenesysError::OAuth(_) => (StatusCode::BAD_GATEWAY, "genesys_auth_failed", false, None),
        GenesysError::RetryAfterTooLong { retry_after, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "genesys_rate_limited",
            false,
            Some(*retry_after),
        ),
        // The retry layer's deadline is checked between attempts only, and data actions are
        // retried only after answers that say nothing ran (429, 503, refused connections).
        GenesysError::DeadlineExceeded { retry_after, .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "genesys_unavailable",
            false,
            Some(retry_after.unwrap_or(Duration::from_secs(5))),
        ),
        // A proxy that refused the tunnel: its settings are the service's to fix, and a retry
        // would only be refused again.
        e if e.is_proxy_refusal() => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "service_misconfigured",
            false,
            None,
        ),
        GenesysError::Transport { .. } => (
            StatusCode::SERVICE_UNAVAILABLE,
            "genesys_unavailable",
            false,
            Some(Duration::from_secs(5)),
        ),
        GenesysError::Decode { .. } => (
            StatusCode::GATEWAY_TIMEOUT,
            "genesys_output_unreadable",
            true,
            None,
        ),
        GenesysError::Config(_) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            "service_misconfigured",
            false,
            None,
        ),
        // Outcome unknown, and whatever a later version adds: assume the worst.
        _ => (StatusCode::GATEWAY_TIMEOUT, "outcome_unknown", true, None),
    };
    let advice = match (ran, status) {
        (true, _) => format!("the data action may have run. {KEPT}"),
        (false, StatusCode::UNPROCESSABLE_ENTITY) => {
            "Genesys Cloud refused the action or its input; nothing ran: fix the request and \
             retry, with the same key if you like"
                .to_owned()
        }
        (false, StatusCode::BAD_GATEWAY) => {
            "the service could not authenticate to Genesys Cloud; nothing ran: the operator must \
             check the OAuth client (its secret, its region, its permission to execute data \
             actions); then retry with the same key"
                .to_owned()
        }
        (false, StatusCode::SERVICE_UNAVAILABLE) => {
            "nothing ran: retry later with the same key".to_owned()
        }
        (false, _) => "nothing ran: the operator must fix the service's configuration".to_owned(),
    };
    let mut body = json!({
        "error": code,
        "message": format!("{e}; {advice}"),
        "action_may_have_run": ran,
    });
    if let Some(api) = e.api() {
        body["genesys"] = json!({
            "status": api.status().as_u16(),
            "code": api.code(),
            "message": api.message(),
            "correlation_id": api.context_id(),
        });
    }
    let mut response = json_response(status, &body);
    if let Some(wait) = retry_after {
        // Whole seconds, rounded up: never ask for less than the server did.
        let secs = wait.as_secs() + u64::from(wait.subsec_nanos() > 0);
        response
            .headers_mut()
            .insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
    }
    response
}

fn json_response(status: StatusCode, body: &Value) -> Response {
    let bytes = serde_json::to_vec(body).expect("a JSON value always serializes");
    let mut response = Response::new(Body::from(bytes));
    *response.status_mut() = status;
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    response
}

/// An error answer in the idempotency layer's shape, `{"error", "message"}`.
fn error(status: StatusCode, code: &str, message: String) -> Response {
    json_response(status, &json!({ "error": code, "message": message }))
}

#[cfg(test)]
mod tests;
