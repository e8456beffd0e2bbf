//! Retries: classification, backoff with jitter, Retry-After as a floor, a retry budget.
