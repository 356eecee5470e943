//! Killing what sessions leave. A closed session's processes are found by
//! a /proc scan, three ways, so that none is missed by any means of
//! starting it: the tree under its shell (a subreaper: what it abandons is
//! re-parented to it), the marker every process inherits
//! (`CONVOY_SESSION_DIR`), and, with `user` isolation, its uid. Whatever a
//! dead shell abandoned is re-parented to the tmux server's reaper (see
//! `reaper`): such a process of no open session is killed at the next
//! sweep.
//! Everything found is stopped first (SIGSTOP: a stopped process cannot
//! fork), then killed, pass after pass until nothing is found. Closes that
//! queue up while a sweep runs share the next one.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use tokio::sync::{mpsc, oneshot};

use super::super::protocol::{ErrorKind, OpError, WorkspaceStats};
use super::sessions::{SessionState, Shim};
use super::users::Users;
use crate::workspace::procfs::{self, Proc};

/// A closed session to sweep: its marker's value, and its shell (pid and
/// start time, so that a reused pid is never taken for it).
#[derive(Debug, Clone)]
pub(super) struct Target {
    pub dir: String,
    pub shell: Option<(u32, u64)>,
}

/// A session to sweep, and who waits to hear how many of its processes
/// could not be killed.
pub(super) type SweepRequest = (Target, oneshot::Sender<usize>);

/// What a sweep needs to know of the helper.
#[derive(Clone)]
pub(super) struct Scope {
    /// Where the reaper wrote its pid.
    pub reaper_file: std::path::PathBuf,
    /// `ROOT/s/`: every marker of this helper starts so.
    pub prefix: String,
    /// The helper's tmux socket: its own tmux processes name it.
    pub socket: String,
    pub users: Arc<Mutex<Users>>,
    pub sessions: Arc<Mutex<HashMap<String, Arc<tokio::sync::Mutex<SessionState>>>>>,
}

/// Passes a sweep makes before it gives up on a process.
const PASSES: usize = 10;

impl Scope {
    /// Names of the open sessions.
    fn live(&self) -> HashSet<String> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .keys()
            .cloned()
            .collect()
    }

    /// The session named by a marker value of this helper.
    fn session_of_marker<'a>(&self, dir: &'a str) -> Option<&'a str> {
        dir.strip_prefix(&self.prefix)
    }

    /// The reaper's pid, once it wrote it.
    fn reaper(&self) -> Option<u32> {
        std::fs::read_to_string(&self.reaper_file)
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    /// Whether `p` is the helper's tmux server (or the client starting
    /// it), the only children of the reaper that are not a session's.
    fn own_tmux(&self, p: &Proc) -> bool {
        // The server names itself `tmux: server (SOCKET)`.
        p.name.starts_with("tmux")
            && p.session_dir.is_none()
            && procfs::cmdline(p.pid)
                .iter()
                .any(|a| a.contains(self.socket.as_str()))
    }

    /// The live processes of `targets`, of closed sessions' uids, and
    /// those a dead shell left to the reaper that belong to no open
    /// session (the last set).
    fn doomed(&self, procs: &[Proc], targets: &[Target]) -> Vec<HashSet<u32>> {
        let reaper = self.reaper();
        let users = self.users.lock().expect("users lock");
        let live = self.live();
        let alive = || procs.iter().filter(|p| !p.zombie);
        let mut sets: Vec<HashSet<u32>> = targets
            .iter()
            .map(|t| {
                let tree = t
                    .shell
                    .filter(|&(pid, start)| procfs::start_time(pid) == Some(start))
                    .map(|(pid, _)| procfs::descendants(procs, pid))
                    .unwrap_or_default();
                alive()
                    .filter(|p| tree.contains(&p.pid) || p.session_dir.as_ref() == Some(&t.dir))
                    .map(|p| p.pid)
                    .collect()
            })
            .collect();
        let strays = alive()
            .filter(|p| match users.session_of(p.uid) {
                Some(s) => !live.contains(s),
                None => {
                    Some(p.ppid) == reaper
                        && !self.own_tmux(p)
                        && p.session_dir
                            .as_deref()
                            .and_then(|d| self.session_of_marker(d))
                            .is_none_or(|s| !live.contains(s))
                }
            })
            .map(|p| p.pid)
            .collect();
        sets.push(strays);
        sets
    }

    /// Stops and kills what `doomed` names in each scan, pass after pass,
    /// until it names nothing; returns the last scan. A killed process
    /// takes a moment to exit: it gets that (1 ms, doubling; about 1 s
    /// over every pass) before it is looked for again, so one still
    /// exiting is not called a survivor.
    fn kill_until_gone(&self, doomed: impl Fn(&[Proc]) -> HashSet<u32>) -> Vec<Proc> {
        for pass in 0..PASSES {
            let procs = self.scan();
            let all = doomed(&procs);
            if all.is_empty() {
                return procs;
            }
            stop_then_kill(&all);
            std::thread::sleep(std::time::Duration::from_millis(1 << pass));
        }
        self.scan()
    }

    /// Kills the processes of `targets` (and strays); returns, per target,
    /// how many are still alive after every pass.
    fn sweep(&self, targets: &[Target]) -> Vec<usize> {
        let procs = self
            .kill_until_gone(|procs| self.doomed(procs, targets).into_iter().flatten().collect());
        let left = self.doomed(&procs, targets);
        left.iter().take(targets.len()).map(HashSet::len).collect()
    }

    /// Every process but the helper, having returned the uids of closed
    /// sessions that have no process left to the pool.
    pub fn scan(&self) -> Vec<Proc> {
        let procs = procfs::scan(std::process::id());
        let busy: HashSet<u32> = procs.iter().filter(|p| !p.zombie).map(|p| p.uid).collect();
        self.users.lock().expect("users lock").settle(&busy);
        procs
    }

    /// Kills every process of this helper's sessions, open or not, and
    /// everything below the reaper (the reaper then ends by itself).
    pub fn sweep_all(&self) {
        let reaper = self.reaper();
        self.kill_until_gone(|procs| {
            let under_reaper = reaper
                .map(|r| procfs::descendants(procs, r))
                .unwrap_or_default();
            let users = self.users.lock().expect("users lock");
            procs
                .iter()
                .filter(|p| !p.zombie && Some(p.pid) != reaper)
                .filter(|p| {
                    under_reaper.contains(&p.pid)
                        || users.is_session_uid(p.uid)
                        || p.session_dir
                            .as_deref()
                            .and_then(|d| self.session_of_marker(d))
                            .is_some()
                })
                .map(|p| p.pid)
                .collect()
        });
    }

    /// The processes of this helper's sessions, with the session each
    /// belongs to (by uid, else by marker; none for a stray).
    pub fn processes(&self) -> Vec<(u32, Option<String>)> {
        let procs = self.scan();
        let reaper = self.reaper();
        let users = self.users.lock().expect("users lock");
        procs
            .iter()
            .filter(|p| !p.zombie)
            .filter_map(|p| {
                let by_marker = p
                    .session_dir
                    .as_deref()
                    .and_then(|d| self.session_of_marker(d));
                match (users.session_of(p.uid), by_marker) {
                    (Some(s), _) | (None, Some(s)) => Some((p.pid, Some(s.to_string()))),
                    (None, None) if Some(p.ppid) == reaper && !self.own_tmux(p) => {
                        Some((p.pid, None))
                    }
                    (None, None) => None,
                }
            })
            .collect()
    }
}

