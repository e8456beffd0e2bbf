//! Ctrl-C and SIGTERM: sent to the job while it runs, and remembered for what waits after it
//! (the metrics linger).

use std::sync::atomic::{AtomicBool, Ordering};

use tokio::sync::{Notify, mpsc};

/// A stop asked for from outside the job, by its signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupt {
    /// Ctrl-C (SIGINT): units in flight get the whole grace.
    CtrlC,
    /// SIGTERM, a scheduler's stop, which its SIGKILL follows: units in flight get at most
    /// [`TERM_GRACE`](crate::job::TERM_GRACE).
    Term,
}

/// Whether a Ctrl-C or a SIGTERM came since [`interrupts`] was installed, and who waits for one.
static STOP_ASKED: AtomicBool = AtomicBool::new(false);
static STOP_NOTIFY: Notify = Notify::const_new();

/// Returns once a Ctrl-C or a SIGTERM came since [`interrupts`] was installed (at once when one
/// already did, during the job: the one that stopped it): after the job, the handler that
/// [`interrupts`] installed has taken SIGTERM over, so the signal no longer ends the process by
/// itself.
pub(crate) async fn stop_asked() {
    loop {
        let notified = STOP_NOTIFY.notified();
        tokio::pin!(notified);
        // Registered before the flag is read: a signal in between wakes it.
        notified.as_mut().enable();
        if STOP_ASKED.load(Ordering::SeqCst) {
            return;
        }
        notified.await;
    }
}

/// Whether a Ctrl-C or a SIGTERM came since [`interrupts`] was installed.
pub(crate) fn stop_was_asked() -> bool {
    STOP_ASKED.load(Ordering::SeqCst)
}

/// Records a stop asked for, for [`stop_asked`], and sends it to the job while it runs.
fn asked(tx: &mpsc::UnboundedSender<Interrupt>, signal: Interrupt) {
    STOP_ASKED.store(true, Ordering::SeqCst);
    STOP_NOTIFY.notify_waiters();
    // The job may have ended: the signal is then for `stop_asked` only.
    let _ = tx.send(signal);
}

/// Sends a unit on every Ctrl-C (and SIGTERM), from now on: installed before the job starts so
/// that an early Ctrl-C is not lost. SIGHUP keeps its default (a job started under `nohup` runs
/// on after its terminal closes; one that is not ends as if killed, and its journal resumes it).
pub(crate) fn interrupts() -> mpsc::UnboundedReceiver<Interrupt> {
    let (tx, rx) = mpsc::unbounded_channel();
    let ctrl_c = tx.clone();
    tokio::spawn(async move {
        while tokio::signal::ctrl_c().await.is_ok() {
            asked(&ctrl_c, Interrupt::CtrlC);
        }
    });
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            while term.recv().await.is_some() {
                asked(&tx, Interrupt::Term);
            }
        }
    });
    rx
}
