//! One line of `results.jsonl`: a task's final record, as the engine
//! emits it in `task_finished` and the journal writes it.

use serde::{Deserialize, Serialize};

use crate::llm::Usage;

/// How a task ended. Only `ok` counts as success.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Status {
    Ok,
    Failed,
    Timeout,
    MaxSteps,
    ContextLimit,
    /// The task brought the workspace down at repeated failures (with
    /// different other tasks in flight each time) and was not run again.
    WorkspaceCrash,
    /// A setup command of `[environment]` failed or the setup timed out;
    /// the model was never called.
    SetupFailed,
}

impl Status {
    /// Every status, in the order messages list them.
    pub const ALL: [Status; 7] = [
        Status::Ok,
        Status::Failed,
        Status::Timeout,
        Status::MaxSteps,
        Status::ContextLimit,
        Status::WorkspaceCrash,
        Status::SetupFailed,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Failed => "failed",
            Status::Timeout => "timeout",
            Status::MaxSteps => "max_steps",
            Status::ContextLimit => "context_limit",
            Status::WorkspaceCrash => "workspace_crash",
            Status::SetupFailed => "setup_failed",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct TaskRecord {
    pub id: String,
    pub status: Status,
    /// The final answer (`finish` message or the last text reply).
    #[serde(rename = "final")]
    pub final_answer: Option<String>,
    /// Model turns in the recorded attempt.
    pub steps: u32,
    pub usage: Usage,
    /// Which attempt this is (1-based). Attempts cut short by a failure of
    /// the workspace (helper or container) are not counted here.
    pub attempt: u32,
    /// Attempts cut short by a failure of the workspace and run again
    /// (`run.max_infra_retries` bounds them).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub infra_retries: u32,
    /// RFC 3339, UTC.
    pub started_at: String,
    pub finished_at: String,
    pub duration_s: f64,
    pub error: Option<String>,
    /// The verification's reward; null when not verified (or when it
    /// could not give one).
    #[serde(default)]
    pub reward: Option<f64>,
    #[serde(default)]
    pub verify: VerifyRecord,
    #[serde(default)]
    pub phases: Phases,
    /// With `tasks.repeat > 1`: the row's id without `#k`, and k.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<u32>,
}

/// What the verification (`[verify]`) did.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct VerifyRecord {
    pub status: VerifyStatus,
    pub exit_code: Option<i32>,
    /// The last 2,000 characters of its output.
    pub output: Option<String>,
    pub duration_s: Option<f64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyStatus {
    Passed,
    Failed,
    Timeout,
    Error,
    /// Not verified (no `[verify]`, or `when` left it out); also what an
    /// old results line without `verify` reads as.
    #[default]
    Skipped,
}

/// How long each phase of the recorded attempt took, in seconds.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Phases {
    pub setup_s: Option<f64>,
    pub agent_s: f64,
    pub verify_s: Option<f64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}
