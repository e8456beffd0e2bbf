//! Support code for the genesys-tower benchmarks: the simulations and services that the criterion
//! benches and the report binaries (`contention`, `goodput`, `memory`) share, and a small markdown
//! table printer. Nothing here is part of the product; it is public only so that the bench targets
//! can use it.

#![forbid(unsafe_code)]
#![warn(missing_docs, missing_debug_implementations, rust_2018_idioms)]

pub mod contention;
pub mod goodput;
pub mod loopback;
pub mod stack;
pub mod table;

pub use table::Table;
