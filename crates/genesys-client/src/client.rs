//! [`GenesysClient`]: the typed endpoint methods and [`call`](GenesysClient::call) over the
//! stack that [`GenesysClientBuilder`](crate::GenesysClientBuilder) builds (see
//! [`builder`](crate::builder) for the layers and their order).

use std::fmt;
use std::sync::Arc;

use bytes::Bytes;
use genesys_tower::metrics::Route;

use crate::routes::route_template;
use genesys_tower::retry::{RetryInfo, RetrySafety};
use genesys_tower::{Body, Metrics};
use http::{HeaderMap, HeaderValue, Method, Request, StatusCode, Uri, header};
use serde::de::DeserializeOwned;
use tower::{Service, ServiceExt};

use crate::error::{ApiError, GenesysError, is_gateway_error};
use crate::oauth::ClientCredentials;
use crate::region::Endpoints;
pub use crate::service::{HttpService, MAX_TOKEN_BODY};

pub(crate) struct ClientInner {
    pub(crate) stack: HttpService,
    pub(crate) endpoints: Endpoints,
    pub(crate) metrics: Metrics,
    pub(crate) credentials: Option<ClientCredentials>,
    pub(crate) user_agent: HeaderValue,
}

/// A Genesys Cloud client: the default stack and the typed endpoint methods.
///
/// Cheap to clone (clones share the stack, its pacing, its token and its counters) and `Sync`.
#[derive(Clone)]
pub struct GenesysClient {
    pub(crate) inner: Arc<ClientInner>,
}

impl fmt::Debug for GenesysClient {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GenesysClient")
            .field("endpoints", &self.inner.endpoints)
            .field("credentials", &self.inner.credentials)
            .finish_non_exhaustive()
    }
}

/// A 2xx response, read whole.
#[derive(Debug, Clone)]
pub struct ApiResponse {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body.
    pub body: Bytes,
    /// Attempts and waiting, as the retry layer reported them (one attempt and no wait for a
    /// call answered at once). `None` for a replay (`Idempotent-Replayed: true`) the retry layer
    /// did not retry: one from an idempotency store sent no attempt (a server's own replay
    /// answered at the first try is not told apart from it).
    pub retry_info: Option<RetryInfo>,
}

impl ApiResponse {
    /// The body parsed as JSON.
    pub fn json<T: DeserializeOwned>(&self) -> Result<T, GenesysError> {
        serde_json::from_slice(&self.body).map_err(|e| GenesysError::Decode {
            status: self.status,
            message: e.to_string(),
            correlation_id: self.correlation_id().map(str::to_owned),
        })
    }

    /// The `ININ-Correlation-Id` header.
    pub fn correlation_id(&self) -> Option<&str> {
        correlation_id(&self.headers)
    }

    /// Whether the idempotency layer answered from its store (`Idempotent-Replayed: true`).
    pub fn replayed(&self) -> bool {
        self.headers
            .get("idempotent-replayed")
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"))
    }

    /// Attempts the call took (1 when the retry layer did not report it).
    pub fn attempts(&self) -> u32 {
        self.retry_info.as_ref().map_or(1, |i| i.attempts)
    }
}

fn correlation_id(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("inin-correlation-id")
        .and_then(|v| v.to_str().ok())
}

impl GenesysClient {
    /// The endpoints this client talks to.
    pub fn endpoints(&self) -> &Endpoints {
        &self.inner.endpoints
    }

    /// The counters of the whole stack (requests, attempts, retries by reason, token fetches,
    /// 429s, pacing waits, idempotent replays).
    pub fn metrics(&self) -> &Metrics {
        &self.inner.metrics
    }

    /// The client-credentials token source, when the client was built with credentials.
    pub fn credentials(&self) -> Option<&ClientCredentials> {
        self.inner.credentials.as_ref()
    }

