//! The OAuth client-credentials token source.
//!
//! [`ClientCredentials`] implements [`genesys_tower::auth::TokenSource`]: it posts
//! `grant_type=client_credentials` to `<login>/oauth/token` with the client id and secret in a
//! Basic `Authorization` header, reads `access_token`, `token_type` (any case of `bearer`) and
//! `expires_in`, and turns an OAuth error (`{"error":"invalid_client",...}`) into a typed
//! [`OAuthError`].
//!
//! Token requests have a small retry loop of their own: a 429, a 5xx or a connection failure of
//! the login host is retried with exponential backoff and full jitter (at least the `Retry-After`
//! the login host asks for, within a bound); refused credentials are not retried, so a wrong
//! secret fails at once with an error that says so. Asking for a token twice is harmless (the
//! login host just issues another), so a token request is always safe to repeat.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use base64::Engine as _;
use bytes::Bytes;
use genesys_tower::auth::{Token, TokenSource};
use genesys_tower::{Body, BoxError};
use http::{HeaderValue, Method, Request, StatusCode, header};
use serde::Deserialize;
use tower::{Service, ServiceExt};

use crate::error::OAuthError;
use crate::service::{HttpService, MAX_TOKEN_BODY};

/// How token requests are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TokenRetry {
    /// Attempts in all, the first included (at least 1). Default 4.
    pub max_attempts: u32,
    /// The first backoff; it doubles with each retry. Default 250 ms.
    pub base_delay: Duration,
    /// The largest backoff. Default 5 s.
    pub max_delay: Duration,
    /// The longest `Retry-After` the loop waits; a longer one ends the fetch. Default 60 s.
    pub max_retry_after: Duration,
}

impl Default for TokenRetry {
    fn default() -> Self {
        TokenRetry {
            max_attempts: 4,
            base_delay: Duration::from_millis(250),
            max_delay: Duration::from_secs(5),
            max_retry_after: Duration::from_secs(60),
        }
    }
}

struct Inner {
    token_url: String,
    client_id: String,
    // The Basic header value, built once; it holds the secret, so it is never shown.
    basic: HeaderValue,
    http: HttpService,
    retry: TokenRetry,
}

/// A client-credentials [`TokenSource`] for a Genesys Cloud login host.
///
/// Cheap to clone. `Debug` shows the client id and the token URL, never the secret.
#[derive(Clone)]
pub struct ClientCredentials {
    inner: Arc<Inner>,
}

impl ClientCredentials {
    /// A token source that posts to `token_url` (`https://login.mypurecloud.com/oauth/token`)
    /// through `http`, any HTTP client service (see [`crate::GenesysClientBuilder::service`]).
    pub fn new(
        token_url: impl Into<String>,
        client_id: impl Into<String>,
        client_secret: impl Into<String>,
        http: HttpService,
    ) -> Self {
        let client_id = client_id.into();
        let secret = client_secret.into();
        let encoded =
            base64::engine::general_purpose::STANDARD.encode(format!("{client_id}:{secret}"));
        let mut basic = HeaderValue::from_str(&format!("Basic {encoded}"))
            .expect("base64 is a valid header value");
        basic.set_sensitive(true);
        ClientCredentials {
            inner: Arc::new(Inner {
                token_url: token_url.into(),
                client_id,
                basic,
                http,
                retry: TokenRetry::default(),
            }),
        }
    }

    /// The same source with another retry setting for token requests.
    pub fn with_retry(self, retry: TokenRetry) -> Self {
        let inner = &self.inner;
        ClientCredentials {
            inner: Arc::new(Inner {
                token_url: inner.token_url.clone(),
                client_id: inner.client_id.clone(),
                basic: inner.basic.clone(),
                http: inner.http.clone(),
                retry: TokenRetry {
                    max_attempts: retry.max_attempts.max(1),
                    ..retry
                },
            }),
        }
    }

    /// The OAuth client id (not a secret).
    pub fn client_id(&self) -> &str {
        &self.inner.client_id
    }

    /// The token URL.
    pub fn token_url(&self) -> &str {
        &self.inner.token_url
    }

