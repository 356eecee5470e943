//! When the workspace itself fails under a job: a task that keeps bringing
//! it down is quarantined (`workspace_crash`) while the conversations it
//! hit are run again without spending attempts and end `ok` with exactly
//! their own observations; a stopped helper is found by its heartbeat and
//! replaced; a stopped tmux server holds no task past its deadline and no
//! convoy past its shutdown bound; a session cannot make `convoy sweep`
//! remove its live run. The real binary, real tmux, real Docker; processes
//! are stopped from outside through /proc, as an OOM killer or an operator
//! would.

mod support;

use std::time::Duration;

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde_json::{json, Value};
use support::{containers_of_run, docker, observations, stderr, TestJob};

/// Generous bound for a run to end: only a test timeout, never a speed
/// claim.
const TEST_TIMEOUT: Duration = Duration::from_secs(400);

/// Pids (on this host, containers included) whose command line holds every
/// one of `needles`: of the container `container` only, if given (its
/// processes are in the host's /proc, their cgroup names it).
fn pids_with(needles: &[&str], container: Option<&str>) -> Vec<i32> {
    let me = std::process::id() as i32;
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse::<i32>().ok())
        .filter(|&pid| pid != me)
        .filter(|pid| {
            let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
            let cgroup = std::fs::read_to_string(format!("/proc/{pid}/cgroup")).unwrap_or_default();
            // `^X`: the command line starts with X (the tmux server, not
            // the reaper whose command line names it).
            needles.iter().all(|n| match n.strip_prefix('^') {
                Some(start) => cmd.starts_with(start),
                None => cmd.contains(n),
            }) && container.is_none_or(|c| cgroup.contains(&format!("/docker/{c}")))
        })
        .collect()
}