    /// The tower stack, to use elsewhere: a `Service<Request<Body>>` whose requests carry
    /// absolute URIs on the API host. Clones share the stack's state (token, pacing, budget).
    pub fn service(&self) -> HttpService {
        self.inner.stack.clone()
    }

    /// The tower stack, consuming the client. Same as [`service`](Self::service).
    pub fn into_service(self) -> HttpService {
        self.inner.stack.clone()
    }

    /// Sends a request through the stack and reads the response whole.
    ///
    /// A relative URI (`/api/v2/users/me`) is resolved against the API base URL; an absolute one
    /// must be on the API host (the bearer token is never sent elsewhere). A non-2xx answer is a
    /// [`GenesysError::Api`], but for a gateway's 500, 502 or 504 (or another 5xx that may come
    /// after the work was done, [`GenesysError::is_gateway_error`]) to a write (a method that is
    /// not idempotent) that may have been applied all the same (marked
    /// [`RetrySafety::Unsafe`] by the caller or by the retry policy's rules, or sent again after
    /// an attempt that may have been applied): that is
    /// [`GenesysError::OutcomeUnknown`] (over the [`ApiError`], which [`GenesysError::api`]
    /// reaches), as for [`execute_action`](Self::execute_action).
    pub async fn call(&self, request: Request<Body>) -> Result<ApiResponse, GenesysError> {
        let (mut parts, body) = request.into_parts();
        parts.uri = self.resolve(&parts.uri)?;
        self.send(Request::from_parts(parts, body)).await
    }

    fn resolve(&self, uri: &Uri) -> Result<Uri, GenesysError> {
        match uri.authority() {
            None => {
                let pq = uri.path_and_query().map_or("/", |pq| pq.as_str());
                format!("{}{}", self.inner.endpoints.api_base_url(), pq)
                    .parse()
                    .map_err(|e| GenesysError::Config(format!("invalid request URI: {e}")))
            }
            Some(authority) => {
                if Some(authority.as_str()) == self.inner.endpoints.api_authority().as_deref() {
                    Ok(uri.clone())
                } else {
                    Err(GenesysError::Config(format!(
                        "refusing to send the bearer token to {authority}: only the API host \
                         {} is allowed; use a relative URI",
                        self.inner.endpoints.api_base_url()
                    )))
                }
            }
        }
    }