    /// Fetches a token, retrying what a retry can fix.
    pub async fn fetch_token(&self) -> Result<Token, TokenError> {
        let retry = self.inner.retry;
        let mut attempt = 0u32;
        loop {
            attempt += 1;
            let (error, hint) = match self.attempt().await {
                Ok(token) => return Ok(token),
                Err(Failure::Final(e)) => return Err(e),
                Err(Failure::Transient { error, retry_after }) => (error, retry_after),
            };
            if attempt >= retry.max_attempts || hint.is_some_and(|h| h > retry.max_retry_after) {
                return Err(TokenError::GaveUp {
                    attempts: attempt,
                    last: Box::new(error),
                });
            }
            let exp = retry
                .base_delay
                .saturating_mul(1u32 << (attempt - 1).min(16))
                .min(retry.max_delay);
            // Full jitter, with the login host's Retry-After as a floor.
            let jittered = Duration::try_from_secs_f64(exp.as_secs_f64() * rand_unit())
                .unwrap_or(exp)
                .min(exp);
            let delay = hint.map_or(jittered, |h| h.max(jittered));
            tracing::debug!(
                attempt,
                delay_ms = delay.as_millis() as u64,
                error = %error,
                "retrying token request"
            );
            tokio::time::sleep(delay).await;
        }
    }

    async fn attempt(&self) -> Result<Token, Failure> {
        let inner = &self.inner;
        let request = Request::builder()
            .method(Method::POST)
            .uri(&inner.token_url)
            .header(header::AUTHORIZATION, inner.basic.clone())
            .header(header::CONTENT_TYPE, "application/x-www-form-urlencoded")
            .header(header::ACCEPT, "application/json")
            .body(Body::from("grant_type=client_credentials"))
            .map_err(|e| Failure::Final(TokenError::Request(e.to_string())))?;
        let mut http = inner.http.clone();
        let response = match http.ready().await {
            Ok(svc) => svc.call(request).await,
            Err(e) => Err(e),
        };
        let response = match response {
            Ok(r) => r,
            // A proxy that refused the tunnel would refuse it again, and may lock the account
            // whose password it was given after a few tries.
            Err(e) if crate::proxy::refused_in(&*e) => {
                return Err(Failure::Final(TokenError::Transport(e)));
            }
            Err(e) => {
                return Err(Failure::Transient {
                    error: TokenError::Transport(e),
                    retry_after: None,
                });
            }
        };
        let status = response.status();
        let retry_after =
            genesys_tower::headers::retry_after(response.headers(), SystemTime::now());
        // Bounded even over a leaf that reads nothing for us (the client's own stack has read
        // it already, within the same limit).
        let body: Bytes = match genesys_tower::read_body::read_limited(
            response.into_body(),
            status,
            MAX_TOKEN_BODY,
            None,
        )
        .await
        {
            Ok(b) => b,
            Err(e) if e.is_too_large() => {
                return Err(Failure::Final(TokenError::Malformed(e.to_string())));
            }
            Err(e) => {
                return Err(Failure::Transient {
                    error: TokenError::Transport(e.into()),
                    retry_after: None,
                });
            }
        };
        if status.is_success() {
            return parse_token(&body).map_err(Failure::Final);
        }
        let error = TokenError::OAuth(OAuthError::from_response(status, &body));
        if matches!(
            status,
            StatusCode::TOO_MANY_REQUESTS
                | StatusCode::REQUEST_TIMEOUT
                | StatusCode::INTERNAL_SERVER_ERROR
                | StatusCode::BAD_GATEWAY
                | StatusCode::SERVICE_UNAVAILABLE
                | StatusCode::GATEWAY_TIMEOUT
        ) {
            Err(Failure::Transient { error, retry_after })
        } else {
            Err(Failure::Final(error))
        }
    }
}

enum Failure {
    Final(TokenError),
    Transient {
        error: TokenError,
        retry_after: Option<Duration>,
    },
}

fn rand_unit() -> f64 {
    use rand::{Rng as _, SeedableRng as _};
    rand::rngs::SmallRng::from_os_rng().random::<f64>()
}

