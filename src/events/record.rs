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
    /// What `[verify]` gave the task; null when it was not verified (or
    /// the verification timed out or could not run).
    #[serde(default)]
    pub reward: Option<f64>,
    #[serde(default)]
    pub verify: VerifyRecord,
    /// Time spent in each phase of the recorded attempt.
    #[serde(default)]
    pub phases: Phases,
    /// With `tasks.repeat > 1`: the row's id without `#k`, and k.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sample: Option<u32>,
    /// An external agent's own output (stdout and stderr), its last 2,000
    /// characters; never in the trajectory.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_output: Option<String>,
}

/// The verification of a task (`[verify]`). A line written before
/// verification existed reads as skipped.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct VerifyRecord {
    pub status: VerifyStatus,
    pub exit_code: Option<i32>,
    /// The last 2,000 characters of its output.
    pub output: Option<String>,
    pub duration_s: Option<f64>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VerifyStatus {
    Passed,
    Failed,
    Timeout,
    Error,
    /// Not verified: no `[verify]`, or `verify.when` left this task out.
    #[default]
    Skipped,
}

/// Seconds in each phase; a phase that did not run is null.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Phases {
    pub setup_s: Option<f64>,
    pub agent_s: f64,
    pub verify_s: Option<f64>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_from_before_verification_still_reads() {
        let old = r#"{"id":"a","status":"ok","final":"x","steps":2,"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3},"attempt":1,"started_at":"2026-01-01T00:00:00.000Z","finished_at":"2026-01-01T00:00:01.000Z","duration_s":1.0,"error":null}"#;
        let r: TaskRecord = serde_json::from_str(old).unwrap();
        assert_eq!(r.reward, None);
        assert_eq!(r.verify.status, VerifyStatus::Skipped);
        assert_eq!(r.phases, Phases::default());
        assert_eq!((r.group.as_deref(), r.sample), (None, None));
        // Written again, the new fields are there: reward and verify
        // always, group and sample only for repeated samples.
        let v = serde_json::to_value(&r).unwrap();
        assert_eq!(v["reward"], serde_json::Value::Null);
        assert_eq!(v["verify"]["status"], "skipped");
        assert_eq!(v["phases"]["agent_s"], 0.0);
        assert!(v.get("group").is_none() && v.get("sample").is_none());
        let s: Status = serde_json::from_str("\"setup_failed\"").unwrap();
        assert_eq!(s.as_str(), "setup_failed");
    }
}
