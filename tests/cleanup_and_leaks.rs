//! Cleanup on every exit path, signals, RLIMIT_NOFILE, and the leak
//! monitor catching leaks made on purpose.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::fake_llm::FakeLlm;
use support::{containers_of_run, observations, processes_with, script, stderr, TestJob};

fn summary(job: &TestJob) -> Value {
    job.summary()
}

fn assert_nothing_left(job: &TestJob, marker: &str) {
    assert_eq!(job.tmp_entries(), Vec::<String>::new(), "temp entries left");
    let tmp = job.path("tmp").display().to_string();
    assert_eq!(
        processes_with(&tmp),
        Vec::<String>::new(),
        "helper or tmux left"
    );
    assert_eq!(
        processes_with(marker),
        Vec::<String>::new(),
        "session processes left"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exit_path_closes_its_session_and_kills_its_processes() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    // Each conversation first leaves a background process behind, then
    // ends its own way.
    let bg = |tag: &str| json!({"calls": [["bash", {"command": format!("sleep 1000.4{tag} & echo started")}]]});
    let endless = json!({"calls": [["bash", {"command": "true"}]]});
    let rows = [
        (
            "finish",
            json!([bg("1"), {"calls": [["finish", {"message": "done"}]]}]),
        ),
        ("error", json!([bg("2"), {"status": 400}])),
        (
            "steps",
            json!([bg("3"), endless.clone(), endless.clone(), endless]),
        ),
        (
            "deadline",
            json!([bg("4"), {"calls": [["bash", {"command": "sleep 1000.49"}]]}]),
        ),
        (
            "panic",
            json!([bg("5"), {"calls": [["bash", {"command": "convoy-test-panic"}]]}]),
        ),
    ];
    let rows: Vec<Value> = rows
        .iter()
        .map(|(id, turns)| json!({"id": id, "script": script(turns.clone())}))
        .collect();
    job.tasks(&rows);
    job.manifest(&format!(
        r#"
[prompt]
user = "{{{{ script }}}}"
[llm]
base_url = "{}"
model = "m"
max_retries = 0
[agent]
max_steps = 3
[workspace]
kind = "local"
workdir = "work"
[run]
task_timeout = "3s"
max_attempts = 1
[monitor]
interval = "300ms"
on_leak = "fail"
"#,
        llm.base_url()
    ));
    let out = job.run(&[("CONVOY_TEST_PANIC", "convoy-test-panic")]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let results = job.results();
    let status = |id: &str| results.iter().find(|r| r["id"] == id).unwrap()["status"].clone();
    assert_eq!(status("finish"), "ok");
    assert_eq!(status("error"), "failed");
    assert_eq!(status("steps"), "max_steps");
    assert_eq!(status("deadline"), "timeout");
    assert_eq!(status("panic"), "failed");
    let panic = results.iter().find(|r| r["id"] == "panic").unwrap();
    assert!(panic["error"].as_str().unwrap().contains("panicked"));
    for id in ["finish", "error", "steps", "deadline", "panic"] {
        assert_eq!(observations(&job.trajectory(id))[0], "started\n");
    }
    let s = summary(&job);
    assert_eq!(s["leaks"]["verdict"], "clean", "{s}");
    assert_eq!(s["metrics"]["tmux_sessions_end"], 0);
    assert_eq!(s["metrics"]["workspace_procs_end"], 0);
    let csv = std::fs::read_to_string(job.path("out/metrics.csv")).unwrap();
    assert!(csv.starts_with("elapsed_s,open_fds,threads,rss_bytes,tmux_sessions,workspace_procs,"));
    assert!(csv.lines().count() >= 3, "{csv}");
    assert_nothing_left(&job, "sleep 1000.4");
}

fn leak_manifest(extra: &str) -> String {
    support::script_job(
        "kind = \"local\"\nworkdir = \"work\"",
        &format!("[monitor]\ninterval = \"200ms\"\non_leak = \"fail\"\n{extra}"),
    )
}

/// `n` scripted tasks that each run `command`, then answer.
fn command_rows(n: usize, command: &str) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"id": format!("t{i}"), "commands": [command], "answer": "ok"}))
        .collect()
}

