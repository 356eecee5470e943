//! Several model servers behind one job (`llm.endpoints`): three fake
//! endpoints on loopback; routing by outstanding requests and weight,
//! stickiness, an endpoint killed mid-run, a slow one, a fallback, a 401.
//! Real binary, real HTTP, local workspace.

mod support;

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};
use support::fake_llm::{FakeLlm, Recorded};
use support::{stderr, TestJob, KEY};

const ENV: &[(&str, &str)] = &[("CONVOY_TEST_KEY", KEY), ("RUST_LOG", "info")];

/// A manifest whose `[llm]` lists `endpoints` (the inside of the list).
fn manifest(endpoints: &str, llm_keys: &str, rest: &str) -> String {
    support::llm_manifest(
        &format!("endpoints = [{endpoints}]\n{llm_keys}"),
        "kind = \"local\"\nworkdir = \"work\"",
        rest,
    )
}

/// Writes `body` as the job's manifest and starts `convoy run` on it.
fn spawn_run(job: &TestJob, body: &str) -> tokio::process::Child {
    job.manifest(body);
    job.spawn(
        support::convoy_bin(),
        &["run", "job.toml", "--out", "out"],
        ENV,
    )
}

/// Three fake endpoints.
async fn three() -> [FakeLlm; 3] {
    [
        FakeLlm::start().await,
        FakeLlm::start().await,
        FakeLlm::start().await,
    ]
}

/// The inside of `llm.endpoints`: each server with more keys of its entry.
fn list(servers: &[(&FakeLlm, &str)]) -> String {
    servers
        .iter()
        .map(|(llm, more)| format!("{{ base_url = \"{}\"{more} }}", llm.base_url()))
        .collect::<Vec<_>>()
        .join(", ")
}

/// `n` conversations of `steps` shell calls then `finish`; each script
/// names its conversation so the servers' records tell them apart.
fn rows(n: usize, steps: usize, delay_ms: u64) -> Vec<Value> {
    (0..n)
        .map(|i| {
            let turns: Vec<Value> = (0..steps)
                .map(|_| json!({"calls": [["bash", {"command": "true"}]], "delay_ms": delay_ms}))
                .collect();
            let script = json!({"turns": turns, "conv": format!("c{i}")}).to_string();
            json!({"id": format!("c{i}"), "script": script})
        })
        .collect()
}

/// The conversation a request belongs to.
fn conv(r: &Recorded) -> String {
    let script = r.body["messages"][1]["content"]
        .as_str()
        .unwrap_or_default();
    let v: Value = serde_json::from_str(script).unwrap_or_default();
    v["conv"].as_str().unwrap_or_default().to_string()
}

/// Requests each server answered 200.
fn answered(llms: &[&FakeLlm]) -> Vec<usize> {
    llms.iter()
        .map(|l| l.requests().iter().filter(|r| r.status == 200).count())
        .collect()
}

