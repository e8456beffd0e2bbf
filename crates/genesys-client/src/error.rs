//! Errors: the Genesys `ErrorBody`, OAuth errors, and [`GenesysError`], the error of every call.
//!
//! A non-2xx answer from the API becomes [`GenesysError::Api`], holding the status, the
//! `ININ-Correlation-Id` header and the parsed [`ErrorBody`]; a body that is not an `ErrorBody` (a
//! proxy's HTML page, say) is kept as text, never lost. `Display` shows the code, the message (with
//! its `{placeholders}` filled in) and the context id that Genesys support asks for.
//!
//! ```
//! use genesys_client::{ApiError, GenesysError};
//! use http::StatusCode;
//!
//! let body = br#"{"status":409,"code":"general.conflict",
//!     "message":"The version supplied does not match the current version of the user",
//!     "contextId":"d11b-42","details":[],"errors":[]}"#;
//! let err = GenesysError::from(ApiError::from_response(StatusCode::CONFLICT, Some("d11b-42".into()), body));
//! assert_eq!(err.code(), Some("general.conflict"));
//! assert!(err.to_string().contains("general.conflict"));
//! assert!(err.to_string().contains("d11b-42"));
//! ```

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use genesys_tower::BoxError;
use http::StatusCode;
use serde::{Deserialize, Serialize};

/// The error body of the Genesys Cloud Platform API, and of a failing data action.
///
/// The platform answers `{message, code, status, contextId, messageWithParams, ...}`; a data
/// action that fails answers its own shape, `{errorCode, status, correlationId, entityName,
/// userMessage, userParams, details: [{errorCode}], errors}`. Both are read into this one type:
/// [`ApiError::code`] takes `code` else `errorCode`, the message `messageWithParams` / `message`
/// else `userMessage`, the context id `contextId` else `correlationId`.
///
/// Every field is optional: the parser never fails on a body that has fewer fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct ErrorBody {
    /// A human-readable message.
    pub message: Option<String>,
    /// A dotted code: `bad.request`, `not.found`, `general.conflict`, `too.many.requests`, ...
    pub code: Option<String>,
    /// The HTTP status, repeated.
    pub status: Option<u16>,
    /// The entity the error is about.
    pub entity_id: Option<String>,
    /// The name of the entity the error is about.
    pub entity_name: Option<String>,
    /// The message with `{name}` placeholders, filled from [`message_params`](Self::message_params).
    pub message_with_params: Option<String>,
    /// The values of the placeholders of [`message_with_params`](Self::message_with_params).
    pub message_params: BTreeMap<String, String>,
    /// The correlation id of the request (the `ININ-Correlation-Id` header).
    pub context_id: Option<String>,
    /// Details, one per field or entity at fault.
    pub details: Vec<ErrorDetail>,
    /// Nested errors.
    pub errors: Vec<ErrorBody>,
    /// The limit that was hit, on a 429 or a limit error.
    pub limit: Option<ErrorLimit>,
    /// A failing data action's code (its `code` field, in its own shape).
    pub error_code: Option<String>,
    /// A failing data action's message for people.
    pub user_message: Option<String>,
    /// The values of a failing data action's message, as sent (their shape varies).
    pub user_params: Option<serde_json::Value>,
    /// A failing data action's correlation id (its `contextId`, in its own shape).
    pub correlation_id: Option<String>,
}

impl ErrorBody {
    /// [`message_with_params`](Self::message_with_params) with each `{name}` replaced by its
    /// value from [`message_params`](Self::message_params) (a placeholder without a value is kept
    /// as it is); `None` when the body has no `messageWithParams`.
    ///
    /// The text is built up to [`MESSAGE_MAX_CHARS`] characters and no further, however many
    /// placeholders the template repeats: a hostile body cannot make it large.
    ///
    /// ```
    /// let body: genesys_client::ErrorBody = serde_json::from_str(
    ///     r#"{"messageWithParams":"User {id} not found","messageParams":{"id":"42"}}"#).unwrap();
    /// assert_eq!(body.rendered_message().as_deref(), Some("User 42 not found"));
    /// ```
    pub fn rendered_message(&self) -> Option<String> {
        self.rendered_message_within(MESSAGE_MAX_CHARS)
    }

