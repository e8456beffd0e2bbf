//! Instant arithmetic that never panics.

use std::time::Duration;

use tokio::time::Instant;

/// How far ahead "never" is: about thirty years, as tokio's own timers do.
pub(crate) const FAR_FUTURE: Duration = Duration::from_secs(86_400 * 365 * 30);

/// `at + d`, or about thirty years after `at` when `d` is longer than that (or the sum would
/// overflow the clock).
pub(crate) fn after(at: Instant, d: Duration) -> Instant {
    at.checked_add(d.min(FAR_FUTURE))
        .or_else(|| at.checked_add(FAR_FUTURE))
        .unwrap_or(at)
}

/// `Instant::now() + d`, saturating as [`after`] does.
pub(crate) fn from_now(d: Duration) -> Instant {
    after(Instant::now(), d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn never_overflows() {
        let now = Instant::now();
        assert!(after(now, Duration::MAX) > now);
        assert_eq!(
            after(now, Duration::from_secs(5)),
            now + Duration::from_secs(5)
        );
        assert!(from_now(Duration::MAX) > now);
    }
}
