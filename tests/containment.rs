//! Containment, end to end: what one conversation does to its own shell
//! (exit it, poison its state, read the environment) stays with that
//! conversation. Canary conversations run beside the hostile ones and
//! check their exact observations. Real binary, real tmux, real Docker.

mod support;

use serde_json::{json, Value};
use support::{observations, stderr, TestJob};

/// A script-provider job on the local workspace (`rest` after
/// `[workspace]`'s keys).
fn local_job(workspace: &str, rest: &str) -> String {
    support::script_job(
        &format!("kind = \"local\"\nworkdir = \"work\"\n{workspace}"),
        rest,
    )
}

fn docker_job(workspace: &str, rest: &str) -> String {
    support::ensure_workspace_image();
    support::script_job(
        &format!(
            "kind = \"docker\"\nimage = \"{}\"\nnofile = 4096\n{workspace}",
            support::WORKSPACE_IMAGE
        ),
        rest,
    )
}

fn row(id: &str, commands: &[&str]) -> Value {
    json!({"id": id, "commands": commands, "answer": "done"})
}

const EXITED: &str = "[the shell exited; the next command starts in a new shell]";
const RESTARTED: &str = "[the previous shell had exited; this command ran in a new shell]";

/// 30 tasks whose shell exits (`exit`, `set -e; false`) before the next
/// command, one at a time, each with one attempt: every task ok, with
/// exactly the observations of a fresh shell.
fn restart_rows() -> Vec<Value> {
    (0..30)
        .map(|i| {
            let first = if i % 3 == 2 { "set -e; false" } else { "exit" };
            row(&format!("r{i}"), &[first, "echo back"])
        })
        .collect()
}

fn assert_restarts_are_clean(job: &TestJob, out: &std::process::Output) {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    let results = job.results();
    assert_eq!(results.len(), 30);
    for r in &results {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["attempt"], 1, "{r}");
    }
    for i in 0..30 {
        let obs = observations(&job.trajectory(&format!("r{i}")));
        let code = if i % 3 == 2 { 1 } else { 0 };
        let first = if code == 0 {
            EXITED.to_string()
        } else {
            format!("[exit code: {code}]\n{EXITED}")
        };
        assert_eq!(obs, [first, format!("{RESTARTED}\nback\n")], "task r{i}");
    }
}

/// Regression: the restart raced the old session's removal and the helper
/// answered `duplicate session: rN` (about 1 run in 4 at workers 1).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_that_exits_again_and_again_never_meets_a_duplicate_session_local() {
    let job = TestJob::new();
    job.tasks(&restart_rows());
    job.manifest(&local_job("", "[run]\nworkers = 1\nmax_attempts = 1\n"));
    let out = job.run(&[]).await;
    assert_restarts_are_clean(&job, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_that_exits_again_and_again_never_meets_a_duplicate_session_docker() {
    let job = TestJob::new();
    job.tasks(&restart_rows());
    job.manifest(&docker_job("", "[run]\nworkers = 1\nmax_attempts = 1\n"));
    let out = job.run(&[]).await;
    assert_restarts_are_clean(&job, &out);
}

/// What a session may see of the environment: the bare minimum, convoy's
/// session variables, tmux's and bash's own, and what the manifest names.
const ALLOWED_ENV: [&str; 19] = [
    "PATH",
    "HOME",
    "LANG",
    "TERM",
    "USER",
    "LOGNAME",
    "SHELL",
    "CONVOY_SESSION",
    "CONVOY_SESSION_DIR",
    "CONVOY_FIFO",
    "TMUX",
    "TMUX_PANE",
    "TERM_PROGRAM",
    "TERM_PROGRAM_VERSION",
    "PWD",
    "OLDPWD",
    "SHLVL",
    "_",
    // workspace.env and workspace.pass_env of the test below
    "FROM_MANIFEST",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_sees_neither_the_api_key_nor_convoys_environment_local() {
    let llm = support::fake_llm::FakeLlm::start().await;
    let job = TestJob::new();
    let turns = json!([
        {"calls": [["bash", {"command": "env"}]]},
        {"content": "done"}
    ]);
    job.tasks(&[json!({"id": "e1", "script": support::script(turns)})]);
    job.manifest(&support::http_manifest(
        &llm,
        "max_retries = 0",
        "env = { FROM_MANIFEST = \"m\" }\npass_env = [\"PASS_ME\"]\n",
    ));
    let out = job
        .run(&[
            ("CONVOY_TEST_KEY", support::KEY),
            ("CONVOY_TEST_OTHER", "convoy-only-value"),
            ("PASS_ME", "passed-value"),
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let env = observations(&job.trajectory("e1")).remove(0);
    assert!(!env.contains(support::KEY), "{env}");
    assert!(!env.contains("convoy-only-value"), "{env}");
    assert!(env.lines().any(|l| l == "PASS_ME=passed-value"), "{env}");
    assert!(env.lines().any(|l| l == "FROM_MANIFEST=m"), "{env}");
    for line in env.lines() {
        let name = line.split('=').next().unwrap();
        assert!(
            ALLOWED_ENV.contains(&name) || name == "PASS_ME",
            "`{name}` reached the session: {env}"
        );
    }
    let trajectories = std::fs::read_to_string(job.path("out/trajectories.jsonl")).unwrap();
    assert!(trajectories.contains("PASS_ME=passed-value"));
    assert!(!trajectories.contains(support::KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_key_in_pass_env_is_refused_with_exit_2() {
    let job = TestJob::new();
    job.tasks(&[row("p1", &["true"])]);
    job.manifest(
        "[prompt]\nuser = \"go\"\n[llm]\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\n\
         api_key_env = \"CONVOY_TEST_KEY\"\n[workspace]\nkind = \"local\"\n\
         pass_env = [\"HOME\", \"CONVOY_TEST_KEY\"]\n",
    );
    let out = job.run(&[("CONVOY_TEST_KEY", support::KEY)]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("workspace.pass_env")
            && err.contains(
                "`CONVOY_TEST_KEY` is llm.api_key_env: the API key never reaches a session"
            ),
        "{err}"
    );
    assert!(!err.contains(support::KEY));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_sees_neither_the_api_key_nor_convoys_environment_docker() {
    let job = TestJob::new();
    job.tasks(&[row("e1", &["env"])]);
    job.manifest(&docker_job("pass_env = [\"PASS_ME\"]\n", ""));
    let out = job
        .run(&[
            ("CONVOY_TEST_KEY", support::KEY),
            ("CONVOY_TEST_OTHER", "convoy-only-value"),
            ("PASS_ME", "passed-value"),
        ])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let env = observations(&job.trajectory("e1")).remove(0);
    assert!(!env.contains(support::KEY), "{env}");
    assert!(!env.contains("convoy-only-value"), "{env}");
    assert!(env.lines().any(|l| l == "PASS_ME=passed-value"), "{env}");
}
