//! A clone of a layer's inner service, made once and shared through one `Arc` by every clone of
//! the layer's service.
//!
//! A call's first send goes to the service that was made ready for it. The sends after it (a
//! retry, a re-send after a 401) need a service of their own. Rather than a clone of the whole
//! stack below at every call, in case, a call keeps a reference to the spare (one reference
//! count) and clones it only when a second send is decided.

use std::sync::{Arc, Mutex, OnceLock, PoisonError};

/// A shared spare: in a mutex only so that it can be shared between threads without asking the
/// service to be `Sync`; locked only to clone it, when a call sends a second time.
pub(crate) type Shared<S> = Arc<Mutex<S>>;

/// The spare clone of an inner service, in a cell shared by the clones of the layer's service.
/// After the inner service was lent out mutably (it may have changed), the service and the
/// clones made from it from then on share a new, empty cell, which the first of them to call
/// fills from its own inner service.
pub(crate) struct Spare<S>(Arc<OnceLock<Shared<S>>>);

impl<S: Clone> Spare<S> {
    /// A spare clone of `inner`.
    pub(crate) fn of(inner: &S) -> Self {
        Spare(Arc::new(OnceLock::from(shared(inner))))
    }

    /// The spare, shared; made from `inner` if the cell is empty.
    pub(crate) fn share(&self, inner: &S) -> Shared<S> {
        self.0.get_or_init(|| shared(inner)).clone()
    }
}

impl<S> Spare<S> {
    /// Forgets the spare: `inner` is about to be changed through a mutable reference.
    pub(crate) fn forget(&mut self) {
        self.0 = Arc::new(OnceLock::new());
    }
}

impl<S> Clone for Spare<S> {
    fn clone(&self) -> Self {
        Spare(self.0.clone())
    }
}

/// A shared spare made on the spot, for a call that has no layer's spare at hand.
pub(crate) fn shared<S: Clone>(inner: &S) -> Shared<S> {
    Arc::new(Mutex::new(inner.clone()))
}

/// A service to send with, cloned from a shared spare.
pub(crate) fn take<S: Clone>(spare: &Shared<S>) -> S {
    // Cloning cannot leave the service half-changed: a poisoned lock still holds a whole one.
    spare.lock().unwrap_or_else(PoisonError::into_inner).clone()
}
