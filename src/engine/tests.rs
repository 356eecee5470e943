//! The engine driven by recording fakes: no tmux, Docker or HTTP. Each
//! test runs a small job to its `run_finished` and checks the events, the
//! outcome and what the fakes saw. Time is tokio's paused clock, so
//! deadlines and graces pass at once and in order; nothing waits on a
//! sleep of real time.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Map, Value};
use tokio::sync::mpsc;

use super::ports::{Models, Probe, Sampled, Sessions};
use super::*;
use crate::agent::fakes::{reply, RecordingShell, ScriptedModel};
use crate::agent::{DriveLimits, Model, Shell};
use crate::events::{CancelReason, Event, EventKind, RunStarted, RunStats, Status};
use crate::exit::Exit;
use crate::llm::{ChatReply, LlmError, LlmReport};
use crate::manifest::{OnText, Price};
use crate::monitor::{Finding, MetricsSummary, Sample};
use crate::reporters::{fan_out, Reporter};
use crate::tasks::Task;
use crate::workspace::{Place, RunOutput, ShutdownReport, WorkspaceError};

/// A workspace whose sessions all run commands on one recording shell,
/// and that records where each session opened and what it removed.
pub(super) struct FakeWorkspace {
    pub shell: Arc<RecordingShell>,
    pub opened: AtomicUsize,
    pub closed: AtomicUsize,
    failures: AtomicU64,
    pub places: Mutex<Vec<Option<Place>>>,
    pub removed: Mutex<Vec<String>>,
}

pub(super) struct FakeSession(Arc<RecordingShell>);

impl Shell for FakeSession {
    fn run(
        &self,
        command: &str,
        timeout: Duration,
        max_output_bytes: u64,
    ) -> impl std::future::Future<Output = Result<RunOutput, WorkspaceError>> + Send {
        self.0.run(command, timeout, max_output_bytes)
    }
}

impl Sessions for FakeWorkspace {
    type Session = FakeSession;

    async fn open_session(&self, place: Option<Place>) -> Result<FakeSession, WorkspaceError> {
        self.opened.fetch_add(1, Ordering::SeqCst);
        self.places.lock().unwrap().push(place);
        Ok(FakeSession(self.shell.clone()))
    }

    async fn remove_dir(&self, workdir: &str) -> Result<(), WorkspaceError> {
        self.removed.lock().unwrap().push(workdir.to_string());
        Ok(())
    }

    async fn close_session(&self, _session: FakeSession) -> Result<(), WorkspaceError> {
        self.closed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn failures(&self) -> u64 {
        self.failures.load(Ordering::SeqCst)
    }

    async fn finish(&self) -> ShutdownReport {
        ShutdownReport::default()
    }
}

type Play = dyn Fn(&Task) -> Vec<Result<ChatReply, LlmError>> + Send + Sync;

/// A model side whose conversations each play what `play` gives their
/// task, and whose spend is the replies it gave.
pub(super) struct FakeModels {
    play: Box<Play>,
    handles: Mutex<HashMap<String, Arc<ScriptedModel>>>,
}

pub(super) struct Handle(Arc<ScriptedModel>);

impl Model for Handle {
    fn complete(
        &self,
        messages: &[Value],
        tools: &Value,
    ) -> impl std::future::Future<Output = Result<ChatReply, LlmError>> + Send {
        self.0.complete(messages, tools)
    }
}

impl Models for FakeModels {
    type Handle = Handle;

    fn for_task(&self, task: &Task) -> Handle {
        let model = Arc::new(ScriptedModel::from_results((self.play)(task)));
        self.handles
            .lock()
            .unwrap()
            .insert(task.id.clone(), model.clone());
        Handle(model)
    }

    async fn wait_up(&self) -> Result<(), LlmError> {
        Ok(())
    }

    fn spent(&self) -> (u64, u64, Option<Price>) {
        let replies: usize = self
            .handles
            .lock()
            .unwrap()
            .values()
            .map(|m| m.seen().len())
            .sum();
        let r = replies as u64;
        (
            r * reply::USAGE.prompt_tokens,
            r * reply::USAGE.completion_tokens,
            None,
        )
    }

    fn retries_by_reason(&self) -> std::collections::BTreeMap<String, u64> {
        Default::default()
    }

    fn drop_idle_connections(&self) {}

