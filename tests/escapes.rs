//! No process outlives its conversation, however it was started: each
//! attacker conversation starts one long-lived process by its own means
//! (nohup, setsid, a double fork, a cleared environment, a renamed or
//! copied binary, its own tmux server, a daemon), checks that it runs, and
//! finishes. With one worker, an observer conversation after them all
//! must find none of those processes. On the Docker workspace with
//! `isolation = "user"` and `"none"`, and on the local workspace (where
//! nothing may outlive convoy on the host either, and a survivor is never
//! a silent `clean`). Real binary, real tmux, real Docker.

mod support;

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use serde_json::Value;
use support::hostile::{
    differences_from, docker_job, local_job, observations_of, row, run_bounded,
};
use support::{processes_with, TestJob};

/// A suffix no other run on this machine has, so that the marker of
/// every escaped process is this run's alone (local sessions see the
/// whole host, Docker's containers included).
fn nonce() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{:03}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// The ways out: an id, the number its process carries and the command
/// that starts it so that it may outlive the conversation (`@` stands for
/// the run's marker suffix). `scratch` is a directory the session may
/// write to.
fn escapes(scratch: &str) -> Vec<(&'static str, u32, String)> {
    let quiet = ">/dev/null 2>&1";
    vec![
        ("nohup", 4101, format!("nohup sleep 4101@ {quiet} &")),
        ("setsid", 4102, format!("setsid sleep 4102@ {quiet} &")),
        (
            "double_fork",
            4103,
            format!("( (sleep 4103@ {quiet} &) & )"),
        ),
        ("env_i", 4104, format!("env -i sleep 4104@ {quiet} &")),
        (
            "renamed",
            4105,
            format!("(exec -a renamed-4105@ sleep 4105@ {quiet}) &"),
        ),
        (
            "copied_binary",
            4106,
            format!("cp /bin/sleep {scratch}/x4106@ && {scratch}/x4106@ 4106@ {quiet} &"),
        ),
        (
            "own_tmux",
            4107,
            "env -u TMUX tmux -L mine-4107@ new -d 'sleep 4107@'".to_string(),
        ),
        (
            "setsid_fork",
            4108,
            format!("setsid -f sleep 4108@ {quiet}"),
        ),
        ("disown", 4109, format!("sleep 4109@ {quiet} & disown")),
        (
            "daemon_clean_env",
            4110,
            format!("env -i setsid sh -c 'sleep 4110@' {quiet} &"),
        ),
        (
            "ignores_signals",
            4111,
            format!("setsid sh -c 'trap \"\" HUP INT TERM; sleep 4111@' {quiet} &"),
        ),
        (
            "python_daemon",
            4112,
            format!(
                "python3 -c 'import os, sys, time\nif os.fork(): os._exit(0)\nos.setsid()\n\
                 if os.fork(): os._exit(0)\nos.closerange(0, 64)\ntime.sleep(float(sys.argv[1]))' \
                 4112@ {quiet}"
            ),
        ),
    ]
}

/// A shell pipeline printing, space-separated, the distinct markers of
/// this run found in the process list (`pattern` a grep pattern that does
/// not match itself).
fn alive(pattern: &str) -> String {
    format!("$(ps -eo args | grep -o '{pattern}' | sort -u | tr '\\n' ' ')")
}

struct Escapes {
    nonce: String,
    rows: Vec<Value>,
    expected: Vec<(String, Vec<String>)>,
}

/// One attacker task per way out, each checking its process runs before
/// it finishes, then the observer, which waits up to five seconds for
/// every marker to be gone.
fn escape_job(scratch: &str) -> Escapes {
    let nonce = nonce();
    let mut rows = Vec::new();
    let mut expected = Vec::new();
    for (id, number, start) in escapes(scratch) {
        let start = start.replace('@', &format!(".{nonce}"));
        // `[4]101` matches 4101 but not the pattern itself in `ps`.
        let pattern = format!("[4]{}\\.{nonce}", number % 1000);
        let check = format!(
            "for i in $(seq 50); do ps -eo args | grep -q '{pattern}' && break; sleep 0.1; done; \
             ps -eo args | grep -q '{pattern}' && echo running"
        );
        rows.push(row(id, &[start, check]));
        expected.push((id.to_string(), vec![String::new(), "running\n".to_string()]));
    }
    let pattern = format!("[4]1[0-9][0-9]\\.{nonce}");
    let observe = format!(
        "for i in $(seq 20); do s={}; [ -z \"$s\" ] && break; sleep 0.25; done; echo \"alive: $s\"",
        alive(&pattern)
    );
    rows.push(row("observer", &[observe]));
    expected.push(("observer".to_string(), vec!["alive: \n".to_string()]));
    Escapes {
        nonce,
        rows,
        expected,
    }
}

