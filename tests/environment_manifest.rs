//! `[environment]` and `[verify]` as input, through the real binary: bad
//! templates and clashing workdirs are exit 2 naming the key, the row and
//! the tasks before anything runs; `validate` shows the first task's
//! rendered environment; a changed table refuses a resume by name.

mod support;

use serde_json::{json, Value};
use support::{script_job, stderr, TestJob};

/// A local scripted job of `rows` with `tables` after the workspace.
fn job(tables: &str, rows: &[Value]) -> TestJob {
    let job = TestJob::new();
    job.tasks(rows);
    job.manifest(&script_job("kind = \"local\"\nworkdir = \"work\"", tables));
    job
}

fn row(id: &str) -> Value {
    json!({"id": id, "commands": ["true"], "answer": "done", "bug": format!("bug {id}")})
}

#[tokio::test]
async fn an_undefined_variable_in_setup_is_exit_2_naming_the_key_and_the_row() {
    let tables =
        "[environment]\nworkdir = \"t/{{ id }}\"\nsetup = [\"git init -q\", \"{{ setup_cmd }}\"]\n";
    let job = job(tables, &[row("a"), row("b")]);
    for args in [
        &["validate", "job.toml"][..],
        &["run", "job.toml", "--out", "out"],
    ] {
        let out = job.convoy(args, &[]).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(
            err.contains("tasks.jsonl:1: environment.setup[1]: undefined variable `setup_cmd` (row has: id, commands, answer, bug)"),
            "{args:?}: {err}"
        );
    }
    assert!(!job.path("out").exists(), "run created its directory");
}

#[tokio::test]
async fn two_tasks_with_one_workdir_are_exit_2_naming_both_ids() {
    let tables = "[environment]\nworkdir = \"t/{{ answer }}\"\n";
    let job = job(tables, &[row("a"), row("b")]);
    let out = job.convoy(&["validate", "job.toml"], &[]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("tasks.jsonl:2: environment.workdir: tasks `a` (line 1) and `b` render the same workdir `"),
        "{err}"
    );
    // A file key that climbs out of the workdir is refused at load.
    let job = self::job(
        "[environment]\nworkdir = \"t/{{ id }}\"\nfiles = { \"a/../../x\" = \"\" }\n",
        &[row("a")],
    );
    let out = job.convoy(&["validate", "job.toml"], &[]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("key `environment.files`: `a/../../x` climbs out of the workdir"),
        "{err}"
    );
}

#[tokio::test]
async fn validate_shows_the_first_tasks_rendered_environment() {
    let tables = "[environment]\nworkdir = \"/abs/{{ id }}\"\nfiles = { \"task.md\" = \"{{ bug }}\" }\nsetup = [\"git init -q\"]\n[verify]\nfiles = { \"check.sh\" = \"test -f done\" }\ncommand = \"bash check.sh\"\n";
    let job = job(tables, &[row("a"), row("b")]);
    let out = job.convoy(&["validate", "job.toml"], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for line in [
        "environment of the first task (`a`):",
        "  workdir:   /abs/a",
        "  files:     task.md (5 bytes)",
        "  setup:     git init -q",
        "  command:   bash check.sh",
        "  files:     check.sh (12 bytes) (hidden from the model)",
    ] {
        assert!(text.lines().any(|l| l == line), "no {line:?} in:\n{text}");
    }
    let out = job.convoy(&["validate", "job.toml", "--json"], &[]).await;
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["first_environment"]["workdir"], "/abs/a");
    assert_eq!(
        v["first_environment"]["files"],
        json!([{"path": "task.md", "bytes": 5}])
    );
    assert_eq!(v["first_verify"]["command"], "bash check.sh");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_environment_refuses_a_resume_by_name() {
    let tables = "[environment]\nworkdir = \"t/{{ id }}\"\nsetup = [\"true\"]\nkeep = \"never\"\n";
    let job = job(tables, &[row("a"), row("b")]);
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let manifest = std::fs::read_to_string(job.path("job.toml")).unwrap();
    // keep may change on resume; the setup may not.
    job.write("job.toml", &manifest.replace("\"never\"", "\"always\""));
    assert_eq!(job.run(&[]).await.status.code(), Some(0));
    job.write(
        "job.toml",
        &manifest.replace("[\"true\"]", "[\"true\", \"true\"]"),
    );
    let out = job.run(&[]).await;
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("part changed since it started (environment)"),
        "{err}"
    );
}
