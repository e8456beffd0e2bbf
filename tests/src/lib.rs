//! Support code for the end-to-end tests: a simulator and a client pointed at it.
//!
//! The tests themselves are in `tests/`: each file drives the whole default stack of
//! `genesys-client` against an embedded `genesys-sim` with faults switched on, and checks what a
//! user would notice (final states, the simulator's effect ledger, token requests, errors).

#![forbid(unsafe_code)]
#![warn(missing_docs, rust_2018_idioms)]

use genesys_client::{GenesysClient, GenesysClientBuilder};
use genesys_sim::{SimConfig, SimHandle, Simulator};

/// The simulator's default client id.
pub const CLIENT_ID: &str = "demo-client";
/// The simulator's default client secret.
pub const CLIENT_SECRET: &str = "demo-secret";

/// Spawns a simulator with `config` on an ephemeral port.
pub async fn spawn(config: SimConfig) -> SimHandle {
    Simulator::spawn(config)
        .await
        .expect("the simulator starts on 127.0.0.1:0")
}

/// A client builder pointed at `sim`, with the simulator's default credentials.
pub fn client_for(sim: &SimHandle) -> GenesysClientBuilder {
    GenesysClient::builder()
        .base_url(sim.base_url())
        .client_credentials(CLIENT_ID, CLIENT_SECRET)
}

/// FNV-1a 64 of `bytes` as 16 hex digits: how the simulator's ledger names a payload.
pub fn payload_hash(bytes: &[u8]) -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    format!("{h:016x}")
}

/// The README's Rust examples, compiled as a user's crate would compile them (from the public
/// API alone, with this crate's dependencies): a README that no longer compiles fails the tests.
#[cfg(doctest)]
#[doc = include_str!("../../README.md")]
pub struct ReadmeExamples;

/// The simulator guide's Rust example, compiled and run the same way.
#[cfg(doctest)]
#[doc = include_str!("../../docs/simulator.md")]
pub struct SimulatorGuideExamples;
