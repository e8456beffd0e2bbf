//! State that every clone of a layer's service shares, with handles of a few per-thread copies
//! for the calls to hold; and the shard index that picks a thread's copy, for the counters too.
//!
//! A call's future owns a reference to its layer's shared state (`'static`: it may outlive the
//! service that made it). A reference count that every call on every core raises and lowers is
//! a cache line the cores pass back and forth, with the state's first fields on it. So each
//! thread takes its handles from one of [`SHARDS`] copies of the state, made on first use and
//! freed with it, whose fields are themselves handles to what is really shared (counters,
//! policies, caches and cells behind `Arc`s). Threads are given shards in turn, in the order
//! they first ask (every thread of the process that counts or calls, exited ones included), so
//! a few may share a copy, which is only slower. A call's future dropped on another thread than
//! the one that made it gives its handle back from there; a caller that clones the service for
//! every request writes the service's own reference count each time.

use std::cell::Cell;
use std::sync::atomic::{AtomicUsize, Ordering};

/// How many copies: the counters and the per-thread state keep this many.
pub(crate) const SHARDS: usize = 8;

/// The shard of the calling thread, below [`SHARDS`].
#[inline]
pub(crate) fn shard() -> usize {
    thread_local! {
        // Given on first use; `SHARDS` until then (a constant initializer: no lazy state to
        // check on each read).
        static INDEX: Cell<usize> = const { Cell::new(SHARDS) };
    }
    // A constant, drop-free thread local is never torn down where native thread locals
    // exist; elsewhere, a call from a thread's last destructors counts into shard 0.
    INDEX
        .try_with(|index| {
            let i = index.get();
            if i < SHARDS { i } else { assign(index) }
        })
        .unwrap_or(0)
}

#[cold]
fn assign(index: &Cell<usize>) -> usize {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let i = NEXT.fetch_add(1, Ordering::Relaxed) % SHARDS;
    index.set(i);
    i
}

#[cfg(any(feature = "retry", feature = "auth", feature = "concurrency"))]
pub(crate) use self::state::*;

/// The layers' state: compiled with a layer that keeps some.
#[cfg(any(feature = "retry", feature = "auth", feature = "concurrency"))]
mod state {
    use std::ops::Deref;
    use std::sync::{Arc, OnceLock};

    use super::{SHARDS, shard};

    /// `T`, shared by every clone of a layer's service, with a copy per shard for the calls.
    /// `T`'s clones must share whatever a call changes: each layer's `Shared` says so, and a
    /// test of the layer names each of its fields. On cache lines of its own, apart from the
    /// reference count of the `Arc` it lives in (which clones of the service write).
    #[repr(align(128))]
    pub(crate) struct PerThread<T> {
        value: T,
        copies: [OnceLock<Handle<T>>; SHARDS],
    }

    /// A handle to a copy of the state: on cache lines of its own, so that the reference
    /// counts of two threads' copies never share one.
    pub(crate) type Handle<T> = Arc<Lines<T>>;

    /// `T` aligned to a pair of cache lines (the unit some processors fetch).
    #[repr(align(128))]
    pub(crate) struct Lines<T>(T);

    impl<T: std::fmt::Debug> std::fmt::Debug for Lines<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.0.fmt(f)
        }
    }

    /// A handle to `value` alone: a thread's copy, or the state of one call's own (a retry
    /// policy switch's call: an allocation per call, as before the copies, aligned like them).
    pub(crate) fn handle_of<T>(value: T) -> Handle<T> {
        Arc::new(Lines(value))
    }

    impl<T> Deref for Lines<T> {
        type Target = T;

        fn deref(&self) -> &T {
            &self.0
        }
    }

    impl<T: Clone> PerThread<T> {
        pub(crate) fn new(value: T) -> Self {
            PerThread {
                value,
                copies: Default::default(),
            }
        }

        /// A handle to the state for a call to hold: a clone of the calling thread's copy.
        #[inline]
        pub(crate) fn handle(&self) -> Handle<T> {
            self.handle_in(shard())
        }

        /// A handle to the copy of `shard` (below [`SHARDS`]), made if it is not there yet.
        #[inline]
        pub(crate) fn handle_in(&self, shard: usize) -> Handle<T> {
            self.copies[shard % SHARDS]
                .get_or_init(|| handle_of(self.value.clone()))
                .clone()
        }
    }

    impl<T> Deref for PerThread<T> {
        type Target = T;

        fn deref(&self) -> &T {
            &self.value
        }
    }

    impl<T: std::fmt::Debug> std::fmt::Debug for PerThread<T> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            self.value.fmt(f)
        }
    }
}

#[cfg(all(
    test,
    any(feature = "retry", feature = "auth", feature = "concurrency")
))]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicU64, Ordering};

    use super::*;

    #[test]
    fn each_shard_has_a_copy_of_its_own_and_every_copy_shares_what_the_state_shares() {
        let state = PerThread::new(Arc::new(AtomicU64::new(0)));
        let here = state.handle();
        assert!(Arc::ptr_eq(&here, &state.handle()), "one copy per thread");
        let (a, b) = (state.handle_in(0), state.handle_in(1));
        assert!(!Arc::ptr_eq(&a, &b), "one copy per shard");
        assert!(
            Arc::ptr_eq(&a, &state.handle_in(SHARDS)),
            "shards wrap around"
        );
        b.fetch_add(1, Ordering::Relaxed);
        assert_eq!(a.load(Ordering::Relaxed), 1, "the counter is shared");
        assert_eq!(here.load(Ordering::Relaxed), 1);
        assert_eq!(state.load(Ordering::Relaxed), 1, "and the original's too");
        // Another thread's handle is a copy of the same state.
        let there = std::thread::scope(|s| s.spawn(|| state.handle()).join().unwrap());
        there.fetch_add(1, Ordering::Relaxed);
        assert_eq!(here.load(Ordering::Relaxed), 2);
    }
}