/// `out` without the interactive shell's word that a background job is
/// done (`[1]+  Done  setsid ...`: `setsid` forks and its first process
/// ends at once), which lands in whichever command runs next.
fn without_job_notices(out: &str) -> String {
    out.split_inclusive('\n')
        .filter(|l| {
            let notice = l.strip_prefix('[').and_then(|l| l.split_once(']'));
            !notice.is_some_and(|(_, rest)| {
                rest.trim_start_matches(['+', '-'])
                    .trim_start()
                    .starts_with("Done")
            })
        })
        .collect()
}

const RUN: &str = "[run]\nworkers = 1\nmax_attempts = 1\ntask_timeout = \"60s\"\n\
                   [monitor]\ninterval = \"200ms\"\n";

/// Runs the escapes and asserts every attacker's process ran, the
/// observer found none left, and the leak verdict is `clean`; `after`
/// is what the test saw survive the run itself (local: on the host).
async fn assert_nothing_escapes(job: &TestJob, escapes: &Escapes, after: impl Fn() -> Vec<String>) {
    job.tasks(&escapes.rows);
    let out = run_bounded(job, Duration::from_secs(240)).await;
    let survivors = after();
    let diffs: Vec<String> = escapes
        .expected
        .iter()
        .filter_map(|(id, want)| {
            let got: Vec<String> = observations_of(job, id)
                .iter()
                .map(|o| without_job_notices(o))
                .collect();
            differences_from(job, id, want, &got)
        })
        .collect();
    let summary: Value = std::fs::read_to_string(job.path("out/summary.json"))
        .ok()
        .and_then(|s| serde_json::from_str(&s).ok())
        .unwrap_or(Value::Null);
    let leaks = &summary["leaks"];
    let escaped = !diffs.is_empty() || !survivors.is_empty();
    let unseen = if escaped && leaks["verdict"] == "clean" {
        " UNSEEN: the leak verdict says clean"
    } else {
        ""
    };
    assert!(
        !escaped && leaks["verdict"] == "clean",
        "marker .{}: processes outlived their conversations{unseen}\n{}\n\
         after the run: {survivors:#?}\nleaks: {leaks}\nconvoy exit {:?}: {}",
        escapes.nonce,
        diffs.join("\n"),
        out.status.code(),
        support::stderr(&out)
    );
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
}

/// The escapes in the test image, with `workspace` keys added.
async fn in_docker(workspace: &str) {
    let job = TestJob::new();
    let escapes = escape_job("/tmp");
    job.manifest(&docker_job(workspace, RUN));
    assert_nothing_escapes(&job, &escapes, Vec::new).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_outlives_its_conversation_docker_isolation_user() {
    in_docker("").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_outlives_its_conversation_docker_isolation_none() {
    in_docker("isolation = \"none\"\n").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_process_outlives_its_conversation_local() {
    let job = TestJob::new();
    // The workdir (inside the job's directory) for the copied binary.
    let escapes = escape_job("\"$PWD\"");
    job.manifest(&local_job("", RUN));
    // Whatever survives on the host is this test's own: killed by pid
    // when the test ends, however it ends.
    let survivors = Survivors(format!(".{}", escapes.nonce));
    assert_nothing_escapes(&job, &escapes, || processes_with(&survivors.0)).await;
}

/// Host processes whose command line holds the marker (`.NONCE`).
struct Survivors(String);

impl Drop for Survivors {
    fn drop(&mut self) {
        kill_survivors(&self.0);
    }
}

/// Kills (by pid) every host process whose command line holds `needle`,
/// and removes the socket of the attacker's own tmux server.
fn kill_survivors(needle: &str) {
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        let cmd = std::fs::read(entry.path().join("cmdline")).unwrap_or_default();
        if pid != std::process::id() as i32 && String::from_utf8_lossy(&cmd).contains(needle) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
    }
    let uid = nix::unistd::getuid();
    let nonce = needle.trim_start_matches('.');
    let _ = std::fs::remove_file(format!("/tmp/tmux-{uid}/mine-4107.{nonce}"));
}
