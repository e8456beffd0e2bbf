//! What the layer does with a request of a guarded method: read its key, claim it, run the
//! handler once, store and replay its answer.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http::header::RETRY_AFTER;
use http::{HeaderValue, Request, Response, StatusCode};
use tokio::time::{Instant, timeout_at};
use tower::ServiceExt;
use tower::load_shed::error::Overloaded;
use tower_service::Service;

use super::super::store::{Claim, StoreError, StoredResponse};
use super::super::{ClaimToken, Fingerprint, IDEMPOTENCY_KEY, IdempotencyKey};
use super::answer::{error, failed_body, missing_key};
use super::layer::{Config, InFlight};
use super::lease::{Settle, SettleOnDrop, bounded, claim_options, renewing, settle};
use crate::{Body, BoxError, NotSent};

/// Handles a request of a guarded method: [`step`], then claim the key and run, replay or
/// refuse.
pub(super) async fn handle<S, ReqB, ResB>(
    config: Arc<Config>,
    inner: S,
    req: Request<ReqB>,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<ResB>> + Send + 'static,
    S::Future: Send,
    ReqB: http_body::Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    let (request, store_key, fingerprint) = match step(&config, req).await {
        Step::Answer(response) => return Ok(response),
        Step::Pass(request) => return call(inner, request).await,
        Step::Keyed {
            request,
            store_key,
            fingerprint,
        } => (request, store_key, fingerprint),
    };
    let deadline = match config.in_flight {
        InFlight::Wait(timeout) => Some(crate::time::from_now(timeout)),
        InFlight::Reject => None,
    };
    let mut waited = false;
    loop {
        let claim = config
            .store
            .claim(&store_key, fingerprint, claim_options(&config));
        let claim = match bounded(&config, claim).await {
            Ok(claim) => claim,
            Err(e) => return store_failed(&config, inner, request, e).await,
        };
        match claim {
            Claim::Acquired(token) => {
                return run_claimed(&config, inner, request, &store_key, token).await;
            }
            Claim::Completed(stored) => {
                tracing::debug!(status = %stored.status(), waited, "idempotent replay");
                if waited {
                    config.metrics.record_idempotent_join();
                } else {
                    config.metrics.record_idempotent_replay();
                }
                return Ok(stored.to_replay());
            }
            Claim::Abandoned => {
                tracing::warn!("idempotency key of an abandoned request: outcome unknown, 409");
                return Ok(error(
                    StatusCode::CONFLICT,
                    "idempotency_outcome_unknown",
                    "the first request with this Idempotency-Key did not finish: its server \
                     stopped, lost its idempotency store or failed without an answer while \
                     handling it, and no response was kept, so it may or may not have taken \
                     effect. It will not be run again with this key: check the resource's \
                     state, and if the operation did not happen, send it with a new key"
                        .to_owned(),
                ));
            }
            Claim::Evicted => {
                tracing::warn!("idempotency key completed, its response dropped for room: 409");
                return Ok(error(
                    StatusCode::CONFLICT,
                    "idempotency_response_evicted",
                    "the first request with this Idempotency-Key was processed, but its response \
                     was dropped to keep the idempotency store within its size before its \
                     retention ended. It will not be run again with this key: read the \
                     resource's state for the outcome"
                        .to_owned(),
                ));
            }
            Claim::Lost => {
                tracing::warn!("idempotency store lost its records: outcome unknown, 503");
                return Ok(error(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "idempotency_store_lost",
                    "the idempotency store lost its records recently (a restart without \
                     persistence), so whether a request with this Idempotency-Key was already \
                     processed is unknown; requests are refused rather than run twice until \
                     the quarantine ends or an operator lifts it. Check the resource's state \
                     before sending the operation again"
                        .to_owned(),
                ));
            }
            Claim::Mismatch => {
                tracing::debug!("idempotency key reused with another payload: 422");
                return Ok(error(
                    StatusCode::UNPROCESSABLE_ENTITY,
                    "idempotency_key_reused",
                    "this Idempotency-Key was already used for a different request (method, \
                     path or body differ): use a new key for a new operation"
                        .to_owned(),
                ));
            }
            Claim::InFlight => {
                let now = Instant::now();
                match deadline {
                    Some(deadline) if now < deadline => {
                        waited = true;
                        let wait = config.store.wait(&store_key, deadline - now);
                        // A wait is as long as it asks for; bounded by it, not the store timeout.
                        if let Err(e) = timeout_at(deadline, wait).await.unwrap_or(Ok(())) {
                            return store_failed(&config, inner, request, e).await;
                        }
                    }
                    _ => {
                        tracing::debug!("idempotency key in flight: 409");
                        let mut response = error(
                            StatusCode::CONFLICT,
                            "idempotency_request_in_progress",
                            "a request with this Idempotency-Key is still being processed: \
                             retry later with the same key to get its response"
                                .to_owned(),
                        );
                        response
                            .headers_mut()
                            .insert(RETRY_AFTER, HeaderValue::from_static("1"));
                        return Ok(response);
                    }
                }
            }
        }
    }
}

