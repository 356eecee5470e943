//! One conversation's task: attempts until one ends in a final state,
//! each with its own session and deadline; a dropped attempt (deadline,
//! cancellation, panic) leaves its session to the workspace's reaper. An
//! attempt cut short by a failure of the workspace is run again without
//! counting (see `infra`), unless the task itself keeps breaking it.

use std::panic::AssertUnwindSafe;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};

use futures::FutureExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;

use super::infra;
use super::ports::{Models, Sessions};
use super::state::{Activity, Flight, Shared};
use super::track::{Tracked, TrackedShell};
use crate::agent::{drive, AgentError, Conversation};
use crate::events::{CancelReason, EventKind, Finished, Phases, Status, TaskRecord, VerifyRecord};
use crate::llm::LlmError;
use crate::tasks::Task;
use crate::workspace::WorkspaceError;

/// How long a task waits for its session to close after its end (a
/// stuck workspace must not hold it past `task_timeout` for longer).
pub const CLEANUP_WAIT: Duration = Duration::from_secs(10);

/// Runs `task` to its end, then lets the dispatcher start another.
pub(super) async fn run_task<W: Sessions, M: Models>(task: Task, shared: Arc<Shared<W, M>>) {
    let token = shared.cancel.child_token();
    let activity = Arc::new(Mutex::new(Activity::new("session")));
    shared.flights.lock().expect("flights lock").insert(
        task.id.clone(),
        Flight {
            attempt: 1,
            cancel: token.clone(),
            cancellable: true,
            activity: activity.clone(),
        },
    );
    let _leave = Leave {
        shared: &shared,
        id: &task.id,
    };
    attempts(&task, &shared, &token, &activity).await;
}

/// Takes a task out of flight on every path (a panic outside the
/// attempt's own guard included), so the pool never shrinks for good.
struct Leave<'a, W, M> {
    shared: &'a Shared<W, M>,
    id: &'a str,
}

impl<W, M> Drop for Leave<'_, W, M> {
    fn drop(&mut self) {
        if let Ok(mut flights) = self.shared.flights.lock() {
            flights.remove(self.id);
        }
        self.shared.gate.send_modify(|g| g.running -= 1);
    }
}

/// Closes the attempt of `id` to `convoy ctl cancel`; true when a cancel
/// came first (it was acknowledged, so the attempt counts as cancelled
/// whatever it ended with).
fn seal<W, M>(shared: &Shared<W, M>, id: &str, token: &CancellationToken) -> bool {
    let mut flights = shared.flights.lock().expect("flights lock");
    if let Some(f) = flights.get_mut(id) {
        f.cancellable = false;
    }
    token.is_cancelled()
}

/// Why a task ended without a record.
fn cancel_reason<W, M>(shared: &Shared<W, M>) -> CancelReason {
    if shared.cancel.is_cancelled() {
        CancelReason::SecondSignal
    } else {
        CancelReason::Control
    }
}

