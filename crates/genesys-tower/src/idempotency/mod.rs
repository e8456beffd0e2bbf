//! Idempotency keys stable across retries, and a response store.
