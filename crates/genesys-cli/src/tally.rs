//! What happened to every record of a job: counts, the failures and quarantined records the
//! report lists, and the latency histogram.

use std::time::Duration;

use serde::Serialize;

/// Why an item ended in the failed file.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Failure {
    /// Line of the item in the input.
    pub(crate) line: u64,
    /// The entity (a user id), when the item names one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) id: Option<String>,
    /// What went wrong.
    pub(crate) reason: String,
    /// Not started (counted in `not_started`, listed for a reason of its own), not failed.
    #[serde(skip)]
    pub(crate) not_started: bool,
}

/// A quarantined record as the report lists it (the raw text is in the quarantine file).
#[derive(Debug, Clone, Serialize)]
pub(crate) struct QuarantineEntry {
    pub(crate) line: u64,
    pub(crate) reason: String,
}

/// Latencies in a log-scale histogram: flat memory, percentiles within about 10 %.
#[derive(Debug, Clone)]
pub(crate) struct Latencies {
    buckets: Vec<u64>,
    count: u64,
    max: Duration,
    total: Duration,
}

impl Default for Latencies {
    fn default() -> Self {
        Latencies {
            buckets: vec![0; 8 * 40],
            count: 0,
            max: Duration::ZERO,
            total: Duration::ZERO,
        }
    }
}

impl Latencies {
    fn bucket(us: u64) -> usize {
        // 8 buckets per doubling of the latency in microseconds.
        let us = us.max(1) as f64;
        ((us.log2() * 8.0) as usize).min(8 * 40 - 1)
    }

    pub(crate) fn record(&mut self, d: Duration) {
        self.buckets[Self::bucket(d.as_micros() as u64)] += 1;
        self.count += 1;
        self.total += d;
        self.max = self.max.max(d);
    }

    /// The `q` quantile (0..=1), as the upper bound of its bucket, capped at the maximum seen.
    pub(crate) fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((self.count as f64) * q).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, n) in self.buckets.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let upper_us = 2f64.powf((i + 1) as f64 / 8.0);
                return Duration::from_micros(upper_us as u64).min(self.max);
            }
        }
        self.max
    }

    /// Adds `other`'s latencies.
    pub(crate) fn absorb(&mut self, other: &Latencies) {
        for (mine, theirs) in self.buckets.iter_mut().zip(&other.buckets) {
            *mine += theirs;
        }
        self.count += other.count;
        self.total += other.total;
        self.max = self.max.max(other.max);
    }

    pub(crate) fn mean(&self) -> Duration {
        if self.count == 0 {
            Duration::ZERO
        } else {
            // Divided as nanoseconds: a count past `u32::MAX` would be cut (to 0 at 2^32).
            let nanos = self.total.as_nanos() / u128::from(self.count);
            Duration::from_nanos(u64::try_from(nanos).unwrap_or(u64::MAX))
        }
    }

    pub(crate) fn max(&self) -> Duration {
        self.max
    }
}

/// How many failures, and how many quarantined records, the report lists with their reasons.
/// Past it they are counted only, so that memory stays flat however much of the input goes
/// wrong; every one of them is still in the failed file and the quarantine file (with its
/// line and reason).
pub(crate) const LISTED_MAX: usize = 10_000;