    /// [`rendered_message`](Self::rendered_message), built up to `max_chars` characters: the
    /// work and the memory are bounded by `max_chars`, not by the template or its values.
    pub fn rendered_message_within(&self, max_chars: usize) -> Option<String> {
        let template = self.message_with_params.as_deref()?;
        let mut out = Bounded::new(max_chars);
        let mut rest = template;
        while !out.full() {
            let Some(open) = rest.find('{') else {
                out.push(rest);
                break;
            };
            out.push(&rest[..open]);
            let after = &rest[open + 1..];
            match after.find('}') {
                Some(close) => {
                    let name = &after[..close];
                    match self.message_params.get(name) {
                        Some(value) => out.push(value),
                        None => {
                            out.push("{");
                            out.push(name);
                            out.push("}");
                        }
                    }
                    rest = &after[close + 1..];
                }
                None => {
                    out.push(&rest[open..]);
                    break;
                }
            }
        }
        Some(out.into_string())
    }

    /// The best message to show: the rendered `messageWithParams`, else `message`, at most
    /// [`MESSAGE_MAX_CHARS`] characters.
    pub fn best_message(&self) -> Option<String> {
        self.rendered_message()
            .filter(|m| !m.is_empty())
            .or_else(|| {
                self.message
                    .as_deref()
                    .or(self.user_message.as_deref())
                    .map(|m| cut(m, MESSAGE_MAX_CHARS))
            })
    }

    fn looks_like_error_body(&self) -> bool {
        self.code.is_some()
            || self.message.is_some()
            || self.message_with_params.is_some()
            || self.error_code.is_some()
            || self.user_message.is_some()
    }
}

/// The longest message, in characters, that [`ApiError::message`] and
/// [`ErrorBody::rendered_message`] build; the rest of a longer text is cut.
pub const MESSAGE_MAX_CHARS: usize = 500;

/// The first `max_chars` characters of `s`.
fn cut(s: &str, max_chars: usize) -> String {
    match s.char_indices().nth(max_chars) {
        Some((end, _)) => s[..end].to_owned(),
        None => s.to_owned(),
    }
}

/// A string that takes at most `max` characters and ignores the rest.
struct Bounded {
    out: String,
    left: usize,
}

impl Bounded {
    fn new(max: usize) -> Self {
        Bounded {
            out: String::new(),
            left: max,
        }
    }

    fn full(&self) -> bool {
        self.left == 0
    }

    fn push(&mut self, s: &str) {
        if self.left == 0 {
            return;
        }
        match s.char_indices().nth(self.left) {
            Some((end, _)) => {
                self.out.push_str(&s[..end]);
                self.left = 0;
            }
            None => {
                self.out.push_str(s);
                self.left -= s.chars().count();
            }
        }
    }

    fn into_string(self) -> String {
        self.out
    }
}

/// One detail of an [`ErrorBody`].
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct ErrorDetail {
    /// The error code of this detail.
    pub error_code: Option<String>,
    /// The field at fault.
    pub field_name: Option<String>,
    /// The entity at fault.
    pub entity_id: Option<String>,
    /// The name of the entity at fault.
    pub entity_name: Option<String>,
}

/// The limit named by an [`ErrorBody`].
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", default)]
#[non_exhaustive]
pub struct ErrorLimit {
    /// The limit's key, such as `client.credentials.token.rate.per.minute`.
    pub key: Option<String>,
    /// The limit's namespace.
    pub namespace: Option<String>,
    /// The limit's value.
    pub value: Option<serde_json::Value>,
}

