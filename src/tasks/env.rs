//! A task's own environment (`[environment]`) and the check after its
//! agent (`[verify]`), as rendered from its row. The engine and the
//! workspace act on these; they never see the templates.

use std::time::Duration;

/// A task's own environment, rendered from its row (`[environment]`).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEnv {
    /// Absolute in the Docker workspace; for local, already resolved to an absolute host path.
    pub workdir: String,
    pub seed: Option<String>,
    /// (path relative to workdir, content), in manifest order; paths checked not to escape.
    pub files: Vec<(String, String)>,
    pub setup: Vec<String>,
    pub setup_timeout: Duration,
    /// `environment.setup_user = "root"`.
    pub setup_as_root: bool,
    pub keep: Keep,
}

/// When a task's workdir outlives the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Keep {
    Never,
    Failed,
    Always,
}

/// The check after the agent (`[verify]`), rendered from the row.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskVerify {
    pub files: Vec<(String, String)>,
    pub command: String,
    pub timeout: Duration,
    pub reward: RewardRule,
    pub when: VerifyWhen,
    /// `verify.user = "root"`.
    pub as_root: bool,
}

/// How a verify command's run becomes a reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RewardRule {
    ExitCode,
    LastLine,
}

/// Which tasks are verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyWhen {
    Finished,
    Always,
}
