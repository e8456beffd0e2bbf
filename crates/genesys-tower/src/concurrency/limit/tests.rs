//! Tests of `limit`.
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use super::*;

/// Polls `acquire` once: whether it has its permit.
fn ready(acquire: &mut Acquire) -> bool {
    let mut cx = Context::from_waker(Waker::noop());
    Pin::new(acquire).poll(&mut cx).is_ready()
}

fn waiting(limit: &Limit) -> bool {
    limit.state.load(Ordering::Relaxed) & WAITING != 0
}

#[test]
fn permits_are_taken_and_given_back() {
    let limit = Limit::new(2);
    assert!(limit.try_acquire());
    assert!(limit.try_acquire());
    assert!(!limit.try_acquire());
    assert_eq!(limit.available_permits(), 0);
    limit.release();
    assert_eq!(limit.available_permits(), 1);
    assert!(limit.try_acquire());
    assert_eq!(
        Limit::new(usize::MAX).available_permits(),
        Limit::MAX_PERMITS
    );
}

/// Waiters get their permits in the order they came, and a caller who comes later never takes
/// a permit before them, even one freed before the first waiter was polled again.
#[test]
fn waiters_are_served_in_turn_and_never_passed() {
    let limit = Arc::new(Limit::new(1));
    assert!(limit.try_acquire());
    let mut waiters: Vec<_> = (0..3).map(|_| limit.clone().acquire()).collect();
    for w in &mut waiters {
        assert!(!ready(w));
    }
    assert!(waiting(&limit));
    for served in 0..3 {
        limit.release();
        assert!(!limit.try_acquire(), "a newcomer passed waiter {served}");
        assert!(!ready(&mut limit.clone().acquire()));
        for (i, w) in waiters.iter_mut().enumerate().skip(served) {
            assert_eq!(ready(w), i == served, "waiter {i} after {served} releases");
        }
    }
    // The newcomers above left the list when dropped; the last waiter holds the permit.
    assert!(!waiting(&limit));
    assert_eq!(limit.available_permits(), 0);
    limit.release();
    assert_eq!(limit.available_permits(), 1);
}

/// A waiter that leaves takes nothing with it: not its place's permit, not the flag.
#[test]
fn a_waiter_that_leaves_loses_no_permit() {
    let limit = Arc::new(Limit::new(1));
    assert!(limit.try_acquire());
    let mut first = limit.clone().acquire();
    let mut second = limit.clone().acquire();
    assert!(!ready(&mut first));
    assert!(!ready(&mut second));
    // Leaves before its turn: the permit goes to the next.
    drop(first);
    limit.release();
    // Given the permit, then dropped before it was polled: the permit comes back.
    drop(second);
    assert!(!waiting(&limit));
    assert_eq!(limit.available_permits(), 1);
    assert!(limit.try_acquire());

    // The last waiter leaving clears the flag: the next release frees the permit.
    let mut third = limit.clone().acquire();
    assert!(!ready(&mut third));
    drop(third);
    assert!(!waiting(&limit));
    limit.release();
    assert!(limit.try_acquire());
}

/// Many tasks on two threads take and give back three permits, some giving up while they wait:
/// never more than three at once, no permit lost, no waiter forgotten.
#[test]
fn tasks_on_two_threads_never_pass_the_limit() {
    const PERMITS: usize = 3;
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_time()
        .build()
        .unwrap();
    let limit = Arc::new(Limit::new(PERMITS));
    let in_flight = Arc::new(AtomicUsize::new(0));
    let over = Arc::new(AtomicBool::new(false));
    let (l, i, o) = (limit.clone(), in_flight.clone(), over.clone());
    let done = rt.block_on(async move {
        let (limit, in_flight, over) = (l, i, o);
        let all = async move {
            let tasks: Vec<_> = (0..32)
                .map(|task| {
                    let (limit, in_flight, over) = (limit.clone(), in_flight.clone(), over.clone());
                    tokio::spawn(async move {
                        for i in 0..2000 {
                            if (task + i) % 7 == 0 {
                                // Gives up after a moment, or gets the permit first.
                                tokio::select! {
                                    () = limit.clone().acquire() => {}
                                    () = tokio::task::yield_now() => continue,
                                }
                            } else {
                                limit.clone().acquire().await;
                            }
                            if in_flight.fetch_add(1, Ordering::SeqCst) >= PERMITS {
                                over.store(true, Ordering::SeqCst);
                            }
                            tokio::task::yield_now().await;
                            in_flight.fetch_sub(1, Ordering::SeqCst);
                            limit.release();
                        }
                    })
                })
                .collect();
            for task in tasks {
                task.await.unwrap();
            }
        };
        tokio::time::timeout(Duration::from_secs(30), all).await
    });
    assert!(done.is_ok(), "a waiter was never woken: {limit:?}");
    assert!(
        !over.load(Ordering::SeqCst),
        "more than {PERMITS} in flight"
    );
    assert_eq!(limit.available_permits(), PERMITS);
    assert!(!waiting(&limit));
}