/// Runs a job whose leak must be caught by `rule`: exit 3 (`on_leak =
/// "fail"`), verdict `leak`, the rule logged. Returns the summary and the
/// rule's finding.
async fn run_caught(job: &TestJob, envs: &[(&str, &str)], rule: &str) -> (Value, Value) {
    let out = job.run(envs).await;
    assert_eq!(out.status.code(), Some(3), "{}", stderr(&out));
    let s = summary(job);
    assert_eq!(s["leaks"]["verdict"], "leak");
    let finding = s["leaks"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["rule"] == rule)
        .unwrap_or_else(|| panic!("no {rule} finding: {s}"))
        .clone();
    let logged = format!("leak detected ({rule})");
    assert!(stderr(&out).contains(&logged), "{}", stderr(&out));
    (s, finding)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_nobody_closes_is_caught_and_named() {
    let job = TestJob::new();
    job.tasks(&command_rows(3, "sleep 0.5"));
    job.manifest(&leak_manifest("[run]\nworkers = 1\n"));
    let (s, orphan) = run_caught(&job, &[("CONVOY_TEST_LEAK", "session")], "orphan_session").await;
    assert!(
        orphan["detail"].as_str().unwrap().contains("c0"),
        "{orphan}"
    );
    assert!(!s["leaks"]["stray_sessions"].as_array().unwrap().is_empty());
    assert_nothing_left(&job, "CONVOY_NOTHING");
}

/// A process that sheds its session's marker and its process group is
/// still in the session's tree (the shell is a subreaper): closing the
/// session kills it. The next conversation looks for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_escapes_its_session_dies_with_the_session() {
    let job = TestJob::new();
    job.tasks(&[
        json!({
            "id": "escape",
            "commands": ["env -u CONVOY_SESSION_DIR setsid sleep 1000.92 >/dev/null 2>&1 & sleep 1"],
            "answer": "ok"
        }),
        json!({"id": "look", "commands": ["pgrep -fc 'sleep 1000.92' || true"], "answer": "ok"}),
    ]);
    job.manifest(&leak_manifest("[run]\nworkers = 1\n"));
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(observations(&job.trajectory("look")), ["0\n"]);
    assert_eq!(summary(&job)["leaks"]["verdict"], "clean");
    assert_nothing_left(&job, "sleep 1000.92");
}

/// A process that survives its session (here: the helper is told not to
/// sweep) is an `orphan_process` finding, never a silent `clean`, and is
/// killed at the end.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_process_that_outlives_its_session_is_caught_and_killed_at_the_end() {
    let job = TestJob::new();
    job.tasks(&[
        json!({
            "id": "escape",
            "commands": ["env -u CONVOY_SESSION_DIR setsid sleep 1000.91 >/dev/null 2>&1 & sleep 1"],
            "answer": "ok"
        }),
        // Time for the monitor to see the survivor twice.
        json!({"id": "after", "commands": ["sleep 1.5"], "answer": "ok"}),
    ]);
    job.manifest(&leak_manifest("[run]\nworkers = 1\n"));
    let (s, orphan) = run_caught(&job, &[("CONVOY_TEST_LEAK", "process")], "orphan_process").await;
    assert!(
        orphan["detail"].as_str().unwrap().contains("(no session)"),
        "{orphan}"
    );
    assert_eq!(s["leaks"]["stray_processes"].as_array().unwrap().len(), 1);
    assert_nothing_left(&job, "sleep 1000.91");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_descriptor_every_conversation_leaves_open_is_caught() {
    let job = TestJob::new();
    job.tasks(&command_rows(700, "true"));
    job.manifest(&leak_manifest("[run]\nworkers = 16\n"));
    let (_, growth) = run_caught(&job, &[("CONVOY_TEST_LEAK", "fd")], "fd_growth").await;
    assert!(
        growth["detail"].as_str().unwrap().contains("grow by"),
        "{growth}"
    );
}