/// What a request of a guarded method is, once its key and body are read.
enum Step {
    /// The layer answers it itself (a bad or missing key, a body too large).
    Answer(Response<Body>),
    /// Not guarded after all (no key where none is required): to the handler as it is.
    Pass(Request<Body>),
    /// Guarded by this key.
    Keyed {
        request: Request<Body>,
        store_key: String,
        fingerprint: Fingerprint,
    },
}

/// Reads and checks the key, reads the body within the limit.
async fn step<ReqB>(config: &Config, req: Request<ReqB>) -> Step
where
    ReqB: http_body::Body<Data = Bytes> + Send + 'static,
    ReqB::Error: Into<BoxError>,
{
    let (mut parts, body) = req.into_parts();
    let mut keys = parts.headers.get_all(IDEMPOTENCY_KEY).iter();
    let (first, second) = (keys.next(), keys.next());
    if second.is_some() {
        return Step::Answer(error(
            StatusCode::BAD_REQUEST,
            "idempotency_key_invalid",
            "send one Idempotency-Key header, not several".to_owned(),
        ));
    }
    let header_key = match first.map(HeaderValue::to_str) {
        None => None,
        Some(Ok(text)) => Some(text.to_owned()),
        Some(Err(_)) => {
            return Step::Answer(error(
                StatusCode::BAD_REQUEST,
                "idempotency_key_invalid",
                "the Idempotency-Key must be visible ASCII (a UUID is a good key)".to_owned(),
            ));
        }
    };
    if header_key.is_none() && config.key_from.is_none() {
        if config.require_key {
            return Step::Answer(missing_key(&parts.method));
        }
        return Step::Pass(Request::from_parts(parts, Body::new(body)));
    }

    let body = match Body::new(body).buffer(config.body_limit).await {
        Ok(body) => body,
        Err(e) => {
            return Step::Answer(error(
                StatusCode::BAD_REQUEST,
                "request_body_unreadable",
                format!("the request body could not be read: {e}"),
            ));
        }
    };
    // A body that arrived whole may be past the limit too: the limit is the endpoint's promise.
    let within_limit = body.as_bytes().filter(|b| b.len() <= config.body_limit);
    let Some(bytes) = within_limit.cloned() else {
        if header_key.is_none() && !config.require_key {
            // No key in the header, and the body is too large to look for one: not guarded.
            return Step::Pass(Request::from_parts(parts, body));
        }
        return Step::Answer(error(
            StatusCode::PAYLOAD_TOO_LARGE,
            "request_body_too_large",
            format!(
                "the request body is larger than {} bytes, the most this endpoint reads for an \
                 idempotent request",
                config.body_limit
            ),
        ));
    };
    let key = header_key.or_else(|| config.key_from.as_ref().and_then(|f| f(&parts, &bytes)));
    let Some(key) = key else {
        if config.require_key {
            return Step::Answer(missing_key(&parts.method));
        }
        return Step::Pass(Request::from_parts(parts, Body::from_bytes(bytes)));
    };
    // A key from the body (`key_from`) may hold anything: kept to what a header key may be,
    // so that no key carries a line break into a log line or a store's key.
    if !key.bytes().all(|b| b == b'\t' || (0x20..0x7f).contains(&b)) {
        return Step::Answer(error(
            StatusCode::BAD_REQUEST,
            "idempotency_key_invalid",
            "the Idempotency-Key must be visible ASCII (a UUID is a good key)".to_owned(),
        ));
    }
    if key.is_empty() || key.chars().count() > config.max_key_len {
        return Step::Answer(error(
            StatusCode::BAD_REQUEST,
            "idempotency_key_invalid",
            format!(
                "the Idempotency-Key must be 1 to {} characters long",
                config.max_key_len
            ),
        ));
    }

    let fingerprint = Fingerprint::of(&parts.method, &parts.uri, &bytes);
    let store_key = match config.scope.as_ref().map(|f| f(&parts)) {
        // Length-prefixed so that no scope and key pair can spell another.
        Some(Some(scope)) => format!("{}:{scope}:{key}", scope.len()),
        // A request the scope does not place: a namespace of its own, which no scoped key
        // (starting with a digit) can spell.
        Some(None) => format!("-:{key}"),
        None => key.clone(),
    };
    parts.extensions.insert(IdempotencyKey::new(key.clone()));

    Step::Keyed {
        request: Request::from_parts(parts, Body::from_bytes(bytes)),
        store_key,
        fingerprint,
    }
}

