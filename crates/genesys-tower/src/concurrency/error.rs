//! Error types.

use std::fmt;

/// An error of the [`Concurrency`](super::Concurrency) service itself.
///
/// It reaches the caller boxed in a [`BoxError`](crate::BoxError); downcast to find it:
///
/// ```
/// use genesys_tower::BoxError;
/// use genesys_tower::concurrency::Error;
///
/// fn was_shed(err: &BoxError) -> bool {
///     matches!(err.downcast_ref::<Error>(), Some(Error::Overloaded))
/// }
/// # assert!(was_shed(&BoxError::from(Error::Overloaded)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum Error {
    /// Every permit was in use and the layer was built with
    /// [`reject_when_full`](super::ConcurrencyLayer::reject_when_full).
    ///
    /// Nothing was sent, so the request is safe to try again later.
    Overloaded,
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Overloaded => f.write_str(
                "too many requests in flight: the request was not sent; \
                 try again later or raise the concurrency limit",
            ),
        }
    }
}

impl std::error::Error for Error {}
