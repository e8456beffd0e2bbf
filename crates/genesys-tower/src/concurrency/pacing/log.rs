//! The pacer's log of starts, in memory bounded whatever the rate.

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

/// Past this many starts in the log, a start less than a [`GROUPS`]th of the window after the
/// first start of the newest group joins it, and the group is logged at its latest start: its
/// earlier starts then stay in the log less than a [`GROUPS`]th of the window longer than
/// their own window, never shorter. So a rate of millions per
/// window (a ceiling meant to be out of reach) keeps at most about twice this many groups,
/// where one entry per start would keep millions; a rate below it is logged start by start.
pub(super) const GROUPS: u32 = 65_536;

/// Start times inside the current window, oldest first, as groups of starts logged at one
/// instant (the group's latest start).
#[derive(Debug)]
pub(super) struct Log {
    groups: VecDeque<Group>,
    /// The starts in `groups`.
    len: u64,
    /// [`GROUPS`], but in tests.
    most: u32,
}

#[derive(Debug, Clone, Copy)]
struct Group {
    /// The instant the group's starts are logged at: its latest start.
    at: Instant,
    /// Its first start: a start joins the group only within a span of the window from it.
    first: Instant,
    count: u64,
}

impl Default for Log {
    fn default() -> Self {
        Log::with_groups(GROUPS)
    }
}

impl Log {
    /// A log that groups starts past `most` of them, each group a `most`th of the window.
    pub(super) fn with_groups(most: u32) -> Self {
        Log {
            groups: VecDeque::new(),
            len: 0,
            most: most.max(1),
        }
    }

    /// The starts in the log.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// The newest start's instant.
    pub(super) fn newest(&self) -> Option<Instant> {
        self.groups.back().map(|group| group.at)
    }

    /// Forgets the starts at or before `cutoff`.
    pub(super) fn expire(&mut self, cutoff: Instant) {
        while let Some(group) = self.groups.front()
            && group.at <= cutoff
        {
            self.len -= group.count;
            self.groups.pop_front();
        }
    }

    /// The instant of the `n`th newest start (1: the newest), or `None` when the log holds
    /// fewer.
    pub(super) fn nth_newest(&self, n: u64) -> Option<Instant> {
        let mut seen = 0u64;
        for group in self.groups.iter().rev() {
            seen += group.count;
            if seen >= n {
                return Some(group.at);
            }
        }
        None
    }

    /// Records `count` starts at `at` (no earlier than the newest, for the log to stay in
    /// order), in a window of length `window`.
    pub(super) fn record(&mut self, at: Instant, count: u64, window: Duration) {
        self.len = self.len.saturating_add(count);
        if let Some(group) = self.groups.back_mut() {
            let close = group.at == at
                || (self.len > u64::from(self.most)
                    && at.saturating_duration_since(group.first) < window / self.most);
            if close {
                group.at = at.max(group.at);
                group.count = group.count.saturating_add(count);
                return;
            }
        }
        self.groups.push_back(Group {
            at,
            first: at,
            count,
        });
    }

    /// Takes back up to `count` starts recorded at `at` (any of them stands for any other), and
    /// says how many it took: none when they have left the window, or when their group has moved
    /// on to a later start (they then stay in the log for their window).
    pub(super) fn give_back(&mut self, at: Instant, count: u64) -> u64 {
        let i = self.groups.partition_point(|group| group.at < at);
        let Some(group) = self.groups.get_mut(i) else {
            return 0;
        };
        if group.at != at {
            return 0;
        }
        let taken = count.min(group.count);
        group.count -= taken;
        if group.count == 0 {
            self.groups.remove(i);
        }
        self.len -= taken;
        taken
    }

    /// The instant of every start, oldest first (for tests).
    #[cfg(test)]
    pub(super) fn instants(&self) -> Vec<Instant> {
        self.groups
            .iter()
            .flat_map(|g| std::iter::repeat_n(g.at, usize::try_from(g.count).unwrap_or(0)))
            .collect()
    }

    /// The groups kept (for tests).
    #[cfg(test)]
    pub(super) fn groups(&self) -> usize {
        self.groups.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    proptest::proptest! {
        #![proptest_config(proptest::test_runner::Config::with_cases(crate::fuzz_cases(500)))]

        /// A grouped log holds the same starts, each at its own instant or a little later
        /// (less than a group's span), never earlier: it counts a start in every window the
        /// start is in, and never much longer.
        #[test]
        fn groups_only_ever_move_starts_a_little_later(
            most in 1u32..16,
            window_ms in 1u64..1000,
            starts in proptest::collection::vec((0u64..5_000, 1u64..20), 1..300),
        ) {
            let window = Duration::from_millis(window_ms);
            let span = window / most;
            let mut grouped = Log::with_groups(most);
            let mut exact = Vec::new();
            let mut at = Instant::now();
            for (after_us, count) in starts {
                at += Duration::from_micros(after_us);
                grouped.record(at, count, window);
                exact.extend(std::iter::repeat_n(at, count as usize));
            }
            let logged = grouped.instants();
            proptest::prop_assert_eq!(logged.len(), exact.len());
            proptest::prop_assert_eq!(grouped.len(), exact.len() as u64);
            for (logged, real) in logged.iter().zip(&exact) {
                proptest::prop_assert!(logged >= real);
                proptest::prop_assert!(*logged - *real < span.max(Duration::from_nanos(1)));
            }
        }
    }

    /// Past its bound, the log keeps groups, not starts: a ceiling of ten million an hour, met
    /// by 500,000 starts, keeps about 81,000 groups instead of 500,000 entries.
    #[test]
    fn a_huge_rate_keeps_the_log_small() {
        let window = Duration::from_secs(3600);
        let mut log = Log::default();
        let mut at = Instant::now();
        for _ in 0..500_000 {
            at += Duration::from_millis(2);
            log.record(at, 1, window);
        }
        assert_eq!(log.len(), 500_000);
        assert!(
            log.groups() < 2 * GROUPS as usize,
            "{} groups",
            log.groups()
        );
        assert_eq!(log.nth_newest(1), Some(at));
    }
}