/// Runs the handler under a claim on the key, its lease renewed meanwhile, then stores its
/// answer (or releases the key).
async fn run_claimed<S, ResB>(
    config: &Config,
    inner: S,
    request: Request<Body>,
    store_key: &str,
    token: ClaimToken,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<ResB>>,
    S::Error: 'static,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    // Until settled below, a drop of this call (its client gone) settles in the background.
    let started = AtomicBool::new(false);
    let mut guard = SettleOnDrop::new(config, store_key, &token, &started);
    let work = async {
        let mut inner = inner;
        let ready = inner.ready().await?;
        // From here the handler may have had its effect.
        started.store(true, Ordering::Relaxed);
        let (head, body) = ready.call(request).await?.map(Body::new).into_parts();
        Ok((head, body.buffer(config.response_limit).await))
    };
    let (head, body) = match renewing(config, store_key, &token, work).await {
        Ok(response) => response,
        Err(e) => {
            if started.load(Ordering::Relaxed) && !never_ran(&e) {
                unanswered("the handler failed without an answer");
            } else {
                // The service below was never ready, or refused the request (a `NotSent`
                // error, or a load shedder's `Overloaded`): nothing ran. A drop during the
                // release (the caller gone) still releases.
                guard.answered(&Settle::Release);
                settle(config, store_key, token, Settle::Release).await;
            }
            guard.disarm();
            return Err(e);
        }
    };
    let body = match body {
        Ok(body) => body,
        Err(e) => {
            // The handler's body failed: the failure is passed on. An answer that says the
            // request was not processed (one `should_store` turns away) frees the key.
            if (config.should_store)(head.status) {
                unanswered("the handler's response body failed");
            } else {
                guard.answered(&Settle::Release);
                settle(config, store_key, token, Settle::Release).await;
            }
            guard.disarm();
            return Ok(Response::from_parts(head, failed_body(e)));
        }
    };
    // A body already in memory may exceed the limit too: the limit bounds the store.
    let bytes = body.as_bytes().filter(|b| b.len() <= config.response_limit);
    let outcome =
        match bytes {
            Some(bytes) if (config.should_store)(head.status) => Settle::Complete(
                StoredResponse::new(head.status, head.headers.clone(), bytes.clone()),
            ),
            Some(_) => Settle::Release,
            None => {
                tracing::warn!(
                    limit = config.response_limit,
                    "response too large to store; a repeat will run the handler again"
                );
                Settle::Release
            }
        };
    guard.answered(&outcome);
    settle(config, store_key, token, outcome).await;
    guard.disarm();
    Ok(Response::from_parts(head, body))
}

/// Whether `error` says the request never reached the handler: a [`NotSent`] or tower's load
/// shedder's `Overloaded` anywhere in its chain, for an error that is one of them or a
/// `BoxError` (the error type of most tower stacks).
fn never_ran<E: 'static>(error: &E) -> bool {
    let error: &dyn std::any::Any = error;
    let chain: &(dyn std::error::Error + 'static) =
        if let Some(boxed) = error.downcast_ref::<BoxError>() {
            &**boxed
        } else if let Some(not_sent) = error.downcast_ref::<NotSent>() {
            not_sent
        } else if let Some(shed) = error.downcast_ref::<Overloaded>() {
            shed
        } else {
            return false;
        };
    NotSent::is_in(chain) || crate::error::find::<Overloaded>(chain).is_some()
}

/// A handler that ran and gave no answer to keep: whether it had its effect is unknown, so its
/// claim is left to run out, as when its client hangs up mid-handler. Repeats are told it is in
/// progress until the lease ends, then that its outcome is unknown (or, with `rerun_abandoned`,
/// run it again): never run again at once, which could apply the effect twice.
fn unanswered(what: &str) {
    tracing::warn!(
        "{what}: its idempotency key is held as abandoned (its effect is unknown), not released"
    );
}

async fn call<S, ResB>(inner: S, req: Request<Body>) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<ResB>>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    Ok(inner.oneshot(req).await?.map(Body::new))
}

async fn store_failed<S, ResB>(
    config: &Config,
    inner: S,
    request: Request<Body>,
    e: StoreError,
) -> Result<Response<Body>, S::Error>
where
    S: Service<Request<Body>, Response = Response<ResB>>,
    ResB: http_body::Body<Data = Bytes> + Send + 'static,
    ResB::Error: Into<BoxError>,
{
    if config.fail_open {
        tracing::warn!(error = %e, "idempotency store failed; handling the request without it");
        return call(inner, request).await;
    }
    tracing::error!(error = %e, "idempotency store failed; request refused");
    Ok(error(
        StatusCode::SERVICE_UNAVAILABLE,
        "idempotency_store_unavailable",
        format!("{e}; the request was not processed: retry later with the same key"),
    ))
}
