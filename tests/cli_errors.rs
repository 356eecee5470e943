//! Bad input through the real binary: every message says where (file,
//! line, key, row) and what, in the manifest's words, with exit code 2.

mod support;

use std::process::{Command, Output, Stdio};

use support::{convoy_bin, TestJob};

/// Runs `convoy ARGS` in the job's directory with no RUST_LOG (so the
/// flags decide the log level) and returns its output.
fn convoy(job: &TestJob, args: &[&str]) -> Output {
    Command::new(convoy_bin())
        .args(args)
        .current_dir(job.dir.path())
        .env("TMPDIR", job.path("tmp"))
        .env_remove("RUST_LOG")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A manifest for an endpoint that is never called (validate only).
const OPENAI: &str = "[prompt]\nuser = \"{{ path }}\"\n[llm]\nbase_url = \"http://127.0.0.1:9/v1\"\nmodel = \"m\"\n[workspace]\nkind = \"local\"\n";

fn job_with(manifest: &str, rows: &str) -> TestJob {
    let job = TestJob::new();
    job.write("job.toml", manifest);
    job.write("tasks.jsonl", rows);
    job
}

fn invalid(job: &TestJob, args: &[&str]) -> String {
    let out = convoy(job, args);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    err
}

#[test]
fn an_undefined_variable_is_named_with_the_rows_keys() {
    let manifest = format!(
        "name = \"t\"\n[tasks]\nsource = \"tasks.jsonl\"\n{}",
        OPENAI.replace("{{ path }}", "{{ fiel }}")
    );
    let job = job_with(&manifest, "{\"file\": \"a.py\", \"path\": \"src/a.py\"}\n");
    let err = invalid(&job, &["validate", "job.toml"]);
    assert_eq!(
        err.trim(),
        "error: tasks.jsonl:1: prompt.user: undefined variable `fiel` (row has: file, path)"
    );

    let manifest = format!(
        "name = \"t\"\n[tasks]\nsource = \"tasks.jsonl\"\nid = \"{{{{ name }}}}\"\n{OPENAI}"
    );
    let job = job_with(
        &manifest,
        "{\"path\": \"a\"}\n{\"file\": \"b\", \"path\": \"c\"}\n",
    );
    let err = invalid(&job, &["validate", "job.toml"]);
    assert_eq!(
        err.trim(),
        "error: tasks.jsonl:1: tasks.id: undefined variable `name` (row has: path)"
    );
}

#[test]
fn a_row_the_script_provider_cannot_play_is_named_before_anything_runs() {
    let manifest = "name = \"t\"\n[tasks]\nsource = \"tasks.jsonl\"\n[prompt]\nuser = \"go\"\n[llm]\nprovider = \"script\"\n[workspace]\nkind = \"local\"\n";
    let job = job_with(
        manifest,
        "{\"commands\": [\"ls\"], \"answer\": \"a\"}\n{\"commands\": [\"ls\"]}\n",
    );
    for args in [&["validate", "job.toml"][..], &["run", "job.toml"]] {
        let err = invalid(&job, args);
        assert_eq!(
            err.trim(),
            "error: tasks.jsonl:2: the script provider needs `answer` (a string) in every row",
            "{args:?}"
        );
    }
    assert!(
        !job.dir.path().join("runs").exists(),
        "run created its directory"
    );

    let job = job_with(manifest, "{\"commands\": \"ls\", \"answer\": \"a\"}\n");
    let err = invalid(&job, &["validate", "job.toml"]);
    assert_eq!(
        err.trim(),
        "error: tasks.jsonl:1: the script provider needs `commands` to be a list of strings"
    );
}

#[test]
fn a_toml_syntax_error_keeps_the_line_the_caret_and_the_key() {
    let manifest = format!("name = \"t\"\n[tasks]\nsource = \"tasks.jsonl\n{OPENAI}");
    let job = job_with(&manifest, "{\"path\": \"a\"}\n");
    let err = invalid(&job, &["validate", "job.toml"]);
    assert!(
        err.starts_with("error: invalid manifest `job.toml`: line 3, key `tasks.source`: "),
        "{err}"
    );
    assert!(err.contains("  3 | source = \"tasks.jsonl\n"), "{err}");
    let caret = err
        .lines()
        .find(|l| l.trim_end().ends_with('^'))
        .unwrap_or_else(|| panic!("no caret: {err}"));
    assert!(caret.trim_start().starts_with('|'), "{err}");

    // A broken table header names the table.
    let job = job_with(
        &format!("name = \"t\"\n[tasks\nsource = \"tasks.jsonl\"\n{OPENAI}"),
        "{}\n",
    );
    let err = invalid(&job, &["validate", "job.toml"]);
    assert!(err.contains("line 2, key `tasks`: "), "{err}");
    assert!(err.contains("  2 | [tasks\n"), "{err}");
}

#[test]
fn a_missing_task_source_names_the_manifest_line_and_key_and_the_os_error_once() {
    let manifest = format!("name = \"t\"\n[tasks]\nsource = \"nope.jsonl\"\n{OPENAI}");
    let job = job_with(&manifest, "");
    let err = invalid(&job, &["validate", "job.toml"]);
    assert_eq!(
        err.trim(),
        "error: invalid manifest `job.toml`: line 3, key `tasks.source`: cannot read `nope.jsonl`: No such file or directory (os error 2)"
    );
    // A missing manifest: the OS error once too.
    let err = invalid(&job, &["validate", "other.toml"]);
    assert_eq!(err.matches("No such file or directory").count(), 1, "{err}");
}

#[test]
fn messages_use_the_manifests_words_not_rusts() {
    let base = format!("name = \"t\"\n[tasks]\nsource = \"tasks.jsonl\"\n{OPENAI}");
    let job = job_with(
        &format!("{base}[run]\nworkers = \"many\"\n"),
        "{\"path\": \"a\"}\n",
    );
    let err = invalid(&job, &["validate", "job.toml"]);
    assert!(
        err.contains(
            "line 12, key `run.workers`: must be a whole number >= 1, found string \"many\""
        ),
        "{err}"
    );
    for (extra, key) in [
        ("[run]\nworkers = -4\n", "run.workers"),
        ("[agent]\nmax_steps = 2.5\n", "agent.max_steps"),
        ("[workspace]\nnofile = \"lots\"\n", "workspace.nofile"),
    ] {
        let manifest = format!("{base}{extra}").replace(
            "[workspace]\nkind = \"local\"\n[workspace]",
            "[workspace]\nkind = \"local\"",
        );
        job.write("job.toml", &manifest);
        let err = invalid(&job, &["validate", "job.toml"]);
        assert!(
            err.contains(&format!("key `{key}`: must be a whole number >= ")),
            "{err}"
        );
        for rust in ["u32", "u64", "i64", "f64"] {
            assert!(!err.contains(rust), "{rust} in: {err}");
        }
    }
    // A missing key is named with its table.
    job.write(
        "job.toml",
        &base.replace("source = \"tasks.jsonl\"\n", "id = \"{{ path }}\"\n"),
    );
    let err = invalid(&job, &["validate", "job.toml"]);
    assert!(
        err.contains("line 2, key `tasks.source`: is required"),
        "{err}"
    );

    // The workspace kind as the manifest spells it.
    job.write("job.toml", &base);
    let out = convoy(&job, &["validate", "job.toml"]);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("workspace local"), "{text}");
}

