//! The LLM client against an endpoint that misbehaves: the fake server
//! injects 429s with Retry-After, 503 bursts, stalls, broken connections,
//! malformed replies, outages and a storm of faults over 1,000
//! conversations. Real binary, real tmux, real HTTP.

mod support;

use std::time::Duration;

use serde_json::{json, Value};
use support::fake_llm::{FakeLlm, Storm};
use support::{http_manifest, observations, script, stderr, TestJob, KEY};

// Retries are logged at info level.
const ENV: &[(&str, &str)] = &[("CONVOY_TEST_KEY", KEY), ("RUST_LOG", "info")];
/// Each retry is a debug line (info has a summary per monitor interval).
const ENV_DEBUG: &[(&str, &str)] = &[("CONVOY_TEST_KEY", KEY), ("RUST_LOG", "info,convoy=debug")];

/// One task whose conversation is `turns`.
fn one_task(job: &TestJob, turns: Value) {
    job.tasks(&[json!({"id": "t1", "script": script(turns)})]);
}

fn retries_by_reason(job: &TestJob) -> Value {
    job.summary()["llm"]["retries_by_reason"].clone()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_waited_out_before_the_retry() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    one_task(
        &job,
        json!([{"calls": [["finish", {"message": "fine"}]], "faults": [{"status": 429, "retry_after": "2"}]}]),
    );
    job.manifest(&http_manifest(&llm, "", ""));
    let out = job.run(ENV_DEBUG).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let reqs = llm.requests();
    assert_eq!(
        reqs.iter().map(|r| r.status).collect::<Vec<_>>(),
        [429, 200]
    );
    // The server's own clock: the retry came no sooner than Retry-After.
    let gap = reqs[1].at - reqs[0].at;
    assert!(gap >= Duration::from_millis(1990), "retried after {gap:?}");
    let r = &job.results()[0];
    assert_eq!(r["usage"]["retries"], 1);
    assert_eq!(retries_by_reason(&job), json!({"http_429": 1}));
    assert!(stderr(&out).contains("HTTP 429"), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bursts_of_503_stalls_and_broken_connections_are_retried() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    let rows = [
        (
            "burst",
            json!([{"status": 503}, {"status": 503}, {"status": 503}]),
        ),
        ("stall", json!([{"stall_ms": 4000}])),
        ("reset", json!([{"reset": true}, {"reset": true}])),
    ];
    job.tasks(
        &rows
            .iter()
            .map(|(id, faults)| {
                let turns = json!([{"content": format!("{id} done"), "faults": faults}]);
                json!({"id": id, "script": script(turns)})
            })
            .collect::<Vec<_>>(),
    );
    job.manifest(&http_manifest(&llm, "timeout = \"1s\"", ""));
    let out = job.run(ENV_DEBUG).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = job.results();
    let retries = |id: &str| {
        results.iter().find(|r| r["id"] == id).unwrap()["usage"]["retries"]
            .as_u64()
            .unwrap()
    };
    assert_eq!(
        (retries("burst"), retries("stall"), retries("reset")),
        (3, 1, 2)
    );
    assert!(results.iter().all(|r| r["status"] == "ok"));
    assert_eq!(
        retries_by_reason(&job),
        json!({"connection": 2, "http_503": 3, "timeout": 1})
    );
    let log = stderr(&out);
    assert!(log.contains("timed out"), "{log}");
    assert!(log.contains("connection broke"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replies_as_real_endpoints_send_them() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    let messy = json!([
        {"content": "let me try a few things", "reasoning": "the user wants hi", "calls": [
            ["bash", "{\"command\": \"echo hi"],
            ["python", {"code": "print(1)"}],
            ["bash", {"command": "echo hi"}]
        ]},
        {"faults": [{"body": {"id": "x", "choices": []}}], "content": null,
         "calls": [["finish", {"message": "said hi"}]]}
    ]);
    let cut = json!([{"content": "The answer is a long story that", "finish_reason": "length"}]);
    job.tasks(&[
        json!({"id": "messy", "script": script(messy)}),
        json!({"id": "cut", "script": script(cut)}),
    ]);
    // A cut text reply is an error only where text is the answer.
    job.manifest(&http_manifest(
        &llm,
        "",
        "[run]\nworkers = 1\n[agent]\non_text = \"finish\"\n",
    ));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    let results = job.results();
    let messy = results.iter().find(|r| r["id"] == "messy").unwrap();
    assert_eq!(messy["status"], "ok");
    assert_eq!(messy["final"], "said hi");
    assert_eq!(messy["usage"]["invalid_tool_calls"], 2);
    assert_eq!(messy["usage"]["retries"], 1, "the empty reply was retried");
    let traj = job.trajectory("messy");
    assert_eq!(
        traj["messages"][2]["reasoning_content"],
        "the user wants hi"
    );
    let obs = observations(&traj);
    assert!(obs[0].contains("not valid JSON"), "{obs:?}");
    assert!(obs[1].contains("no tool `python`"), "{obs:?}");
    assert_eq!(obs[2].trim(), "hi");
    // The trajectory keeps reasoning_content; the endpoint never gets it back.
    for r in llm.requests() {
        assert!(
            !r.body.to_string().contains("reasoning_content"),
            "sent back: {}",
            r.body
        );
    }
    assert_eq!(retries_by_reason(&job), json!({"malformed_reply": 1}));
    let cut = results.iter().find(|r| r["id"] == "cut").unwrap();
    assert_eq!(cut["status"], "failed");
    assert!(
        cut["error"].as_str().unwrap().contains("token limit"),
        "{cut}"
    );
    assert_eq!(job.summary()["usage"]["invalid_tool_calls"], 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_options_extra_body_and_headers_reach_the_endpoint() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    one_task(&job, json!([{"content": "ok"}]));
    let keys = r#"temperature = 0.2
top_p = 0.9
max_tokens = 512
seed = 42
tool_choice = "required"
parallel_tool_calls = false
[llm.extra_body]
reasoning_effort = "high"
chat_template_kwargs = { enable_thinking = false }
[llm.extra_headers]
X-Team = "data-synthesis"
"#;
    job.manifest(&http_manifest(&llm, keys, ""));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let req = &llm.requests()[0];
    let b = &req.body;
    assert_eq!(
        (
            b["temperature"].as_f64(),
            b["top_p"].as_f64(),
            b["max_tokens"].as_u64(),
            b["seed"].as_i64()
        ),
        (Some(0.2), Some(0.9), Some(512), Some(42))
    );
    assert_eq!(b["tool_choice"], "required");
    assert_eq!(b["parallel_tool_calls"], false);
    assert_eq!(b["reasoning_effort"], "high");
    assert_eq!(b["chat_template_kwargs"]["enable_thinking"], false);
    assert_eq!(b["model"], "fake-model");
    assert_eq!(req.headers["x-team"], "data-synthesis");
    assert_eq!(
        req.authorization.as_deref(),
        Some(&*format!("Bearer {KEY}"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_credentials_stop_the_job_after_the_first_tasks() {
    let llm = FakeLlm::start().await;
    llm.fail_with(401, "invalid api key");
    let job = TestJob::new();
    let rows: Vec<Value> = (0..200)
        .map(|i| json!({"id": format!("t{i}"), "script": script(json!([]))}))
        .collect();
    job.tasks(&rows);
    job.manifest(&http_manifest(&llm, "", "[run]\nworkers = 4\n"));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains("rejected the credentials (HTTP 401): invalid api key"),
        "{log}"
    );
    assert!(
        llm.requests().len() <= 8,
        "{} requests",
        llm.requests().len()
    );
    // The tasks the 401 hit did not fail on their own: none is recorded,
    // so a rerun with the right key does them all.
    assert!(job.results().is_empty());
    let s = job.summary();
    assert_eq!(s["not_run"], 200);
    assert!(s["stopped_because"]
        .as_str()
        .unwrap()
        .contains("credentials"));
}

fn slow_rows(n: usize) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let turns = json!([
                {"delay_ms": 300, "calls": [["bash", {"command": format!("echo {i}")}]]},
                {"delay_ms": 300, "content": format!("answer {i}")}
            ]);
            json!({"id": format!("t{i}"), "script": script(turns)})
        })
        .collect()
}

/// 20 slow conversations at 4 workers; the endpoint goes down once 2 are
/// done. Returns the job, the running convoy and the address it used.
async fn run_into_an_outage(
    llm_keys: &str,
) -> (TestJob, tokio::process::Child, std::net::SocketAddr) {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    job.tasks(&slow_rows(20));
    job.manifest(&http_manifest(&llm, llm_keys, "[run]\nworkers = 4\n"));
    let child = job.spawn(
        support::convoy_bin(),
        &["run", "job.toml", "--out", "out"],
        ENV,
    );
    job.wait_for_results(2).await;
    llm.go_down();
    (job, child, llm.addr)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_pauses_the_job_which_resumes_when_the_endpoint_returns() {
    let (job, child, addr) = run_into_an_outage("outage_after = 3\nmax_retries = 2").await;
    // Down for longer than max_retries' backoff could bridge: only the
    // outage handling gets the job through.
    tokio::time::sleep(Duration::from_secs(4)).await;
    let back = FakeLlm::start_on(addr).await;
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = job.results();
    assert_eq!(results.len(), 20);
    assert!(results.iter().all(|r| r["status"] == "ok"));
    let log = stderr(&out);
    assert!(log.contains("the LLM endpoint is down"), "{log}");
    assert!(log.contains("answers again"), "{log}");
    assert_eq!(job.summary()["llm"]["outages"], 1);
    assert!(!back.requests().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_outage_longer_than_outage_timeout_exits_4_and_keeps_results() {
    let (job, child, _) = run_into_an_outage("outage_after = 3\noutage_timeout = \"2s\"").await;
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    // The log names the deadline that applies.
    let log = stderr(&out);
    assert!(
        log.contains("(giving up after 2s, llm.outage_timeout)"),
        "{log}"
    );
    let results = job.results();
    assert!(results.len() >= 2 && results.len() < 20, "{results:?}");
    assert!(results.iter().all(|r| r["status"] == "ok"));
    let s = job.summary();
    assert!(
        s["stopped_because"]
            .as_str()
            .unwrap()
            .contains("llm.outage_timeout"),
        "{s}"
    );
    assert_eq!(s["not_run"], 20 - results.len());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_that_never_answers_is_reported_before_the_workspace_boots() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    job.tasks(&slow_rows(5));
    job.manifest(&http_manifest(&llm, "outage_timeout = \"3s\"", ""));
    llm.go_down();
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(
        log.contains("cannot reach the LLM endpoint")
            && log.contains("check llm.base_url and that the server is running"),
        "{log}"
    );
    assert!(job.results().is_empty());
    // Nothing was booted, so nothing ran and nothing is left.
    assert!(job.tmp_entries().is_empty(), "{:?}", job.tmp_entries());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_token_budget_stops_dispatch_and_lets_running_tasks_finish() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    // Each conversation makes 2 requests of 15 tokens: 30 tokens a task.
    let rows: Vec<Value> = (0..10)
        .map(|i| {
            let turns = json!([
                {"calls": [["bash", {"command": "true"}]]},
                {"calls": [["finish", {"message": format!("answer {i}")}]]}
            ]);
            json!({"id": format!("t{i}"), "script": script(turns)})
        })
        .collect();
    job.tasks(&rows);
    job.manifest(&http_manifest(
        &llm,
        "max_total_tokens = 100",
        "[run]\nworkers = 1\n",
    ));
    let out = job.run(ENV).await;
    // 30 used + 30 reserved, 60 + 30, then 90 + 30 > 100: three tasks.
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert_eq!(job.results().len(), 3);
    let s = job.summary();
    assert_eq!(s["not_run"], 7);
    assert_eq!(s["llm"]["prompt_tokens"], 60);
    assert!(
        s["stopped_because"]
            .as_str()
            .unwrap()
            .contains("token budget reached"),
        "{s}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_per_minute_spaces_requests() {
    let llm = FakeLlm::start().await;
    let job = TestJob::new();
    let rows: Vec<Value> = (0..30)
        .map(|i| {
            let turns = json!([{"calls": [["finish", {"message": "ok"}]]}]);
            json!({"id": format!("t{i}"), "script": script(turns)})
        })
        .collect();
    job.tasks(&rows);
    // 10 per second, bursts of at most 10.
    job.manifest(&http_manifest(
        &llm,
        "requests_per_minute = 600",
        "[run]\nworkers = 30\n",
    ));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let reqs = llm.requests();
    assert_eq!(reqs.len(), 30);
    let mut at: Vec<_> = reqs.iter().map(|r| r.at).collect();
    at.sort();
    // After the first 10, each further request needs 0.1 s of refill.
    let span = at[29] - at[0];
    assert!(
        span >= Duration::from_millis(1900),
        "30 requests in {span:?}"
    );
}

/// Reads metrics.csv as (header, rows).
fn metrics(job: &TestJob) -> (Vec<String>, Vec<Vec<f64>>) {
    let text = std::fs::read_to_string(job.path("out/metrics.csv")).unwrap();
    let mut lines = text.lines();
    let header = lines
        .next()
        .unwrap()
        .split(',')
        .map(str::to_string)
        .collect();
    let rows = lines
        .map(|l| l.split(',').map(|v| v.parse().unwrap()).collect())
        .collect();
    (header, rows)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_storm_of_429s_and_503s_over_1000_conversations_ends_all_ok() {
    let llm = FakeLlm::start().await;
    llm.storm(Storm {
        p429: 0.20,
        p503: 0.05,
        retry_after_s: Some(1),
    });
    let job = TestJob::new();
    // The instant model: one `true` through bash, then a final answer.
    let rows: Vec<Value> = (0..1000)
        .map(|i| json!({"id": format!("t{i}"), "script": "true"}))
        .collect();
    job.tasks(&rows);
    job.manifest(&http_manifest(
        &llm,
        "max_in_flight = 64\nmax_retries = 10",
        "[run]\nworkers = 64\n[monitor]\ninterval = \"200ms\"\n",
    ));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let results = job.results();
    assert_eq!(results.len(), 1000);
    assert!(results.iter().all(|r| r["status"] == "ok"));
    let s = job.summary();
    let by_reason = &s["llm"]["retries_by_reason"];
    assert!(by_reason["http_429"].as_u64().unwrap() > 100, "{by_reason}");
    assert!(by_reason["http_503"].as_u64().unwrap() > 20, "{by_reason}");
    // The limiter's trace: cut below the ceiling, then grown back.
    let (header, rows) = metrics(&job);
    let col = header.iter().position(|h| h == "llm_limit").unwrap();
    let limits: Vec<f64> = rows.iter().map(|r| r[col]).collect();
    let (low_at, low) = limits
        .iter()
        .copied()
        .enumerate()
        .filter(|(_, l)| *l > 0.0)
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .unwrap();
    assert!(low < 64.0, "the limit never dropped: {limits:?}");
    let grew_after_a_drop = limits.windows(2).any(|w| w[0] < 64.0 && w[1] > w[0]);
    assert!(grew_after_a_drop, "the limit never recovered: {limits:?}");
    assert!(low_at < limits.len(), "{limits:?}");
    assert!(s["llm"]["limiter"]["cuts"].as_u64().unwrap() >= 1);
}
