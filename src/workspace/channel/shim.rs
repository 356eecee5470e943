//! The workspace helper (`convoy shim`): serves the protocol of
//! [`super::protocol`] for one private tmux server.
//!
//! How a command runs: the command text goes to `s/NAME/K.cmd`; the helper
//! types one line into the session's shell:
//!
//! ```text
//!  __convoy_seq=K; { . "$__convoy_dir/K.cmd"; } </dev/null >"$__convoy_dir/K.out" 2>&1
//! ```
//!
//! The shell sources the file in its own process, so `cd` and `export`
//! persist; stdin is /dev/null; stdout and stderr go to a file byte for
//! byte. When the shell is back at its prompt, its `PROMPT_COMMAND` writes
//! the completion record `NAME K STATUS` to one FIFO shared by all sessions
//! (one short write is atomic). The helper reads that FIFO and wakes the
//! request waiting for `(NAME, K)`. That works the same after C-c, since the
//! prompt comes back, and the shell's EXIT trap writes the record if the
//! command ends the shell.
//!
//! Every process a session starts carries `CONVOY_SESSION_DIR=ROOT/s/NAME`
//! and `CONVOY_FIFO=ROOT/done.fifo` in its environment (unique to this
//! helper); closing the session kills the tmux session, then every process
//! with that marker (so `nohup` and `setsid` children go too).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::sync::{mpsc, oneshot};

use super::protocol::{
    Hello, Op, Reply, Request, Response, RunOutput, WorkspaceStats, HELLO, PROTOCOL_VERSION,
};
use super::tmux::{self, Tmux};

/// How long C-c gets to stop a timed-out command before its process group
/// is killed, and the kill before the shell is replaced.
const INTERRUPT_GRACE: Duration = Duration::from_secs(2);

/// How long a new session's shell may take to start.
const SHELL_START_TIMEOUT: Duration = Duration::from_secs(30);

pub const RC: &str = r#"# convoy session shell (see convoy's workspace::channel::shim)
unset HISTFILE
HISTSIZE=50
PS1='$ '
PS2=''
__convoy_dir=$CONVOY_SESSION_DIR
__convoy_seq=
__convoy_done() {
  local rc=$?
  if [ -n "$__convoy_seq" ]; then
    printf '%s %s %s %s\n' "$CONVOY_SESSION" "$__convoy_seq" "$rc" "${1:-prompt}" >"$CONVOY_FIFO"
    __convoy_seq=
  fi
}
PROMPT_COMMAND=__convoy_done
trap '__convoy_done exit' EXIT
# Tell the helper this shell is up (sequence 0 is the ready record).
printf '%s 0 0 ready\n' "$CONVOY_SESSION" >"$CONVOY_FIFO"
"#;

/// Completion records waiting to be claimed, keyed by (session, sequence).
type Waiters = Arc<Mutex<HashMap<(String, u64), oneshot::Sender<Completion>>>>;

#[derive(Debug, Clone, Copy)]
struct Completion {
    status: i32,
    shell_exited: bool,
}

/// What it takes to start a session's shell again, kept beside it so a
/// new helper can adopt the session.
#[derive(serde::Serialize, serde::Deserialize)]
struct SessionMeta {
    workdir: Option<String>,
    env: Vec<(String, String)>,
}

struct SessionState {
    seq: u64,
    dir: PathBuf,
    workdir: Option<String>,
    env: Vec<(String, String)>,
    /// The shell exited during the last command; start a new one first.
    dead: bool,
}

struct Shim {
    root: PathBuf,
    tmux: Tmux,
    fifo: PathBuf,
    rc: PathBuf,
    sessions: Mutex<HashMap<String, Arc<tokio::sync::Mutex<SessionState>>>>,
    waiters: Waiters,
    /// Markers of closed sessions whose processes must die; answered once
    /// the sweep is done.
    sweeps: mpsc::UnboundedSender<(String, oneshot::Sender<()>)>,
}

