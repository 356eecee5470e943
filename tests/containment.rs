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
/// session variables, tmux's and bash's own, the defaults that keep a
/// pager or a prompt from swallowing a command, and what the manifest
/// names.
const ALLOWED_ENV: [&str; 25] = [
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
    "PAGER",
    "GIT_PAGER",
    "MANPAGER",
    "GIT_TERMINAL_PROMPT",
    "DEBIAN_FRONTEND",
    "PIP_NO_INPUT",
    // workspace.env and workspace.pass_env of the test below
    "FROM_MANIFEST",
];

/// Runs task `e1` (whose first command is `env`) with the key, another
/// variable of convoy's and `PASS_ME` in convoy's environment; the
/// session's `env` output, checked for what must and must not be there.
async fn run_env_job(job: &TestJob) -> String {
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
    env
}

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
    let env = run_env_job(&job).await;
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
                "`CONVOY_TEST_KEY` is llm.api_key_env: an API key never reaches a session"
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
    run_env_job(&job).await;
}

/// Hostile conversations, each leaving its shell in a state meant to break
/// the runner or the helper, then running `echo next`; and the exact
/// observations each must get. What a hostile state may cost is its own
/// conversation's next command (which then times out and gets a new
/// shell), never the helper, never another conversation.
fn hostile_cases() -> Vec<(&'static str, Vec<&'static str>, Vec<String>)> {
    let next = "next\n".to_string();
    let timed_out = format!("[command timed out after 3s; interrupted with C-c]\n{EXITED}");
    vec![
        (
            "aliases",
            vec!["alias .='echo HIJACK' source='echo HIJACK' cd='echo HIJACK' unset='echo HIJACK' trap='echo HIJACK' builtin='echo HIJACK'", "echo next"],
            vec![String::new(), next.clone()],
        ),
        (
            "functions",
            vec![
                ".() { echo HIJACK; }; source() { echo HIJACK; }; builtin() { echo HIJACK; }; command() { echo HIJACK; }; printf() { echo HIJACK; }; enable() { echo HIJACK; }; unset() { echo HIJACK; }; trap() { echo HIJACK; }; cd() { echo HIJACK; }",
                "echo next",
            ],
            vec![String::new(), next.clone()],
        ),
        (
            "disabled_builtins",
            vec!["enable -n . source printf trap", "echo next"],
            vec![String::new(), next.clone()],
        ),
        (
            "ifs_ps1_nounset",
            vec!["IFS=/; PS1='> '; PS2='x'; PS4='+'; set -u; set -o noclobber", "echo next"],
            vec![String::new(), next.clone()],
        ),
        (
            "prompt_command",
            vec!["unset PROMPT_COMMAND", "PROMPT_COMMAND='echo HIJACK'", "echo next"],
            vec![
                "bash: unset: PROMPT_COMMAND: cannot unset: readonly variable\n[exit code: 1]"
                    .to_string(),
                "bash: PROMPT_COMMAND: readonly variable\n[exit code: 1]".to_string(),
                next.clone(),
            ],
        ),
        (
            "set_e",
            vec!["set -e", "false", "echo next"],
            vec![
                String::new(),
                format!("[exit code: 1]\n{EXITED}"),
                format!("{RESTARTED}\nnext\n"),
            ],
        ),
        (
            // No EXIT trap runs: tmux's word that the pane died ends the
            // command (before: it waited for command_timeout).
            "killed_shell",
            vec!["kill -9 $$", "echo next"],
            vec![
                format!("[exit code: -1]\n{EXITED}"),
                format!("{RESTARTED}\nnext\n"),
            ],
        ),
        (
            // The program that replaces the shell holds no terminal (its
            // output goes to a file), so the pane's terminal closes, tmux
            // hangs the program up, and the death is told with no status
            // (a signal): at once, not after the 3 s command_timeout.
            "exec_replaces_the_shell",
            vec!["exec sleep 30", "echo next"],
            vec![
                format!("[exit code: -1]\n{EXITED}"),
                format!("{RESTARTED}\nnext\n"),
            ],
        ),
        (
            "debug_trap_that_skips_everything",
            vec!["shopt -s extdebug; trap false DEBUG", "echo lost", "echo next"],
            // The trap skips the hook that reports the very command that
            // set it: that one times out, and the shell is replaced.
            vec![timed_out, format!("{RESTARTED}\nlost\n"), next.clone()],
        ),
        (
            "garbage_records",
            vec![
                r#"printf '\xff\xfe\n' >"$CONVOY_FIFO"; printf '%01000d\n' 0 >"$CONVOY_FIFO"; printf 'c999999 1 0 prompt\n' >"$CONVOY_FIFO""#,
                "echo next",
            ],
            vec![String::new(), next.clone()],
        ),
        (
            "output_file_becomes_dev_zero",
            vec![r#"ln -sf /dev/zero "$__convoy_dir/$__convoy_seq.out""#, "echo next"],
            vec![String::new(), next.clone()],
        ),
        (
            "output_file_becomes_a_fifo",
            vec![
                r#"rm "$__convoy_dir/$__convoy_seq.out"; mkfifo "$__convoy_dir/$__convoy_seq.out""#,
                "echo next",
            ],
            vec![
                "[convoy: the command replaced its output file with something that is not a file; output not read]\n".to_string(),
                next,
            ],
        ),
    ]
}

/// Canary `i`: shell state and output it checks exactly.
fn canary(i: usize) -> (Vec<String>, Vec<String>) {
    (
        vec![
            format!("cd /tmp && export CANARY=c{i}"),
            "echo \"$CANARY $(basename \"$PWD\")\"".to_string(),
            format!("printf '%s\\n' canary-{i}; . /dev/null; source /dev/null; echo done-{i}"),
        ],
        vec![
            String::new(),
            format!("c{i} tmp\n"),
            format!("canary-{i}\ndone-{i}\n"),
        ],
    )
}

fn hostile_rows() -> Vec<Value> {
    let mut rows: Vec<Value> = hostile_cases()
        .into_iter()
        .map(|(id, commands, _)| row(id, &commands))
        .collect();
    for i in 0..10 {
        let (commands, _) = canary(i);
        let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
        rows.push(row(&format!("canary{i}"), &commands));
    }
    rows
}

fn assert_hostile_contained(job: &TestJob, out: &std::process::Output) {
    assert_eq!(out.status.code(), Some(0), "{}", stderr(out));
    for r in job.results() {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["attempt"], 1, "{r}");
    }
    for (id, _, expected) in hostile_cases() {
        assert_eq!(
            observations(&job.trajectory(id)),
            expected,
            "hostile case {id}"
        );
    }
    for i in 0..10 {
        let (_, expected) = canary(i);
        assert_eq!(
            observations(&job.trajectory(&format!("canary{i}"))),
            expected,
            "canary {i}"
        );
    }
}