/// Regression: over HTTP the connection pool grows each time the job
/// reaches a new high of requests in flight, which `fd_growth` took for a
/// leak (at workers 256 it fired at 15 s). Here the endpoint closes every
/// connection after its reply for the first 300 conversations, then keeps
/// them open: convoy's FDs climb by a pool's worth well after the warm-up
/// (100 conversations), with no leak.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_http_pool_warming_up_is_not_a_leak() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    let rows: Vec<Value> = (0..800)
        .map(|i| {
            // Closing: few requests at once (a quick model, a slow tool);
            // then many (a slow model, a quick tool), on kept connections.
            let close = i < 300;
            let (command, delay_ms) = if close {
                ("sleep 0.2", 0)
            } else {
                ("true", 100)
            };
            let turns = json!([
                {"calls": [["bash", {"command": command}]], "delay_ms": delay_ms, "close": close},
                {"calls": [["finish", {"message": "ok"}]], "delay_ms": delay_ms, "close": close},
            ]);
            json!({"id": format!("t{i:03}"), "script": script(turns)})
        })
        .collect();
    job.tasks(&rows);
    job.manifest(&support::http_manifest(
        &llm,
        "",
        "[run]\nworkers = 32\n[monitor]\ninterval = \"200ms\"\non_leak = \"fail\"\n",
    ));
    let out = job.run(&[("CONVOY_TEST_KEY", support::KEY)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = summary(&job);
    assert_eq!(s["leaks"]["verdict"], "clean", "{s}");
    // What the rule must not take for a leak did happen: the pool grew
    // once connections were kept, after the warm-up.
    let csv = std::fs::read_to_string(job.path("out/metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    let (done, fds) = (col("done"), col("open_fds"));
    let fds_at = |range: std::ops::Range<u64>| -> Vec<u64> {
        csv.lines()
            .skip(1)
            .map(|l| l.split(',').collect::<Vec<_>>())
            .filter(|r| range.contains(&r[done].parse::<u64>().unwrap()))
            .map(|r| r[fds].parse().unwrap())
            .collect()
    };
    let (mut closing, kept) = (fds_at(100..240), fds_at(400..800));
    // The typical FD count while connections close (its median: a sample
    // can catch closing ones still open), against the kept pool's high.
    closing.sort_unstable();
    let (typical, high) = (closing[closing.len() / 2], kept.iter().max().unwrap());
    assert!(*high >= typical + 16, "FDs {closing:?} then {kept:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_open_files_limit_is_raised_for_a_big_job() {
    let job = TestJob::new();
    let rows: Vec<Value> = (0..50)
        .map(|i| json!({"id": format!("t{i}"), "commands": ["sleep 1"], "answer": "ok"}))
        .collect();
    job.tasks(&rows);
    job.manifest(&leak_manifest("[run]\nworkers = 2000\n"));
    let cmd = format!(
        "ulimit -Sn 1024 && exec {} run job.toml --out out",
        support::convoy_bin()
    );
    let child = job.spawn("bash", &["-c", &cmd], &[("RUST_LOG", "info")]);
    let pid = child.id().unwrap();
    // While it runs (its run directory exists), read its limits.
    let mut soft = None;
    for _ in 0..300 {
        if job.path("out/metrics.csv").exists() {
            let limits = std::fs::read_to_string(format!("/proc/{pid}/limits")).unwrap_or_default();
            soft = limits
                .lines()
                .find(|l| l.starts_with("Max open files"))
                .and_then(|l| l.split_whitespace().nth(3)?.parse::<u64>().ok());
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let soft = soft.expect("read the running convoy's limits");
    assert!(soft > 1024, "soft limit stayed at {soft}");
    assert!(
        stderr(&out).contains("open-files limit: 1024 -> "),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_twice_cancels_a_docker_job_at_once_and_cleans_up() {
    support::ensure_workspace_image();
    let job = TestJob::new();
    let rows: Vec<Value> = (0..20)
        .map(|i| json!({"id": format!("t{i}"), "commands": ["sleep 300"], "answer": "ok"}))
        .collect();
    job.tasks(&rows);
    job.manifest(&support::script_job(
        "kind = \"docker\"\nnofile = 4096",
        "[run]\nworkers = 10\ngrace = \"10m\"\n[monitor]\ninterval = \"200ms\"",
    ));
    let child = job.spawn(
        support::convoy_bin(),
        &[
            "run",
            "job.toml",
            "--out",
            "out",
            "--events",
            "events.jsonl",
        ],
        &[],
    );
    let pid = nix::unistd::Pid::from_raw(child.id().unwrap() as i32);
    // Wait until the monitor sees the ten conversations' sleeps running.
    let csv = job.path("out/metrics.csv");
    for _ in 0..600 {
        let text = std::fs::read_to_string(&csv).unwrap_or_default();
        let busy = text.lines().skip(1).any(|l| {
            l.split(',')
                .nth(5)
                .and_then(|p| p.parse::<u64>().ok())
                .unwrap_or(0)
                >= 20
        });
        if busy {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    // The second signal once the first has been taken (its event is out).
    let events = job.path("events.jsonl");
    for _ in 0..600 {
        let text = std::fs::read_to_string(&events).unwrap_or_default();
        if text.contains("\"type\":\"cancel_requested\"") {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGINT).unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("cancelling in-flight conversations"),
        "{}",
        stderr(&out)
    );
    assert!(job.results().is_empty(), "a 300 s task finished?");
    assert_eq!(containers_of_run(&job.path("out")), Vec::<String>::new());
    let s = summary(&job);
    assert_eq!(s["exit_code"], 130);
    assert_eq!(s["not_run"], 20);
}
