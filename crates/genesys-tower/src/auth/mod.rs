//! Bearer token injection with a cached token and one single-flight refresh on 401.

mod token;

pub use token::{Token, TokenSource};
