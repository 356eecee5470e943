//! Task environments end to end, through the real binary: each rule of
//! issue 13 on a job the script provider plays (the retry case excepted,
//! which needs a model that fails a turn once: the fake server). Local
//! workspace for speed, one Docker job for the `user` isolation. What a
//! test reads is what a user would: `results.jsonl`, the trajectories,
//! the workdirs left on disk, `convoy export` and `convoy report --json`.

mod support;

use std::path::Path;

use serde_json::{json, Value};
use support::fake_llm::FakeLlm;
use support::{observations, script_job, stderr, TestJob};

const LOCAL: &str = "kind = \"local\"\nworkdir = \"work\"";

/// A local job of these rows and these manifest tables; runs it and
/// returns its results by id (the exit status is the caller's to check).
async fn run_local(job: &TestJob, rows: &[Value], tables: &str) -> (Option<i32>, Vec<Value>) {
    job.tasks(rows);
    job.manifest(&script_job(LOCAL, tables));
    let out = job.run(&[]).await;
    let mut results = job.results();
    results.sort_by(|a, b| a["id"].as_str().cmp(&b["id"].as_str()));
    assert_eq!(results.len(), rows.len(), "{}", stderr(&out));
    (out.status.code(), results)
}

fn row(id: &str, commands: &[&str]) -> Value {
    json!({"id": id, "commands": commands, "answer": "done"})
}

/// A row with one more field, for the templates to use.
fn row_with(id: &str, commands: &[&str], field: &str, value: &str) -> Value {
    let mut r = row(id, commands);
    r[field] = value.into();
    r
}

fn by_id<'a>(results: &'a [Value], id: &str) -> &'a Value {
    results
        .iter()
        .find(|r| r["id"] == id)
        .unwrap_or_else(|| panic!("no result for {id}: {results:?}"))
}

