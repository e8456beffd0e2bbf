//! Tokens and where they come from.

use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

use crate::BoxError;

/// A bearer token and when it expires.
///
/// The value is a secret: `Debug` prints it redacted, and it is only read through
/// [`Token::secret`].
///
/// ```
/// use std::time::Duration;
/// use genesys_tower::auth::Token;
///
/// let token = Token::new("s3cr3t", Some(Duration::from_secs(86_400)));
/// assert!(!format!("{token:?}").contains("s3cr3t"));
/// assert_eq!(token.secret(), "s3cr3t");
/// ```
#[derive(Clone)]
pub struct Token {
    value: Arc<str>,
    issued_at: Instant,
    expires_at: Option<Instant>,
}

impl Token {
    /// A token issued now that lives `lifetime` (`None`: it does not expire).
    ///
    /// Any lifetime is accepted: one too long for the clock (`Duration::MAX`) is cut to about
    /// thirty years. Token sources that read a lifetime from the network should bound it first
    /// (the client-credentials source of `genesys-client` keeps it within 1 s to 48 h).
    pub fn new(value: impl Into<String>, lifetime: Option<Duration>) -> Self {
        let now = Instant::now();
        Token {
            value: Arc::from(value.into()),
            issued_at: now,
            expires_at: lifetime.map(|l| crate::time::after(now, l)),
        }
    }

    /// The token's value. Keep it out of logs.
    #[must_use]
    pub fn secret(&self) -> &str {
        &self.value
    }

    /// When the token was issued (the moment it was made, on tokio's clock).
    #[must_use]
    pub fn issued_at(&self) -> Instant {
        self.issued_at
    }

    /// When the token expires, if it does.
    #[must_use]
    pub fn expires_at(&self) -> Option<Instant> {
        self.expires_at
    }

    /// How long the token lives in all, if it expires.
    #[must_use]
    pub fn lifetime(&self) -> Option<Duration> {
        self.expires_at
            .map(|e| e.saturating_duration_since(self.issued_at))
    }

    /// The same token in an allocation of its own: a copy whose reference count no other
    /// thread's clones touch.
    pub(crate) fn own_copy(&self) -> Token {
        Token {
            value: Arc::from(&*self.value),
            issued_at: self.issued_at,
            expires_at: self.expires_at,
        }
    }

    /// Whether two tokens carry the same value.
    #[must_use]
    pub fn same_value(&self, other: &Token) -> bool {
        self.value == other.value
    }
}

impl fmt::Debug for Token {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Token")
            .field("value", &"[redacted]")
            .field("expires_at", &self.expires_at)
            .finish()
    }
}

/// Where tokens come from: an OAuth client, a file, a test.
///
/// Implement it for your own type; the `AuthLayer` calls [`fetch`](TokenSource::fetch) once for
/// each refresh, however many requests are waiting for it.
pub trait TokenSource: Send + Sync + 'static {
    /// Fetches a new token.
    ///
    /// The error should name its cause (bad credentials, unreachable login host) and must never
    /// contain a secret.
    fn fetch(&self) -> impl Future<Output = Result<Token, BoxError>> + Send;
}

impl<T: TokenSource> TokenSource for Arc<T> {
    fn fetch(&self) -> impl Future<Output = Result<Token, BoxError>> + Send {
        (**self).fetch()
    }
}
