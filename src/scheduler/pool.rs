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
use crate::agent::{drive, AgentError, Conversation, DriveLimits};
use crate::events::{Event, Finished};
use crate::journal::{Status, TaskRecord};
use crate::llm::{Llm, LlmError};
use crate::tasks::Task;
use crate::workspace::{Workspace, WorkspaceError};

/// Everything a conversation needs, shared by all of them.
pub struct RunCtx {
    pub llm: Llm,
    pub workspace: Workspace,
    pub tools: Value,
    pub limits: DriveLimits,
    pub task_timeout: Duration,
    pub max_attempts: u32,
    pub workers: usize,
    pub budget: Budget,
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

/// One task: attempts until one ends in a final state.
async fn run_task(
    task: Task,
    ctx: Arc<RunCtx>,
    ctl: Arc<Control>,
    events: mpsc::UnboundedSender<Event>,
    _permit: OwnedSemaphorePermit,
) {
    for attempt in 1..=ctx.max_attempts {
        let _ = events.send(Event::TaskStarted {
            id: task.id.clone(),
            attempt,
        });
        let started = SystemTime::now();
        let clock = Instant::now();
        let mut conv = Conversation::new(task.system.as_deref(), &task.user);
        let result = {
            let attempt_fut =
                AssertUnwindSafe(run_attempt(&task, attempt, &ctx, &mut conv, &events))
                    .catch_unwind();
            tokio::select! {
                r = attempt_fut => r,
                _ = ctl.cancel.cancelled() => {
                    let _ = events.send(Event::TaskCancelled { id: task.id.clone() });
                    return;
                }
            }
        };
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
                let (status, retry) = classify(&e);
                (status, None, Some(e.to_string()), retry)
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
            continue;
        }
        let record = TaskRecord {
            id: task.id.clone(),
            status,
            final_answer,
            steps: conv.steps,
            usage: conv.usage,
            attempt,
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
    let session = ctx
        .workspace
        .open_session()
        .await
        .map_err(|e| Attempt::Agent(e.into()))?;
    let on_turn = |step, messages: &[Value]| {
        let _ = events.send(Event::StepDone {
            id: task.id.clone(),
            attempt,
            step,
            messages: messages.to_vec(),
        });
    };
    let driven = tokio::time::timeout(
        ctx.task_timeout,
        drive(
            conv,
            task,
            &ctx.llm,
            &session,
            &ctx.tools,
            &ctx.limits,
            on_turn,
        ),
    )
    .await;
    if let Err(e) = session.close().await {
        // The session's guard already handed it to the reaper.
        tracing::warn!("task {}: closing its session failed: {e}", task.id);
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
