//! Errors that stop gcx before or outside a job, with the exit code they map to.

use std::fmt;

/// Exit code: everything was delivered.
pub(crate) const EXIT_OK: u8 = 0;
/// Exit code: something failed, was quarantined or was not started.
pub(crate) const EXIT_INCOMPLETE: u8 = 1;
/// Exit code: a usage or configuration error; nothing was sent.
pub(crate) const EXIT_USAGE: u8 = 2;

/// An error that ends gcx with a message saying what to do.
#[derive(Debug)]
pub(crate) struct CliError {
    message: String,
    code: u8,
}

impl CliError {
    /// A usage or configuration error (exit 2): nothing was sent.
    pub(crate) fn usage(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: EXIT_USAGE,
        }
    }

    /// A failure while running (exit 1).
    pub(crate) fn runtime(message: impl Into<String>) -> Self {
        CliError {
            message: message.into(),
            code: EXIT_INCOMPLETE,
        }
    }

    /// The process exit code.
    pub(crate) fn code(&self) -> u8 {
        self.code
    }
}

impl fmt::Display for CliError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for CliError {}
