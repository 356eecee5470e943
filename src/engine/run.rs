//! The engine's run: dispatch under the gate, the steering loop that
//! applies commands, the sampler, and the end (the workspace's final
//! sweep, the last sample, the outcome and its exit code).

use std::sync::{Arc, Mutex};
use std::time::{Instant, SystemTime};

use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::attempt::run_task;
use super::control::{self, Command, EngineHandle, StatusReport, Steering};
use super::ports::{Models, Probe, Sessions};
use super::state::{Config, Emitter, Gate, Shared};
use crate::events::{CancelReason, Event, EventKind, Outcome, RunStarted, SampleTaken};
use crate::exit::Exit;
use crate::monitor::LeakVerdict;
use crate::tasks::Task;

/// How many conversations `status` lists.
const SLOWEST: usize = 10;

/// One run of the engine. Build it, hand out its handle, then `run` it.
pub struct Engine<W, M, P> {
    shared: Arc<Shared<W, M>>,
    probe: P,
    handle: EngineHandle,
    commands: mpsc::UnboundedReceiver<Command>,
}

impl<W: Sessions, M: Models, P: Probe> Engine<W, M, P> {
    /// `events` receives everything the run does, in order; `steering`
    /// brings the commands (see `EngineHandle`).
    pub fn new(
        cfg: Config,
        ws: Arc<W>,
        models: Arc<M>,
        probe: P,
        events: mpsc::UnboundedSender<Event>,
        clock: Instant,
        steering: Steering,
    ) -> Engine<W, M, P> {
        let handle = steering.handle();
        let commands = steering.commands;
        let (gate, _) = watch::channel(Gate {
            running: 0,
            workers: cfg.workers.max(1),
            paused: false,
        });
        let shared = Arc::new(Shared {
            cfg,
            ws,
            models,
            infra: Default::default(),
            emit: Emitter::new(events, clock),
            gate,
            drain: CancellationToken::new(),
            cancel: CancellationToken::new(),
            stops: Mutex::default(),
            flights: Mutex::default(),
            in_setup: Default::default(),
            in_verify: Default::default(),
        });
        Engine {
            shared,
            probe,
            handle,
            commands,
        }
    }

    pub fn handle(&self) -> EngineHandle {
        self.handle.clone()
    }

    /// Runs `tasks` (until stopped) and ends with `run_finished`; returns
    /// the exit code the outcome gives.
    pub async fn run(self, start: RunStarted, tasks: Vec<Task>) -> Exit {
        let Engine {
            shared,
            probe,
            handle,
            commands,
        } = self;
        let total = start.total_tasks;
        shared.emit.emit(EventKind::RunStarted(Box::new(start)));
        // What was asked before the run started (a pause, a signal during
        // boot) applies before the first dispatch.
        let mut commands = commands;
        let mut signals = 0;
        while let Ok(c) = commands.try_recv() {
            apply(&shared, &handle, &mut signals, c);
        }
        let steering = tokio::spawn(steer(shared.clone(), handle.clone(), commands, signals));
        let stop_sampling = CancellationToken::new();
        let sampler = tokio::spawn(sample(shared.clone(), probe, stop_sampling.clone()));

        dispatch(&shared, tasks).await;

        stop_sampling.cancel();
        let probe = sampler
            .await
            .inspect_err(|e| {
                tracing::error!(
                    "the monitor stopped early ({e}): metrics.csv ends at its last sample"
                )
            })
            .ok();
        let shutdown = shared.ws.finish().await;
        shared.models.drop_idle_connections();
        crate::monitor::settle_fds().await;
        // Nothing is steered past this point: what was asked before it (a
        // reporter that failed at the last batch) counts, what the outcome
        // says stopped the run is final, and no event follows
        // `run_finished`.
        handle.send(Command::End);
        if let Err(e) = steering.await {
            tracing::error!("the steering loop ended abnormally: {e}");
        }
        let (leaks, metrics) = match probe {
            Some(mut probe) => {
                // The final sample, after cleanup: the end state of the
                // workspace.
                let last = probe.sample(|| shared.window()).await;
                shared.emit.emit(sampled(&shared, last));
                (probe.verdict(shutdown), probe.summary())
            }
            None => (LeakVerdict::new(shutdown, Vec::new(), None), None),
        };
        let mut outcome = Outcome {
            exit_code: 0,
            total_tasks: total,
            stats: shared.emit.stats(),
            stopped: shared.stopped(),
            leaks,
            metrics,
            llm: shared.models.report(),
            workers: shared.gate.borrow().workers,
            duration_s: shared.emit.elapsed().as_secs_f64(),
            finished_at: humantime::format_rfc3339_millis(SystemTime::now()).to_string(),
        };
        let exit = exit_code(&outcome, shared.cfg.fail_on_leak);
        outcome.exit_code = exit.as_u8();
        shared.emit.emit(EventKind::RunFinished(Box::new(outcome)));
        exit
    }
}

/// The exit code of a run, from how it ended: a signal, then an outage,
/// then a leak (if it fails the job), then any task not `ok` or not run.
pub fn exit_code(o: &Outcome, fail_on_leak: bool) -> Exit {
    match o.stopped.as_ref().map(|s| s.reason) {
        Some(CancelReason::Signal | CancelReason::SecondSignal) => Exit::Interrupted,
        Some(CancelReason::Outage) => Exit::Infrastructure,
        _ if o.leaks.verdict.is_leak() && fail_on_leak => Exit::Leak,
        _ if o.stats.not_ok() > 0 || o.stats.done < o.total_tasks => Exit::TasksFailed,
        _ => Exit::Ok,
    }
}

