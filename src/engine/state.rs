//! The engine's shared state: its settings, the emitter every event goes
//! out through (keeping the engine's own counts in the same order), the
//! dispatch gate (running, workers, paused), the stop tokens and the table
//! of conversations in flight.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;

use super::budget::Budget;
use super::control::Waiting;
use super::infra::InfraLedgers;
use crate::agent::{DriveLimits, Toolbox};
use crate::events::{CancelReason, Event, EventKind, RunStats, Stopped};

/// The engine's settings, all from the plan.
#[derive(Debug)]
pub struct Config {
    /// What every conversation offers the model.
    pub tools: Arc<Toolbox>,
    pub limits: DriveLimits,
    pub task_timeout: Duration,
    pub max_attempts: u32,
    /// Re-runs of a task after failures of the workspace, beyond its
    /// attempts (`run.max_infra_retries`).
    pub max_infra_retries: u32,
    pub workers: usize,
    /// After the first signal, how long in-flight conversations may go on.
    pub grace: Duration,
    /// How often the monitor samples.
    pub sample_every: Duration,
    pub budget: Budget,
    /// Whether a leak fails the job (exit 3).
    pub fail_on_leak: bool,
    /// After a cancel by signal, exit the process if shutdown takes longer
    /// than `control::SHUTDOWN_BOUND` (real runs; never in unit tests).
    pub hard_exit: bool,
    /// The model gateway, for external agents.
    pub gateway: Option<super::external::GatewayAccess>,
}

/// Sends events in order, counting them into the engine's statistics
/// first, so the counts and the stream never disagree.
pub(super) struct Emitter {
    tx: mpsc::UnboundedSender<Event>,
    clock: Instant,
    stats: Mutex<RunStats>,
}

impl Emitter {
    pub fn new(tx: mpsc::UnboundedSender<Event>, clock: Instant) -> Emitter {
        Emitter {
            tx,
            clock,
            stats: Mutex::default(),
        }
    }

    pub fn emit(&self, kind: EventKind) {
        let mut stats = self.stats.lock().expect("stats lock");
        stats.on(&kind);
        // A reporter that went away is that reporter's failure, already
        // reported through the handle; the run itself goes on.
        let _ = self.tx.send(Event {
            elapsed: self.clock.elapsed(),
            kind,
        });
    }

    pub fn stats(&self) -> RunStats {
        self.stats.lock().expect("stats lock").clone()
    }

    /// The counts for one monitor sample (the in-flight peak restarts).
    pub fn window(&self) -> RunStats {
        self.stats.lock().expect("stats lock").take_window()
    }

    pub fn elapsed(&self) -> Duration {
        self.clock.elapsed()
    }
}

/// What the dispatcher waits on.
#[derive(Debug, Clone, Copy)]
pub(super) struct Gate {
    pub running: usize,
    pub workers: usize,
    pub paused: bool,
}

impl Gate {
    pub fn open(&self) -> bool {
        !self.paused && self.running < self.workers
    }
}

/// What an in-flight conversation is doing, for `status`.
#[derive(Debug, Clone)]
pub(super) struct Activity {
    pub step: u32,
    pub waiting_on: &'static str,
    pub command: Option<String>,
    pub since: Instant,
}

impl Activity {
    pub fn new(waiting_on: &'static str) -> Activity {
        Activity {
            step: 0,
            waiting_on,
            command: None,
            since: Instant::now(),
        }
    }
}

pub(super) struct Flight {
    pub attempt: u32,
    pub cancel: CancellationToken,
    /// False between an attempt's end and the next one's start: a cancel
    /// then would come too late to stop anything, so it is refused.
    pub cancellable: bool,
    pub activity: Arc<Mutex<Activity>>,
}

pub(super) struct Shared<W, M> {
    pub cfg: Config,
    pub ws: Arc<W>,
    pub models: Arc<M>,
    pub infra: InfraLedgers,
    pub emit: Emitter,
    pub gate: watch::Sender<Gate>,
    /// Stop dispatching; in-flight conversations finish.
    pub drain: CancellationToken,
    /// Stop in-flight conversations too.
    pub cancel: CancellationToken,
    /// Each reason to stop asked for so far (its first detail), in order.
    pub stops: Mutex<Vec<Stopped>>,
    pub flights: Mutex<HashMap<String, Flight>>,
    /// Tasks in their setup and verification phases right now.
    pub in_setup: AtomicU64,
    pub in_verify: AtomicU64,
}

impl<W, M> Shared<W, M> {
    /// Records a reason to stop and drains. The highest reason is the
    /// run's (its first detail kept); each reason is emitted the first
    /// time it is asked for, in the order asked (under the lock).
    pub fn request_stop(&self, reason: CancelReason, detail: String) {
        let mut stops = self.stops.lock().expect("stop lock");
        if stops.iter().any(|s| s.reason == reason) {
            return;
        }
        match reason {
            CancelReason::Budget => tracing::warn!("no new tasks start: {detail}"),
            CancelReason::Outage => tracing::error!("stopping the job: {detail}"),
            _ => {}
        }
        stops.push(Stopped {
            reason,
            detail: detail.clone(),
        });
        self.emit
            .emit(EventKind::CancelRequested { reason, detail });
        drop(stops);
        self.drain.cancel();
    }

    /// The counts for one monitor sample, with the phase gauges.
    pub fn window(&self) -> RunStats {
        let mut stats = self.emit.window();
        stats.in_setup = self.in_setup.load(Ordering::Relaxed);
        stats.in_verify = self.in_verify.load(Ordering::Relaxed);
        stats
    }

    /// The highest reason asked for: the run's.
    pub fn stopped(&self) -> Option<Stopped> {
        let stops = self.stops.lock().expect("stop lock");
        stops.iter().max_by_key(|s| s.reason).cloned()
    }

    /// The conversations waiting longest on their current step.
    pub fn slowest(&self, n: usize) -> Vec<Waiting> {
        let flights = self.flights.lock().expect("flights lock");
        let mut all: Vec<Waiting> = flights
            .iter()
            .map(|(id, f)| {
                let a = f.activity.lock().expect("activity lock").clone();
                Waiting {
                    id: id.clone(),
                    attempt: f.attempt,
                    step: a.step,
                    waiting_on: a.waiting_on,
                    command: a.command,
                    waited_s: (a.since.elapsed().as_secs_f64() * 10.0).round() / 10.0,
                }
            })
            .collect();
        all.sort_by(|a, b| b.waited_s.total_cmp(&a.waited_s).then(a.id.cmp(&b.id)));
        all.truncate(n);
        all
    }
}
