//! Rewards through the real binary, over a run directory written by hand
//! the way the engine writes one for a job with `[verify]` and
//! `tasks.repeat`: `convoy export --min-reward` and `--best-of-group` pick
//! the right conversations, bad values are exit 2, and `convoy report`
//! gives the reward figures, pass@k and phase times (and a run directory
//! from before rewards still reads, with none of them).

mod support;

use serde_json::{json, Value};
use support::{stderr, TestJob};

/// A results line: `reward` None means not verified (`verify.status` as
/// given); `sample` k puts the task in group `row` as `row#k`.
fn result(
    row: &str,
    sample: Option<u32>,
    status: &str,
    reward: Option<f64>,
    verify: &str,
) -> Value {
    let mut r = json!({
        "id": id(row, sample), "status": status, "final": "done", "steps": 2,
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        "attempt": 1, "started_at": "2024-05-01T10:00:00.000Z",
        "finished_at": "2024-05-01T10:00:03.000Z", "duration_s": 3.0, "error": null,
        "reward": reward,
        "verify": {"status": verify, "exit_code": reward.map(|r| i32::from(r < 1.0)),
                   "output": "", "duration_s": 1.0},
        "phases": {"setup_s": 0.5, "agent_s": 1.5, "verify_s": 1.0}
    });
    if let Some(k) = sample {
        r["group"] = row.into();
        r["sample"] = k.into();
    }
    r
}

fn id(row: &str, sample: Option<u32>) -> String {
    sample.map_or_else(|| row.to_string(), |k| format!("{row}#{k}"))
}

/// The trajectory of a task: its id is the user message, so an exported
/// line says which task it came from.
fn trajectory(id: &str) -> Value {
    json!({"id": id, "attempt": 1, "status": "ok", "tools": [], "messages": [
        {"role": "user", "content": id},
        {"role": "assistant", "content": "done"}
    ]})
}

fn jsonl(values: &[Value]) -> String {
    values.iter().map(|v| format!("{v}\n")).collect()
}

/// Row `p` (3 samples: rewards 0, 1, 1 with the middle one timed out),
/// row `q` (2 samples: 0.25 and a check that errored), row `r` (2 samples
/// that failed their check), and `solo`, verified, without a group.
fn rewarded_run(job: &TestJob) {
    let results = [
        result("p", Some(1), "ok", Some(0.0), "failed"),
        result("p", Some(2), "timeout", Some(1.0), "passed"),
        result("p", Some(3), "ok", Some(1.0), "passed"),
        result("q", Some(1), "ok", Some(0.25), "passed"),
        result("q", Some(2), "ok", None, "error"),
        result("r", Some(1), "ok", Some(0.0), "failed"),
        result("r", Some(2), "ok", Some(0.0), "failed"),
        result("solo", None, "ok", Some(1.0), "passed"),
    ];
    std::fs::create_dir_all(job.path("out")).unwrap();
    job.write("out/results.jsonl", &jsonl(&results));
    let ids: Vec<Value> = results
        .iter()
        .map(|r| trajectory(r["id"].as_str().unwrap()))
        .collect();
    job.write("out/trajectories.jsonl", &jsonl(&ids));
}

