//! A fleet of containers (`workspace.containers`): conversations spread
//! over them, each task's setup, session and verification in one
//! container, per-container figures, and a container killed mid-job that
//! takes only its own conversations down. The real binary, real Docker,
//! real tmux; the script provider.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value;
use support::{containers_of_run, docker, observations, stderr, TestJob};

fn fleet_manifest(containers: u32, extra: &str) -> String {
    support::fleet_job(containers, "", extra)
}

/// The hostname each task's first command printed.
fn hosts(job: &TestJob) -> BTreeMap<String, String> {
    job.results()
        .iter()
        .map(|r| {
            let id = r["id"].as_str().unwrap().to_string();
            let obs = observations(&job.trajectory(&id));
            (id, obs[0].trim().to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn conversations_spread_over_the_containers_and_each_task_stays_in_one() {
    let job = TestJob::new();
    // Each task writes a file in setup that its verification reads: both
    // must run in the container its session ran in.
    let rows: Vec<Value> = support::hostname_rows(40, "0.2");
    job.tasks(&rows);
    job.manifest(&fleet_manifest(
        3,
        "[environment]\nworkdir = \"/tmp/t/{{ id }}\"\nsetup = [\"hostname > setup_host\"]\n\
         [verify]\ncommand = \"test \\\"$(cat setup_host)\\\" = \\\"$(hostname)\\\"\"\n\
         [run]\nworkers = 12\n[monitor]\ninterval = \"500ms\"\n",
    ));
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = job.results();
    assert_eq!(results.len(), 40);
    for r in &results {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(
            r["reward"], 1.0,
            "setup and verification in one container: {r}"
        );
    }
    let per_host: BTreeMap<String, usize> =
        hosts(&job).into_values().fold(BTreeMap::new(), |mut m, h| {
            *m.entry(h).or_default() += 1;
            m
        });
    eprintln!("conversations per container: {per_host:?}");
    assert_eq!(per_host.len(), 3, "{per_host:?}");
    assert!(per_host.values().all(|n| *n >= 5), "{per_host:?}");

    // Per-container figures: metrics.csv columns, summary.json, report.
    let metrics = std::fs::read_to_string(job.path("out/metrics.csv")).unwrap();
    let header = metrics.lines().next().unwrap();
    assert!(
        header.ends_with(",container_sessions_0,container_procs_0,container_sessions_1,container_procs_1,container_sessions_2,container_procs_2"),
        "{header}"
    );
    let width = header.split(',').count();
    assert!(metrics.lines().all(|l| l.split(',').count() == width));
    let s = job.summary();
    let containers = s["metrics"]["containers"]
        .as_array()
        .expect("per container");
    assert_eq!(containers.len(), 3);
    for c in containers {
        assert_eq!(c["sessions_end"], 0, "{c}");
        assert_eq!(c["processes_end"], 0, "{c}");
    }
    assert_eq!(s["leaks"]["verdict"], "clean", "{s}");
    let report = job.convoy(&["report", "out"], &[]).await;
    let text = String::from_utf8_lossy(&report.stdout);
    for i in 0..3 {
        assert!(
            text.contains(&format!("container {i}: sessions peak")),
            "{text}"
        );
    }
    assert_eq!(containers_of_run(&job.path("out")), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_container_takes_only_its_conversations_and_every_task_ends_ok_once() {
    let job = TestJob::new();
    job.tasks(&support::hostname_rows(48, "1"));
    job.manifest(&fleet_manifest(
        3,
        "[run]\nworkers = 12\nmax_attempts = 1\n",
    ));
    let child = job.spawn(
        support::convoy_bin(),
        &["run", "job.toml", "--out", "out"],
        &[],
    );
    job.wait_for_results(6).await;
    let ids = containers_of_run(&job.path("out"));
    assert_eq!(ids.len(), 3, "{ids:?}");
    let killed = &ids[0];
    docker(&["kill", killed]);
    let out = tokio::time::timeout(Duration::from_secs(400), child.wait_with_output())
        .await
        .expect("convoy did not exit")
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = job.results();
    let ids_done: BTreeSet<&str> = results.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(results.len(), 48, "one result per task");
    assert_eq!(ids_done.len(), 48, "no task recorded twice");
    for r in &results {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["attempt"], 1, "{r}");
    }
    let rerun: Vec<&Value> = results
        .iter()
        .filter(|r| r["infra_retries"].as_u64() > Some(0))
        .collect();
    assert!(!rerun.is_empty(), "nothing was re-run");
    // Only the killed container's conversations were hit: at most the
    // conversations it held (a third of the workers, give or take).
    assert!(rerun.len() <= 8, "{} re-run", rerun.len());
    eprintln!(
        "container killed: {} of 48 tasks re-run, all ok",
        rerun.len()
    );
    assert_eq!(containers_of_run(&job.path("out")), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_sizes_the_fleet_from_the_workers_and_the_measured_capacity() {
    // Measured: an idle session's open files against the container's
    // open-files limit (low enough here to bind before the 256 busy
    // sessions); a few workers fit in one container.
    let job = TestJob::new();
    job.tasks(&support::hostname_rows(8, "0"));
    job.manifest(&support::script_job(
        &format!(
            "kind = \"docker\"\nimage = \"{}\"\nnofile = 512\ncontainers = \"auto\"",
            support::WORKSPACE_IMAGE
        ),
        "[run]\nworkers = 4\n",
    ));
    let out = job.run(&[("RUST_LOG", "info")]).await;
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    let line = log
        .lines()
        .find(|l| l.contains("a container holds about"))
        .unwrap_or_else(|| panic!("no capacity line: {log}"));
    eprintln!("{line}");
    assert!(line.contains("(open files: 80% of 512 over "), "{line}");
    assert!(line.ends_with("run.workers = 4: 1 container"), "{line}");
    let held: u64 = line
        .split("holds about ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!((10..256).contains(&held), "{line}");

    // Given: 10 workers at 4 sessions each need 3 containers.
    let job = TestJob::new();
    job.tasks(&support::hostname_rows(20, "0.3"));
    job.manifest(&support::script_job(
        &format!(
            "kind = \"docker\"\nimage = \"{}\"\nnofile = 4096\ncontainers = \"auto\"\nsessions_per_container = 4",
            support::WORKSPACE_IMAGE
        ),
        "[run]\nworkers = 10\n",
    ));
    let out = job.run(&[("RUST_LOG", "info")]).await;
    let log = stderr(&out);
    assert_eq!(out.status.code(), Some(0), "{log}");
    assert!(
        log.contains("(workspace.sessions_per_container); run.workers = 10: 3 containers"),
        "{log}"
    );
    let hosts: BTreeSet<String> = hosts(&job).into_values().collect();
    assert_eq!(hosts.len(), 3, "{hosts:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_are_checked_at_load() {
    let job = TestJob::new();
    job.tasks(&support::hostname_rows(1, "0"));
    for (ws, says) in [
        ("kind = \"docker\"\ncontainers = 0", "workspace.containers"),
        (
            "kind = \"docker\"\ncontainers = \"many\"",
            "\"many\" is not a number of containers or \"auto\"",
        ),
        (
            "kind = \"docker\"\ncontainers = 2\nsessions_per_container = 5",
            "is for workspace.containers = \"auto\"",
        ),
        (
            "kind = \"local\"\ncontainers = 2",
            "several containers need workspace.kind = \"docker\"",
        ),
        (
            "kind = \"docker\"\ncontainers = 2\nengines = [\"gpu-b:2375\"]",
            "`gpu-b:2375` is not an engine address",
        ),
        (
            "kind = \"docker\"\nengines = [\"unix:///var/run/docker.sock\", \"tcp://b:2375\"]",
            "2 engines for workspace.containers = 1",
        ),
    ] {
        job.manifest(&support::script_job(ws, ""));
        let out = job.convoy(&["validate", "job.toml"], &[]).await;
        assert_eq!(out.status.code(), Some(2), "{ws}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{ws}: {}", stderr(&out));
    }
}
