//! The phases around a conversation when its task has an environment:
//! setup (before the first model turn, in the task's fresh workdir, not in
//! the trajectory) and verification (after the agent's session is closed,
//! as a session of its own in the same workdir), the reward it gives, and
//! whether the workdir outlives the task (`keep`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use super::ports::Sessions;
use crate::agent::Shell;
use crate::events::{Status, VerifyRecord, VerifyStatus};
use crate::tasks::{Keep, RewardRule, TaskEnv, TaskVerify, VerifyWhen};
use crate::workspace::{Pin, Place, Prepare, RunOutput, WorkspaceError};

/// How much of a setup or verify command's output the helper sends back
/// (it keeps the head and the tail; only the tail is used).
const MAX_OUTPUT_BYTES: u64 = 64 * 1024;
/// What a setup error quotes of the failed command's output.
const SETUP_TAIL: usize = 500;
/// What the verify record keeps of the check's output.
const VERIFY_TAIL: usize = 2000;

/// Counts a task in a phase while it lives (the monitor's `in_setup`,
/// `in_verify`), on every path out.
pub(super) struct Gauge<'a>(&'a AtomicU64);

impl<'a> Gauge<'a> {
    pub fn enter(n: &'a AtomicU64) -> Gauge<'a> {
        n.fetch_add(1, Ordering::Relaxed);
        Gauge(n)
    }
}

impl Drop for Gauge<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Why setup failed; `retry` only for a timeout (an exit status is the
/// task's, and would be the same again).
#[derive(Debug, thiserror::Error)]
#[error("{message}")]
pub(super) struct SetupError {
    pub message: String,
    pub retry: bool,
}

/// Where a session of `env`'s task opens. `fresh` starts the workdir anew
/// (seed and files); otherwise it is given to the new session as it is.
pub(super) fn place(env: &TaskEnv, fresh: bool, as_root: bool) -> Place {
    Place {
        workdir: env.workdir.clone(),
        prepare: Prepare {
            fresh,
            seed: fresh.then(|| env.seed.clone()).flatten(),
            files: if fresh { env.files.clone() } else { Vec::new() },
            as_root,
            ..Prepare::default()
        },
    }
}

/// Runs `env.setup` in order in `shell`, all of it before `deadline`.
pub(super) async fn setup(
    shell: &impl Shell,
    env: &TaskEnv,
    deadline: Instant,
) -> Result<(), SetupError> {
    for command in &env.setup {
        let left = deadline.saturating_duration_since(Instant::now());
        let out = shell
            .run(
                command,
                left.max(Duration::from_millis(1)),
                MAX_OUTPUT_BYTES,
            )
            .await
            .map_err(|e| SetupError {
                message: format!("setup command `{command}` could not run: {e}"),
                retry: e.is_retryable(),
            })?;
        if out.timed_out {
            return Err(SetupError {
                message: format!(
                    "setup timed out (environment.setup_timeout = {}) in command `{command}`; its output ends: {}",
                    humantime::format_duration(env.setup_timeout),
                    tail(&out.output, SETUP_TAIL)
                ),
                retry: true,
            });
        }
        if out.exit_code != 0 {
            return Err(SetupError {
                message: format!(
                    "setup command `{command}` exited with status {}; its output ends: {}",
                    out.exit_code,
                    tail(&out.output, SETUP_TAIL)
                ),
                retry: false,
            });
        }
    }
    Ok(())
}

/// Whether a task that ended with `status` is verified.
pub(super) fn applies(v: &TaskVerify, status: Status) -> bool {
    matches!(
        (v.when, status),
        (_, Status::Ok)
            | (
                VerifyWhen::Always,
                Status::MaxSteps | Status::Timeout | Status::Failed | Status::ContextLimit
            )
    )
}

/// Runs the check as a session of its own in the task's workdir (its
/// hidden files written first; no shell: see `Sessions::check`): the
/// reward and the record.
pub(super) async fn verify<W: Sessions>(
    ws: &W,
    pin: &Pin,
    env: Option<&TaskEnv>,
    v: &TaskVerify,
) -> (Option<f64>, VerifyRecord) {
    let clock = Instant::now();
    let ran = run_check(ws, pin, env, v).await;
    let duration_s = Some(clock.elapsed().as_secs_f64());
    let out = match ran {
        Ok(out) => out,
        Err(e) => {
            let record = VerifyRecord {
                status: VerifyStatus::Error,
                exit_code: None,
                output: Some(format!("the verification could not run: {e}")),
                duration_s,
            };
            return (None, record);
        }
    };
    let (status, reward) = judge(v.reward, &out);
    let record = VerifyRecord {
        status,
        exit_code: (!out.timed_out).then_some(out.exit_code),
        output: Some(tail(&out.output, VERIFY_TAIL)),
        duration_s,
    };
    (reward, record)
}

async fn run_check<W: Sessions>(
    ws: &W,
    pin: &Pin,
    env: Option<&TaskEnv>,
    v: &TaskVerify,
) -> Result<RunOutput, WorkspaceError> {
    let place = env.map(|env| Place {
        workdir: env.workdir.clone(),
        prepare: Prepare {
            files: v.files.clone(),
            as_root: v.as_root,
            ..Prepare::default()
        },
    });
    // The check's own timeout, plus a moment for the helper to kill it,
    // sweep and answer; a workspace that does not answer by then is an
    // error.
    tokio::time::timeout(
        v.timeout + super::attempt::CLEANUP_WAIT,
        ws.check(pin, place, &v.command, v.timeout, MAX_OUTPUT_BYTES),
    )
    .await
    .unwrap_or_else(|_| {
        Err(WorkspaceError::Helper {
            kind: crate::workspace::ErrorKind::Internal,
            message: "the workspace did not answer the verification command in time".into(),
        })
    })
}

/// The verify status and reward of a finished check.
fn judge(rule: RewardRule, out: &RunOutput) -> (VerifyStatus, Option<f64>) {
    if out.timed_out {
        return (VerifyStatus::Timeout, None);
    }
    let reward = match rule {
        RewardRule::ExitCode => Some(if out.exit_code == 0 { 1.0 } else { 0.0 }),
        RewardRule::LastLine => out
            .output
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .and_then(|l| l.trim().parse::<f64>().ok())
            .filter(|r| r.is_finite()),
    };
    match reward {
        None => (VerifyStatus::Error, None),
        Some(r) if r >= 1.0 => (VerifyStatus::Passed, Some(r)),
        Some(r) => (VerifyStatus::Failed, Some(r)),
    }
}

/// Whether the task's workdir stays after it: `failed` keeps it when the
/// task is not ok, or was verified without a reward of at least 1.
pub(super) fn keep(env: &TaskEnv, status: Status, verified: bool, reward: Option<f64>) -> bool {
    match env.keep {
        Keep::Never => false,
        Keep::Always => true,
        Keep::Failed => status != Status::Ok || (verified && !reward.is_some_and(|r| r >= 1.0)),
    }
}

/// The last `n` characters of `s`.
pub(super) fn tail(s: &str, n: usize) -> String {
    let count = s.chars().count();
    s.chars().skip(count.saturating_sub(n)).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ran(output: &str, exit_code: i32, timed_out: bool) -> RunOutput {
        RunOutput {
            output: output.into(),
            exit_code,
            timed_out,
            ..RunOutput::default()
        }
    }

    #[test]
    fn rewards_follow_the_rule() {
        let e = RewardRule::ExitCode;
        assert_eq!(
            judge(e, &ran("", 0, false)),
            (VerifyStatus::Passed, Some(1.0))
        );
        assert_eq!(
            judge(e, &ran("", 1, false)),
            (VerifyStatus::Failed, Some(0.0))
        );
        assert_eq!(judge(e, &ran("", 130, true)), (VerifyStatus::Timeout, None));
        let l = RewardRule::LastLine;
        let half = judge(l, &ran("tests: 2/4\n0.5\n\n", 0, false));
        assert_eq!(half, (VerifyStatus::Failed, Some(0.5)));
        assert_eq!(
            judge(l, &ran("1\n", 3, false)),
            (VerifyStatus::Passed, Some(1.0))
        );
        assert_eq!(
            judge(l, &ran("all good\n", 0, false)),
            (VerifyStatus::Error, None)
        );
        assert_eq!(
            judge(l, &ran("NaN\n", 0, false)),
            (VerifyStatus::Error, None)
        );
    }

    #[test]
    fn tails_count_characters_not_bytes() {
        assert_eq!(tail("héllo", 3), "llo");
        assert_eq!(tail("ab", 5), "ab");
    }
}
