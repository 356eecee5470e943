//! Killing what a session leaves: its tmux session, then every process
//! that carries its marker, found by a /proc scan. Closes that queue up
//! while a scan runs share the next one.

use std::collections::HashSet;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot};

use super::super::protocol::{ErrorKind, OpError};
use super::sessions::Shim;
use crate::workspace::procfs;

/// A marker to sweep, and who waits for the sweep to be done.
pub(super) type SweepRequest = (String, oneshot::Sender<()>);

/// Kills the processes of closed sessions. Closes that queue up while a
/// sweep runs share the next one: one /proc pass for all of them.
pub(super) async fn sweep_processes(mut rx: mpsc::UnboundedReceiver<SweepRequest>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let markers: HashSet<String> = batch.iter().map(|(m, _)| m.clone()).collect();
        let _ = tokio::task::spawn_blocking(move || kill_marked(&markers)).await;
        for (_, done) in batch {
            let _ = done.send(());
        }
    }
}

/// SIGKILLs every process whose environment holds one of the entries
/// `markers` (`NAME=value`), until none is left (a process may fork while
/// we scan). Returns how many were killed. Blocking: reads /proc.
pub(super) fn kill_marked(markers: &HashSet<String>) -> usize {
    let me = std::process::id();
    let mut killed = 0;
    for _ in 0..5 {
        let found = procfs::marked_processes(markers, me);
        if found.is_empty() {
            break;
        }
        for pid in found {
            if kill(Pid::from_raw(pid as i32), Signal::SIGKILL).is_ok() {
                killed += 1;
            }
        }
    }
    killed
}

pub(super) fn kill_group(pgid: i32) {
    let _ = kill(Pid::from_raw(-pgid), Signal::SIGKILL);
}

impl Shim {
    /// Kills the tmux session, then every process that carries its marker.
    pub(super) async fn kill_tree(&self, name: &str) -> Result<(), OpError> {
        let target = format!("={name}");
        let killed = self.tmux.call(&["kill-session", "-t", &target]).await;
        let stopped = || OpError::new(ErrorKind::Internal, "the process sweeper stopped");
        let (tx, rx) = oneshot::channel();
        self.sweeps
            .send((self.marker(name), tx))
            .map_err(|_| stopped())?;
        rx.await.map_err(|_| stopped())?;
        // A session that was gone already is not a failure; one that is
        // still there is (asked of tmux, not read from its message).
        match killed {
            Err(e) if self.tmux.has_session(name).await => Err(OpError::new(
                ErrorKind::Tmux,
                format!("kill-session `{name}`: {e}"),
            )),
            _ => Ok(()),
        }
    }
}
