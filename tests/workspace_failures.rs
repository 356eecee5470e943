//! When the workspace itself fails under a job: a task that keeps bringing
//! it down is quarantined (`workspace_crash`) while the conversations it
//! hit are run again without spending attempts and end `ok` with exactly
//! their own observations. The real binary, real tmux, real Docker.

mod support;

use serde_json::{json, Value};
use support::{containers_of_run, observations, stderr, TestJob};

/// Canary tasks `t0..tN`: each checks its own two observations.
fn canaries(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({
                "id": format!("t{i}"),
                "commands": [format!("sleep 2; echo a-{i}"), format!("echo b-{i}")],
                "answer": format!("done {i}"),
            })
        })
        .collect()
}

/// Every canary ended ok on its first attempt, with its own observations.
fn assert_canaries_ok(job: &TestJob, n: usize) {
    let results = job.results();
    for i in 0..n {
        let id = format!("t{i}");
        let r = results
            .iter()
            .find(|r| r["id"] == id.as_str())
            .unwrap_or_else(|| panic!("no result for {id}"));
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["attempt"], 1, "a workspace failure spent an attempt: {r}");
        let obs = observations(&job.trajectory(&id));
        assert_eq!(obs.len(), 2, "{id}: {obs:?}");
        assert_eq!(obs[0].trim(), format!("a-{i}"), "{id}: {obs:?}");
        assert_eq!(obs[1].trim(), format!("b-{i}"), "{id}: {obs:?}");
    }
}

fn result_of(job: &TestJob, id: &str) -> Value {
    job.results()
        .into_iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no result for {id}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_kills_every_process_of_the_container_is_quarantined() {
    support::ensure_workspace_image();
    let job = TestJob::new();
    let mut rows = vec![json!({"id": "p", "commands": ["sleep 1; kill -9 -1"], "answer": "never"})];
    rows.extend(canaries(8));
    job.tasks(&rows);
    let ws = format!(
        "kind = \"docker\"\nimage = \"{}\"\nnofile = 4096",
        support::WORKSPACE_IMAGE
    );
    job.manifest(&support::script_job(
        &ws,
        "[run]\nworkers = 4\nmax_attempts = 1\n",
    ));
    let out = job.run(&[]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let p = result_of(&job, "p");
    assert_eq!(p["status"], "workspace_crash", "{p}\n{err}");
    assert!(
        p["error"].as_str().unwrap().contains("brings it down"),
        "{p}"
    );
    assert_canaries_ok(&job, 8);
    assert_eq!(job.summary()["counts"]["workspace_crash"], 1);
    assert_eq!(job.summary()["counts"]["ok"], 8);
    // Some canary was cut short and re-run: the failure was real.
    assert!(
        job.results()
            .iter()
            .any(|r| r["infra_retries"].as_u64() > Some(0)),
        "no canary was hit: {:?}",
        job.results()
    );
    let report = job.convoy(&["report", "out"], &[]).await;
    let text = String::from_utf8_lossy(&report.stdout);
    assert!(text.contains("workspace_crash 1"), "{text}");
    assert!(
        text.contains("brought the workspace down (not run again): p"),
        "{text}"
    );
    assert_eq!(containers_of_run(&job.path("out")), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_kills_the_local_helper_is_quarantined() {
    let job = TestJob::new();
    // The helper's pid is in its root, two levels above the session's dir.
    let kill_helper = "sleep 1; kill -9 $(cat $(dirname $(dirname $CONVOY_SESSION_DIR))/shim.pid)";
    let mut rows = vec![json!({"id": "p", "commands": [kill_helper], "answer": "never"})];
    rows.extend(canaries(6));
    job.tasks(&rows);
    job.manifest(&support::script_job(
        "kind = \"local\"\nworkdir = \"work\"",
        "[run]\nworkers = 3\nmax_attempts = 1\n",
    ));
    let out = job.run(&[]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let p = result_of(&job, "p");
    assert_eq!(p["status"], "workspace_crash", "{p}\n{err}");
    assert_canaries_ok(&job, 6);
    assert_eq!(job.summary()["counts"]["workspace_crash"], 1);
    assert!(job.tmp_entries().is_empty(), "{:?}", job.tmp_entries());
}
