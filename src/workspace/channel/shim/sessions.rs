//! The helper's state: its root, its tmux server, the registry of
//! sessions; and the ops that are not a command run (open, close, list,
//! stats, shutdown), including adopting the sessions of a previous helper.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::sync::mpsc;

use super::super::protocol::{ErrorKind, Op, OpError, Opening, Reply};
use super::super::tmux::{self, Tmux};
use super::completions::{read_completions, SharedDeaths, Waiters};
use super::shell::{check_name, RC};
use super::sweep::{sweep_processes, Scope, SweepRequest};
use super::users::Users;
use super::{Isolation, ShimConfig};

pub(super) struct SessionState {
    pub seq: u64,
    pub dir: PathBuf,
    pub workdir: Option<String>,
    pub env: Vec<(String, String)>,
    /// The session's own uid (`user` isolation).
    pub uid: Option<u32>,
    /// The shell exited during the last command; start a new one first.
    pub dead: bool,
    /// The tmux pane id (`%N`) of its shell, to learn of its death.
    pub pane: Option<u32>,
    /// Reads the session's completion FIFO while the session lives (a
    /// check has no shell to write there).
    pub _reader: Option<Reader>,
}

/// The task reading one session's completion FIFO; stops when dropped.
pub(super) struct Reader(tokio::task::JoinHandle<()>);

impl Drop for Reader {
    fn drop(&mut self) {
        self.0.abort();
    }
}

type Registry = Mutex<HashMap<String, Arc<tokio::sync::Mutex<SessionState>>>>;

/// The helper. Its root holds `rc.bash` (readable by all), `p/` (the
/// helper's own: tmux socket and config, pid file, each session's
/// metadata; mode 0700), `s/NAME/` (a session's command and output files
/// and its HOME: the session's own, mode 0700) and `f/NAME` (the session's completion FIFO, writable by that session
/// only). `root`, `s/` and `f/` are mode 0711: a session reaches its own
/// entries by name and cannot list anyone's.
pub(super) struct Shim {
    root: PathBuf,
    pub private: PathBuf,
    pub tmux: Tmux,
    pub rc: PathBuf,
    /// This binary, which launches each session's shell.
    pub exe: PathBuf,
    /// Each session as a uid of its own.
    pub user_isolation: bool,
    pub config: ShimConfig,
    pub(super) sessions: Arc<Registry>,
    pub users: Arc<Mutex<Users>>,
    /// What the sweeps need to know of the helper.
    pub scope: Scope,
    pub waiters: Waiters,
    pub deaths: SharedDeaths,
    /// Closed sessions whose processes must die; answered once the sweep
    /// is done.
    pub sweeps: mpsc::UnboundedSender<SweepRequest>,
    /// What the helper did to a session between its commands (a process
    /// killed for memory), told with its next command's output.
    pub notes: Mutex<HashMap<String, Vec<String>>>,
    /// Each session's uid and shell, readable while a command holds the
    /// session's lock (a close must not wait for it).
    pub(super) ids: Mutex<HashMap<String, Ids>>,
    /// The model gateway (idle until convoy opens it).
    gateway: Arc<super::gateway::Gateway>,
}

/// A session's uid and its shell's pid and start time.
type Ids = (Option<u32>, Option<(u32, u64)>);

/// Starts the tmux server under a reaper of its own (see `reaper`), or
/// finds it running (a previous helper's).
async fn start_server(exe: &Path, private: &Path, tmux: &Tmux) -> anyhow::Result<()> {
    use tokio::io::AsyncBufReadExt;
    let mut child = tokio::process::Command::new(exe)
        .arg("reaper")
        .arg("--pid-file")
        .arg(private.join(super::reaper::PID_FILE))
        .arg("--")
        .args(tmux.command_line(&["start-server"]))
        .env_remove("TMUX")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("cannot start the tmux server's reaper")?;
    let stdout = child.stdout.take().expect("piped");
    let mut line = String::new();
    let said = tokio::time::timeout(
        Duration::from_secs(30),
        tokio::io::BufReader::new(stdout).read_line(&mut line),
    )
    .await;
    // Not waited for: it lives as long as the server (the runtime reaps it).
    drop(child);
    match said {
        Ok(Ok(_)) if line.trim() == "ok" => Ok(()),
        Ok(_) => anyhow::bail!("tmux does not start: {}", line.trim()),
        Err(_) => anyhow::bail!("tmux does not start: no answer within 30s"),
    }
}

