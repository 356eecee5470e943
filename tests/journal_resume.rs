//! The durable journal: kill -9 at random moments and resume, Ctrl-C and
//! resume, the fingerprint check, torn-line repair, the lock, shards and
//! merge, report and export, and sweeping what crashed runs left.

mod support;

use std::collections::{BTreeSet, HashMap};
use std::time::Duration;

use serde_json::{json, Value};
use support::{read_jsonl, script_job, stderr, TestJob};

/// `n` scripted tasks of two commands each (a short sleep, an echo).
fn rows(n: usize, sleep: &str) -> Vec<Value> {
    (0..n)
        .map(|i| {
            json!({"id": format!("t{i:03}"), "commands": [format!("sleep {sleep}"), format!("echo {i}")],
                   "answer": format!("a{i}")})
        })
        .collect()
}

fn local_job(n: usize, sleep: &str, workers: usize) -> TestJob {
    let job = TestJob::new();
    job.tasks(&rows(n, sleep));
    job.manifest(&script_job(
        "kind = \"local\"\nworkdir = \"work\"",
        &format!("[run]\nworkers = {workers}\n[monitor]\ninterval = \"200ms\"\n"),
    ));
    job
}

/// Every line of results.jsonl parses; returns how often each id occurs.
fn result_ids(job: &TestJob, dir: &str) -> HashMap<String, usize> {
    let text =
        std::fs::read_to_string(job.path(&format!("{dir}/results.jsonl"))).unwrap_or_default();
    let mut ids = HashMap::new();
    for (n, line) in text.lines().enumerate() {
        let v: Value = serde_json::from_str(line)
            .unwrap_or_else(|e| panic!("results.jsonl line {} is not valid: {e}: {line}", n + 1));
        *ids.entry(v["id"].as_str().unwrap().to_string())
            .or_default() += 1;
    }
    ids
}