/// What happened to every record.
#[derive(Debug, Default)]
pub(crate) struct Tally {
    pub(crate) delivered: u64,
    pub(crate) failed: u64,
    pub(crate) quarantined: u64,
    pub(crate) not_started: u64,
    /// Records left to the other workers of a sharded job (`--shard`).
    pub(crate) other_shards: u64,
    /// Records whose outcome is unknown (they may have been applied).
    pub(crate) unknown: u64,
    /// Of `delivered`, the records an earlier run delivered (from the journal).
    pub(crate) delivered_earlier: u64,
    pub(crate) requests: u64,
    pub(crate) interrupted: bool,
    /// Records of units stopped in flight and recorded as outcome unknown (not those listed as
    /// not sent: their request had not left).
    pub(crate) aborted_in_flight: u64,
    pub(crate) broken_input: Option<String>,
    pub(crate) output_error: Option<String>,
    /// The journal could not be written.
    pub(crate) journal_error: Option<String>,
    /// A fleet shard's lease lapsed during the pass: the rest of the shard was left to the
    /// worker that took it over.
    pub(crate) fenced: bool,
    /// A fleet job's coordination failed (Redis unreachable past a lease): the worker left
    /// the rest to the fleet.
    pub(crate) fleet_error: Option<String>,
    /// The login host refused the credentials, or the proxy the tunnel: the job stopped (exit
    /// 2).
    pub(crate) credentials_refused: Option<String>,
    /// It was the proxy that refused (`credentials_refused` says how).
    pub(crate) proxy_refused: bool,
    /// Turned away for too long (no token to be had, or the API asking to wait): the job
    /// stopped (exit 1; the same command resumes).
    pub(crate) unavailable: Option<String>,
    /// Failed records, and records not started for a reason of their own (the journal could
    /// not record their start), with the reason, up to [`LISTED_MAX`].
    pub(crate) failures: Vec<Failure>,
    /// Records whose outcome is unknown, with the reason, up to [`LISTED_MAX`].
    pub(crate) unknowns: Vec<Failure>,
    pub(crate) quarantine: Vec<QuarantineEntry>,
    pub(crate) latencies: Latencies,
    pub(crate) elapsed: Duration,
}

impl Tally {
    /// Failed records past the listing cap: counted, not listed in `failures`.
    pub(crate) fn failures_not_listed(&self) -> u64 {
        let listed_failed = self.failures.iter().filter(|f| !f.not_started).count();
        self.failed.saturating_sub(listed_failed as u64)
    }

    /// Records read from the input (valid or not).
    pub(crate) fn records(&self) -> u64 {
        self.delivered
            + self.failed
            + self.unknown
            + self.quarantined
            + self.not_started
            + self.other_shards
    }

    /// True when every record was delivered.
    pub(crate) fn complete(&self) -> bool {
        self.failed == 0
            && self.unknown == 0
            && self.quarantined == 0
            && self.not_started == 0
            && self.broken_input.is_none()
            && self.output_error.is_none()
            && self.journal_error.is_none()
            && self.stopped_by().is_none()
            && self.fleet_error.is_none()
    }

    /// Why the login host stopped the job, when it did: the credentials refused, or no token
    /// to be had for too long.
    pub(crate) fn stopped_by(&self) -> Option<&str> {
        self.credentials_refused
            .as_deref()
            .or(self.unavailable.as_deref())
    }

    /// True when every record of the pass was settled: delivered, failed, unknown or
    /// quarantined, with nothing left to do by another run.
    pub(crate) fn settled(&self) -> bool {
        self.not_started == 0
            && !self.interrupted
            && !self.fenced
            && self.broken_input.is_none()
            && self.output_error.is_none()
            && self.journal_error.is_none()
            && self.stopped_by().is_none()
    }