fn parse_token(body: &[u8]) -> Result<Token, TokenError> {
    #[derive(Deserialize)]
    struct Raw<E> {
        access_token: Option<String>,
        token_type: Option<String>,
        expires_in: Option<E>,
    }
    let raw: Raw<serde_json::Value> = match serde_json::from_slice(body) {
        Ok(raw) => raw,
        Err(e) => {
            // A number past a float's range (`"expires_in": 1e400`) fails the whole parse: read
            // the rest without it, and take the token without a known expiry, as for any
            // `expires_in` that is not a number of seconds.
            let lenient: Raw<serde::de::IgnoredAny> =
                serde_json::from_slice(body).map_err(|_| {
                    TokenError::Malformed(format!("the token response is not JSON: {e}"))
                })?;
            if lenient.expires_in.is_some() {
                tracing::warn!(
                    "the token's expires_in is not a number of seconds this client can read; \
                     ignoring it"
                );
            }
            Raw {
                access_token: lenient.access_token,
                token_type: lenient.token_type,
                expires_in: None,
            }
        }
    };
    let value = raw
        .access_token
        .filter(|t| !t.is_empty())
        .ok_or_else(|| TokenError::Malformed("the token response has no access_token".into()))?;
    if let Some(kind) = &raw.token_type
        && !kind.eq_ignore_ascii_case("bearer")
    {
        return Err(TokenError::Malformed(format!(
            "the token type is {kind:?}, not bearer"
        )));
    }
    Ok(Token::new(value, token_lifetime(raw.expires_in.as_ref())))
}

/// The shortest token lifetime the client accepts: a shorter `expires_in` is raised to it.
pub const MIN_TOKEN_LIFETIME: Duration = Duration::from_secs(1);
/// The longest token lifetime the client accepts (48 h, the longest Genesys documents): a longer
/// `expires_in` is cut to it.
pub const MAX_TOKEN_LIFETIME: Duration = Duration::from_secs(172_800);
/// The shortest lifetime Genesys documents for an OAuth client (300 s); a shorter one is used
/// (within [`MIN_TOKEN_LIFETIME`]) but logged as a warning.
const DOCUMENTED_MIN_LIFETIME: f64 = 300.0;

/// Reads `expires_in` (seconds, a number or a string of one) and keeps it within
/// [`MIN_TOKEN_LIFETIME`]..=[`MAX_TOKEN_LIFETIME`]. A value outside Genesys's documented range
/// (300 s to 48 h) is logged as a warning; one that is not a number is ignored with a warning
/// (the token then has no known expiry, and a 401 renews it).
fn token_lifetime(expires_in: Option<&serde_json::Value>) -> Option<Duration> {
    let raw = expires_in?;
    let secs = match raw {
        serde_json::Value::Number(n) => n.as_f64(),
        // Some servers send expires_in as a string; accept both (HTTP whitespace only).
        serde_json::Value::String(s) => s
            .trim_matches(|c| c == ' ' || c == '\t')
            .parse::<f64>()
            .ok(),
        serde_json::Value::Null => return None,
        _ => None,
    }
    // Past a float's range (`"1e400"`) reads as infinite: not a number of seconds either, as
    // the same value written as a number is not (it fails the parse, above).
    .filter(|s| s.is_finite());
    let Some(secs) = secs else {
        tracing::warn!(
            expires_in = %shorten(&raw.to_string()),
            "the token's expires_in is not a number of seconds; ignoring it"
        );
        return None;
    };
    let (min, max) = (
        MIN_TOKEN_LIFETIME.as_secs_f64(),
        MAX_TOKEN_LIFETIME.as_secs_f64(),
    );
    if !(DOCUMENTED_MIN_LIFETIME..=max).contains(&secs) {
        tracing::warn!(
            expires_in = secs,
            "the token's expires_in is outside Genesys's documented range of 300 s to 172800 s; \
             using it within 1 s to 172800 s"
        );
    }
    let clamped = secs.clamp(min, max);
    Some(Duration::try_from_secs_f64(clamped).unwrap_or(MAX_TOKEN_LIFETIME))
}

/// At most 64 characters of a value for a log line.
fn shorten(s: &str) -> String {
    s.chars().take(64).collect()
}

impl TokenSource for ClientCredentials {
    fn fetch(&self) -> impl std::future::Future<Output = Result<Token, BoxError>> + Send {
        let this = self.clone();
        async move { this.fetch_token().await.map_err(BoxError::from) }
    }
}

