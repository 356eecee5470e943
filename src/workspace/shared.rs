//! One container of the job's workspace (the whole of it unless
//! `workspace.containers` asks for a fleet, see `fleet`), shared by the
//! conversations sent to it: boot, open sessions, reap, supervise (recover
//! a broken link), finish, shut down.
//! The session logic is the same for every backend, since all of it goes
//! through the link; backends differ only in where the helper runs.

use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};

use super::channel::protocol::{ErrorKind, Op, Reply, WorkspaceStats};
use super::channel::{ChannelError, Link};
use super::docker::DockerBackend;
use super::env::resolve;
use super::error::WorkspaceError;
use super::local::LocalBackend;
use crate::manifest::{Job, WorkspaceKind};
use crate::monitor::LiveCount;

enum ReapMsg {
    Close(String),
    Flush(oneshot::Sender<()>),
}

/// How long a request waits for a broken link to be recovered.
const RECOVERY_WAIT: Duration = Duration::from_secs(120);
/// Recovery attempts before the workspace counts as lost.
const RECOVERY_ATTEMPTS: u32 = 5;
/// The helper is asked for a sign of life this often...
pub const HEARTBEAT_EVERY: Duration = Duration::from_secs(5);
/// ...and is replaced like a broken one when it does not answer in this.
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(10);
/// Requests that should be quick (list, stats, close) give up after this:
/// a stopped tmux server must not hold the monitor or the cleanup.
const QUICK_WAIT: Duration = Duration::from_secs(10);
/// The whole of `finish` (reaper flush, stray sessions and processes).
const FINISH_WAIT: Duration = Duration::from_secs(20);
/// A new helper must say hello within this (a stopped tmux server can hold
/// its start), or the recovery attempt fails.
pub(super) const HELLO_WAIT: Duration = Duration::from_secs(30);
/// The helper's own shutdown, before its process is killed.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// State shared by the workspace and its sessions.
pub(super) struct Inner {
    /// The current link; the supervisor replaces it after a break.
    link: watch::Sender<Arc<Link>>,
    /// Links replaced so far; changed only with the link's lock held.
    replaced: AtomicU64,
    /// Set when recovery gave up.
    lost: Mutex<Option<String>>,
    /// Containers of the fleet not given up on (this one included while
    /// it is not): while others are, a request to this one after it was
    /// given up on fails as a retryable workspace failure (its task runs
    /// again elsewhere), not as the job's end.
    alive: Arc<AtomicUsize>,
    /// Numbers sessions, shared by the fleet's members so that a session's
    /// name is unique in the job.
    pub(super) counter: Arc<AtomicU64>,
    pub(super) workdir: Option<String>,
    /// What the manifest gives every session (`pass_env`, `env`).
    pub(super) env: Vec<(String, String)>,
    reap_tx: mpsc::UnboundedSender<ReapMsg>,
    /// Sessions a conversation owns right now.
    pub(super) open: Mutex<HashSet<String>>,
    /// Sessions closed by the reaper rather than by their conversation.
    reaped: AtomicUsize,
    /// Sessions alive in the workspace (opened and not yet closed), with
    /// their peak between the monitor's samples.
    pub(super) sessions: LiveCount,
    /// Test-only: never close sessions (CONVOY_TEST_LEAK=session).
    leak_sessions: bool,
    /// Test-only: leak one file descriptor per closed session
    /// (CONVOY_TEST_LEAK=fd).
    leak_fds: bool,
}

impl Inner {
    /// Sends one request on the current link. While the link is broken
    /// (the supervisor is recovering it) the request waits; requests that
    /// were in flight when it broke fail with a retryable error.
    pub(super) async fn call(&self, op: Op) -> Result<Reply, WorkspaceError> {
        let link = self.healthy_link().await?;
        Ok(link.call(op).await?)
    }

    /// `call` for requests that answer at once when the workspace is well:
    /// past `QUICK_WAIT` they fail instead of waiting on a stuck one.
    async fn quick_call(&self, op: Op) -> Result<Reply, WorkspaceError> {
        let what = format!("{op:?}");
        tokio::time::timeout(QUICK_WAIT, self.call(op))
            .await
            .unwrap_or_else(|_| {
                // A helper that does not answer is as good as lost; the
                // heartbeat replaces it.
                Err(WorkspaceError::Helper {
                    kind: ErrorKind::HelperLost,
                    message: format!("no answer within {}s to {what}", QUICK_WAIT.as_secs()),
                })
            })
    }

