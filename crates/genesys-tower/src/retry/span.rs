//! The retry layer's spans: one per logical call, a child per attempt, with field names from
//! OpenTelemetry's HTTP client conventions where they have one. No header is recorded but the
//! `Idempotency-Key` and the server's `ININ-Correlation-Id`, neither of them a secret.

use std::error::Error as StdError;
use std::io;
use std::time::Duration;

use http::{HeaderMap, StatusCode, request};
use tracing::Span;
use tracing::field::Empty;

use super::decide::Decision;
use super::{ErrorKind, RetryPolicy};
use crate::headers::IDEMPOTENCY_KEY;
use crate::metrics::Route;
use crate::metrics::outcome_label;

/// The response header Genesys Cloud support asks for.
const CORRELATION_ID: &str = "inin-correlation-id";
/// The longest correlation id recorded.
const CORRELATION_ID_MAX: usize = 128;

/// The span of one logical call, every attempt and wait included.
pub(super) fn call(parts: &request::Parts, policy: &RetryPolicy) -> Span {
    let span = tracing::info_span!(
        "http.client.call",
        otel.name = Empty,
        otel.kind = "client",
        otel.status_code = Empty,
        http.request.method = parts.method.as_str(),
        url.template = Empty,
        server.address = parts.uri.host(),
        idempotency_key = Empty,
        retry.policy_version = policy.version(),
        outcome = Empty,
        http.response.status_code = Empty,
        error.type = Empty,
        attempts = Empty,
        waited_ms = Empty,
    );
    if !span.is_disabled() {
        let route = parts.extensions.get::<Route>();
        if let Some(route) = route {
            span.record("url.template", route.as_str());
        }
        let name = match route {
            Some(route) => format!("{} {route}", parts.method),
            None => parts.method.to_string(),
        };
        span.record("otel.name", name);
        if let Some(key) = visible(parts.headers.get(IDEMPOTENCY_KEY), 255) {
            span.record("idempotency_key", key);
        }
    }
    span
}

/// The span of one attempt, a child of the call's.
pub(super) fn attempt(call: &Span, number: u32) -> Span {
    tracing::info_span!(
        parent: call,
        "http.client.attempt",
        otel.kind = "client",
        attempt = number,
        http.request.resend_count = number.saturating_sub(1),
        http.response.status_code = Empty,
        error.type = Empty,
        inin.correlation_id = Empty,
        auth.token_refreshed = Empty,
        retry.reason = Empty,
        retry.delay_ms = Empty,
    )
}

/// Records what the attempt came back with. Checked where it is called (inlined): most
/// programs record no span.
#[inline]
pub(super) fn attempt_outcome(
    span: &Span,
    response: Result<(StatusCode, &HeaderMap), &(dyn StdError + 'static)>,
) {
    if !span.is_disabled() {
        record_outcome(span, response);
    }
}

#[inline(never)]
fn record_outcome(
    span: &Span,
    response: Result<(StatusCode, &HeaderMap), &(dyn StdError + 'static)>,
) {
    match response {
        Ok((status, headers)) => {
            span.record("http.response.status_code", status.as_u16());
            if let Some(id) = visible(headers.get(CORRELATION_ID), CORRELATION_ID_MAX) {
                span.record("inin.correlation_id", id);
            }
        }
        Err(error) => {
            span.record("error.type", error_type(error));
        }
    }
}

/// Records what the layer decided after the attempt.
pub(super) fn decision(span: &Span, decision: Decision) {
    if let Decision::Retry { reason, delay } = decision {
        span.record("retry.reason", reason.as_str());
        span.record("retry.delay_ms", millis(delay));
    }
}

/// Records how the call ended.
/// `error` is `Some(Some(kind))` for an error of the retry layer's own, `Some(None)` for an
/// error of the service below returned as it came.
#[inline]
pub(super) fn end(
    span: &Span,
    status: Option<StatusCode>,
    error: Option<Option<ErrorKind>>,
    attempts: u32,
    waited: Duration,
) {
    if !span.is_disabled() {
        record_end(span, status, error, attempts, waited);
    }
}

#[inline(never)]
fn record_end(
    span: &Span,
    status: Option<StatusCode>,
    error: Option<Option<ErrorKind>>,
    attempts: u32,
    waited: Duration,
) {
    span.record("outcome", outcome_label(status));
    span.record("attempts", attempts);
    span.record("waited_ms", millis(waited));
    if let Some(status) = status {
        span.record("http.response.status_code", status.as_u16());
    }
    match error {
        Some(Some(kind)) => {
            span.record("error.type", kind.as_str());
        }
        Some(None) => {
            span.record("error.type", "service");
        }
        None => {}
    }
    if error.is_some() || status.is_some_and(|s| s.is_server_error()) {
        span.record("otel.status_code", "ERROR");
    }
}

/// A low-cardinality name for an attempt's error: the I/O error kind in its chain, or `_OTHER`.
fn error_type(error: &(dyn StdError + 'static)) -> &'static str {
    match crate::error::find::<io::Error>(error).map(io::Error::kind) {
        Some(io::ErrorKind::TimedOut) => "timeout",
        Some(io::ErrorKind::ConnectionRefused) => "connection_refused",
        Some(io::ErrorKind::ConnectionReset) => "connection_reset",
        Some(io::ErrorKind::ConnectionAborted) => "connection_aborted",
        Some(io::ErrorKind::UnexpectedEof) => "unexpected_eof",
        Some(_) => "io",
        None if crate::error::NotSent::is_in(error) => "not_sent",
        None => "_OTHER",
    }
}

/// A header value worth recording: visible ASCII, at most `max` bytes.
fn visible(value: Option<&http::HeaderValue>, max: usize) -> Option<&str> {
    let text = value?.to_str().ok()?;
    (!text.is_empty() && text.len() <= max && text.bytes().all(|b| b.is_ascii_graphic()))
        .then_some(text)
}

fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}
