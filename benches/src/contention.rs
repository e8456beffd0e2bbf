//! The contention experiment of the 2015 AWS architecture blog post on backoff and jitter,
//! re-implemented as a discrete-event simulation in simulated time: nothing sleeps, a run of 100
//! clients takes microseconds.
//!
//! The model, as in the post: one row on a server with optimistic concurrency control (a version
//! number). Each of N clients wants to update the row exactly once: it reads the version, then
//! writes with that version; the write succeeds only if nobody wrote in between. A client whose
//! write failed waits `network delay + backoff` and starts again with a read. Every message
//! crosses the network with a delay of `|Normal(10 ms, 2 ms)|`. Figures: the number of writes the
//! server received (calls) and the time until the last client is done.
//!
//! The backoff delays come from [`genesys_tower::retry::Backoff`], built by a
//! [`RetryPolicy`] exactly as the retry layer builds them, so
//! the experiment measures the schedule that production code uses.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fmt;
use std::time::Duration;

use genesys_tower::retry::{Backoff, Jitter, RetryPolicy};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};

/// How a client waits after a failed write.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Strategy {
    /// No wait beyond the network delay (the post's "no backoff" baseline).
    NoBackoff,
    /// Exponential backoff randomised by this jitter mode.
    Backoff(Jitter),
}

impl Strategy {
    /// The four jitter modes of the retry layer, then the no-backoff baseline.
    pub const ALL: [Strategy; 5] = [
        Strategy::Backoff(Jitter::None),
        Strategy::Backoff(Jitter::Full),
        Strategy::Backoff(Jitter::Equal),
        Strategy::Backoff(Jitter::Decorrelated),
        Strategy::NoBackoff,
    ];
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Strategy::NoBackoff => "no backoff",
            Strategy::Backoff(Jitter::None) => "exponential, no jitter",
            Strategy::Backoff(Jitter::Full) => "full jitter",
            Strategy::Backoff(Jitter::Equal) => "equal jitter",
            Strategy::Backoff(Jitter::Decorrelated) => "decorrelated jitter",
            Strategy::Backoff(_) => "other jitter",
        })
    }
}

/// The parameters of one experiment; [`Default`] is the post's setup.
#[derive(Debug, Clone, Copy)]
pub struct Setup {
    /// How many clients contend for the row.
    pub clients: usize,
    /// The backoff base (5 ms).
    pub base: Duration,
    /// The backoff cap (2 s).
    pub cap: Duration,
    /// The mean one-way network delay (10 ms).
    pub net_mean: Duration,
    /// The standard deviation of the network delay (2 ms).
    pub net_sd: Duration,
    /// The backoff strategy.
    pub strategy: Strategy,
}

impl Default for Setup {
    fn default() -> Self {
        Setup {
            clients: 100,
            base: Duration::from_millis(5),
            cap: Duration::from_secs(2),
            net_mean: Duration::from_millis(10),
            net_sd: Duration::from_millis(2),
            strategy: Strategy::Backoff(Jitter::Full),
        }
    }
}

/// What one or more runs measured.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Outcome {
    /// Writes received by the server (successful or not).
    pub calls: f64,
    /// Simulated time until the last client's write succeeded and its answer arrived.
    pub time: Duration,
}

impl Setup {
    /// The backoff schedule of one client, as the retry layer would build it.
    ///
    /// The post counts retries from 1 (the first wait is `2 * base`), our schedule from 0 (the
    /// first wait is `base`): for the exponential modes the policy gets `2 * base` so that both
    /// give 10, 20, 40 ... 2000 ms. Decorrelated jitter draws from `[base, 3 * previous]`
    /// starting at `base`, in the post and here, so it gets `base` unchanged.
    fn backoff(&self, jitter: Jitter, seed: u64) -> Backoff {
        let base = match jitter {
            Jitter::Decorrelated => self.base,
            _ => self.base * 2,
        };
        RetryPolicy::builder()
            .base_delay(base)
            .factor(2.0)
            .max_delay(self.cap)
            .jitter(jitter)
            .build()
            .backoff()
            .seed(seed)
    }

    /// One run with this seed: every random draw (network and backoff) derives from it.
    pub fn run(&self, seed: u64) -> Outcome {
        Sim::new(self, seed).run()
    }

    /// The mean of `runs` runs with seeds `seed`, `seed + 1`, ...
    pub fn mean(&self, runs: u32, seed: u64) -> Outcome {
        let runs = runs.max(1);
        let (mut calls, mut nanos) = (0.0, 0u128);
        for r in 0..runs {
            let o = self.run(seed.wrapping_add(u64::from(r)));
            calls += o.calls;
            nanos += o.time.as_nanos();
        }
        let mean_nanos = u64::try_from(nanos / u128::from(runs)).unwrap_or(u64::MAX);
        Outcome {
            calls: calls / f64::from(runs),
            time: Duration::from_nanos(mean_nanos),
        }
    }
}