    /// Failures of the workspace so far: links replaced, plus one while
    /// the current link is broken. Monotone: a waiting request that failed
    /// because the link broke sees the count include that break.
    fn failures(&self) -> u64 {
        let link = self.link.borrow();
        self.replaced.load(Ordering::SeqCst) + u64::from(link.is_broken())
    }

    async fn healthy_link(&self) -> Result<Arc<Link>, WorkspaceError> {
        // The usual case, without subscribing to changes.
        let link = self.link.borrow().clone();
        if !link.is_broken() && self.lost.lock().expect("lost lock").is_none() {
            return Ok(link);
        }
        let mut rx = self.link.subscribe();
        let wait = async {
            loop {
                if let Some(reason) = self.lost.lock().expect("lost lock").clone() {
                    if self.alive.load(Ordering::SeqCst) > 0 {
                        return Err(WorkspaceError::Channel(ChannelError::Broken(format!(
                            "its container was written off ({reason})"
                        ))));
                    }
                    return Err(WorkspaceError::Lost(reason));
                }
                let link = rx.borrow_and_update().clone();
                if !link.is_broken() {
                    return Ok(link);
                }
                if rx.changed().await.is_err() {
                    return Err(WorkspaceError::Lost("the workspace shut down".into()));
                }
            }
        };
        tokio::time::timeout(RECOVERY_WAIT, wait)
            .await
            .unwrap_or_else(|_| {
                Err(WorkspaceError::Channel(ChannelError::Broken(
                    "the workspace helper was not back within 120s".into(),
                )))
            })
    }

    pub(super) async fn close_session(&self, name: &str) -> Result<(), WorkspaceError> {
        let reply = self
            .quick_call(Op::Close {
                session: name.to_string(),
            })
            .await;
        // Gone unless the helper answered that it failed: a broken or lost
        // link means the helper that held it is gone, and its sessions too.
        if !matches!(reply, Ok(Reply::Error { .. })) {
            self.sessions.dec();
        }
        let result = match reply? {
            Reply::Done => Ok(()),
            other => Err(WorkspaceError::unexpected(other)),
        };
        self.open.lock().expect("open lock").remove(name);
        result
    }

    /// Test-only (CONVOY_TEST_LEAK=session): conversations forget their
    /// session instead of closing it, so the leak rules have something to
    /// find. Returns whether it did.
    pub(super) fn leak_on_purpose(&self, name: &str) -> bool {
        if self.leak_sessions {
            self.open.lock().expect("open lock").remove(name);
        }
        self.leak_sessions
    }

    /// Test-only (CONVOY_TEST_LEAK=fd): each closed session leaves an
    /// open file behind, so the `fd_growth` rule has something to find.
    pub(super) fn leak_fd_on_purpose(&self) {
        if self.leak_fds {
            if let Ok(f) = std::fs::File::open("/dev/null") {
                std::mem::forget(f);
            }
        }
    }

    pub(super) fn reap(&self, name: String) {
        // The receiver lives as long as the workspace; if it is gone the
        // helper is gone too and its shutdown took the session with it.
        let _ = self.reap_tx.send(ReapMsg::Close(name));
    }
}

#[expect(
    clippy::large_enum_variant,
    reason = "one backend per job, never moved in a hot path"
)]
enum Backend {
    Local(LocalBackend),
    Docker(DockerBackend),
}

impl Backend {
    /// The open-files limit the container was granted (after the daemon
    /// clamped it); `None` for the local workspace.
    fn nofile(&self) -> Option<u64> {
        match self {
            Backend::Local(_) => None,
            Backend::Docker(b) => Some(b.nofile()),
        }
    }

    async fn recover(&mut self) -> Result<Link, WorkspaceError> {
        match self {
            Backend::Local(b) => b.recover().await,
            Backend::Docker(b) => b.recover().await,
        }
    }

    async fn stop(self) {
        match self {
            Backend::Local(b) => b.stop().await,
            Backend::Docker(b) => b.stop().await,
        }
    }
}

