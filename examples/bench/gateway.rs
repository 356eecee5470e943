//! `scripts/bench.sh --gateway`: model calls through the gateway. External
//! conversations of 10 model calls each (a small Python agent,
//! `gateway_agent.py`, mounted into the container) against the instant
//! fake endpoint, 64 and 512 at once, in one container. Per call, the time
//! the agent saw against the time convoy's model client spent on the same
//! call upstream (`calls.jsonl` `latency_s`, what convoy's own agent waits
//! for a reply): the difference is what the gateway adds (the agent's HTTP
//! to the helper, the helper's stream, convoy's handling, and back).

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use super::fake_llm::FakeLlm;
use super::{convoy_bin, percentile};

/// Prints the table.
pub async fn table(llm: &FakeLlm, quick: bool) {
    let sizes: &[usize] = if quick { &[1, 16] } else { &[1, 64, 512] };
    println!("convoy model gateway benchmark (external agents of 10 model calls each, instant endpoint over HTTP, one container, isolation \"user\")\n");
    println!("| concurrent agents | conversations | model calls/s (wall) | agent-seen call p50 / p99 (ms) | upstream p50 / p99 (ms) | gateway adds p50 / p99 (ms) | ok |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    for &workers in sizes {
        let convos = 2 * workers;
        let r = run(llm, workers, convos).await;
        let ms = |v: &[f64], p| percentile(v, p) * 1000.0;
        println!(
            "| {workers} | {convos} | {:.0} ({:.1}s) | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {} |",
            r.calls as f64 / r.wall_s,
            r.wall_s,
            ms(&r.seen, 0.5),
            ms(&r.seen, 0.99),
            ms(&r.upstream, 0.5),
            ms(&r.upstream, 0.99),
            ms(&r.added, 0.5),
            ms(&r.added, 0.99),
            r.ok
        );
    }
}

struct GatewayRun {
    wall_s: f64,
    calls: usize,
    ok: usize,
    /// Sorted, in seconds.
    seen: Vec<f64>,
    upstream: Vec<f64>,
    added: Vec<f64>,
}

async fn run(llm: &FakeLlm, workers: usize, convos: usize) -> GatewayRun {
    llm.clear();
    let dir = tempfile::tempdir().unwrap();
    let agent_dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/bench");
    // Nine tool calls, then (past the script) `finish`: 10 model calls.
    let turns: Vec<Value> = (0..9)
        .map(|_| json!({"calls": [["bash", {"command": "true"}]]}))
        .collect();
    super::write_rows(dir.path(), "g", convos, &turns);
    let manifest = format!(
        r#"{}[agent]
kind = "external"
command = "python3 /opt/bench/gateway_agent.py"
max_steps = 20
[workspace]
kind = "docker"
nofile = 1048576
isolation = "user"
mounts = [{{ host = "{}", container = "/opt/bench", read_only = true }}]
[run]
workers = {workers}
task_timeout = "30m"
"#,
        super::head("gateway-bench", llm),
        agent_dir.display()
    );
    std::fs::write(dir.path().join("job.toml"), manifest).unwrap();
    let started = Instant::now();
    let status = tokio::process::Command::new(convoy_bin())
        .args(["run", "job.toml", "--out", "out"])
        .current_dir(dir.path())
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status()
        .await
        .unwrap();
    let wall_s = started.elapsed().as_secs_f64();
    assert!(
        status.success(),
        "the gateway benchmark's run failed: {status}"
    );
    let read = |name: &str| -> Vec<Value> {
        std::fs::read_to_string(dir.path().join("out").join(name))
            .unwrap()
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect()
    };
    let results = read("results.jsonl");
    let mut upstream_of: HashMap<(String, u64), f64> = HashMap::new();
    for c in read("calls.jsonl") {
        upstream_of.insert(
            (c["id"].as_str().unwrap().into(), c["seq"].as_u64().unwrap()),
            c["latency_s"].as_f64().unwrap(),
        );
    }
    let (mut seen, mut upstream, mut added) = (Vec::new(), Vec::new(), Vec::new());
    let mut ok = 0;
    for r in &results {
        if r["status"] != "ok" {
            continue;
        }
        ok += 1;
        let id = r["id"].as_str().unwrap().to_string();
        let output = r["agent_output"].as_str().unwrap_or_default();
        for (k, s) in output.split_whitespace().enumerate() {
            let s: f64 = s.parse().unwrap();
            let up = upstream_of[&(id.clone(), k as u64 + 1)];
            seen.push(s);
            upstream.push(up);
            added.push(s - up);
        }
    }
    for v in [&mut seen, &mut upstream, &mut added] {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    }
    GatewayRun {
        wall_s,
        calls: upstream_of.len(),
        ok,
        seen,
        upstream,
        added,
    }
}