/// `convoy export out ARGS` on stdout: the ids of the exported lines, and
/// the stats line.
async fn export(job: &TestJob, args: &[&str]) -> (Vec<String>, String) {
    let out = job.convoy(&[&["export", "out"], args].concat(), &[]).await;
    assert_eq!(out.status.code(), Some(0), "{args:?}: {}", stderr(&out));
    let ids = String::from_utf8(out.stdout.clone())
        .unwrap()
        .lines()
        .map(|l| {
            let line: Value = serde_json::from_str(l).unwrap();
            line["messages"][0]["content"].as_str().unwrap().to_string()
        })
        .collect();
    (ids, stderr(&out))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_selects_by_reward_and_best_of_group() {
    let job = TestJob::new();
    rewarded_run(&job);

    let (ids, said) = export(&job, &["--min-reward", "1"]).await;
    assert_eq!(ids, ["p#2", "p#3", "solo"], "whatever the status");
    assert!(
        said.contains("exported 3 conversations (0 skipped by status, 0 without a trajectory, 5 below the minimum reward or not verified)"),
        "{said}"
    );
    let (ids, _) = export(&job, &["--min-reward", "1", "--only", "ok"]).await;
    assert_eq!(ids, ["p#3", "solo"]);
    let (ids, _) = export(&job, &["--min-reward", "0.2"]).await;
    assert_eq!(ids, ["p#2", "p#3", "q#1", "solo"], "q#2 has no reward");

    // One per group: p's tie of 1.0 goes to the lower sample, q's reward
    // beats q's missing one, r's tie of 0.0 to r#1; solo is its own group.
    let (ids, said) = export(&job, &["--best-of-group"]).await;
    assert_eq!(ids, ["p#2", "q#1", "r#1", "solo"]);
    assert!(
        said.contains("4 not the best sample of their group"),
        "{said}"
    );
    let (ids, _) = export(&job, &["--best-of-group", "--only", "ok"]).await;
    assert_eq!(ids, ["p#3", "q#1", "r#1", "solo"]);
    let (ids, _) = export(&job, &["--best-of-group", "--min-reward", "1"]).await;
    assert_eq!(ids, ["p#2", "solo"]);

    for (bad, says) in [
        ("nan", "expected a number such as 1 or 0.5, not `nan`"),
        ("high", "expected a number such as 1 or 0.5, not `high`"),
    ] {
        let out = job
            .convoy(&["export", "out", "--min-reward", bad], &[])
            .await;
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        assert!(stderr(&out).contains(says), "{}", stderr(&out));
    }
    // A reward of the wrong type names its line.
    let mut results = std::fs::read_to_string(job.path("out/results.jsonl")).unwrap();
    results.push_str(&format!(
        "{}\n",
        json!({"id": "odd", "status": "ok", "reward": "high"})
    ));
    job.write("out/results.jsonl", &results);
    let out = job.convoy(&["export", "out"], &[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("results.jsonl:9: expected a number or null `reward`"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_gives_rewards_pass_at_k_and_phases() {
    let job = TestJob::new();
    rewarded_run(&job);
    let out = job.convoy(&["report", "out", "--json"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    let rewards = &r["rewards"];
    assert_eq!(rewards["verified"], 7);
    assert_eq!(rewards["mean"], 3.25 / 7.0);
    assert_eq!(rewards["share_passed"], 3.0 / 7.0);
    assert_eq!(
        rewards["verify_status"],
        json!({"passed": 4, "failed": 3, "error": 1})
    );
    // Groups p (n=3, c=2), q (n=2, c=0), r (n=2, c=0); solo has none.
    // pass@1 = (2/3 + 0 + 0) / 3; pass@2 = (1 + 0 + 0) / 3; pass@3 = p's 1.
    let pass: Vec<(u64, u64, f64)> = rewards["pass_at_k"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["k"].as_u64().unwrap(),
                p["groups"].as_u64().unwrap(),
                p["value"].as_f64().unwrap(),
            )
        })
        .collect();
    let want = [(1, 3, 2.0 / 9.0), (2, 3, 1.0 / 3.0), (3, 1, 1.0)];
    assert_eq!(pass.len(), want.len(), "{pass:?}");
    for (got, want) in pass.iter().zip(want) {
        assert_eq!((got.0, got.1), (want.0, want.1));
        assert!((got.2 - want.2).abs() < 1e-12, "{pass:?}");
    }
    for phase in ["setup_s", "agent_s", "verify_s"] {
        assert!(r["phases"][phase]["p50"].is_number(), "{phase}: {r}");
    }
    assert_eq!(r["phases"]["agent_s"]["p90"], 1.5);

    let out = job.convoy(&["report", "out"], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("rewards: 7 verified, mean 0.464, 42.9% at 1.0 or more; verify: error 1, failed 3, passed 4"),
        "{text}"
    );
    assert!(
        text.contains("pass@1 0.222, pass@2 0.333, pass@3 1.000 (3 groups)"),
        "{text}"
    );
    assert!(text.contains("verify (s): p50 1.000"), "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_run_directory_from_before_rewards_still_exports_and_reports() {
    let job = TestJob::new();
    std::fs::create_dir_all(job.path("out")).unwrap();
    let old = json!({"id": "a", "status": "ok", "final": null, "steps": 1, "usage": {},
                     "attempt": 1, "started_at": "2024-05-01T10:00:00.000Z",
                     "finished_at": "2024-05-01T10:00:01.000Z", "duration_s": 1.0,
                     "error": null});
    job.write("out/results.jsonl", &jsonl(&[old]));
    job.write("out/trajectories.jsonl", &jsonl(&[trajectory("a")]));
    let (ids, _) = export(&job, &["--best-of-group"]).await;
    assert_eq!(ids, ["a"]);
    let (ids, _) = export(&job, &["--min-reward", "0"]).await;
    assert!(ids.is_empty(), "not verified: no reward to compare");
    let out = job.convoy(&["report", "out", "--json"], &[]).await;
    let r: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert!(
        r.get("rewards").is_none() && r.get("phases").is_none(),
        "{r}"
    );
}