const HOSTILE_RUN: &str =
    "[agent]\ncommand_timeout = \"3s\"\n[run]\nworkers = 20\nmax_attempts = 1\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_shell_states_break_nothing_but_their_own_next_command_local() {
    let job = TestJob::new();
    job.tasks(&hostile_rows());
    job.manifest(&local_job("", HOSTILE_RUN));
    let out = job.run(&[]).await;
    assert_hostile_contained(&job, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_shell_states_break_nothing_but_their_own_next_command_docker() {
    let job = TestJob::new();
    job.tasks(&hostile_rows());
    job.manifest(&docker_job("", HOSTILE_RUN));
    let out = job.run(&[]).await;
    assert_hostile_contained(&job, &out);
}

/// A shell that cannot start says why, in true words: here `bash` is not
/// on the sessions' PATH (convoy runs with a PATH of tmux and tail), so
/// the shell exits with 127 before it is ready. Before, every such
/// failure blamed processes or open files after 30 s.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shell_that_cannot_start_says_why() {
    let job = TestJob::new();
    let bin = job.path("bin");
    std::fs::create_dir_all(&bin).unwrap();
    // tmux, and `tail` for the helper's control session; no bash.
    for tool in ["tmux", "tail"] {
        std::os::unix::fs::symlink(format!("/usr/bin/{tool}"), bin.join(tool)).unwrap();
    }
    job.tasks(&[row("nobash", &["echo never"])]);
    job.manifest(&local_job("", "[run]\nmax_attempts = 1\n"));
    let path = bin.display().to_string();
    let out = job.run(&[("PATH", &path), ("SHELL", "/bin/sh")]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let r = &job.results()[0];
    assert_eq!(r["status"], "failed", "{r}");
    assert_eq!(
        r["error"],
        format!(
            "workspace helper: the shell of session `c0` did not start: it exited with status 127 \
             before it was ready: `bash` was not found on the session's PATH ({path})"
        ),
        "{r}"
    );
}

/// The exec channel (one `docker exec` per request) types the same line:
/// aliases and functions shadowing builtins leave the next command exact.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_aliases_and_functions_break_nothing_on_the_exec_channel() {
    let job = TestJob::new();
    let cases: Vec<_> = hostile_cases()
        .into_iter()
        .filter(|(id, _, _)| {
            matches!(
                *id,
                "aliases" | "functions" | "disabled_builtins" | "ifs_ps1_nounset"
            )
        })
        .collect();
    let mut rows: Vec<Value> = cases.iter().map(|(id, c, _)| row(id, c)).collect();
    let (commands, expected) = canary(0);
    let commands: Vec<&str> = commands.iter().map(String::as_str).collect();
    rows.push(row("canary0", &commands));
    job.tasks(&rows);
    job.manifest(&docker_job("channel = \"exec\"\n", HOSTILE_RUN));
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for (id, _, want) in cases {
        assert_eq!(observations(&job.trajectory(id)), want, "hostile case {id}");
    }
    assert_eq!(observations(&job.trajectory("canary0")), expected);
}
