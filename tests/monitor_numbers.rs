//! Numbers that mean what they say: rates of a resumed run count only its
//! own tasks, peaks include what happened between the monitor's samples,
//! and the last row of `metrics.csv` holds the final counts.

mod support;

use std::collections::HashMap;

use serde_json::{json, Value};
use support::{script_job, stderr, TestJob};

/// `metrics.csv` as rows of column name -> value.
fn metrics(job: &TestJob) -> Vec<HashMap<String, f64>> {
    let text = std::fs::read_to_string(job.path("out/metrics.csv")).unwrap();
    let mut lines = text.lines();
    let header: Vec<String> = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    lines
        .map(|l| {
            header
                .iter()
                .cloned()
                .zip(l.split(',').map(|v| v.parse::<f64>().unwrap()))
                .collect()
        })
        .collect()
}

fn local_job(rows: &[Value], rest: &str) -> TestJob {
    let job = TestJob::new();
    job.tasks(rows);
    job.manifest(&script_job("kind = \"local\"\nworkdir = \"work\"", rest));
    job
}

fn echo_rows(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"id": format!("t{i:02}"), "commands": [format!("echo {i}")], "answer": "ok"}))
        .collect()
}

/// Runs the job again on its directory (exit 0); its summary, after
/// checking how many tasks are done and how many of those were skipped.
async fn run_again(job: &TestJob, done: u64, skipped: u64) -> (Value, String) {
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let s = job.summary();
    assert_eq!(
        (s["done"].as_u64(), s["skipped"].as_u64()),
        (Some(done), Some(skipped)),
        "{s}"
    );
    (s, String::from_utf8_lossy(&out.stdout).into_owned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_rates_only_the_tasks_it_ran() {
    let job = local_job(&echo_rows(12), "[run]\nworkers = 4\n");
    let out = job
        .convoy(&["run", "job.toml", "--out", "out", "--limit", "4"], &[])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // The rest: 8 run here, 4 were done before.
    let (s, _) = run_again(&job, 12, 4).await;
    let rate = s["conversations_per_s"].as_f64().expect("a rate");
    let duration = s["duration_s"].as_f64().unwrap();
    assert!(
        (rate * duration - 8.0).abs() < 1e-6,
        "rate {rate}/s over {duration}s is not 8 tasks"
    );

    // Nothing left: no rate at all, not 12 tasks over a second.
    let (s, stdout) = run_again(&job, 12, 12).await;
    assert_eq!(s["conversations_per_s"], Value::Null, "{s}");
    assert!(
        stdout.starts_with("test: 12/12 tasks done (ok 12) in "),
        "{stdout}"
    );
    assert!(!stdout.contains("conversations/s"), "{stdout}");
}

/// Regression: a job shorter than `monitor.interval` reported "tmux
/// sessions peak 0", since its only samples were taken before the first
/// session opened and after the last one closed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_shorter_than_the_interval_reports_its_peaks() {
    let rows: Vec<Value> = (0..6)
        .map(|i| json!({"id": format!("t{i}"), "commands": ["sleep 1"], "answer": "ok"}))
        .collect();
    let job = local_job(&rows, "[run]\nworkers = 3\n[monitor]\ninterval = \"1h\"\n");
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Only the first sample (as the job starts) and the one after
    // cleanup, when nothing is open any more; the latter's peaks are
    // those of the whole job.
    let rows = metrics(&job);
    assert_eq!(rows.len(), 2, "{rows:?}");
    let last = &rows[1];
    assert_eq!((last["tmux_sessions"], last["in_flight"]), (0.0, 0.0));
    for col in [
        "tmux_sessions_peak",
        "in_flight_peak",
        "workspace_procs_peak",
    ] {
        assert!(last[col] >= 1.0, "{col}: {last:?}");
    }

    let m = &job.summary()["metrics"];
    let peak = |k: &str| m[k].as_u64().unwrap();
    assert!((1..=3).contains(&peak("tmux_sessions_peak")), "{m}");
    assert!((1..=3).contains(&peak("in_flight_peak")), "{m}");
    assert!(peak("workspace_procs_peak") >= 1, "{m}");
    assert!(peak("open_fds_peak") >= peak("open_fds_start"), "{m}");
    assert_eq!(peak("tmux_sessions_end"), 0);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(!stdout.contains("tmux sessions peak 0"), "{stdout}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_last_metrics_row_carries_the_final_counts() {
    let mut rows = echo_rows(60);
    // With max_steps = 2, three commands end in max_steps: 5 failures.
    for i in [3, 17, 29, 41, 58] {
        rows[i]["commands"] = json!(["true", "true", "true"]);
    }
    let job = local_job(
        &rows,
        "[agent]\nmax_steps = 2\n[run]\nworkers = 8\n[monitor]\ninterval = \"50ms\"\n",
    );
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let rows = metrics(&job);
    let last = rows.last().unwrap();
    assert_eq!(last["done"], 60.0, "{last:?}");
    assert_eq!(last["failed"], 5.0, "{last:?}");
    assert_eq!(last["in_flight"], 0.0, "{last:?}");
    assert_eq!(last["tmux_sessions"], 0.0, "{last:?}");
    // Rows never count backwards.
    let done: Vec<f64> = rows.iter().map(|r| r["done"]).collect();
    assert!(done.windows(2).all(|w| w[0] <= w[1]), "{done:?}");
    let s = job.summary();
    assert_eq!(s["counts"]["max_steps"], 5);
}
