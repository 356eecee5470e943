//! Opening sessions (a conversation's, and a check's), and a
//! conversation's tmux session. Its guard has one job: the session is
//! closed on every path. `close()` is the normal way; if a `Session` is
//! dropped unclosed (deadline, panic, cancellation), the drop hands its name
//! to the workspace's reaper, which closes it.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use super::channel::protocol::{CheckOp, Op, Opening, Prepare, Reply, RunOutput};
use super::env::{resolve, session_env, Place};
use super::error::WorkspaceError;
use super::shared::{Inner, Member};

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
            timeout_ms: millis(timeout),
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

impl Member {
    /// Opens a fresh session for one conversation: in the workspace's
    /// workdir, or in a task's own (`place`), which the helper makes ready
    /// first.
    pub async fn open_session(&self, place: Option<Place>) -> Result<Session, WorkspaceError> {
        let at = self.admit(place);
        let name = at.session.clone();
        let reply = self.inner.call(Op::Open(at)).await;
        let prepare_s = match reply {
            Ok(Reply::Done) => None,
            Ok(Reply::Prepared { prepare_s }) => Some(prepare_s),
            other => {
                self.inner.open.lock().expect("open lock").remove(&name);
                return Err(match other {
                    Err(e) => e,
                    Ok(r) => WorkspaceError::unexpected(r),
                });
            }
        };
        self.inner.sessions.inc();
        Ok(Session::new(name, self.inner.clone(), prepare_s))
    }

    /// Runs `command` once in a session of its own that has no shell (in
    /// `place`, made ready as for `open_session`), which is closed before
    /// this returns: a task's verification.
    pub async fn check(
        &self,
        place: Option<Place>,
        command: &str,
        timeout: Duration,
        max_output_bytes: u64,
    ) -> Result<RunOutput, WorkspaceError> {
        let at = self.admit(place);
        let name = at.session.clone();
        let reply = self
            .inner
            .call(Op::Check(CheckOp {
                at,
                command: command.to_string(),
                timeout_ms: millis(timeout),
                max_output_bytes,
            }))
            .await;
        self.inner.open.lock().expect("open lock").remove(&name);
        match reply? {
            Reply::Ran(out) => Ok(out),
            other => Err(WorkspaceError::unexpected(other)),
        }
    }

    /// A new session's name, owned before it exists (the monitor never
    /// sees an unowned session), and where and how it opens.
    fn admit(&self, place: Option<Place>) -> Opening {
        let n = self.inner.counter.fetch_add(1, Ordering::Relaxed);
        let name = format!("c{n}");
        let (workdir, env, prepare) = match place {
            Some(p) => {
                let workdir = resolve(self.inner.workdir.as_deref(), &p.workdir);
                let (env, dirs) = session_env(&self.inner.env, Some(&workdir));
                (Some(workdir), env, Some(Prepare { dirs, ..p.prepare }))
            }
            None => (
                self.inner.workdir.clone(),
                session_env(&self.inner.env, None).0,
                None,
            ),
        };
        self.inner
            .open
            .lock()
            .expect("open lock")
            .insert(name.clone());
        Opening {
            session: name,
            workdir,
            env,
            prepare,
        }
    }
}

/// A timeout as the protocol's milliseconds.
fn millis(d: Duration) -> u64 {
    d.as_millis().min(u64::MAX as u128) as u64
}