/// What shutdown found: sessions no conversation owned any more.
#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct ShutdownReport {
    /// Sessions closed by the reaper (their conversation was dropped).
    pub reaped: usize,
    /// Sessions still alive at the end that nobody had closed: leaks.
    pub stray_sessions: Vec<String>,
    /// Processes of sessions still running after every session closed.
    pub stray_processes: Vec<u32>,
    /// Checks that could not be made, and why: then empty `stray_*` prove
    /// nothing. The leak verdict says them (its `why`), so not serialized.
    #[serde(skip)]
    pub unchecked: Vec<String>,
}

/// One container (or the local workspace) and its helper.
pub(super) struct Member {
    pub(super) inner: Arc<Inner>,
    backend: Arc<tokio::sync::Mutex<Backend>>,
    reaper: tokio::task::JoinHandle<()>,
    supervisor: tokio::task::JoinHandle<()>,
}

impl Member {
    /// Boots one container (or the local workspace) as the manifest asks;
    /// `counter` numbers sessions across the fleet.
    pub async fn boot(
        job: &Job,
        run_label: &str,
        counter: Arc<AtomicU64>,
        engine: Option<&str>,
        alive: Arc<AtomicUsize>,
    ) -> Result<Member, WorkspaceError> {
        let spec = &job.manifest.workspace;
        let (backend, link, default_workdir) = match spec.kind {
            WorkspaceKind::Local => {
                let (b, c, w) = LocalBackend::start(spec).await?;
                (Backend::Local(b), c, w)
            }
            WorkspaceKind::Docker => {
                let (b, c, w) = DockerBackend::start(job, run_label, engine).await?;
                (Backend::Docker(b), c, PathBuf::from(w))
            }
        };
        let workdir = match &spec.workdir {
            // Inside the container the path is the container's.
            _ if spec.kind == WorkspaceKind::Docker => default_workdir,
            Some(w) => {
                let p = job.resolve(&PathBuf::from(w));
                p.canonicalize().map_err(|e| {
                    WorkspaceError::Boot(format!("workspace.workdir `{}`: {e}", p.display()))
                })?
            }
            None => default_workdir,
        };
        let (reap_tx, reap_rx) = mpsc::unbounded_channel();
        let inner = Arc::new(Inner {
            link: watch::Sender::new(Arc::new(link)),
            replaced: AtomicU64::new(0),
            lost: Mutex::default(),
            alive,
            counter,
            workdir: Some(workdir.display().to_string()),
            env: super::env::configured(spec),
            reap_tx,
            open: Mutex::default(),
            reaped: AtomicUsize::new(0),
            sessions: LiveCount::default(),
            leak_sessions: crate::test_hooks::leak() == Some(crate::test_hooks::Leak::Session),
            leak_fds: crate::test_hooks::leak() == Some(crate::test_hooks::Leak::Fd),
        });
        let reaper = tokio::spawn(reap(Arc::downgrade(&inner), reap_rx));
        let backend = Arc::new(tokio::sync::Mutex::new(backend));
        let supervisor = tokio::spawn(supervise(Arc::downgrade(&inner), backend.clone()));
        Ok(Member {
            inner,
            backend,
            reaper,
            supervisor,
        })
    }

    /// Removes a task's workdir (resolved as `open_session` does).
    pub async fn remove_dir(&self, workdir: &str) -> Result<(), WorkspaceError> {
        let path = resolve(self.inner.workdir.as_deref(), workdir);
        match self.inner.call(Op::Remove { path }).await? {
            Reply::Done => Ok(()),
            other => Err(WorkspaceError::unexpected(other)),
        }
    }

    /// Names of the tmux sessions alive in the workspace.
    pub async fn list_sessions(&self) -> Result<Vec<String>, WorkspaceError> {
        match self.inner.quick_call(Op::List).await? {
            Reply::Sessions { names } => Ok(names),
            other => Err(WorkspaceError::unexpected(other)),
        }
    }

    /// How many times the workspace failed so far (its helper or container
    /// died or stopped answering). An attempt during which this grew was
    /// cut short by the workspace, not by its task.
    pub fn failures(&self) -> u64 {
        self.inner.failures()
    }

    /// The workspace's shared state, for the gateway's polls.
    pub(super) fn inner(&self) -> Arc<Inner> {
        self.inner.clone()
    }

