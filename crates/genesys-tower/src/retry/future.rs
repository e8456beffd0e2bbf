//! The future of [`Retry`](super::Retry): every attempt of one call, with the waits between them.

pub use crate::boxed::ResponseFuture;
