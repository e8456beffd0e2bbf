//! Support code for the examples member crate.

pub mod data_action_service;
