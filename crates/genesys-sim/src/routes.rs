//! Request handling: routing, authentication, quota, faults, and the handlers.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;

use base64::Engine as _;
use bytes::{Bytes, BytesMut};
use http::header::{AUTHORIZATION, CONTENT_LENGTH, CONTENT_TYPE};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use serde_json::{Map, Value, json};

use crate::data::lock;
use crate::error::{ApiError, Detail, Resp, json_bytes, json_response, nested_error, oauth_error};
use crate::faults::{Fault, rng_for};
use crate::server::ConnCtl;
use crate::state::{Effect, Quota, Route, Shared, Stored, TokenCheck, fnv1a};

const STREAM_FAULTS: u64 = 10;
const STREAM_TOKEN_FAULTS: u64 = 11;
const STREAM_HEADERS: u64 = 12;

/// A body beyond this is not even drained: the connection is closed after the 413.
const DRAIN_CAP: usize = 8 * 1024 * 1024;

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

/// Path parameters of a matched route.
struct Matched<'a> {
    route: Route,
    param: &'a str,
}

enum Routing<'a> {
    Found(Matched<'a>),
    WrongMethod(Route),
    NotFound,
}

fn route<'a>(sh: &Shared, method: &Method, path: &'a str) -> Routing<'a> {
    let want = |route: Route, m: Method, param: &'a str| {
        if *method == m {
            Routing::Found(Matched { route, param })
        } else {
            Routing::WrongMethod(route)
        }
    };
    if path == sh.cfg.ingestion_path {
        return want(Route::Ingest, Method::POST, "");
    }
    let segs: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match segs.as_slice() {
        ["oauth", "token"] => want(Route::Token, Method::POST, ""),
        ["sim", "ledger"] => want(Route::Ledger, Method::GET, ""),
        ["sim", "stats"] => want(Route::Stats, Method::GET, ""),
        ["api", "v2", "users"] => want(Route::ListUsers, Method::GET, ""),
        ["api", "v2", "users", id] if !id.is_empty() => match *method {
            Method::GET => want(Route::GetUser, Method::GET, id),
            _ => want(Route::PatchUser, Method::PATCH, id),
        },
        ["api", "v2", "integrations", "actions", id, "execute"] => {
            want(Route::Execute, Method::POST, id)
        }
        ["api", "v2", "integrations", "actions", id, "test"] => want(Route::Test, Method::POST, id),
        ["api", "v2", "integrations", id, "config", "current"] => match *method {
            Method::GET => want(Route::GetConfig, Method::GET, id),
            _ => want(Route::PutConfig, Method::PUT, id),
        },
        ["api", "v2", "organizations", "limits", "namespaces", ns] => {
            want(Route::Limits, Method::GET, ns)
        }
        _ => Routing::NotFound,
    }
}