/// Waits (polling /proc, bounded) until exactly one process matches.
async fn the_pid_of(needles: &[&str], container: Option<&str>) -> i32 {
    for _ in 0..1200 {
        if let [pid] = pids_with(needles, container)[..] {
            return pid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!(
        "no single process with {needles:?}: {:?}",
        pids_with(needles, container)
    );
}

/// The id of the run's one container, once it exists.
async fn the_container(job: &TestJob) -> String {
    for _ in 0..1200 {
        if let [id] = &containers_of_run(&job.path("out"))[..] {
            return id.clone();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the run never had exactly one container");
}

fn local_manifest(job: &TestJob, run: &str) {
    job.manifest(&support::script_job(
        "kind = \"local\"\nworkdir = \"work\"",
        run,
    ));
}

fn docker_manifest(job: &TestJob, run: &str) {
    docker_manifest_as(job, "auto", run);
}

/// With `workspace.isolation` set: under `"none"` every conversation is
/// root and can take the container's processes down, which is what the
/// recovery tests need.
fn docker_manifest_as(job: &TestJob, isolation: &str, run: &str) {
    support::ensure_workspace_image();
    let ws = format!(
        "kind = \"docker\"\nimage = \"{}\"\nnofile = 4096\nisolation = \"{isolation}\"",
        support::WORKSPACE_IMAGE
    );
    job.manifest(&support::script_job(&ws, run));
}

/// Waits for the run, failing the test if it does not end in `TEST_TIMEOUT`.
async fn wait(child: tokio::process::Child) -> std::process::Output {
    tokio::time::timeout(TEST_TIMEOUT, child.wait_with_output())
        .await
        .expect("convoy did not exit")
        .unwrap()
}

fn spawn_run(job: &TestJob) -> tokio::process::Child {
    job.spawn(
        support::convoy_bin(),
        &["run", "job.toml", "--out", "out"],
        &[],
    )
}

/// Nothing of the run is left: no process names its temp dir, which is
/// empty, and no container of it exists.
fn assert_nothing_left(job: &TestJob) {
    let tmp = job.path("tmp").display().to_string();
    assert_eq!(
        pids_with(&[&tmp], None),
        Vec::<i32>::new(),
        "processes left"
    );
    let left: Vec<String> = job
        .tmp_entries()
        .into_iter()
        .filter(|e| !e.starts_with(".convoy-locks"))
        .collect();
    assert!(left.is_empty(), "{left:?}");
    assert_eq!(containers_of_run(&job.path("out")), Vec::<String>::new());
}

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
        assert_eq!(obs[0], format!("a-{i}\n"), "{id}: {obs:?}");
        assert_eq!(obs[1], format!("b-{i}\n"), "{id}: {obs:?}");
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
    // Under user isolation `kill -9 -1` reaches only its own processes
    // (tests/neighbours.rs); as root it reaches every one.
    docker_manifest_as(&job, "none", "[run]\nworkers = 4\nmax_attempts = 1\n");
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
    assert_nothing_left(&job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_task_that_kills_the_local_helper_is_quarantined() {
    let job = TestJob::new();
    // The helper's pid is in its private directory, `p/` of its root, two
    // levels above the session's dir.
    let kill_helper =
        "sleep 1; kill -9 $(cat $(dirname $(dirname $CONVOY_SESSION_DIR))/p/shim.pid)";
    let mut rows = vec![json!({"id": "p", "commands": [kill_helper], "answer": "never"})];
    rows.extend(canaries(6));
    job.tasks(&rows);
    local_manifest(&job, "[run]\nworkers = 3\nmax_attempts = 1\n");
    let out = job.run(&[]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let p = result_of(&job, "p");
    assert_eq!(p["status"], "workspace_crash", "{p}\n{err}");
    assert_canaries_ok(&job, 6);
    assert_eq!(job.summary()["counts"]["workspace_crash"], 1);
    assert_nothing_left(&job);
}

/// Stops the run's helper (found through /proc; in its container for
/// `docker`) with SIGSTOP once a task has finished: the heartbeat finds
/// it, it is replaced, the tasks it held run again without spending
/// attempts.
async fn stop_the_helper_mid_job(job: &TestJob, docker: bool) {
    job.tasks(&canaries(12));
    let child = spawn_run(job);
    job.wait_for_results(1).await;
    let helper = if docker {
        let id = the_container(job).await;
        the_pid_of(&["/opt/convoy/convoy", "shim"], Some(&id)).await
    } else {
        let tmp = job.path("tmp").display().to_string();
        the_pid_of(&["shim", "--root", &tmp], None).await
    };
    kill(Pid::from_raw(helper), Signal::SIGSTOP).unwrap();
    let out = wait(child).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("did not answer a heartbeat"), "{err}");
    assert_canaries_ok(job, 12);
    assert!(
        job.results()
            .iter()
            .any(|r| r["infra_retries"].as_u64() > Some(0)),
        "the stop cut nothing short: {:?}",
        job.results()
    );
    assert_nothing_left(job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_local_helper_misses_its_heartbeat_and_is_replaced() {
    let job = TestJob::new();
    local_manifest(&job, "[run]\nworkers = 3\nmax_attempts = 1\n");
    stop_the_helper_mid_job(&job, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_docker_helper_misses_its_heartbeat_and_is_replaced() {
    let job = TestJob::new();
    docker_manifest(&job, "[run]\nworkers = 3\nmax_attempts = 1\n");
    stop_the_helper_mid_job(&job, true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_local_tmux_server_holds_no_task_past_its_deadline() {
    let job = TestJob::new();
    job.tasks(&canaries(6));
    local_manifest(
        &job,
        "[run]\nworkers = 2\nmax_attempts = 1\ntask_timeout = \"5s\"\n",
    );
    let child = spawn_run(&job);
    let tmp = job.path("tmp").display().to_string();
    // The server keeps the command line of the client that started it.
    job.wait_for_results(1).await;
    let server = the_pid_of(&["^tmux", &tmp, "start-server"], None).await;
    kill(Pid::from_raw(server), Signal::SIGSTOP).unwrap();
    let out = wait(child).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let results = job.results();
    assert_eq!(results.len(), 6, "every task ends: {results:?}");
    assert!(
        results
            .iter()
            .all(|r| r["status"] == "ok" || r["status"] == "timeout"),
        "{results:?}"
    );
    assert!(
        results.iter().filter(|r| r["status"] == "timeout").count() >= 4,
        "{results:?}"
    );
    // The cleanup after the deadline is bounded and said.
    assert!(
        err.contains("closing its session failed") && err.contains("no answer within"),
        "{err}"
    );
    assert_the_verdict_is_unknown_not_clean(&job);
    // The stopped server is killed with its workspace.
    assert_nothing_left(&job);
}

/// A workspace whose tmux server stopped answering could not be checked
/// for leaks: the verdict is `unknown` with why, never `clean` by absence,
/// and the samples it did not answer (the final one at least) are gaps in
/// metrics.csv, not zeros.
fn assert_the_verdict_is_unknown_not_clean(job: &TestJob) {
    let s = job.summary();
    assert_eq!(s["leaks"]["verdict"], "unknown", "{s}");
    let why = s["leaks"]["why"].to_string();
    assert!(why.contains("failed (first at"), "{why}");
    assert_eq!(s["metrics"]["tmux_sessions_end"], Value::Null, "{s}");
    let csv = std::fs::read_to_string(job.path("out/metrics.csv")).unwrap();
    let header: Vec<&str> = csv.lines().next().unwrap().split(',').collect();
    let last: Vec<&str> = csv.lines().last().unwrap().split(',').collect();
    let col = header.iter().position(|h| *h == "tmux_sessions").unwrap();
    assert_eq!(last[col], "", "{csv}");
}

/// Starts a job of long tasks (`sleep SECONDS`, a number no other test
/// uses), waits until both its conversations run it, stops `which` (in the
/// run's container if `docker`) with SIGSTOP, then interrupts convoy.
async fn interrupt_with_stopped(
    job: &TestJob,
    seconds: &str,
    which: &[&str],
    docker: bool,
) -> std::process::Output {
    let sleep = format!("sleep {seconds}");
    let rows: Vec<Value> = (0..6)
        .map(|i| json!({"id": format!("t{i}"), "commands": [&sleep], "answer": "x"}))
        .collect();
    job.tasks(&rows);
    let child = spawn_run(job);
    let convoy = child.id().unwrap() as i32;
    let container = if docker {
        Some(the_container(job).await)
    } else {
        None
    };
    for _ in 0..1200 {
        if pids_with(&[&sleep], container.as_deref()).len() >= 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let stopped = the_pid_of(which, container.as_deref()).await;
    kill(Pid::from_raw(stopped), Signal::SIGSTOP).unwrap();
    kill(Pid::from_raw(convoy), Signal::SIGINT).unwrap();
    let out = wait(child).await;
    // Whatever convoy did, the stopped process must not outlive the test.
    let _ = kill(Pid::from_raw(stopped), Signal::SIGKILL);
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_ends_a_local_run_whose_tmux_server_is_stopped() {
    let job = TestJob::new();
    local_manifest(&job, "[run]\nworkers = 2\ngrace = \"1s\"\n");
    let tmp = job.path("tmp").display().to_string();
    let out = interrupt_with_stopped(&job, "61.7", &["^tmux", &tmp, "start-server"], false).await;
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert_nothing_left(&job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_ends_a_docker_run_whose_helper_is_stopped_and_removes_the_container() {
    let job = TestJob::new();
    docker_manifest(&job, "[run]\nworkers = 2\ngrace = \"1s\"\n");
    let out = interrupt_with_stopped(&job, "62.7", &["/opt/convoy/convoy", "shim"], true).await;
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert_nothing_left(&job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_docker_tmux_server_holds_no_task_past_its_deadline() {
    let job = TestJob::new();
    job.tasks(&canaries(6));
    docker_manifest(
        &job,
        "[run]\nworkers = 2\nmax_attempts = 1\ntask_timeout = \"6s\"\n",
    );
    let child = spawn_run(&job);
    job.wait_for_results(1).await;
    let id = the_container(&job).await;
    // The server, as seen from the host's /proc.
    let server = the_pid_of(&["^tmux", "start-server"], Some(&id)).await;
    kill(Pid::from_raw(server), Signal::SIGSTOP).unwrap();
    let out = wait(child).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "{err}");
    let results = job.results();
    assert_eq!(results.len(), 6, "{results:?}");
    assert!(
        results.iter().any(|r| r["status"] == "timeout"),
        "{results:?}"
    );
    assert_the_verdict_is_unknown_not_clean(&job);
    assert!(docker(&["ps", "-aq", "--filter", &format!("id={id}")])
        .trim()
        .is_empty());
    assert_nothing_left(&job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_owner_file_does_not_make_sweep_remove_a_live_run() {
    let job = TestJob::new();
    // The session names a long-dead owner (pid 1 with a start time it
    // never had) in its workspace's owner file.
    let forge = "echo '1 1' > $(dirname $(dirname $CONVOY_SESSION_DIR))/owner; echo forged";
    job.tasks(&[json!({
        "id": "t0",
        "commands": [forge, "sleep 3", "echo still-here"],
        "answer": "done",
    })]);
    local_manifest(&job, "[run]\nworkers = 1\n");
    let child = spawn_run(&job);
    // Wait for the forgery to land.
    let mut forged = false;
    for _ in 0..1200 {
        let owners: Vec<String> = job
            .tmp_entries()
            .iter()
            .filter_map(|e| std::fs::read_to_string(job.path("tmp").join(e).join("owner")).ok())
            .collect();
        if owners.iter().any(|o| o.trim() == "1 1") {
            forged = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(forged, "the session never wrote the owner file");
    let sweep = job.convoy(&["sweep"], &[]).await;
    let said = String::from_utf8_lossy(&sweep.stdout);
    assert!(said.contains("nothing left by crashed runs"), "{said}");
    let out = wait(child).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let obs = observations(&job.trajectory("t0"));
    assert_eq!(obs, ["forged\n", "", "still-here\n"]);
    assert_nothing_left(&job);
}

/// Kills the run's tmux server (found through /proc; in its container
/// for `docker`) with SIGKILL, as the OOM killer would, once a task has
/// finished: the helper ends, a new one brings up a new server, and the
/// tasks the kill cut short run again without spending attempts.
async fn kill_the_tmux_server_mid_job(job: &TestJob, docker: bool) {
    job.tasks(&canaries(9));
    let child = spawn_run(job);
    job.wait_for_results(1).await;
    let server = if docker {
        let id = the_container(job).await;
        the_pid_of(&["^tmux", "start-server"], Some(&id)).await
    } else {
        let tmp = job.path("tmp").display().to_string();
        the_pid_of(&["^tmux", &tmp, "start-server"], None).await
    };
    kill(Pid::from_raw(server), Signal::SIGKILL).unwrap();
    let out = wait(child).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{err}");
    assert!(err.contains("the tmux server (pid"), "{err}");
    assert_canaries_ok(job, 9);
    assert!(
        job.results()
            .iter()
            .any(|r| r["infra_retries"].as_u64() > Some(0)),
        "the kill cut nothing short: {:?}",
        job.results()
    );
    assert_nothing_left(job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_local_tmux_server_is_replaced_and_the_job_goes_on() {
    let job = TestJob::new();
    local_manifest(&job, "[run]\nworkers = 3\nmax_attempts = 1\n");
    kill_the_tmux_server_mid_job(&job, false).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_docker_tmux_server_is_replaced_and_the_job_goes_on() {
    let job = TestJob::new();
    docker_manifest(&job, "[run]\nworkers = 3\nmax_attempts = 1\n");
    kill_the_tmux_server_mid_job(&job, true).await;
}