impl fmt::Debug for ClientCredentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClientCredentials")
            .field("token_url", &self.inner.token_url)
            .field("client_id", &self.inner.client_id)
            .field("client_secret", &"[redacted]")
            .field("retry", &self.inner.retry)
            .finish()
    }
}

/// Why no token could be fetched.
#[derive(Debug)]
#[non_exhaustive]
pub enum TokenError {
    /// The login host refused: wrong credentials, a disabled client, or (after the retries) a 429
    /// or 5xx.
    OAuth(OAuthError),
    /// The login host could not be reached.
    Transport(BoxError),
    /// The login host answered 2xx with something that is not a bearer token.
    Malformed(String),
    /// The token request could not be built (an invalid token URL).
    Request(String),
    /// Transient failures went on past the retry limit.
    GaveUp {
        /// Attempts made.
        attempts: u32,
        /// The last failure.
        last: Box<TokenError>,
    },
}

impl TokenError {
    /// The OAuth error, if the login host answered with one (on the last attempt).
    pub fn oauth(&self) -> Option<&OAuthError> {
        match self {
            TokenError::OAuth(e) => Some(e),
            TokenError::GaveUp { last, .. } => last.oauth(),
            _ => None,
        }
    }
}

impl fmt::Display for TokenError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TokenError::OAuth(e) => fmt::Display::fmt(e, f),
            TokenError::Transport(e) => write!(
                f,
                "the login host could not be reached: {}",
                crate::error::with_causes(e.as_ref())
            ),
            TokenError::Malformed(m) => write!(f, "the login host sent no usable token: {m}"),
            TokenError::Request(m) => write!(f, "the token request could not be built: {m}"),
            TokenError::GaveUp { attempts, last } => {
                write!(f, "no token after {attempts} attempts: {last}")
            }
        }
    }
}