/// Runs file-system work off the runtime's threads: a seed copy or a
/// large tree must not hold other sessions' requests.
pub(super) async fn blocking(
    f: impl FnOnce() -> Result<(), OpError> + Send + 'static,
) -> Result<(), OpError> {
    tokio::task::spawn_blocking(f).await.unwrap_or_else(|e| {
        Err(OpError::new(
            ErrorKind::Internal,
            format!("preparing the workdir panicked: {e}"),
        ))
    })
}

/// Creates `dir` with `mode` (whatever its mode was).
pub(super) fn make_dir(dir: &Path, mode: u32) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("cannot set the mode of {}", dir.display()))
}

impl Shim {
    pub(super) async fn start(root: PathBuf, config: ShimConfig) -> anyhow::Result<Shim> {
        let root_user = nix::unistd::geteuid().is_root();
        let user_isolation = match config.isolation {
            Isolation::Auto => root_user,
            Isolation::User if !root_user => anyhow::bail!(
                "workspace.isolation = \"user\" needs the helper to run as root, and it runs as uid {} (set workspace.isolation = \"none\", or run the container as root)",
                nix::unistd::geteuid()
            ),
            Isolation::User => true,
            Isolation::None => false,
        };
        // The OOM killer takes a session's process before the helper or
        // the tmux server (root may lower its score; others cannot).
        let _ = std::fs::write("/proc/self/oom_score_adj", "-1000");
        let private = root.join("p");
        make_dir(&root, 0o711)?;
        make_dir(&private, 0o700)?;
        make_dir(&private.join("meta"), 0o700)?;
        make_dir(&root.join("s"), 0o711)?;
        make_dir(&root.join("f"), 0o711)?;
        let rc = root.join("rc.bash");
        std::fs::write(&rc, RC)?;
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&rc, std::fs::Permissions::from_mode(0o644))?;
        }
        let exe = std::env::current_exe().context("cannot find the convoy binary")?;
        let tmux = Tmux::new(&private)?;
        start_server(&exe, &private, &tmux).await?;
        // A pane whose process ended stays until the watcher has told its
        // death (a shell that died while starting says why), then the
        // watcher removes exactly that pane (see `dead_panes`).
        let died = super::dead_panes::hook();
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
        let sessions: Arc<Registry> = Arc::default();
        let users = Arc::new(Mutex::new(Users::load_or_draw(&private.join("uid-base"))?));
        let scope = Scope {
            reaper_file: private.join(super::reaper::PID_FILE),
            prefix: format!("{}/", root.join("s").display()),
            socket: tmux.socket().display().to_string(),
            users: users.clone(),
            sessions: sessions.clone(),
        };
        let (sweeps, sweep_rx) = mpsc::unbounded_channel();
        tokio::spawn(sweep_processes(scope.clone(), sweep_rx));
        let shim = Shim {
            root,
            private,
            tmux,
            rc,
            exe,
            user_isolation,
            config,
            sessions,
            users,
            scope,
            waiters,
            deaths,
            sweeps,
            notes: Mutex::default(),
            ids: Mutex::default(),
            gateway: Arc::default(),
        };
        shim.replace_previous()?;
        shim.adopt().await;
        // After adopting: its first listing would remove a previous
        // helper's dead sessions before they were adopted.
        tokio::spawn(super::dead_panes::watch(
            shim.tmux.clone(),
            shim.deaths.clone(),
        ));
        Ok(shim)
    }

    /// Starts reading the completion FIFO of `session` (made by `open`).
    pub(super) fn listen(&self, session: &str) -> std::io::Result<Reader> {
        let receiver = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(self.fifo_path(session))?;
        Ok(Reader(tokio::spawn(read_completions(
            receiver,
            session.to_string(),
            self.waiters.clone(),
            self.deaths.clone(),
        ))))
    }

    pub(super) fn fifo_path(&self, session: &str) -> PathBuf {
        self.root.join("f").join(session)
    }

    pub(super) async fn handle(&self, op: Op) -> Reply {
        let result = match op {
            Op::Open(at) => self.open(at).await.map(|prepared| match prepared {
                Some(d) => Reply::Prepared {
                    prepare_s: d.as_secs_f64(),
                },
                None => Reply::Done,
            }),
            Op::Check(check) => self.check(check).await.map(Reply::Ran),
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
            Op::Remove { path } => blocking(move || super::prepare::remove(&path))
                .await
                .map(|()| Reply::Done),
            Op::List => self.list().await.map(|names| Reply::Sessions { names }),
            Op::Stats => self.stats().await.map(Reply::Stats),
            Op::GatewayOpen { port } => self
                .gateway
                .open(port)
                .await
                .map(|port| Reply::GatewayPort { port }),
            Op::GatewayNext { max } => Ok(Reply::Gateway {
                calls: self.gateway.next(max).await,
            }),
            Op::GatewayAnswer(answer) => self.gateway.answer(answer).map(|()| Reply::Done),
            Op::Shutdown => Ok(Reply::Done),
        };
        result.unwrap_or_else(OpError::into_reply)
    }

    pub(super) fn session_dir(&self, session: &str) -> PathBuf {
        self.root.join("s").join(session)
    }

    /// Opens a session; with `prepare`, says how long making its workdir
    /// ready took.
    async fn open(&self, at: Opening) -> Result<Option<Duration>, OpError> {
        let name = at.session.clone();
        let (state, prepared) = self.admit(at, true).await?;
        let mut state = state.lock().await;
        match self.spawn_shell(&name, &state).await {
            Ok((pane, shell)) => {
                state.pane = pane;
                self.set_shell(&name, &state, shell);
                Ok(prepared)
            }
            Err(e) => {
                drop(state);
                let _ = self.close(&name).await;
                Err(e)
            }
        }
    }

    /// Records the session's (new) shell: its pid and start time, the root
    /// of the session's process tree (the shell is a subreaper).
    pub(super) fn set_shell(&self, name: &str, state: &SessionState, shell: Option<(u32, u64)>) {
        self.ids
            .lock()
            .expect("ids lock")
            .insert(name.to_string(), (state.uid, shell));
    }

    /// The session's shell, as last recorded.
    pub(super) fn shell_of(&self, name: &str) -> Option<(u32, u64)> {
        self.ids
            .lock()
            .expect("ids lock")
            .get(name)
            .and_then(|ids| ids.1)
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
    pub(super) async fn close(&self, name: &str) -> Result<(), OpError> {
        check_name(name)?;
        let state = self.state(name).ok();
        // Wake a command still waiting on this session before taking its lock.
        self.forget(name);
        let (uid, shell) = self
            .ids
            .lock()
            .expect("ids lock")
            .remove(name)
            .unwrap_or_default();
        if let Some(uid) = uid {
            self.users.lock().expect("users lock").release(uid);
        }
        let killed = self.kill_tree(name, shell).await;
        // A command still running ends once its shell is killed.
        let _guard = match &state {
            Some(s) => Some(s.lock().await),
            None => None,
        };
        self.remove_session_files(name, None);
        self.notes.lock().expect("notes lock").remove(name);
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

    pub(super) async fn shutdown(&self) {
        // The server exits a moment after kill-server answers: wait for it,
        // so that "the job is over" means it is gone; then everything of
        // every session, and whatever is left below the helper.
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
                if !crate::workspace::procfs::is_running(pid) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        let scope = self.scope.clone();
        let _ = tokio::task::spawn_blocking(move || scope.sweep_all()).await;
        for d in ["s", "f", "p", "rc.bash"] {
            let p = self.root.join(d);
            let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
        }
    }
}
