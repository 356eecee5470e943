//! The engine driven by recording fakes: no tmux, Docker or HTTP. Each
//! test runs a small job to its `run_finished` and checks the events, the
//! outcome and what the fakes saw. Time is tokio's paused clock, so
//! deadlines and graces pass at once and in order; nothing waits on a
//! sleep of real time.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use super::fakes::*;
use super::*;
use crate::agent::fakes::{reply, RecordingShell};
use crate::events::{CancelReason, Event, EventKind, RunStats, Status};
use crate::exit::Exit;
use crate::llm::LlmError;
use crate::monitor::Finding;
use crate::reporters::{fan_out, Reporter};
use crate::workspace::ShutdownReport;

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
            return vec![Err(LlmError::ContextLimit {
                status: 400,
                message: "too long".into(),
                body: String::new(),
            })];
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
                tools: None,
                turns: Vec::new(),
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
