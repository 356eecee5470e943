//! Shared by the hostile suites (`neighbours`, `escapes`): manifests for
//! both workspace kinds, canary conversations that check their exact
//! observations, a run that cannot hang the test, and failure messages
//! that show what differs.

use std::fmt::Write;
use std::process::Output;
use std::time::Duration;

use serde_json::{json, Value};

use super::{containers_of_run, docker, observations, stderr, TestJob};

/// A scripted task: its commands, then the answer `done`.
pub fn row(id: &str, commands: &[String]) -> Value {
    json!({"id": id, "commands": commands, "answer": "done"})
}

/// A script-provider job on the local workspace (`rest` after
/// `[workspace]`'s keys).
pub fn local_job(workspace: &str, rest: &str) -> String {
    super::script_job(
        &format!("kind = \"local\"\nworkdir = \"work\"\n{workspace}"),
        rest,
    )
}

/// A script-provider job in the test image (`workspace` adds keys to
/// `[workspace]`, `rest` follows it).
pub fn docker_job(workspace: &str, rest: &str) -> String {
    super::ensure_workspace_image();
    super::script_job(
        &format!(
            "kind = \"docker\"\nimage = \"{}\"\nnofile = 4096\n{workspace}",
            super::WORKSPACE_IMAGE
        ),
        rest,
    )
}

/// Runs the job; fails the test (removing the run's container) if convoy
/// has not exited after `limit`: a stopped helper or tmux server must not
/// hang the suite.
pub async fn run_bounded(job: &TestJob, limit: Duration) -> Output {
    match tokio::time::timeout(limit, job.run(&[])).await {
        Ok(out) => out,
        Err(_) => {
            // Dropping the run killed convoy; its container may remain.
            for id in containers_of_run(&job.path("out")) {
                docker(&["rm", "-f", &id]);
            }
            panic!(
                "convoy did not exit within {limit:?}; results so far:\n{}",
                job.results()
                    .iter()
                    .map(Value::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

/// A conversation whose every observation is known in advance.
pub struct Canary {
    pub id: String,
    pub commands: Vec<String>,
    pub expected: Vec<String>,
}

/// Canary `i`: shell state (`cd`, `export`), a file in its HOME, output
/// of a unique string, `.` and `source`, spread over about three seconds
/// so that it is mid-conversation when a neighbour's attack lands. Its
/// commands and outputs carry `SECRET-c{i}`, which no other conversation
/// may ever see.
pub fn canary(i: usize) -> Canary {
    let secret = format!("SECRET-c{i}");
    let cd = format!(
        "cd /tmp && export CANARY=c{i} SECRET={secret} && echo {secret} >\"$HOME/canary-{i}\""
    );
    // The secret rides along as a comment in the commands that wait, so
    // that a neighbour's every look at them could see it.
    let state = format!("sleep 1; echo \"$CANARY $(basename \"$PWD\")\" # {secret}");
    Canary {
        id: format!("canary{i}"),
        commands: vec![
            cd,
            state,
            format!(
                "printf '%s\\n' canary-{i}-{secret}; . /dev/null; source /dev/null; echo done-{i}"
            ),
            format!("sleep 1; cat \"$HOME/canary-{i}\"; echo \"$SECRET $(({i} * 7))\" # {secret}"),
            format!("sleep 1; echo \"$CANARY $(basename \"$PWD\")\"; echo end-{i} # {secret}"),
        ],
        expected: vec![
            String::new(),
            format!("c{i} tmp\n"),
            format!("canary-{i}-{secret}\ndone-{i}\n"),
            format!("{secret}\n{secret} {}\n", i * 7),
            format!("c{i} tmp\nend-{i}\n"),
        ],
    }
}

pub fn canaries(n: usize) -> Vec<Canary> {
    (0..n).map(canary).collect()
}

impl Canary {
    pub fn row(&self) -> Value {
        row(&self.id, &self.commands)
    }
}

/// The result line of task `id`.
pub fn result_of(job: &TestJob, id: &str) -> Option<Value> {
    job.results().into_iter().find(|r| r["id"] == id)
}

/// Observations of task `id` (empty when it has no trajectory).
pub fn observations_of(job: &TestJob, id: &str) -> Vec<String> {
    job.trajectories()
        .into_iter()
        .find(|t| t["id"] == id)
        .map(|t| observations(&t))
        .unwrap_or_default()
}

/// Every way a conversation's result or observations differ from what it
/// expects, one paragraph: status ok at attempt 1, never cut short by a
/// workspace failure and run again (no `infra_retries`: recovering is not
/// being left alone), and exactly the `expected` observations.
pub fn differences(job: &TestJob, id: &str, expected: &[String]) -> Option<String> {
    differences_from(job, id, expected, &observations_of(job, id))
}

/// As [`differences`], against observations `got` the caller has read.
pub fn differences_from(
    job: &TestJob,
    id: &str,
    expected: &[String],
    got: &[String],
) -> Option<String> {
    let result = result_of(job, id);
    let ok = result
        .as_ref()
        .is_some_and(|r| r["status"] == "ok" && r["attempt"] == 1 && r["infra_retries"].is_null());
    if ok && got == expected {
        return None;
    }
    let mut text = format!("{id}: result {}\n", result.unwrap_or(Value::Null));
    for k in 0..expected.len().max(got.len()) {
        let (want, have) = (expected.get(k), got.get(k));
        if want != have {
            let _ = writeln!(
                text,
                "  observation {k}: expected {want:?}\n  {:>15} got {have:?}",
                ""
            );
        }
    }
    Some(text)
}

/// Fails with every canary that differs and every attacker observation
/// holding a canary's secret, and what each attacker saw (its
/// observations cut short), so the message tells which attack broke what.
pub fn assert_canaries_exact(job: &TestJob, out: &Output, canaries: &[Canary], attackers: &[&str]) {
    let mut diffs: Vec<String> = canaries
        .iter()
        .filter_map(|c| differences(job, &c.id, &c.expected))
        .collect();
    for id in attackers {
        for obs in observations_of(job, id) {
            if let Some(at) = obs.find("SECRET-c") {
                let seen: String = obs[at..].chars().take(60).collect();
                diffs.push(format!("{id} saw a canary's secret: {seen:?}..."));
            }
        }
    }
    if diffs.is_empty() {
        return;
    }
    let mut seen = String::new();
    for id in attackers {
        let _ = writeln!(
            seen,
            "{id}: result {}",
            result_of(job, id).unwrap_or(Value::Null)
        );
        for obs in observations_of(job, id) {
            let cut: String = obs.chars().take(300).collect();
            let _ = writeln!(seen, "  {cut:?}");
        }
    }
    panic!(
        "{} canaries differ or secrets seen (of {} canaries):\n{}\nattackers:\n{seen}\n\
         convoy exit {:?}, stderr:\n{}",
        diffs.len(),
        canaries.len(),
        diffs.join("\n"),
        out.status.code(),
        stderr(out)
    );
}
