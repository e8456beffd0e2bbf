//! Errors shared by the layers: the [`NotSent`] marker, and [`find`] to reach an error inside
//! another.

use std::error::Error as StdError;
use std::fmt;

use crate::BoxError;

/// Says that a request was not sent: the error inside happened before any byte of it reached
/// the network, so the call's outcome is known (nothing was done) and the request is not a
/// possible duplicate.
///
/// Any layer can wrap its error in it. The retry layer's
/// [`DefaultClassifier`](crate::retry::DefaultClassifier) finds it anywhere in an error's source
/// chain and returns the error as it is, at once: never retried (the layer that refused already
/// decided, and a token source or a load shedder has its own policy), and never reported as an
/// unknown outcome. This crate's auth layer (no token could be had) and concurrency layer (a full
/// limit in reject mode) wrap their errors in it; a load-shedding or circuit-breaking layer of
/// your own can say the same.
///
/// It adds no text of its own: its `Display` is the wrapped error's, and the wrapped error is its
/// [`source`](StdError::source), so [`find`] (or a walk of the chain) reaches it.
///
/// ```
/// use genesys_tower::error::find;
/// use genesys_tower::{BoxError, NotSent};
///
/// #[derive(Debug)]
/// struct CircuitOpen;
/// impl std::fmt::Display for CircuitOpen {
///     fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
///         f.write_str("circuit open: the request was not sent")
///     }
/// }
/// impl std::error::Error for CircuitOpen {}
///
/// let err: BoxError = NotSent::new(CircuitOpen).into();
/// assert!(NotSent::is_in(&*err));
/// assert_eq!(err.to_string(), "circuit open: the request was not sent");
/// assert!(find::<CircuitOpen>(&*err).is_some());
/// ```
pub struct NotSent {
    inner: BoxError,
}

impl NotSent {
    /// Marks `error` as the error of a request that was not sent.
    pub fn new(error: impl Into<BoxError>) -> Self {
        NotSent {
            inner: error.into(),
        }
    }

    /// The wrapped error.
    #[must_use]
    pub fn get_ref(&self) -> &(dyn StdError + Send + Sync + 'static) {
        &*self.inner
    }

    /// The wrapped error, by value.
    #[must_use]
    pub fn into_inner(self) -> BoxError {
        self.inner
    }

    /// Whether `error`, or any error in its source chain, is a `NotSent`.
    #[must_use]
    pub fn is_in(error: &(dyn StdError + 'static)) -> bool {
        find::<NotSent>(error).is_some()
    }
}

/// The first error of type `T` in `error`'s source chain, `error` itself included: the way to
/// reach an error that a layer wrapped (in a [`NotSent`], a retry [`Error`](crate::retry::Error),
/// or any error of your own).
///
/// ```
/// use genesys_tower::error::find;
/// use genesys_tower::{BoxError, NotSent};
///
/// let err: BoxError = NotSent::new(std::io::Error::other("no route")).into();
/// assert!(err.downcast_ref::<std::io::Error>().is_none());
/// assert_eq!(find::<std::io::Error>(&*err).unwrap().to_string(), "no route");
/// ```
#[must_use]
pub fn find<'a, T: StdError + 'static>(error: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if let Some(t) = e.downcast_ref::<T>() {
            return Some(t);
        }
        cause = e.source();
    }
    None
}

/// Whether `error` says that nothing of its request reached a server: a connection that could
/// not be made (hyper-util's `is_connect()`, with this crate's `hyper-util` feature, or a refused
/// connection) or a [`NotSent`], anywhere in its source chain. `false` says nothing either way:
/// the request may have been sent.
///
/// ```
/// use genesys_tower::error::never_sent;
/// use genesys_tower::{BoxError, NotSent};
/// use std::io;
///
/// let refused: BoxError = io::Error::from(io::ErrorKind::ConnectionRefused).into();
/// assert!(never_sent(&*refused));
/// assert!(never_sent(&*BoxError::from(NotSent::new("no token"))));
/// let reset: BoxError = io::Error::from(io::ErrorKind::ConnectionReset).into();
/// assert!(!never_sent(&*reset), "a reset may come after the request was read");
/// ```
#[must_use]
pub fn never_sent(error: &(dyn StdError + 'static)) -> bool {
    let mut cause = Some(error);
    while let Some(e) = cause {
        if e.is::<NotSent>() || is_connect_failure(e) {
            return true;
        }
        cause = e.source();
    }
    false
}

/// A failure to connect (this error alone, not its chain): nothing of the request was sent.
pub(crate) fn is_connect_failure(e: &(dyn StdError + 'static)) -> bool {
    #[cfg(feature = "hyper-util")]
    if e.downcast_ref::<hyper_util::client::legacy::Error>()
        .is_some_and(hyper_util::client::legacy::Error::is_connect)
    {
        return true;
    }
    e.downcast_ref::<std::io::Error>()
        .is_some_and(|e| e.kind() == std::io::ErrorKind::ConnectionRefused)
}

impl fmt::Display for NotSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // The wrapped errors of this crate already say that nothing was sent; a caller who prints
        // only the outer error learns what went wrong.
        fmt::Display::fmt(&self.inner, f)
    }
}

impl fmt::Debug for NotSent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("NotSent").field(&self.inner).finish()
    }
}

impl StdError for NotSent {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&*self.inner)
    }
}
