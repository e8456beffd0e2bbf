//! What the client's tests share.

use std::time::Duration;

use genesys_client::{GenesysClient, GenesysClientBuilder};

/// `builder` with two attempts a call, the second at once, and no pacing: a test's failures
/// show at once, and a connection failure's one retry with them.
pub fn quick_retries(builder: GenesysClientBuilder) -> GenesysClientBuilder {
    builder
        .retry_policy(
            GenesysClient::retry_policy_builder()
                .max_attempts(2)
                .base_delay(Duration::from_millis(1))
                .build(),
        )
        .no_pacing()
}
