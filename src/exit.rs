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

/// The error and its causes, each cause once: many of our messages already
/// quote their cause ("cannot read `x`: No such file or directory"), and
/// the OS error must not follow a second time.
impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = self.error.to_string();
        for cause in self.error.chain().skip(1) {
            let cause = cause.to_string();
            if !text.contains(&cause) {
                text.push_str(": ");
                text.push_str(&cause);
            }
        }
        f.write_str(&text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_os_error_is_printed_once() {
        #[derive(Debug, thiserror::Error)]
        #[error("cannot read `x`: {source}")]
        struct Read {
            source: std::io::Error,
        }
        let os = std::io::Error::from(std::io::ErrorKind::NotFound);
        let f = Failure::invalid(Read { source: os });
        assert_eq!(f.to_string(), "cannot read `x`: entity not found");
        let f = Failure::infra(anyhow::anyhow!("inner").context("outer"));
        assert_eq!(f.to_string(), "outer: inner");
    }
}