/// The assistant messages of a trajectory (the model's turns).
fn model_turns(traj: &Value) -> usize {
    traj["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|m| m["role"] == "assistant")
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_setup_ends_its_task_before_the_model_and_the_others_go_on() {
    let job = TestJob::new();
    let broken = row_with(
        "broken",
        &["ls -A"],
        "step",
        "grep -q missing-marker notes.txt",
    );
    let fine = row_with(
        "fine",
        &["cat notes.txt"],
        "step",
        "echo prepared >> notes.txt",
    );
    let (code, results) = run_local(
        &job,
        &[broken, fine],
        "[environment]\nworkdir = \"t/{{ id }}\"\nfiles = { \"notes.txt\" = \"notes\\n\" }\n\
         setup = [\"true\", \"{{ step }}\"]\n",
    )
    .await;
    assert_eq!(code, Some(1), "a task failed");

    let r = by_id(&results, "broken");
    assert_eq!(r["status"], "setup_failed", "{r}");
    let error = r["error"].as_str().unwrap();
    assert!(
        error.contains("grep -q missing-marker notes.txt"),
        "names the command: {error}"
    );
    assert_eq!(r["steps"], 0, "{r}");
    assert_eq!(r["verify"]["status"], "skipped", "{r}");
    let traj = job.trajectory("broken");
    assert_eq!(model_turns(&traj), 0, "the model was never called: {traj}");

    let r = by_id(&results, "fine");
    assert_eq!(r["status"], "ok", "{r}");
    assert!(r["phases"]["setup_s"].is_number(), "{r}");
    assert_eq!(
        observations(&job.trajectory("fine")),
        ["notes\nprepared\n"],
        "setup ran in the workdir, before the model"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_model_cannot_list_the_hidden_check_file_but_the_check_sees_it() {
    let job = TestJob::new();
    let (code, results) = run_local(
        &job,
        &[row("t1", &["ls -A", "ls -A .. ; echo listed"])],
        "[environment]\nworkdir = \"t/{{ id }}\"\nfiles = { \"task.md\" = \"fix it\" }\n\
         [verify]\nfiles = { \"secret_check.sh\" = \"echo checking\" }\n\
         command = \"ls -A; bash secret_check.sh\"\n",
    )
    .await;
    assert_eq!(code, Some(0));
    let seen = observations(&job.trajectory("t1"));
    assert_eq!(seen.len(), 2, "{seen:?}");
    assert!(seen[0].contains("task.md"), "{seen:?}");
    for s in &seen {
        assert!(!s.contains("secret_check"), "the model saw it: {s}");
    }
    let r = by_id(&results, "t1");
    let output = r["verify"]["output"].as_str().unwrap();
    assert!(output.contains("secret_check.sh"), "{r}");
    assert!(output.ends_with("checking\n"), "{r}");
    assert_eq!(r["reward"], 1.0, "{r}");
    let traj = job.trajectory("t1").to_string();
    assert!(
        !traj.contains("checking"),
        "verify output is never in the trajectory"
    );
}

/// Rows that fix `bug.sh` or not; the check runs it. With `keep =
/// "failed"` only the workdirs of tasks below a reward of 1 or not `ok`
/// (one runs out of steps, so is not verified) stay.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_code_rewards_one_and_zero_and_keep_failed_keeps_only_the_failed_workdirs() {
    let job = TestJob::new();
    let rows = [
        row("fixed", &["echo 'echo 4' > bug.sh"]),
        row("unfixed", &["cat bug.sh"]),
        row("gave-up", &[]),
        row("too-long", &["true", "true", "true"]),
    ];
    let (code, results) = run_local(
        &job,
        &rows,
        "[environment]\nworkdir = \"t/{{ id }}\"\nfiles = { \"bug.sh\" = \"echo 5\" }\n\
         keep = \"failed\"\n\
         [verify]\ncommand = \"test \\\"$(bash bug.sh)\\\" = 4\"\n[agent]\nmax_steps = 2\n",
    )
    .await;
    assert_eq!(
        code,
        Some(1),
        "too-long failed; rewards do not change a status"
    );
    let got: Vec<(&str, &Value, &Value)> = results
        .iter()
        .map(|r| {
            (
                r["id"].as_str().unwrap(),
                &r["reward"],
                &r["verify"]["status"],
            )
        })
        .collect();
    assert_eq!(
        got,
        [
            ("fixed", &json!(1.0), &json!("passed")),
            ("gave-up", &json!(0.0), &json!("failed")),
            ("too-long", &Value::Null, &json!("skipped")),
            ("unfixed", &json!(0.0), &json!("failed")),
        ]
    );
    assert_eq!(by_id(&results, "unfixed")["verify"]["exit_code"], 1);
    assert_eq!(by_id(&results, "too-long")["status"], "max_steps");
    for r in results.iter().filter(|r| r["id"] != "too-long") {
        assert_eq!(r["status"], "ok", "{r}");
        assert!(r["phases"]["verify_s"].is_number(), "{r}");
    }
    assert!(!job.path("work/t/fixed").exists(), "passed: removed");
    for kept in ["unfixed", "gave-up", "too-long"] {
        let dir = job.path(&format!("work/t/{kept}"));
        assert_eq!(
            std::fs::read_to_string(dir.join("bug.sh")).unwrap(),
            "echo 5",
            "{kept}: kept as the agent left it"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn last_line_rewards_are_the_number_the_check_prints_last() {
    let job = TestJob::new();
    let rows = [
        row_with("quarter", &[], "check", "echo scoring; echo 0.25"),
        row_with("full", &[], "check", "echo 1; echo; exit 3"),
        row_with("words", &[], "check", "echo not a number"),
    ];
    let (code, results) = run_local(
        &job,
        &rows,
        "[environment]\nworkdir = \"t/{{ id }}\"\n\
         [verify]\ncommand = \"{{ check }}\"\nreward = \"last_line\"\n",
    )
    .await;
    assert_eq!(code, Some(0));
    let r = by_id(&results, "quarter");
    assert_eq!(
        (&r["reward"], &r["verify"]["status"]),
        (&json!(0.25), &json!("failed"))
    );
    let r = by_id(&results, "full");
    assert_eq!(
        (
            &r["reward"],
            &r["verify"]["status"],
            &r["verify"]["exit_code"]
        ),
        (&json!(1.0), &json!("passed"), &json!(3)),
        "the last non-empty line, whatever the exit status"
    );
    let r = by_id(&results, "words");
    assert_eq!(
        (&r["reward"], &r["verify"]["status"]),
        (&Value::Null, &json!("error"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_verify_that_times_out_gives_no_reward_and_leaves_the_status() {
    let job = TestJob::new();
    let (code, results) = run_local(
        &job,
        &[row("slow", &["echo hi"])],
        "[environment]\nworkdir = \"t/{{ id }}\"\n\
         [verify]\ncommand = \"echo started; sleep 3607\"\ntimeout = \"1s\"\n",
    )
    .await;
    assert_eq!(code, Some(0), "the task itself was ok");
    let r = by_id(&results, "slow");
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["reward"], Value::Null, "{r}");
    assert_eq!(r["verify"]["status"], "timeout", "{r}");
    assert!(
        support::processes_with("sleep 3607").is_empty(),
        "the check was stopped"
    );
}

/// The model fails its third turn once (HTTP 503, no LLM retries): the
/// attempt fails after writing a file and another runs. Its first `ls -A`
/// must not show that file.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_attempt_starts_in_a_clean_workdir() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    let turns = json!([
        {"content": null, "calls": [["bash", {"command": "ls -A"}]]},
        {"content": null, "calls": [["bash", {"command": "echo half-done > left.txt; ls -A"}]]},
        {"content": null, "calls": [["bash", {"command": "ls -A"}]],
         "faults": [{"status": 503, "message": "overloaded once"}]},
    ]);
    job.tasks(&[json!({"id": "t1", "script": support::script(turns)})]);
    job.manifest(&support::http_manifest(
        &llm,
        "max_retries = 0",
        "[environment]\nworkdir = \"t/{{ id }}\"\nfiles = { \"bug.sh\" = \"echo 5\" }\n\
         [run]\nmax_attempts = 2\n",
    ));
    let out = job.run(&[("CONVOY_TEST_KEY", support::KEY)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = &job.results()[0];
    assert_eq!(
        (&r["status"], &r["attempt"]),
        (&json!("ok"), &json!(2)),
        "{r}"
    );
    let seen = observations(&job.trajectory("t1"));
    let fresh = ".home\n.tmp\nbug.sh\n";
    assert_eq!(seen[0], fresh, "attempt 2 found attempt 1's file: {seen:?}");
    assert_eq!(seen[1], ".home\n.tmp\nbug.sh\nleft.txt\n");
}

/// Three samples per row: the check passes for samples 1 and 2 of row
/// `a` (the workdir names the sample) and never for row `b`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_by_reward_and_best_of_group_and_pass_at_k_on_a_real_run() {
    let job = TestJob::new();
    job.tasks(&[
        row_with(
            "a",
            &["pwd"],
            "check",
            "case \"$PWD\" in *'#3') exit 1;; esac",
        ),
        row_with("b", &["pwd"], "check", "exit 1"),
    ]);
    job.manifest(&script_job(
        LOCAL,
        "[environment]\nworkdir = \"t/{{ id }}\"\n[verify]\ncommand = \"{{ check }}\"\n",
    ));
    // `repeat` lives in [tasks], which the preamble opened.
    let manifest = std::fs::read_to_string(job.path("job.toml")).unwrap();
    job.write(
        "job.toml",
        &manifest.replace("[prompt]", "repeat = 3\n[prompt]"),
    );
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = job.results();
    for r in &results {
        let id = r["id"].as_str().unwrap();
        let (group, sample) = id.split_once('#').unwrap();
        assert_eq!(r["group"], group, "{r}");
        assert_eq!(r["sample"].to_string(), sample, "{r}");
    }

    assert_eq!(exported(&job, &["--min-reward", "1"]).await, ["a#1", "a#2"]);
    assert_eq!(exported(&job, &["--best-of-group"]).await, ["a#1", "b#1"]);

    let out = job.convoy(&["report", "out", "--json"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let report: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rewards = &report["rewards"];
    assert_eq!(rewards["verified"], 6, "{report}");
    // Group a: n=3, c=2; group b: c=0. pass@1 = (2/3 + 0)/2; pass@2 =
    // (1 - C(1,2)/C(3,2) + 0)/2 = 1/2; pass@3 = 1/2.
    let pass: Vec<f64> = rewards["pass_at_k"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["value"].as_f64().unwrap())
        .collect();
    assert_eq!(pass.len(), 3, "{rewards}");
    for (got, want) in pass.iter().zip([1.0 / 3.0, 0.5, 0.5]) {
        assert!((got - want).abs() < 1e-12, "{pass:?}");
    }
}

/// The tasks of the conversations `convoy export out ARGS` writes, sorted:
/// an exported line carries no id, but its first observation is the
/// output of `pwd`, the task's workdir, named after its id.
async fn exported(job: &TestJob, args: &[&str]) -> Vec<String> {
    let out = job.convoy(&[&["export", "out"], args].concat(), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    let mut ids: Vec<String> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| {
            let line: Value = serde_json::from_str(l).unwrap();
            let pwd = observations(&line).remove(0);
            let name = Path::new(pwd.trim_end()).file_name().unwrap();
            name.to_string_lossy().into_owned()
        })
        .collect();
    ids.sort();
    ids
}

/// In the container, with a uid per session (the default isolation): the
/// agent's session owns its workdir, setup ran as that same user, and the
/// check is written only afterwards and runs as that user too.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn docker_sessions_own_their_workdir_and_the_check_comes_after() {
    let job = TestJob::new();
    job.tasks(&[row(
        "d1",
        &[
            "[ \"$(stat -c %u .)\" = \"$(id -u)\" ] && [ \"$(id -u)\" != 0 ] && echo mine; ls -A",
            "stat -c %a bug.sh; bash bug.sh",
        ],
    )]);
    job.manifest(&support::hostile::docker_job(
        "",
        "[environment]\nworkdir = \"/tasks/{{ id }}\"\nfiles = { \"bug.sh\" = \"echo 5\" }\n\
         setup = [\"chmod 600 bug.sh\"]\n\
         [verify]\nfiles = { \"check.sh\" = \"[ \\\"$(stat -c %U check.sh)\\\" = \\\"$(id -un)\\\" ] && ls -A\" }\n\
         command = \"bash check.sh\"\n",
    ));
    let out = support::hostile::run_bounded(&job, std::time::Duration::from_secs(180)).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        observations(&job.trajectory("d1")),
        ["mine\n.home\n.tmp\nbug.sh\n", "600\n5\n"],
        "setup ran as the session's user: its 0600 file is the agent's to read"
    );
    let r = &job.results()[0];
    assert_eq!(r["reward"], 1.0, "{r}");
    assert_eq!(
        r["verify"]["output"], ".home\n.tmp\nbug.sh\ncheck.sh\n",
        "{r}"
    );
    // Workdirs on the container's own filesystem: said when that is slow.
    let driver = std::process::Command::new("docker")
        .args(["info", "--format", "{{.Driver}}"])
        .output()
        .expect("docker info runs");
    let driver = String::from_utf8_lossy(&driver.stdout);
    assert_eq!(
        stderr(&out).contains("is on the container's own filesystem"),
        driver.trim() == "fuse-overlayfs",
        "storage driver {driver}: {}",
        stderr(&out)
    );
}

/// The worked example in `jobs/fix-the-bug`, as a user runs it: offline,
/// on the local workspace; the rows that fix the bug right pass.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fix_the_bug_example_job_passes_the_rows_that_fix_it() {
    let job = TestJob::new();
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/fix-the-bug/job.toml");
    let out = job
        .convoy(&["run", manifest.to_str().unwrap(), "--out", "out"], &[])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let mut rewards: Vec<(String, Value)> = job
        .results()
        .iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r["reward"].clone()))
        .collect();
    rewards.sort_by(|a, b| a.0.cmp(&b.0));
    let want: Vec<(String, Value)> = [
        ("average", 1.0),
        ("average-wrong", 0.0),
        ("count-words", 1.0),
        ("count-words-wrong", 0.0),
        ("max-of-list", 1.0),
        ("untouched", 0.0),
    ]
    .into_iter()
    .map(|(id, r)| (id.to_string(), json!(r)))
    .collect();
    assert_eq!(rewards, want);
    let out = job
        .convoy(&["export", "out", "--min-reward", "1"], &[])
        .await;
    assert!(
        stderr(&out).contains("exported 3 conversations"),
        "{}",
        stderr(&out)
    );
}
