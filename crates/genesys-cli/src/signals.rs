//! Ctrl-C, SIGTERM and SIGHUP: sent to the job while it runs, and remembered for what waits
//! after it (the metrics linger).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, Once, PoisonError};

use tokio::sync::{Notify, mpsc};

/// A stop asked for from outside the job, by its signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Interrupt {
    /// Ctrl-C (SIGINT): units in flight get the whole grace.
    CtrlC,
    /// SIGTERM, a scheduler's stop, which its SIGKILL follows: units in flight get at most
    /// [`TERM_GRACE`](crate::job::TERM_GRACE).
    Term,
    /// SIGHUP, the terminal or the ssh session gone: the whole grace, as after Ctrl-C, and a
    /// second one (a closing terminal often sends two) is not a second interrupt.
    Hangup,
}

/// Whether a Ctrl-C or a SIGTERM came since the handlers were installed, and who waits for one.
static STOP_ASKED: AtomicBool = AtomicBool::new(false);
static STOP_NOTIFY: Notify = Notify::const_new();

/// Where a signal goes while a job runs: the sender of the last [`interrupts`].
static JOB: Mutex<Option<mpsc::UnboundedSender<Interrupt>>> = Mutex::new(None);
/// Whether the handlers are installed (once a process).
static INSTALLED: Once = Once::new();

/// Installs the handlers of Ctrl-C and SIGTERM, once: from then on each is recorded (for
/// [`stop_asked`]) and sent to the job that runs, if one does. On Linux, SIGHUP (the terminal or
/// the ssh session went away) stops the job as an interrupt does, with its report and lists
/// written, unless the process ignores it: a job started under `nohup` runs on after its
/// terminal closes. Elsewhere SIGHUP keeps its disposition.
/// Registered before it returns: a signal that comes after is recorded. Needs a tokio runtime.
pub(crate) fn install() {
    INSTALLED.call_once(|| {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            // Read before any handler is set: a handler replaces the disposition inherited.
            let hangup = (!hangup_ignored()).then_some((SignalKind::hangup(), Interrupt::Hangup));
            for (kind, which) in [
                (SignalKind::interrupt(), Interrupt::CtrlC),
                (SignalKind::terminate(), Interrupt::Term),
            ]
            .into_iter()
            .chain(hangup)
            {
                if let Ok(mut received) = signal(kind) {
                    tokio::spawn(async move {
                        while received.recv().await.is_some() {
                            asked(which);
                        }
                    });
                }
            }
        }
        #[cfg(not(unix))]
        tokio::spawn(async {
            while tokio::signal::ctrl_c().await.is_ok() {
                asked(Interrupt::CtrlC);
            }
        });
    });
}

/// Whether this process ignores SIGHUP (started under `nohup`, or by a parent that ignores it),
/// from the kernel's account of it (`SigIgn` in `/proc/self/status`). Where that cannot be read
/// (another system than Linux), taken as ignored: SIGHUP then keeps its disposition.
#[cfg(unix)]
fn hangup_ignored() -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return true;
    };
    status
        .lines()
        .find_map(|line| line.strip_prefix("SigIgn:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        // SIGHUP is signal 1: the mask's lowest bit.
        .is_none_or(|mask| mask & 1 != 0)
}

/// Records a stop asked for, for [`stop_asked`], and sends it to the job while it runs.
fn asked(signal: Interrupt) {
    STOP_ASKED.store(true, Ordering::SeqCst);
    STOP_NOTIFY.notify_waiters();
    if let Some(job) = JOB.lock().unwrap_or_else(PoisonError::into_inner).as_ref() {
        // The job may have ended: the signal is then for `stop_asked` only.
        let _ = job.send(signal);
    }
}

/// Returns once a Ctrl-C or a SIGTERM came (at once when one already did, during the job: the
/// one that stopped it). Once the handlers are installed, SIGTERM no longer ends the process by
/// itself: what waits after a job (the metrics linger) waits for this.
pub(crate) async fn stop_asked() {
    install();
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

/// Whether a Ctrl-C or a SIGTERM came since the handlers were installed.
pub(crate) fn stop_was_asked() -> bool {
    STOP_ASKED.load(Ordering::SeqCst)
}

/// Sends a unit on every Ctrl-C (and SIGTERM), from now on: installed before the job starts so
/// that an early Ctrl-C is not lost.
pub(crate) fn interrupts() -> mpsc::UnboundedReceiver<Interrupt> {
    install();
    let (tx, rx) = mpsc::unbounded_channel();
    *JOB.lock().unwrap_or_else(PoisonError::into_inner) = Some(tx);
    rx
}
