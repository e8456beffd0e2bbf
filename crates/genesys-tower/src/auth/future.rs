//! The future of [`Auth`](super::Auth): it waits for a token, may buffer the body, and may send
//! the request twice (once more after a 401, with a fresh token).

pub use crate::boxed::ResponseFuture;