/// Runs the helper until stdin closes or `shutdown` arrives. With
/// `keep_on_eof`, a closed stdin leaves the sessions for the next helper.
pub async fn serve(root: PathBuf, keep_on_eof: bool) -> anyhow::Result<()> {
    let shim = Arc::new(Shim::start(root).await?);
    // A dead tmux server takes every session with it: clean up and end
    // this helper, so convoy starts a new one (see `server_watch`).
    let server = super::server_watch::server_pid(&shim.tmux).await;
    let watch = server.map(|pid| {
        let shim = shim.clone();
        tokio::spawn(async move {
            super::server_watch::gone(pid).await;
            eprintln!("the tmux server (pid {pid}) died; this helper ends so that a new one starts a new server");
            shim.shutdown().await;
            std::process::exit(3);
        })
    });

    let (tx, mut rx) = mpsc::unbounded_channel::<Response>();
    let mut stdout = stdio_writer();
    let hello = Hello {
        hello: HELLO.to_string(),
        version: PROTOCOL_VERSION,
        pid: std::process::id(),
    };
    let mut line = serde_json::to_vec(&hello)?;
    line.push(b'\n');
    stdout.write_all(&line).await?;
    stdout.flush().await?;

    // One writer: responses are batched into as few writes as possible.
    let writer = tokio::spawn(async move {
        let mut buf = Vec::new();
        while let Some(first) = rx.recv().await {
            buf.clear();
            let mut next = Some(first);
            while let Some(resp) = next {
                serde_json::to_writer(&mut buf, &resp).expect("responses serialize");
                buf.push(b'\n');
                next = rx.try_recv().ok();
            }
            if stdout.write_all(&buf).await.is_err() || stdout.flush().await.is_err() {
                break;
            }
        }
    });

    let mut lines = BufReader::new(stdio_reader()).lines();
    let mut shutdown_id = None;
    while let Some(line) = lines.next_line().await.context("reading requests")? {
        if line.trim().is_empty() {
            continue;
        }
        let req: Request = match serde_json::from_str(&line) {
            Ok(r) => r,
            Err(e) => {
                let id = serde_json::from_str::<serde_json::Value>(&line)
                    .ok()
                    .and_then(|v| v.get("id")?.as_u64())
                    .unwrap_or(0);
                let message = format!("bad request: {e}");
                let _ = tx.send(Response {
                    id,
                    reply: Reply::Error { message },
                });
                continue;
            }
        };
        if req.op == Op::Shutdown {
            shutdown_id = Some(req.id);
            break;
        }
        let shim = shim.clone();
        let tx = tx.clone();
        tokio::spawn(async move {
            let reply = shim.handle(req.op).await;
            // A reply made while the server died (a shell that "exited"
            // by its hangup) is not the command's: the helper is ending,
            // and the broken stream fails the request as retryable.
            if server.is_some_and(super::server_watch::is_gone) {
                return;
            }
            let _ = tx.send(Response { id: req.id, reply });
        });
    }

    // From here on the server goes on purpose.
    if let Some(w) = watch {
        w.abort();
    }
    if shutdown_id.is_some() || !keep_on_eof {
        shim.shutdown().await;
    }
    if let Some(id) = shutdown_id {
        let _ = tx.send(Response {
            id,
            reply: Reply::Done,
        });
    }
    drop(tx);
    // Requests still running hold senders; give the writer a moment to
    // flush the shutdown reply, never forever.
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    Ok(())
}