    /// One tally of several passes over the same input, each over one shard (a fleet worker's
    /// own and those it took over, a shard possibly twice): a record counts once, as the last
    /// pass over its shard says, and records no pass handled count as the other workers';
    /// requests and latencies add up over every pass.
    pub(crate) fn merge(passes: Vec<(u32, Tally)>) -> Tally {
        let mut out = Tally::default();
        let mut records = 0;
        let mut handled = 0u64;
        let last: std::collections::HashMap<u32, usize> = passes
            .iter()
            .enumerate()
            .map(|(i, (shard, _))| (*shard, i))
            .collect();
        for (i, (shard, t)) in passes.into_iter().enumerate() {
            out.requests += t.requests;
            out.aborted_in_flight += t.aborted_in_flight;
            out.latencies.absorb(&t.latencies);
            out.elapsed += t.elapsed;
            out.interrupted |= t.interrupted;
            if last.get(&shard) != Some(&i) {
                continue;
            }
            records = records.max(t.records());
            handled += t.records() - t.other_shards;
            out.delivered += t.delivered;
            out.failed += t.failed;
            out.quarantined += t.quarantined;
            out.not_started += t.not_started;
            out.unknown += t.unknown;
            out.delivered_earlier += t.delivered_earlier;
            out.fenced |= t.fenced;
            out.broken_input = out.broken_input.or(t.broken_input);
            out.output_error = out.output_error.or(t.output_error);
            out.journal_error = out.journal_error.or(t.journal_error);
            if out.credentials_refused.is_none() {
                out.proxy_refused = t.proxy_refused;
            }
            out.credentials_refused = out.credentials_refused.or(t.credentials_refused);
            out.unavailable = out.unavailable.or(t.unavailable);
            out.fleet_error = out.fleet_error.or(t.fleet_error);
            for (list, more) in [
                (&mut out.failures, t.failures),
                (&mut out.unknowns, t.unknowns),
            ] {
                let room = LISTED_MAX.saturating_sub(list.len());
                list.extend(more.into_iter().take(room));
            }
            let room = LISTED_MAX.saturating_sub(out.quarantine.len());
            out.quarantine.extend(t.quarantine.into_iter().take(room));
        }
        out.other_shards = records.saturating_sub(handled);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The mean of more latencies than a `u32` counts: not cut, and no division by zero.
    #[test]
    fn the_mean_of_any_count_is_the_mean() {
        for (count, total, mean) in [
            (
                1u64 << 32,
                Duration::from_secs(1 << 32),
                Duration::from_secs(1),
            ),
            (
                (1 << 32) + 2,
                Duration::from_secs((1 << 32) + 2),
                Duration::from_secs(1),
            ),
            (3, Duration::from_nanos(10), Duration::from_nanos(3)),
        ] {
            let latencies = Latencies {
                count,
                total,
                ..Latencies::default()
            };
            assert_eq!(latencies.mean(), mean, "{count}");
        }
    }

    #[test]
    fn passes_merge_into_one_count_per_record() {
        // 10 records, 2 shards: this worker's own pass (5 delivered) and a takeover (4
        // delivered, 1 failed), each reading the whole input.
        let own = Tally {
            delivered: 5,
            other_shards: 5,
            ..Tally::default()
        };
        let mut taken = Tally {
            delivered: 4,
            failed: 1,
            other_shards: 5,
            ..Tally::default()
        };
        taken.latencies.record(Duration::from_millis(3));
        // The own shard's first pass was cut short (its lease lapsed) and taken again.
        let cut = Tally {
            delivered: 2,
            other_shards: 8,
            requests: 2,
            ..Tally::default()
        };
        let merged = Tally::merge(vec![(0, cut), (0, own), (1, taken)]);
        assert_eq!(merged.records(), 10);
        assert_eq!(
            (merged.delivered, merged.failed, merged.other_shards),
            (9, 1, 0)
        );
        assert_eq!(merged.latencies.max(), Duration::from_millis(3));
        assert_eq!(merged.requests, 2);
        assert_eq!(Tally::merge(Vec::new()).records(), 0);
    }

    #[test]
    fn merged_passes_count_the_failed_records_they_do_not_list() {
        let entry = |line, not_started| Failure {
            line,
            id: None,
            reason: "why".into(),
            not_started,
        };
        // Shard 0 filled the listing with records not started; shard 1 failed 5, listed.
        let own = Tally {
            not_started: LISTED_MAX as u64,
            failures: (0..LISTED_MAX as u64).map(|l| entry(l, true)).collect(),
            ..Tally::default()
        };
        let taken = Tally {
            failed: 5,
            failures: (0..5).map(|l| entry(l, false)).collect(),
            ..Tally::default()
        };
        let merged = Tally::merge(vec![(0, own), (1, taken)]);
        assert_eq!(merged.failures.len(), LISTED_MAX);
        assert_eq!(merged.failures_not_listed(), 5);
    }

    #[test]
    fn latency_quantiles_are_close() {
        let mut l = Latencies::default();
        for ms in 1..=100u64 {
            l.record(Duration::from_millis(ms));
        }
        let p50 = l.quantile(0.5).as_secs_f64() * 1000.0;
        assert!((45.0..=56.0).contains(&p50), "{p50}");
        assert_eq!(l.quantile(1.0), Duration::from_millis(100));
    }
}
