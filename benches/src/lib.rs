//! Support code for the benches member crate.