#[test]
fn bad_isolation_and_session_limits_are_exit_2_naming_the_key() {
    let base = format!("name = \"t\"\n[tasks]\nsource = \"tasks.jsonl\"\n{OPENAI}");
    let job = job_with(&base, "{\"path\": \"a\"}\n");
    let docker =
        |keys: &str| base.replace("kind = \"local\"\n", &format!("kind = \"docker\"\n{keys}"));
    for (manifest, key, says) in [
        (
            docker("isolation = \"root\"\n"),
            "workspace.isolation",
            "must be \"auto\", \"user\" or \"none\", found \"root\"",
        ),
        (
            format!("{base}isolation = \"user\"\n"),
            "workspace.isolation",
            "\"user\" needs workspace.kind = \"docker\"",
        ),
        (
            docker("channel = \"exec\"\nisolation = \"user\"\n"),
            "workspace.isolation",
            "\"user\" needs workspace.channel = \"helper\"",
        ),
        (
            format!("{base}session_pids = 8\n"),
            "workspace.session_pids",
            "must be at least 16",
        ),
        (
            format!("{base}session_pids = \"many\"\n"),
            "workspace.session_pids",
            "must be a whole number >= 16, found string \"many\"",
        ),
        (
            format!("{base}session_memory = \"4 gigs\"\n"),
            "workspace.session_memory",
            "is not a size like \"512m\" or \"4g\"",
        ),
        (
            format!("{base}session_memory = \"1m\"\n"),
            "workspace.session_memory",
            "must be at least 64m",
        ),
    ] {
        job.write("job.toml", &manifest);
        let err = invalid(&job, &["validate", "job.toml"]);
        let line = manifest.lines().count();
        let expected = format!("error: invalid manifest `job.toml`: line {line}, key `{key}`: ");
        assert!(err.starts_with(&expected), "{expected:?} not in: {err}");
        assert!(err.contains(says), "{says:?} not in: {err}");
    }
}

