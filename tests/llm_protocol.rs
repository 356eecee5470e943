//! What convoy sends and how it reads what comes back, against a fake
//! server as strict as llama.cpp's: `tool_choice`, canonical assistant
//! messages (extras kept in the trajectory only), text-only replies
//! (`agent.on_text`), deterministic server errors, the check before the
//! job (`preflight`), `validate` without the key, and idle connections
//! dropped at the end. Real binary, real tmux, real HTTP.

mod support;

use serde_json::{json, Value};
use support::fake_llm::FakeLlm;
use support::{http_manifest, script, stderr, TestJob, KEY};

const ENV: &[(&str, &str)] = &[("CONVOY_TEST_KEY", KEY), ("RUST_LOG", "info")];

fn finish(answer: &str) -> Value {
    json!({"calls": [["finish", {"message": answer}]]})
}

fn one_task(job: &TestJob, turns: Value) {
    job.tasks(&[json!({"id": "t1", "script": script(turns)})]);
}

/// The assistant messages of every request the endpoint got.
fn sent_assistant_messages(llm: &FakeLlm) -> Vec<Value> {
    llm.requests()
        .iter()
        .flat_map(|r| r.body["messages"].as_array().cloned().unwrap_or_default())
        .filter(|m| m["role"] == "assistant")
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tool_choice_is_auto_unless_the_manifest_says_omit() {
    let llm = FakeLlm::start().await;
    for (keys, expected) in [("", Some("auto")), ("tool_choice = \"omit\"", None)] {
        llm.clear();
        let job = TestJob::new();
        one_task(&job, json!([finish("ok")]));
        job.manifest(&http_manifest(&llm, keys, ""));
        let out = job.run(ENV).await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let body = &llm.requests()[0].body;
        assert!(body["tools"].as_array().is_some_and(|t| !t.is_empty()));
        assert_eq!(
            body.get("tool_choice").and_then(Value::as_str),
            expected,
            "{keys}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_strict_fake_refuses_what_llama_cpp_refuses() {
    let llm = FakeLlm::start().await;
    let http = reqwest::Client::new();
    let url = format!("{}/chat/completions", llm.base_url());
    let call = json!({"id": "c1", "type": "function",
                      "function": {"name": "bash", "arguments": "{}"}});
    let user = json!({"role": "user", "content": "hi"});
    let cases = [
        (
            json!({"role": "assistant", "content": null, "tool_calls": [call]}),
            500,
        ),
        (
            json!({"role": "assistant", "content": "", "tool_calls": [call], "refusal": null}),
            400,
        ),
        (
            json!({"role": "assistant", "content": "", "reasoning_content": "x"}),
            400,
        ),
        (
            json!({"role": "assistant", "content": "", "tool_calls": []}),
            400,
        ),
        (
            json!({"role": "assistant", "content": "", "tool_calls": [
                {"id": "c1", "type": "function", "index": 0, "function": {"name": "bash", "arguments": "{}"}}
            ]}),
            400,
        ),
        (
            json!({"role": "assistant", "content": "", "tool_calls": [call]}),
            200,
        ),
    ];
    for (assistant, status) in cases {
        let tool = json!({"role": "tool", "tool_call_id": "c1", "content": "out"});
        let mut messages = vec![user.clone(), assistant.clone()];
        if assistant.get("tool_calls").is_some() {
            messages.push(tool);
        }
        let body = json!({"model": "m", "messages": messages});
        let resp = http.post(&url).json(&body).send().await.unwrap();
        assert_eq!(resp.status().as_u16(), status, "{assistant}");
        if status != 200 {
            let err: Value = resp.json().await.unwrap();
            assert!(err["error"]["message"].is_string(), "{err}");
        }
    }
    let orphan = json!({"model": "m", "messages": [user, {"role": "tool", "content": "x"}]});
    let resp = http.post(&url).json(&orphan).send().await.unwrap();
    assert_eq!(resp.status().as_u16(), 400);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assistant_messages_go_back_canonical_and_the_trajectory_keeps_extras() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    // As vLLM, llama.cpp and OpenAI send them: content null next to tool
    // calls, refusal, function_call, an index per call, provider extras,
    // arguments as an object, a call without an id.
    let turns = json!([
        {"raw": {"role": "assistant", "content": null, "refusal": null, "function_call": null,
                 "reasoning_content": "let me see", "provider_specific_fields": {"stop": 1},
                 "tool_calls": [{"id": "c1", "type": "function", "index": 0,
                                 "function": {"name": "bash", "arguments": "{\"command\": \"echo one\"}"}}]}},
        {"raw": {"role": "assistant", "content": null,
                 "tool_calls": [{"function": {"name": "bash", "arguments": {"command": "echo two"}}}]}},
        finish("both ran")
    ]);
    one_task(&job, turns);
    job.manifest(&http_manifest(&llm, "", ""));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = &job.results()[0];
    assert_eq!(
        (r["status"].as_str(), r["final"].as_str()),
        (Some("ok"), Some("both ran"))
    );
    let reqs = llm.requests();
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        [200, 200, 200]
    );
    let sent = sent_assistant_messages(&llm);
    assert_eq!(
        sent.last().unwrap(),
        &json!({"role": "assistant", "content": "", "tool_calls": [
            {"id": "call_0", "type": "function",
             "function": {"name": "bash", "arguments": "{\"command\":\"echo two\"}"}}
        ]})
    );
    assert_eq!(
        sent[0],
        json!({"role": "assistant", "content": "", "tool_calls": [
            {"id": "c1", "type": "function",
             "function": {"name": "bash", "arguments": "{\"command\": \"echo one\"}"}}
        ]})
    );
    // The trajectory has each reply as received, extras included.
    let traj = job.trajectory("t1");
    let first = &traj["messages"][2];
    assert_eq!(first["content"], Value::Null);
    assert_eq!(first["reasoning_content"], "let me see");
    assert_eq!(first["provider_specific_fields"]["stop"], 1);
    assert!(first.get("refusal").is_some() && first.get("function_call").is_some());
    assert_eq!(first["tool_calls"][0]["index"], 0);
    let second = &traj["messages"][4];
    assert_eq!(
        second["tool_calls"][0]["function"]["arguments"]["command"],
        "echo two"
    );
    assert_eq!(traj["messages"][5]["tool_call_id"], "call_0");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reasoning_content_goes_back_only_where_the_endpoint_wants_it() {
    let llm = FakeLlm::start().await;
    llm.accept_reasoning();
    let job = TestJob::new();
    let turns = json!([
        {"reasoning": "plan", "calls": [["bash", {"command": "true"}]]},
        finish("ok")
    ]);
    one_task(&job, turns);
    job.manifest(&http_manifest(&llm, "send_reasoning_content = true", ""));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(
        sent_assistant_messages(&llm)[0]["reasoning_content"],
        "plan"
    );
}

/// A model that thinks aloud first, then uses a tool, then finishes.
fn talkative() -> Value {
    json!([
        {"content": "I will look at the files first."},
        {"calls": [["bash", {"command": "echo looked"}]]},
        finish("looked")
    ])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_text_reply_is_answered_with_the_continue_prompt_by_default() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    one_task(&job, talkative());
    job.manifest(&http_manifest(&llm, "", ""));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = &job.results()[0];
    assert_eq!(
        (r["final"].as_str(), r["steps"].as_u64()),
        (Some("looked"), Some(3))
    );
    let messages = job.trajectory("t1")["messages"].as_array().unwrap().clone();
    assert_eq!(messages[2]["content"], "I will look at the files first.");
    assert_eq!(
        messages[3],
        json!({"role": "user", "content": "Continue. When you are done, call the `finish` tool with your answer."})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn on_text_finish_takes_the_text_as_the_answer() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    one_task(&job, talkative());
    job.manifest(&http_manifest(&llm, "", "[agent]\non_text = \"finish\"\n"));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let r = &job.results()[0];
    assert_eq!(
        (r["final"].as_str(), r["steps"].as_u64()),
        (Some("I will look at the files first."), Some(1))
    );
    assert_eq!(llm.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_model_that_only_talks_ends_at_max_steps_with_the_custom_prompt() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    let chatter: Vec<Value> = (0..6)
        .map(|i| json!({"content": format!("thought {i}"), "finish_reason": if i == 1 { "length" } else { "stop" }}))
        .collect();
    one_task(&job, Value::Array(chatter));
    job.manifest(&http_manifest(
        &llm,
        "",
        "[agent]\nmax_steps = 4\ncontinue_prompt = \"Use a tool.\"\n",
    ));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let r = &job.results()[0];
    assert_eq!(
        (r["status"].as_str(), r["steps"].as_u64()),
        (Some("max_steps"), Some(4))
    );
    let messages = job.trajectory("t1")["messages"].as_array().unwrap().clone();
    let nudges = messages
        .iter()
        .filter(|m| m["role"] == "user" && m["content"] == "Use a tool.")
        .count();
    // Each text reply, the cut one too, got the prompt.
    assert_eq!(nudges, 4);
    let bad = TestJob::new();
    one_task(&bad, talkative());
    bad.manifest(&http_manifest(
        &llm,
        "",
        "[agent]\ncontinue_prompt = \" \"\n",
    ));
    let out = bad.convoy(&["validate", "job.toml"], ENV).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("agent.continue_prompt"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_same_500_twice_fails_the_task_without_spending_every_retry() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    let crash = json!({"status": 500, "message": "TypeError: cannot template this\nTraceback ..."});
    let same =
        json!([{"faults": [crash, crash, crash, crash], "calls": [["finish", {"message": "x"}]]}]);
    let varying = json!([{"faults": [
        {"status": 500, "message": "worker 1 died"},
        {"status": 500, "message": "worker 2 died"}
    ], "calls": [["finish", {"message": "recovered"}]]}]);
    job.tasks(&[
        json!({"id": "same", "script": script(same)}),
        json!({"id": "varying", "script": script(varying)}),
    ]);
    job.manifest(&http_manifest(
        &llm,
        "max_retries = 8",
        "[run]\nworkers = 1\n",
    ));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let results = job.results();
    let same = results.iter().find(|r| r["id"] == "same").unwrap();
    assert_eq!(same["status"], "failed");
    assert_eq!(
        same["attempt"], 1,
        "a deterministic error is not tried again"
    );
    let error = same["error"].as_str().unwrap();
    assert!(
        error.contains("HTTP 500 twice") && error.ends_with("TypeError: cannot template this"),
        "{error}"
    );
    let varying = results.iter().find(|r| r["id"] == "varying").unwrap();
    assert_eq!(varying["status"], "ok");
    // Two requests for `same`, three for `varying`.
    assert_eq!(llm.requests().len(), 5);
    assert_eq!(
        job.summary()["llm"]["retries_by_reason"],
        json!({"deterministic_http_500": 1, "http_500": 3})
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_endpoint_exits_4_before_anything_runs() {
    // A port nobody listens on.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let job = TestJob::new();
    one_task(&job, json!([finish("x")]));
    let llm = FakeLlm::start().await;
    let body = http_manifest(&llm, "connect_timeout = \"2s\"", "")
        .replace(&llm.base_url(), &format!("http://127.0.0.1:{port}/v1"));
    job.manifest(&body);
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains(&format!(
            "cannot reach the LLM endpoint http://127.0.0.1:{port}/v1"
        )) && log.contains("check llm.base_url and that the server is running"),
        "{log}"
    );
    assert!(job.results().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_wrong_path_exits_4_naming_base_url() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    one_task(&job, json!([finish("x")]));
    // The server serves under /v1; the manifest forgot it.
    let body =
        http_manifest(&llm, "", "").replace(&llm.base_url(), &format!("http://{}", llm.addr));
    job.manifest(&body);
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains("neither GET")
            && log.contains("HTTP 404")
            && log.contains("check llm.base_url"),
        "{log}"
    );
    assert!(llm.requests().is_empty(), "no conversation started");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_key_exits_4_naming_the_variable() {
    let llm = FakeLlm::start().await;
    llm.require_key("sk-the-right-one");
    let job = TestJob::new();
    one_task(&job, json!([finish("x")]));
    job.manifest(&http_manifest(&llm, "", ""));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains("rejected the credentials (HTTP 401: Invalid API Key)")
            && log.contains("check the key in `CONVOY_TEST_KEY` (llm.api_key_env)"),
        "{log}"
    );
    assert!(!log.contains(KEY), "the key is never printed");
    assert!(job.results().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_without_models_is_checked_with_one_chat_request() {
    let llm = FakeLlm::start().await;
    llm.without_models();
    let job = TestJob::new();
    one_task(&job, json!([finish("fine")]));
    job.manifest(&http_manifest(&llm, "", ""));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let reqs = llm.requests();
    // The probe (one token, no tools), then the conversation.
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[0].body["max_tokens"], 1);
    assert!(reqs[0].body.get("tools").is_none());
    assert_eq!(job.results()[0]["final"], "fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_works_without_the_key_and_warns_that_run_needs_it() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    one_task(&job, json!([finish("x")]));
    job.manifest(&http_manifest(&llm, "", ""));
    let out = job.convoy(&["validate", "job.toml"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains("the environment variable `CONVOY_TEST_KEY` (llm.api_key_env) is not set: `convoy run` will need it"),
        "{log}"
    );
    // `run` does need it, before anything starts.
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(stderr(&out).contains("CONVOY_TEST_KEY"), "{}", stderr(&out));
    assert!(llm.requests().is_empty());
}

/// `open_fds` of the first and last rows of metrics.csv.
fn open_fds_first_and_last(job: &TestJob) -> (u64, u64) {
    let text = std::fs::read_to_string(job.path("out/metrics.csv")).unwrap();
    let mut lines = text.lines();
    let col = lines
        .next()
        .unwrap()
        .split(',')
        .position(|h| h == "open_fds")
        .unwrap();
    let fds: Vec<u64> = lines
        .map(|l| l.split(',').nth(col).unwrap().parse().unwrap())
        .collect();
    (fds[0], *fds.last().unwrap())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_http_connections_are_closed_before_the_final_sample() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    // The instant model: one `true` through bash, then finish.
    let rows: Vec<Value> = (0..400)
        .map(|i| json!({"id": format!("t{i}"), "script": "true"}))
        .collect();
    job.tasks(&rows);
    job.manifest(&http_manifest(
        &llm,
        "",
        "[run]\nworkers = 256\n[monitor]\ninterval = \"200ms\"\n",
    ));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(job.results().len(), 400);
    let (first, last) = open_fds_first_and_last(&job);
    eprintln!("convoy's open FDs: first sample {first}, last sample {last}");
    assert!(
        last <= first + 8,
        "open FDs went from {first} to {last}: idle connections were kept"
    );
}