/// Handles one request. On a connection-reset fault this future never completes: it has
/// asked the connection task to drop the connection, which drops this future too.
pub(crate) async fn handle(sh: Arc<Shared>, conn: Arc<ConnCtl>, req: Request<Incoming>) -> Resp {
    let cid = correlation_id();
    let path = req.uri().path().to_string();
    let (route, mut resp) = match route(&sh, req.method(), &path) {
        Routing::Found(m) => {
            let resp = match m.route {
                Route::Token => oauth_token(&sh, req).await,
                Route::Ledger => json_response(StatusCode::OK, &*lock(&sh.ledger)),
                Route::Stats => json_response(StatusCode::OK, &sh.stats()),
                _ => api(&sh, &conn, &m, req, &cid).await,
            };
            (m.route, resp)
        }
        Routing::WrongMethod(r) => {
            let allowed = match r {
                Route::GetUser | Route::PatchUser => "GET, PATCH",
                Route::GetConfig | Route::PutConfig => "GET, PUT",
                other => other.parts(&sh.cfg.ingestion_path).0,
            };
            let resp = ApiError::new(
                405,
                "method.not.allowed",
                format!("{} is not allowed on {path}", req.method()),
            )
            .header("allow", allowed)
            .into_response(&cid);
            (Route::Other, resp)
        }
        Routing::NotFound => (
            Route::Other,
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
}

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
    while let Some(frame) = body.frame().await {
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

fn has_body(route: Route) -> bool {
    matches!(
        route,
        Route::PatchUser | Route::Execute | Route::Test | Route::Ingest | Route::PutConfig
    )
}

/// The API pipeline: latency, body limit, authentication, quota, faults, the handler.
async fn api(
    sh: &Shared,
    conn: &ConnCtl,
    m: &Matched<'_>,
    req: Request<Incoming>,
    cid: &str,
) -> Resp {
    let n = sh.api_seq.fetch_add(1, Relaxed);
    let mut rng = rng_for(sh.cfg.seed, STREAM_FAULTS, n);
    if let Some(delay) = sh.cfg.faults.latency(&mut rng) {
        sh.stats.fault("latency");
        tokio::time::sleep(delay).await;
    }
    let (parts, body) = req.into_parts();
    let body = if has_body(m.route) {
        match read_body(&parts.headers, body, sh.cfg.max_body_bytes).await {
            Ok(b) => b,
            Err(BodyError::TooLarge { drained }) => {
                return too_large(sh.cfg.max_body_bytes, drained).into_response(cid);
            }
            Err(BodyError::Broken) => {
                return ApiError::bad_request("The request body could not be read")
                    .into_response(cid);
            }
        }
    } else {
        Bytes::new()
    };

    let Some(token) = bearer(&parts.headers) else {
        return ApiError::new(
            401,
            "authentication.required",
            "No authentication bearer token specified in authorization header.",
        )
        .into_response(cid);
    };
    let (client, quota) = match sh.tokens.check(token, sh.cfg.rate_limit) {
        TokenCheck::Ok(client, quota) => (client, quota),
        TokenCheck::Unknown | TokenCheck::Expired => {
            return ApiError::new(401, "bad.credentials", "Invalid login credentials.")
                .into_response(cid);
        }
        TokenCheck::Limited(q) => {
            sh.stats.rate_limited.fetch_add(1, Relaxed);
            let window = sh.cfg.rate_limit.map(|(_, w)| w.as_secs()).unwrap_or(60);
            let msg = format!(
                "Rate limit exceeded the maximum [{}] requests within [{window}] seconds",
                q.allowed
            );
            let mut resp = ApiError::new(429, "too.many.requests", msg)
                .params(
                    "Rate limit exceeded the maximum [{limit}] requests within [{window}] seconds",
                    &[
                        ("limit", &q.allowed.to_string()),
                        ("window", &window.to_string()),
                    ],
                )
                .limit(
                    "client.credentials.token.rate.per.minute",
                    NS_PLATFORM,
                    u64::from(q.allowed),
                )
                .header("retry-after", sh.cfg.retry_after_format.value(q.reset_secs))
                .into_response(cid);
            add_quota_headers(sh, &mut resp, Some(q), n);
            return resp;
        }
    };

    let fault = sh.cfg.faults.decide(&mut rng);
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
        Fault::None | Fault::ResetAfter | Fault::Body(_) => None,
    };
    let mut resp = match early {
        Some(r) => r,
        None => {
            let ctx = Ctx {
                sh,
                cid,
                headers: &parts.headers,
                client: &client,
            };
            match m.route {
                Route::ListUsers => list_users(&ctx, parts.uri.query()),
                Route::GetUser => get_user(&ctx, m.param),
                Route::PatchUser => patch_user(&ctx, m.param, &body),
                Route::Execute => execute(&ctx, m.param, &body, parts.uri.query(), false),
                Route::Test => execute(&ctx, m.param, &body, parts.uri.query(), true),
                Route::Ingest => ingest(&ctx, &body),
                Route::GetConfig => get_config(&ctx, m.param),
                Route::PutConfig => put_config(&ctx, m.param, &body),
                Route::Limits => limits(&ctx, m.param),
                _ => Err(ApiError::not_found(
                    "The requested operation failed with status 404",
                )),
            }
            .unwrap_or_else(|e| e.into_response(cid))
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
    resp
}

struct Ctx<'a> {
    sh: &'a Shared,
    cid: &'a str,
    headers: &'a HeaderMap,
    client: &'a Arc<str>,
}

impl Ctx<'_> {
    fn idempotency_key(&self) -> Option<&str> {
        self.headers
            .get("idempotency-key")
            .and_then(|v| v.to_str().ok())
    }

    fn record(&self, route: Route, entity: String, payload: &[u8]) {
        self.sh.record(Effect {
            route,
            entity,
            idempotency_key: self.idempotency_key(),
            payload,
            correlation_id: self.cid,
        });
    }
}

type Handled = Result<Resp, ApiError>;

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

fn page_param(
    query: Option<&str>,
    name: &str,
    default: usize,
    max: usize,
) -> Result<usize, ApiError> {
    match query_param(query, name) {
        None => Ok(default),
        Some(v) => match v.parse::<usize>() {
            Ok(n) if (1..=max).contains(&n) => Ok(n),
            _ => Err(ApiError::bad_request(format!(
                "{name} must be an integer between 1 and {max}, got `{v}`"
            ))
            .detail(Detail {
                error_code: "invalid.value".into(),
                field_name: Some(name.to_string()),
                ..Detail::default()
            })),
        },
    }
}

fn list_users(ctx: &Ctx<'_>, query: Option<&str>) -> Handled {
    let page_size = page_param(query, "pageSize", 25, 500)?;
    let page_number = page_param(query, "pageNumber", 1, usize::MAX)?;
    let users = &ctx.sh.users.list;
    let total = users.len();
    let page_count = total.div_ceil(page_size);
    let start = (page_number - 1).saturating_mul(page_size).min(total);
    let end = start.saturating_add(page_size).min(total);
    let entities: Vec<Value> = users[start..end]
        .iter()
        .map(|u| serde_json::to_value(&*lock(u)).unwrap_or(Value::Null))
        .collect();
    let uri = |n: usize| format!("/api/v2/users?pageSize={page_size}&pageNumber={n}");
    let mut body = json!({
        "entities": entities,
        "pageSize": page_size,
        "pageNumber": page_number,
        "total": total,
        "pageCount": page_count,
        "firstUri": uri(1),
        "selfUri": uri(page_number),
        "lastUri": uri(page_count.max(1)),
    });
    if page_number < page_count {
        body["nextUri"] = json!(uri(page_number + 1));
    }
    if page_number > 1 {
        body["previousUri"] = json!(uri(page_number - 1));
    }
    Ok(json_response(StatusCode::OK, &body))
}

fn user_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("The user {id} was not found"))
        .params("The user {userId} was not found", &[("userId", id)])
        .entity(id)
}

