//! The type-erased services the client is built from, shared by the stack and the token source.

use std::sync::{Arc, Mutex};

use genesys_tower::{Body, BoxError};
use http::{Request, Response};
use tower::util::BoxCloneService;

/// An HTTP client service, type-erased: what sits at the leaf of the stack and what the token
/// source posts through.
pub type HttpService = BoxCloneService<Request<Body>, Response<Body>, BoxError>;

/// The whole stack of a [`GenesysClient`](crate::GenesysClient), type-erased: use it in your own code, under your own
/// layers, or in a `tower::ServiceBuilder`.
pub type StackService = BoxCloneService<Request<Body>, Response<Body>, BoxError>;

/// The most bytes read of a token response (success or error): 64 KiB.
pub const MAX_TOKEN_BODY: usize = 64 * 1024;

/// A service that can be shared between threads: clones are handed out per call.
///
/// The layers' services need not be `Sync`; holding one behind a mutex and cloning it out makes
/// the client `Sync` (so `&client` can cross `.await` points in spawned tasks).
#[derive(Clone)]
pub(crate) struct Shared(Arc<Mutex<StackService>>);

impl Shared {
    pub(crate) fn new(svc: StackService) -> Self {
        Shared(Arc::new(Mutex::new(svc)))
    }

    pub(crate) fn get(&self) -> StackService {
        // A poisoned lock only means a panic elsewhere while cloning: the service is still whole.
        match self.0.lock() {
            Ok(s) => s.clone(),
            Err(p) => p.into_inner().clone(),
        }
    }
}
