//! The pool: at most `workers` conversations in flight, one tokio task
//! each. Every attempt owns its session and closes it; a dropped attempt
//! (deadline, cancellation, panic) leaves its session to the reaper.

use std::panic::AssertUnwindSafe;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;
use serde_json::Value;
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

use super::budget::Budget;
use super::control::Control;
use super::infra::{self, InfraLedger};
use crate::agent::{drive, AgentError, Conversation, DriveLimits};
use crate::events::{Event, Finished};
use crate::journal::{Status, TaskRecord};
use crate::llm::{Llm, LlmError};
use crate::tasks::Task;
use crate::workspace::{Workspace, WorkspaceError};

/// How long a task waits for its session to close after its end (a
/// stuck workspace must not hold it past `task_timeout` for longer).
pub const CLEANUP_WAIT: Duration = Duration::from_secs(10);

/// Everything a conversation needs, shared by all of them.
pub struct RunCtx {
    pub llm: Llm,
    pub workspace: Workspace,
    pub tools: Value,
    pub limits: DriveLimits,
    pub task_timeout: Duration,
    pub max_attempts: u32,
    /// Re-runs of a task after failures of the workspace, beyond its
    /// attempts (`run.max_infra_retries`).
    pub max_infra_retries: u32,
    pub workers: usize,
    pub budget: Budget,
    pub infra: InfraLedger,
}

/// Runs every task (until drained) and returns when the last conversation
/// has ended. Results go out as events.
pub async fn run(
    tasks: Vec<Task>,
    ctx: Arc<RunCtx>,
    ctl: Arc<Control>,
    events: mpsc::UnboundedSender<Event>,
) {
    let slots = Arc::new(Semaphore::new(ctx.workers));
    let mut set = JoinSet::new();
    for task in tasks {
        let permit = tokio::select! {
            biased;
            _ = ctl.drain.cancelled() => break,
            p = slots.clone().acquire_owned() => p.expect("the pool semaphore never closes"),
        };
        if ctl.drain.is_cancelled() {
            break;
        }
        // While the endpoint is down, nothing new starts.
        let up = tokio::select! {
            biased;
            _ = ctl.drain.cancelled() => break,
            up = ctx.llm.wait_up() => up,
        };
        if let Err(e) = up {
            ctl.fatal(e.to_string());
            break;
        }
        let running = (ctx.workers - slots.available_permits()).saturating_sub(1) as u64;
        if let Some(why) = ctx.budget.exceeded(&ctx.llm, running) {
            ctl.stop(why);
            break;
        }
        set.spawn(run_task(
            task,
            ctx.clone(),
            ctl.clone(),
            events.clone(),
            permit,
        ));
        while let Some(done) = set.try_join_next() {
            log_join_error(done);
        }
    }
    while let Some(done) = set.join_next().await {
        log_join_error(done);
    }
}

fn log_join_error(r: Result<(), tokio::task::JoinError>) {
    if let Err(e) = r {
        tracing::error!("a conversation task ended abnormally: {e}");
    }
}

/// One task: attempts until one ends in a final state. An attempt cut
/// short by a failure of the workspace is run again without counting (see
/// `infra`), unless the task itself keeps breaking the workspace.
async fn run_task(
    task: Task,
    ctx: Arc<RunCtx>,
    ctl: Arc<Control>,
    events: mpsc::UnboundedSender<Event>,
    _permit: OwnedSemaphorePermit,
) {
    let mut attempt = 1;
    let mut infra_retries = 0;
    loop {
        // Events number every run of the task, infrastructure re-runs too,
        // so that partial turns of two runs never share a number.
        let run = attempt + infra_retries;
        let _ = events.send(Event::TaskStarted {
            id: task.id.clone(),
            attempt: run,
        });
        let started = SystemTime::now();
        let clock = Instant::now();
        let mut conv = Conversation::new(task.system.as_deref(), &task.user);
        let ledger = &ctx.infra;
        let _alone = if ledger.is_suspect(&task.id, ctx.workspace.failures()) {
            Some(ledger.isolate().await)
        } else {
            None
        };
        let in_flight = ledger.begin(&task.id, ctx.workspace.failures());
        let result = {
            let attempt_fut =
                AssertUnwindSafe(run_attempt(&task, run, &ctx, &mut conv, &events)).catch_unwind();
            tokio::select! {
                r = attempt_fut => r,
                _ = ctl.cancel.cancelled() => {
                    ledger.end(in_flight, ctx.workspace.failures());
                    let _ = events.send(Event::TaskCancelled { id: task.id.clone() });
                    return;
                }
            }
        };
        let failures = ctx.workspace.failures();
        let hit = ledger.end(in_flight, failures) > 0;
        let (status, final_answer, error, retry) = match result {
            Ok(Ok(text)) => (Status::Ok, Some(text), None, false),
            Ok(Err(e)) => {
                // The job cannot go on (credentials, endpoint gone,
                // workspace lost): the task did not fail on its own, so it
                // is not recorded and a rerun does it.
                let fatal = match &e {
                    Attempt::Agent(AgentError::Llm(l)) if l.is_fatal() => Some(l.to_string()),
                    Attempt::Agent(AgentError::Workspace(w @ WorkspaceError::Lost(_))) => {
                        Some(w.to_string())
                    }
                    _ => None,
                };
                if let Some(why) = fatal {
                    ctl.fatal(why);
                    ctx.budget.on_task_end(conv.usage.total_tokens);
                    let _ = events.send(Event::TaskCancelled {
                        id: task.id.clone(),
                    });
                    return;
                }
                if hit && matches!(e, Attempt::Agent(AgentError::Workspace(_))) {
                    match infra_outcome(&task.id, &ctx, failures, infra_retries, &e) {
                        InfraOutcome::Retry if !ctl.drain.is_cancelled() => {
                            infra_retries += 1;
                            tracing::info!(
                                "task {}: the workspace failed under it, running it again (not counted as an attempt; {infra_retries} of run.max_infra_retries = {}): {e}",
                                task.id,
                                ctx.max_infra_retries
                            );
                            continue;
                        }
                        InfraOutcome::Retry => {
                            // Draining: not the task's failure, so not
                            // recorded; a later run does it.
                            let _ = events.send(Event::TaskCancelled {
                                id: task.id.clone(),
                            });
                            return;
                        }
                        InfraOutcome::Final(status, why) => (status, None, Some(why), false),
                    }
                } else {
                    let (status, retry) = classify(&e);
                    (status, None, Some(e.to_string()), retry)
                }
            }
            Err(panic) => (
                Status::Failed,
                None,
                Some(format!(
                    "the conversation panicked: {}",
                    panic_message(&panic)
                )),
                false,
            ),
        };
        let retry = retry && attempt < ctx.max_attempts && !ctl.drain.is_cancelled();
        if retry {
            tracing::info!(
                "task {} attempt {attempt} failed, trying again: {}",
                task.id,
                error.as_deref().unwrap_or("")
            );
            attempt += 1;
            continue;
        }
        let record = TaskRecord {
            id: task.id.clone(),
            status,
            final_answer,
            steps: conv.steps,
            usage: conv.usage,
            attempt,
            infra_retries,
            started_at: humantime::format_rfc3339_millis(started).to_string(),
            finished_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
            duration_s: clock.elapsed().as_secs_f64(),
            error,
        };
        ctx.budget.on_task_end(conv.usage.total_tokens);
        let _ = events.send(Event::TaskFinished(Box::new(Finished {
            record,
            messages: conv.messages,
        })));
        return;
    }
}

