//! The model gateway's workspace end: the real helper (`convoy shim`)
//! serving HTTP on a loopback port, each model call waiting until it is
//! fetched over the helper's stream (`gateway_next`) and answered
//! (`gateway_answer`). Real HTTP from reqwest, as an agent sends it.

mod support;

use std::time::Duration;

use convoy::workspace::Pin;
use serde_json::{json, Value};
use support::helper::Helper;

async fn helper_with_gateway() -> (Helper, tempfile::TempDir, String) {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = Helper::start(&tmp.path().join("root"), "none").await;
    let opened = h.call(json!({"op": "gateway_open"})).await;
    assert_eq!(opened["kind"], "gateway_port", "{opened}");
    let port = opened["port"].as_u64().unwrap();
    let again = h.call(json!({"op": "gateway_open"})).await;
    assert_eq!(again["port"], port, "a second open is the first's port");
    (h, tmp, format!("http://127.0.0.1:{port}"))
}

fn post(url: &str, token: &str, body: String) -> tokio::task::JoinHandle<reqwest::Response> {
    let url = format!("{url}/v1/chat/completions");
    let token = token.to_string();
    tokio::spawn(async move {
        reqwest::Client::new()
            .post(url)
            .bearer_auth(token)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .expect("the gateway answers")
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_call_waits_for_convoy_and_gets_its_answer_as_given() {
    let (mut h, _tmp, url) = helper_with_gateway().await;
    let body = json!({"model": "m", "messages": [{"role": "user", "content": "hé"}]}).to_string();
    let client = post(&url, "tok-1", body.clone());
    let fetched = h.call(json!({"op": "gateway_next", "max": 8})).await;
    assert_eq!(fetched["kind"], "gateway", "{fetched}");
    let call = &fetched["calls"][0];
    assert_eq!(call["method"], "POST");
    assert_eq!(call["path"], "/v1/chat/completions");
    assert_eq!(call["authorization"], "Bearer tok-1");
    assert_eq!(call["body"], body.as_str());
    let answer = "data: {\"x\":1}\n\ndata: [DONE]\n\n";
    let sent = h
        .call(
            json!({"op": "gateway_answer", "call": call["call"], "status": 201,
            "content_type": "text/event-stream", "body": answer}),
        )
        .await;
    assert_eq!(sent["kind"], "done", "{sent}");
    let resp = client.await.unwrap();
    assert_eq!(resp.status().as_u16(), 201);
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.text().await.unwrap(), answer);
    // An answer to a call that never was is refused.
    let bogus = h
        .call(json!({"op": "gateway_answer", "call": 999, "status": 200,
            "content_type": "application/json", "body": "{}"}))
        .await;
    assert_eq!(bogus["error"], "bad_request", "{bogus}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn other_paths_are_404_with_a_json_error_and_models_is_forwarded() {
    let (mut h, _tmp, url) = helper_with_gateway().await;
    let client = reqwest::Client::new();
    for (method, path) in [
        ("GET", "/v1/other"),
        ("POST", "/v1/models"),
        ("GET", "/v1/chat/completions"),
    ] {
        let resp = client
            .request(method.parse().unwrap(), format!("{url}{path}"))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status().as_u16(), 404, "{method} {path}");
        let body: Value = resp.json().await.unwrap();
        assert!(
            body["error"]["message"].as_str().unwrap().contains(path),
            "{body}"
        );
    }
    let models = tokio::spawn(client.get(format!("{url}/v1/models")).send());
    let fetched = h.call(json!({"op": "gateway_next", "max": 8})).await;
    let call = &fetched["calls"][0];
    assert_eq!(
        (call["method"].as_str(), call["path"].as_str()),
        (Some("GET"), Some("/v1/models"))
    );
    assert_eq!(call["authorization"], Value::Null);
    h.call(
        json!({"op": "gateway_answer", "call": call["call"], "status": 200,
        "content_type": "application/json", "body": "{\"data\":[]}"}),
    )
    .await;
    let resp = models.await.unwrap().unwrap();
    assert_eq!(resp.text().await.unwrap(), "{\"data\":[]}");
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_gives_up_before_convoy_fetches_its_call_is_forgotten() {
    let (mut h, _tmp, url) = helper_with_gateway().await;
    let gone = reqwest::Client::new()
        .post(format!("{url}/v1/chat/completions"))
        .timeout(Duration::from_millis(300))
        .body("{\"gone\":true}")
        .send()
        .await;
    assert!(gone.is_err(), "nobody answered it");
    // The helper notices the closed connection at once; give it a moment.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let kept = post(&url, "t", "{\"kept\":true}".into());
    let fetched = h.call(json!({"op": "gateway_next", "max": 8})).await;
    let bodies: Vec<&str> = fetched["calls"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["body"].as_str().unwrap())
        .collect();
    assert_eq!(bodies, ["{\"kept\":true}"]);
    let call = fetched["calls"][0]["call"].clone();
    h.call(json!({"op": "gateway_answer", "call": call, "status": 200,
        "content_type": "application/json", "body": "{}"}))
        .await;
    assert_eq!(kept.await.unwrap().status().as_u16(), 200);
    h.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_calls_at_once_each_get_their_own_answer() {
    let (mut h, _tmp, url) = helper_with_gateway().await;
    let clients: Vec<_> = (0..200)
        .map(|i| post(&url, &format!("tok-{i}"), json!({"n": i}).to_string()))
        .collect();
    let mut answered = 0;
    let mut batches = 0;
    while answered < 200 {
        let fetched = h.call(json!({"op": "gateway_next", "max": 64})).await;
        let calls = fetched["calls"].as_array().unwrap().clone();
        assert!(!calls.is_empty() && calls.len() <= 64, "{}", calls.len());
        batches += 1;
        for c in calls {
            let body: Value = serde_json::from_str(c["body"].as_str().unwrap()).unwrap();
            assert_eq!(
                c["authorization"].as_str().unwrap(),
                format!("Bearer tok-{}", body["n"]),
                "a call keeps its own token"
            );
            let reply = json!({"echo": body["n"]}).to_string();
            h.call(
                json!({"op": "gateway_answer", "call": c["call"], "status": 200,
                "content_type": "application/json", "body": reply}),
            )
            .await;
            answered += 1;
        }
    }
    assert!(batches < 200, "calls come in batches: {batches} polls");
    for (i, c) in clients.into_iter().enumerate() {
        let got: Value = c.await.unwrap().json().await.unwrap();
        assert_eq!(got, json!({"echo": i}), "client {i} got another's answer");
    }
    h.shutdown().await;
}

/// Answers each call with what it was sent, as convoy's handler would
/// answer with the model's reply.
struct Echo;

impl convoy::workspace::gateway::GatewayHandler for Echo {
    async fn handle(
        &self,
        call: convoy::workspace::gateway::GatewayCall,
    ) -> convoy::workspace::gateway::GatewayReply {
        convoy::workspace::gateway::GatewayReply::json(
            200,
            &json!({"auth": call.authorization, "path": call.path, "body": call.body}),
        )
    }
}

/// The convoy end on a real Docker workspace without a network: a
/// session's process reaches the gateway on the container's loopback and
/// gets convoy's answer.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_in_a_container_without_network_reaches_convoy_through_the_gateway() {
    let job = support::TestJob::new();
    job.tasks(&[json!({"id": "t", "commands": ["true"]})]);
    job.manifest(&support::hostile::docker_job("network = \"none\"\n", ""));
    let loaded = convoy::manifest::load(&job.path("job.toml")).expect("the manifest loads");
    // The helper copied into the container: the real convoy binary (this
    // test's own binary is not one).
    std::env::set_var("CONVOY_HELPER", support::convoy_bin());
    let ws = convoy::workspace::Workspace::boot(&loaded, "gateway-test")
        .await
        .expect("the workspace boots");
    let server = ws
        .serve_gateway(std::sync::Arc::new(Echo))
        .await
        .expect("the gateway starts");
    let session = ws.open_session(&Pin::default(), None).await.unwrap();
    let client = format!(
        "python3 -c \"import urllib.request as u; r = u.Request('http://127.0.0.1:{}/v1/chat/completions', data=b'{{\\\"n\\\": 7}}', headers={{'Authorization': 'Bearer tok'}}); print(u.urlopen(r).read().decode())\"",
        server.port
    );
    let out = session
        .run(&client, Duration::from_secs(60), 100_000)
        .await
        .unwrap();
    assert_eq!(out.exit_code, 0, "{}", out.output);
    let got: Value = serde_json::from_str(out.output.trim()).expect(&out.output);
    assert_eq!(
        got,
        json!({"auth": "Bearer tok", "path": "/v1/chat/completions", "body": "{\"n\": 7}"})
    );
    session.close().await.unwrap();
    drop(server);
    ws.finish().await;
    ws.shutdown().await;
}

/// A storm of 429s upstream is convoy's to weather: external agents (the
/// example agent, which gives up on any HTTP error) see only replies, a
/// little later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn external_agents_never_see_an_upstream_429_storm() {
    use support::fake_llm::{FakeLlm, Storm};
    let llm = FakeLlm::start().await;
    llm.storm(Storm {
        p429: 0.2,
        p503: 0.0,
        retry_after_s: Some(0),
    });
    let job = support::TestJob::new();
    let agent = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agent/run.py");
    job.manifest(&support::http_manifest(
        &llm,
        "max_retries = 20",
        &format!(
            "[agent]\nkind = \"external\"\ncommand = \"python3 {}\"\n",
            agent.display()
        ),
    ));
    std::fs::create_dir_all(job.path("work")).unwrap();
    let turns: Vec<Value> = (0..4)
        .map(|i| json!({"content": null, "calls": [["bash", {"command": format!("echo {i}")}]]}))
        .collect();
    let rows: Vec<Value> = (0..20)
        .map(|i| json!({"id": format!("s{i}"), "script": json!({"turns": turns}).to_string()}))
        .collect();
    job.tasks(&rows);
    let out = job.run(&[("CONVOY_TEST_KEY", support::KEY)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    let results = job.results();
    assert_eq!(results.len(), 20);
    for r in &results {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["steps"], 5, "{r}");
    }
    let throttled = llm.requests().iter().filter(|r| r.status == 429).count();
    assert!(throttled >= 5, "the storm hit: {throttled} 429s");
    let calls = std::fs::read_to_string(job.path("out/calls.jsonl")).unwrap();
    assert_eq!(calls.lines().count(), 100);
    assert!(
        calls.lines().all(|l| l.contains("\"status\":200")),
        "the agents saw only replies"
    );

    // Such a run is a run like any other: it resumes (nothing left to
    // do), exports and reports.
    let again = job.run(&[("CONVOY_TEST_KEY", support::KEY)]).await;
    assert_eq!(again.status.code(), Some(0), "{}", support::stderr(&again));
    assert_eq!(job.results().len(), 20, "nothing ran twice");
    let exported = job.convoy(&["export", "out"], &[]).await;
    assert_eq!(
        exported.status.code(),
        Some(0),
        "{}",
        support::stderr(&exported)
    );
    let lines: Vec<Value> = String::from_utf8_lossy(&exported.stdout)
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 20);
    for l in &lines {
        // System, user, 4 x (call, result), the finish call.
        assert_eq!(l["messages"].as_array().unwrap().len(), 11, "{l}");
        assert_eq!(
            l["tools"][0]["function"]["name"], "bash",
            "the agent's own tools"
        );
    }
    let report = job.convoy(&["report", "out", "--json"], &[]).await;
    let report: Value = serde_json::from_slice(&report.stdout).unwrap();
    assert_eq!(report["counts"]["ok"], 20, "{report}");
}

/// 200 external conversations at once: every call convoy records belongs
/// to the task whose agent made it (each script names its task).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_external_conversations_at_once_never_cross() {
    use support::fake_llm::FakeLlm;
    let llm = FakeLlm::start().await;
    let job = support::TestJob::new();
    let agent = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agent/run.py");
    job.manifest(&support::http_manifest(
        &llm,
        "max_in_flight = 512",
        &format!(
            "[agent]\nkind = \"external\"\ncommand = \"python3 {}\"\n[run]\nworkers = 200\n",
            agent.display()
        ),
    ));
    std::fs::create_dir_all(job.path("work")).unwrap();
    let rows: Vec<Value> = (0..200)
        .map(|i| {
            let turns = json!([{"content": null, "calls": [["bash", {"command": format!("echo from x{i}")}]]}]);
            json!({"id": format!("x{i}"), "script": json!({"task": format!("x{i}"), "turns": turns}).to_string()})
        })
        .collect();
    job.tasks(&rows);
    let out = job.run(&[("CONVOY_TEST_KEY", support::KEY)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", support::stderr(&out));
    assert!(job.results().iter().all(|r| r["status"] == "ok"));
    let calls: Vec<Value> = std::fs::read_to_string(job.path("out/calls.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(
        calls.len(),
        400,
        "two calls each: the tool call, then finish"
    );
    for c in &calls {
        let id = c["id"].as_str().unwrap();
        let added = c["messages_added"].to_string();
        // Every task named in what the call added (its prompt, its tool
        // call, its tool's output) is the call's own.
        let named: Vec<&str> = added
            .split("from x")
            .skip(1)
            .map(|rest| {
                &rest[..rest
                    .find(|ch: char| !ch.is_ascii_digit())
                    .unwrap_or(rest.len())]
            })
            .collect();
        assert!(!named.is_empty(), "{id}: {added}");
        assert!(
            named.iter().all(|n| format!("x{n}") == id),
            "a call of {id} holds another task's messages: {added}"
        );
    }
    // Nothing left and nothing leaked. The verdict may be `unknown` only
    // because a helper busy with 200 sessions on 2 cores did not answer a
    // monitor sample in time (before 2026-11-26 this asserted `clean`,
    // and failed 3 of 6 runs on this machine at the earlier build too).
    let summary = job.summary();
    let leaks = &summary["leaks"];
    assert_eq!(leaks["findings"], serde_json::json!([]), "{summary}");
    assert_eq!(leaks["stray_sessions"], serde_json::json!([]), "{summary}");
    assert_eq!(leaks["stray_processes"], serde_json::json!([]), "{summary}");
    assert_eq!(summary["metrics"]["tmux_sessions_end"], 0, "{summary}");
    assert_eq!(summary["metrics"]["workspace_procs_end"], 0, "{summary}");
    match leaks["verdict"].as_str() {
        Some("clean") => {}
        Some("unknown") => assert!(
            leaks["why"]
                .as_array()
                .is_some_and(|why| why.iter().all(|w| w
                    .as_str()
                    .is_some_and(|w| w.contains("no answer within 10s to Stats")))),
            "{summary}"
        ),
        _ => panic!("leak verdict: {summary}"),
    }
}