    /// The open-files limit its container was granted; `None` for the
    /// local workspace.
    pub async fn nofile(&self) -> Option<u64> {
        self.backend.lock().await.nofile()
    }

    /// Given up on after failed recoveries (its engine gone, say).
    pub fn written_off(&self) -> bool {
        self.inner.lost.lock().expect("lost lock").is_some()
    }

    /// Takes new conversations: not given up on, its link not broken.
    pub fn healthy(&self) -> bool {
        self.inner.lost.lock().expect("lost lock").is_none()
            && !self.inner.link.borrow().is_broken()
    }

    /// Sessions conversations own in it now (what the fleet balances).
    pub fn load(&self) -> usize {
        self.inner.open.lock().expect("open lock").len()
    }

    /// Sessions that conversations own right now.
    pub fn open_sessions(&self) -> HashSet<String> {
        self.inner.open.lock().expect("open lock").clone()
    }

    /// The most sessions alive at once since the last call (the monitor's
    /// samples miss what opens and closes between them).
    pub fn take_sessions_peak(&self) -> u64 {
        self.inner.sessions.take_peak()
    }

    /// A sample of the workspace for the monitor.
    pub async fn stats(&self) -> Result<WorkspaceStats, WorkspaceError> {
        match self.inner.quick_call(Op::Stats).await? {
            Reply::Stats(s) => Ok(s),
            other => Err(WorkspaceError::unexpected(other)),
        }
    }

    /// The end of the job's work: closes what the reaper still holds,
    /// then sweeps what nobody owns: sessions still alive, and processes of
    /// this workspace's sessions still running. Both are leaks and are
    /// reported. At most `FINISH_WAIT`: a workspace that does not answer
    /// leaves the rest to `shutdown`, which kills it.
    pub async fn finish(&self) -> ShutdownReport {
        let report = Mutex::new(ShutdownReport::default());
        if tokio::time::timeout(FINISH_WAIT, self.finish_into(&report))
            .await
            .is_err()
        {
            tracing::warn!(
                "the workspace did not finish its cleanup within {}s; shutting it down as it is",
                FINISH_WAIT.as_secs()
            );
            report.lock().expect("report lock").unchecked.push(format!(
                "the end-of-job cleanup did not finish within {}s",
                FINISH_WAIT.as_secs()
            ));
        }
        report.into_inner().expect("report lock")
    }

    /// `finish`, writing each finding into `out` as soon as it is known.
    async fn finish_into(&self, out: &Mutex<ShutdownReport>) {
        let (tx, rx) = oneshot::channel();
        if self.inner.reap_tx.send(ReapMsg::Flush(tx)).is_ok() {
            let _ = rx.await;
        }
        out.lock().expect("report lock").reaped = self.inner.reaped.load(Ordering::Relaxed);
        let unchecked = |why: String| {
            tracing::warn!("{why}; the leak verdict cannot be clean");
            out.lock().expect("report lock").unchecked.push(why);
        };
        let names = self.list_sessions().await.unwrap_or_else(|e| {
            unchecked(format!("the workspace could not be listed at the end: {e}"));
            Vec::new()
        });
        for name in names {
            tracing::warn!(
                "leak: tmux session `{name}` was still alive at the end of the job; closing it"
            );
            out.lock()
                .expect("report lock")
                .stray_sessions
                .push(name.clone());
            let _ = self.inner.close_session(&name).await;
        }
        let processes = self.stats().await.map(|s| s.processes).unwrap_or_else(|e| {
            unchecked(format!(
                "the workspace's processes could not be inspected at the end: {e}"
            ));
            Vec::new()
        });
        for (pid, session) in processes {
            let owner = session.as_deref().unwrap_or("no session");
            tracing::warn!("leak: process {pid} ({owner}) outlived its conversation; killing it");
            out.lock().expect("report lock").stray_processes.push(pid);
        }
    }