    fn report(&self) -> LlmReport {
        serde_json::from_value(serde_json::json!({
            "requests": 0, "prompt_tokens": 0, "completion_tokens": 0, "cost": null,
            "retries_by_reason": {}, "limiter": null, "outages": 0, "outage_s": 0.0
        }))
        .expect("an empty report")
    }
}

#[derive(Default)]
pub(super) struct FakeProbe {
    samples: usize,
}

impl Probe for FakeProbe {
    async fn sample(&mut self, stats: impl FnOnce() -> RunStats + Send) -> Sampled {
        self.samples += 1;
        let stats = stats();
        Sampled {
            sample: Sample {
                in_flight: stats.in_flight,
                done: stats.done,
                ..Sample::default()
            },
            new_findings: Vec::<Finding>::new(),
        }
    }

    fn verdict(&self, shutdown: ShutdownReport) -> crate::monitor::LeakVerdict {
        crate::monitor::LeakVerdict::new(shutdown, Vec::new(), Some(&[]))
    }

    fn summary(&self) -> Option<MetricsSummary> {
        None
    }
}

pub(super) fn tasks(n: usize) -> Vec<Task> {
    (0..n)
        .map(|i| Task {
            index: i,
            id: format!("t-{i}"),
            line: i + 1,
            vars: Map::new(),
            system: None,
            user: format!("task {i}"),
            env: None,
            verify: None,
            group: None,
            sample: None,
        })
        .collect()
}

pub(super) fn config(workers: usize) -> Config {
    Config {
        tools: crate::agent::tool_schemas(),
        limits: DriveLimits {
            max_steps: 10,
            command_timeout: Duration::from_secs(30),
            max_observation_chars: 1000,
            on_text: OnText::Finish,
            continue_prompt: "go on".into(),
        },
        task_timeout: Duration::from_secs(600),
        max_attempts: 1,
        max_infra_retries: 2,
        workers,
        grace: Duration::from_secs(60),
        sample_every: Duration::from_secs(5),
        budget: Budget::unlimited(),
        fail_on_leak: false,
        hard_exit: false,
    }
}

pub(super) struct Job {
    pub engine: Engine<FakeWorkspace, FakeModels, FakeProbe>,
    pub ws: Arc<FakeWorkspace>,
    pub rx: mpsc::UnboundedReceiver<Event>,
}

pub(super) fn job(
    cfg: Config,
    shell: RecordingShell,
    play: impl Fn(&Task) -> Vec<Result<ChatReply, LlmError>> + Send + Sync + 'static,
) -> Job {
    let ws = Arc::new(FakeWorkspace {
        shell: Arc::new(shell),
        opened: AtomicUsize::new(0),
        closed: AtomicUsize::new(0),
        failures: AtomicU64::new(0),
        places: Mutex::default(),
        removed: Mutex::default(),
    });
    let models = Arc::new(FakeModels {
        play: Box::new(play),
        handles: Mutex::default(),
    });
    let (tx, rx) = mpsc::unbounded_channel();
    let engine = Engine::new(
        cfg,
        ws.clone(),
        models,
        FakeProbe::default(),
        tx,
        Instant::now(),
        Steering::new(),
    );
    Job { engine, ws, rx }
}

pub(super) fn started(total: u64) -> RunStarted {
    RunStarted {
        name: "test".into(),
        run_dir: "runs/test".into(),
        total_tasks: total,
        skipped: 0,
        to_run: total,
        workers: 1,
        shard: None,
        started_at: "2026-01-01T00:00:00Z".into(),
        earlier: RunStats::default(),
    }
}

/// Every event the run emitted, once it has ended.
pub(super) fn drain(rx: &mut mpsc::UnboundedReceiver<Event>) -> Vec<EventKind> {
    let mut all = Vec::new();
    while let Ok(ev) = rx.try_recv() {
        all.push(ev.kind);
    }
    all
}

pub(super) fn finished(events: &[EventKind]) -> Vec<(String, Status, u32)> {
    events
        .iter()
        .filter_map(|e| match e {
            EventKind::TaskFinished(f) => {
                Some((f.record.id.clone(), f.record.status, f.record.attempt))
            }
            _ => None,
        })
        .collect()
}

fn outcome(events: &[EventKind]) -> &crate::events::Outcome {
    match events.last() {
        Some(EventKind::RunFinished(o)) => o,
        other => panic!("the last event is not run_finished: {other:?}"),
    }
}

pub(super) fn bash_then_finish(_: &Task) -> Vec<Result<ChatReply, LlmError>> {
    vec![Ok(reply::bash("ls")), Ok(reply::finish("done"))]
}

#[tokio::test(start_paused = true)]
async fn every_task_finishes_ok_between_run_started_and_run_finished() {
    let Job { engine, ws, mut rx } =
        job(config(2), RecordingShell::output("a\n"), bash_then_finish);
    let exit = engine.run(started(5), tasks(5)).await;
    let events = drain(&mut rx);
    assert!(matches!(events[0], EventKind::RunStarted(_)));
    assert_eq!(exit, Exit::Ok);
    let done = finished(&events);
    assert_eq!(done.len(), 5);
    assert!(done.iter().all(|(_, s, a)| *s == Status::Ok && *a == 1));
    let starts = events
        .iter()
        .filter(|e| matches!(e, EventKind::TaskStarted { .. }))
        .count();
    assert_eq!(starts, 5);
    let o = outcome(&events);
    assert_eq!((o.stats.done, o.exit_code), (5, 0));
    assert_eq!(ws.opened.load(Ordering::SeqCst), 5);
    assert_eq!(
        ws.closed.load(Ordering::SeqCst),
        5,
        "every session is closed"
    );
    assert_eq!(ws.shell.commands(), vec!["ls"; 5]);
}

#[tokio::test(start_paused = true)]
async fn a_transient_failure_is_retried_and_a_context_limit_is_not() {
    let mut cfg = config(1);
    cfg.max_attempts = 3;
    let calls = Arc::new(AtomicUsize::new(0));
    let seen = calls.clone();
    let Job { engine, mut rx, .. } = job(cfg, RecordingShell::output(""), move |t| {
        if t.id == "t-1" {
            return vec![Err(LlmError::ContextLimit("too long".into()))];
        }
        // t-0: the first attempt's request fails for good, the second works.
        if seen.fetch_add(1, Ordering::SeqCst) == 0 {
            vec![Err(LlmError::Exhausted {
                attempts: 3,
                last: "HTTP 503".into(),
            })]
        } else {
            vec![Ok(reply::finish("ok"))]
        }
    });
    let exit = engine.run(started(2), tasks(2)).await;
    let events = drain(&mut rx);
    let mut done = finished(&events);
    done.sort();
    assert_eq!(
        done,
        vec![
            ("t-0".into(), Status::Ok, 2),
            ("t-1".into(), Status::ContextLimit, 1)
        ]
    );
    let failures: Vec<(String, bool)> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::AttemptFailed { id, retry, .. } => Some((id.clone(), *retry)),
            _ => None,
        })
        .collect();
    assert!(failures.contains(&("t-0".into(), true)), "{failures:?}");
    assert!(failures.contains(&("t-1".into(), false)), "{failures:?}");
    assert_eq!(exit, Exit::TasksFailed);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn a_deadline_ends_a_task_as_timeout_while_a_cancel_leaves_it_unrecorded() {
    let mut cfg = config(2);
    cfg.task_timeout = Duration::from_secs(30);
    let Job { engine, ws, mut rx } = job(cfg, RecordingShell::hanging(), |t| {
        vec![Ok(reply::bash(&format!("hang {}", t.id)))]
    });
    let handle = engine.handle();
    let shell = ws.shell.clone();
    let run = tokio::spawn(engine.run(started(2), tasks(2)));
    shell.wait_calls(2).await;
    // t-1 is cancelled by hand; t-0 runs into its deadline.
    handle.cancel("t-1".into()).await.expect("t-1 is in flight");
    assert!(handle.cancel("t-9".into()).await.is_err());
    let exit = run.await.unwrap();
    let events = drain(&mut rx);
    assert_eq!(finished(&events), vec![("t-0".into(), Status::Timeout, 1)]);
    assert!(events.iter().any(|e| matches!(e,
        EventKind::TaskCancelled { id, reason: CancelReason::Control, .. } if id == "t-1")));
    assert!(events.iter().any(|e| matches!(e,
        EventKind::Control { action } if action == "cancel t-1")));
    let o = outcome(&events);
    assert_eq!((o.stats.done, o.stats.cancelled), (1, 1));
    // One task timed out and one was not run to its end.
    assert_eq!(exit, Exit::TasksFailed);
    assert!(
        o.stopped.is_none(),
        "one cancelled conversation does not stop the run"
    );
}