fn assert_each_once(ids: &HashMap<String, usize>, n: usize) {
    let dups: Vec<_> = ids.iter().filter(|(_, c)| **c > 1).collect();
    assert!(dups.is_empty(), "tasks done more than once: {dups:?}");
    assert_eq!(ids.len(), n, "tasks done");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_at_random_moments_then_resume_does_each_task_exactly_once() {
    const TASKS: usize = 400;
    let job = local_job(TASKS, "0.3", 16);
    let (mut partial_seen, mut killed) = (0, 0);
    let mut rng = fastrand::Rng::with_seed(2026);
    for round in 0..5 {
        let mut child = job.spawn(
            support::convoy_bin(),
            &["run", "job.toml", "--out", "out"],
            &[],
        );
        // Somewhere between workspace boot and well into the run.
        tokio::time::sleep(Duration::from_millis(rng.u64(300..1500))).await;
        child.start_kill().unwrap();
        let status = child.wait().await.unwrap();
        if status.code().is_none() {
            killed += 1;
        }
        // After every run, killed or not: each line valid, no task twice
        // (a torn last line is what the next run repairs).
        let text = std::fs::read_to_string(job.path("out/results.jsonl")).unwrap_or_default();
        let complete = &text[..text.rfind('\n').map_or(0, |i| i + 1)];
        let mut seen = BTreeSet::new();
        for line in complete.lines() {
            let v: Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("round {round}: invalid results line ({e}): {line}"));
            assert!(
                seen.insert(v["id"].to_string()),
                "round {round}: {} twice",
                v["id"]
            );
        }
        // Partial trajectories of the tasks that were in flight survive.
        let done: BTreeSet<String> = complete
            .lines()
            .map(|l| {
                serde_json::from_str::<Value>(l).unwrap()["id"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        let turns = std::fs::read_to_string(job.path("out/turns.jsonl")).unwrap_or_default();
        partial_seen += turns
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter(|t| t["partial"] == true && !done.contains(t["id"].as_str().unwrap()))
            .count();
    }
    // The last run finishes the job.
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let ids = result_ids(&job, "out");
    assert_each_once(&ids, TASKS);
    assert!(job.results().iter().all(|r| r["status"] == "ok"));
    assert!(killed >= 3, "only {killed} runs were killed mid-way");
    assert!(partial_seen > 0, "no partial trajectory survived any kill");
    println!("kill -9 loop: {killed} runs killed, {TASKS} tasks, 0 duplicates, {partial_seen} partial turns kept");
    // Every result has its final trajectory; the superseded partial turns
    // are gone.
    let traj: BTreeSet<String> = job
        .trajectories()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(traj.len(), TASKS);
    assert_eq!(job.trajectories().len(), TASKS, "a trajectory line twice");
    assert!(!job.path("out/turns.jsonl").exists());
    let s = job.summary();
    assert_eq!(s["done"], TASKS);
    assert_eq!(s["counts"]["ok"], TASKS);
    // Nothing of the killed runs is left (the next run swept it).
    assert_eq!(job.tmp_entries(), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_after_ctrl_c_runs_only_what_was_not_done() {
    let job = local_job(120, "0.2", 8);
    let child = job.spawn(
        support::convoy_bin(),
        &["run", "job.toml", "--out", "out"],
        &[],
    );
    job.wait_for_results(10).await;
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id().unwrap() as i32),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let first = child.wait_with_output().await.unwrap();
    assert_eq!(first.status.code(), Some(130), "{}", stderr(&first));
    let before = job.results().len();
    assert!(before < 120);
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_each_once(&result_ids(&job, "out"), 120);
    let s = job.summary();
    assert_eq!(s["skipped"], before);
    assert_eq!(s["done"], 120);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_skips_failed_tasks_unless_retry_failed() {
    let job = TestJob::new();
    let mut r = rows(6, "0");
    // Three commands with max_steps = 3: these two end max_steps.
    r[1]["commands"] = json!(["true", "true", "true"]);
    r[4]["commands"] = json!(["true", "true", "true"]);
    job.tasks(&r);
    job.manifest(&script_job(
        "kind = \"local\"\nworkdir = \"work\"",
        "[agent]\nmax_steps = 3\n",
    ));
    assert_eq!(job.run(&[]).await.status.code(), Some(1));
    // Again: every task has a final result, nothing runs, still exit 1.
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(job.results().len(), 6);
    assert_eq!(job.summary()["skipped"], 6);
    // --retry-failed runs exactly the two that did not end ok.
    let out = job
        .convoy(&["run", "job.toml", "--out", "out", "--retry-failed"], &[])
        .await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let mut again: Vec<String> = job.results()[6..]
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    again.sort();
    assert_eq!(again, ["t001", "t004"]);
    let s = job.summary();
    assert_eq!(
        (s["skipped"].as_u64(), s["done"].as_u64()),
        (Some(4), Some(6))
    );
    assert_eq!(s["counts"]["max_steps"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_prompt_or_task_rows_is_refused_unless_forced() {
    let job = local_job(4, "0", 4);
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let manifest = std::fs::read_to_string(job.path("job.toml")).unwrap();
    job.write(
        "job.toml",
        &manifest.replace("user = \"go\"", "user = \"go on\""),
    );
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(
        err.contains("part changed since it started (prompt)"),
        "{err}"
    );
    assert!(err.contains("--force"), "{err}");
    // Task rows too; both named.
    let mut more = rows(5, "0");
    more[0]["answer"] = json!("changed");
    job.tasks(&more);
    let err = stderr(&job.run(&[]).await);
    assert!(err.contains("(prompt, tasks)"), "{err}");
    // --force continues: the 4 done tasks stay, the new 5th runs.
    let out = job
        .convoy(&["run", "job.toml", "--out", "out", "--force"], &[])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_each_once(&result_ids(&job, "out"), 5);
    // What changed is recorded: the next plain run is not refused.
    assert_eq!(job.run(&[]).await.status.code(), Some(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_torn_last_line_is_repaired_and_its_task_runs_again() {
    let job = local_job(5, "0", 1);
    assert_eq!(job.run(&[]).await.status.code(), Some(0));
    let path = job.path("out/results.jsonl");
    let text = std::fs::read_to_string(&path).unwrap();
    let last_id = job.results().last().unwrap()["id"]
        .as_str()
        .unwrap()
        .to_string();
    // A crash in the middle of writing the last line.
    std::fs::write(&path, &text[..text.len() - 25]).unwrap();
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("torn last line"), "{}", stderr(&out));
    assert_each_once(&result_ids(&job, "out"), 5);
    assert_eq!(job.results().last().unwrap()["id"], last_id.as_str());
    assert_eq!(job.summary()["skipped"], 4);
    // The lost result's trajectory was written (trajectories go first):
    // it is dropped, so the rerun's is the only one.
    let traj: Vec<String> = job
        .trajectories()
        .iter()
        .map(|t| t["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(traj.len(), 5, "{traj:?}");
    assert_eq!(traj.last().unwrap(), &last_id);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_run_on_the_same_directory_is_refused_while_the_first_runs() {
    // The first run's tasks outlast the test: it holds the lock until it
    // is killed at the end, however slow the machine.
    let job = local_job(8, "600", 8);
    let first = job.spawn(
        support::convoy_bin(),
        &["run", "job.toml", "--out", "out"],
        &[],
    );
    let pid = first.id().unwrap();
    // Waits for the first run to HOLD the lock, not for the lock file to
    // exist: convoy creates `convoy.lock` before it takes the flock on it,
    // so a second run started on the file's mere existence could take the
    // lock itself, or find it held with no pid written yet. The holder
    // writes its pid into the file only once it holds the flock, so the
    // file naming the first run's pid proves it is held.
    let lock = job.path("out/convoy.lock");
    let held = || std::fs::read_to_string(&lock).is_ok_and(|text| text.trim() == pid.to_string());
    for _ in 0..1200 {
        if held() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    assert!(held(), "the first run never took the lock");
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains(&format!("in use by another convoy run (pid {pid})")),
        "{}",
        stderr(&out)
    );
    drop(first); // kill_on_drop
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shards_merged_equal_the_unsharded_run() {
    let job = local_job(60, "0", 8);
    assert_eq!(job.run(&[]).await.status.code(), Some(0));
    let whole: BTreeSet<String> = result_ids(&job, "out").into_keys().collect();
    let mut seen = BTreeSet::new();
    for i in 0..3 {
        let (shard, dir) = (format!("{i}/3"), format!("shard{i}"));
        let out = job
            .convoy(&["run", "job.toml", "--out", &dir, "--shard", &shard], &[])
            .await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let ids: BTreeSet<String> = result_ids(&job, &dir).into_keys().collect();
        assert!(
            !ids.is_empty() && ids.len() < 60,
            "shard {shard}: {}",
            ids.len()
        );
        assert!(seen.is_disjoint(&ids), "shards overlap");
        seen.extend(ids);
    }
    let out = job
        .convoy(&["merge", "merged", "shard0", "shard1", "shard2"], &[])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let merged = result_ids(&job, "merged");
    assert_each_once(&merged, 60);
    assert_eq!(merged.into_keys().collect::<BTreeSet<_>>(), whole);
    assert_eq!(read_jsonl(&job.path("merged/trajectories.jsonl")).len(), 60);
    // A shard of another job is refused.
    let manifest = std::fs::read_to_string(job.path("job.toml")).unwrap();
    job.write(
        "job.toml",
        &manifest.replace("user = \"go\"", "user = \"other\""),
    );
    let out = job
        .convoy(
            &["run", "job.toml", "--out", "other", "--shard", "0/3"],
            &[],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = job
        .convoy(&["merge", "merged2", "shard1", "other"], &[])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("prompt"), "{}", stderr(&out));
    // A malformed shard argument is an input error.
    let out = job
        .convoy(&["run", "job.toml", "--out", "x", "--shard", "3/3"], &[])
        .await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("must be below the count"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_and_export_of_a_real_run() {
    let job = TestJob::new();
    let mut r = rows(20, "0");
    // Two tasks fail: a command the script provider cannot play is not the
    // point; a step limit of 2 with 2 commands ends them as max_steps.
    r[3]["commands"] = json!(["true", "true", "true"]);
    r[7]["commands"] = json!(["true", "true", "true"]);
    job.tasks(&r);
    job.manifest(&script_job(
        "kind = \"local\"\nworkdir = \"work\"",
        "[agent]\nmax_steps = 3\n[monitor]\ninterval = \"100ms\"\n",
    ));
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let out = job.convoy(&["report", "out"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("max_steps 2"), "{text}");
    assert!(text.contains("ok 18"), "{text}");
    assert!(text.contains("leaks: clean"), "{text}");
    let out = job.convoy(&["report", "out", "--json"], &[]).await;
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["counts"]["ok"], 18);
    assert_eq!(report["steps"]["max"], 3);
    assert_eq!(report["failure_reasons"][0]["count"], 2);
    // Reporting reads only; the chart is written on request.
    assert!(!job.path("out/metrics.svg").exists());
    let out = job.convoy(&["report", "--chart", "out"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let svg = std::fs::read_to_string(job.path("out/metrics.svg")).unwrap();
    assert!(
        svg.starts_with("<svg") || svg.starts_with("<?xml"),
        "{}",
        &svg[..80]
    );
    for title in ["open FDs", "tmux sessions", "in flight", "done"] {
        assert!(svg.contains(title), "chart lacks {title}");
    }
    assert!(svg.contains("<polyline"));
    // Export: the ok conversations only, as trainers read them.
    let out = job
        .convoy(
            &["export", "out", "--only", "ok", "--out", "sft.jsonl"],
            &[],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines = read_jsonl(&job.path("sft.jsonl"));
    assert_eq!(lines.len(), 18);
    for l in &lines {
        let keys: Vec<&String> = l.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["messages", "tools"]);
        assert_eq!(l["messages"][0]["role"], "user");
        assert_eq!(l["tools"][0]["type"], "function");
    }
    // A directory that is not a run is a clear input error.
    let out = job.convoy(&["report", "tmp"], &[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("not a run directory"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sweep_removes_an_orphaned_container_and_tmux_server() {
    let job = TestJob::new();
    // A container left by a convoy that is gone (a pid that exited), and
    // one of a live convoy (this test process), which must stay.
    let mut gone = std::process::Command::new("true").spawn().unwrap();
    let dead = gone.id().to_string();
    gone.wait().unwrap();
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
    let my_start = stat[stat.rfind(')').unwrap() + 2..]
        .split_whitespace()
        .nth(19)
        .unwrap()
        .to_string();
    let host = nix::unistd::gethostname().unwrap().into_string().unwrap();
    support::ensure_workspace_image();
    let container = |what: &str, pid: &str, start: &str| {
        let name = format!("convoy-{what}-test-{}", std::process::id());
        support::docker(&[
            "run",
            "-d",
            "--name",
            &name,
            "--label",
            &format!("convoy.pid={pid}"),
            "--label",
            &format!("convoy.pid_start={start}"),
            "--label",
            &format!("convoy.host={host}"),
            "--entrypoint",
            "sleep",
            support::WORKSPACE_IMAGE,
            "infinity",
        ]);
        name
    };
    let name = container("orphan", &dead, "1");
    let live_name = container("live", &std::process::id().to_string(), &my_start);
    // A local workspace whose convoy is gone, with its tmux server running.
    let ws = job.path("tmp/convoy-orphan");
    std::fs::create_dir_all(&ws).unwrap();
    std::fs::write(ws.join("owner"), format!("{dead} 1\n")).unwrap();
    let sock = ws.join("tmux.sock");
    let started = std::process::Command::new("tmux")
        .args([
            "-S",
            sock.to_str().unwrap(),
            "new-session",
            "-d",
            "sleep 1000",
        ])
        .status()
        .unwrap();
    assert!(started.success());
    assert!(!support::processes_with(sock.to_str().unwrap()).is_empty());

    let out = job.convoy(&["sweep"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let said = String::from_utf8_lossy(&out.stdout).into_owned();
    // Any `convoy run` starting meanwhile (other tests run in parallel)
    // sweeps the same way and may have removed it first; either way it
    // must be gone, and the live one must stay.
    let all = support::docker(&["ps", "-a", "--format", "{{.Names}}"]);
    assert!(
        said.contains(&format!("removed container {name}")) || !all.lines().any(|n| n == name),
        "{said}"
    );
    assert!(
        said.contains("convoy-orphan (its convoy is gone)"),
        "{said}"
    );
    assert!(!said.contains(&live_name), "{said}");
    assert!(!all.lines().any(|n| n == name), "orphan still there");
    assert!(
        all.lines().any(|n| n == live_name),
        "a live run's container was removed"
    );
    support::docker(&["rm", "-f", &live_name]);
    assert!(!ws.exists());
    assert_eq!(
        support::processes_with(sock.to_str().unwrap()),
        Vec::<String>::new(),
        "tmux server left"
    );
}