enum InfraOutcome {
    Retry,
    Final(Status, String),
}

/// What follows an attempt that a failure of the workspace cut short.
fn infra_outcome(
    task: &str,
    ctx: &RunCtx,
    failures: u64,
    infra_retries: u32,
    e: &Attempt,
) -> InfraOutcome {
    if ctx.infra.is_poison(task, failures) {
        tracing::error!(
            "task {task} was in flight at each of {} or more workspace failures, with other tasks around it changing: it is not run again (workspace_crash)",
            infra::POISON_STRIKES
        );
        return InfraOutcome::Final(
            Status::WorkspaceCrash,
            format!(
                "the workspace failed {} or more times while this task ran, with different other tasks each time: this task brings it down, so it was not run again (last: {e})",
                infra::POISON_STRIKES
            ),
        );
    }
    if infra_retries >= ctx.max_infra_retries {
        return InfraOutcome::Final(
            Status::Failed,
            format!(
                "the workspace failed under this task {} times (run.max_infra_retries = {}); last: {e}",
                infra_retries + 1,
                ctx.max_infra_retries
            ),
        );
    }
    InfraOutcome::Retry
}

/// Why an attempt did not end with an answer.
#[derive(Debug, thiserror::Error)]
enum Attempt {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("the task deadline ({}) passed", humantime::format_duration(*.0))]
    Deadline(Duration),
}

/// The status an error gives a task, and whether another attempt may help.
fn classify(e: &Attempt) -> (Status, bool) {
    match e {
        Attempt::Deadline(_) => (Status::Timeout, false),
        Attempt::Agent(AgentError::MaxSteps(_)) => (Status::MaxSteps, false),
        Attempt::Agent(AgentError::Truncated) => (Status::Failed, false),
        Attempt::Agent(AgentError::Llm(LlmError::ContextLimit(_))) => (Status::ContextLimit, false),
        Attempt::Agent(AgentError::Llm(LlmError::Rejected { .. })) => (Status::Failed, false),
        Attempt::Agent(AgentError::Llm(LlmError::Deterministic { .. })) => (Status::Failed, false),
        Attempt::Agent(_) => (Status::Failed, true),
    }
}

async fn run_attempt(
    task: &Task,
    attempt: u32,
    ctx: &RunCtx,
    conv: &mut Conversation,
    events: &mpsc::UnboundedSender<Event>,
) -> Result<String, Attempt> {
    let on_turn = |step, messages: &[Value]| {
        let _ = events.send(Event::StepDone {
            id: task.id.clone(),
            attempt,
            step,
            messages: messages.to_vec(),
        });
    };
    let model = ctx.llm.for_task(&task.vars);
    // The deadline covers opening the session too: a workspace that does
    // not answer (a stopped tmux server) must not hold a task past it.
    let mut session = None;
    let driven = tokio::time::timeout(ctx.task_timeout, async {
        let s = session.insert(
            ctx.workspace
                .open_session()
                .await
                .map_err(AgentError::from)?,
        );
        drive(conv, &model, s, &ctx.tools, &ctx.limits, on_turn).await
    })
    .await;
    if let Some(session) = session {
        // Bounded: past it the session is dropped, and its guard hands it
        // to the reaper.
        match tokio::time::timeout(CLEANUP_WAIT, session.close()).await {
            Ok(Ok(())) => {}
            Ok(Err(e)) => tracing::warn!("task {}: closing its session failed: {e}", task.id),
            Err(_) => tracing::warn!(
                "task {}: its session did not close within {}s; left to the reaper",
                task.id,
                CLEANUP_WAIT.as_secs()
            ),
        }
    }
    match driven {
        Err(_) => Err(Attempt::Deadline(ctx.task_timeout)),
        Ok(r) => r.map_err(Attempt::Agent),
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
