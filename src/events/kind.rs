//! What a run emits, in the order it happens: the one seam between the
//! engine and everything that records or displays (journal, progress,
//! `metrics.csv`, summary, `--events`). The types events carry live here,
//! not in a consumer, so no consumer imports another.

use std::collections::BTreeMap;
use std::time::Duration;

use serde::Serialize;
use serde_json::Value;

use super::record::TaskRecord;
use super::stats::RunStats;
use crate::llm::LlmReport;
use crate::monitor::{Finding, LeakVerdict, MetricsSummary, Sample};

/// One thing that happened, `elapsed` after the run started.
#[derive(Debug)]
pub struct Event {
    pub elapsed: Duration,
    pub kind: EventKind,
}

/// Why dispatching stopped or conversations were cancelled. Ordered: when
/// several apply, the run reports the highest.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum CancelReason {
    /// A token or cost budget was reached: nothing new starts, what runs
    /// finishes.
    Budget,
    /// The job cannot go on: the endpoint stayed down past
    /// `llm.outage_timeout`, its key was rejected, the workspace was lost,
    /// or results could no longer be written.
    Outage,
    /// SIGINT or SIGTERM: nothing new starts; in-flight conversations get
    /// `run.grace`.
    Signal,
    /// A second signal (or the grace ran out): in-flight conversations are
    /// cancelled now.
    SecondSignal,
    /// `convoy ctl ... cancel ID`: one conversation, the run goes on.
    Control,
}

impl CancelReason {
    pub fn as_str(self) -> &'static str {
        match self {
            CancelReason::Budget => "budget",
            CancelReason::Outage => "outage",
            CancelReason::Signal => "signal",
            CancelReason::SecondSignal => "second_signal",
            CancelReason::Control => "control",
        }
    }
}

/// The plan's figures, first event of every run.
#[derive(Debug, Clone, Serialize)]
pub struct RunStarted {
    pub name: String,
    pub run_dir: String,
    /// Tasks in this invocation's plan (after `--shard`, `--limit`).
    pub total_tasks: u64,
    /// Of those, already finished by earlier runs of the directory.
    pub skipped: u64,
    /// Tasks this run will start (unless stopped).
    pub to_run: u64,
    pub workers: usize,
    pub shard: Option<String>,
    /// RFC 3339, UTC.
    pub started_at: String,
    /// What earlier runs of the directory counted (their tasks are done).
    pub earlier: RunStats,
}

/// A task's final state and its conversation.
#[derive(Debug, Serialize)]
pub struct Finished {
    pub record: TaskRecord,
    /// Exactly what was sent and received (the journal's trajectory; not
    /// in the `--events` stream, which stays small).
    #[serde(skip)]
    pub messages: Vec<Value>,
    /// The tools of the trajectory when they are not the job's (an
    /// external agent's last request's).
    #[serde(skip)]
    pub tools: Option<Value>,
    /// What convoy keeps about assistant turns beside `messages`
    /// (`Conversation::turns`): the trajectory's `convoy.turns`.
    #[serde(skip)]
    pub turns: Vec<Value>,
}

/// A monitor sample: the `metrics.csv` row, and the retry counts so far
/// for the progress display.
#[derive(Debug, Clone, Serialize)]
pub struct SampleTaken {
    /// The row (its own `elapsed_s` is the sample's, to one decimal).
    pub sample: Sample,
    pub llm_retries: BTreeMap<String, u64>,
}

/// How the run ended: the shutdown report.
#[derive(Debug, Serialize)]
pub struct Outcome {
    /// What the process exits with (`exit_code` decides, once).
    pub exit_code: u8,
    /// Tasks in this invocation's plan.
    pub total_tasks: u64,
    #[serde(flatten)]
    pub stats: RunStats,
    /// The highest reason anything was stopped for, with what happened.
    pub stopped: Option<Stopped>,
    pub leaks: LeakVerdict,
    pub metrics: Option<MetricsSummary>,
    pub llm: LlmReport,
    pub workers: usize,
    pub duration_s: f64,
    /// RFC 3339, UTC.
    pub finished_at: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct Stopped {
    pub reason: CancelReason,
    pub detail: String,
}

/// What happened. Serialized (`--events`) as `{"type": "<variant>", ...}`.
#[derive(Debug, Serialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum EventKind {
    RunStarted(Box<RunStarted>),
    /// A conversation started, or started again. `attempt` numbers every
    /// run of the task, re-runs after a workspace failure included (the
    /// record's `attempt` does not count those).
    TaskStarted {
        id: String,
        attempt: u32,
    },
    /// A turn ended (the prompt, or a model reply and its tool results):
    /// the messages it added, for the partial journal.
    TurnDone {
        id: String,
        attempt: u32,
        step: u32,
        #[serde(skip)]
        messages: Vec<Value>,
        /// The records of its replies (`Finished::turns`), usually none.
        #[serde(skip)]
        turns: Vec<Value>,
    },
    /// An external agent's model call was answered (`calls.jsonl` keeps
    /// the record).
    CallDone {
        id: String,
        attempt: u32,
        seq: u32,
        status: u16,
        #[serde(skip)]
        record: Box<crate::gateway::CallRecord>,
    },
    /// An attempt ended without an answer; `retry` says whether the task
    /// runs again.
    AttemptFailed {
        id: String,
        attempt: u32,
        error: String,
        retry: bool,
    },
    /// A task reached its final state (`results.jsonl` gets `record`). The
    /// journal makes it durable before the others count it.
    TaskFinished(Box<Finished>),
    /// A task was cancelled before it finished; it is not a result, so a
    /// later run does it again.
    TaskCancelled {
        id: String,
        attempt: u32,
        reason: CancelReason,
    },
    SampleTaken(Box<SampleTaken>),
    /// A leak rule tripped (once per rule).
    LeakFound(Finding),
    /// Something asked the run to stop dispatching or to cancel.
    CancelRequested {
        reason: CancelReason,
        detail: String,
    },
    /// `convoy ctl` changed the run (pause, resume, workers, cancel).
    Control {
        action: String,
    },
    RunFinished(Box<Outcome>),
}
