//! Support code for the tests member crate.