/// Starts every task while the gate is open, until drained, then waits
/// for the last conversation.
async fn dispatch<W: Sessions, M: Models>(shared: &Arc<Shared<W, M>>, tasks: Vec<Task>) {
    let mut set = JoinSet::new();
    let mut gate = shared.gate.subscribe();
    for task in tasks {
        let open = tokio::select! {
            biased;
            _ = shared.drain.cancelled() => false,
            g = gate.wait_for(Gate::open) => g.is_ok(),
        };
        if !open || shared.drain.is_cancelled() {
            break;
        }
        // While the endpoint is down, nothing new starts.
        let up = tokio::select! {
            biased;
            _ = shared.drain.cancelled() => break,
            up = shared.models.wait_up() => up,
        };
        if let Err(e) = up {
            shared.request_stop(CancelReason::Outage, e.to_string());
            break;
        }
        let running = shared.gate.borrow().running as u64;
        if let Some(why) = shared.cfg.budget.exceeded(shared.models.spent(), running) {
            shared.request_stop(CancelReason::Budget, why);
            break;
        }
        shared.gate.send_modify(|g| g.running += 1);
        set.spawn(run_task(task, shared.clone()));
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

/// Applies commands in the order they arrive.
async fn steer<W: Sessions, M: Models>(
    shared: Arc<Shared<W, M>>,
    handle: EngineHandle,
    mut commands: mpsc::UnboundedReceiver<Command>,
    mut signals: u32,
) {
    while let Some(c) = commands.recv().await {
        if matches!(c, Command::End) {
            return;
        }
        apply(&shared, &handle, &mut signals, c);
    }
}

/// Applies one command; `signals` counts the signals so far.
fn apply<W: Sessions, M: Models>(
    shared: &Arc<Shared<W, M>>,
    handle: &EngineHandle,
    signals: &mut u32,
    c: Command,
) {
    match c {
        Command::Stop { reason, detail } => shared.request_stop(reason, detail),
        Command::Signal if *signals == 0 => {
            *signals += 1;
            shared.request_stop(CancelReason::Signal, "interrupted by a signal".into());
            let (h, grace) = (handle.clone(), shared.cfg.grace);
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                h.send(Command::GraceOver);
            });
        }
        Command::Signal | Command::GraceOver => {
            if shared.cancel.is_cancelled() {
                return;
            }
            let detail = if matches!(c, Command::Signal) {
                "a second signal: in-flight conversations are cancelled"
            } else {
                "the grace after the signal ran out: in-flight conversations are cancelled"
            };
            shared.request_stop(CancelReason::SecondSignal, detail.into());
            shared.cancel.cancel();
            // A second signal bounds the run itself (`forward_signals`);
            // the grace running out does it here.
            if shared.cfg.hard_exit && matches!(c, Command::GraceOver) {
                crate::report::term::eprint_line(
                    "the grace ran out: cancelling in-flight conversations",
                );
                tokio::spawn(control::exit_after(
                    control::SHUTDOWN_BOUND,
                    Exit::Interrupted.as_u8(),
                ));
            }
        }
        Command::Pause | Command::Resume => {
            let paused = matches!(c, Command::Pause);
            shared.gate.send_modify(|g| g.paused = paused);
            let action = if paused { "pause" } else { "resume" };
            shared.emit.emit(EventKind::Control {
                action: action.into(),
            });
        }
        Command::Workers(n) => {
            let n = n.max(1);
            shared.gate.send_modify(|g| g.workers = n);
            shared.emit.emit(EventKind::Control {
                action: format!("workers {n}"),
            });
        }
        Command::Cancel { id, reply } => {
            // Under the lock: an attempt seals itself under it too, so
            // a cancel acknowledged here is one the attempt sees.
            let flights = shared.flights.lock().expect("flights lock");
            let answer = match flights.get(&id) {
                Some(f) if f.cancellable => {
                    f.cancel.cancel();
                    Ok(())
                }
                Some(_) => Err(format!(
                    "task `{id}` is just ending its attempt: too late to cancel"
                )),
                None => Err(format!("no conversation of task `{id}` is in flight")),
            };
            drop(flights);
            if answer.is_ok() {
                shared.emit.emit(EventKind::Control {
                    action: format!("cancel {id}"),
                });
            }
            let _ = reply.send(answer);
        }
        Command::End => {}
        Command::Status(reply) => {
            let stats = shared.emit.stats();
            let g = *shared.gate.borrow();
            let _ = reply.send(StatusReport {
                in_flight: stats.in_flight,
                done: stats.done,
                failed: stats.not_ok(),
                paused: g.paused,
                workers: g.workers,
                slowest: shared.slowest(SLOWEST),
            });
        }
    }
}

/// Samples every `sample_every` until told to stop; hands the probe back.
async fn sample<W: Sessions, M: Models, P: Probe>(
    shared: Arc<Shared<W, M>>,
    mut probe: P,
    stop: CancellationToken,
) -> P {
    loop {
        let s = probe.sample(|| shared.window()).await;
        shared.emit.emit(sampled(&shared, s));
        tokio::select! {
            _ = stop.cancelled() => return probe,
            _ = tokio::time::sleep(shared.cfg.sample_every) => {}
        }
    }
}

/// The events of one sample: its leak findings, then the sample.
fn sampled<W, M: Models>(shared: &Shared<W, M>, s: super::ports::Sampled) -> EventKind {
    for f in s.new_findings {
        tracing::warn!("leak detected ({}): {}", f.rule, f.detail);
        shared.emit.emit(EventKind::LeakFound(f));
    }
    EventKind::SampleTaken(Box::new(SampleTaken {
        sample: s.sample,
        llm_retries: shared.models.retries_by_reason(),
    }))
}
