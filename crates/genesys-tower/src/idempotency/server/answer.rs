//! The answers the layer gives itself: JSON error bodies, and a body that fails.

use bytes::Bytes;
use http::header::CONTENT_TYPE;
use http::{HeaderValue, Method, Response, StatusCode};

use crate::{Body, BoxError};

pub(super) fn failed_body(e: BoxError) -> Body {
    let frames = futures_util::stream::iter([Err::<http_body::Frame<Bytes>, BoxError>(e)]);
    Body::new(http_body_util::StreamBody::new(frames))
}

pub(super) fn missing_key(method: &Method) -> Response<Body> {
    error(
        StatusCode::BAD_REQUEST,
        "idempotency_key_missing",
        format!(
            "this endpoint requires an Idempotency-Key header on {method} requests: send a \
             unique key (a UUID) per operation, and the same key when you retry it"
        ),
    )
}

pub(super) fn error(status: StatusCode, code: &str, message: String) -> Response<Body> {
    let body = serde_json::json!({ "error": code, "message": message }).to_string();
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}