/// A non-2xx answer of the API.
#[derive(Clone)]
pub struct ApiError {
    status: StatusCode,
    correlation_id: Option<String>,
    body: Option<ErrorBody>,
    text: String,
    /// Built once, within [`MESSAGE_MAX_CHARS`].
    message: String,
    retry_after: Option<Duration>,
    attempts: Option<u32>,
    maybe_applied: bool,
}

impl ApiError {
    /// Builds the error from a response's status, `ININ-Correlation-Id` header and body.
    ///
    /// The body is parsed as an [`ErrorBody`]; when it is not one, it is kept as text.
    pub fn from_response(status: StatusCode, correlation_id: Option<String>, body: &[u8]) -> Self {
        let parsed = serde_json::from_slice::<ErrorBody>(body)
            .ok()
            .filter(ErrorBody::looks_like_error_body);
        let text = String::from_utf8_lossy(body).into_owned();
        let message = parsed
            .as_ref()
            .and_then(ErrorBody::best_message)
            .unwrap_or_else(|| cut(text.trim(), MESSAGE_MAX_CHARS));
        ApiError {
            status,
            correlation_id,
            body: parsed,
            text,
            message,
            retry_after: None,
            attempts: None,
            maybe_applied: false,
        }
    }

    pub(crate) fn with_maybe_applied(mut self, maybe_applied: bool) -> Self {
        self.maybe_applied = maybe_applied;
        self
    }

    /// Whether the request may have been applied although this error is the answer: an earlier
    /// attempt failed after it may have reached the server, and the retry layer sent the
    /// request again ([`RetryInfo::maybe_applied`](genesys_tower::retry::RetryInfo)).
    pub fn may_have_been_applied(&self) -> bool {
        self.maybe_applied
    }

    pub(crate) fn with_retry_after(mut self, retry_after: Option<Duration>) -> Self {
        self.retry_after = retry_after;
        self
    }

    pub(crate) fn with_attempts(mut self, attempts: Option<u32>) -> Self {
        self.attempts = attempts;
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// Attempts the call took before this answer (1 for an answer at the first try); `None`
    /// for a replay from an idempotency store, which sent no attempt.
    pub fn attempts(&self) -> Option<u32> {
        self.attempts
    }

    /// The parsed error body, when the response carried one.
    pub fn body(&self) -> Option<&ErrorBody> {
        self.body.as_ref()
    }

    /// The response body as text (whatever it was: an `ErrorBody` or not).
    pub fn text(&self) -> &str {
        &self.text
    }

    /// The error code (`general.conflict`, ...; a failing data action's `errorCode`), when the
    /// body had one.
    pub fn code(&self) -> Option<&str> {
        let body = self.body.as_ref()?;
        body.code.as_deref().or(body.error_code.as_deref())
    }

    /// The message: `messageWithParams` rendered, else `message`, else the body's text; at most
    /// [`MESSAGE_MAX_CHARS`] characters (built once, when the error was made).
    pub fn message(&self) -> String {
        self.message.clone()
    }

    /// The context id: the body's `contextId` (a failing data action's `correlationId`), else
    /// the `ININ-Correlation-Id` header.
    pub fn context_id(&self) -> Option<&str> {
        self.body
            .as_ref()
            .and_then(|b| b.context_id.as_deref().or(b.correlation_id.as_deref()))
            .or(self.correlation_id.as_deref())
    }

    /// The `ININ-Correlation-Id` header of the response.
    pub fn correlation_id(&self) -> Option<&str> {
        self.correlation_id.as_deref()
    }

    /// The `Retry-After` of the response, when it had one.
    pub fn retry_after(&self) -> Option<Duration> {
        self.retry_after
    }

    /// Whether this is a version conflict: 409 `general.conflict`, or a 400 whose message says
    /// the version does not match (the real API answers both ways).
    pub fn is_version_conflict(&self) -> bool {
        let msg = self.message.to_ascii_lowercase();
        let says_version = msg.contains("version") && msg.contains("match");
        match self.status {
            StatusCode::CONFLICT => self.code() == Some("general.conflict") || says_version,
            StatusCode::BAD_REQUEST => says_version,
            _ => false,
        }
    }
}

impl fmt::Debug for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ApiError")
            .field("status", &self.status)
            .field("code", &self.code())
            .field("message", &self.message)
            .field("context_id", &self.context_id())
            .field("body", &self.body)
            .finish()
    }
}