impl std::error::Error for TokenError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            TokenError::OAuth(e) => Some(e),
            TokenError::Transport(e) => Some(e.as_ref()),
            TokenError::GaveUp { last, .. } => Some(last.as_ref()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use tower::util::BoxCloneSyncService;

    fn service(answers: Vec<(u16, &'static str)>, seen: Arc<AtomicUsize>) -> HttpService {
        let answers = Arc::new(answers);
        BoxCloneSyncService::new(tower::service_fn(move |req: Request<Body>| {
            let answers = answers.clone();
            let seen = seen.clone();
            async move {
                let n = seen.fetch_add(1, Ordering::SeqCst);
                let auth = req.headers()[header::AUTHORIZATION]
                    .to_str()
                    .unwrap()
                    .to_owned();
                assert_eq!(
                    auth,
                    format!(
                        "Basic {}",
                        base64::engine::general_purpose::STANDARD.encode("id:s3cr3t-value")
                    )
                );
                assert!(req.headers()[header::AUTHORIZATION].is_sensitive());
                let body = req.into_body().collect_bytes().await.unwrap();
                assert_eq!(body, "grant_type=client_credentials");
                let (status, body) = answers[n.min(answers.len() - 1)];
                Ok::<_, BoxError>(
                    http::Response::builder()
                        .status(status)
                        .body(Body::from(body))
                        .unwrap(),
                )
            }
        }))
    }

    #[tokio::test(start_paused = true)]
    async fn token_honours_expires_in_and_any_case_bearer() {
        let seen = Arc::new(AtomicUsize::new(0));
        let src = ClientCredentials::new(
            "http://login.test/oauth/token",
            "id",
            "s3cr3t-value",
            service(
                vec![(
                    200,
                    r#"{"access_token":"tok","token_type":"BEARER","expires_in":300}"#,
                )],
                seen.clone(),
            ),
        );
        let token = src.fetch_token().await.unwrap();
        assert_eq!(token.secret(), "tok");
        assert_eq!(token.lifetime(), Some(Duration::from_secs(300)));
        assert!(!format!("{src:?}").contains("s3cr3t"));
    }

    #[tokio::test(start_paused = true)]
    async fn bad_credentials_fail_at_once() {
        let seen = Arc::new(AtomicUsize::new(0));
        let src = ClientCredentials::new(
            "http://login.test/oauth/token",
            "id",
            "s3cr3t-value",
            service(
                vec![(
                    401,
                    r#"{"error":"invalid_client","description":"Invalid client credentials"}"#,
                )],
                seen.clone(),
            ),
        );
        let err = src.fetch_token().await.unwrap_err();
        assert_eq!(seen.load(Ordering::SeqCst), 1);
        assert_eq!(
            err.oauth().unwrap().error,
            crate::OAuthErrorKind::InvalidClient
        );
        assert!(err.to_string().contains("invalid_client"));
        assert!(!err.to_string().contains("s3cr3t"));
        assert!(!format!("{err:?}").contains("s3cr3t"));
    }

    #[tokio::test(start_paused = true)]
    async fn login_host_429_and_5xx_are_retried() {
        let seen = Arc::new(AtomicUsize::new(0));
        let src = ClientCredentials::new(
            "http://login.test/oauth/token",
            "id",
            "s3cr3t-value",
            service(
                vec![
                    (429, r#"{"error":"too_many"}"#),
                    (503, "unavailable"),
                    (
                        200,
                        r#"{"access_token":"t2","token_type":"bearer","expires_in":86400}"#,
                    ),
                ],
                seen.clone(),
            ),
        );
        assert_eq!(src.fetch_token().await.unwrap().secret(), "t2");
        assert_eq!(seen.load(Ordering::SeqCst), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn lifetimes_are_clamped_never_panic() {
        let cases: &[(&str, Option<u64>)] = &[
            (r#"1e30"#, Some(172_800)),
            (r#""1e300""#, Some(172_800)),
            (r#"1e308"#, Some(172_800)),
            // Infinite, or past a float's range, as text or as a number: not a number of
            // seconds; the token is taken without a known expiry.
            (r#""inf""#, None),
            (r#""-inf""#, None),
            (r#""1e400""#, None),
            (r#"0"#, Some(1)),
            (r#"-5"#, Some(1)),
            (r#"0.25"#, Some(1)),
            (r#"299"#, Some(299)),
            (r#"86400"#, Some(86_400)),
            (r#""NaN""#, None),
            (r#""soon""#, None),
            (r#"" 60""#, Some(60)),
            (r#""\u00a060""#, None),
            (r#"null"#, None),
            (r#"[1]"#, None),
            (r#"18446744073709551615"#, Some(172_800)),
            (r#"1e400"#, None),
            (r#"-1e400"#, None),
        ];
        for (raw, want) in cases {
            let body =
                format!(r#"{{"access_token":"t","token_type":"bearer","expires_in":{raw}}}"#);
            let token = parse_token(body.as_bytes()).unwrap();
            assert_eq!(
                token.lifetime(),
                want.map(Duration::from_secs),
                "expires_in {raw}"
            );
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(crate::fuzz_cases(4000)))]

        #[test]
        fn any_token_answer_parses_without_panic(body in proptest::collection::vec(proptest::num::u8::ANY, 0..96)) {
            match parse_token(&body) {
                Ok(token) => {
                    let life = token.lifetime();
                    proptest::prop_assert!(life.is_none_or(|l| (MIN_TOKEN_LIFETIME..=MAX_TOKEN_LIFETIME).contains(&l)));
                }
                Err(e) => proptest::prop_assert!(!e.to_string().is_empty()),
            }
        }

        #[test]
        fn any_expires_in_is_kept_in_range(
            number in proptest::num::f64::ANY,
            text in "\\PC{0,24}",
            as_text in proptest::bool::ANY,
        ) {
            {
                let expires_in = if as_text {
                    serde_json::Value::String(text.clone())
                } else {
                    serde_json::Number::from_f64(number).map_or(serde_json::Value::Null, serde_json::Value::Number)
                };
                let body = serde_json::json!({"access_token": "t", "token_type": "bearer", "expires_in": expires_in});
                let token = parse_token(body.to_string().as_bytes()).unwrap();
                let life = token.lifetime();
                proptest::prop_assert!(life.is_none_or(|l| (MIN_TOKEN_LIFETIME..=MAX_TOKEN_LIFETIME).contains(&l)));
            }
        }
    }
}
