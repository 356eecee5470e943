//! The helper's state: its root, its tmux server, the registry of
//! sessions; and the ops that are not a command run (open, close, list,
//! stats, shutdown), including adopting the sessions of a previous helper.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;

use super::super::protocol::{ErrorKind, Op, OpError, Reply, WorkspaceStats};
use super::super::tmux::{self, Tmux};
use super::completions::{read_completions, SharedDeaths, Waiters};
use super::shell::{check_name, RC};
use super::sweep::{kill_group, kill_marked, sweep_processes, SweepRequest};
use crate::workspace::procfs;

/// What it takes to start a session's shell again, kept beside it so a
/// new helper can adopt the session.
#[derive(serde::Serialize, serde::Deserialize)]
struct SessionMeta {
    workdir: Option<String>,
    env: Vec<(String, String)>,
}

pub(super) struct SessionState {
    pub seq: u64,
    pub dir: PathBuf,
    pub workdir: Option<String>,
    pub env: Vec<(String, String)>,
    /// The shell exited during the last command; start a new one first.
    pub dead: bool,
    /// The tmux pane id (`%N`) of its shell, to learn of its death.
    pub pane: Option<u32>,
}

type Registry = Mutex<HashMap<String, Arc<tokio::sync::Mutex<SessionState>>>>;

pub(super) struct Shim {
    root: PathBuf,
    pub tmux: Tmux,
    pub fifo: PathBuf,
    pub rc: PathBuf,
    sessions: Registry,
    pub waiters: Waiters,
    pub deaths: SharedDeaths,
    /// Markers of closed sessions whose processes must die; answered once
    /// the sweep is done.
    pub sweeps: mpsc::UnboundedSender<SweepRequest>,
}