impl fmt::Display for ApiError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}", self.status.as_u16())?;
        if let Some(code) = self.code() {
            write!(f, " {code}")?;
        }
        if !self.message.is_empty() {
            // Already cut to MESSAGE_MAX_CHARS: a non-ErrorBody page stays readable in a log line.
            write!(f, ": {}", self.message)?;
        }
        if let Some(id) = self.context_id() {
            write!(f, " (contextId {id})")?;
        }
        if self.maybe_applied {
            write!(
                f,
                "; an earlier attempt failed after the request may have reached the server, so \
                 it may have been applied"
            )?;
        }
        Ok(())
    }
}

impl std::error::Error for ApiError {}

/// The `error` field of an OAuth error response.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum OAuthErrorKind {
    /// `invalid_client`: the client id or secret is wrong, or the client is disabled.
    InvalidClient,
    /// `invalid_grant`.
    InvalidGrant,
    /// `unauthorized_client`: the client may not use this grant.
    UnauthorizedClient,
    /// `invalid_request`.
    InvalidRequest,
    /// `unsupported_grant_type`.
    UnsupportedGrantType,
    /// `invalid_scope`.
    InvalidScope,
    /// Another code, or none (the login host answered something that is not an OAuth error).
    Other(String),
}

impl OAuthErrorKind {
    fn parse(s: &str) -> Self {
        match s {
            "invalid_client" => OAuthErrorKind::InvalidClient,
            "invalid_grant" => OAuthErrorKind::InvalidGrant,
            "unauthorized_client" => OAuthErrorKind::UnauthorizedClient,
            "invalid_request" => OAuthErrorKind::InvalidRequest,
            "unsupported_grant_type" => OAuthErrorKind::UnsupportedGrantType,
            "invalid_scope" => OAuthErrorKind::InvalidScope,
            other => OAuthErrorKind::Other(other.to_owned()),
        }
    }

    /// The code as sent: `invalid_client`, ...
    pub fn as_str(&self) -> &str {
        match self {
            OAuthErrorKind::InvalidClient => "invalid_client",
            OAuthErrorKind::InvalidGrant => "invalid_grant",
            OAuthErrorKind::UnauthorizedClient => "unauthorized_client",
            OAuthErrorKind::InvalidRequest => "invalid_request",
            OAuthErrorKind::UnsupportedGrantType => "unsupported_grant_type",
            OAuthErrorKind::InvalidScope => "invalid_scope",
            OAuthErrorKind::Other(s) => s,
        }
    }
}

impl fmt::Display for OAuthErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The login host refused to issue a token.
///
/// Holds no secret: neither the client secret nor any token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuthError {
    /// The OAuth error code.
    pub error: OAuthErrorKind,
    /// The description the login host gave (`description`, else `error_description`).
    pub description: Option<String>,
    /// The HTTP status of the token response.
    pub status: StatusCode,
}

impl OAuthError {
    pub(crate) fn from_response(status: StatusCode, body: &[u8]) -> Self {
        #[derive(Deserialize)]
        struct Raw {
            error: Option<String>,
            description: Option<String>,
            error_description: Option<String>,
        }
        match serde_json::from_slice::<Raw>(body) {
            Ok(raw) if raw.error.is_some() => OAuthError {
                error: OAuthErrorKind::parse(&cut(
                    raw.error.as_deref().unwrap_or_default(),
                    MESSAGE_MAX_CHARS,
                )),
                description: raw
                    .description
                    .or(raw.error_description)
                    .map(|d| cut(&d, MESSAGE_MAX_CHARS)),
                status,
            },
            _ => {
                let text: String = String::from_utf8_lossy(body).chars().take(300).collect();
                OAuthError {
                    error: OAuthErrorKind::Other(String::new()),
                    description: Some(text.trim().to_owned()).filter(|t| !t.is_empty()),
                    status,
                }
            }
        }
    }

