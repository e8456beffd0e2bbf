//! The Redis connection every Redis-backed piece opens (feature `redis`): the idempotency
//! store, the fleet's pacer and its token cache. Public so that a program's own Redis work (a
//! job's coordination, say) fails the same way: fast, with a timeout, never hanging.

use std::time::Duration;

use redis::aio::{ConnectionManager, ConnectionManagerConfig};

/// A connection manager for `url` that connects lazily (opening it never fails because Redis is
/// down; calls do), with a 1 s connect timeout, `response_timeout` per command, and one quick
/// reconnection attempt. `opener` names the caller in the error when there is no Tokio runtime
/// (the manager spawns its task at once: said, rather than a panic).
pub fn connect(
    url: &str,
    opener: &str,
    response_timeout: Duration,
) -> Result<ConnectionManager, String> {
    if tokio::runtime::Handle::try_current().is_err() {
        return Err(format!("{opener} must be called inside a Tokio runtime"));
    }
    let client = redis::Client::open(url).map_err(|e| format!("invalid Redis URL: {e}"))?;
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(1)))
        .set_response_timeout(Some(response_timeout))
        .set_number_of_retries(1)
        .set_max_delay(Duration::from_millis(500));
    ConnectionManager::new_lazy_with_config(client, config).map_err(|e| format!("redis: {e}"))
}
