//! Error types.

use std::error::Error as StdError;
use std::fmt;
use std::sync::Arc;

use crate::BoxError;

/// An error of the [`Auth`](super::Auth) service itself: no usable token could be had.
///
/// It reaches the caller wrapped in a [`NotSent`](crate::NotSent) (no request was sent without
/// a token), boxed in a [`BoxError`]: [`find`](crate::error::find) reaches it. Its
/// [`source`](StdError::source) is the token source's own error, so that can be found too.
/// Every request that waited for the same failed fetch gets a clone of the same error; the next
/// request tries the token source again.
///
/// ```
/// use genesys_tower::BoxError;
/// use genesys_tower::auth;
/// use genesys_tower::error::find;
///
/// fn is_auth_failure(err: &BoxError) -> bool {
///     find::<auth::Error>(&**err).is_some_and(|e| e.is_token_source())
/// }
/// ```
#[derive(Clone)]
pub struct Error {
    kind: Kind,
}

#[derive(Clone)]
enum Kind {
    TokenSource(Arc<dyn StdError + Send + Sync>),
    InvalidToken,
}

impl Error {
    pub(crate) fn token_source(cause: BoxError) -> Self {
        Error {
            kind: Kind::TokenSource(Arc::from(cause)),
        }
    }

    pub(crate) fn invalid_token() -> Self {
        Error {
            kind: Kind::InvalidToken,
        }
    }

    /// The token source failed; [`source`](StdError::source) says why.
    #[must_use]
    pub fn is_token_source(&self) -> bool {
        matches!(self.kind, Kind::TokenSource(_))
    }

    /// The token source returned a token that cannot be put in an `Authorization` header.
    #[must_use]
    pub fn is_invalid_token(&self) -> bool {
        matches!(self.kind, Kind::InvalidToken)
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            // The cause is named here as well as in `source()`, so that a caller who prints only
            // this error still learns what went wrong. Token sources must keep secrets out of
            // their errors (see `TokenSource::fetch`).
            Kind::TokenSource(cause) => write!(
                f,
                "could not get an access token, so the request was not sent: {cause}"
            ),
            Kind::InvalidToken => f.write_str(
                "the token source returned a token that is not a valid header value, so the \
                 request was not sent: check what the token source returns",
            ),
        }
    }
}

impl fmt::Debug for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.kind {
            Kind::TokenSource(cause) => f.debug_tuple("TokenSource").field(cause).finish(),
            Kind::InvalidToken => f.write_str("InvalidToken"),
        }
    }
}

impl StdError for Error {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        match &self.kind {
            Kind::TokenSource(cause) => Some(&**cause),
            Kind::InvalidToken => None,
        }
    }
}

/// The token source gave no token within [`AuthLayer::fetch_timeout`](super::AuthLayer::fetch_timeout):
/// the cause of an [`Error`] for which [`is_token_source`](Error::is_token_source) is true.
#[derive(Debug)]
pub(crate) struct FetchTimedOut(pub(crate) std::time::Duration);

impl fmt::Display for FetchTimedOut {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "the token source gave no token within {:?}: check that the login host answers, or \
             give AuthLayer::fetch_timeout more time",
            self.0
        )
    }
}

impl StdError for FetchTimedOut {}
