//! The type-erased service the client is built from, shared by the stack and the token source.

use genesys_tower::{Body, BoxError};
use http::{Request, Response};
use tower::util::BoxCloneSyncService;

/// An HTTP service, type-erased, `Clone + Send + Sync`: what sits at the leaf of the stack, what
/// the token source posts through, and the whole stack of a [`GenesysClient`](crate::GenesysClient)
/// (to use under your own layers or in a `tower::ServiceBuilder`). Clones share the state of the
/// layers inside (token, pacing, budget); being `Sync`, it needs no lock to be shared.
pub type HttpService = BoxCloneSyncService<Request<Body>, Response<Body>, BoxError>;

/// The most bytes read of a token response (success or error): 64 KiB.
pub const MAX_TOKEN_BODY: usize = 64 * 1024;