fn get_user(ctx: &Ctx<'_>, id: &str) -> Handled {
    let user = ctx.sh.users.get(id).ok_or_else(|| user_not_found(id))?;
    Ok(json_response(StatusCode::OK, &*lock(user)))
}

const USER_VERSION_MISMATCH: &str =
    "The version supplied does not match the current version of the user";

fn field_error(field: &str, code: &str, message: String) -> ApiError {
    ApiError::bad_request(message).detail(Detail {
        error_code: code.to_string(),
        field_name: Some(field.to_string()),
        ..Detail::default()
    })
}

fn want_string(field: &str, v: &Value) -> Result<String, ApiError> {
    v.as_str().map(str::to_string).ok_or_else(|| {
        field_error(
            field,
            "invalid.value",
            format!("The field {field} must be a string"),
        )
    })
}

fn patch_user(ctx: &Ctx<'_>, id: &str, body: &[u8]) -> Handled {
    let patch = parse_object(body)?;
    // Validate everything before touching the user: a 400 applies nothing.
    let mut unknown: Vec<&str> = Vec::new();
    let mut version = None;
    for (k, v) in &patch {
        match k.as_str() {
            "version" => {
                version = Some(v.as_u64().ok_or_else(|| {
                    field_error(
                        "version",
                        "invalid.value",
                        "The field version must be a positive integer".into(),
                    )
                })?)
            }
            "name" | "email" | "title" | "department" | "username" | "preferredName" => {
                let s = want_string(k, v)?;
                if (k == "email" || k == "username") && !s.contains('@') {
                    return Err(field_error(
                        k,
                        "invalid.value",
                        format!("The field {k} must be an email address, got `{s}`"),
                    ));
                }
            }
            "state" => {
                let s = want_string(k, v)?;
                if !matches!(s.as_str(), "active" | "inactive") {
                    return Err(field_error(
                        k,
                        "invalid.value",
                        format!("The field state must be `active` or `inactive`, got `{s}`"),
                    ));
                }
            }
            "acdAutoAnswer" => {
                if !v.is_boolean() {
                    return Err(field_error(
                        k,
                        "invalid.value",
                        "The field acdAutoAnswer must be a boolean".into(),
                    ));
                }
            }
            "id" => {
                if v.as_str() != Some(id) {
                    return Err(field_error(
                        "id",
                        "invalid.value",
                        "The id in the body does not match the id in the path".into(),
                    ));
                }
            }
            "selfUri" => {}
            other => unknown.push(other),
        }
    }
    if !unknown.is_empty() {
        let mut e = ApiError::bad_request(format!(
            "Unrecognized field(s) in the request body: {}",
            unknown.join(", ")
        ));
        for f in unknown {
            e = e.detail(Detail {
                error_code: "unrecognized.field".into(),
                field_name: Some(f.to_string()),
                ..Detail::default()
            });
        }
        return Err(e);
    }
    let Some(version) = version else {
        return Err(field_error(
            "version",
            "required.field.missing",
            "The version field is required: send the user's current version (from a GET)".into(),
        ));
    };
    let cell = ctx.sh.users.get(id).ok_or_else(|| user_not_found(id))?;
    let mut user = lock(cell);
    if version != user.version {
        return Err(ApiError::new(409, "general.conflict", USER_VERSION_MISMATCH).entity(id));
    }
    for (k, v) in &patch {
        let s = || v.as_str().unwrap_or_default().to_string();
        match k.as_str() {
            "name" => user.name = s(),
            "email" => user.email = s(),
            "title" => user.title = s(),
            "department" => user.department = s(),
            "username" => user.username = s(),
            "preferredName" => user.preferred_name = Some(s()),
            "state" => user.state = s(),
            "acdAutoAnswer" => user.acd_auto_answer = v.as_bool().unwrap_or(false),
            _ => {}
        }
    }
    user.version += 1;
    let resp = json_response(StatusCode::OK, &*user);
    drop(user);
    ctx.record(Route::PatchUser, id.to_string(), body);
    Ok(resp)
}

