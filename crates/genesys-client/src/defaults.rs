//! The client's defaults, in one place: the builder and the configuration file both start from
//! them. Re-exported by [`builder`](crate::builder) and at the crate root.

use std::time::Duration;

/// The default number of requests in flight at once.
pub const DEFAULT_MAX_IN_FLIGHT: usize = 16;
/// The default pacing: 300 requests per 60 s, the Genesys limit per client-credentials token.
pub const DEFAULT_PACING: (u64, Duration) = (300, Duration::from_secs(60));
/// The default per-attempt timeout.
pub const DEFAULT_ATTEMPT_TIMEOUT: Duration = Duration::from_secs(60);
/// The default TCP connect timeout of the default leaf (see
/// [`GenesysClientBuilder::connect_timeout`](crate::GenesysClientBuilder::connect_timeout)).
pub const DEFAULT_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The default total deadline of a call, retries included.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(300);
/// The default limit of a success body: 16 MiB (see [`GenesysClientBuilder::max_response_body`](crate::GenesysClientBuilder::max_response_body)).
pub const DEFAULT_MAX_RESPONSE_BODY: usize = genesys_tower::read_body::DEFAULT_MAX_SUCCESS_BODY;
/// The default limit of an error body: 64 KiB, the rest is cut (see
/// [`GenesysClientBuilder::max_error_body`](crate::GenesysClientBuilder::max_error_body)).
pub const DEFAULT_MAX_ERROR_BODY: usize = genesys_tower::read_body::DEFAULT_MAX_ERROR_BODY;
/// The default idle timeout between two chunks of a response body: 30 s.
pub const DEFAULT_BODY_IDLE_TIMEOUT: Duration = genesys_tower::read_body::DEFAULT_IDLE_TIMEOUT;