    /// Whether the credentials themselves were refused (a retry cannot help).
    pub fn is_bad_credentials(&self) -> bool {
        matches!(
            self.error,
            OAuthErrorKind::InvalidClient
                | OAuthErrorKind::UnauthorizedClient
                | OAuthErrorKind::InvalidGrant
        ) || self.status == StatusCode::UNAUTHORIZED
    }
}

impl OAuthError {
    /// Whether the login host answered 429 or 5xx: it did not judge the credentials, and may
    /// issue a token later.
    pub fn is_unavailable(&self) -> bool {
        self.status == StatusCode::TOO_MANY_REQUESTS || self.status.is_server_error()
    }
}

impl fmt::Display for OAuthError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let oauth = !self.error.as_str().is_empty();
        f.write_str(if self.is_unavailable() {
            "the login host is unavailable"
        } else if oauth || self.status == StatusCode::UNAUTHORIZED {
            "the login host refused the client credentials"
        } else {
            // No OAuth error: an answer from something else on the way (a proxy, a firewall),
            // or a login URL that is not the token endpoint.
            "the login host answered without issuing a token"
        })?;
        if self.error.as_str().is_empty() {
            write!(f, " (HTTP {})", self.status.as_u16())?;
        } else {
            write!(f, ": {} (HTTP {})", self.error, self.status.as_u16())?;
        }
        if let Some(d) = &self.description {
            write!(f, ": {d}")?;
        }
        if self.is_bad_credentials() {
            f.write_str("; check the client id and secret, and that the OAuth client uses the client-credentials grant in this region")?;
        }
        Ok(())
    }
}

impl std::error::Error for OAuthError {}

/// The error of every call of this crate.
#[derive(Debug)]
#[non_exhaustive]
pub enum GenesysError {
    /// The API answered with a non-2xx status (after any retries the stack made).
    Api(Box<ApiError>),
    /// No token could be had: the login host refused the credentials, or answered 429 or 5xx
    /// past the token source's retries ([`is_token_unavailable`](Self::is_token_unavailable)).
    OAuth(OAuthError),
    /// The request may or may not have been applied: it failed after it may have reached the
    /// server (a reset, a timeout) and was not safe to send again. Check before repeating it.
    OutcomeUnknown {
        /// What happened.
        source: BoxError,
    },
    /// The server asked to wait longer than the client allows (`max_retry_after`, or the rest of
    /// the call's deadline): the call ended at once instead of waiting.
    RetryAfterTooLong {
        /// How long the server asked to wait.
        retry_after: Duration,
        /// The error as the retry layer reported it.
        source: BoxError,
    },
    /// The call ran out of its total time budget (or the server's `Retry-After` would have
    /// taken it past the budget).
    DeadlineExceeded {
        /// The server's hint, when one would have passed the deadline.
        retry_after: Option<Duration>,
        /// The error as the stack reported it.
        source: BoxError,
    },
    /// The request did not get an answer: connection refused, DNS, TLS, or a retry budget spent on
    /// such failures. Nothing was applied when the failure happened before sending.
    Transport {
        /// The underlying error.
        source: BoxError,
    },
    /// A 2xx answer whose body is larger than the client's limit
    /// ([`max_response_body`](crate::GenesysClientBuilder::max_response_body)). The body was not
    /// read past the limit, and the call was not retried (another attempt would get the same).
    /// The request itself succeeded: a write was applied.
    ResponseTooLarge {
        /// The status of the answer.
        status: StatusCode,
        /// The limit, in bytes.
        limit: usize,
        /// The error as the stack reported it.
        source: BoxError,
    },
    /// A 2xx answer whose body is not what this endpoint returns.
    Decode {
        /// The HTTP status.
        status: StatusCode,
        /// Why the body could not be read.
        message: String,
        /// The `ININ-Correlation-Id` of the response.
        correlation_id: Option<String>,
    },
    /// The client was configured wrongly, or a call was given an invalid argument.
    Config(String),
}