pub(super) fn stop_then_kill<'a>(pids: impl IntoIterator<Item = &'a u32> + Copy) {
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGSTOP);
    }
    for &pid in pids {
        let _ = kill(Pid::from_raw(pid as i32), Signal::SIGKILL);
    }
}

/// Sweeps closed sessions. Closes that queue up while a sweep runs share
/// the next one: one /proc pass for all of them.
pub(super) async fn sweep_processes(scope: Scope, mut rx: mpsc::UnboundedReceiver<SweepRequest>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let targets: Vec<Target> = batch.iter().map(|(t, _)| t.clone()).collect();
        let scope = scope.clone();
        let left = tokio::task::spawn_blocking(move || scope.sweep(&targets))
            .await
            .unwrap_or_default();
        for (i, (_, done)) in batch.into_iter().enumerate() {
            let _ = done.send(left.get(i).copied().unwrap_or(0));
        }
    }
}

pub(super) fn kill_group(pgid: i32) {
    let _ = kill(Pid::from_raw(-pgid), Signal::SIGKILL);
}

impl Shim {
    /// Kills the tmux session, then every process of the session.
    pub(super) async fn kill_tree(
        &self,
        name: &str,
        shell: Option<(u32, u64)>,
    ) -> Result<(), OpError> {
        let target = format!("={name}");
        let killed = self.tmux.call(&["kill-session", "-t", &target]).await;
        // Test-only: leave the session's processes, for the leak rules.
        if crate::test_hooks::leak() == Some(crate::test_hooks::Leak::Process) {
            return Ok(());
        }
        let stopped = || OpError::new(ErrorKind::Internal, "the process sweeper stopped");
        let (tx, rx) = oneshot::channel();
        let dir = self.session_dir(name).display().to_string();
        self.sweeps
            .send((Target { dir, shell }, tx))
            .map_err(|_| stopped())?;
        let left = rx.await.map_err(|_| stopped())?;
        if left > 0 {
            eprintln!(
                "session `{name}`: {left} processes survived every kill; the monitor reports them"
            );
        }
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

    pub(super) async fn stats(&self) -> Result<WorkspaceStats, OpError> {
        let sessions = self.list().await?;
        let scope = self.scope.clone();
        let processes = tokio::task::spawn_blocking(move || scope.processes())
            .await
            .map_err(|e| OpError::new(ErrorKind::Internal, format!("process scan failed: {e}")))?;
        let fds = processes
            .iter()
            .map(|(pid, _)| procfs::open_files(*pid))
            .sum();
        Ok(WorkspaceStats {
            sessions,
            fds,
            processes,
        })
    }
}
