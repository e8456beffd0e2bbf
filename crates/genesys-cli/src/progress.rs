//! Progress on stderr: an indicatif bar on a terminal, a plain line every few seconds otherwise
//! (logs and CI), nothing with `-q`.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::tally::Tally;

/// How often a plain progress line is printed.
const PLAIN_EVERY: Duration = Duration::from_secs(2);

/// The progress display of one run.
#[derive(Debug)]
pub(crate) struct Progress {
    mode: Mode,
}

#[derive(Debug)]
enum Mode {
    Hidden,
    Plain {
        start: Instant,
        last: Mutex<Instant>,
    },
    Bar(ProgressBar),
}

impl Progress {
    /// No output at all.
    pub(crate) fn hidden() -> Self {
        Progress { mode: Mode::Hidden }
    }

    /// A bar if stderr is a terminal, plain lines otherwise; hidden when `quiet`.
    pub(crate) fn new(quiet: bool, total: Option<u64>) -> Self {
        if quiet {
            return Self::hidden();
        }
        if std::io::stderr().is_terminal() {
            let bar = match total {
                Some(n) => ProgressBar::with_draw_target(Some(n), ProgressDrawTarget::stderr()),
                None => ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr()),
            };
            let style = ProgressStyle::with_template(
                "{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} records, eta {eta}: {msg}",
            )
            .unwrap_or_else(|_| ProgressStyle::default_bar());
            bar.set_style(style);
            bar.enable_steady_tick(Duration::from_millis(120));
            Progress {
                mode: Mode::Bar(bar),
            }
        } else {
            let now = Instant::now();
            Progress {
                mode: Mode::Plain {
                    start: now,
                    last: Mutex::new(now),
                },
            }
        }
    }

    /// True when a bar is shown (stderr is a terminal).
    pub(crate) fn is_bar(&self) -> bool {
        matches!(self.mode, Mode::Bar(_))
    }

    /// Sets the bar's length once it is known.
    pub(crate) fn set_total(&self, total: u64) {
        if let Mode::Bar(bar) = &self.mode {
            bar.set_length(total);
        }
    }

    /// Shows the counts.
    pub(crate) fn update(&self, t: &Tally) {
        match &self.mode {
            Mode::Hidden => {}
            Mode::Bar(bar) => {
                bar.set_position(t.records());
                bar.set_message(format!(
                    "ok {} failed {} unknown {} quarantined {}",
                    t.delivered, t.failed, t.unknown, t.quarantined
                ));
            }
            Mode::Plain { start, last } => {
                let mut last = last.lock().unwrap_or_else(|e| e.into_inner());
                if last.elapsed() >= PLAIN_EVERY {
                    *last = Instant::now();
                    let secs = start.elapsed().as_secs_f64().max(0.001);
                    say!(
                        "gcx: {:>6.1}s  delivered {}  failed {}  unknown {}  quarantined {}  ({:.0} records/s)",
                        secs,
                        t.delivered,
                        t.failed,
                        t.unknown,
                        t.quarantined,
                        t.records() as f64 / secs
                    );
                }
            }
        }
    }

    /// A message that must be seen (an interrupt, a broken input), above the bar.
    pub(crate) fn note(&self, msg: &str) {
        match &self.mode {
            Mode::Hidden => {}
            Mode::Bar(bar) => bar.println(format!("gcx: {msg}")),
            Mode::Plain { .. } => say!("gcx: {msg}"),
        }
    }

    /// Removes the bar (the summary follows).
    pub(crate) fn finish(&self) {
        if let Mode::Bar(bar) = &self.mode {
            bar.finish_and_clear();
        }
    }
}
