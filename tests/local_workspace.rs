//! End-to-end tests on the local workspace: the real binary, real tmux and
//! real HTTP to a fake OpenAI-compatible server.

mod support;

use serde_json::{json, Value};
use support::fake_llm::FakeLlm;
use support::{observations, processes_with, script, stderr, TestJob, KEY};

fn http_manifest(llm: &FakeLlm, extra: &str) -> String {
    support::http_manifest(llm, "max_retries = 0", extra)
}

/// Nothing of the run is left: no temp dir (so no tmux socket), no tmux
/// server or helper that mentions it.
fn assert_nothing_left(job: &TestJob) {
    assert_eq!(job.tmp_entries(), Vec::<String>::new(), "temp entries left");
    let tmp = job.path("tmp").display().to_string();
    assert_eq!(processes_with(&tmp), Vec::<String>::new(), "processes left");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_conversation_runs_tool_calls_in_order_and_keeps_shell_state() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    let turns = json!([
        {"content": "let me look", "calls": [
            ["bash", {"command": "mkdir -p sub && cd sub && export X=42"}],
            ["bash", {"command": "echo $X; basename $PWD"}]
        ]},
        {"content": null, "calls": [["bash", {"command": "echo $X-again"}]]},
        {"calls": [["finish", {"message": "the answer is 42"}]]}
    ]);
    job.tasks(&[json!({"id": "t1", "script": script(turns)})]);
    job.manifest(&http_manifest(&llm, ""));
    let out = job.run(&[("CONVOY_TEST_KEY", KEY)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let r = &job.results()[0];
    assert_eq!(r["status"], "ok");
    assert_eq!(r["final"], "the answer is 42");
    assert_eq!(r["steps"], 3);
    assert_eq!(r["usage"]["prompt_tokens"], 30);
    let traj = job.trajectory("t1");
    assert_eq!(observations(&traj), ["", "42\nsub\n", "42-again\n"]);
    let msgs = traj["messages"].as_array().unwrap();
    let ids: Vec<_> = msgs
        .iter()
        .filter(|m| m["role"] == "tool")
        .map(|m| m["tool_call_id"].clone())
        .collect();
    assert_eq!(
        ids,
        [json!("call_0_0"), json!("call_0_1"), json!("call_1_0")]
    );
    // Text beside tool calls is kept exactly as received.
    assert_eq!(msgs[2]["content"], "let me look");
    assert_eq!(traj["tools"][0]["function"]["name"], "bash");

    // The endpoint saw the key; no file, log or output line did.
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 3);
    assert!(reqs
        .iter()
        .all(|r| r.authorization.as_deref() == Some(&format!("Bearer {KEY}")[..])));
    // Sent as recorded, but canonical: `content: null` goes back as "".
    let mut sent = msgs[..msgs.len() - 1].to_vec();
    sent[5]["content"] = json!("");
    assert_eq!(reqs[2].body["messages"], json!(sent));
    for entry in std::fs::read_dir(job.path("out")).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        assert!(!text.contains(KEY));
    }
    assert!(!stderr(&out).contains(KEY) && !String::from_utf8_lossy(&out.stdout).contains(KEY));
    assert_nothing_left(&job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hundred_concurrent_conversations_see_only_their_own_bytes() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    let mut rows = Vec::new();
    let mut expected = Vec::new();
    for i in 0..100 {
        // Tabs, unicode, a long line, and no trailing newline.
        let content = format!("task {i}\tcol\u{2603}é\n{}\nend {i}", "x".repeat(3000 + i));
        job.write(&format!("work/f{i}.txt"), &content);
        let turns = json!([
            {"calls": [["bash", {"command": format!("export MINE={i}; cat f{i}.txt")}]]},
            {"calls": [["bash", {"command": "sleep 0.2; echo $MINE"}]]},
            {"content": "ok"}
        ]);
        rows.push(json!({"id": format!("t{i}"), "script": script(turns)}));
        expected.push(content);
    }
    job.tasks(&rows);
    job.manifest(&http_manifest(&llm, "[run]\nworkers = 100\n"));
    let out = job.run(&[("CONVOY_TEST_KEY", KEY)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(job.results().len(), 100);
    for (i, content) in expected.iter().enumerate() {
        let obs = observations(&job.trajectory(&format!("t{i}")));
        assert_eq!(
            obs[0],
            *content,
            "task {i} got other bytes; stderr: {}",
            stderr(&out)
        );
        assert_eq!(obs[1], format!("{i}\n"), "task {i} saw another shell");
    }
    assert_nothing_left(&job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stdin_is_closed_and_hung_commands_time_out_leaving_the_session_usable() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    let turns = json!([
        {"calls": [["bash", {"command": "cat; echo after-cat"}]]},
        {"calls": [["bash", {"command": "export KEEP=yes; sleep 300"}]]},
        {"calls": [["bash", {"command": "bash -c \"trap '' INT; sleep 301\""}]]},
        {"calls": [["bash", {"command": "echo alive $KEEP"}]]},
        {"content": "done"}
    ]);
    job.tasks(&[json!({"id": "t", "script": script(turns)})]);
    job.manifest(&http_manifest(&llm, "[agent]\ncommand_timeout = \"1s\"\n"));
    let out = job.run(&[("CONVOY_TEST_KEY", KEY)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let obs = observations(&job.trajectory("t"));
    assert_eq!(obs[0], "after-cat\n");
    assert_eq!(obs[1], "[command timed out after 1s; interrupted with C-c]");
    // bash reports the killed job ("Killed") as a terminal would.
    assert!(
        obs[2].ends_with(
            "[command timed out after 1s; interrupted with C-c, then its process group was killed]"
        ),
        "{}",
        obs[2]
    );
    assert_eq!(obs[3], "alive yes\n");
    assert!(processes_with("sleep 301").is_empty());
    assert_nothing_left(&job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn background_nohup_and_setsid_processes_die_with_their_conversation() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    let turns = json!([
        {"calls": [["bash", {"command": "sleep 1000.51 & nohup sleep 1000.52 >/dev/null 2>&1 & setsid sleep 1000.53 >/dev/null 2>&1 & echo started"}]]},
        {"content": "left them running"}
    ]);
    job.tasks(&[json!({"id": "bg", "script": script(turns)})]);
    job.manifest(&http_manifest(&llm, ""));
    let out = job.run(&[("CONVOY_TEST_KEY", KEY)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(observations(&job.trajectory("bg"))[0].contains("started"));
    for s in ["sleep 1000.51", "sleep 1000.52", "sleep 1000.53"] {
        assert_eq!(processes_with(s), Vec::<String>::new(), "{s} survived");
    }
    assert_nothing_left(&job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn step_limit_and_task_deadline_end_tasks_with_their_status() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    let forever = json!([
        {"calls": [["bash", {"command": "true"}]]},
        {"calls": [["bash", {"command": "true"}]]},
        {"calls": [["bash", {"command": "true"}]]}
    ]);
    let slow = json!([{"calls": [["bash", {"command": "sleep 1000.61"}]]}]);
    job.tasks(&[
        json!({"id": "steps", "script": script(forever)}),
        json!({"id": "slow", "script": script(slow)}),
    ]);
    job.manifest(&http_manifest(
        &llm,
        "[agent]\nmax_steps = 2\n[run]\ntask_timeout = \"2s\"\n",
    ));
    let out = job.run(&[("CONVOY_TEST_KEY", KEY)]).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let results = job.results();
    let status = |id: &str| results.iter().find(|r| r["id"] == id).unwrap()["status"].clone();
    assert_eq!(status("steps"), "max_steps");
    assert_eq!(status("slow"), "timeout");
    // The partial trajectory of the timed-out task is kept.
    assert_eq!(
        job.trajectory("slow")["messages"].as_array().unwrap().len(),
        3
    );
    assert!(processes_with("sleep 1000.61").is_empty());
    let summary: Value =
        serde_json::from_str(&std::fs::read_to_string(job.path("out/summary.json")).unwrap())
            .unwrap();
    assert_eq!(summary["counts"]["max_steps"], 1);
    assert_eq!(summary["leaks"]["verdict"], "clean");
    assert_nothing_left(&job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_stop_the_job_with_exit_4() {
    let llm = FakeLlm::start().await;
    llm.fail_with(401, "invalid api key");
    let job = TestJob::new();
    let rows: Vec<Value> = (0..50)
        .map(|i| json!({"id": format!("t{i}"), "script": script(json!([]))}))
        .collect();
    job.tasks(&rows);
    job.manifest(&http_manifest(&llm, "[run]\nworkers = 2\n"));
    let out = job.run(&[("CONVOY_TEST_KEY", KEY)]).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("rejected the credentials"),
        "{}",
        stderr(&out)
    );
    assert!(llm.requests().len() < 10, "kept going after a 401");
    assert_nothing_left(&job);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_exits_2_naming_file_line_and_key() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    job.tasks(&[json!({"id": "a", "script": "x"})]);
    let base = http_manifest(&llm, "");
    let cases = [
        (
            format!("{base}[run]\nwrkers = 4\n"),
            "key `run.wrkers`: unknown key `wrkers` (did you mean `workers`?)",
        ),
        (
            format!("{base}[run]\nworkers = 0\n"),
            "key `run.workers`: must be at least 1",
        ),
        (
            format!("{base}[agent]\nmax_steps = -3\n"),
            "key `agent.max_steps`",
        ),
        (
            format!("{base}[run]\ntask_timeout = \"soon\"\n"),
            "key `run.task_timeout`",
        ),
    ];
    for (text, expected) in cases {
        job.manifest(&text);
        let out = job
            .convoy(&["validate", "job.toml"], &[("CONVOY_TEST_KEY", KEY)])
            .await;
        assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
        let err = stderr(&out);
        assert!(err.contains("job.toml") && err.contains("line "), "{err}");
        assert!(err.contains(expected), "expected {expected:?} in {err}");
    }

    // A bad row 4 fails before anything runs, with file and line.
    job.manifest(&base);
    let rows: String = (0..3)
        .map(|i| format!("{{\"id\": \"r{i}\", \"script\": \"x\"}}\n"))
        .collect();
    job.write("tasks.jsonl", &format!("{rows}{{\"id\": \"r3\"}}\n"));
    let out = job.run(&[("CONVOY_TEST_KEY", KEY)]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(
        stderr(&out).contains("tasks.jsonl:4: prompt.user"),
        "{}",
        stderr(&out)
    );
    assert!(llm.requests().is_empty());
    assert!(!job.path("out").exists());

    // The key's variable must be set.
    job.tasks(&[json!({"id": "a", "script": "x"})]);
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(2));
    assert!(stderr(&out).contains("`CONVOY_TEST_KEY` (llm.api_key_env) is not set"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_quickstart_smoke_job_runs_offline() {
    let job = TestJob::new();
    let manifest = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("jobs/smoke.toml");
    let out_dir = job.path("out");
    let out = job
        .convoy(
            &[
                "run",
                manifest.to_str().unwrap(),
                "--out",
                out_dir.to_str().unwrap(),
            ],
            &[],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = job.results();
    assert_eq!(results.len(), 200);
    assert!(results
        .iter()
        .all(|r| r["status"] == "ok" && r["steps"] == 4));
    let obs = observations(&job.trajectory("task-007"));
    assert_eq!(
        obs,
        ["3 file3.txt\n", "file 3\n", "still in data with file 3\n"]
    );
    assert_nothing_left(&job);
}

/// Regression: a command that ends the shell made the next command's tmux
/// call fail, and the answers of the tmux control client went out of step
/// with its requests for every later session.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_in_one_conversation_starts_a_new_shell_and_disturbs_no_other() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    let mut rows = Vec::new();
    for i in 0..20 {
        let turns = json!([
            {"calls": [["bash", {"command": format!("export V={i}; exit 3")}]]},
            {"calls": [["bash", {"command": "echo after ${V:-unset}"}]]},
            {"calls": [["bash", {"command": format!("echo {i}")}]]},
            {"content": "done"}
        ]);
        rows.push(json!({"id": format!("t{i}"), "script": script(turns)}));
    }
    job.tasks(&rows);
    job.manifest(&http_manifest(&llm, "[run]\nworkers = 20\n"));
    let out = job.run(&[("CONVOY_TEST_KEY", KEY)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for i in 0..20 {
        let obs = observations(&job.trajectory(&format!("t{i}")));
        assert_eq!(
            obs[0],
            "[exit code: 3]\n[the shell exited; the next command starts in a new shell]"
        );
        assert_eq!(
            obs[1],
            "[the previous shell had exited; this command ran in a new shell]\nafter unset\n"
        );
        assert_eq!(obs[2], format!("{i}\n"));
    }
    assert_nothing_left(&job);
}
