//! A request an external agent wrote, sent upstream through convoy's own
//! model client (`ModelHandle::forward`, what the model gateway calls):
//! what the endpoint receives, retries it never sees, errors it gets back
//! with the endpoint's status and body, usage in the job's totals. The
//! library against the fake endpoint; no workspace, no binary.

mod support;

use serde_json::{json, Map, Value};
use support::fake_llm::{FakeLlm, Storm};
use support::{http_manifest, script, TestJob, KEY};

/// The job's model for a manifest on `llm` with `llm_keys` in `[llm]`.
fn job_llm(llm: &FakeLlm, llm_keys: &str) -> (TestJob, convoy::llm::Llm) {
    // Every test sets the same value: tests run on threads of one process.
    std::env::set_var("CONVOY_TEST_KEY", KEY);
    let job = TestJob::new();
    job.tasks(&[json!({"id": "t"})]);
    job.manifest(&http_manifest(llm, llm_keys, ""));
    let loaded = convoy::manifest::load(&job.path("job.toml")).expect("the manifest loads");
    let model = convoy::llm::Llm::new(&loaded.manifest.llm).expect("the client builds");
    (job, model)
}

fn object(text: &str) -> Map<String, Value> {
    serde_json::from_str(text).expect("a JSON object")
}

/// A request whose only user message is the fake endpoint's script.
fn request(turns: Value) -> Map<String, Value> {
    let user = json!({"role": "user", "content": script(turns)});
    object(&json!({"model": "agent-model", "messages": [user]}).to_string())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_endpoint_gets_the_agents_request_with_the_manifests_model_and_extra_body() {
    let llm = FakeLlm::start().await;
    let (_job, model) = job_llm(
        &llm,
        "temperature = 0.1\nmax_tokens = 64\nextra_body = { top_k = 3, user = \"owner\" }\n\
         extra_headers = { X-Job = \"j1\" }",
    );
    let turns = script(json!([{"calls": [["t", {"x": 1}]]}, {"content": "second"}]));
    // Not convoy's canonical form: assistant keys in the agent's order, a
    // tool call whose `type` comes first, non-ASCII text.
    let messages = format!(
        r#"[{{"role":"system","content":"sys"}},{{"role":"user","content":{}}},{{"content":"","role":"assistant","tool_calls":[{{"type":"function","id":"c1","function":{{"arguments":"{{\"x\":1}}","name":"t"}}}}]}},{{"tool_call_id":"c1","role":"tool","content":"héllo\nwörld"}}]"#,
        Value::String(turns)
    );
    let tools = r#"[{"type":"function","function":{"name":"t","parameters":{"type":"object"}}}]"#;
    let agent = format!(
        r#"{{"model":"agent-model","messages":{messages},"stream":true,"stream_options":{{"include_usage":true}},"tools":{tools},"tool_choice":"auto","stop":["\n\n"],"response_format":{{"type":"text"}},"temperature":0.7,"user":"agent"}}"#
    );
    let handle = model.for_task(&Map::new());
    let got = handle.forward(object(&agent)).await.expect("a reply");

    let reqs = llm.requests();
    assert_eq!(reqs.len(), 1);
    let sent = &reqs[0];
    let raw = std::str::from_utf8(&sent.raw).expect("UTF-8");
    assert!(
        raw.contains(&format!(r#""messages":{messages},"#)),
        "the messages are not byte for byte the agent's: {raw}"
    );
    assert_eq!(
        sent.body,
        json!({
            "model": "fake-model",
            "messages": serde_json::from_str::<Value>(&messages).unwrap(),
            "tools": serde_json::from_str::<Value>(tools).unwrap(),
            "tool_choice": "auto",
            "stop": ["\n\n"],
            "response_format": {"type": "text"},
            "temperature": 0.7,
            "user": "owner",
            "max_tokens": 64,
            "top_k": 3,
        })
    );
    assert_eq!(
        sent.authorization.as_deref(),
        Some(format!("Bearer {KEY}").as_str())
    );
    assert_eq!(sent.headers["x-job"], "j1");

    // The reply as received, and parsed.
    assert_eq!(got.response["id"], "chatcmpl-fake");
    assert_eq!(got.response["choices"][0]["message"]["content"], "second");
    assert_eq!(got.reply.message, got.response["choices"][0]["message"]);
    assert_eq!(got.reply.finish_reason.as_deref(), Some("stop"));
    assert_eq!(got.reply.usage.total_tokens, 15);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_429_upstream_is_retried_and_the_agent_sees_only_replies() {
    let llm = FakeLlm::start().await;
    llm.storm(Storm {
        p429: 0.2,
        p503: 0.0,
        retry_after_s: None,
    });
    let (_job, model) = job_llm(&llm, "max_retries = 20");
    let calls: Vec<_> = (0..40)
        .map(|i| {
            let handle = model.for_task(&Map::new());
            let req = request(json!([{"content": format!("answer {i}")}]));
            tokio::spawn(async move { handle.forward(req).await })
        })
        .collect();
    let mut retries = 0;
    for (i, call) in calls.into_iter().enumerate() {
        let got = call
            .await
            .expect("no panic")
            .expect("a reply, never the 429");
        assert_eq!(
            got.response["choices"][0]["message"]["content"],
            format!("answer {i}")
        );
        retries += got.reply.usage.retries;
    }
    let statuses: Vec<u16> = llm.requests().iter().map(|r| r.status).collect();
    let throttled = statuses.iter().filter(|s| **s == 429).count() as u64;
    assert!(throttled > 0, "the storm never hit: {statuses:?}");
    assert_eq!(retries, throttled);
    let report = model.report();
    assert_eq!(report.retries_by_reason.get("http_429"), Some(&throttled));
    // Usage counts every reply once, the retried ones included.
    assert_eq!(report.requests, 40);
    assert_eq!((report.prompt_tokens, report.completion_tokens), (400, 200));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_400_upstream_comes_back_with_its_status_and_body() {
    let llm = FakeLlm::start().await;
    let (_job, model) = job_llm(&llm, "");
    let handle = model.for_task(&Map::new());

    let err = handle
        .forward(request(json!([{"status": 400}])))
        .await
        .expect_err("the endpoint refused it");
    assert!(
        matches!(err, convoy::llm::LlmError::Rejected { status: 400, .. }),
        "{err:?}"
    );
    let (status, body) = err.upstream().expect("the endpoint's answer");
    assert_eq!(status, 400);
    let body: Value = serde_json::from_str(body).expect("the endpoint's JSON");
    assert_eq!(body["error"]["message"], "scripted failure");

    let too_long = "This model's maximum context length is 8192 tokens";
    let err = handle
        .forward(request(
            json!([{"faults": [{"status": 400, "message": too_long}]}]),
        ))
        .await
        .expect_err("the context is full");
    assert!(
        matches!(err, convoy::llm::LlmError::ContextLimit { .. }),
        "{err:?}"
    );
    let (status, body) = err.upstream().expect("the endpoint's answer");
    assert_eq!(status, 400);
    assert!(body.contains(too_long), "{body}");

    // Not retried, and no reply to count.
    assert_eq!(llm.requests().len(), 2);
    assert_eq!(model.report().requests, 0);
}
