//! What the engine needs of the world, as traits: the workspace that opens
//! sessions, the model side that gives each conversation its handle, and
//! the probe that samples. The real ones are `Workspace`, `Llm` and the
//! `Monitor` (`real.rs`); the unit tests drive the engine with recording
//! fakes, with no tmux, Docker or HTTP.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use crate::agent::{Model, Shell};
use crate::events::RunStats;
use crate::llm::{LlmError, LlmReport};
use crate::manifest::Price;
use crate::monitor::{Finding, LeakVerdict, MetricsSummary, Sample};
use crate::tasks::Task;
use crate::workspace::{Pin, Place, RunOutput, ShutdownReport, WorkspaceError};

/// Where conversations' commands run.
pub trait Sessions: Send + Sync + 'static {
    type Session: Shell + Send + Sync + 'static;

    /// Opens a session: in the workspace's workdir, or in a task's own
    /// (`place`), which the workspace makes ready first; in the container
    /// `pin` holds (an attempt's sessions, check and workdir share one).
    fn open_session(
        &self,
        pin: &Pin,
        place: Option<Place>,
    ) -> impl Future<Output = Result<Self::Session, WorkspaceError>> + Send;

    /// How long the workspace took to make `session`'s workdir ready, when
    /// it opened in a task's own (`place`).
    fn prepare_s(session: &Self::Session) -> Option<f64>;

    /// Runs `command` once in a session of its own with no shell (in
    /// `place`), closed before this returns: a task's verification.
    fn check(
        &self,
        pin: &Pin,
        place: Option<Place>,
        command: &str,
        timeout: Duration,
        max_output_bytes: u64,
    ) -> impl Future<Output = Result<RunOutput, WorkspaceError>> + Send;

    /// Removes a task's workdir (its `keep` did not hold it).
    fn remove_dir(
        &self,
        pin: &Pin,
        workdir: &str,
    ) -> impl Future<Output = Result<(), WorkspaceError>> + Send;

    /// Closes the session and kills what it started. Dropping a session
    /// unclosed must hand it to a reaper (the engine drops on deadline,
    /// cancel and panic).
    fn close_session(
        &self,
        session: Self::Session,
    ) -> impl Future<Output = Result<(), WorkspaceError>> + Send;

    /// Pins the attempt `pin` belongs to to a container now, if it is not
    /// yet; the container's index (its own failures, ledger, isolation).
    fn domain(&self, pin: &Pin) -> usize;

    /// Failures so far of the container `pin` holds (monotone).
    fn failures(&self, pin: &Pin) -> u64;

    /// The end-of-run sweep: sessions and processes nobody closed.
    fn finish(&self) -> impl Future<Output = ShutdownReport> + Send;
}

/// The model side: one handle per conversation, plus the job-wide gate,
/// spend and report.
pub trait Models: Send + Sync + 'static {
    type Handle: Model + Send + Sync + 'static;

    /// The handle a conversation of `task` talks through.
    fn for_task(&self, task: &Task) -> Self::Handle;

    /// The way upstream of an external agent's conversation of `task`.
    fn forwarder(&self, task: &Task) -> crate::gateway::Forwarder;

    /// Returns once the endpoint is up (at once when it is); an error when
    /// it stayed down past the outage timeout.
    fn wait_up(&self) -> impl Future<Output = Result<(), LlmError>> + Send;

    /// Prompt and completion tokens used so far, and the price if known.
    fn spent(&self) -> (u64, u64, Option<Price>);

    fn retries_by_reason(&self) -> BTreeMap<String, u64>;

    /// Lets idle connections go before the final sample (they are not a
    /// leak, but would read as one).
    fn drop_idle_connections(&self);

    fn report(&self) -> LlmReport;
}

/// What one sample found.
#[derive(Debug, Clone)]
pub struct Sampled {
    pub sample: Sample,
    /// Leak rules that tripped at this sample, for the first time.
    pub new_findings: Vec<Finding>,
}

/// The monitor: samples convoy and the workspace.
pub trait Probe: Send + 'static {
    /// Takes one sample; `stats` gives the counts, read as late as the
    /// probe can (once the workspace answered) so they are fresh.
    fn sample(
        &mut self,
        stats: impl FnOnce() -> RunStats + Send,
    ) -> impl Future<Output = Sampled> + Send;

    /// The leak verdict: what the samples found, what `shutdown` (the
    /// workspace's final sweep) found, and what could not be checked.
    fn verdict(&self, shutdown: ShutdownReport) -> LeakVerdict;

    /// Start, peak and end of the samples (`None`: nothing sampled).
    fn summary(&self) -> Option<MetricsSummary>;
}
