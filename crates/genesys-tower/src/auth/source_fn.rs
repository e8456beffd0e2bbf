use std::fmt;
use std::future::Future;

use super::{Token, TokenSource};
use crate::BoxError;

/// A [`TokenSource`] made from an async closure; see [`token_source_fn`].
#[derive(Clone)]
pub struct TokenSourceFn<F> {
    f: F,
}

/// Makes a [`TokenSource`] from a closure that returns a future of a token.
///
/// ```
/// use std::time::Duration;
/// use genesys_tower::auth::{AuthLayer, Token, token_source_fn};
///
/// let source = token_source_fn(|| async {
///     // Read the token from wherever it lives.
///     Ok(Token::new("from-the-vault", Some(Duration::from_secs(3600))))
/// });
/// let layer = AuthLayer::new(source);
/// # let _ = layer;
/// ```
pub fn token_source_fn<F, Fut>(f: F) -> TokenSourceFn<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Token, BoxError>> + Send,
{
    TokenSourceFn { f }
}

impl<F, Fut> TokenSource for TokenSourceFn<F>
where
    F: Fn() -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Token, BoxError>> + Send,
{
    fn fetch(&self) -> impl Future<Output = Result<Token, BoxError>> + Send {
        (self.f)()
    }
}

impl<F> fmt::Debug for TokenSourceFn<F> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TokenSourceFn")
            .field("f", &std::any::type_name::<F>())
            .finish()
    }
}
