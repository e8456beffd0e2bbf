//! The handle a request has on its connection: a handler under a reset fault asks the
//! connection task to drop the connection without a response.

use tokio::sync::Notify;

/// Lets a handler ask its connection task to drop the connection without a response.
#[derive(Debug, Default)]
pub(crate) struct ConnCtl {
    pub(crate) kill: Notify,
}

impl ConnCtl {
    /// Asks for the connection to be reset and never returns: the connection task drops this
    /// future together with the connection.
    pub(crate) async fn reset<T>(&self) -> T {
        self.kill.notify_one();
        std::future::pending().await
    }
}