/// A message in flight, delivered at a time (nanoseconds of simulated time).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Event {
    /// A client's read reaches the server.
    Read,
    /// The version read reaches the client.
    ReadReply(u64),
    /// A client's write, made with the version it read, reaches the server.
    Write(u64),
    /// The write's result reaches the client.
    WriteReply(bool),
}

struct Sim {
    clients: Vec<Option<Backoff>>,
    queue: BinaryHeap<Reverse<(u64, u64, usize, Event)>>,
    seq: u64,
    version: u64,
    calls: u64,
    net: SmallRng,
    mean: f64,
    sd: f64,
}

impl Sim {
    fn new(setup: &Setup, seed: u64) -> Self {
        let clients = (0..setup.clients)
            .map(|i| match setup.strategy {
                Strategy::NoBackoff => None,
                Strategy::Backoff(jitter) => {
                    // Independent streams per client, all derived from the run's seed.
                    let s = seed
                        .wrapping_mul(0x9E37_79B9_7F4A_7C15)
                        .wrapping_add(i as u64 + 1);
                    Some(setup.backoff(jitter, s))
                }
            })
            .collect();
        let mut sim = Sim {
            clients,
            queue: BinaryHeap::new(),
            seq: 0,
            version: 0,
            calls: 0,
            net: SmallRng::seed_from_u64(seed),
            mean: setup.net_mean.as_secs_f64() * 1e9,
            sd: setup.net_sd.as_secs_f64() * 1e9,
        };
        for client in 0..setup.clients {
            let at = sim.delay();
            sim.send(at, client, Event::Read);
        }
        sim
    }

    /// `|Normal(mean, sd)|` in nanoseconds (Box-Muller: two uniforms, one normal).
    fn delay(&mut self) -> u64 {
        let u1: f64 = 1.0 - self.net.random::<f64>(); // (0, 1]: ln is finite
        let u2: f64 = self.net.random();
        let z = (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        (self.mean + self.sd * z).abs() as u64
    }

    fn send(&mut self, at: u64, client: usize, event: Event) {
        self.seq += 1;
        self.queue.push(Reverse((at, self.seq, client, event)));
    }

    fn run(mut self) -> Outcome {
        let mut now = 0;
        while let Some(Reverse((at, _, client, event))) = self.queue.pop() {
            now = at;
            match event {
                Event::Read => {
                    let d = self.delay();
                    self.send(now + d, client, Event::ReadReply(self.version));
                }
                Event::ReadReply(version) => {
                    let d = self.delay();
                    self.send(now + d, client, Event::Write(version));
                }
                Event::Write(version) => {
                    self.calls += 1;
                    let ok = version == self.version;
                    if ok {
                        self.version += 1;
                    }
                    let d = self.delay();
                    self.send(now + d, client, Event::WriteReply(ok));
                }
                Event::WriteReply(true) => {}
                Event::WriteReply(false) => {
                    let wait = match &mut self.clients[client] {
                        Some(backoff) => nanos(backoff.next_delay()),
                        None => 0,
                    };
                    let d = self.delay();
                    self.send(now + d + wait, client, Event::Read);
                }
            }
        }
        Outcome {
            calls: self.calls as f64,
            time: Duration::from_nanos(now),
        }
    }
}

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_client_writes_once_successfully() {
        for strategy in Strategy::ALL {
            let setup = Setup {
                clients: 20,
                strategy,
                ..Setup::default()
            };
            let o = setup.run(3);
            // One success per client, so at least one write each; contention adds failures.
            assert!(o.calls >= 20.0, "{strategy}: {o:?}");
            assert!(o.time > Duration::ZERO);
        }
    }

    #[test]
    fn one_client_needs_one_call() {
        let setup = Setup {
            clients: 1,
            ..Setup::default()
        };
        let o = setup.run(1);
        assert_eq!(o.calls, 1.0);
        // Read, reply, write, reply: four network crossings of about 10 ms.
        assert!(o.time > Duration::from_millis(20) && o.time < Duration::from_millis(60));
    }

    #[test]
    fn runs_are_reproducible_by_seed() {
        let setup = Setup::default();
        assert_eq!(setup.run(42), setup.run(42));
    }

    #[test]
    fn jitter_beats_no_jitter_on_calls() {
        let none = Setup {
            strategy: Strategy::Backoff(Jitter::None),
            ..Setup::default()
        }
        .mean(10, 0);
        let full = Setup::default().mean(10, 0);
        assert!(full.calls < none.calls, "full {full:?}, none {none:?}");
    }
}