async fn attempts<W: Sessions, M: Models>(
    task: &Task,
    shared: &Shared<W, M>,
    token: &CancellationToken,
    activity: &Arc<Mutex<Activity>>,
) {
    let cfg = &shared.cfg;
    let emit = &shared.emit;
    let ws = &*shared.ws;
    let mut attempt = 1;
    let mut infra_retries = 0;
    loop {
        // Events number every run of the task, infrastructure re-runs too,
        // so that partial turns of two runs never share a number.
        let run = attempt + infra_retries;
        if let Some(f) = shared
            .flights
            .lock()
            .expect("flights lock")
            .get_mut(&task.id)
        {
            f.attempt = run;
            f.cancellable = true;
        }
        *activity.lock().expect("activity lock") = Activity::new("session");
        emit.emit(EventKind::TaskStarted {
            id: task.id.clone(),
            attempt: run,
        });
        let cancelled = || EventKind::TaskCancelled {
            id: task.id.clone(),
            attempt: run,
            reason: cancel_reason(shared),
        };
        let started = SystemTime::now();
        let clock = Instant::now();
        let mut conv = Conversation::new(task.system.as_deref(), &task.user);
        let ledger = &shared.infra;
        let _alone = if ledger.is_suspect(&task.id, ws.failures()) {
            Some(ledger.isolate().await)
        } else {
            None
        };
        let in_flight = ledger.begin(&task.id, ws.failures());
        let result = {
            let attempt_fut = AssertUnwindSafe(run_attempt(task, run, shared, &mut conv, activity))
                .catch_unwind();
            tokio::select! {
                r = attempt_fut => r,
                _ = token.cancelled() => {
                    ledger.end(in_flight, ws.failures());
                    emit.emit(cancelled());
                    return;
                }
            }
        };
        if seal(shared, &task.id, token) {
            ledger.end(in_flight, ws.failures());
            emit.emit(cancelled());
            return;
        }
        let failures = ws.failures();
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
                    shared.request_stop(CancelReason::Outage, why);
                    cfg.budget.on_task_end(conv.usage.total_tokens);
                    emit.emit(EventKind::TaskCancelled {
                        id: task.id.clone(),
                        attempt: run,
                        reason: CancelReason::Outage,
                    });
                    return;
                }
                if hit && matches!(e, Attempt::Agent(AgentError::Workspace(_))) {
                    match infra_outcome(&task.id, shared, failures, infra_retries, &e) {
                        InfraOutcome::Retry if !shared.drain.is_cancelled() => {
                            infra_retries += 1;
                            tracing::info!(
                                "task {}: the workspace failed under it, running it again (not counted as an attempt; {infra_retries} of run.max_infra_retries = {}): {e}",
                                task.id,
                                cfg.max_infra_retries
                            );
                            emit.emit(failed(task, run, &e, true));
                            continue;
                        }
                        InfraOutcome::Retry => {
                            // Draining: not the task's failure, so not
                            // recorded; a later run does it.
                            let reason =
                                shared.stopped().map_or(CancelReason::Signal, |s| s.reason);
                            emit.emit(EventKind::TaskCancelled {
                                id: task.id.clone(),
                                attempt: run,
                                reason,
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
        let retry = retry && attempt < cfg.max_attempts && !shared.drain.is_cancelled();
        if let Some(error) = &error {
            emit.emit(EventKind::AttemptFailed {
                id: task.id.clone(),
                attempt: run,
                error: error.clone(),
                retry,
            });
        }
        if retry {
            tracing::info!(
                "task {} attempt {attempt} failed, trying again: {}",
                task.id,
                error.as_deref().unwrap_or("")
            );
            attempt += 1;
            continue;
        }
        let duration_s = clock.elapsed().as_secs_f64();
        // Until tasks have environments, the agent is the whole task.
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
            duration_s,
            error,
            reward: None,
            verify: VerifyRecord::default(),
            phases: Phases {
                setup_s: None,
                agent_s: duration_s,
                verify_s: None,
            },
            group: None,
            sample: None,
        };
        cfg.budget.on_task_end(conv.usage.total_tokens);
        emit.emit(EventKind::TaskFinished(Box::new(Finished {
            record,
            messages: conv.messages,
        })));
        return;
    }
}

fn failed(task: &Task, run: u32, e: &Attempt, retry: bool) -> EventKind {
    EventKind::AttemptFailed {
        id: task.id.clone(),
        attempt: run,
        error: e.to_string(),
        retry,
    }
}

enum InfraOutcome {
    Retry,
    Final(Status, String),
}

/// What follows an attempt that a failure of the workspace cut short.
fn infra_outcome<W, M>(
    task: &str,
    shared: &Shared<W, M>,
    failures: u64,
    infra_retries: u32,
    e: &Attempt,
) -> InfraOutcome {
    if shared.infra.is_poison(task, failures) {
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
    if infra_retries >= shared.cfg.max_infra_retries {
        return InfraOutcome::Final(
            Status::Failed,
            format!(
                "the workspace failed under this task {} times (run.max_infra_retries = {}); last: {e}",
                infra_retries + 1,
                shared.cfg.max_infra_retries
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

async fn run_attempt<W: Sessions, M: Models>(
    task: &Task,
    attempt: u32,
    shared: &Shared<W, M>,
    conv: &mut Conversation,
    activity: &Arc<Mutex<Activity>>,
) -> Result<String, Attempt> {
    let cfg = &shared.cfg;
    let on_turn = |step, messages: &[Value]| {
        activity.lock().expect("activity lock").step = step;
        shared.emit.emit(EventKind::TurnDone {
            id: task.id.clone(),
            attempt,
            step,
            messages: messages.to_vec(),
        });
    };
    let model = Tracked::new(shared.models.for_task(task), activity.clone());
    // The deadline covers opening the session too: a workspace that does
    // not answer (a stopped tmux server) must not hold a task past it.
    let mut session = None;
    let driven = tokio::time::timeout(cfg.task_timeout, async {
        let s = session.insert(TrackedShell::new(
            shared.ws.open_session().await.map_err(AgentError::from)?,
            activity.clone(),
        ));
        drive(conv, &model, s, &cfg.tools, &cfg.limits, on_turn).await
    })
    .await;
    if let Some(session) = session {
        // Bounded: past it the session is dropped, and its guard hands it
        // to the reaper.
        match tokio::time::timeout(CLEANUP_WAIT, shared.ws.close_session(session.into_inner()))
            .await
        {
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
        Err(_) => Err(Attempt::Deadline(cfg.task_timeout)),
        Ok(r) => r.map_err(Attempt::Agent),
    }
}

fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
