//! The shared Docker workspace, end to end: the real binary, a real Docker
//! engine, the image built by scripts/build-workspace-image.sh. These tests
//! fail (never skip) when Docker is unreachable; a missing image is built on
//! first use (`support::ensure_workspace_image`).

mod support;

use std::path::Path;
use std::time::Duration;

use serde_json::{json, Value};
use support::{containers_of_run, docker, observations, processes_with, stderr, TestJob};

use support::WORKSPACE_IMAGE as IMAGE;

/// A Docker-workspace manifest; builds the image first if it is missing.
fn script_manifest(extra_workspace: &str, extra: &str) -> String {
    support::ensure_workspace_image();
    let ws = format!("kind = \"docker\"\nimage = \"{IMAGE}\"\nnofile = 4096\n{extra_workspace}");
    support::script_job(&ws, extra)
}

fn rows(n: usize, commands: impl Fn(usize) -> Vec<String>) -> Vec<Value> {
    (0..n)
        .map(|i| json!({"id": format!("t{i}"), "commands": commands(i), "answer": format!("done {i}")}))
        .collect()
}

/// Spawns `convoy run` without waiting for it.
fn spawn_run(job: &TestJob) -> tokio::process::Child {
    job.spawn(
        support::convoy_bin(),
        &["run", "job.toml", "--out", "out"],
        &[],
    )
}

fn run_dir(job: &TestJob) -> std::path::PathBuf {
    job.path("out")
}

