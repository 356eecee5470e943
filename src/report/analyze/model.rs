//! What `convoy report` says about a run directory (`Report` and its
//! parts, serialised as the `--json` output) and the shapes of the files it
//! reads.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};
use serde_json::Value;
use thiserror::Error;

use super::rewards::{PhaseTimes, Rewards};
use crate::journal::JournalReadError;

#[derive(Debug, Error)]
pub enum ReportError {
    #[error("run directory `{}` does not exist", .0.display())]
    MissingDir(PathBuf),
    #[error("`{}` is not a run directory: it holds neither results.jsonl nor summary.json", .0.display())]
    NotRunDir(PathBuf),
    #[error("cannot read `{}`: {source}", path.display())]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot write `{}`: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(transparent)]
    Journal(#[from] JournalReadError),
    /// A bad row of metrics.csv.
    #[error("{}:{line}: {message}", path.display())]
    Line {
        path: PathBuf,
        line: u64,
        message: String,
    },
    #[error("invalid `{}`: {source}", path.display())]
    Summary {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("`{}` has no `{column}` column", path.display())]
    MissingColumn { path: PathBuf, column: String },
}

/// Everything `convoy report` says about one run directory.
#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub name: String,
    pub dir: PathBuf,
    /// Where the latest run stands.
    pub state: RunState,
    /// The pid of the convoy running it (`state` = `running`).
    pub pid: Option<String>,
    /// When the latest run started (from `run.json`; older directories
    /// lack it).
    pub started_at: Option<String>,
    /// Tasks in the latest run's plan (from `run.json`, else from
    /// `summary.json`).
    pub total_tasks: Option<u64>,
    /// Distinct task ids with a result.
    pub finished: u64,
    /// Lines read from `results.jsonl`, re-runs of the same id included.
    pub result_lines: u64,
    /// Final status per id, counted.
    pub counts: BTreeMap<String, u64>,
    pub failure_reasons: Vec<FailureReason>,
    /// Tasks that ended `workspace_crash`: they kept bringing the
    /// workspace down and were not run again.
    pub quarantined: Vec<String>,
    pub tokens: Tokens,
    pub retries: u64,
    /// Present only if some result recorded it (older runs did not).
    pub invalid_tool_calls: Option<u64>,
    /// `None` when no task finished.
    pub steps: Option<Percentiles<u64>>,
    pub duration_s: Option<Percentiles<f64>>,
    /// Only for runs that verified something (`[verify]`); absent, not
    /// empty, otherwise.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rewards: Option<Rewards>,
    /// Only for runs with a setup or verify phase (`[environment]`,
    /// `[verify]`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phases: Option<PhaseTimes>,
    pub leaks: LeakReport,
    /// Ids in `turns.jsonl` without a result: in flight now (`running`)
    /// or when the run stopped.
    pub in_flight: u64,
    pub torn_lines_ignored: u64,
    pub torn_lines: Vec<TornLine>,
    /// This and the fields below come from `summary.json`, so only when it
    /// describes the latest run (`state` = `finished`).
    pub stopped_because: Option<String>,
    /// Wall time of the whole run, from `summary.json`.
    pub run_duration_s: Option<f64>,
    pub exit_code: Option<i64>,
    /// The `llm` object of `summary.json`, passed through as written.
    pub llm: Option<Value>,
    /// `metrics.containers` of `summary.json` (a fleet's containers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub containers: Option<Value>,
}

/// Where the latest run of a directory stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum RunState {
    /// A convoy holds the directory's lock now.
    Running,
    /// It ended and wrote `summary.json`.
    Finished,
    /// It ended without a summary: killed, or the machine went down.
    Stopped,
}

/// A group of non-ok results whose errors read the same once numbers are
/// masked.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct FailureReason {
    pub reason: String,
    pub count: u64,
    pub example_id: String,
}

#[derive(Debug, Clone, Default, Serialize, PartialEq)]
pub struct Tokens {
    pub prompt: u64,
    pub completion: u64,
    pub total: u64,
    /// Means over finished tasks (0 when none finished).
    pub mean_prompt: f64,
    pub mean_completion: f64,
    pub mean_total: f64,
}

/// Nearest-rank percentiles.
#[derive(Debug, Clone, Copy, Serialize, PartialEq)]
pub struct Percentiles<T> {
    pub p50: T,
    pub p90: T,
    pub p99: T,
    pub max: T,
}

#[derive(Debug, Clone, Serialize)]
pub struct LeakReport {
    /// `clean`, `leak` or `unknown` as the run's summary says, or an
    /// `unknown (...)` sentence when there is no summary to take it from.
    pub verdict: String,
    /// For `unknown`: the checks that could not be made, and why (empty
    /// otherwise, and in directories older than this field).
    pub why: Vec<String>,
    pub findings: Vec<LeakFinding>,
    pub stray_sessions: Vec<String>,
    pub stray_processes: Vec<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(default)]
pub struct LeakFinding {
    pub rule: String,
    pub at_s: f64,
    pub detail: String,
}

/// A last line cut by a crash mid-write, left out of every count.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct TornLine {
    pub file: String,
    pub line: u64,
}

/// The fields of a `results.jsonl` line the report uses; `id` and `status`
/// are required because a result without them cannot be counted.
#[derive(Debug, Deserialize)]
pub(super) struct ResultLine {
    pub(super) id: String,
    pub(super) status: String,
    #[serde(default)]
    pub(super) steps: u64,
    #[serde(default)]
    pub(super) usage: UsageLine,
    #[serde(default)]
    pub(super) duration_s: f64,
    #[serde(default)]
    pub(super) error: Option<String>,
    /// This and the fields below are absent in runs without
    /// `[environment]`/`[verify]` and in those older than them.
    #[serde(default)]
    pub(super) reward: Option<f64>,
    #[serde(default)]
    pub(super) verify: Option<VerifyLine>,
    #[serde(default)]
    pub(super) phases: Option<PhasesLine>,
    #[serde(default)]
    pub(super) group: Option<String>,
}

#[derive(Debug, Deserialize)]
pub(super) struct VerifyLine {
    pub(super) status: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct PhasesLine {
    pub(super) setup_s: Option<f64>,
    pub(super) agent_s: Option<f64>,
    pub(super) verify_s: Option<f64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct UsageLine {
    pub(super) prompt_tokens: u64,
    pub(super) completion_tokens: u64,
    pub(super) total_tokens: Option<u64>,
    pub(super) retries: u64,
    pub(super) invalid_tool_calls: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct SummaryFile {
    pub(super) name: Option<String>,
    pub(super) finished_at: Option<String>,
    pub(super) total_tasks: Option<u64>,
    pub(super) leaks: Option<SummaryLeaks>,
    pub(super) duration_s: Option<f64>,
    pub(super) stopped_because: Option<String>,
    pub(super) exit_code: Option<i64>,
    pub(super) llm: Option<Value>,
    pub(super) metrics: Option<Value>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(super) struct SummaryLeaks {
    pub(super) verdict: Option<String>,
    pub(super) why: Vec<String>,
    pub(super) findings: Vec<LeakFinding>,
    pub(super) stray_sessions: Vec<String>,
    pub(super) stray_processes: Vec<Value>,
}
