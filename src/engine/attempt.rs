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
use super::phases::{self, Gauge, SetupError};
use super::ports::{Models, Sessions};
use super::state::{Activity, Flight, Shared};
use super::track::{Tracked, TrackedShell};
use crate::agent::{drive, AgentError, Conversation};
use crate::events::{CancelReason, EventKind, Finished, Phases, Status, TaskRecord};
use crate::llm::LlmError;
use crate::tasks::{Task, TaskEnv};
use crate::workspace::{Pin, WorkspaceError};

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
        // This attempt's container: its sessions, check and workdir.
        let pin = Pin::default();
        // The attempt's container now: its failures are what this attempt
        // is judged by, in that container's ledger.
        let ledger = shared.infra.of(ws.domain(&pin));
        let _alone = if ledger.is_suspect(&task.id, ws.failures(&pin)) {
            Some(ledger.isolate().await)
        } else {
            None
        };
        let in_flight = ledger.begin(&task.id, ws.failures(&pin));
        let mut phases = Phases::default();
        let result = {
            let attempt_fut = AssertUnwindSafe(run_attempt(
                task,
                run,
                shared,
                &mut conv,
                activity,
                &mut phases,
                &pin,
            ))
            .catch_unwind();
            tokio::select! {
                r = attempt_fut => r,
                _ = token.cancelled() => {
                    ledger.end(in_flight, ws.failures(&pin));
                    emit.emit(cancelled());
                    return;
                }
            }
        };
        if seal(shared, &task.id, token) {
            ledger.end(in_flight, ws.failures(&pin));
            emit.emit(cancelled());
            return;
        }
        let failures = ws.failures(&pin);
        let hit = ledger.end(in_flight, failures) > 0;
        let (status, final_answer, error, retry) = match result {
            Ok(Ok(text)) => (Status::Ok, Some(text), None, false),
            Ok(Err(e)) => {
                // The job cannot go on (credentials, endpoint gone,
                // workspace lost): the task did not fail on its own, so it
                // is not recorded and a rerun does it.
                let fatal = match &e {
                    Attempt::Agent(AgentError::Llm(l)) if l.is_fatal() => Some(l.to_string()),
                    Attempt::Fatal(why) => Some(why.clone()),
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
                    match infra_outcome(&task.id, shared, &ledger, failures, infra_retries, &e) {
                        InfraOutcome::Retry if !shared.drain.is_cancelled() => {
                            infra_retries += 1;
                            tracing::info!(
                                "task {}: the workspace failed under it, running it again (not counted as an attempt; {infra_retries} of run.max_infra_retries = {}): {e}",
                                task.id,
                                cfg.max_infra_retries
                            );
                            emit.emit(failed(task, run, e.to_string(), true));
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
            emit.emit(failed(task, run, error.clone(), retry));
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
        // The recorded attempt only: a retried one's workdir is made anew
        // by the next attempt.
        let verified = match &task.verify {
            Some(v) if phases::applies(v, status) => {
                *activity.lock().expect("activity lock") = Activity::new("verify");
                let _in = Gauge::enter(&shared.in_verify);
                let clock = Instant::now();
                tokio::select! {
                    r = phases::verify(ws, &pin, task.env.as_ref(), v) => {
                        phases.verify_s = Some(clock.elapsed().as_secs_f64());
                        Some(r)
                    }
                    _ = token.cancelled() => {
                        emit.emit(cancelled());
                        return;
                    }
                }
            }
            _ => None,
        };
        let (reward, verify) = verified.clone().unwrap_or_default();
        if let Some(env) = &task.env {
            if !phases::keep(env, status, verified.is_some(), reward) {
                remove_workdir(ws, &pin, &task.id, &env.workdir).await;
            }
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
            reward,
            verify,
            phases,
            group: task.group.clone(),
            sample: task.sample,
            agent_output: conv.agent_output.take(),
        };
        cfg.budget.on_task_end(conv.usage.total_tokens);
        emit.emit(EventKind::TaskFinished(Box::new(Finished {
            record,
            messages: conv.messages,
            tools: conv.tools,
            turns: conv.turns,
        })));
        return;
    }
}

/// An attempt of `task` (run `run`) ended with `error`.
fn failed(task: &Task, run: u32, error: String, retry: bool) -> EventKind {
    EventKind::AttemptFailed {
        id: task.id.clone(),
        attempt: run,
        error,
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
    ledger: &infra::InfraLedger,
    failures: u64,
    infra_retries: u32,
    e: &Attempt,
) -> InfraOutcome {
    if ledger.is_poison(task, failures) {
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
pub(super) enum Attempt {
    #[error(transparent)]
    Agent(#[from] AgentError),
    #[error("the task deadline ({}) passed", humantime::format_duration(*.0))]
    Deadline(Duration),
    #[error(transparent)]
    Setup(#[from] SetupError),
    /// An external agent failed (its exit status, its files).
    #[error("{0}")]
    External(String),
    /// The job cannot go on (an external agent's call found out).
    #[error("{0}")]
    Fatal(String),
}

/// The status an error gives a task, and whether another attempt may help.
fn classify(e: &Attempt) -> (Status, bool) {
    match e {
        Attempt::Deadline(_) => (Status::Timeout, false),
        Attempt::Setup(e) => (Status::SetupFailed, e.retry),
        Attempt::External(_) | Attempt::Fatal(_) => (Status::Failed, false),
        Attempt::Agent(AgentError::MaxSteps(_)) => (Status::MaxSteps, false),
        Attempt::Agent(AgentError::Truncated) => (Status::Failed, false),
        Attempt::Agent(AgentError::Llm(LlmError::ContextLimit { .. })) => {
            (Status::ContextLimit, false)
        }
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
    phases: &mut Phases,
    pin: &Pin,
) -> Result<String, Attempt> {
    let cfg = &shared.cfg;
    let on_turn = |step, messages: &[Value], turns: &[Value]| {
        activity.lock().expect("activity lock").step = step;
        shared.emit.emit(EventKind::TurnDone {
            id: task.id.clone(),
            attempt,
            step,
            messages: messages.to_vec(),
            turns: turns.to_vec(),
        });
    };
    let model = Tracked::new(shared.models.for_task(task), activity.clone());
    let mut session = None;
    if let Some(env) = &task.env {
        *activity.lock().expect("activity lock") = Activity::new("setup");
        let (set_up, setup_s) = set_up(task, env, shared, activity, &mut session, pin).await;
        phases.setup_s = Some(setup_s);
        if let Err(e) = set_up {
            close(shared, task, session).await;
            return Err(e);
        }
    }
    // The agent's session opens in the workdir setup left (given to it
    // when setup ran as root in a session of its own).
    let place = task
        .env
        .as_ref()
        .filter(|_| session.is_none())
        .map(|env| phases::place(env, false, false));
    let clock = Instant::now();
    let deadline = clock + cfg.task_timeout;
    // The deadline covers opening the session too: a workspace that does
    // not answer (a stopped tmux server) must not hold a task past it.
    let driven = tokio::time::timeout(cfg.task_timeout, async {
        if session.is_none() {
            let opened = shared.ws.open_session(pin, place).await;
            session = Some(TrackedShell::new(
                opened.map_err(|e| Attempt::Agent(AgentError::from(e)))?,
                activity.clone(),
            ));
        }
        let s = session.as_ref().expect("opened above");
        match &task.agent_command {
            Some(command) => {
                super::external::run(task, attempt, command, shared, s, conv, activity, deadline)
                    .await
            }
            None => drive(conv, &model, s, &cfg.tools, &cfg.limits, on_turn)
                .await
                .map_err(Attempt::Agent),
        }
    })
    .await;
    phases.agent_s = clock.elapsed().as_secs_f64();
    close(shared, task, session).await;
    match driven {
        Err(_) => Err(Attempt::Deadline(cfg.task_timeout)),
        Ok(r) => r,
    }
}

/// Setup: the task's workdir made anew (seed, files), then its setup
/// commands, all within `setup_timeout`. Leaves the agent's session in
/// `session`, unless setup ran as root (in a session of its own, closed
/// here) or the workdir is all there is to make. Also returns the phase's
/// seconds: the helper's time making the workdir ready plus the setup
/// commands' (not the start of the session's shell, which a task without
/// an environment has too); all of it when the phase timed out.
async fn set_up<W: Sessions, M: Models>(
    task: &Task,
    env: &TaskEnv,
    shared: &Shared<W, M>,
    activity: &Arc<Mutex<Activity>>,
    session: &mut Option<TrackedShell<W::Session>>,
    pin: &Pin,
) -> (Result<(), Attempt>, f64) {
    let _in = Gauge::enter(&shared.in_setup);
    let started = Instant::now();
    let mut seconds = 0.0;
    let deadline = Instant::now() + env.setup_timeout;
    let as_root = env.setup_as_root && !env.setup.is_empty();
    let mut own = None;
    let slot = if as_root { &mut own } else { &mut *session };
    // Past the deadline the helper has interrupted the command already;
    // the margin is for its answer.
    let bound = env.setup_timeout + CLEANUP_WAIT;
    let result = tokio::time::timeout(bound, async {
        let opened = shared
            .ws
            .open_session(pin, Some(phases::place(env, true, as_root)))
            .await;
        let opened = opened.map_err(|e| prepare_failed(env, e))?;
        seconds += W::prepare_s(&opened).unwrap_or(0.0);
        let s = slot.insert(TrackedShell::new(opened, activity.clone()));
        let clock = Instant::now();
        let ran = phases::setup(s, env, deadline).await.map_err(Attempt::from);
        seconds += clock.elapsed().as_secs_f64();
        ran
    })
    .await
    .unwrap_or_else(|_| {
        seconds = started.elapsed().as_secs_f64();
        Err(Attempt::Setup(SetupError {
            message: format!(
                "setup did not end within environment.setup_timeout = {}",
                humantime::format_duration(env.setup_timeout)
            ),
            retry: true,
        }))
    });
    close(shared, task, own).await;
    (result, seconds)
}

/// A workdir the helper could not make: a bad seed or path is the task's
/// setup failing; a workspace that broke meanwhile is the workspace's.
fn prepare_failed(env: &TaskEnv, e: WorkspaceError) -> Attempt {
    if e.is_retryable() || matches!(e, WorkspaceError::Lost(_)) {
        return Attempt::Agent(AgentError::Workspace(e));
    }
    Attempt::Setup(SetupError {
        message: format!("cannot prepare workdir `{}`: {e}", env.workdir),
        retry: false,
    })
}

/// Closes an attempt's session, bounded: past `CLEANUP_WAIT` it is
/// dropped, and its guard hands it to the reaper.
async fn close<W: Sessions, M: Models>(
    shared: &Shared<W, M>,
    task: &Task,
    session: Option<TrackedShell<W::Session>>,
) {
    let Some(session) = session else { return };
    match tokio::time::timeout(CLEANUP_WAIT, shared.ws.close_session(session.into_inner())).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("task {}: closing its session failed: {e}", task.id),
        Err(_) => tracing::warn!(
            "task {}: its session did not close within {}s; left to the reaper",
            task.id,
            CLEANUP_WAIT.as_secs()
        ),
    }
}

/// Removes a finished task's workdir (its `keep` did not hold it).
async fn remove_workdir<W: Sessions>(ws: &W, pin: &Pin, id: &str, workdir: &str) {
    match tokio::time::timeout(CLEANUP_WAIT, ws.remove_dir(pin, workdir)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => tracing::warn!("task {id}: cannot remove its workdir `{workdir}`: {e}"),
        Err(_) => tracing::warn!("task {id}: its workdir `{workdir}` was not removed in time"),
    }
}

/// What a caught panic said.
pub(crate) fn panic_message(p: &Box<dyn std::any::Any + Send>) -> String {
    p.downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| p.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "unknown panic".into())
}
