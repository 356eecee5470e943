//! Starting a job without reading the whole README, through the real
//! binary: `convoy init` then `convoy run`, completions, `--dry-run`,
//! `validate --json`, a manifest on stdin, and the CONVOY_* variables.

mod support;

use std::io::Write;
use std::process::{Command, Output, Stdio};

use serde_json::Value;
use support::{convoy_bin, read_jsonl, TestJob};

fn convoy_in(job: &TestJob, args: &[&str], envs: &[(&str, &str)], stdin: Option<&str>) -> Output {
    let mut cmd = Command::new(convoy_bin());
    cmd.args(args)
        .current_dir(job.dir.path())
        .env("TMPDIR", job.path("tmp"))
        .env("RUST_LOG", "warn")
        .env_remove("CONVOY_WORKERS")
        .env_remove("CONVOY_OUT")
        .env_remove("CONVOY_LIMIT")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let mut child = cmd.spawn().unwrap();
    let mut input = child.stdin.take().unwrap();
    if let Some(text) = stdin {
        input.write_all(text.as_bytes()).unwrap();
    }
    drop(input);
    child.wait_with_output().unwrap()
}

fn ok(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "{err}");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn init_writes_a_job_that_runs_offline_as_it_is() {
    let job = TestJob::new();
    let out = ok(&convoy_in(&job, &["init", "starter"], &[], None));
    assert!(
        out.contains("wrote starter/job.toml") && out.contains("wrote starter/tasks.jsonl"),
        "{out}"
    );
    let manifest = std::fs::read_to_string(job.path("starter/job.toml")).unwrap();
    // Every section is there, the optional ones commented.
    for table in [
        "[tasks]",
        "[prompt]",
        "[llm]",
        "[agent]",
        "[workspace]",
        "[run]",
        "[monitor]",
    ] {
        assert!(manifest.contains(table), "{table} missing");
    }
    for setting in ["#base_url", "#api_key_env", "#image", "#mounts", "#on_leak"] {
        assert!(manifest.contains(setting), "{setting} missing");
    }

    ok(&convoy_in(
        &job,
        &["validate", "starter/job.toml"],
        &[],
        None,
    ));
    let run = convoy_in(
        &job,
        &["run", "starter/job.toml", "--out", "out"],
        &[],
        None,
    );
    ok(&run);
    let results = read_jsonl(&job.path("out/results.jsonl"));
    let mut ids: Vec<_> = results
        .iter()
        .map(|r| r["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    assert_eq!(ids, ["count", "hello", "shell-state"]);
    assert!(results.iter().all(|r| r["status"] == "ok"), "{results:?}");
    let traj = read_jsonl(&job.path("out/trajectories.jsonl"));
    let state = traj.iter().find(|t| t["id"] == "shell-state").unwrap();
    let last_tool = state["messages"]
        .as_array()
        .unwrap()
        .iter()
        .rev()
        .find(|m| m["role"] == "tool")
        .unwrap();
    assert_eq!(last_tool["content"], "yes in sub\n");

    // Never over an existing file: exit 2, nothing touched.
    job.write("starter/job.toml", "mine\n");
    let again = convoy_in(&job, &["init", "starter"], &[], None);
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already exists"));
    assert_eq!(
        std::fs::read_to_string(job.path("starter/job.toml")).unwrap(),
        "mine\n"
    );
}

#[test]
fn completions_print_a_script_for_each_shell() {
    let job = TestJob::new();
    for (shell, marker) in [
        ("bash", "complete -F _convoy"),
        ("zsh", "#compdef convoy"),
        ("fish", "complete -c convoy"),
    ] {
        let text = ok(&convoy_in(&job, &["completions", shell], &[], None));
        assert!(text.contains(marker), "{shell}: {text}");
        assert!(
            text.contains("dry-run") && text.contains("validate"),
            "{shell}"
        );
    }
    // The helper command is convoy's own business, not the user's.
    let bash = ok(&convoy_in(&job, &["completions", "bash"], &[], None));
    assert!(!bash.contains("shim"), "{bash}");
    let bad = convoy_in(&job, &["completions", "tcsh"], &[], None);
    assert_eq!(bad.status.code(), Some(2));
}

fn script_job(job: &TestJob) {
    job.write(
        "job.toml",
        "name = \"plan\"\n[tasks]\nsource = \"tasks.jsonl\"\nid = \"{{ name }}\"\n[prompt]\nsystem = \"Be brief.\"\nuser = \"Look at {{ name }}.\"\n[llm]\nprovider = \"script\"\n[workspace]\nkind = \"local\"\n[run]\nworkers = 3\n",
    );
    let rows: String = (0..5)
        .map(|i| {
            format!("{{\"name\": \"t{i}\", \"commands\": [\"echo {i}\"], \"answer\": \"{i}\"}}\n")
        })
        .collect();
    job.write("tasks.jsonl", &rows);
}

#[test]
fn dry_run_prints_the_plan_and_creates_nothing() {
    let job = TestJob::new();
    script_job(&job);
    let text = ok(&convoy_in(
        &job,
        &["run", "job.toml", "--dry-run", "--limit", "4"],
        &[],
        None,
    ));
    for expected in [
        "tasks:     4 (first `t0`, last `t3`)",
        "workspace: local",
        "endpoint:  script provider (no network)",
        "tools:     bash, finish",
        "workers:   3",
        "isolation: none (local: every session runs as convoy's own user)",
        "run dir:   runs/plan",
        "first prompt (task `t0`):",
        "    Be brief.",
        "    Look at t0.",
        "dry run: nothing was created",
    ] {
        assert!(text.contains(expected), "{expected:?} missing:\n{text}");
    }
    assert!(!job.path("runs").exists(), "a run directory was created");
    assert_eq!(
        job.tmp_entries(),
        Vec::<String>::new(),
        "a workspace was created"
    );

    // An HTTP endpoint is named, not called (nothing listens there).
    job.write(
        "job.toml",
        &std::fs::read_to_string(job.path("job.toml")).unwrap().replace(
            "provider = \"script\"",
            "base_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\napi_key_env = \"NOT_SET_ANYWHERE\"",
        ),
    );
    let text = ok(&convoy_in(
        &job,
        &["run", "job.toml", "--dry-run"],
        &[],
        None,
    ));
    assert!(
        text.contains("endpoint:  http://127.0.0.1:9/v1/chat/completions, model m, key from $NOT_SET_ANYWHERE"),
        "{text}"
    );
}

#[test]
fn validate_json_is_the_plans_summary() {
    let job = TestJob::new();
    script_job(&job);
    let text = ok(&convoy_in(
        &job,
        &["validate", "job.toml", "--json"],
        &[],
        None,
    ));
    let v: Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
    assert_eq!(v["tasks"], 5);
    assert_eq!(v["first_id"], "t0");
    assert_eq!(v["last_id"], "t4");
    assert_eq!(v["workspace"]["kind"], "local");
    assert_eq!(v["workspace"]["isolation"], "auto");
    assert_eq!(v["workspace"]["session_pids"], 1024);
    assert_eq!(v["workspace"]["session_memory"], "4g");
    assert_eq!(v["endpoint"]["provider"], "script");
    assert_eq!(v["first_prompt"]["user"], "Look at t0.");
    assert_eq!(v["workers"], 3);
}

#[test]
fn a_manifest_on_stdin_resolves_paths_from_the_current_directory() {
    let job = TestJob::new();
    script_job(&job);
    let manifest = std::fs::read_to_string(job.path("job.toml")).unwrap();
    // Text output names stdin; the task source is found from the cwd.
    let text = ok(&convoy_in(&job, &["validate", "-"], &[], Some(&manifest)));
    assert!(text.starts_with("<stdin>: valid; 5 tasks"), "{text}");
    ok(&convoy_in(
        &job,
        &["run", "-", "--out", "out"],
        &[],
        Some(&manifest),
    ));
    assert_eq!(read_jsonl(&job.path("out/results.jsonl")).len(), 5);
    // A relative `run.out` from stdin lands under the cwd too.
    let with_out = manifest.replace("workers = 3\n", "workers = 3\nout = \"from-stdin\"\n");
    ok(&convoy_in(&job, &["run", "-"], &[], Some(&with_out)));
    assert_eq!(read_jsonl(&job.path("from-stdin/results.jsonl")).len(), 5);
    // An error in it says where: stdin, line, key.
    let broken = manifest.replace("workers = 3", "workers = 0");
    let out = convoy_in(&job, &["validate", "-"], &[], Some(&broken));
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("invalid manifest `<stdin>`: line 13, key `run.workers`"),
        "{err}"
    );
}

#[test]
fn convoy_variables_set_the_flags_defaults() {
    let job = TestJob::new();
    script_job(&job);
    let envs = [
        ("CONVOY_OUT", "env-out"),
        ("CONVOY_LIMIT", "2"),
        ("CONVOY_WORKERS", "1"),
    ];
    ok(&convoy_in(&job, &["run", "job.toml"], &envs, None));
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(job.path("env-out/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["total_tasks"], 2);
    assert_eq!(summary["workers"], 1);
    // A flag wins over its variable.
    ok(&convoy_in(
        &job,
        &["run", "job.toml", "--out", "flag-out", "--limit", "3"],
        &envs,
        None,
    ));
    assert_eq!(read_jsonl(&job.path("flag-out/results.jsonl")).len(), 3);
    // A bad value in a variable is exit 2 with the reason.
    let out = convoy_in(&job, &["run", "job.toml"], &[("CONVOY_LIMIT", "0")], None);
    assert_eq!(out.status.code(), Some(2));
    assert_eq!(
        String::from_utf8_lossy(&out.stderr).trim(),
        "error: CONVOY_LIMIT=`0` (the default of --limit): must be at least 1"
    );
    // An empty variable is unset (the manifest's workers, 4, apply).
    ok(&convoy_in(
        &job,
        &["run", "job.toml", "--out", "empty-out"],
        &[("CONVOY_WORKERS", "")],
        None,
    ));
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(job.path("empty-out/summary.json")).unwrap())
            .unwrap();
    assert_ne!(summary["workers"], 0);
    // --help documents them.
    let help = ok(&convoy_in(&job, &["run", "--help"], &[], None));
    for var in [
        "[env: CONVOY_OUT=]",
        "[env: CONVOY_WORKERS=]",
        "[env: CONVOY_LIMIT=]",
    ] {
        assert!(help.contains(var), "{var} missing:\n{help}");
    }
}

/// A script job run to its end into `r`.
fn finished_run() -> TestJob {
    let job = TestJob::new();
    script_job(&job);
    ok(&convoy_in(
        &job,
        &["run", "job.toml", "--out", "r"],
        &[],
        None,
    ));
    job
}

/// `convoy report | head`: the reader leaving early is not an error and
/// never a panic; output to it just stops.
#[test]
fn a_closed_stdout_ends_output_quietly() {
    let job = finished_run();
    for args in [
        &["report", "r", "--json"][..],
        &["export", "r"][..],
        &["run", "job.toml", "--dry-run"][..],
        &["completions", "zsh"][..],
    ] {
        let mut child = Command::new(convoy_bin())
            .args(args)
            .current_dir(job.dir.path())
            .env("TMPDIR", job.path("tmp"))
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        // Close the read end before convoy writes a byte.
        drop(child.stdout.take());
        let out = child.wait_with_output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(0), "{args:?}: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Broken pipe"),
            "{args:?}: {err}"
        );
    }
}

/// An output path that cannot be (no such directory, a file where a
/// directory must be) is the user's to fix: exit 2, naming the directory,
/// never convoy's temporary file.
#[test]
fn an_output_path_that_cannot_be_is_exit_2_naming_it() {
    let job = finished_run();
    job.write("afile", "x");
    for (args, says) in [
        (
            &["export", "r", "--out", "nodir/x.jsonl"][..],
            "no directory `nodir`",
        ),
        (
            &["export", "r", "--out", "afile/x.jsonl"][..],
            "`afile` is not a directory",
        ),
        (
            &["report", "r", "--chart=nodir/m.svg"][..],
            "no directory `nodir`",
        ),
        (&["init", "afile"][..], "`afile` is not a directory"),
    ] {
        let out = convoy_in(&job, args, &[], None);
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains(".tmp"), "{args:?}: {err}");
    }
}
