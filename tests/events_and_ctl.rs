//! `convoy run --events` and `convoy ctl`, through the real binary with
//! the local workspace and the script provider: the stream agrees with
//! `results.jsonl` and `summary.json`, and a running job is paused,
//! resized, has one conversation cancelled and is resumed through its
//! control socket.

mod support;

use std::collections::HashMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::{read_jsonl, script_job, stderr, TestJob};

/// `convoy run` with the event stream in `events.jsonl`.
const RUN_WITH_EVENTS: &[&str] = &[
    "run",
    "job.toml",
    "--out",
    "out",
    "--events",
    "events.jsonl",
];

fn job(rows: &[Value], workers: usize) -> TestJob {
    let job = TestJob::new();
    job.tasks(rows);
    job.manifest(&script_job(
        "kind = \"local\"\nworkdir = \"work\"",
        &format!("[run]\nworkers = {workers}\n[monitor]\ninterval = \"200ms\"\n"),
    ));
    job
}

fn quick(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"id": format!("t{i:02}"), "commands": [format!("echo {i}")], "answer": format!("a{i}")}))
        .collect()
}

/// Waits until `path` exists (the run makes it; no fixed sleep).
async fn wait_for_file(path: &Path) {
    for _ in 0..1200 {
        if path.exists() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("{} never appeared", path.display());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_event_stream_agrees_with_results_and_summary() {
    let job = job(&quick(12), 4);
    let out = job.convoy(RUN_WITH_EVENTS, &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let events = read_jsonl(&job.path("events.jsonl"));
    assert_eq!(events[0]["type"], "run_started");
    assert_eq!(events[0]["total_tasks"], 12);
    let last = events.last().unwrap();
    assert_eq!(last["type"], "run_finished");
    assert!(events.iter().all(|e| e["elapsed_s"].is_f64()));

    let mut started: HashMap<String, usize> = HashMap::new();
    let mut ended: HashMap<String, usize> = HashMap::new();
    let mut records = Vec::new();
    for e in &events {
        match e["type"].as_str().unwrap() {
            "task_started" => *started.entry(e["id"].as_str().unwrap().into()).or_default() += 1,
            "task_finished" => {
                *ended
                    .entry(e["record"]["id"].as_str().unwrap().into())
                    .or_default() += 1;
                records.push(e["record"].clone());
            }
            "task_cancelled" => *ended.entry(e["id"].as_str().unwrap().into()).or_default() += 1,
            _ => {}
        }
    }
    assert_eq!(started.len(), 12);
    assert!(ended.values().all(|n| *n == 1), "{ended:?}");
    assert_eq!(ended.len(), 12);
    assert_eq!(
        records,
        job.results(),
        "task_finished records equal results.jsonl"
    );

    let summary = job.summary();
    for key in [
        "done",
        "counts",
        "cancelled",
        "usage",
        "steps",
        "skipped",
        "exit_code",
        "total_tasks",
    ] {
        assert_eq!(
            last[key], summary[key],
            "run_finished.{key} equals summary.json"
        );
    }
    assert_eq!(last["leaks"]["verdict"], summary["leaks"]["verdict"]);
    assert!(events.iter().any(|e| e["type"] == "sample_taken"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_to_stdout_send_the_summary_to_stderr() {
    let job = job(&quick(3), 2);
    let out = job
        .convoy(&["run", "job.toml", "--out", "out", "--events", "-"], &[])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let stdout = String::from_utf8(out.stdout.clone()).unwrap();
    let lines: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("not JSON ({e}): {l}")))
        .collect();
    assert_eq!(lines.last().unwrap()["type"], "run_finished");
    assert!(stderr(&out).contains("3/3 tasks done"), "{}", stderr(&out));
}

async fn ctl(job: &TestJob, args: &[&str]) -> std::process::Output {
    let mut all = vec!["ctl", "out"];
    all.extend_from_slice(args);
    job.convoy(&all, &[]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ctl_pauses_resizes_cancels_one_conversation_and_resumes() {
    let mut rows = vec![json!({"id": "slow", "commands": ["sleep 600"], "answer": "never"})];
    rows.extend(quick(6));
    let job = job(&rows, 1);
    let mut child = job.spawn(support::convoy_bin(), RUN_WITH_EVENTS, &[]);
    let socket = job.path("out/convoy.ctl");
    wait_for_file(&socket).await;
    let mode = std::fs::metadata(&socket).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "the control socket is the owner's only");

    // One worker, and `slow` is first: it holds the pool in its command.
    loop {
        let out = ctl(&job, &["status", "--json"]).await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let s: Value = serde_json::from_slice(&out.stdout).unwrap();
        let waiting = &s["slowest"][0];
        if waiting["waiting_on"] == "command" {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = ctl(&job, &["pause"]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let status: Value =
        serde_json::from_slice(&ctl(&job, &["status", "--json"]).await.stdout).unwrap();
    assert_eq!(status["paused"], true);
    assert_eq!(status["in_flight"], 1);
    assert_eq!(status["slowest"][0]["id"], "slow");
    assert_eq!(status["slowest"][0]["command"], "sleep 600");
    let human = ctl(&job, &["status"]).await;
    let text = String::from_utf8(human.stdout).unwrap();
    assert!(
        text.contains("paused") && text.contains("slow (attempt 1"),
        "{text}"
    );

    let refused = ctl(&job, &["cancel", "no-such-task"]).await;
    assert_eq!(refused.status.code(), Some(1));
    assert!(
        stderr(&refused).contains("no-such-task"),
        "{}",
        stderr(&refused)
    );
    assert_eq!(ctl(&job, &["cancel", "slow"]).await.status.code(), Some(0));
    assert_eq!(ctl(&job, &["workers", "3"]).await.status.code(), Some(0));
    // Paused: nothing started after `slow` was cancelled.
    let s: Value = serde_json::from_slice(&ctl(&job, &["status", "--json"]).await.stdout).unwrap();
    assert_eq!(
        (s["in_flight"].clone(), s["done"].clone()),
        (json!(0), json!(0))
    );
    assert_eq!(s["workers"], 3);
    assert_eq!(ctl(&job, &["resume"]).await.status.code(), Some(0));

    let status = child.wait().await.unwrap();
    // `slow` was cancelled, not finished: the run is not complete.
    assert_eq!(status.code(), Some(1));
    assert!(!socket.exists(), "the socket is removed at exit");
    let ids: Vec<String> = job
        .results()
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), 6);
    assert!(
        !ids.contains(&"slow".to_string()),
        "a cancelled task is not a result"
    );
    let events = read_jsonl(&job.path("events.jsonl"));
    let actions: Vec<&str> = events
        .iter()
        .filter(|e| e["type"] == "control")
        .map(|e| e["action"].as_str().unwrap())
        .collect();
    assert_eq!(actions, vec!["pause", "cancel slow", "workers 3", "resume"]);
    assert!(events
        .iter()
        .any(|e| e["type"] == "task_cancelled" && e["id"] == "slow" && e["reason"] == "control"));
    assert_eq!(job.summary()["not_run"], 1);
}

#[tokio::test]
async fn ctl_says_when_no_run_is_there_and_when_its_socket_is_stale() {
    let job = job(&quick(1), 1);
    std::fs::create_dir_all(job.path("out")).unwrap();
    let out = ctl(&job, &["status"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("no convoy run is running"),
        "{}",
        stderr(&out)
    );
    // What a killed run leaves: the socket file with nobody listening.
    drop(std::os::unix::net::UnixListener::bind(job.path("out/convoy.ctl")).unwrap());
    let out = ctl(&job, &["pause"]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("is stale"), "{}", stderr(&out));
    // The next run replaces it and removes it at its end.
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(!job.path("out/convoy.ctl").exists());
}
