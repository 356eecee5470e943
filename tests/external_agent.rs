//! External agents (`agent.kind = "external"`) as users run them: the
//! example agent (`examples/agent/run.py`) and hand-made clients in each
//! conversation's session, their model calls through convoy's gateway to
//! the strict fake endpoint, with the real key only on convoy's side.

mod support;

use std::path::Path;

use serde_json::{json, Value};
use support::fake_llm::FakeLlm;
use support::{stderr, TestJob, KEY};

fn agent_dir() -> String {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples/agent")
        .display()
        .to_string()
}

/// A job of external agents whose command is each row's `cmd`.
fn external_job(llm: &FakeLlm, workspace: &str, rest: &str) -> TestJob {
    let job = TestJob::new();
    job.manifest(&support::http_manifest_on(
        llm,
        "max_retries = 3",
        workspace,
        &format!(
            "[agent]\nkind = \"external\"\ncommand = \"{{{{ cmd }}}}\"\nmax_steps = 25\n{rest}"
        ),
    ));
    job
}

fn turns(n: usize) -> String {
    let turns: Vec<Value> = (0..n)
        .map(|i| json!({"content": null, "calls": [["bash", {"command": format!("echo step {i}")}]]}))
        .collect();
    json!({ "turns": turns }).to_string()
}

/// A streaming client in Python: prints the content it was streamed.
const STREAM: &str = r#"python3 -c "
import json, os, urllib.request as u
r = u.Request(os.environ['OPENAI_BASE_URL'] + '/chat/completions', data=json.dumps({'model': 'x', 'stream': True, 'messages': [{'role': 'user', 'content': open(os.environ['CONVOY_PROMPT_FILE']).read()}]}).encode(), headers={'Authorization': 'Bearer ' + os.environ['OPENAI_API_KEY'], 'Content-Type': 'application/json'})
with u.urlopen(r) as resp:
    assert resp.headers['Content-Type'] == 'text/event-stream'
    events = [l[6:] for l in resp.read().decode().splitlines() if l.startswith('data: ')]
assert events[-1] == '[DONE]'
print('streamed', json.loads(events[0])['choices'][0]['delta']['content'])
open(os.environ['CONVOY_ANSWER'], 'w').write('streamed')
""#;

/// A client with a token of its own making: prints the status it got.
const BOGUS: &str = r#"python3 -c "
import os, urllib.request as u, urllib.error as e
r = u.Request(os.environ['OPENAI_BASE_URL'] + '/models', headers={'Authorization': 'Bearer convoy-made-up'})
try:
    u.urlopen(r)
except e.HTTPError as x:
    print('status', x.code)