impl GenesysError {
    /// The HTTP status, for [`GenesysError::Api`] and [`GenesysError::Decode`] (and the token
    /// response's status for [`GenesysError::OAuth`]).
    pub fn status(&self) -> Option<StatusCode> {
        match self {
            GenesysError::Api(e) => Some(e.status()),
            GenesysError::Decode { status, .. } => Some(*status),
            GenesysError::ResponseTooLarge { status, .. } => Some(*status),
            GenesysError::OAuth(e) => Some(e.status),
            _ => None,
        }
    }

    /// The Genesys error code (`not.found`, ...), for [`GenesysError::Api`].
    pub fn code(&self) -> Option<&str> {
        match self {
            GenesysError::Api(e) => e.code(),
            _ => None,
        }
    }

    /// The API error, for [`GenesysError::Api`], and for an
    /// [`OutcomeUnknown`](GenesysError::OutcomeUnknown) that an API answer caused (a data
    /// action's 502, say): its status, code and correlation id help find out what happened.
    pub fn api(&self) -> Option<&ApiError> {
        match self {
            GenesysError::Api(e) => Some(e),
            GenesysError::OutcomeUnknown { source } => source.downcast_ref::<ApiError>(),
            _ => None,
        }
    }

    /// Whether the outcome of the call is unknown (it may have been applied).
    pub fn is_outcome_unknown(&self) -> bool {
        matches!(self, GenesysError::OutcomeUnknown { .. })
    }

    /// Whether the server answered, but after the request was applied: a 2xx whose body could
    /// not be read ([`ResponseTooLarge`](Self::ResponseTooLarge),
    /// [`Decode`](Self::Decode)). Sending the request again would apply it twice.
    pub fn was_applied(&self) -> bool {
        matches!(
            self,
            GenesysError::ResponseTooLarge { status, .. } | GenesysError::Decode { status, .. }
                if status.is_success()
        )
    }

    /// Whether the request may have been applied although the call failed: its outcome is
    /// unknown, its 2xx answer could not be read ([`was_applied`](Self::was_applied)), or an
    /// attempt before the last failed after the request may have reached the server and the
    /// retry layer sent it again (the last attempt's error or answer is what the call ended
    /// with). Such a request is sent again safely only with the same `Idempotency-Key`.
    pub fn may_have_been_applied(&self) -> bool {
        match self {
            GenesysError::OutcomeUnknown { .. } => true,
            GenesysError::Api(e) => e.may_have_been_applied(),
            _ if self.was_applied() => true,
            _ => std::error::Error::source(self).is_some_and(|source| {
                genesys_tower::error::find::<genesys_tower::retry::Error>(source)
                    .is_some_and(genesys_tower::retry::Error::may_have_been_applied)
            }),
        }
    }

    /// Whether the answer is a 500, 502, 504 or another 5xx that may come after the work was
    /// done (every one but 501, 503, 505 and 511: a CDN's 520, say): what a gateway in front of the work answers
    /// when it gave up, which may be after the work was done. When the request may have been
    /// applied all the same (not safe to send twice, as data actions are, or sent again after
    /// an attempt that may have been applied), it is reported as
    /// [`OutcomeUnknown`](Self::OutcomeUnknown) instead, and this is false.
    pub fn is_gateway_error(&self) -> bool {
        self.status().is_some_and(is_gateway_error)
    }

    /// The `Retry-After` hint that ended the call, for [`GenesysError::RetryAfterTooLong`], or the
    /// `Retry-After` header of an API error.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            GenesysError::RetryAfterTooLong { retry_after, .. } => Some(*retry_after),
            GenesysError::DeadlineExceeded { retry_after, .. } => *retry_after,
            GenesysError::Api(e) => e.retry_after(),
            _ => None,
        }
    }
}

