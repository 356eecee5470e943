//! The token-level record (issue 15): `llm.logprobs`, `top_logprobs` and
//! `return_token_ids` ask the endpoint for token data, which is kept per
//! assistant turn under `convoy` beside the trajectory's `messages` (left
//! exactly as received, and never sent back), in partial turns too;
//! `convoy export` drops it unless `--keep-token-data`; without the options
//! nothing is asked and nothing kept. Real binary, real tmux, real HTTP to
//! a fake as strict as OpenAI about `top_logprobs`.

mod support;

use serde_json::{json, Value};
use support::fake_llm::{tokens, FakeLlm};
use support::{http_manifest, script, stderr, TestJob, KEY};

const ENV: &[(&str, &str)] = &[("CONVOY_TEST_KEY", KEY)];
const ASK: &str = "logprobs = true\ntop_logprobs = 2\nreturn_token_ids = true";

/// A bash call that says what it does, then `finish` (with a vLLM
/// `stop_reason`).
fn two_turns() -> Value {
    json!([
        {"content": "let me look", "calls": [["bash", {"command": "echo hi"}]]},
        {"content": "", "calls": [["finish", {"message": "done"}]], "stop_reason": 7}
    ])
}

fn one_task(job: &TestJob, turns: Value) {
    job.tasks(&[json!({"id": "t1", "script": script(turns)})]);
}