#[tokio::test(start_paused = true)]
async fn a_token_budget_stops_dispatching_and_lets_running_tasks_finish() {
    let mut cfg = config(1);
    // Each task uses two replies of 15 tokens: the budget holds two tasks.
    cfg.budget = Budget::tokens(60, 30);
    let Job { engine, mut rx, .. } = job(cfg, RecordingShell::output(""), bash_then_finish);
    let exit = engine.run(started(5), tasks(5)).await;
    let events = drain(&mut rx);
    assert_eq!(finished(&events).len(), 2, "{:?}", finished(&events));
    let o = outcome(&events);
    let stopped = o.stopped.as_ref().expect("a stop reason");
    assert_eq!(stopped.reason, CancelReason::Budget);
    assert!(
        stopped.detail.contains("token budget"),
        "{}",
        stopped.detail
    );
    assert_eq!(exit, Exit::TasksFailed, "tasks were left unrun");
}

#[tokio::test(start_paused = true)]
async fn a_second_signal_cancels_what_the_first_let_run() {
    let Job { engine, ws, mut rx } = job(config(2), RecordingShell::hanging(), |t| {
        vec![Ok(reply::bash(&format!("hang {}", t.id)))]
    });
    let handle = engine.handle();
    let shell = ws.shell.clone();
    let run = tokio::spawn(engine.run(started(4), tasks(4)));
    shell.wait_calls(2).await;
    handle.send(Command::Signal);
    // The first signal drains: the two in flight stay, nothing new starts.
    let status = handle.status().await.expect("the engine runs");
    assert_eq!((status.in_flight, status.done), (2, 0));
    assert!(status.slowest.iter().all(|w| w.waiting_on == "command"));
    handle.send(Command::Signal);
    let exit = run.await.unwrap();
    let events = drain(&mut rx);
    let reasons: Vec<CancelReason> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::CancelRequested { reason, .. } => Some(*reason),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        vec![CancelReason::Signal, CancelReason::SecondSignal]
    );
    let cancelled = events
        .iter()
        .filter(|e| {
            matches!(
                e,
                EventKind::TaskCancelled {
                    reason: CancelReason::SecondSignal,
                    ..
                }
            )
        })
        .count();
    assert_eq!(cancelled, 2);
    assert_eq!(exit, Exit::Interrupted);
    assert_eq!(shell.calls().len(), 2, "no task started after the signal");
    assert_eq!(ws.opened.load(Ordering::SeqCst), 2);
}