impl Shim {
    async fn start(root: PathBuf) -> anyhow::Result<Shim> {
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
        if let Err(e) = tmux.start_control().await {
            eprintln!("{e}; falling back to one tmux client per call");
        }

        let waiters: Waiters = Arc::default();
        // Read-write, so the FIFO never reports EOF when no shell has it
        // open and writers never block for lack of a reader.
        let receiver = tokio::net::unix::pipe::OpenOptions::new()
            .read_write(true)
            .open_receiver(&fifo)
            .with_context(|| format!("cannot open FIFO {}", fifo.display()))?;
        tokio::spawn(read_completions(receiver, waiters.clone()));

        let (sweeps, sweep_rx) = mpsc::unbounded_channel();
        tokio::spawn(sweep_processes(sweep_rx));
        let shim = Shim {
            root,
            tmux,
            fifo,
            rc,
            sessions: Mutex::default(),
            waiters,
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
            .and_then(|s| s.trim().parse::<i32>().ok())
            .filter(|&pid| pid != std::process::id() as i32)
        {
            let cmdline = std::fs::read(format!("/proc/{old}/cmdline")).unwrap_or_default();
            if String::from_utf8_lossy(&cmdline).contains("shim") {
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(old),
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
            sessions.insert(
                name,
                Arc::new(tokio::sync::Mutex::new(SessionState {
                    seq,
                    dir,
                    workdir: meta.workdir,
                    env: meta.env,
                    dead: false,
                })),
            );
        }
        if !sessions.is_empty() {
            eprintln!("adopted {} sessions of the previous helper", sessions.len());
        }
    }

    async fn handle(&self, op: Op) -> Reply {
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
        result.unwrap_or_else(|message| Reply::Error { message })
    }

    /// The environment entry every process of `session` carries. It names
    /// this helper's root, so two convoy runs on one host never match each
    /// other's sessions.
    fn marker(&self, session: &str) -> String {
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
    ) -> Result<(), String> {
        check_name(&name)?;
        if let Some(w) = &workdir {
            if !Path::new(w).is_dir() {
                return Err(format!("workdir `{w}` is not a directory"));
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
                return Err(format!("session `{name}` exists already"));
            }
            sessions.insert(
                name.clone(),
                Arc::new(tokio::sync::Mutex::new(SessionState {
                    seq: 0,
                    dir: dir.clone(),
                    workdir,
                    env,
                    dead: false,
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
            .map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let state = self.state(&name)?;
        let state = state.lock().await;
        let result = self.spawn_shell(&name, &state).await;
        if result.is_err() {
            drop(state);
            self.forget(&name);
        }
        result
    }

    async fn spawn_shell(&self, name: &str, state: &SessionState) -> Result<(), String> {
        let mut args: Vec<String> = vec![
            "new-session".into(),
            "-d".into(),
            "-s".into(),
            name.into(),
            "-x".into(),
            "250".into(),
            "-y".into(),
            "50".into(),
        ];
        if let Some(w) = &state.workdir {
            args.extend(["-c".into(), w.clone()]);
        }
        let fixed = [
            ("CONVOY_SESSION", name.to_string()),
            ("CONVOY_SESSION_DIR", state.dir.display().to_string()),
            ("CONVOY_FIFO", self.fifo.display().to_string()),
        ];
        for (k, v) in state
            .env
            .iter()
            .cloned()
            .chain(fixed.map(|(k, v)| (k.to_string(), v)))
        {
            args.extend(["-e".into(), format!("{k}={v}")]);
        }
        args.push(format!(
            "exec bash --noprofile --rcfile '{}' -i",
            self.rc.display()
        ));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // The shell announces itself once its rc file ran; a shell that
        // cannot start (no processes or file handles left in the
        // workspace) is an error here, not a mystery on the first command.
        let (tx, rx) = oneshot::channel();
        let key = (name.to_string(), 0);
        self.waiters
            .lock()
            .expect("waiters lock")
            .insert(key.clone(), tx);
        if let Err(e) = self.tmux.call(&args).await {
            self.waiters.lock().expect("waiters lock").remove(&key);
            return Err(e);
        }
        match tokio::time::timeout(SHELL_START_TIMEOUT, rx).await {
            Ok(Ok(_)) => Ok(()),
            _ => {
                self.waiters.lock().expect("waiters lock").remove(&key);
                let _ = self.kill_tree(name).await;
                Err(format!(
                    "the shell of session `{name}` did not start within {}s; the workspace may be \
                     out of processes or open files (see README, \"Docker workspace\")",
                    SHELL_START_TIMEOUT.as_secs()
                ))
            }
        }
    }

    fn state(&self, name: &str) -> Result<Arc<tokio::sync::Mutex<SessionState>>, String> {
        self.sessions
            .lock()
            .expect("sessions lock")
            .get(name)
            .cloned()
            .ok_or_else(|| format!("no session `{name}`"))
    }

    fn forget(&self, name: &str) {
        self.sessions.lock().expect("sessions lock").remove(name);
        self.waiters
            .lock()
            .expect("waiters lock")
            .retain(|(s, _), _| s != name);
    }

    async fn run(
        &self,
        name: &str,
        command: &str,
        timeout: Duration,
        max_output_bytes: u64,
    ) -> Result<RunOutput, String> {
        let state = self.state(name)?;
        let mut st = state.lock().await;
        let mut out = RunOutput::default();
        if st.dead {
            self.spawn_shell(name, &st).await?;
            st.dead = false;
            out.shell_restarted = true;
        }
        st.seq += 1;
        let k = st.seq;
        let cmd_file = st.dir.join(format!("{k}.cmd"));
        let out_file = st.dir.join(format!("{k}.out"));
        std::fs::write(&cmd_file, command).map_err(|e| format!("cannot write command: {e}"))?;

        let (tx, mut rx) = oneshot::channel();
        self.waiters
            .lock()
            .expect("waiters lock")
            .insert((name.to_string(), k), tx);
        let line = format!(
            " __convoy_seq={k}; {{ . \"$__convoy_dir/{k}.cmd\"; }} </dev/null >\"$__convoy_dir/{k}.out\" 2>&1"
        );
        let target = format!("={name}:");
        let mut sent = self.send_line(&target, &line).await;
        if let Some(e) = sent.as_ref().err().filter(|e| tmux::is_missing(e)) {
            // The shell is gone (killed from outside): start a new one.
            eprintln!("session `{name}`: its shell is gone ({e}); starting a new one");
            self.spawn_shell(name, &st).await?;
            out.shell_restarted = true;
            sent = self.send_line(&target, &line).await;
        }
        if let Err(e) = sent {
            self.waiters
                .lock()
                .expect("waiters lock")
                .remove(&(name.to_string(), k));
            return Err(format!("cannot type into session `{name}`: {e}"));
        }

        let done = match tokio::time::timeout(timeout, &mut rx).await {
            Ok(done) => done.ok(),
            Err(_) => {
                out.timed_out = true;
                self.interrupt(&target, &mut rx, &mut out).await
            }
        };
        match done {
            Some(c) => {
                out.exit_code = c.status;
                out.shell_exited = c.shell_exited;
                st.dead = c.shell_exited;
            }
            None if out.timed_out => {
                // Neither C-c nor killing the foreground group brought the
                // prompt back: replace the shell.
                self.waiters
                    .lock()
                    .expect("waiters lock")
                    .remove(&(name.to_string(), k));
                let _ = self.kill_tree(name).await;
                st.dead = true;
                out.exit_code = -1;
                out.shell_exited = true;
            }
            None => return Err(format!("session `{name}` was closed while the command ran")),
        }
        let (text, omitted) = read_capped(&out_file, max_output_bytes);
        out.output = text;
        out.omitted_bytes = omitted;
        let _ = std::fs::remove_file(&cmd_file);
        let _ = std::fs::remove_file(&out_file);
        Ok(out)
    }

    async fn send_line(&self, target: &str, line: &str) -> Result<(), String> {
        self.tmux
            // One command: a string that names no key is typed as it is.
            .call(&["send-keys", "-t", target, line, "Enter"])
            .await
            .map(drop)
    }

    /// C-c, then SIGKILL to the foreground process group; the completion
    /// record if either brought the prompt back.
    async fn interrupt(
        &self,
        target: &str,
        rx: &mut oneshot::Receiver<Completion>,
        out: &mut RunOutput,
    ) -> Option<Completion> {
        if self
            .tmux
            .call(&["send-keys", "-t", target, "C-c"])
            .await
            .is_ok()
        {
            if let Ok(done) = tokio::time::timeout(INTERRUPT_GRACE, &mut *rx).await {
                return done.ok();
            }
        }
        let pane = self
            .tmux
            .call(&["display-message", "-p", "-t", target, "#{pane_pid}"])
            .await
            .ok()?;
        let shell: i32 = pane.trim().parse().ok()?;
        if let Some(group) = tmux::foreground_group(shell) {
            tmux::kill_group(group);
            out.killed = true;
        }
        tokio::time::timeout(INTERRUPT_GRACE, &mut *rx)
            .await
            .ok()?
            .ok()
    }

    /// Idempotent: closing a session that is gone (or that a previous
    /// helper owned) still sweeps its processes and files.
    async fn close(&self, name: &str) -> Result<(), String> {
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

    /// Kills the tmux session, then every process that carries its marker.
    async fn kill_tree(&self, name: &str) -> Result<(), String> {
        let killed = self
            .tmux
            .call(&["kill-session", "-t", &format!("={name}")])
            .await;
        let (tx, rx) = oneshot::channel();
        self.sweeps
            .send((self.marker(name), tx))
            .map_err(|_| "the process sweeper stopped".to_string())?;
        rx.await
            .map_err(|_| "the process sweeper stopped".to_string())?;
        match killed {
            Err(e) if !tmux::is_missing(&e) => Err(format!("kill-session `{name}`: {e}")),
            _ => Ok(()),
        }
    }

    async fn list(&self) -> Result<Vec<String>, String> {
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
            Err(e) if tmux::is_missing(&e) => Ok(Vec::new()),
            Err(e) => Err(e),
        }
    }

    async fn stats(&self) -> Result<WorkspaceStats, String> {
        let sessions = self.list().await?;
        let marker = self.run_marker();
        let prefix = format!("{}/", self.root.join("s").display());
        let procs = tokio::task::spawn_blocking(move || tmux::run_processes(&marker))
            .await
            .map_err(|e| format!("process scan failed: {e}"))?;
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

    async fn shutdown(&self) {
        // The server exits a moment after kill-server answers: wait for it
        // (then make sure), so that "the job is over" means it is gone.
        let server = self
            .tmux
            .call(&["display-message", "-p", "#{pid}"])
            .await
            .ok()
            .and_then(|p| p.trim().parse::<i32>().ok());
        self.tmux.stop_control().await;
        let _ = self.tmux.spawn_call(&["kill-server"]).await;
        if let Some(pid) = server {
            let alive =
                || std::path::Path::new(&format!("/proc/{pid}")).exists() && !is_zombie(pid);
            for _ in 0..100 {
                if !alive() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            if alive() {
                tmux::kill_group(pid);
                let _ = nix::sys::signal::kill(
                    nix::unistd::Pid::from_raw(pid),
                    nix::sys::signal::Signal::SIGKILL,
                );
            }
        }
        let markers = [self.run_marker()].into_iter().collect();
        let _ = tokio::task::spawn_blocking(move || tmux::kill_marked(&markers)).await;
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

/// Stdin as a non-blocking pipe when it is one (it is, under convoy and in
/// a non-TTY `docker exec`): tokio's own stdin reads on a blocking thread,
/// which adds a thread hand-off to every request.
fn stdio_reader() -> Box<dyn tokio::io::AsyncRead + Unpin + Send> {
    use std::os::fd::AsFd;
    std::io::stdin()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| tokio::net::unix::pipe::Receiver::from_owned_fd(fd).ok())
        .map_or_else(
            || Box::new(tokio::io::stdin()) as Box<dyn tokio::io::AsyncRead + Unpin + Send>,
            |p| Box::new(p),
        )
}

/// Stdout likewise, for every response.
fn stdio_writer() -> Box<dyn tokio::io::AsyncWrite + Unpin + Send> {
    use std::os::fd::AsFd;
    std::io::stdout()
        .as_fd()
        .try_clone_to_owned()
        .ok()
        .and_then(|fd| tokio::net::unix::pipe::Sender::from_owned_fd(fd).ok())
        .map_or_else(
            || Box::new(tokio::io::stdout()) as Box<dyn tokio::io::AsyncWrite + Unpin + Send>,
            |p| Box::new(p),
        )
}

/// Kills the processes of closed sessions. Closes that queue up while a
/// sweep runs share the next one: one /proc pass for all of them.
async fn sweep_processes(mut rx: mpsc::UnboundedReceiver<(String, oneshot::Sender<()>)>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while let Ok(more) = rx.try_recv() {
            batch.push(more);
        }
        let markers: std::collections::HashSet<String> =
            batch.iter().map(|(m, _)| m.clone()).collect();
        let _ = tokio::task::spawn_blocking(move || tmux::kill_marked(&markers)).await;
        for (_, done) in batch {
            let _ = done.send(());
        }
    }
}

/// A process that has exited but not been reaped yet.
fn is_zombie(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(") ").map(|(_, rest)| rest.starts_with('Z')))
        .unwrap_or(false)
}

/// Session names become tmux targets and directory names.
fn check_name(name: &str) -> Result<(), String> {
    let ok = !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_');
    if ok {
        Ok(())
    } else {
        Err(format!("invalid session name `{name}`"))
    }
}

/// Reads completion records (`NAME K STATUS prompt|exit`) and wakes their
/// waiters.
async fn read_completions(receiver: tokio::net::unix::pipe::Receiver, waiters: Waiters) {
    let mut lines = BufReader::new(receiver).lines();
    while let Ok(Some(line)) = lines.next_line().await {
        let mut parts = line.split(' ');
        let (Some(name), Some(seq), Some(status)) = (parts.next(), parts.next(), parts.next())
        else {
            continue;
        };
        let (Ok(seq), Ok(status)) = (seq.parse::<u64>(), status.parse::<i32>()) else {
            continue;
        };
        let shell_exited = parts.next() == Some("exit");
        let waiter = waiters
            .lock()
            .expect("waiters lock")
            .remove(&(name.to_string(), seq));
        if let Some(tx) = waiter {
            let _ = tx.send(Completion {
                status,
                shell_exited,
            });
        }
    }
}

/// The file's text, keeping head and tail when it is longer than `max`;
/// returns the text and how many bytes were left out.
fn read_capped(path: &Path, max: u64) -> (String, u64) {
    use std::io::{Read, Seek, SeekFrom};
    let Ok(mut f) = std::fs::File::open(path) else {
        return (String::new(), 0);
    };
    let len = f.metadata().map(|m| m.len()).unwrap_or(0);
    if len <= max {
        let mut buf = Vec::with_capacity(len as usize);
        let _ = f.read_to_end(&mut buf);
        return (String::from_utf8_lossy(&buf).into_owned(), 0);
    }
    let half = max / 2;
    let mut head = vec![0; half as usize];
    let mut tail = vec![0; (max - half) as usize];
    let ok = f.read_exact(&mut head).is_ok()
        && f.seek(SeekFrom::Start(len - (max - half))).is_ok()
        && f.read_exact(&mut tail).is_ok();
    if !ok {
        return (String::new(), len);
    }
    let omitted = len - max;
    let mut text = String::from_utf8_lossy(&head).into_owned();
    text.push_str(&format!("\n[... {omitted} bytes of output omitted ...]\n"));
    text.push_str(&String::from_utf8_lossy(&tail));
    (text, omitted)
}
