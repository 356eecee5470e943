//! How a run is stopped. Two levels, in order: `drain` stops dispatching new
//! tasks (in-flight conversations go on), `cancel` stops in-flight ones too.
//! A fatal error (credentials rejected) drains and remembers why. After a
//! cancel, `exit_after` bounds how long the workspace may take to shut down.

use std::sync::Mutex;

use tokio_util::sync::CancellationToken;

#[derive(Debug, Default)]
pub struct Control {
    pub drain: CancellationToken,
    pub cancel: CancellationToken,
    fatal: Mutex<Option<String>>,
    stopped: Mutex<Option<String>>,
    interrupted: std::sync::atomic::AtomicBool,
}

impl Control {
    /// Stop dispatching; in-flight conversations finish.
    pub fn drain(&self) {
        self.drain.cancel();
    }

    /// Stop everything now (implies drain).
    pub fn cancel(&self) {
        self.drain.cancel();
        self.cancel.cancel();
    }

    /// A signal asked the run to stop.
    pub fn interrupt(&self) {
        self.interrupted
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    pub fn interrupted(&self) -> bool {
        self.interrupted.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// No other task can succeed (e.g. the API key was rejected): stop
    /// dispatching and keep the first reason.
    pub fn fatal(&self, reason: String) {
        let mut f = self.fatal.lock().expect("fatal lock");
        if f.is_none() {
            tracing::error!("stopping the job: {reason}");
            *f = Some(reason);
        }
        drop(f);
        self.drain();
    }

    /// A limit of the job was reached (e.g. its token budget): stop
    /// dispatching, let what runs finish, and say why at the end.
    pub fn stop(&self, reason: String) {
        let mut s = self.stopped.lock().expect("stop lock");
        if s.is_none() {
            tracing::warn!("no new tasks start: {reason}");
            *s = Some(reason);
        }
        drop(s);
        self.drain();
    }

    pub fn stop_reason(&self) -> Option<String> {
        self.stopped.lock().expect("stop lock").clone()
    }

    pub fn fatal_reason(&self) -> Option<String> {
        self.fatal.lock().expect("fatal lock").clone()
    }
}

/// After cancelling, the workspace's own cleanup is bounded step by step
/// (well within this); past it, whatever the workspace does, convoy removes
/// what it owns and exits.
pub const SHUTDOWN_BOUND: std::time::Duration = std::time::Duration::from_secs(75);
/// The forced removal itself (a container, or the local workspace).
const FORCED_CLEANUP_BOUND: std::time::Duration = std::time::Duration::from_secs(15);

/// Sleeps `bound`, then removes what this convoy owns and exits with
/// `code`: the last resort, for a workspace that does not shut down.
pub async fn exit_after(bound: std::time::Duration, code: u8) {
    tokio::time::sleep(bound).await;
    tracing::error!(
        "the workspace did not shut down within {}s of the cancel; removing it and exiting",
        bound.as_secs()
    );
    match tokio::time::timeout(FORCED_CLEANUP_BOUND, crate::workspace::sweep::remove_own()).await {
        Ok(()) => {}
        Err(_) => tracing::error!(
            "removing the workspace took more than {}s; it may be left behind (`convoy sweep` removes it)",
            FORCED_CLEANUP_BOUND.as_secs()
        ),
    }
    std::process::exit(i32::from(code));
}
