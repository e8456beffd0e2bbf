//! Support code for the examples member crate.