#[tokio::test(start_paused = true)]
async fn pause_holds_dispatch_until_resume_and_workers_can_change() {
    let Job { engine, ws, mut rx } = job(config(1), RecordingShell::output(""), bash_then_finish);
    let handle = engine.handle();
    handle.send(Command::Pause);
    let run = tokio::spawn(engine.run(started(3), tasks(3)));
    let status = handle.status().await.expect("the engine runs");
    assert!(status.paused);
    assert_eq!((status.in_flight, status.done), (0, 0));
    assert_eq!(
        ws.opened.load(Ordering::SeqCst),
        0,
        "paused before the first task"
    );
    handle.send(Command::Workers(3));
    handle.send(Command::Resume);
    assert_eq!(run.await.unwrap(), Exit::Ok);
    let events = drain(&mut rx);
    assert_eq!(finished(&events).len(), 3);
    let actions: Vec<&str> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::Control { action } => Some(action.as_str()),
            _ => None,
        })
        .collect();
    assert_eq!(actions, vec!["pause", "workers 3", "resume"]);
    assert_eq!(outcome(&events).workers, 3);
}

/// A reporter that fails (or panics) at the first finished task, and
/// records whether it still saw the run's end and was finished.
struct Failing {
    panics: bool,
    saw: Arc<Mutex<Vec<&'static str>>>,
}

/// A reporter that raises `flag` once the engine has taken the request to
/// stop (its `cancel_requested` event is out).
struct StopSeen(Arc<std::sync::atomic::AtomicBool>);

impl Reporter for StopSeen {
    fn name(&self) -> &'static str {
        "the watcher"
    }

    fn on(&mut self, ev: &Event) -> anyhow::Result<()> {
        if matches!(ev.kind, EventKind::CancelRequested { .. }) {
            self.0.store(true, Ordering::SeqCst);
        }
        Ok(())
    }
}

impl Reporter for Failing {
    fn name(&self) -> &'static str {
        "the failing reporter"
    }

    fn on(&mut self, ev: &Event) -> anyhow::Result<()> {
        match ev.kind {
            EventKind::TaskFinished(_) if self.panics => panic!("a bug"),
            EventKind::TaskFinished(_) => anyhow::bail!("disk full"),
            EventKind::RunFinished(_) => {
                self.saw.lock().unwrap().push("run_finished");
                Ok(())
            }
            _ => Ok(()),
        }
    }

    fn finish(self: Box<Self>) -> anyhow::Result<()> {
        self.saw.lock().unwrap().push("finish");
        Ok(())
    }
}