    /// Builds a request to the API: `path` is relative (`/api/v2/...`), `body` is JSON.
    pub(crate) fn request(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        safety: Option<RetrySafety>,
    ) -> Result<Request<Body>, GenesysError> {
        let uri = format!("{}{}", self.inner.endpoints.api_base_url(), path);
        let mut builder = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::ACCEPT, "application/json")
            .header(header::USER_AGENT, self.inner.user_agent.clone());
        if body.is_some() {
            builder = builder.header(header::CONTENT_TYPE, "application/json");
        }
        if let Some(safety) = safety {
            builder = builder.extension(safety);
        }
        if let Some(template) = route_template(path) {
            builder = builder.extension(Route::new(template));
        }
        builder
            .body(body.map_or_else(Body::empty, Body::from))
            .map_err(|e| GenesysError::Config(format!("invalid request: {e}")))
    }

    /// Sends a request built by [`request`](Self::request); a non-2xx answer is an error.
    pub(crate) async fn send(&self, request: Request<Body>) -> Result<ApiResponse, GenesysError> {
        let idempotent_method = request.method().is_idempotent();
        let marked_unsafe = request.extensions().get::<RetrySafety>() == Some(&RetrySafety::Unsafe);
        let mut svc = self.inner.stack.clone();
        let response = svc
            .ready()
            .await
            .map_err(GenesysError::from_stack)?
            .call(request)
            .await
            .map_err(GenesysError::from_stack)?;
        let (parts, body) = response.into_parts();
        let body = match body.collect_bytes().await {
            Ok(b) => b,
            // The server answered, then the body broke off: for a write that answered 2xx, it
            // was applied, but we do not know with what result.
            Err(e) if parts.status.is_success() && !idempotent_method => {
                return Err(GenesysError::OutcomeUnknown { source: e });
            }
            Err(e) => return Err(GenesysError::Transport { source: e }),
        };
        // A replay (`Idempotent-Replayed: true`) that the retry layer reported nothing on came
        // from an idempotency store: no attempt was sent for it.
        let replayed = parts
            .headers
            .get(genesys_tower::idempotency::IDEMPOTENT_REPLAYED)
            .is_some_and(|v| v.as_bytes().eq_ignore_ascii_case(b"true"));
        let retry_info = (!replayed || parts.extensions.get::<RetryInfo>().is_some())
            .then(|| RetryInfo::of(&parts.extensions));
        if !parts.status.is_success() {
            // The same reading as the retry layer's: seconds or an HTTP-date, strict ASCII.
            let retry_after =
                genesys_tower::headers::retry_after(&parts.headers, std::time::SystemTime::now());
            let api = ApiError::from_response(
                parts.status,
                correlation_id(&parts.headers).map(str::to_owned),
                &body,
            )
            .with_retry_after(retry_after)
            .with_attempts(retry_info.as_ref().map(|i| i.attempts))
            .with_maybe_applied(retry_info.is_some_and(|i| i.maybe_applied));
            // A gateway's 500, 502 or 504 (or a CDN's 520...) to a write that may have been applied all the same
            // (marked unsafe by the caller, or judged so by the retry layer: marked by a rule,
            // or sent again after an attempt that may have been applied): the outcome is
            // unknown. A read's is the error it is.
            let maybe_applied = marked_unsafe || retry_info.is_some_and(|i| i.maybe_applied);
            if is_gateway_error(parts.status) && maybe_applied && !idempotent_method {
                return Err(GenesysError::OutcomeUnknown {
                    source: Box::new(api),
                });
            }
            return Err(api.into());
        }
        Ok(ApiResponse {
            status: parts.status,
            headers: parts.headers,
            body,
            retry_info,
        })
    }

    /// Sends a JSON request and parses the JSON answer.
    pub(crate) async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<&serde_json::Value>,
        safety: Option<RetrySafety>,
    ) -> Result<T, GenesysError> {
        let body = body
            .map(serde_json::to_vec)
            .transpose()
            .map_err(|e| GenesysError::Config(format!("the request body is not JSON: {e}")))?;
        let request = self.request(method, path, body, safety)?;
        self.send(request).await?.json()
    }
}

/// Percent-encodes one path segment (an id given by the caller).
pub(crate) fn segment(s: &str) -> String {
    percent_encoding::utf8_percent_encode(s, PATH_SEGMENT).to_string()
}

/// What a path segment escapes: everything but RFC 3986's unreserved characters.
pub(crate) const PATH_SEGMENT: &percent_encoding::AsciiSet = &percent_encoding::NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(segment("a b/c"), "a%20b%2Fc");
        assert_eq!(segment("3f1a-9_x.y~"), "3f1a-9_x.y~");
    }

    #[test]
    fn paths_map_to_their_templates_and_ids_never_become_labels() {
        let cases = [
            ("/api/v2/users/42", Some("/api/v2/users/{userId}")),
            (
                "/api/v2/users?pageSize=100&pageNumber=2",
                Some("/api/v2/users"),
            ),
            (
                "/api/v2/integrations/actions/a%2Fb/execute",
                Some("/api/v2/integrations/actions/{actionId}/execute"),
            ),
            (
                "/api/v2/integrations/x1/config/current",
                Some("/api/v2/integrations/{integrationId}/config/current"),
            ),
            ("/api/v2/users//", None),
            ("/api/v2/users/42/roles", None),
            ("/somewhere/else", None),
        ];
        for (path, template) in cases {
            assert_eq!(route_template(path), template, "{path}");
        }
    }
}
