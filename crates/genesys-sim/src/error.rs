//! Error bodies in Genesys's `ErrorBody` shape, and the simulator's own start-up error.

use std::collections::BTreeMap;
use std::fmt;

use bytes::Bytes;
use http::{HeaderName, HeaderValue, Response, StatusCode};
use http_body_util::Full;
use serde::Serialize;

/// Why the simulator could not start.
#[derive(Debug)]
pub enum SimError {
    /// The listening address could not be bound.
    Bind(std::io::Error),
    /// The ingestion JSON Schema is not a valid schema.
    Schema(String),
    /// A configuration value is out of range.
    Config(String),
}

impl fmt::Display for SimError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            SimError::Bind(e) => write!(
                f,
                "cannot listen: {e} (choose another --addr, or port 0 for any free port)"
            ),
            SimError::Schema(e) => write!(f, "the ingestion JSON Schema is invalid: {e}"),
            SimError::Config(e) => write!(f, "invalid configuration: {e}"),
        }
    }
}

impl std::error::Error for SimError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            SimError::Bind(e) => Some(e),
            _ => None,
        }
    }
}

pub(crate) type Resp = Response<Full<Bytes>>;

/// `details[]` item of an ErrorBody.
#[derive(Debug, Clone, Serialize, Default)]
#[serde(rename_all = "camelCase")]
pub(crate) struct Detail {
    pub(crate) error_code: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) field_name: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) entity_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) entity_name: Option<String>,
}

/// `limit` of an ErrorBody.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Limit {
    pub(crate) key: &'static str,
    pub(crate) namespace: &'static str,
    pub(crate) value: u64,
}

/// The ErrorBody, as the real service sends it.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub(crate) struct ErrorBody {
    pub(crate) status: u16,
    pub(crate) code: String,
    pub(crate) message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) message_with_params: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) message_params: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) entity_id: Option<String>,
    pub(crate) context_id: String,
    pub(crate) details: Vec<Detail>,
    pub(crate) errors: Vec<ErrorBody>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) limit: Option<Limit>,
}

/// An API error under construction; rendered with the request's correlation id.
#[derive(Debug)]
pub(crate) struct ApiError {
    // Boxed: handlers return `Result<_, ApiError>` and the Ok path should stay small.
    body: Box<ErrorBody>,
    headers: Vec<(HeaderName, HeaderValue)>,
}

impl ApiError {
    pub(crate) fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        Self {
            body: Box::new(ErrorBody {
                status,
                code: code.to_string(),
                message: message.into(),
                message_with_params: None,
                message_params: None,
                entity_id: None,
                context_id: String::new(),
                details: Vec::new(),
                errors: Vec::new(),
                limit: None,
            }),
            headers: Vec::new(),
        }
    }

    pub(crate) fn bad_request(message: impl Into<String>) -> Self {
        Self::new(400, "bad.request", message)
    }

    pub(crate) fn not_found(message: impl Into<String>) -> Self {
        Self::new(404, "not.found", message)
    }

    /// The message with `{name}` placeholders, and the values that fill them.
    pub(crate) fn params(mut self, template: &str, params: &[(&str, &str)]) -> Self {
        self.body.message_with_params = Some(template.to_string());
        self.body.message_params = Some(
            params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        );
        self
    }

    pub(crate) fn entity(mut self, id: &str) -> Self {
        self.body.entity_id = Some(id.to_string());
        self
    }

    pub(crate) fn detail(mut self, d: Detail) -> Self {
        self.body.details.push(d);
        self
    }

    pub(crate) fn nested(mut self, e: ErrorBody) -> Self {
        self.body.errors.push(e);
        self
    }

    pub(crate) fn limit(mut self, key: &'static str, namespace: &'static str, value: u64) -> Self {
        self.body.limit = Some(Limit {
            key,
            namespace,
            value,
        });
        self
    }

    pub(crate) fn header(mut self, name: &'static str, value: impl ToString) -> Self {
        if let Ok(v) = HeaderValue::from_str(&value.to_string()) {
            self.headers.push((HeaderName::from_static(name), v));
        }
        self
    }

    pub(crate) fn into_response(mut self, context_id: &str) -> Resp {
        self.body.context_id = context_id.to_string();
        for e in &mut self.body.errors {
            e.context_id = context_id.to_string();
        }
        let status = StatusCode::from_u16(self.body.status).unwrap_or(StatusCode::BAD_REQUEST);
        let mut resp = json_response(status, &self.body);
        for (k, v) in self.headers {
            resp.headers_mut().append(k, v);
        }
        resp
    }
}

/// A nested ErrorBody for `errors[]` (its contextId is filled in on rendering).
pub(crate) fn nested_error(status: u16, code: &str, message: String) -> ErrorBody {
    *ApiError::new(status, code, message).body
}

/// A JSON response.
pub(crate) fn json_response(status: StatusCode, body: &impl Serialize) -> Resp {
    let bytes = serde_json::to_vec(body).unwrap_or_else(|_| b"{}".to_vec());
    json_bytes(status, Bytes::from(bytes))
}

/// A plain-text response (the Prometheus exposition of `/sim/metrics`).
pub(crate) fn text_response(status: StatusCode, content_type: &'static str, body: String) -> Resp {
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    resp
}

/// A response whose body is already JSON bytes.
pub(crate) fn json_bytes(status: StatusCode, bytes: Bytes) -> Resp {
    let mut resp = Response::new(Full::new(bytes));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        http::header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// An OAuth error (`{"error", "description", "error_description"}`).
pub(crate) fn oauth_error(status: StatusCode, error: &str, description: &str) -> Resp {
    let body = serde_json::json!({
        "error": error,
        "description": description,
        "error_description": description,
    });
    let mut resp = json_response(status, &body);
    resp.headers_mut().insert(
        http::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    resp
}
