//! Recording fakes of the engine's ports for its unit tests: a workspace
//! whose sessions share one recording shell, a model side whose
//! conversations each play a script, a probe that samples nothing real;
//! and the helpers that build a small job and read what it emitted.

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
use crate::events::{Event, EventKind, RunStarted, RunStats, Status};
use crate::llm::{ChatReply, LlmError, LlmReport};
use crate::manifest::{OnText, Price};
use crate::monitor::{Finding, MetricsSummary, Sample};
use crate::tasks::Task;
use crate::workspace::{Pin, Place, RunOutput, ShutdownReport, WorkspaceError};

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

    async fn open_session(
        &self,
        _pin: &Pin,
        place: Option<Place>,
    ) -> Result<FakeSession, WorkspaceError> {
        self.opened.fetch_add(1, Ordering::SeqCst);
        self.places.lock().unwrap().push(place);
        Ok(FakeSession(self.shell.clone()))
    }

    fn prepare_s(_session: &FakeSession) -> Option<f64> {
        None
    }

    /// A session of its own, opened and closed around the command.
    async fn check(
        &self,
        _pin: &Pin,
        place: Option<Place>,
        command: &str,
        timeout: Duration,
        max_output_bytes: u64,
    ) -> Result<RunOutput, WorkspaceError> {
        self.opened.fetch_add(1, Ordering::SeqCst);
        self.places.lock().unwrap().push(place);
        let out = self.shell.run(command, timeout, max_output_bytes).await;
        self.closed.fetch_add(1, Ordering::SeqCst);
        out
    }

    async fn remove_dir(&self, _pin: &Pin, workdir: &str) -> Result<(), WorkspaceError> {
        self.removed.lock().unwrap().push(workdir.to_string());
        Ok(())
    }

    async fn close_session(&self, _session: FakeSession) -> Result<(), WorkspaceError> {
        self.closed.fetch_add(1, Ordering::SeqCst);
        Ok(())
    }

    fn domain(&self, _pin: &Pin) -> usize {
        0
    }

    fn failures(&self, _pin: &Pin) -> u64 {
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

/// A forwarded request is the scripted model's next reply, as an
/// endpoint's `chat.completion`.
impl crate::gateway::Forward for Handle {
    async fn forward(
        &self,
        body: Map<String, Value>,
    ) -> Result<crate::gateway::Forwarded, crate::gateway::ForwardError> {
        let messages = body
            .get("messages")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let tools = body.get("tools").cloned().unwrap_or(Value::Null);
        let reply = self.0.complete(&messages, &tools).await?;
        Ok(crate::gateway::Forwarded {
            response: serde_json::json!({"object": "chat.completion", "choices": [
                {"index": 0, "message": reply.message, "finish_reason": reply.finish_reason}]}),
            reply,
        })
    }
}

impl Models for FakeModels {
    type Handle = Handle;

    fn forwarder(&self, task: &Task) -> crate::gateway::Forwarder {
        crate::gateway::forwarder(self.for_task(task))
    }

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
            agent_command: None,
        })
        .collect()
}

pub(super) fn config(workers: usize) -> Config {
    Config {
        tools: Arc::new(crate::agent::Toolbox::builtin()),
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
        gateway: None,
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

pub(super) fn outcome(events: &[EventKind]) -> &crate::events::Outcome {
    match events.last() {
        Some(EventKind::RunFinished(o)) => o,
        other => panic!("the last event is not run_finished: {other:?}"),
    }
}

pub(super) fn bash_then_finish(_: &Task) -> Vec<Result<ChatReply, LlmError>> {
    vec![Ok(reply::bash("ls")), Ok(reply::finish("done"))]
}

impl FakeModels {
    pub(super) fn report_empty() -> LlmReport {
        let m = FakeModels {
            play: Box::new(|_| Vec::new()),
            handles: Mutex::default(),
        };
        m.report()
    }
}