    /// Stops the helper (killing every process any session started) and
    /// releases the backend. Call `finish` first.
    pub async fn shutdown(self) {
        // The helper's exit must not look like a break to recover from.
        self.supervisor.abort();
        let _ = self.supervisor.await;
        if tokio::time::timeout(SHUTDOWN_WAIT, self.inner.call(Op::Shutdown))
            .await
            .is_err()
        {
            tracing::warn!(
                "the workspace helper did not shut down within {}s; killing it",
                SHUTDOWN_WAIT.as_secs()
            );
        }
        self.reaper.abort();
        let Member { inner, backend, .. } = self;
        // Dropping the last handle to the link closes the helper's stdin.
        drop(inner);
        match Arc::into_inner(backend) {
            Some(b) => b.into_inner().stop().await,
            None => tracing::warn!("the workspace backend is still in use at shutdown"),
        }
    }
}

/// Watches the link; when it breaks, or its helper stops answering the
/// heartbeat, recovers it through the backend (a new helper, or a new
/// container if the old one died). After `RECOVERY_ATTEMPTS` failures in a
/// row the workspace is lost.
async fn supervise(inner: std::sync::Weak<Inner>, backend: Arc<tokio::sync::Mutex<Backend>>) {
    loop {
        let Some(link) = inner.upgrade().map(|i| i.link.borrow().clone()) else {
            return;
        };
        tokio::select! {
            _ = link.closed() => tracing::warn!("the workspace link broke; recovering"),
            _ = heartbeat(&link) => {
                tracing::warn!(
                    "the workspace helper did not answer a heartbeat within {}s (stopped or wedged); replacing it",
                    HEARTBEAT_TIMEOUT.as_secs()
                );
                link.abandon();
            }
        }
        drop(link);
        let mut backend = backend.lock().await;
        let mut delay = Duration::from_secs(1);
        let mut attempt = 1;
        loop {
            match backend.recover().await {
                Ok(new) => {
                    let Some(inner) = inner.upgrade() else { return };
                    inner.link.send_modify(|l| {
                        *l = Arc::new(new);
                        inner.replaced.fetch_add(1, Ordering::SeqCst);
                    });
                    tracing::info!("the workspace is back");
                    break;
                }
                Err(e) if attempt >= RECOVERY_ATTEMPTS => {
                    let Some(inner) = inner.upgrade() else { return };
                    let left = inner.alive.fetch_sub(1, Ordering::SeqCst) - 1;
                    if left > 0 {
                        tracing::error!(
                            "writing off a workspace container after {attempt} failed recoveries ({e}); its conversations go on in the {left} left"
                        );
                    } else {
                        tracing::error!("giving up on the workspace after {attempt} attempts: {e}");
                    }
                    *inner.lost.lock().expect("lost lock") = Some(e.to_string());
                    // Wake everyone waiting for a healthy link.
                    inner.link.send_modify(|_| {});
                    return;
                }
                Err(e) => {
                    tracing::warn!(
                        "workspace recovery attempt {attempt} failed: {e}; again in {delay:?}"
                    );
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(30));
                    attempt += 1;
                }
            }
        }
    }
}

/// Returns when the helper leaves a ping unanswered for
/// `HEARTBEAT_TIMEOUT`. A ping that fails because the link broke is left
/// to `closed`.
async fn heartbeat(link: &Link) {
    loop {
        tokio::time::sleep(HEARTBEAT_EVERY).await;
        if tokio::time::timeout(HEARTBEAT_TIMEOUT, link.ping())
            .await
            .is_err()
        {
            return;
        }
    }
}

/// Closes dropped sessions, all at once: after a cancel hundreds may come
/// together, and each close is bounded (`QUICK_WAIT`), not their sum.
async fn reap(inner: std::sync::Weak<Inner>, mut rx: mpsc::UnboundedReceiver<ReapMsg>) {
    let mut closing = tokio::task::JoinSet::new();
    while let Some(msg) = rx.recv().await {
        match msg {
            ReapMsg::Close(name) => {
                let Some(inner) = inner.upgrade() else { return };
                closing.spawn(async move {
                    match inner.close_session(&name).await {
                        Ok(()) => {
                            inner.reaped.fetch_add(1, Ordering::Relaxed);
                            tracing::debug!("reaper closed session `{name}`");
                        }
                        Err(e) => tracing::warn!("reaper could not close session `{name}`: {e}"),
                    }
                });
            }
            ReapMsg::Flush(done) => {
                while closing.join_next().await.is_some() {}
                let _ = done.send(());
            }
        }
        while closing.try_join_next().is_some() {}
    }
}