/// Architect's flattening: nested objects become dotted keys.
fn flatten(prefix: &str, v: &Value, out: &mut Map<String, Value>) {
    match v {
        Value::Object(m) if !m.is_empty() => {
            for (k, v) in m {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

fn execute(
    ctx: &Ctx<'_>,
    action_id: &str,
    body: &[u8],
    query: Option<&str>,
    test: bool,
) -> Handled {
    let action = ctx.sh.cfg.actions.get(action_id).ok_or_else(|| {
        ApiError::not_found(format!("The action {action_id} was not found"))
            .params(
                "The action {actionId} was not found",
                &[("actionId", action_id)],
            )
            .entity(action_id)
    })?;
    let input = Value::Object(parse_object(body)?);
    let result = action.run(&input);
    let route = if test { Route::Test } else { Route::Execute };
    if result.is_ok() {
        // Data actions do not honour Idempotency-Key: every execution is an effect.
        ctx.record(route, action_id.to_string(), body);
    }
    if test {
        let (success, final_result, error) = match &result {
            Ok(v) => (true, v.clone(), Value::Null),
            Err(f) => (
                false,
                Value::Null,
                serde_json::to_value(nested_error(f.status, &f.code, f.message.clone()))
                    .map(|mut e| {
                        e["contextId"] = json!(ctx.cid);
                        e
                    })
                    .unwrap_or(Value::Null),
            ),
        };
        let body = json!({
            "operations": [
                {"step": 1, "name": "Validate input", "success": true, "result": input},
                {"step": 2, "name": format!("Execute {}", action.name()), "success": success, "result": final_result},
            ],
            "error": error,
            "finalResult": final_result,
            "success": success,
        });
        return Ok(json_response(StatusCode::OK, &body));
    }
    match result {
        Ok(out) => {
            let out = if query_param(query, "flatten") == Some("true") {
                let mut flat = Map::new();
                flatten("", &out, &mut flat);
                Value::Object(flat)
            } else {
                out
            };
            Ok(json_response(StatusCode::OK, &out))
        }
        // A failing action answers the data-action error shape, not the platform's ErrorBody.
        Err(f) => Ok(json_response(
            StatusCode::from_u16(f.status).unwrap_or(StatusCode::BAD_REQUEST),
            &json!({
                "errorCode": f.code,
                "status": f.status,
                "correlationId": ctx.cid,
                "entityName": action.name(),
                "userMessage": f.message,
                "userParams": [],
                "details": [{"errorCode": f.code}],
                "errors": [],
            }),
        )),
    }
}

fn record_name(key_field: &str, i: usize, record: &Value) -> String {
    match record.get(key_field) {
        Some(Value::String(s)) => s.clone(),
        Some(v @ Value::Number(_)) => v.to_string(),
        _ => format!("records[{i}]"),
    }
}

fn ingest(ctx: &Ctx<'_>, body: &[u8]) -> Handled {
    let sh = ctx.sh;
    let parsed: Value = serde_json::from_slice(body).map_err(|e| {
        ApiError::bad_request(format!("The request body could not be parsed as JSON: {e}"))
    })?;
    let records = match &parsed {
        Value::Array(a) => a,
        Value::Object(m) => match m.get("records") {
            Some(Value::Array(a)) => a,
            _ => {
                return Err(ApiError::bad_request(
                    "The body must be a JSON array of records or an object with a `records` array",
                ));
            }
        },
        _ => {
            return Err(ApiError::bad_request(
                "The body must be a JSON array of records or an object with a `records` array",
            ));
        }
    };
    let max = sh.cfg.max_records;
    if records.len() > max {
        return Err(ApiError::new(
            413,
            "request.entity.too.large",
            format!(
                "A batch holds at most [{max}] records; this one has [{}]",
                records.len()
            ),
        )
        .params(
            "A batch holds at most [{max}] records; this one has [{count}]",
            &[
                ("max", &max.to_string()),
                ("count", &records.len().to_string()),
            ],
        )
        .limit("ingestion.records.max", "data.exchange", max as u64));
    }

    let key = ctx.idempotency_key().map(str::to_string);
    let hash = fnv1a(body);
    let replay = |stored: &Stored| -> Handled {
        if stored.payload_hash != hash {
            return Err(ApiError::new(
                422,
                "idempotency.key.reused",
                "This Idempotency-Key was already used with a different request body",
            ));
        }
        let mut resp = json_bytes(
            StatusCode::from_u16(stored.status).unwrap_or(StatusCode::OK),
            stored.body.clone(),
        );
        resp.headers_mut()
            .insert("idempotent-replayed", HeaderValue::from_static("true"));
        Ok(resp)
    };
    if let Some(k) = &key
        && let Some(stored) = lock(&sh.idempotency).get(&(ctx.client.clone(), k.clone()))
    {
        return replay(stored);
    }

    let mut err = ApiError::new(
        422,
        "unprocessable.entity",
        "One or more records do not match the ingestion schema",
    );
    let mut invalid = 0usize;
    for (i, record) in records.iter().enumerate() {
        let name = record_name(&sh.cfg.ingestion_record_key, i, record);
        let mut bad = false;
        for e in sh.schema.iter_errors(record).take(20) {
            bad = true;
            let field = match e.kind() {
                jsonschema::error::ValidationErrorKind::Required { property } => {
                    property.as_str().unwrap_or_default().to_string()
                }
                _ => e
                    .instance_path()
                    .as_str()
                    .trim_start_matches('/')
                    .replace('/', "."),
            };
            let field_name = if field.is_empty() {
                format!("records[{i}]")
            } else {
                format!("records[{i}].{field}")
            };
            let message = format!("{field_name}: {e}");
            err = err
                .detail(Detail {
                    error_code: format!("schema.{}", e.kind().keyword()),
                    field_name: Some(field_name),
                    entity_id: Some(name.clone()),
                    entity_name: Some(format!("records[{i}]")),
                })
                .nested(nested_error(422, "schema.validation.failed", message));
        }
        invalid += usize::from(bad);
    }
    if invalid > 0 {
        return Err(err.params(
            "{invalid} of {count} records do not match the ingestion schema",
            &[
                ("invalid", &invalid.to_string()),
                ("count", &records.len().to_string()),
            ],
        ));
    }

    let resp_body = Bytes::from(
        serde_json::to_vec(&json!({
            "id": correlation_id(),
            "status": "accepted",
            "recordCount": records.len(),
        }))
        .unwrap_or_default(),
    );
    // Check, store and apply under one lock, so a concurrent repeat either applies nothing and
    // replays, or sees the key stored only once the records are in the ledger.
    let mut store = key.as_ref().map(|_| lock(&sh.idempotency));
    if let (Some(k), Some(store)) = (&key, store.as_mut()) {
        let slot = (ctx.client.clone(), k.clone());
        if let Some(stored) = store.get(&slot) {
            return replay(stored);
        }
        store.insert(
            slot,
            Stored {
                payload_hash: hash,
                status: 200,
                body: resp_body.clone(),
            },
        );
    }
    for (i, record) in records.iter().enumerate() {
        let payload = serde_json::to_vec(record).unwrap_or_default();
        ctx.record(
            Route::Ingest,
            record_name(&sh.cfg.ingestion_record_key, i, record),
            &payload,
        );
    }
    drop(store);
    Ok(json_bytes(StatusCode::OK, resp_body))
}

fn integration_not_found(id: &str) -> ApiError {
    ApiError::not_found(format!("The integration {id} was not found"))
        .params(
            "The integration {integrationId} was not found",
            &[("integrationId", id)],
        )
        .entity(id)
}

fn get_config(ctx: &Ctx<'_>, id: &str) -> Handled {
    let cfg = ctx
        .sh
        .integrations
        .get(id)
        .ok_or_else(|| integration_not_found(id))?;
    Ok(json_response(StatusCode::OK, &*lock(cfg)))
}

fn put_config(ctx: &Ctx<'_>, id: &str, body: &[u8]) -> Handled {
    let put = parse_object(body)?;
    let unknown: Vec<&str> = put
        .keys()
        .map(String::as_str)
        .filter(|k| {
            !matches!(
                *k,
                "id" | "name"
                    | "version"
                    | "properties"
                    | "advanced"
                    | "notes"
                    | "credentials"
                    | "selfUri"
            )
        })
        .collect();
    if !unknown.is_empty() {
        let mut e = ApiError::bad_request(format!(
            "Unrecognized field(s) in the request body: {}",
            unknown.join(", ")
        ));
        for f in unknown {
            e = e.detail(Detail {
                error_code: "unrecognized.field".into(),
                field_name: Some(f.to_string()),
                ..Detail::default()
            });
        }
        return Err(e);
    }
    let version = match put.get("version") {
        None => {
            return Err(field_error(
                "version",
                "required.field.missing",
                "The version field is required: send the config's current version (from a GET)"
                    .into(),
            ));
        }
        Some(v) => v.as_u64().ok_or_else(|| {
            field_error(
                "version",
                "invalid.value",
                "The field version must be a positive integer".into(),
            )
        })?,
    };
    for (k, want_object) in [
        ("properties", true),
        ("advanced", true),
        ("credentials", true),
        ("name", false),
        ("notes", false),
    ] {
        if let Some(v) = put.get(k) {
            let ok = if want_object {
                v.is_object()
            } else {
                v.is_string()
            };
            if !ok {
                let kind = if want_object { "an object" } else { "a string" };
                return Err(field_error(
                    k,
                    "invalid.value",
                    format!("The field {k} must be {kind}"),
                ));
            }
        }
    }
    let cell = ctx
        .sh
        .integrations
        .get(id)
        .ok_or_else(|| integration_not_found(id))?;
    let mut cfg = lock(cell);
    let current = cfg.get("version").and_then(Value::as_u64).unwrap_or(1);
    if version != current {
        return Err(ApiError::new(
            409,
            "general.conflict",
            "The version supplied does not match the current version of the integration configuration",
        )
        .entity(id));
    }
    for (k, v) in put {
        if matches!(
            k.as_str(),
            "properties" | "advanced" | "credentials" | "name" | "notes"
        ) {
            cfg.insert(k, v);
        }
    }
    cfg.insert("version".into(), json!(current + 1));
    let resp = json_response(StatusCode::OK, &*cfg);
    drop(cfg);
    ctx.record(Route::PutConfig, id.to_string(), body);
    Ok(resp)
}

fn limits(ctx: &Ctx<'_>, namespace: &str) -> Handled {
    let cfg = &ctx.sh.cfg;
    let limits = match namespace {
        NS_PLATFORM => {
            let mut v = vec![json!({"key": "request.bytes.max", "value": cfg.max_body_bytes})];
            if let Some((n, w)) = cfg.rate_limit {
                // The key names a rate per minute, as in the real API: a quota over another
                // window is scaled to it (rounded down). Nothing says the window itself.
                let per_minute = u128::from(n) * 60_000 / w.as_millis().max(1);
                v.push(json!({
                    "key": "client.credentials.token.rate.per.minute",
                    "value": u64::try_from(per_minute).unwrap_or(u64::MAX),
                }));
            }
            v
        }
        "data.exchange" => vec![
            json!({"key": "ingestion.records.max", "value": cfg.max_records}),
            json!({"key": "ingestion.bytes.max", "value": cfg.max_body_bytes}),
        ],
        _ => {
            return Err(ApiError::not_found(format!(
                "The limits namespace {namespace} was not found (the simulator knows platform.api and data.exchange)"
            ))
            .params("The limits namespace {namespace} was not found", &[("namespace", namespace)]));
        }
    };
    // The API's `LimitsEntityListing`: each limit names its namespace; one page holds all.
    let total = limits.len();
    let entities: Vec<Value> = limits
        .into_iter()
        .map(|mut l| {
            l["namespace"] = json!(namespace);
            l
        })
        .collect();
    Ok(json_response(
        StatusCode::OK,
        &json!({
            "entities": entities,
            "pageSize": total.max(1),
            "pageNumber": 1,
            "total": total,
            "pageCount": 1,
        }),
    ))
}

fn form_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
                match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn form_field(form: &str, name: &str) -> Option<String> {
    form.split('&')
        .filter_map(|kv| kv.split_once('='))
        .find(|(k, _)| form_decode(k) == name)
        .map(|(_, v)| form_decode(v))
}

/// `POST /oauth/token`: client credentials in a Basic header or in the form body.
async fn oauth_token(sh: &Shared, req: Request<Incoming>) -> Resp {
    let (parts, body) = req.into_parts();
    if sh.cfg.faults.token_error > 0.0 {
        let n = sh.token_seq.fetch_add(1, Relaxed);
        let u: f64 = rng_for(sh.cfg.seed, STREAM_TOKEN_FAULTS, n).random();
        if u < sh.cfg.faults.token_error {
            sh.stats.fault("token-5xx");
            return oauth_error(
                StatusCode::SERVICE_UNAVAILABLE,
                "temporarily_unavailable",
                "The authorization server is temporarily unavailable",
            );
        }
    }
    let body = match read_body(&parts.headers, body, 64 * 1024).await {
        Ok(b) => b,
        Err(_) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "The token request body is too large or unreadable",
            );
        }
    };
    if let Some(ct) = parts.headers.get(CONTENT_TYPE)
        && !ct
            .to_str()
            .unwrap_or_default()
            .to_ascii_lowercase()
            .starts_with("application/x-www-form-urlencoded")
    {
        return oauth_error(
            StatusCode::BAD_REQUEST,
            "invalid_request",
            "The token request must be sent as application/x-www-form-urlencoded",
        );
    }
    let form = String::from_utf8_lossy(&body);
    let basic = match parts.headers.get(AUTHORIZATION) {
        None => None,
        Some(v) => {
            let decoded = v
                .to_str()
                .ok()
                .and_then(|v| v.split_once(' '))
                .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("basic"))
                .and_then(|(_, b64)| {
                    base64::engine::general_purpose::STANDARD
                        .decode(b64.trim())
                        .ok()
                })
                .and_then(|raw| String::from_utf8(raw).ok())
                .and_then(|s| {
                    s.split_once(':')
                        .map(|(i, p)| (form_decode(i), form_decode(p)))
                });
            match decoded {
                Some(c) => Some(c),
                None => {
                    return with_www_auth(oauth_error(
                        StatusCode::UNAUTHORIZED,
                        "invalid_client",
                        "The Authorization header is not valid Basic credentials (base64 of id:secret)",
                    ));
                }
            }
        }
    };
    let used_basic = basic.is_some();
    let creds = basic.or_else(|| {
        Some((
            form_field(&form, "client_id")?,
            form_field(&form, "client_secret")?,
        ))
    });
    match form_field(&form, "grant_type").as_deref() {
        None => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "invalid_request",
                "grant_type is missing: send grant_type=client_credentials",
            );
        }
        Some("client_credentials") => {}
        Some(other) => {
            return oauth_error(
                StatusCode::BAD_REQUEST,
                "unsupported_grant_type",
                &format!("grant_type `{other}` is not supported here: use client_credentials"),
            );
        }
    }
    let Some((id, secret)) = creds else {
        return with_www_auth(oauth_error(
            StatusCode::UNAUTHORIZED,
            "invalid_client",
            "Client credentials are missing: send an Authorization: Basic header or client_id and client_secret in the form body",
        ));
    };
    if sh.clients.get(&id).is_none_or(|s| *s != secret) {
        let status = if used_basic {
            StatusCode::UNAUTHORIZED
        } else {
            StatusCode::BAD_REQUEST
        };
        let resp = oauth_error(status, "invalid_client", "client authentication failed");
        return if used_basic {
            with_www_auth(resp)
        } else {
            resp
        };
    }
    let mut raw = [0u8; 32];
    rand::rngs::StdRng::from_os_rng().fill(&mut raw);
    let token = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw);
    sh.tokens
        .insert(token.clone(), Arc::from(id.as_str()), sh.cfg.token_ttl);
    sh.stats.tokens_issued.fetch_add(1, Relaxed);
    let mut resp = json_response(
        StatusCode::OK,
        &json!({
            "access_token": token,
            "token_type": "bearer",
            "expires_in": sh.cfg.token_ttl.as_secs(),
        }),
    );
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    resp
}

fn with_www_auth(mut resp: Resp) -> Resp {
    resp.headers_mut().insert(
        http::header::WWW_AUTHENTICATE,
        HeaderValue::from_static("Basic realm=\"oauth\""),
    );
    resp
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn form_decoding() {
        assert_eq!(form_decode("a+b%3Ac%2"), "a b:c%2");
        assert_eq!(
            form_field("grant_type=client_credentials&client_id=x%40y", "client_id").as_deref(),
            Some("x@y")
        );
    }
}
