//! Exit codes of the contract (DESIGN.md) and the error type that carries
//! one up to `main`.

use std::fmt;

/// What `convoy` exits with. The numbers are part of the contract: CI jobs
/// and cron wrappers branch on them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Exit {
    /// Every task ended `ok`.
    Ok,
    /// Some tasks did not end `ok`.
    TasksFailed,
    /// Invalid input: arguments, manifest, task source.
    InvalidInput,
    /// A leak was detected and `monitor.on_leak = "fail"`.
    Leak,
    /// Infrastructure failure: Docker, the workspace, LLM auth.
    Infrastructure,
    /// Interrupted by a signal.
    Interrupted,
}

impl Exit {
    pub fn as_u8(self) -> u8 {
        match self {
            Exit::Ok => 0,
            Exit::TasksFailed => 1,
            Exit::InvalidInput => 2,
            Exit::Leak => 3,
            Exit::Infrastructure => 4,
            Exit::Interrupted => 130,
        }
    }
}

/// An error on its way to `main`: the message to print and the exit code.
#[derive(Debug)]
pub struct Failure {
    pub exit: Exit,
    pub error: anyhow::Error,
}

impl Failure {
    pub fn invalid(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            exit: Exit::InvalidInput,
            error: error.into(),
        }
    }

    pub fn infra(error: impl Into<anyhow::Error>) -> Self {
        Failure {
            exit: Exit::Infrastructure,
            error: error.into(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#}", self.error)
    }
}
