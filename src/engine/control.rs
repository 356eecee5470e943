//! How a run is steered and stopped. Everything that steers it (signals,
//! `convoy ctl`, a reporter that can no longer record, the dispatcher's
//! own budget and outage checks) sends a `Command` through an
//! `EngineHandle`; one loop applies them in order and emits each as an
//! event. Stopping has two levels: `drain` stops dispatching (in-flight
//! conversations go on), `cancel` stops in-flight ones too. After a
//! cancel by signal, `exit_after` bounds how long shutdown may take.

use std::time::Duration;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};

use crate::events::CancelReason;

/// A request to the engine.
#[derive(Debug)]
pub enum Command {
    /// Stop dispatching (`reason` Budget or Outage), or on a signal,
    /// drain and cancel after the grace.
    Stop {
        reason: CancelReason,
        detail: String,
    },
    /// SIGINT or SIGTERM arrived.
    Signal,
    /// The grace after the first signal ran out.
    GraceOver,
    /// The run is ending: what was sent before this is applied, nothing
    /// after (the engine sends it itself).
    End,
    Pause,
    Resume,
    Workers(usize),
    /// Cancel one in-flight conversation.
    Cancel {
        id: String,
        reply: oneshot::Sender<Result<(), String>>,
    },
    Status(oneshot::Sender<StatusReport>),
}

/// What `convoy ctl RUN_DIR status` prints.
#[derive(Debug, Clone, Serialize)]
pub struct StatusReport {
    pub in_flight: u64,
    pub done: u64,
    pub failed: u64,
    pub paused: bool,
    pub workers: usize,
    /// The conversations that have waited longest on their current step.
    pub slowest: Vec<Waiting>,
}

/// One in-flight conversation, as `status` shows it.
#[derive(Debug, Clone, Serialize)]
pub struct Waiting {
    pub id: String,
    pub attempt: u32,
    /// Model turns so far.
    pub step: u32,
    /// `model`, `command` or `session` (opening its session).
    pub waiting_on: &'static str,
    /// The command running, when `waiting_on` is `command`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
    pub waited_s: f64,
}

/// Sends commands to a running engine; cheap to clone. Sending to an
/// engine that has ended does nothing.
#[derive(Debug, Clone)]
pub struct EngineHandle {
    tx: mpsc::UnboundedSender<Command>,
}

/// The engine's command channel, made before the engine so that what
/// arrives early (a signal while the workspace boots) is kept and applied
/// before the first dispatch.
#[derive(Debug)]
pub struct Steering {
    handle: EngineHandle,
    pub(super) commands: mpsc::UnboundedReceiver<Command>,
}

impl Steering {
    pub fn new() -> Steering {
        let (tx, commands) = mpsc::unbounded_channel();
        Steering {
            handle: EngineHandle { tx },
            commands,
        }
    }

    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }
}

impl Default for Steering {
    fn default() -> Steering {
        Steering::new()
    }
}

impl EngineHandle {
    pub fn send(&self, command: Command) {
        let _ = self.tx.send(command);
    }

    /// No further task starts, for `reason`; what runs finishes.
    pub fn stop(&self, reason: CancelReason, detail: impl Into<String>) {
        self.send(Command::Stop {
            reason,
            detail: detail.into(),
        });
    }

    /// The engine's state now; `None` once it has ended.
    pub async fn status(&self) -> Option<StatusReport> {
        let (tx, rx) = oneshot::channel();
        self.send(Command::Status(tx));
        rx.await.ok()
    }

    /// Cancels one in-flight conversation; an error says why not.
    pub async fn cancel(&self, id: String) -> Result<(), String> {
        let (reply, rx) = oneshot::channel();
        self.send(Command::Cancel { id, reply });
        rx.await
            .unwrap_or_else(|_| Err("the run has ended".to_string()))
    }
}

/// Installs SIGINT/SIGTERM handlers for the whole run (boot and shutdown
/// included) that send `Command::Signal` to the engine and say what
/// happens: the first stops dispatching and gives in-flight conversations
/// `grace`; the second cancels them and bounds what is left of the run by
/// `SHUTDOWN_BOUND` (a workspace still booting or shutting down cannot
/// hold convoy past it). False when they cannot be installed.
pub fn forward_signals(handle: EngineHandle, grace: Duration) -> bool {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut int), Ok(mut term)) = (
        signal(SignalKind::interrupt()),
        signal(SignalKind::terminate()),
    ) else {
        return false;
    };
    tokio::spawn(async move {
        let mut seen = 0;
        loop {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            seen += 1;
            match seen {
                1 => crate::report::term::eprint_line(&format!(
                    "interrupted: no new tasks start; in-flight conversations get {} to finish (signal again to stop them now)",
                    humantime::format_duration(grace)
                )),
                2 => {
                    crate::report::term::eprint_line("cancelling in-flight conversations");
                    tokio::spawn(exit_after(SHUTDOWN_BOUND, 130));
                }
                _ => {}
            }
            handle.send(Command::Signal);
        }
    });
    true
}

/// After cancelling, the workspace's own cleanup is bounded step by step
/// (well within this); past it, whatever the workspace does, convoy removes
/// what it owns and exits.
pub const SHUTDOWN_BOUND: Duration = Duration::from_secs(75);
/// The forced removal itself (a container, or the local workspace).
const FORCED_CLEANUP_BOUND: Duration = Duration::from_secs(15);

/// Sleeps `bound`, then removes what this convoy owns and exits with
/// `code`: the last resort, for a workspace that does not shut down.
pub async fn exit_after(bound: Duration, code: u8) {
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