impl fmt::Display for GenesysError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GenesysError::Api(e) => write!(f, "Genesys Cloud API error: {e}"),
            GenesysError::OAuth(e) => write!(f, "authentication failed: {e}"),
            GenesysError::OutcomeUnknown { source } => {
                let cause = source.to_string();
                // The retry layer's error already explains itself; do not say it twice.
                if cause.starts_with("outcome unknown") {
                    f.write_str(&cause)
                } else {
                    write!(
                        f,
                        "outcome unknown: the request may have been applied ({cause}); it was \
                         not retried because repeating it could apply it twice; check its effect \
                         before sending it again"
                    )
                }
            }
            GenesysError::RetryAfterTooLong { retry_after, .. } => write!(
                f,
                "the server asked to wait {} s before retrying, more than this client allows; \
                 try again later or raise max_retry_after",
                retry_after.as_secs_f64()
            ),
            GenesysError::DeadlineExceeded { source, .. } => {
                write!(f, "the call ran out of its time budget: {source}")
            }
            GenesysError::Transport { source } => {
                write!(f, "request failed: {}", with_causes(source.as_ref()))
            }
            GenesysError::ResponseTooLarge { status, limit, .. } => write!(
                f,
                "the answer (HTTP {}) has a body larger than this client's limit of {limit} \
                 bytes; it was not read and the call was not retried (the request itself \
                 succeeded; raise max_response_body if such answers are expected)",
                status.as_u16()
            ),
            GenesysError::Decode {
                status,
                message,
                correlation_id,
            } => {
                write!(
                    f,
                    "unexpected response body (HTTP {}): {message}",
                    status.as_u16()
                )?;
                if let Some(id) = correlation_id {
                    write!(f, " (correlation id {id})")?;
                }
                Ok(())
            }
            GenesysError::Config(msg) => write!(f, "invalid configuration: {msg}"),
        }
    }
}

/// `e`'s message followed by its sources' (hyper's own says "client error (Connect)" and leaves
/// the why to its source), each one left out when a message before it already says it.
pub(crate) fn with_causes(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    // A chain is short; this bounds a cyclic one.
    for _ in 0..16 {
        let Some(cause) = source else { break };
        let said = cause.to_string();
        if !said.is_empty() && !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

impl std::error::Error for GenesysError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GenesysError::Api(e) => Some(e.as_ref()),
            GenesysError::OAuth(e) => Some(e),
            GenesysError::OutcomeUnknown { source }
            | GenesysError::RetryAfterTooLong { source, .. }
            | GenesysError::DeadlineExceeded { source, .. }
            | GenesysError::ResponseTooLarge { source, .. }
            | GenesysError::Transport { source } => Some(source.as_ref()),
            GenesysError::Decode { .. } | GenesysError::Config(_) => None,
        }
    }
}

impl From<ApiError> for GenesysError {
    fn from(e: ApiError) -> Self {
        GenesysError::Api(Box::new(e))
    }
}

impl From<OAuthError> for GenesysError {
    fn from(e: OAuthError) -> Self {
        GenesysError::OAuth(e)
    }
}

impl From<BoxError> for GenesysError {
    fn from(e: BoxError) -> Self {
        GenesysError::from_stack(e)
    }
}

#[cfg(test)]
mod tests;

/// A 5xx that may come after the work was done: 500, 502 and 504, the answers of a gateway in
/// front of the work, and every other 5xx but those that say the work was not done: 501 not
/// implemented, 503 unavailable, 505 version not supported, 511 network sign-in, and a CDN's
/// 521 to 523, 525, 526 and 530 (the origin refused, unreachable, or its TLS failed: never
/// reached). So a CDN's 520 (the origin's answer was unreadable) or 524 (no answer in time), a
/// proxy's 598 or 599, count.
pub(crate) fn is_gateway_error(status: StatusCode) -> bool {
    status.is_server_error()
        && !matches!(
            status.as_u16(),
            501 | 503 | 505 | 511 | 521 | 522 | 523 | 525 | 526 | 530
        )
}
