//! A conversation's tmux session. Its guard has one job: the session is
//! closed on every path. `close()` is the normal way; if a `Session` is
//! dropped unclosed (deadline, panic, cancellation), the drop hands its name
//! to the workspace's reaper, which closes it.

use std::sync::Arc;
use std::time::Duration;

use super::channel::protocol::{Op, Reply, RunOutput};
use super::error::WorkspaceError;
use super::shared::Inner;

pub struct Session {
    name: String,
    inner: Arc<Inner>,
    closed: bool,
    prepare_s: Option<f64>,
}

impl Session {
    pub(super) fn new(name: String, inner: Arc<Inner>, prepare_s: Option<f64>) -> Session {
        Session {
            name,
            inner,
            closed: false,
            prepare_s,
        }
    }

    /// How long the helper took to make this session's workdir ready (a
    /// task's environment), if it did.
    pub fn prepare_s(&self) -> Option<f64> {
        self.prepare_s
    }

    /// Runs a command in this session's shell.
    pub async fn run(
        &self,
        command: &str,
        timeout: Duration,
        max_output_bytes: u64,
    ) -> Result<RunOutput, WorkspaceError> {
        let op = Op::Run {
            session: self.name.clone(),
            command: command.to_string(),
            timeout_ms: super::shared::millis(timeout),
            max_output_bytes,
        };
        match self.inner.call(op).await? {
            Reply::Ran(out) => Ok(out),
            other => Err(WorkspaceError::unexpected(other)),
        }
    }

    /// Closes the session and kills every process it started.
    pub async fn close(mut self) -> Result<(), WorkspaceError> {
        if self.inner.leak_on_purpose(&self.name) {
            self.closed = true;
            return Ok(());
        }
        self.inner.leak_fd_on_purpose();
        self.inner.close_session(&self.name).await?;
        self.closed = true;
        Ok(())
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        if !self.closed {
            self.inner.reap(std::mem::take(&mut self.name));
        }
    }
}
