//! The engine with task environments, driven by the recording fakes of
//! `tests`: setup before the first model turn, verification after the
//! agent, rewards, fresh workdirs per attempt, and `keep`.

use std::sync::atomic::Ordering;
use std::time::Duration;

use super::fakes::{bash_then_finish, config, drain, job, started, tasks, Job};
use crate::agent::fakes::{reply, RecordingShell};
use crate::events::{EventKind, Finished, Status, VerifyStatus};
use crate::exit::Exit;
use crate::llm::LlmError;
use crate::tasks::{Keep, RewardRule, Task, TaskEnv, TaskVerify, VerifyWhen};
use crate::workspace::RunOutput;

fn env(id: &str, setup: &[&str]) -> TaskEnv {
    TaskEnv {
        workdir: format!("/tasks/{id}"),
        seed: Some("/workspace/repo".into()),
        files: vec![("task.md".into(), format!("do {id}"))],
        setup: setup.iter().map(|s| s.to_string()).collect(),
        setup_timeout: Duration::from_secs(60),
        setup_as_root: false,
        keep: Keep::Never,
    }
}

fn check(id: &str, reward: RewardRule) -> TaskVerify {
    TaskVerify {
        files: vec![("check.sh".into(), "exit 0".into())],
        command: format!("check {id}"),
        timeout: Duration::from_secs(30),
        reward,
        when: VerifyWhen::Finished,
        as_root: false,
    }
}

/// `n` tasks, each with its own environment and an exit-code check.
fn env_tasks(n: usize, setup: &[&str]) -> Vec<Task> {
    tasks(n)
        .into_iter()
        .map(|mut t| {
            t.env = Some(env(&t.id, setup));
            t.verify = Some(check(&t.id, RewardRule::ExitCode));
            t
        })
        .collect()
}

fn out(output: &str, exit_code: i32, timed_out: bool) -> RunOutput {
    RunOutput {
        output: output.into(),
        exit_code,
        timed_out,
        ..RunOutput::default()
    }
}

/// The final records, by task id.
fn records(events: &[EventKind]) -> Vec<&Finished> {
    let mut all: Vec<&Finished> = events
        .iter()
        .filter_map(|e| match e {
            EventKind::TaskFinished(f) => Some(&**f),
            _ => None,
        })
        .collect();
    all.sort_by(|a, b| a.record.id.cmp(&b.record.id));
    all
}

#[tokio::test(start_paused = true)]
async fn a_failing_setup_command_ends_setup_failed_and_the_model_is_never_asked() {
    let mut cfg = config(1);
    cfg.max_attempts = 3;
    let shell = RecordingShell::answering(|c| {
        Ok(match c {
            "make" => out("cc: error: boom\n", 2, false),
            _ => out("", 0, false),
        })
    });
    let Job {
        engine, ws, mut rx, ..
    } = job(cfg, shell, bash_then_finish);
    let exit = engine
        .run(started(1), env_tasks(1, &["git init -q", "make"]))
        .await;
    assert_eq!(exit, Exit::TasksFailed);
    let events = drain(&mut rx);
    let turns = events
        .iter()
        .filter(|e| matches!(e, EventKind::TurnDone { .. }));
    assert_eq!(turns.count(), 0, "the model is never asked");
    let done = records(&events);
    let r = &done[0].record;
    assert_eq!(
        (r.status, r.attempt),
        (Status::SetupFailed, 1),
        "not retried"
    );
    let error = r.error.as_deref().unwrap();
    assert!(
        error.contains("`make`") && error.contains("boom"),
        "{error}"
    );
    assert_eq!((r.steps, r.usage.total_tokens), (0, 0));
    assert_eq!(ws.shell.commands(), vec!["git init -q", "make"]);
    assert_eq!(r.verify.status, VerifyStatus::Skipped);
    assert!(r.phases.setup_s.is_some() && r.reward.is_none());
    // Setup is not part of the trajectory.
    assert!(done[0]
        .messages
        .iter()
        .all(|m| !m.to_string().contains("make")));
    assert_eq!(
        ws.opened.load(Ordering::SeqCst),
        ws.closed.load(Ordering::SeqCst)
    );
}

#[tokio::test(start_paused = true)]
async fn a_passing_check_rewards_one_a_failing_one_zero_and_the_workdir_goes() {
    let shell = RecordingShell::answering(|c| {
        Ok(match c {
            "check t-1" => out("FAIL\n", 1, false),
            _ => out("ok\n", 0, false),
        })
    });
    let Job {
        engine, ws, mut rx, ..
    } = job(config(1), shell, bash_then_finish);
    let mut all = env_tasks(2, &["setup"]);
    all[1].env.as_mut().unwrap().keep = Keep::Failed;
    assert_eq!(engine.run(started(2), all).await, Exit::Ok);
    let events = drain(&mut rx);
    let done = records(&events);
    let (a, b) = (&done[0].record, &done[1].record);
    assert_eq!(
        (a.reward, a.verify.status),
        (Some(1.0), VerifyStatus::Passed)
    );
    assert_eq!(
        (b.reward, b.verify.status),
        (Some(0.0), VerifyStatus::Failed)
    );
    assert_eq!(
        (b.verify.exit_code, b.verify.output.as_deref()),
        (Some(1), Some("FAIL\n"))
    );
    assert!(a.phases.verify_s.is_some() && a.phases.setup_s.is_some());
    // Setup, then the agent's command, then the check, per task.
    assert_eq!(
        ws.shell.commands(),
        ["setup", "ls", "check t-0", "setup", "ls", "check t-1"]
    );
    // t-0 (keep never) is removed; t-1 (keep failed, reward 0) is kept.
    assert_eq!(*ws.removed.lock().unwrap(), vec!["/tasks/t-0"]);
    // Per task: the agent's session made the workdir anew with its seed
    // and files; the check's session wrote only its hidden files.
    let places = ws.places.lock().unwrap().clone();
    let place = |i: usize| places[i].clone().expect("a task's own place");
    let (agent, verify) = (place(0), place(1));
    assert!(agent.prepare.fresh && agent.prepare.seed.is_some());
    assert_eq!(
        agent.prepare.files,
        vec![("task.md".into(), "do t-0".into())]
    );
    assert!(!verify.prepare.fresh && verify.prepare.seed.is_none());
    assert_eq!(verify.prepare.files[0].0, "check.sh");
    assert_eq!(verify.workdir, "/tasks/t-0");
}