/// `convoy export ARGS` of the job's run directory: its exit code and lines.
async fn export(job: &TestJob, args: &[&str]) -> (Option<i32>, Vec<Value>) {
    let out = job
        .convoy(&[&["export", "out"][..], args].concat(), &[])
        .await;
    let lines = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    (out.status.code(), lines)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn token_data_is_kept_per_assistant_turn_beside_messages_left_as_received() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    one_task(&job, two_turns());
    job.manifest(&http_manifest(&llm, ASK, ""));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    // Each request asked for it, and none carried any of it back.
    let requests = llm.requests();
    assert_eq!(requests.len(), 2);
    for r in &requests {
        let b = &r.body;
        assert_eq!(
            (&b["logprobs"], &b["top_logprobs"], &b["return_token_ids"]),
            (&json!(true), &json!(2), &json!(true))
        );
        assert!(b.get("convoy").is_none());
    }
    // (The strict fake refuses any other key in a message sent back.)
    assert_eq!(
        requests[1].body["messages"][2],
        json!({"role": "assistant", "content": "let me look", "tool_calls": [
            {"id": "call_0_0", "type": "function",
             "function": {"name": "bash", "arguments": "{\"command\":\"echo hi\"}"}}]})
    );

    let t = job.trajectory("t1");
    let messages = t["messages"].as_array().unwrap();
    let roles: Vec<&str> = messages
        .iter()
        .map(|m| m["role"].as_str().unwrap())
        .collect();
    assert_eq!(roles, ["system", "user", "assistant", "tool", "assistant"]);
    // The messages are as the endpoint sent them: no token data in them.
    assert_eq!(messages[2], requests[1].body["messages"][2]);
    assert!(messages
        .iter()
        .all(|m| m.get("logprobs").is_none() && m.get("token_ids").is_none()));

    let turns = t["convoy"]["turns"].as_array().expect("convoy.turns");
    assert_eq!(turns.len(), 2, "{turns:?}");
    let (first, last) = (&turns[0], &turns[1]);
    assert_eq!(
        (&first["message"], &last["message"]),
        (&json!(2), &json!(4))
    );
    let said = ["let ", "me ", "look"];
    let ids: Vec<Value> = said.iter().map(|t| tokens::id(t)).collect();
    assert_eq!(first["token_ids"], json!(ids));
    let content = first["logprobs"]["content"].as_array().unwrap();
    let spelled: Vec<&str> = content
        .iter()
        .map(|c| c["token"].as_str().unwrap())
        .collect();
    assert_eq!(spelled, said);
    assert_eq!(content[0]["bytes"], json!(b"let ".to_vec()));
    assert_eq!(content[0]["top_logprobs"].as_array().unwrap().len(), 2);
    // The prompt's ids, of what the first request sent.
    let prompt: Vec<Value> = ["You", "are", "a", "test."]
        .iter()
        .map(|w| tokens::id(w))
        .collect();
    assert_eq!(
        first["prompt_token_ids"].as_array().unwrap()[..4],
        prompt[..]
    );
    assert_eq!(first["finish_reason"], "tool_calls");
    assert!(first.get("stop_reason").is_none(), "not sent, not kept");
    assert_eq!(
        (&last["finish_reason"], &last["stop_reason"]),
        (&json!("tool_calls"), &json!(7))
    );

    // Export drops it unless asked to keep it, and keeps its indices.
    let (code, plain) = export(&job, &[]).await;
    assert_eq!(code, Some(0));
    assert!(plain[0].get("convoy").is_none(), "{}", plain[0]);
    let (code, kept) = export(&job, &["--keep-token-data"]).await;
    assert_eq!(code, Some(0));
    assert_eq!(kept[0]["convoy"], t["convoy"]);
    assert_eq!(
        kept[0]["messages"].as_array().unwrap().len(),
        messages.len()
    );
    assert_eq!(kept[0]["messages"][2]["role"], "assistant");
    let (code, _) = export(&job, &["--keep-token-data", "--format", "sharegpt"]).await;
    assert_eq!(code, Some(2), "sharegpt cannot hold it");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_options_nothing_is_asked_and_nothing_kept() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    one_task(&job, two_turns());
    job.manifest(&http_manifest(&llm, "", ""));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    for r in llm.requests() {
        for key in ["logprobs", "top_logprobs", "return_token_ids"] {
            assert!(r.body.get(key).is_none(), "{key} sent: {}", r.body);
        }
    }
    let t = job.trajectory("t1");
    let keys: Vec<&String> = t.as_object().unwrap().keys().collect();
    assert_eq!(keys, ["id", "attempt", "status", "messages", "tools"]);
    let (code, kept) = export(&job, &["--keep-token-data"]).await;
    assert_eq!(code, Some(0));
    assert!(kept[0].get("convoy").is_none(), "{}", kept[0]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extra_body_wins_over_the_token_options() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    one_task(&job, two_turns());
    let keys = format!("{ASK}\nextra_body = {{ top_logprobs = 5 }}");
    job.manifest(&http_manifest(&llm, &keys, ""));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(llm.requests()[0].body["top_logprobs"], 5);
    let first = &job.trajectory("t1")["convoy"]["turns"][0];
    let alternatives = &first["logprobs"]["content"][0]["top_logprobs"];
    assert_eq!(alternatives.as_array().unwrap().len(), 5);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fake_refuses_top_logprobs_as_openai_does() {
    let llm = FakeLlm::start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/chat/completions", llm.base_url());
    let user = json!([{"role": "user", "content": "hi"}]);
    for (options, status) in [
        (json!({"top_logprobs": 2}), 400),
        (json!({"logprobs": false, "top_logprobs": 2}), 400),
        (json!({"logprobs": true, "top_logprobs": 21}), 400),
        (json!({"logprobs": true, "top_logprobs": -1}), 400),
        (json!({"logprobs": true, "top_logprobs": 20}), 200),
        (json!({"logprobs": true}), 200),
    ] {
        let mut body = json!({"model": "m", "messages": user});
        body.as_object_mut()
            .unwrap()
            .extend(options.as_object().unwrap().clone());
        let resp = http.post(&url).json(&body).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{options}");
        let answer: Value = resp.json().await.unwrap();
        if status == 200 {
            assert!(
                answer["choices"][0]["logprobs"]["content"].is_array(),
                "{answer}"
            );
            assert!(
                answer.get("prompt_token_ids").is_none(),
                "not asked: {answer}"
            );
        } else {
            assert!(answer["error"]["message"].is_string(), "{answer}");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_token_options_are_exit_2_naming_the_key_and_good_ones_show_in_the_plan() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    one_task(&job, two_turns());
    for (keys, words) in [
        ("top_logprobs = 3", "needs llm.logprobs = true"),
        ("logprobs = true\ntop_logprobs = 21", "must be from 0 to 20"),
        ("logprobs = \"yes\"", "true or false"),
    ] {
        job.manifest(&http_manifest(&llm, keys, ""));
        let out = job.convoy(&["validate", "job.toml"], &[]).await;
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(2), "{keys}: {err}");
        assert!(err.contains("job.toml"), "{err}");
        let key = if keys.starts_with("logprobs = \"") {
            "llm.logprobs"
        } else {
            "llm.top_logprobs"
        };
        assert!(
            err.contains(&format!("key `{key}`")) && err.contains(words),
            "{keys}: {err}"
        );
    }
    job.manifest(&http_manifest(&llm, ASK, ""));
    let out = job.convoy(&["run", "job.toml", "--dry-run"], ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let plan = String::from_utf8_lossy(&out.stdout);
    assert!(
        plan.contains("keeps:     logprobs, top_logprobs 2, token_ids per assistant turn"),
        "{plan}"
    );
    assert!(llm.requests().is_empty(), "a dry run calls nothing");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_keeps_token_data_in_its_partial_turns_and_resumes() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    // The first attempt at the second turn never answers (in time).
    one_task(
        &job,
        json!([
            {"content": "let me look", "calls": [["bash", {"command": "echo hi"}]]},
            {"content": "", "calls": [["finish", {"message": "done"}]],
             "faults": [{"stall_ms": 600_000}]}
        ]),
    );
    job.manifest(&http_manifest(&llm, ASK, ""));
    let mut child = job.spawn(
        support::convoy_bin(),
        &["run", "job.toml", "--out", "out"],
        ENV,
    );
    let turns_path = job.path("out/turns.jsonl");
    let mut partial = None;
    for _ in 0..1200 {
        partial = support::read_jsonl(&turns_path)
            .into_iter()
            .find(|l| l.get("convoy").is_some());
        if partial.is_some() {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
    child.start_kill().unwrap();
    child.wait().await.unwrap();
    let partial = partial.expect("a partial turn with token data");
    // Its index is the message's place in the whole conversation: this
    // line's messages follow the prompt's line (system, user).
    assert_eq!(partial["messages"][0]["role"], "assistant");
    let turns = partial["convoy"]["turns"].as_array().unwrap();
    assert_eq!(turns.len(), 1);
    assert_eq!(turns[0]["message"], 2);
    assert!(turns[0]["token_ids"].is_array());

    // Resume: the task runs again, and report and merge read the result.
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let t = job.trajectory("t1");
    assert_eq!(t["convoy"]["turns"].as_array().unwrap().len(), 2);
    let report = job.convoy(&["report", "out"], &[]).await;
    assert_eq!(report.status.code(), Some(0), "{}", stderr(&report));
    let merged = job.convoy(&["merge", "merged", "out"], &[]).await;
    assert_eq!(merged.status.code(), Some(0), "{}", stderr(&merged));
    let merged = support::read_jsonl(&job.path("merged/trajectories.jsonl"));
    assert_eq!(merged[0]["convoy"], t["convoy"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_external_agent_s_last_reply_carries_its_token_data() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    let agent = format!(
        "python3 {}/examples/agent/run.py",
        env!("CARGO_MANIFEST_DIR")
    );
    let turns: Vec<Value> = (0..2)
        .map(|i| json!({"content": null, "calls": [["bash", {"command": format!("echo step {i}")}]]}))
        .collect();
    job.tasks(&[json!({"id": "t1", "cmd": agent, "script": script(json!(turns))})]);
    job.manifest(&http_manifest(
        &llm,
        ASK,
        "[agent]\nkind = \"external\"\ncommand = \"{{ cmd }}\"",
    ));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    // The agent's requests were given the options it left out.
    let requests = llm.requests();
    assert!(requests.len() >= 3, "{}", requests.len());
    for r in &requests {
        assert_eq!(
            (&r.body["logprobs"], &r.body["return_token_ids"]),
            (&json!(true), &json!(true))
        );
    }
    let t = job.trajectory("t1");
    let last = t["messages"].as_array().unwrap().len() - 1;
    let turns = t["convoy"]["turns"].as_array().expect("convoy.turns");
    assert_eq!(turns.len(), 1, "the last reply's only: {turns:?}");
    assert_eq!(turns[0]["message"], last);
    assert!(turns[0]["token_ids"].is_array() && turns[0]["logprobs"]["content"].is_array());
    // Every call's token data is in calls.jsonl, as the endpoint sent it.
    let calls = support::read_jsonl(&job.path("out/calls.jsonl"));
    assert_eq!(calls.len(), requests.len());
    assert!(calls
        .iter()
        .all(|c| c["response"]["choices"][0]["token_ids"].is_array()));
}