/// Every task ended `ok`, each exactly once.
fn all_ok_once(job: &TestJob, n: usize) {
    let results = job.results();
    let ids: BTreeSet<&str> = results.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!(results.len(), n, "one result per task");
    assert_eq!(ids.len(), n, "no task recorded twice");
    for r in &results {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["attempt"], 1, "no task ran twice: {r}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_follows_weights_and_each_conversation_stays_on_its_endpoint() {
    let [a, b, c] = three().await;
    let job = TestJob::new();
    // 120 conversations of 5 requests: 600 requests.
    job.tasks(&rows(120, 4, 0));
    let list = list(&[(&a, ""), (&b, ""), (&c, ", weight = 2")]);
    job.manifest(&manifest(&list, "", "[run]\nworkers = 16\n"));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    all_ok_once(&job, 120);

    let counts = answered(&[&a, &b, &c]);
    let total: usize = counts.iter().sum();
    eprintln!("requests per endpoint (weights 1, 1, 2): {counts:?}");
    assert_eq!(total, 600, "{counts:?}");
    for (n, share) in counts.iter().zip([0.25, 0.25, 0.5]) {
        let got = *n as f64 / total as f64;
        assert!(
            (got - share).abs() <= 0.1 * share,
            "shares {counts:?}: {got} is not within 10% of {share}"
        );
    }
    // Stickiness: every conversation's requests went to one server.
    let mut servers_of: BTreeMap<String, BTreeSet<usize>> = BTreeMap::new();
    for (i, llm) in [&a, &b, &c].iter().enumerate() {
        for r in llm.requests() {
            servers_of.entry(conv(&r)).or_default().insert(i);
        }
    }
    assert_eq!(servers_of.len(), 120);
    for (conv, servers) in &servers_of {
        assert_eq!(servers.len(), 1, "{conv} went to {servers:?}");
    }

    // The summary and the trajectories name the endpoints.
    let s = job.summary();
    let eps = s["llm"]["endpoints"]
        .as_array()
        .expect("per-endpoint figures");
    assert_eq!(eps.len(), 3);
    for (e, n) in eps.iter().zip(&counts) {
        assert_eq!(e["requests"], *n as u64, "{e}");
        assert!(e["latency_p50_s"].as_f64().is_some(), "{e}");
        assert_eq!(e["model"], "fake-model");
    }
    assert_eq!(eps[1]["host"], b.addr.to_string());
    // Each assistant turn names the server that answered it, beside the
    // message (the messages stay plain OpenAI format).
    let hosts = [a.addr.to_string(), b.addr.to_string(), c.addr.to_string()];
    for t in job.trajectories() {
        let turns = t["convoy"]["turns"].as_array().expect("per-turn records");
        assert_eq!(turns.len(), 5, "{t}");
        let first = &turns[0];
        let i = first["endpoint"].as_u64().unwrap() as usize;
        assert_eq!(first["host"], hosts[i]);
        assert_eq!(first["model"], "fake-model");
        for turn in turns {
            assert_eq!(turn["endpoint"], first["endpoint"], "sticky: {t}");
            let m = &t["messages"][turn["message"].as_u64().unwrap() as usize];
            assert_eq!(m["role"], "assistant");
            assert!(m.get("endpoint").is_none() && m.get("convoy").is_none());
        }
        // The server's own record agrees.
        let id = t["id"].as_str().unwrap();
        let servers = [&a, &b, &c];
        assert!(
            servers[i].requests().iter().any(|r| conv(r) == id),
            "{id} on {i}"
        );
    }
    let report = job.convoy(&["report", "out"], ENV).await;
    let text = String::from_utf8_lossy(&report.stdout);
    for (i, n) in counts.iter().enumerate() {
        assert!(
            text.contains(&format!("endpoint {i} ")) && text.contains(&format!(": {n} requests")),
            "{text}"
        );
    }
    let metrics = std::fs::read_to_string(job.path("out/metrics.csv")).unwrap();
    let header = metrics.lines().next().unwrap();
    assert!(
        header.ends_with(
            ",llm_in_flight_0,llm_limit_0,llm_in_flight_1,llm_limit_1,llm_in_flight_2,llm_limit_2"
        ),
        "{header}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_endpoint_gets_fewer_conversations() {
    let [a, b, c] = three().await;
    c.slow(300);
    let job = TestJob::new();
    job.tasks(&rows(60, 2, 20));
    let list = list(&[(&a, ""), (&b, ""), (&c, "")]);
    job.manifest(&manifest(&list, "", "[run]\nworkers = 12\n"));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    all_ok_once(&job, 60);
    let convs = |l: &FakeLlm| l.requests().iter().map(conv).collect::<BTreeSet<_>>().len();
    let (na, nb, nc) = (convs(&a), convs(&b), convs(&c));
    eprintln!("conversations per endpoint (the third 300 ms slower): {na}, {nb}, {nc}");
    assert!(
        nc * 2 < na.min(nb),
        "the slow endpoint got {nc} conversations, the others {na} and {nb}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_endpoint_killed_mid_run_moves_its_requests_and_every_task_ends_ok_once() {
    let [a, b, c] = three().await;
    let job = TestJob::new();
    // Slow turns, so that requests are in flight on `b` when it goes.
    job.tasks(&rows(60, 4, 150));
    let list = list(&[(&a, ""), (&b, ""), (&c, "")]);
    // No retries to spend: only moving without spending one gets the
    // requests that were in flight on `b` through. `b` never comes back:
    // past outage_timeout it is gone, and the job goes on without it.
    let child = spawn_run(
        &job,
        &manifest(
            &list,
            "outage_after = 2\nmax_retries = 0\noutage_timeout = \"1s\"",
            "[run]\nworkers = 12\n",
        ),
    );
    job.wait_for_results(6).await;
    let before = b.requests().len();
    b.go_down();
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    all_ok_once(&job, 60);
    assert!(before > 0, "b served before it went");
    // The conversations that were on `b` finished on the others.
    let on_b: BTreeSet<String> = b.requests().iter().map(conv).collect();
    let elsewhere: BTreeSet<String> = a
        .requests()
        .iter()
        .chain(c.requests().iter())
        .map(conv)
        .collect();
    let moved = on_b.iter().filter(|c| elsewhere.contains(*c)).count();
    eprintln!(
        "killed endpoint: {before} requests before, {} conversations on it, {moved} of them finished elsewhere; answered per endpoint {:?}",
        on_b.len(),
        answered(&[&a, &b, &c])
    );
    assert!(moved > 0, "no conversation of b's moved: {on_b:?}");
    let log = stderr(&out);
    assert!(
        log.contains(&format!("LLM endpoint 1 ({}) is down", b.addr)),
        "{log}"
    );
    // The requests that broke on `b` were sent again elsewhere, each
    // with as many messages as on `b`: the same turn, not a new attempt.
    let broken: Vec<(String, usize)> = b
        .requests()
        .iter()
        .filter(|r| r.status != 200)
        .map(|r| (conv(r), r.body["messages"].as_array().unwrap().len()))
        .collect();
    let answered_elsewhere: BTreeSet<(String, usize)> = a
        .requests()
        .iter()
        .chain(c.requests().iter())
        .filter(|r| r.status == 200)
        .map(|r| (conv(r), r.body["messages"].as_array().unwrap().len()))
        .collect();
    for turn in &broken {
        assert!(
            answered_elsewhere.contains(turn),
            "{turn:?} was not answered elsewhere"
        );
    }
    let s = job.summary();
    let eb = &s["llm"]["endpoints"][1];
    assert_eq!(eb["outages"], 1, "{s}");
    assert!(
        eb["outage_s"].as_f64().unwrap() >= 1.0,
        "the outage still going on counts: {eb}"
    );
    assert!(
        log.contains("has been unreachable for"),
        "b is gone past outage_timeout: {log}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_fallback_serves_only_while_both_primaries_are_down() {
    let [a, b, f] = three().await;
    let job = TestJob::new();
    job.tasks(&rows(40, 3, 100));
    let list = list(&[(&a, ""), (&b, ""), (&f, ", role = \"fallback\"")]);
    let child = spawn_run(
        &job,
        &manifest(
            &list,
            "outage_after = 2\noutage_timeout = \"5m\"",
            "[run]\nworkers = 4\n",
        ),
    );
    job.wait_for_results(4).await;
    assert!(
        f.requests().is_empty(),
        "the fallback served while the primaries were up"
    );
    // One primary down: the other carries the job, not the fallback.
    let a_addr = a.addr;
    a.go_down();
    job.wait_for_results(12).await;
    assert!(
        f.requests().is_empty(),
        "the fallback served while a primary was up"
    );
    b.go_down();
    let down_at = std::time::Instant::now();
    // The fallback carries the job meanwhile.
    for _ in 0..200 {
        if f.requests().iter().filter(|r| r.status == 200).count() >= 6 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(f.requests().len() >= 6, "the fallback took over");
    let back = FakeLlm::start_on(a_addr).await;
    // Once the probe sees `a` again, new requests go there, not to the
    // fallback.
    for _ in 0..400 {
        if !back.requests().is_empty() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let back_at = back.requests().first().expect("a primary served again").at;
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    all_ok_once(&job, 40);
    let late: Vec<_> = f
        .requests()
        .into_iter()
        .filter(|r| r.at > back_at + Duration::from_millis(500))
        .collect();
    eprintln!(
        "fallback: {} requests, all after the primaries went down; the primary that came back served {}",
        f.requests().len(),
        back.requests().len()
    );
    assert!(
        late.is_empty(),
        "{} requests went to the fallback after a primary was back",
        late.len()
    );
    assert!(f.requests().iter().all(|r| r.at >= down_at));
    assert!(
        back.requests().len() > 3,
        "the primary that came back took the traffic"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_401_takes_one_endpoint_out_and_the_job_goes_on() {
    let [a, b, c] = three().await;
    // `b` refuses the key its variable holds on chat requests (its
    // `/models` answers, so the check before the job passes it).
    b.fail_with(401, "Incorrect API key provided");
    let job = TestJob::new();
    job.tasks(&rows(30, 2, 0));
    let list = list(&[
        (&a, ""),
        (&b, ", api_key_env = \"CONVOY_TEST_KEY_B\""),
        (&c, ""),
    ]);
    job.manifest(&manifest(&list, "", "[run]\nworkers = 6\n"));
    let mut env = ENV.to_vec();
    env.push(("CONVOY_TEST_KEY_B", "sk-wrong"));
    let out = job.run(&env).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    all_ok_once(&job, 30);
    let log = stderr(&out);
    assert!(
        log.contains(&format!("endpoint 1 ({})", b.addr))
            && log.contains("taken out for the rest of the job"),
        "{log}"
    );
    assert!(
        log.contains("check the key in `CONVOY_TEST_KEY_B` (llm.endpoints[1].api_key_env)"),
        "the error names the key's variable and the manifest key: {log}"
    );
    assert!(!log.contains("sk-wrong"), "the key itself is never printed");
    assert!(!b.requests().is_empty());
    assert!(b.requests().iter().all(|r| r.status == 401));
    eprintln!(
        "401: the refusing endpoint got {} requests; the others answered {:?}",
        b.requests().len(),
        answered(&[&a, &c])
    );
    let s = job.summary();
    assert!(s["llm"]["endpoints"][1]["removed"].is_string(), "{s}");

    // With every endpoint refusing (two already at the check before the
    // job), the job stops with exit 4.
    a.require_key("sk-other");
    c.require_key("sk-other");
    let again = TestJob::new();
    again.tasks(&rows(3, 1, 0));
    again.manifest(&manifest(&list, "", ""));
    let out = again.run(&env).await;
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_conversation_without_room_for_sticky_wait_moves_where_there_is_room() {
    // `a` takes one request at a time but has the weight to be given most
    // conversations. With a short sticky_wait, those that find it busy
    // move to `b`, which has room, and stay there; with one longer than
    // the job, they wait for `a`.
    let mut served = Vec::new();
    for wait in ["200ms", "1h"] {
        let [a, b] = [FakeLlm::start().await, FakeLlm::start().await];
        a.slow(400);
        b.slow(400);
        let job = TestJob::new();
        job.tasks(&rows(8, 2, 0));
        let list = list(&[(&a, ", max_in_flight = 1, weight = 8"), (&b, "")]);
        let keys = format!("sticky_wait = \"{wait}\"");
        job.manifest(&manifest(&list, &keys, "[run]\nworkers = 8\n"));
        let out = job.run(ENV).await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        all_ok_once(&job, 8);
        // Each conversation's turns on one server either way.
        let on_a: BTreeSet<String> = a.requests().iter().map(conv).collect();
        let on_b: BTreeSet<String> = b.requests().iter().map(conv).collect();
        assert!(on_a.is_disjoint(&on_b), "{on_a:?} {on_b:?}");
        served.push((on_a.len(), on_b.len()));
    }
    eprintln!(
        "conversations on the busy endpoint / the other: sticky_wait 200ms {:?}, 1h {:?}",
        served[0], served[1]
    );
    assert!(
        served[0].0 <= 2,
        "with 200ms they moved off the busy endpoint: {served:?}"
    );
    assert!(
        served[1].0 >= 6,
        "with 1h they waited for their endpoint: {served:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_job_stops_only_when_every_endpoint_is_gone() {
    let (a, b) = (FakeLlm::start().await, FakeLlm::start().await);
    let job = TestJob::new();
    job.tasks(&rows(40, 3, 100));
    let list = list(&[(&a, ""), (&b, "")]);
    let child = spawn_run(
        &job,
        &manifest(
            &list,
            "outage_after = 2\noutage_timeout = \"2s\"",
            "[run]\nworkers = 4\n",
        ),
    );
    job.wait_for_results(4).await;
    a.go_down();
    b.go_down();
    let out = child.wait_with_output().await.unwrap();
    assert_eq!(out.status.code(), Some(4), "{}", stderr(&out));
    let log = stderr(&out);
    assert!(log.contains("every LLM endpoint is out"), "{log}");
    let results = job.results();
    assert!(
        results.len() >= 4 && results.len() < 40,
        "{}",
        results.len()
    );
    assert!(
        results.iter().all(|r| r["status"] == "ok"),
        "interrupted tasks are not recorded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn endpoints_are_checked_at_load() {
    let job = TestJob::new();
    job.tasks(&rows(1, 1, 0));
    // A good list: `--dry-run` shows each server; `validate` warns of the
    // key variable that is not set.
    job.manifest(&manifest(
        "{ base_url = \"http://gpu-a:8000/v1\" }, { base_url = \"http://gpu-b:8000/v1\", weight = 2, max_in_flight = 64 }, { base_url = \"https://api.example/v1\", model = \"hosted\", api_key_env = \"HOSTED_KEY\", role = \"fallback\" }",
        "",
        "",
    ));
    let out = job.convoy(&["validate", "job.toml"], ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("`HOSTED_KEY` (llm.endpoints[2].api_key_env) is not set"),
        "{}",
        stderr(&out)
    );
    let out = job.convoy(&["run", "job.toml", "--dry-run"], ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let shown = format!("{}{}", String::from_utf8_lossy(&out.stdout), stderr(&out));
    for line in [
        "endpoints: 3 servers",
        "http://gpu-b:8000/v1/chat/completions, model fake-model, key from $CONVOY_TEST_KEY, weight 2, max_in_flight 64",
        "https://api.example/v1/chat/completions, model hosted, key from $HOSTED_KEY, weight 1, max_in_flight 256, fallback",
    ] {
        assert!(shown.contains(line), "{line} not in {shown}");
    }
    for (endpoints, extra, says) in [
        (
            "{ base_url = \"gpu-a:8000\" }",
            "",
            "entry 1 (gpu-a:8000): base_url must be",
        ),
        (
            "{ base_url = \"http://a/v1\", role = \"fallback\" }",
            "",
            "at least one endpoint with role \"primary\"",
        ),
        (
            "{ base_url = \"http://a/v1\", weight = 0 }",
            "",
            "weight must be at least 1",
        ),
        (
            "{ base_url = \"http://a/v1\" }",
            "base_url = \"http://b/v1\"",
            "not both",
        ),
        ("{ base_url = \"http://a/v1\", wieght = 2 }", "", "wieght"),
        (
            "{ base_url = \"http://a/v1\" }, { base_url = \"http://a/v1/\" }",
            "",
            "entry 2 (http://a/v1/): is listed twice",
        ),
    ] {
        job.manifest(&manifest(endpoints, extra, ""));
        let out = job.convoy(&["validate", "job.toml"], ENV).await;
        assert_eq!(out.status.code(), Some(2), "{endpoints}: {}", stderr(&out));
        let err = stderr(&out);
        assert!(
            err.contains("job.toml") && err.contains(says),
            "{endpoints}: {err}"
        );
    }
}