""#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_agents_call_the_model_through_the_gateway_and_are_recorded() {
    let llm = FakeLlm::start().await;
    llm.require_key(KEY);
    let agent = format!("python3 {}/run.py", agent_dir());
    let job = external_job(&llm, "kind = \"local\"\nworkdir = \"work\"", "");
    std::fs::create_dir_all(job.path("work")).unwrap();
    job.tasks(&[
        json!({"id": "twenty", "cmd": agent, "script": turns(19)}),
        json!({"id": "long", "cmd": agent, "script": turns(30)}),
        json!({"id": "stream", "cmd": STREAM, "script": json!({"turns": [{"content": "hello"}]}).to_string()}),
        json!({"id": "bogus", "cmd": BOGUS, "script": "{}"}),
        json!({"id": "killed", "cmd": "kill -9 $BASHPID", "script": "{}"}),
    ]);
    let out = job.run(&[("CONVOY_TEST_KEY", KEY)]).await;
    let results: std::collections::HashMap<String, Value> = job
        .results()
        .into_iter()
        .map(|r| (r["id"].as_str().unwrap().to_string(), r))
        .collect();
    let status = |id: &str| results[id]["status"].as_str().unwrap().to_string();
    let dump = std::fs::read_to_string(job.path("out/calls.jsonl")).unwrap_or_default();
    assert_eq!(
        status("twenty"),
        "ok",
        "{}\n{}\n{dump}",
        results["twenty"],
        stderr(&out)
    );
    assert_eq!(results["twenty"]["final"], "done");
    assert_eq!(results["twenty"]["steps"], 20);
    // 30 scripted calls and max_steps = 25: the 26th call is refused.
    assert_eq!(status("long"), "max_steps", "{}", results["long"]);
    assert_eq!(status("stream"), "ok", "{}", results["stream"]);
    assert!(results["stream"]["agent_output"]
        .as_str()
        .unwrap()
        .contains("streamed hello"));
    assert!(
        results["bogus"]["agent_output"]
            .as_str()
            .unwrap()
            .contains("status 401"),
        "{}",
        results["bogus"]
    );
    assert_eq!(status("killed"), "failed", "{}", results["killed"]);

    // Every call is recorded under its task, numbered in order; the
    // trajectory is the agent's last request and its reply.
    let calls: Vec<Value> = std::fs::read_to_string(job.path("out/calls.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let of = |id: &str| -> Vec<&Value> { calls.iter().filter(|c| c["id"] == id).collect() };
    let seqs: Vec<u64> = of("twenty")
        .iter()
        .map(|c| c["seq"].as_u64().unwrap())
        .collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<u64>>());
    assert!(of("twenty").iter().all(|c| c["status"] == 200));
    let run: Value =
        serde_json::from_str(&std::fs::read_to_string(job.path("out/run.json")).unwrap()).unwrap();
    assert!(
        calls
            .iter()
            .all(|c| c["run_started_at"] == run["started_at"]),
        "each call names the invocation that made it"
    );
    let script = turns(19);
    let sent = llm
        .requests()
        .into_iter()
        .filter(|r| r.body["messages"][1]["content"] == script.as_str())
        .map(|r| r.body)
        .max_by_key(|b| b["messages"].as_array().unwrap().len())
        .expect("the agent's last request");
    let traj = job.trajectory("twenty");
    let mut want = sent["messages"].as_array().unwrap().clone();
    let last_reply = of("twenty").last().unwrap()["messages_added"]
        .as_array()
        .unwrap()
        .last()
        .unwrap()
        .clone();
    want.push(last_reply);
    assert_eq!(traj["messages"], Value::Array(want));
    assert_eq!(traj["tools"], sent["tools"], "the agent's own tools");
    // Each call stored only what it added: linear, not quadratic.
    let added: usize = of("twenty")
        .iter()
        .map(|c| c["messages_added"].as_array().unwrap().len())
        .sum();
    assert_eq!(added, traj["messages"].as_array().unwrap().len());
    // The endpoint saw convoy's key and the job's model, never a token.
    assert!(llm.requests().iter().all(|r| r.authorization.as_deref()
        == Some(&format!("Bearer {KEY}")[..])
        && r.body["model"] == "fake-model"));
    let summary = job.summary();
    assert_eq!(summary["leaks"]["verdict"], "clean", "{summary}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn in_a_container_without_network_the_key_is_never_inside() {
    let llm = FakeLlm::start().await;
    llm.require_key(KEY);
    support::ensure_workspace_image();
    let job = external_job(
        &llm,
        &format!(
            "kind = \"docker\"\nimage = \"{}\"\nnofile = 4096\nnetwork = \"none\"\nmounts = [{{ host = \"{}\", container = \"/opt/agent\", read_only = true }}]",
            support::WORKSPACE_IMAGE,
            agent_dir()
        ),
        "",
    );
    // The agent looks for the key everywhere it can read first (the key
    // put together in a shell variable, so this command does not hold it).
    let (a, b) = KEY.split_at(8);
    let look = format!(
        "K={a}; K=$K{b}; (env; cat /proc/[0-9]*/cmdline /proc/[0-9]*/environ; grep -rsF -f <(printf %s \"$K\") / --exclude-dir=proc --exclude-dir=sys) 2>/dev/null | grep -cF -f <(printf %s \"$K\"); python3 /opt/agent/run.py"
    );
    job.tasks(&[json!({"id": "d1", "cmd": look, "script": turns(3)})]);
    let out = job.run(&[("CONVOY_TEST_KEY", KEY)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = &job.results()[0];
    assert_eq!(r["status"], "ok", "{r}");
    assert_eq!(r["agent_output"].as_str().unwrap().trim(), "0", "{r}");
    assert_eq!(r["steps"], 4);
}

/// The worked example in `jobs/external-agent`, as a user runs it:
/// offline (the script provider answers the example agent's calls), on the
/// local workspace; every task ends `ok` with its row's answer, and
/// `calls.jsonl` holds each of its calls, in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_external_agent_example_job_ends_ok_with_every_answer() {
    let job = TestJob::new();
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/external-agent");
    let out = job
        .convoy(
            &[
                "run",
                dir.join("job.toml").to_str().unwrap(),
                "--out",
                "out",
            ],
            &[],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows = support::read_jsonl(&dir.join("tasks.jsonl"));
    let results = job.results();
    assert_eq!(results.len(), rows.len());
    let calls = support::read_jsonl(&job.path("out/calls.jsonl"));
    for row in &rows {
        let id = row["id"].as_str().unwrap();
        let r = results.iter().find(|r| r["id"] == id).unwrap();
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["final"], row["answer"], "{r}");
        // One call per command, then the one answered with `finish`.
        let n = row["commands"].as_array().unwrap().len() + 1;
        assert_eq!(r["steps"], n, "{r}");
        let seqs: Vec<u64> = calls
            .iter()
            .filter(|c| c["id"] == id)
            .map(|c| c["seq"].as_u64().unwrap())
            .collect();
        assert_eq!(seqs, (1..=n as u64).collect::<Vec<_>>(), "{id}");
        // The trajectory offers the agent's own tools (convoy's `bash` is
        // described otherwise).
        let tools = &job.trajectory(id)["tools"];
        assert_eq!(tools.as_array().map(Vec::len), Some(2), "{tools}");
        assert_eq!(tools[0]["function"]["description"], "Run a shell command.");
        assert_eq!(tools[1]["function"]["description"], "End with the answer.");
    }
    assert!(calls.iter().all(|c| c["status"] == 200));
    // The agent's commands saw its environment: its task id, and a token of
    // its own in OPENAI_API_KEY.
    assert_eq!(
        support::observations(&job.trajectory("task-id")),
        ["task-id\n", "a per-conversation token\n"]
    );
}

/// An agent still running at `run.task_timeout` is stopped by its own
/// deadline, a moment before the attempt's: the task is `timeout` with the
/// calls it made, its trajectory and its output kept.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_past_its_deadline_is_timeout_with_its_calls_kept() {
    let llm = FakeLlm::start().await;
    let job = external_job(
        &llm,
        "kind = \"local\"\nworkdir = \"work\"",
        "[run]\ntask_timeout = \"8s\"\n",
    );
    std::fs::create_dir_all(job.path("work")).unwrap();
    let slow = r#"python3 -c "
import json, os, time, urllib.request as u
r = u.Request(os.environ['OPENAI_BASE_URL'] + '/chat/completions', data=json.dumps({'model': 'x', 'messages': [{'role': 'user', 'content': open(os.environ['CONVOY_PROMPT_FILE']).read()}]}).encode(), headers={'Authorization': 'Bearer ' + os.environ['OPENAI_API_KEY'], 'Content-Type': 'application/json'})
u.urlopen(r).read()
print('called, now stuck', flush=True)
time.sleep(600)
""#;
    job.tasks(&[json!({"id": "slow", "cmd": slow, "script": turns(3)})]);
    let out = job.run(&[("CONVOY_TEST_KEY", KEY)]).await;
    let r = &job.results()[0];
    assert_eq!(r["status"], "timeout", "{r}\n{}", stderr(&out));
    assert_eq!(r["steps"], 1, "{r}");
    assert!(
        r["agent_output"]
            .as_str()
            .unwrap()
            .contains("called, now stuck"),
        "{r}"
    );
    let traj = job.trajectory("slow");
    assert_eq!(
        traj["messages"].as_array().unwrap().len(),
        2,
        "its request and the reply: {traj}"
    );
    assert_eq!(traj["tools"], json!([]), "it sent no tools");
}
