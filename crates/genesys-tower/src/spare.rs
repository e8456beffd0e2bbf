//! A clone of a layer's inner service, made once and shared through the layer's shared state by
//! every clone of the layer's service.
//!
//! A call's first send goes to the service that was made ready for it. The sends after it (a
//! retry, a re-send after a 401) need a service of their own. Rather than a clone of the whole
//! stack below at every call, in case, a layer keeps one spare clone in the state its calls
//! already hold (no reference count of its own per call), and clones it only when a second send
//! is decided. After the inner service was lent out mutably (it may have changed), the layer
//! starts a new, empty cell, which the first call after fills from its own inner service.

use std::sync::{Arc, Mutex, PoisonError};

/// A shared spare: in a mutex only so that it can be shared between threads without asking the
/// service to be `Sync`; locked only to clone it, when a call sends a second time.
pub(crate) type Shared<S> = Arc<Mutex<S>>;

/// A spare made from `inner`.
pub(crate) fn shared<S: Clone>(inner: &S) -> Shared<S> {
    Arc::new(Mutex::new(inner.clone()))
}

/// A service to send with, cloned from a shared spare.
pub(crate) fn take<S: Clone>(spare: &Shared<S>) -> S {
    // Cloning cannot leave the service half-changed: a poisoned lock still holds a whole one.
    spare.lock().unwrap_or_else(PoisonError::into_inner).clone()
}
