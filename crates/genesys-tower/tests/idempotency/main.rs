//! Idempotency tests.