#[tokio::test(start_paused = true)]
async fn last_line_rewards_and_a_check_that_times_out_has_no_reward() {
    let shell = RecordingShell::answering(|c| {
        Ok(match c {
            "check t-0" => out("2 of 4 passed\n0.5\n", 0, false),
            "check t-1" => out("score: high\n", 0, false),
            "check t-2" => out("waiting", 130, true),
            _ => out("", 0, false),
        })
    });
    let Job { engine, mut rx, .. } = job(config(1), shell, bash_then_finish);
    let mut all = env_tasks(3, &[]);
    for t in &mut all[..2] {
        t.verify.as_mut().unwrap().reward = RewardRule::LastLine;
    }
    engine.run(started(3), all).await;
    let events = drain(&mut rx);
    let done = records(&events);
    let got: Vec<(Option<f64>, VerifyStatus, Status)> = done
        .iter()
        .map(|f| (f.record.reward, f.record.verify.status, f.record.status))
        .collect();
    assert_eq!(
        got,
        vec![
            (Some(0.5), VerifyStatus::Failed, Status::Ok),
            (None, VerifyStatus::Error, Status::Ok),
            (None, VerifyStatus::Timeout, Status::Ok),
        ]
    );
}

#[tokio::test(start_paused = true)]
async fn a_retried_attempt_starts_from_a_fresh_workdir_and_runs_setup_again() {
    let mut cfg = config(1);
    cfg.max_attempts = 2;
    let shell = RecordingShell::output("");
    let first = std::sync::atomic::AtomicBool::new(true);
    let Job {
        engine, ws, mut rx, ..
    } = job(cfg, shell, move |_| {
        if first.swap(false, Ordering::SeqCst) {
            vec![Err(LlmError::Exhausted {
                attempts: 3,
                last: "HTTP 503".into(),
            })]
        } else {
            vec![Ok(reply::finish("done"))]
        }
    });
    engine.run(started(1), env_tasks(1, &["prep"])).await;
    let events = drain(&mut rx);
    let done = records(&events);
    assert_eq!(
        (done[0].record.status, done[0].record.attempt),
        (Status::Ok, 2)
    );
    assert_eq!(ws.shell.commands(), ["prep", "prep", "check t-0"]);
    let fresh: Vec<bool> = ws
        .places
        .lock()
        .unwrap()
        .iter()
        .map(|p| p.as_ref().unwrap().prepare.fresh)
        .collect();
    assert_eq!(
        fresh,
        vec![true, true, false],
        "each attempt, then the check"
    );
}

#[tokio::test(start_paused = true)]
async fn a_setup_that_times_out_is_retried_when_attempts_allow() {
    let mut cfg = config(1);
    cfg.max_attempts = 2;
    let timed_out = std::sync::atomic::AtomicBool::new(true);
    let shell = RecordingShell::answering(move |c| {
        Ok(match c {
            "slow" if timed_out.swap(false, Ordering::SeqCst) => out("...", 130, true),
            _ => out("", 0, false),
        })
    });
    let Job { engine, mut rx, .. } = job(cfg, shell, |_| vec![Ok(reply::finish("done"))]);
    engine.run(started(1), env_tasks(1, &["slow"])).await;
    let events = drain(&mut rx);
    let retried = events.iter().any(|e| {
        matches!(e, EventKind::AttemptFailed { error, retry: true, .. } if error.contains("setup timed out"))
    });
    assert!(retried, "{events:?}");
    let done = records(&events);
    assert_eq!(
        (done[0].record.status, done[0].record.attempt),
        (Status::Ok, 2)
    );
}

#[tokio::test(start_paused = true)]
async fn only_finished_tasks_are_verified_unless_when_is_always() {
    let mut cfg = config(1);
    cfg.limits.max_steps = 1;
    let shell = RecordingShell::output("");
    let Job {
        engine, ws, mut rx, ..
    } = job(cfg, shell, |_| vec![Ok(reply::bash("ls"))]);
    let mut all = env_tasks(2, &[]);
    all[1].verify.as_mut().unwrap().when = VerifyWhen::Always;
    engine.run(started(2), all).await;
    let events = drain(&mut rx);
    let done = records(&events);
    assert!(done.iter().all(|f| f.record.status == Status::MaxSteps));
    assert_eq!(done[0].record.verify.status, VerifyStatus::Skipped);
    assert_eq!(done[1].record.verify.status, VerifyStatus::Passed);
    assert_eq!(ws.shell.commands(), ["ls", "ls", "check t-1"]);
}
