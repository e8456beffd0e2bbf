//! The in-flight limit: a semaphore of permits taken one at a time, fair to waiters, whose free
//! permit is taken and given back with one atomic operation each while no one waits.
//!
//! tokio's `Semaphore` locks its list of waiters on every release, waiter or not: on two cores,
//! every call then moves the lock's cache line as well as the count's. Here the count carries a
//! flag that says someone waits; the list is locked only when the flag is set (a release hands
//! its permit to the first waiter), to join the list, or to leave it.
//!
//! The rule that keeps it correct: the flag is set and cleared only under the list's lock,
//! together with a change of the list, so under the lock the flag is set exactly when the list
//! holds a waiter. A release that does not see the flag adds its permit with a compare and
//! swap of the whole word, which fails if the flag was set in the meantime; a caller that finds
//! no permit sets the flag with a compare and swap that fails if a permit came back in the
//! meantime. So no permit is left free while someone waits, and no waiter is passed over: while
//! anyone waits, permits go to the waiters in turn, and new callers join the end of the list.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Waker};

/// Set in [`Limit::state`] while someone waits for a permit.
const WAITING: usize = 1;
/// One free permit in [`Limit::state`].
const ONE: usize = 2;

/// A semaphore of `permits` permits, taken one at a time. A permit is given back with
/// [`release`](Self::release); nothing gives it back on its own.
pub(crate) struct Limit {
    /// The free permits times [`ONE`], with [`WAITING`].
    state: AtomicUsize,
    /// Those waiting for a permit, first come first served.
    waiters: Mutex<VecDeque<Arc<Waiter>>>,
}

/// One caller waiting for a permit.
struct Waiter(Mutex<Wait>);

struct Wait {
    /// A release gave this waiter its permit.
    granted: bool,
    waker: Option<Waker>,
}

impl Waiter {
    fn lock(&self) -> MutexGuard<'_, Wait> {
        // Two plain fields, consistent between statements.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Limit {
    /// The most permits a limit can have.
    pub(crate) const MAX_PERMITS: usize = usize::MAX >> 3;

    /// A limit with `permits` permits (at most [`MAX_PERMITS`](Self::MAX_PERMITS), which it is
    /// cut to).
    pub(crate) fn new(permits: usize) -> Self {
        Limit {
            state: AtomicUsize::new(permits.min(Self::MAX_PERMITS) * ONE),
            waiters: Mutex::new(VecDeque::new()),
        }
    }

    /// The permits free now.
    pub(crate) fn available_permits(&self) -> usize {
        self.state.load(Ordering::Acquire) / ONE
    }

    /// Takes a free permit if there is one and no one waits for it.
    #[inline]
    pub(crate) fn try_acquire(&self) -> bool {
        let mut state = self.state.load(Ordering::Relaxed);
        while state & WAITING == 0 && state >= ONE {
            match self.state.compare_exchange_weak(
                state,
                state - ONE,
                Ordering::Acquire,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(now) => state = now,
            }
        }
        false
    }

    /// Waits for a permit, in turn with every other waiter.
    pub(crate) fn acquire(self: Arc<Self>) -> Acquire {
        Acquire {
            limit: self,
            waiter: None,
        }
    }

    /// Gives a permit back: to the first waiter, or to the free permits.
    #[inline]
    pub(crate) fn release(&self) {
        let mut state = self.state.load(Ordering::Relaxed);
        while state & WAITING == 0 {
            match self.state.compare_exchange_weak(
                state,
                state + ONE,
                Ordering::Release,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => state = now,
            }
        }
        self.release_to_waiter();
    }

    #[cold]
    fn release_to_waiter(&self) {
        let mut waiters = self.lock();
        let Some(waiter) = waiters.pop_front() else {
            // The last waiter left the list since the flag was seen (and cleared it): the
            // permit goes back to the free ones.
            self.clear_waiting(ONE);
            return;
        };
        let woken = {
            let mut wait = waiter.lock();
            wait.granted = true;
            wait.waker.take()
        };
        if waiters.is_empty() {
            self.clear_waiting(0);
        }
        drop(waiters);
        if let Some(waker) = woken {
            waker.wake();
        }
    }

    /// Clears the flag (the list is empty, under its lock) and adds `add` to the state.
    fn clear_waiting(&self, add: usize) {
        let mut state = self.state.load(Ordering::Relaxed);
        loop {
            match self.state.compare_exchange_weak(
                state,
                (state & !WAITING) + add,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => return,
                Err(now) => state = now,
            }
        }
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Arc<Waiter>>> {
        // The list is consistent between statements, so a panic elsewhere cannot corrupt it.
        self.waiters.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.state.load(Ordering::Relaxed);
        f.debug_struct("Limit")
            .field("available_permits", &(state / ONE))
            .field("waiting", &(state & WAITING != 0))
            .finish()
    }
}

/// Waits for a permit of a [`Limit`]: made by [`Limit::acquire`]. Dropped while it waits, it
/// leaves the list; dropped after a permit was given to it, it gives the permit back. Done once
/// it is ready: polled again, it waits for another permit.
pub(crate) struct Acquire {
    limit: Arc<Limit>,
    /// In the list of waiters (`None`: not yet, or done).
    waiter: Option<Arc<Waiter>>,
}

impl Future for Acquire {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        let this = &mut *self;
        if let Some(waiter) = &this.waiter {
            let mut wait = waiter.lock();
            if wait.granted {
                drop(wait);
                this.waiter = None;
                return Poll::Ready(());
            }
            if !wait.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                wait.waker = Some(cx.waker().clone());
            }
            return Poll::Pending;
        }
        if this.limit.try_acquire() {
            return Poll::Ready(());
        }
        // Made before the lock: nothing of the caller's runs while the list is locked.
        let waiter = Arc::new(Waiter(Mutex::new(Wait {
            granted: false,
            waker: Some(cx.waker().clone()),
        })));
        let mut waiters = this.limit.lock();
        let mut state = this.limit.state.load(Ordering::Relaxed);
        loop {
            // With no one in the list, a permit freed since is this caller's.
            if state & WAITING == 0 && state >= ONE {
                match this.limit.state.compare_exchange_weak(
                    state,
                    state - ONE,
                    Ordering::Acquire,
                    Ordering::Relaxed,
                ) {
                    Ok(_) => return Poll::Ready(()),
                    Err(now) => state = now,
                }
                continue;
            }
            match this.limit.state.compare_exchange_weak(
                state,
                state | WAITING,
                Ordering::AcqRel,
                Ordering::Relaxed,
            ) {
                Ok(_) => break,
                Err(now) => state = now,
            }
        }
        waiters.push_back(waiter.clone());
        this.waiter = Some(waiter);
        Poll::Pending
    }
}

impl Drop for Acquire {
    fn drop(&mut self) {
        let Some(waiter) = self.waiter.take() else {
            return;
        };
        let mut waiters = self.limit.lock();
        if waiter.lock().granted {
            // Given a permit it will not use: the next waiter's, or a free one.
            drop(waiters);
            self.limit.release();
            return;
        }
        // A walk of the list: cheap for the few waiters a limit has, though many leaving at
        // once (a burst of timeouts) walk it once each.
        waiters.retain(|w| !Arc::ptr_eq(w, &waiter));
        if waiters.is_empty() {
            self.limit.clear_waiting(0);
        }
    }
}

impl fmt::Debug for Acquire {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Acquire")
            .field("waiting", &self.waiter.is_some())
            .finish()
    }
}

#[cfg(test)]
mod tests;