// Real time: tokio's paused clock does not advance while a blocking task
// (the reporters' thread) runs. Two workers: a task waiting (below) holds
// one while the engine applies the stop on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_panicking_reporter_stops_the_run_as_an_outage() {
    for (panics, why) in [(false, "disk full"), (true, "it panicked: a bug")] {
        // Every task after the first waits until the engine has taken the
        // stop the failure asked for (on the first one's result), so the
        // run cannot outrun it.
        let stopped = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let seen = stopped.clone();
        let Job { engine, ws, rx } = job(config(1), RecordingShell::output(""), move |t| {
            while t.id != "t-0" && !seen.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(1));
            }
            bash_then_finish(t)
        });
        let saw = Arc::new(Mutex::new(Vec::new()));
        let failing = Failing {
            panics,
            saw: saw.clone(),
        };
        let reporters: Vec<Box<dyn Reporter>> =
            vec![Box::new(failing), Box::new(StopSeen(stopped))];
        let reported = fan_out(reporters, rx, engine.handle());
        let exit = engine.run(started(50), tasks(50)).await;
        let err = reported.await.unwrap().expect_err("the reporter failed");
        assert!(err.to_string().contains(why), "{err}");
        assert_eq!(exit, Exit::Infrastructure);
        assert!(
            ws.opened.load(Ordering::SeqCst) < 50,
            "dispatching stopped after the reporter failed"
        );
        // Still handed the run's end (summary.json) and finished (close).
        assert_eq!(*saw.lock().unwrap(), vec!["run_finished", "finish"]);
    }
}

#[test]
fn the_exit_code_follows_the_highest_stop_reason_then_leaks_then_tasks() {
    use crate::events::{Outcome, Stopped};
    use crate::monitor::LeakVerdict;
    let outcome =
        |stopped: Option<CancelReason>, leak: bool, done: u64| {
            let findings = if leak {
                vec![Finding {
                    rule: "orphan_session",
                    detail: "x".into(),
                    at_s: 1.0,
                }]
            } else {
                Vec::new()
            };
            let mut stats = RunStats::default();
            for _ in 0..done {
                stats.on(&EventKind::TaskFinished(Box::new(crate::events::Finished {
                record: serde_json::from_value(serde_json::json!({
                    "id": "t", "status": "ok", "final": null, "steps": 1,
                    "usage": reply::USAGE, "attempt": 1, "started_at": "", "finished_at": "",
                    "duration_s": 0.0, "error": null
                }))
                .unwrap(),
                messages: Vec::new(),
            })));
            }
            Outcome {
                exit_code: 0,
                total_tasks: 2,
                stats,
                stopped: stopped.map(|reason| Stopped {
                    reason,
                    detail: String::new(),
                }),
                leaks: LeakVerdict::new(ShutdownReport::default(), findings, Some(&[])),
                metrics: None,
                llm: FakeModels::report_empty(),
                workers: 1,
                duration_s: 1.0,
                finished_at: String::new(),
            }
        };
    assert_eq!(exit_code(&outcome(None, false, 2), true), Exit::Ok);
    assert_eq!(exit_code(&outcome(None, false, 1), true), Exit::TasksFailed);
    assert_eq!(exit_code(&outcome(None, true, 2), true), Exit::Leak);
    assert_eq!(exit_code(&outcome(None, true, 2), false), Exit::Ok);
    assert_eq!(
        exit_code(&outcome(Some(CancelReason::Budget), false, 1), true),
        Exit::TasksFailed
    );
    assert_eq!(
        exit_code(&outcome(Some(CancelReason::Outage), true, 2), true),
        Exit::Infrastructure
    );
    assert_eq!(
        exit_code(&outcome(Some(CancelReason::SecondSignal), false, 2), true),
        Exit::Interrupted
    );
}

impl FakeModels {
    fn report_empty() -> LlmReport {
        let m = FakeModels {
            play: Box::new(|_| Vec::new()),
            handles: Mutex::default(),
        };
        m.report()
    }
}

#[tokio::test(start_paused = true)]
async fn a_signal_before_the_first_dispatch_starts_nothing() {
    // As when Ctrl-C comes while the workspace boots.
    let Job { engine, ws, mut rx } = job(config(2), RecordingShell::output(""), bash_then_finish);
    engine.handle().send(Command::Signal);
    assert_eq!(engine.run(started(3), tasks(3)).await, Exit::Interrupted);
    assert_eq!(ws.opened.load(Ordering::SeqCst), 0);
    let events = drain(&mut rx);
    let o = outcome(&events);
    assert_eq!((o.stats.done, o.exit_code), (0, 130));
    assert_eq!(o.stopped.as_ref().unwrap().reason, CancelReason::Signal);
}
