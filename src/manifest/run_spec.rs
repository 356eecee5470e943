//! The `[run]` and `[monitor]` tables of the manifest (see `schema`).

use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RunSpec {
    /// Conversations in flight at once.
    #[serde(default = "RunSpec::default_workers")]
    pub workers: u32,
    /// Deadline of one conversation attempt.
    #[serde(default = "RunSpec::default_task_timeout", with = "humantime_serde")]
    pub task_timeout: Duration,
    /// Attempts per task; a task is tried again only when it failed with an
    /// error (not on `max_steps` or `timeout`).
    #[serde(default = "RunSpec::default_max_attempts")]
    pub max_attempts: u32,
    /// Re-runs of a task whose attempt a failure of the workspace (its
    /// helper or container died or stopped answering) cut short; they do
    /// not count against `max_attempts`.
    #[serde(default = "RunSpec::default_max_infra_retries")]
    pub max_infra_retries: u32,
    /// Run directory, relative to the manifest. Default: `runs/{name}`.
    #[serde(default)]
    pub out: Option<PathBuf>,
    /// After the first Ctrl-C, in-flight conversations get this long to
    /// finish before they are cancelled.
    #[serde(default = "RunSpec::default_grace", with = "humantime_serde")]
    pub grace: Duration,
}

impl RunSpec {
    fn default_workers() -> u32 {
        128
    }
    fn default_task_timeout() -> Duration {
        Duration::from_secs(30 * 60)
    }
    fn default_max_attempts() -> u32 {
        2
    }
    fn default_max_infra_retries() -> u32 {
        5
    }
    fn default_grace() -> Duration {
        Duration::from_secs(30)
    }
}

impl Default for RunSpec {
    fn default() -> Self {
        RunSpec {
            workers: Self::default_workers(),
            task_timeout: Self::default_task_timeout(),
            max_attempts: Self::default_max_attempts(),
            max_infra_retries: Self::default_max_infra_retries(),
            out: None,
            grace: Self::default_grace(),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnLeak {
    #[default]
    Warn,
    Fail,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct MonitorSpec {
    #[serde(default = "MonitorSpec::default_interval", with = "humantime_serde")]
    pub interval: Duration,
    #[serde(default)]
    pub on_leak: OnLeak,
}

impl MonitorSpec {
    fn default_interval() -> Duration {
        Duration::from_secs(5)
    }
}

impl Default for MonitorSpec {
    fn default() -> Self {
        MonitorSpec {
            interval: Self::default_interval(),
            on_leak: OnLeak::default(),
        }
    }
}
