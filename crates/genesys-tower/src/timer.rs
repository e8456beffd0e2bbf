//! The attempt timeout's timers, registered once and kept by each thread for the next attempt.
//!
//! A tokio `Sleep` takes the runtime's one timer lock when it is first polled (it goes into the
//! timer wheel) and again when it is dropped (it comes out). An attempt that is answered in time
//! does both, and on a runtime whose threads all send, that lock's cache line goes from core to
//! core on every attempt.
//!
//! An attempt takes a timer only when it is first polled and not answered: one answered at its
//! first poll (a service in memory, an answer already there) needs none.
//!
//! A timer is not dropped when its attempt ends: it goes back, still in the wheel, to a short
//! list the thread keeps. The next attempt on that thread takes it as it is, still set for an
//! earlier attempt's deadline: no lock. When it fires at that earlier deadline, the attempt sets
//! it for its own (under the lock, about once per timeout) and waits on. A kept timer set for a
//! later deadline than the attempt's, or one that fired while it was kept, is set for the
//! attempt's deadline when it is taken, under the lock.
//!
//! What a kept timer must not do, and why it does not:
//!
//! - **Wake the task that used it last**, or keep that task's memory until it fires: before
//!   it is kept, it is polled once, outside the task's cooperative budget, with a waker that
//!   wakes no one, which replaces the task's.
//! - **Serve a runtime it does not belong to**: the list is for one runtime, the one that made
//!   its timers. An attempt under another runtime empties it (dropping its timers) and starts
//!   it again for its own. A timer that has fired when its attempt ends (its deadline passed,
//!   or its runtime shut down, which fires them all) is dropped, not kept; so is any while the
//!   thread unwinds from a panic.
//! - **Keep memory for ever**: a thread keeps at most [`KEEP`] timers. A kept timer that fires
//!   (no attempt took it for a timeout's length) leaves the wheel but stays in the list. The
//!   list goes when its thread ends, or when the thread next takes a timer under another
//!   runtime; until then, the timers of a runtime dropped since hold that runtime's handle.
//!
//! A kept timer still counts as a pending timer for a paused clock's automatic advance: a
//! runtime with nothing to do may advance to a kept timer's deadline, where nothing happens,
//! before the next real one.

use std::cell::RefCell;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, Waker, ready};

use tokio::runtime::{Handle, Id};
use tokio::time::{Instant, Sleep};

/// How many timers a thread keeps: enough for the attempts one thread has in flight at once.
const KEEP: usize = 64;

/// The timers a thread keeps, for the runtime that made them.
struct Kept {
    runtime: Option<Id>,
    timers: Vec<Pin<Box<Sleep>>>,
}

thread_local! {
    static KEPT: RefCell<Kept> = const {
        RefCell::new(Kept {
            runtime: None,
            timers: Vec::new(),
        })
    };
}

/// An attempt's timer: fires at its deadline, and goes back to its thread's list when dropped.
///
/// It takes a tokio timer only when first polled: an attempt answered at its first poll (a
/// service in memory, an answer already there) needs none. The timer is the runtime's the
/// attempt was made under, wherever it is polled, as a tokio timer made then would be.
pub(crate) struct Timer {
    /// When the attempt's time is up. A kept timer may be set earlier than that (an earlier
    /// attempt's deadline): it is set again only if it fires before this.
    deadline: Instant,
    /// The runtime the attempt was made under (`None`: made outside any; then the one it is
    /// first polled under).
    runtime: Option<Handle>,
    /// The tokio timer, from the first poll on, and its runtime's id.
    sleep: Option<(Pin<Box<Sleep>>, Id)>,
}

impl Timer {
    /// A timer that fires at `deadline`.
    pub(crate) fn until(deadline: Instant) -> Timer {
        Timer {
            deadline,
            runtime: Handle::try_current().ok(),
            sleep: None,
        }
    }

    /// Ready once the deadline is past. The first poll takes a timer the thread kept for the
    /// runtime when there is one, else a new one. Made and first polled outside any runtime,
    /// it panics, as a tokio timer made there does.
    pub(crate) fn poll_elapsed(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let deadline = self.deadline;
        let runtime = &mut self.runtime;
        let (sleep, _) = self.sleep.get_or_insert_with(|| {
            let handle = runtime.get_or_insert_with(Handle::current);
            let id = handle.id();
            let sleep = match take(id) {
                // Set for an earlier deadline than this one, and still in the wheel: left as
                // it is (no lock), until it fires.
                Some(sleep) if sleep.deadline() <= deadline && !sleep.is_elapsed() => sleep,
                // Fired while it was kept, or set for a later deadline: set for this one.
                Some(mut sleep) => {
                    sleep.as_mut().reset(deadline);
                    sleep
                }
                None => {
                    let _runtime = handle.enter();
                    Box::pin(tokio::time::sleep_until(deadline))
                }
            };
            (sleep, id)
        });
        loop {
            ready!(sleep.as_mut().poll(cx));
            if sleep.deadline() >= deadline {
                return Poll::Ready(());
            }
            // A kept timer, at the earlier deadline it had: set for this one now.
            sleep.as_mut().reset(deadline);
        }
    }
}

