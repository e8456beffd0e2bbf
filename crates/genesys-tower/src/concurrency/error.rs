//! Error types.

use std::fmt;

/// An error of the [`Concurrency`](super::Concurrency) service itself.
///
/// It reaches the caller wrapped in a [`NotSent`](crate::NotSent), boxed in a
/// [`BoxError`](crate::BoxError): [`find`](crate::error::find) reaches it.
///
/// ```
/// use genesys_tower::concurrency::Error;
/// use genesys_tower::error::find;
/// use genesys_tower::{BoxError, NotSent};
///
/// fn was_shed(err: &BoxError) -> bool {
///     matches!(find::<Error>(&**err), Some(Error::Overloaded))
/// }
/// # assert!(was_shed(&BoxError::from(NotSent::new(Error::Overloaded))));
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