fn assert_no_container(job: &TestJob) {
    assert_eq!(
        containers_of_run(&run_dir(job)),
        Vec::<String>::new(),
        "container left behind"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_conversations_share_one_container_without_cross_talk() {
    let job = TestJob::new();
    job.tasks(&rows(500, |i| {
        vec![
            format!("export MINE={i}; mkdir -p /tmp/d{i} && cd /tmp/d{i} && printf 'id {i}\\t\\u2603' > f"),
            "cat f; echo; echo $MINE $(basename $PWD) $(hostname)".into(),
        ]
    }));
    job.manifest(&script_manifest("", "[run]\nworkers = 250\n"));
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = job.results();
    assert_eq!(results.len(), 500);
    let mut hosts = std::collections::BTreeSet::new();
    for i in 0..500 {
        let obs = observations(&job.trajectory(&format!("t{i}")));
        let lines: Vec<&str> = obs[1].lines().collect();
        assert_eq!(
            lines[0],
            format!("id {i}\t\u{2603}"),
            "task {i} read another file"
        );
        let fields: Vec<&str> = lines[1].split(' ').collect();
        assert_eq!(
            &fields[..2],
            [i.to_string(), format!("d{i}")],
            "task {i} saw another shell"
        );
        hosts.insert(fields[2].to_string());
    }
    // One container for all of them, and not this host.
    assert_eq!(hosts.len(), 1, "{hosts:?}");
    let host = std::fs::read_to_string("/etc/hostname").unwrap_or_default();
    assert_ne!(hosts.first().unwrap().as_str(), host.trim());
    assert_no_container(&job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn container_is_removed_after_a_failed_job() {
    let job = TestJob::new();
    job.tasks(&rows(3, |_| {
        vec!["true".into(), "true".into(), "true".into()]
    }));
    job.manifest(&script_manifest("", "[agent]\nmax_steps = 2\n"));
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(job.results().iter().all(|r| r["status"] == "max_steps"));
    assert_no_container(&job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigint_stops_the_job_and_removes_the_container() {
    let job = TestJob::new();
    job.tasks(&rows(40, |i| {
        vec![format!("sleep 0.{i:02}"), "sleep 30".into()]
    }));
    job.manifest(&script_manifest(
        "",
        "[run]\nworkers = 10\ngrace = \"1s\"\n",
    ));
    let child = spawn_run(&job);
    let pid = child.id().unwrap() as i32;
    // Wait until conversations are running in the container.
    for _ in 0..600 {
        if !containers_of_run(&run_dir(&job)).is_empty() && job.path("out/results.jsonl").exists() {
            let ps = docker(&[
                "ps",
                "-q",
                "--filter",
                &format!("label=convoy.run={}", run_dir(&job).display()),
            ]);
            if !ps.trim().is_empty()
                && docker(&[
                    "exec",
                    ps.trim(),
                    "sh",
                    "-c",
                    "pgrep -c -f 'sleep 30' || true",
                ])
                .trim()
                    != "0"
            {
                break;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(pid),
        nix::sys::signal::Signal::SIGINT,
    )
    .unwrap();
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(130), "{}", stderr(&out));
    assert!(stderr(&out).contains("interrupted"), "{}", stderr(&out));
    assert!(job.results().len() < 40, "nothing was interrupted");
    assert_no_container(&job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_kill_mid_job_and_every_task_still_finishes() {
    let job = TestJob::new();
    job.tasks(&rows(60, |_| {
        vec![
            "export A=$RANDOM; sleep 1".into(),
            "sleep 1; echo $A".into(),
        ]
    }));
    job.manifest(&script_manifest(
        "",
        "[run]\nworkers = 20\nmax_attempts = 3\n",
    ));
    let child = spawn_run(&job);
    job.wait_for_results(5).await;
    let ids = containers_of_run(&run_dir(&job));
    assert_eq!(ids.len(), 1);
    docker(&["kill", &ids[0]]);
    let out = child.wait_with_output().await.unwrap();
    let failed: Vec<Value> = job
        .results()
        .into_iter()
        .filter(|r| r["status"] != "ok")
        .collect();
    assert_eq!(
        out.status.code(),
        Some(0),
        "failed: {failed:?}\n{}",
        stderr(&out)
    );
    let results = job.results();
    assert_eq!(results.len(), 60);
    assert!(results.iter().all(|r| r["status"] == "ok"));
    // Re-run without spending attempts: the container's death was not
    // the tasks' fault.
    assert!(
        results
            .iter()
            .any(|r| r["infra_retries"].as_u64() > Some(0)),
        "nothing was re-run"
    );
    assert!(results.iter().all(|r| r["attempt"] == 1), "{results:?}");
    assert!(stderr(&out).contains("died"), "{}", stderr(&out));
    // Each task's shell state held within its attempt.
    for r in &results {
        let obs = observations(&job.trajectory(r["id"].as_str().unwrap()));
        assert!(obs[1].trim().parse::<u32>().is_ok(), "{obs:?}");
    }
    assert_no_container(&job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_helper_is_restarted_and_adopts_the_sessions() {
    let job = TestJob::new();
    job.tasks(&rows(40, |_| vec!["sleep 1".into(), "echo fine".into()]));
    job.manifest(&script_manifest("", "[run]\nworkers = 10\n"));
    let child = spawn_run(&job);
    job.wait_for_results(3).await;
    let ids = containers_of_run(&run_dir(&job));
    // The manifest's isolation and session limits (defaults here) reach
    // the helper's command line, the first helper's and the restarted one's.
    let flags = "--isolation auto --session-pids 1024 --session-memory 4294967296";
    let (first, args) = helper_process(&ids[0]).expect("a helper runs");
    assert!(args.ends_with(flags), "{args}");
    docker(&["exec", &ids[0], "pkill", "-f", "convoy shim"]);
    let restarted = loop {
        match helper_process(&ids[0]) {
            Some((pid, args)) if pid != first => break args,
            _ => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    assert!(restarted.ends_with(flags), "{restarted}");
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(stderr(&out).contains("adopted"), "{}", stderr(&out));
    assert_eq!(job.results().len(), 40);
    assert_no_container(&job);
}

/// The pid and command line of the helper (`convoy shim`) in a container.
fn helper_process(container: &str) -> Option<(u32, String)> {
    docker(&["exec", container, "ps", "-eo", "pid=,args="])
        .lines()
        .filter_map(|l| l.trim().split_once(' '))
        .find(|(_, args)| args.contains("convoy shim"))
        .and_then(|(pid, args)| Some((pid.parse().ok()?, args.trim().to_string())))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nofile_beyond_the_daemon_limit_is_clamped_and_said() {
    let job = TestJob::new();
    job.tasks(&rows(1, |_| vec!["ulimit -Hn".into()]));
    job.manifest(&script_manifest("", "").replace("nofile = 4096", "nofile = 1048576"));
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    let granted: u64 = observations(&job.trajectory("t0"))[0]
        .trim()
        .parse()
        .unwrap();
    // Docker daemons never grant a million open files by default; convoy
    // must say what it asked for and what it got.
    let said = format!("workspace.nofile = 1048576 is more than the Docker daemon allows ({granted}); using {granted}");
    assert!(err.contains(&said), "expected {said:?} in {err}");
    assert_no_container(&job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn missing_image_exits_2_naming_it() {
    let job = TestJob::new();
    job.tasks(&rows(1, |_| vec!["true".into()]));
    job.manifest(&script_manifest("", "").replace(IMAGE, "convoy-no-such-image:1"));
    let out = job.convoy(&["validate", "job.toml"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`convoy-no-such-image:1` does not exist"),
        "{}",
        stderr(&out)
    );
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("build-workspace-image.sh"),
        "{}",
        stderr(&out)
    );
    assert_no_container(&job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_exec_channel_gives_the_same_observations_and_kills_background_jobs() {
    let job = TestJob::new();
    job.tasks(&rows(4, |i| {
        vec![
            format!("cd /tmp && export N={i} && (sleep 1000.7{i} &) && printf 'a\\tb'"),
            "echo $N $PWD; cat".into(),
            "exit 3".into(),
        ]
    }));
    // A verification here is a session opened, run and closed (this
    // channel has no holder for a check of its own).
    job.manifest(&script_manifest(
        "channel = \"exec\"",
        "[verify]\ncommand = \"echo $N; echo 0.5\"\nreward = \"last_line\"\n",
    ));
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for i in 0..4 {
        let obs = observations(&job.trajectory(&format!("t{i}")));
        assert_eq!(obs[0], "a\tb");
        assert_eq!(obs[1], format!("{i} /tmp\n"));
        assert!(obs[2].starts_with("[exit code: 3]"), "{}", obs[2]);
    }
    for r in job.results() {
        assert_eq!(r["reward"], 0.5, "{r}");
        assert_eq!(r["verify"]["output"], "\n0.5\n", "a fresh session: {r}");
    }
    assert!(processes_with("sleep 1000.7").is_empty());
    assert_no_container(&job);
}

#[test]
fn the_workspace_image_exists_or_is_built() {
    // The other tests need it: a fresh machine builds it on first use.
    support::ensure_workspace_image();
    let out = std::process::Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .output()
        .expect("docker CLI");
    assert!(
        out.status.success(),
        "image {IMAGE} is missing: run scripts/build-workspace-image.sh"
    );
    let _ = Path::new(".");
}

/// Runs the job with a helper binary that cannot run in the image.
async fn run_with_a_foreign_helper(job: &TestJob) -> std::process::Output {
    // Not an executable for any machine: as if built for another one.
    let bogus = job.write(
        "foreign-convoy",
        "\x7fELF this is not a binary for this machine",
    );
    job.run(&[("CONVOY_HELPER", bogus.to_str().unwrap())]).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helper_that_cannot_run_falls_back_to_exec_per_request_with_a_warning() {
    let job = TestJob::new();
    job.tasks(&rows(3, |i| vec![format!("echo fallback {i}")]));
    job.manifest(&script_manifest("", ""));
    let out = run_with_a_foreign_helper(&job).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cannot run in image"), "{err}");
    assert!(err.contains("one docker exec per request"), "{err}");
    for i in 0..3 {
        assert_eq!(
            observations(&job.trajectory(&format!("t{i}")))[0],
            format!("fallback {i}\n")
        );
    }
    assert_no_container(&job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_helper_that_cannot_run_is_a_boot_failure_when_isolation_is_required() {
    let job = TestJob::new();
    job.tasks(&rows(1, |_| vec!["id -u".into()]));
    job.manifest(&script_manifest("isolation = \"user\"\n", ""));
    let out = run_with_a_foreign_helper(&job).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(err.contains("cannot run in image"), "{err}");
    assert!(
        err.contains("workspace.isolation = \"user\" needs it"),
        "{err}"
    );
    assert!(!err.contains("one docker exec per request"), "{err}");
    assert_no_container(&job);
}