/// One of the timers the thread keeps for `runtime`, if there is one.
fn take(runtime: Id) -> Option<Pin<Box<Sleep>>> {
    KEPT.try_with(|kept| {
        let mut kept = kept.try_borrow_mut().ok()?;
        if kept.runtime == Some(runtime) {
            return kept.timers.pop();
        }
        // Another runtime's timers: not this one's to use. Dropped outside the borrow.
        let other = std::mem::take(&mut kept.timers);
        kept.runtime = Some(runtime);
        drop(kept);
        drop(other);
        None
    })
    .ok()
    .flatten()
}

impl Drop for Timer {
    fn drop(&mut self) {
        let Some((mut sleep, runtime)) = self.sleep.take() else {
            return;
        };
        // A timer that fired (its runtime's shutdown fires them all) has no waker left and
        // must not be polled again; nor is anything kept while the thread unwinds.
        if sleep.is_elapsed() || std::thread::panicking() {
            return;
        }
        let _ = KEPT.try_with(|kept| {
            let Ok(mut kept) = kept.try_borrow_mut() else {
                return;
            };
            if kept.runtime == Some(runtime) && kept.timers.len() < KEEP {
                // The waker of the task that polled it last, replaced by one that wakes no
                // one; outside the task's budget, which could otherwise leave the old one.
                let noop = &mut Context::from_waker(Waker::noop());
                let _ = std::pin::pin!(tokio::task::unconstrained(sleep.as_mut())).poll(noop);
                kept.timers.push(sleep);
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::task::Wake;
    use std::time::Duration;

    use super::*;

    /// A waker that counts its wakes.
    #[derive(Default)]
    struct Count(AtomicUsize);

    impl Wake for Count {
        fn wake(self: Arc<Self>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    fn kept() -> (Option<Id>, usize) {
        KEPT.with(|kept| {
            let kept = kept.borrow();
            (kept.runtime, kept.timers.len())
        })
    }

    /// Polls `timer` once with a waker of `count`.
    fn poll(timer: &mut Timer, count: &Arc<Count>) -> Poll<()> {
        let waker = Waker::from(count.clone());
        timer.poll_elapsed(&mut Context::from_waker(&waker))
    }

    /// A timer for `deadline`, polled once (so that it has a tokio timer).
    fn polled(deadline: Instant) -> Timer {
        let mut timer = Timer::until(deadline);
        assert!(poll(&mut timer, &Arc::new(Count::default())).is_pending());
        timer
    }

    const SECOND: Duration = Duration::from_secs(1);

    #[tokio::test(start_paused = true)]
    async fn a_timer_never_polled_takes_none_and_keeps_none() {
        drop(polled(Instant::now() + SECOND));
        assert_eq!(kept().1, 1);
        let unpolled = Timer::until(Instant::now() + SECOND);
        assert_eq!(kept().1, 1, "a timer never polled took one");
        drop(unpolled);
        assert_eq!(kept().1, 1, "a timer never polled kept one");
    }

    #[test]
    fn a_timer_dropped_after_its_runtime_shut_down_is_not_kept() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .unwrap();
        let timer = runtime.block_on(async { polled(Instant::now() + SECOND) });
        drop(runtime);
        // tokio panics when a timer of a runtime that shut down is polled: not kept, not
        // polled.
        drop(timer);
        assert_eq!(kept().1, 0);
    }

    #[test]
    fn a_timer_made_under_a_runtime_fires_there_wherever_it_is_polled() {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_time()
            .build()
            .unwrap();
        let mut timer = runtime.block_on(async { Timer::until(Instant::now() + SECOND / 50) });
        // Polled on a thread of no runtime, woken by the runtime's timer.
        struct Unpark(std::thread::Thread);
        impl Wake for Unpark {
            fn wake(self: Arc<Self>) {
                self.0.unpark();
            }
        }
        let waker = Waker::from(Arc::new(Unpark(std::thread::current())));
        let give_up = std::time::Instant::now() + 10 * SECOND;
        while timer
            .poll_elapsed(&mut Context::from_waker(&waker))
            .is_pending()
        {
            assert!(std::time::Instant::now() < give_up, "the timer never fired");
            std::thread::park_timeout(SECOND);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_timer_fires_at_the_new_deadline_and_never_wakes_its_last_task() {
        let start = Instant::now();
        let (first, second) = (Arc::new(Count::default()), Arc::new(Count::default()));
        let mut timer = Timer::until(start + 10 * SECOND);
        assert!(poll(&mut timer, &first).is_pending());
        drop(timer);
        assert_eq!(kept().1, 1, "an unfired timer is kept");

        // Taken by the next attempt, for a later deadline: it is the one kept.
        let mut timer = Timer::until(start + 20 * SECOND);
        assert!(poll(&mut timer, &second).is_pending());
        assert_eq!(kept().1, 0);
        // Past the first deadline: the timer fired there, woke the second task (not the
        // first), and is set again for the second deadline.
        tokio::time::sleep(15 * SECOND).await;
        assert_eq!(second.0.load(Ordering::SeqCst), 1);
        assert!(
            poll(&mut timer, &second).is_pending(),
            "fired before its deadline"
        );
        tokio::time::sleep_until(start + 20 * SECOND).await;
        assert!(poll(&mut timer, &second).is_ready());
        assert_eq!(
            first.0.load(Ordering::SeqCst),
            0,
            "the first task was woken"
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_timer_wakes_no_one() {
        let count = Arc::new(Count::default());
        let mut timer = Timer::until(Instant::now() + SECOND);
        assert!(poll(&mut timer, &count).is_pending());
        drop(timer);
        assert_eq!(kept().1, 1);
        tokio::time::sleep(2 * SECOND).await;
        assert_eq!(count.0.load(Ordering::SeqCst), 0, "the last task was woken");
    }

    #[tokio::test(start_paused = true)]
    async fn a_kept_timer_that_fired_or_was_set_later_is_set_again() {
        let start = Instant::now();
        let count = Arc::new(Count::default());
        // Kept, then fired while no one used it.
        drop(polled(start + SECOND));
        tokio::time::sleep(2 * SECOND).await;
        let mut timer = Timer::until(Instant::now() + 5 * SECOND);
        assert!(
            poll(&mut timer, &count).is_pending(),
            "a fired timer was taken as fired"
        );
        tokio::time::sleep(4 * SECOND).await;
        assert!(poll(&mut timer, &count).is_pending());
        tokio::time::sleep(SECOND).await;
        assert!(poll(&mut timer, &count).is_ready());
        drop(timer);
        // Kept at a later deadline than the next attempt's: set earlier for it.
        drop(polled(Instant::now() + 60 * SECOND));
        let mut timer = Timer::until(Instant::now() + SECOND);
        assert!(poll(&mut timer, &count).is_pending());
        tokio::time::sleep(SECOND).await;
        assert!(poll(&mut timer, &count).is_ready());
    }

    #[tokio::test(start_paused = true)]
    async fn a_thread_keeps_a_bounded_number() {
        let deadline = Instant::now() + SECOND;
        let timers: Vec<_> = (0..3 * KEEP).map(|_| polled(deadline)).collect();
        drop(timers);
        assert_eq!(kept().1, KEEP);
    }

    #[test]
    fn another_runtime_never_takes_them() {
        let runtime = || {
            tokio::runtime::Builder::new_current_thread()
                .enable_time()
                .start_paused(true)
                .build()
                .unwrap()
        };
        let (a, b) = (runtime(), runtime());
        let a_id = a.block_on(async {
            drop(polled(Instant::now() + SECOND));
            Handle::current().id()
        });
        assert_eq!(kept(), (Some(a_id), 1));
        // Under another runtime, still running: the thread's list is emptied and made that
        // runtime's, and its timer fires on its own clock.
        b.block_on(async {
            let count = Arc::new(Count::default());
            let mut timer = Timer::until(Instant::now() + 2 * SECOND);
            assert!(poll(&mut timer, &count).is_pending());
            assert_eq!(kept(), (Some(Handle::current().id()), 0));
            tokio::time::sleep(2 * SECOND).await;
            assert!(poll(&mut timer, &count).is_ready());
        });
        // Back under the first, then after it shut down: no timer of a runtime that is gone.
        a.block_on(async { drop(polled(Instant::now() + SECOND)) });
        assert_eq!(kept(), (Some(a_id), 1));
        drop(a);
        b.block_on(async {
            let count = Arc::new(Count::default());
            let mut timer = Timer::until(Instant::now() + SECOND);
            assert!(poll(&mut timer, &count).is_pending());
            tokio::time::sleep(SECOND).await;
            assert!(poll(&mut timer, &count).is_ready());
        });
    }
}
