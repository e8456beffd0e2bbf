//! Instant arithmetic that never panics, and a clock read lent to the layers below a call.

#[cfg(any(feature = "retry", feature = "concurrency", feature = "auth"))]
use std::cell::Cell;
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

#[cfg(any(feature = "retry", feature = "concurrency", feature = "auth"))]
thread_local! {
    /// The clock read lent by [`lend`] on this thread, while it runs.
    static LENT: Cell<Option<Instant>> = const { Cell::new(None) };
}

/// Runs `f` with `now`, a clock read just made, standing for the clock in the next [`now`] on
/// this thread: a layer that read the clock as a call began lends that read to the layer it
/// calls synchronously, which would otherwise read the clock again within the same
/// microseconds. The read serves once (a second reader, such as a pacer that waits and looks
/// again, reads the clock), and is taken back when `f` returns or unwinds; lends nest.
#[cfg(feature = "retry")]
pub(crate) fn lend<R>(now: Instant, f: impl FnOnce() -> R) -> R {
    struct TakeBack(Option<Instant>);
    impl Drop for TakeBack {
        fn drop(&mut self) {
            LENT.set(self.0);
        }
    }
    let _take_back = TakeBack(LENT.replace(Some(now)));
    f()
}

/// The clock read lent by a `lend` running on this thread, used up, or a new one.
#[cfg(any(feature = "concurrency", feature = "auth"))]
pub(crate) fn now() -> Instant {
    LENT.take().unwrap_or_else(Instant::now)
}

/// Whether a read is lent on this thread now (for tests of the layers that lend).
#[cfg(all(test, feature = "retry"))]
pub(crate) fn is_lent() -> bool {
    LENT.get().is_some()
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

    #[cfg(all(
        feature = "concurrency",
        feature = "retry",
        feature = "auth",
        feature = "idempotency"
    ))]
    #[test]
    fn a_lent_read_stands_for_the_clock_once_while_it_is_lent() {
        // Reads later than any real one, so that a real read is told from a lent one.
        let lent = Instant::now() + Duration::from_secs(60);
        let inner = lent + Duration::from_secs(60);
        lend(lent, || {
            assert_eq!(now(), lent);
            assert!(now() < lent, "a lent read serves once");
            lend(inner, || assert_eq!(now(), inner));
            // Another thread has its own clock.
            let elsewhere = std::thread::spawn(now).join().expect("no panic");
            assert!(elsewhere < lent);
        });
        lend(lent, || {
            lend(inner, || {});
            assert_eq!(now(), lent, "a nested lend gives the outer read back");
        });
        lend(lent, || {});
        assert!(now() < lent, "the read is taken back when the lend returns");
        let unwound = std::panic::catch_unwind(|| lend(lent, || panic!("a layer panics")));
        assert!(unwound.is_err());
        assert!(now() < lent, "the read is taken back when the lend unwinds");
    }
}