#[test]
fn bad_flags_are_exit_2_with_the_reason() {
    let job = TestJob::new();
    let err = invalid(&job, &["run", "job.toml", "--workers", "99999999999"]);
    assert!(
        err.contains("--workers <N>': 99999999999 is too large (at most 4294967295)"),
        "{err}"
    );
    let err = invalid(&job, &["run", "job.toml", "--workers", "0"]);
    assert!(err.contains("--workers <N>': must be at least 1"), "{err}");
    let err = invalid(&job, &["run", "job.toml", "--limit", "0"]);
    assert!(err.contains("--limit <N>': must be at least 1"), "{err}");
    let err = invalid(&job, &["run", "job.toml", "--limit", "ten"]);
    assert!(err.contains("`ten` is not a whole number >= 1"), "{err}");
    let err = invalid(&job, &["--log", "loud", "validate", "job.toml"]);
    assert!(
        err.contains("[possible values: error, warn, info, debug, trace]"),
        "{err}"
    );
    let err = invalid(&job, &["-q", "-v", "validate", "job.toml"]);
    assert!(err.contains("cannot be used with"), "{err}");
    let err = invalid(&job, &["--color", "sometimes", "validate", "job.toml"]);
    assert!(
        err.contains("[possible values: auto, always, never]"),
        "{err}"
    );
}

#[test]
fn quiet_and_verbose_move_the_log_level() {
    let job = TestJob::new();
    job.write(
        "job.toml",
        "name = \"t\"\n[tasks]\nsource = \"tasks.jsonl\"\n[prompt]\nuser = \"go\"\n[llm]\nprovider = \"script\"\n[workspace]\nkind = \"local\"\nworkdir = \"work\"\n",
    );
    job.write(
        "tasks.jsonl",
        "{\"commands\": [\"true\"], \"answer\": \"ok\"}\n",
    );
    let run = |flags: &[&str], out: &str| {
        let mut args = flags.to_vec();
        args.extend(["run", "job.toml", "--out", out]);
        let o = convoy(&job, &args);
        assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
        stderr(&o)
    };
    let default = run(&[], "o1");
    assert!(
        default.contains(" INFO ") && default.contains("running 1 tasks"),
        "{default}"
    );
    assert!(!default.contains("DEBUG"), "{default}");
    let quiet = run(&["-q"], "o2");
    assert!(!quiet.contains(" INFO "), "{quiet}");
    let verbose = run(&["-v"], "o3");
    assert!(verbose.contains("DEBUG"), "{verbose}");
    // -v from warn is info again.
    let back = run(&["--log", "warn", "-v"], "o4");
    assert!(back.contains(" INFO ") && !back.contains("DEBUG"), "{back}");
}