impl Shim {
    pub(super) async fn start(root: PathBuf, config: super::ShimConfig) -> anyhow::Result<Shim> {
        let _ = config;
        std::fs::create_dir_all(root.join("s"))
            .with_context(|| format!("cannot create helper root {}", root.display()))?;
        let fifo = root.join("done.fifo");
        let _ = std::fs::remove_file(&fifo);
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o622))
            .with_context(|| format!("cannot create FIFO {}", fifo.display()))?;
        let rc = root.join("rc.bash");
        std::fs::write(&rc, RC)?;
        let tmux = Tmux::new(&root)?;
        tmux.spawn_call(&["start-server"])
            .await
            .map_err(|e| anyhow::anyhow!("tmux does not start: {e}"))?;
        // A pane whose process ended stays until the hook has reported its
        // status (a shell that died while starting says why); then the
        // helper removes exactly that pane (by its id: a hook's own
        // default target may be another session's pane by then).
        let died = format!(
            "run-shell \"printf '%s %s %s died\\\\n' '#{{session_name}}' '#{{pane_id}}' '#{{pane_dead_status}}' >'{}'\"",
            fifo.display()
        );
        for args in [
            vec!["set-option", "-g", "remain-on-exit", "on"],
            // The shell's start line is POSIX sh, whatever the user's SHELL.
            vec!["set-option", "-g", "default-shell", "/bin/sh"],
            vec!["set-hook", "-g", "pane-died", died.as_str()],
        ] {
            if let Err(e) = tmux.spawn_call(&args).await {
                eprintln!(
                    "tmux {}: {e}; a shell that dies while starting will be reported late",
                    args[0]
                );
            }
        }

        if let Err(e) = tmux.start_control().await {
            eprintln!("{e}; falling back to one tmux client per call");
        }

        let waiters: Waiters = Arc::default();
        let deaths: SharedDeaths = Arc::default();
        // Read-write, so the FIFO never reports EOF when no shell has it
        // open and writers never block for lack of a reader.
        let receiver = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&fifo)
            .with_context(|| format!("cannot open FIFO {}", fifo.display()))?;
        let (dead_tx, mut dead_rx) = mpsc::unbounded_channel::<u32>();
        tokio::spawn(read_completions(
            receiver,
            waiters.clone(),
            deaths.clone(),
            dead_tx,
        ));
        let reaper = tmux.clone();
        tokio::spawn(async move {
            while let Some(pane) = dead_rx.recv().await {
                // Any session can write a record: remove the pane only if
                // tmux says it is dead. Gone already (a restart removed its
                // session) is fine.
                let pane = format!("%{pane}");
                // A client of its own: if-shell answers in more than one
                // block, which would put the control client's answers out
                // of step with its requests.
                let _ = reaper
                    .spawn_call(&[
                        "if-shell",
                        "-F",
                        "-t",
                        &pane,
                        "#{pane_dead}",
                        &format!("kill-pane -t {pane}"),
                    ])
                    .await;
            }
        });

        let (sweeps, sweep_rx) = mpsc::unbounded_channel();
        tokio::spawn(sweep_processes(sweep_rx));
        let shim = Shim {
            root,
            tmux,
            fifo,
            rc,
            sessions: Mutex::default(),
            waiters,
            deaths,
            sweeps,
        };
        shim.replace_previous()?;
        shim.adopt().await;
        Ok(shim)
    }

    /// A helper that lost its stream may still run: stop it, so that it no
    /// longer reads the completion FIFO, and take its place.
    fn replace_previous(&self) -> anyhow::Result<()> {
        let pid_file = self.root.join("shim.pid");
        if let Some(old) = std::fs::read_to_string(&pid_file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok())
            .filter(|&pid| pid != std::process::id())
        {
            if procfs::cmdline(old).iter().any(|a| a == "shim") {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(old as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        std::fs::write(&pid_file, std::process::id().to_string())?;
        Ok(())
    }

    /// Takes over the sessions a previous helper left in the tmux server.
    async fn adopt(&self) {
        let Ok(names) = self.list().await else { return };
        // Each session's pane, so that its shell's death is noticed.
        let panes: HashMap<String, u32> = self
            .tmux
            .call(&["list-panes", "-a", "-F", "#{session_name} #{pane_id}"])
            .await
            .unwrap_or_default()
            .lines()
            .filter_map(|l| {
                let (name, pane) = l.split_once(' ')?;
                Some((name.to_string(), pane.strip_prefix('%')?.parse().ok()?))
            })
            .collect();
        // Sequence numbers continue above anything the old helper used.
        let seq = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(1, |d| d.as_millis() as u64);
        let mut sessions = self.sessions.lock().expect("sessions lock");
        for name in names {
            let dir = self.session_dir(&name);
            let Some(meta) = std::fs::read(dir.join("meta.json"))
                .ok()
                .and_then(|b| serde_json::from_slice::<SessionMeta>(&b).ok())
            else {
                continue;
            };
            let pane = panes.get(&name).copied();
            sessions.insert(
                name,
                Arc::new(tokio::sync::Mutex::new(SessionState {
                    seq,
                    dir,
                    workdir: meta.workdir,
                    env: meta.env,
                    dead: false,
                    pane,
                })),
            );
        }
        if !sessions.is_empty() {
            eprintln!("adopted {} sessions of the previous helper", sessions.len());
        }
    }

    pub(super) async fn handle(&self, op: Op) -> Reply {
        let result = match op {
            Op::Open {
                session,
                workdir,
                env,
            } => self.open(session, workdir, env).await.map(|()| Reply::Done),
            Op::Run {
                session,
                command,
                timeout_ms,
                max_output_bytes,
            } => self
                .run(
                    &session,
                    &command,
                    Duration::from_millis(timeout_ms),
                    max_output_bytes,
                )
                .await
                .map(Reply::Ran),
            Op::Close { session } => self.close(&session).await.map(|()| Reply::Done),
            Op::List => self.list().await.map(|names| Reply::Sessions { names }),
            Op::Stats => self.stats().await.map(Reply::Stats),
            Op::Shutdown => Ok(Reply::Done),
        };
        result.unwrap_or_else(OpError::into_reply)
    }

    /// The environment entry every process of `session` carries. It names
    /// this helper's root, so two convoy runs on one host never match each
    /// other's sessions.
    pub(super) fn marker(&self, session: &str) -> String {
        format!("CONVOY_SESSION_DIR={}", self.session_dir(session).display())
    }

    fn session_dir(&self, session: &str) -> PathBuf {
        self.root.join("s").join(session)
    }

    fn run_marker(&self) -> String {
        format!("CONVOY_FIFO={}", self.fifo.display())
    }

    async fn open(
        &self,
        name: String,
        workdir: Option<String>,
        env: Vec<(String, String)>,
    ) -> Result<(), OpError> {
        check_name(&name)?;
        if let Some(w) = &workdir {
            if !Path::new(w).is_dir() {
                return Err(OpError::new(
                    ErrorKind::BadWorkdir,
                    format!("workdir `{w}` is not a directory"),
                ));
            }
        }
        let dir = self.session_dir(&name);
        let meta = SessionMeta {
            workdir: workdir.clone(),
            env: env.clone(),
        };
        {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            if sessions.contains_key(&name) {
                return Err(OpError::new(
                    ErrorKind::SessionExists,
                    format!("session `{name}` exists already"),
                ));
            }
            sessions.insert(
                name.clone(),
                Arc::new(tokio::sync::Mutex::new(SessionState {
                    seq: 0,
                    dir: dir.clone(),
                    workdir,
                    env,
                    dead: false,
                    pane: None,
                })),
            );
        }
        std::fs::create_dir_all(&dir)
            .and_then(|()| {
                std::fs::write(
                    dir.join("meta.json"),
                    serde_json::to_vec(&meta).unwrap_or_default(),
                )
            })
            .map_err(|e| OpError::io(format!("cannot create {}", dir.display()), &e))?;
        let state = self.state(&name)?;
        let mut state = state.lock().await;
        match self.spawn_shell(&name, &state).await {
            Ok(pane) => {
                state.pane = pane;
                Ok(())
            }
            Err(e) => {
                drop(state);
                self.forget(&name);
                Err(e)
            }
        }
    }

    pub(super) fn state(
        &self,
        name: &str,
    ) -> Result<Arc<tokio::sync::Mutex<SessionState>>, OpError> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .get(name)
            .cloned()
            .ok_or_else(|| OpError::new(ErrorKind::NoSuchSession, format!("no session `{name}`")))
    }

    fn forget(&self, name: &str) {
        self.sessions.lock().expect("sessions lock").remove(name);
        self.waiters
            .lock()
            .expect("waiters lock")
            .retain(|(s, _), _| s != name);
    }

    /// Idempotent: closing a session that is gone (or that a previous
    /// helper owned) still sweeps its processes and files.
    async fn close(&self, name: &str) -> Result<(), OpError> {
        check_name(name)?;
        let state = self.state(name).ok();
        // Wake a command still waiting on this session before taking its lock.
        self.forget(name);
        let killed = self.kill_tree(name).await;
        let _guard = match &state {
            Some(s) => Some(s.lock().await),
            None => None,
        };
        let _ = std::fs::remove_dir_all(self.session_dir(name));
        killed
    }

    pub(super) async fn list(&self) -> Result<Vec<String>, OpError> {
        match self
            .tmux
            .call(&["list-sessions", "-F", "#{session_name}"])
            .await
        {
            Ok(out) => Ok(out
                .lines()
                .filter(|name| *name != tmux::CONTROL_SESSION)
                .map(str::to_string)
                .collect()),
            // No server, no sessions (told by the socket, not the message).
            Err(_) if !self.tmux.server_answers() => Ok(Vec::new()),
            Err(e) => Err(OpError::new(
                ErrorKind::Tmux,
                format!("tmux list-sessions: {e}"),
            )),
        }
    }

    async fn stats(&self) -> Result<WorkspaceStats, OpError> {
        let sessions = self.list().await?;
        let marker = self.run_marker();
        let prefix = format!("{}/", self.root.join("s").display());
        let procs = tokio::task::spawn_blocking(move || procfs::run_processes(&marker))
            .await
            .map_err(|e| OpError::new(ErrorKind::Internal, format!("process scan failed: {e}")))?;
        Ok(WorkspaceStats {
            sessions,
            fds: procs.iter().map(|p| p.2).sum(),
            processes: procs
                .into_iter()
                .map(|(pid, dir, _)| {
                    (
                        pid,
                        dir.and_then(|d| d.strip_prefix(&prefix).map(str::to_string)),
                    )
                })
                .collect(),
        })
    }

    pub(super) async fn shutdown(&self) {
        // The server exits a moment after kill-server answers: wait for it
        // (then make sure), so that "the job is over" means it is gone.
        let server = self
            .tmux
            .call(&["display-message", "-p", "#{pid}"])
            .await
            .ok()
            .and_then(|p| p.trim().parse::<u32>().ok());
        self.tmux.stop_control().await;
        let _ = self.tmux.spawn_call(&["kill-server"]).await;
        if let Some(pid) = server {
            for _ in 0..100 {
                if !procfs::is_running(pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if procfs::is_running(pid) {
                kill_group(pid as i32);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid as i32),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let markers = [self.run_marker()].into_iter().collect();
        let _ = tokio::task::spawn_blocking(move || kill_marked(&markers)).await;
        for f in [
            "s",
            "done.fifo",
            "rc.bash",
            "tmux.conf",
            "tmux.sock",
            "shim.pid",
        ] {
            let p = self.root.join(f);
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
    }
}
