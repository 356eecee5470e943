//! `scripts/bench.sh --gateway`: model calls through the gateway. External
//! conversations of 10 model calls each against the instant fake endpoint,
//! 1, 64 and 512 at once, in one container, from two agents: a small
//! Python one (`gateway_agent.py`: an interpreter each, urllib, a new
//! connection per call) and a CPU-light native one (`gateway_client`, one
//! keep-alive connection), both mounted into the container. Per call, the
//! time the agent saw against the time convoy's model client spent on the
//! same call upstream (`calls.jsonl` `latency_s`, what convoy's own agent
//! waits for a reply): the difference is what the gateway adds (the
//! agent's HTTP to the helper, the helper's stream, convoy's handling, and
//! back). A second table splits the run's CPU by part, per call.

use std::collections::HashMap;
use std::path::Path;
use std::time::Instant;

use serde_json::{json, Value};

use super::cpu::{CpuSampler, CpuSplit};
use super::fake_llm::FakeLlm;
use super::{convoy_bin, percentile};

#[derive(Clone, Copy)]
enum Agent {
    Python,
    Native,
    /// Makes no call: the same conversations' fixed cost (sessions,
    /// container), subtracted in the CPU table.
    Idle,
}

impl Agent {
    fn label(self) -> &'static str {
        match self {
            Agent::Python => "Python (urllib)",
            Agent::Native => "native (keep-alive)",
            Agent::Idle => "none (no calls)",
        }
    }

    fn command(self) -> &'static str {
        match self {
            Agent::Python => "python3 /opt/bench/gateway_agent.py",
            Agent::Native => "/opt/bench-bin/gateway_client",
            Agent::Idle => "echo done > \\\"$CONVOY_ANSWER\\\"",
        }
    }
}

/// Prints the tables.
pub async fn table(llm: &FakeLlm, quick: bool) {
    let sizes: &[usize] = if quick { &[1, 16] } else { &[1, 64, 512] };
    println!("convoy model gateway benchmark (external agents of 10 model calls each, instant endpoint over HTTP, one container, isolation \"user\")\n");
    println!("| agent | concurrent agents | conversations | model calls/s (wall) | agent-seen call p50 / p99 (ms) | upstream p50 / p99 (ms) | gateway adds p50 / p99 (ms) | ok |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    let mut cpu = Vec::new();
    let mut idle = std::collections::HashMap::new();
    for &workers in sizes {
        idle.insert(
            workers,
            run(llm, Agent::Idle, workers, conversations(workers))
                .await
                .cpu,
        );
    }
    for agent in [Agent::Python, Agent::Native] {
        for &workers in sizes {
            let convos = conversations(workers);
            let r = run(llm, agent, workers, convos).await;
            let ms = |v: &[f64], p| percentile(v, p) * 1000.0;
            println!(
                "| {} | {workers} | {convos} | {:.0} ({:.1}s) | {:.2} / {:.2} | {:.2} / {:.2} | {:.2} / {:.2} | {} |",
                agent.label(),
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
            cpu.push((agent, workers, r.calls, r.cpu, idle[&workers]));
        }
    }
    println!("\nCPU per model call, by part (ms): each run's CPU less that of the same conversations with an agent that makes no call (their sessions and the container), over the calls. convoy and the endpoint exact (rusage), helper and engine sampled from /proc every 250 ms, the rest is the machine's busy time less those (the agents, tmux, the kernel)\n");
    println!("| agent | concurrent agents | convoy | helper | Docker engine | fake endpoint | the rest | all |");
    println!("|---|---:|---:|---:|---:|---:|---:|---:|");
    for (agent, workers, calls, c, base) in cpu {
        let per = |s: f64, b: f64| (s - b) * 1000.0 / calls.max(1) as f64;
        let all = |c: &CpuSplit| c.convoy + c.helper + c.engine + c.endpoint + c.rest;
        println!(
            "| {} | {workers} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} |",
            agent.label(),
            per(c.convoy, base.convoy),
            per(c.helper, base.helper),
            per(c.engine, base.engine),
            per(c.endpoint, base.endpoint),
            per(c.rest, base.rest),
            per(all(&c), all(&base))
        );
    }
}

/// Twice as many conversations as agents, and at least 20 (200 calls), so
/// that even one agent's CPU per call is more than the clock's ticks.
fn conversations(workers: usize) -> usize {
    (2 * workers).max(20)
}

struct GatewayRun {
    wall_s: f64,
    calls: usize,
    ok: usize,
    /// Sorted, in seconds.
    seen: Vec<f64>,
    upstream: Vec<f64>,
    added: Vec<f64>,
    cpu: CpuSplit,
}

async fn run(llm: &FakeLlm, agent: Agent, workers: usize, convos: usize) -> GatewayRun {
    llm.clear();
    let dir = tempfile::tempdir().unwrap();
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let agent_dir = root.join("examples/bench");
    let bin_dir = root.join("target/release/examples");
    // Nine tool calls, then (past the script) `finish`: 10 model calls.
    let turns: Vec<Value> = (0..9)
        .map(|_| json!({"calls": [["bash", {"command": "true"}]]}))
        .collect();
    super::write_rows(dir.path(), "g", convos, &turns);
    let manifest = format!(
        r#"{}[agent]
kind = "external"
command = "{}"
max_steps = 20
[workspace]
kind = "docker"
nofile = 1048576
isolation = "user"
mounts = [{{ host = "{}", container = "/opt/bench", read_only = true }}, {{ host = "{}", container = "/opt/bench-bin", read_only = true }}]
[run]
workers = {workers}
task_timeout = "30m"
"#,
        super::head("gateway-bench", llm),
        agent.command(),
        agent_dir.display(),
        bin_dir.display()
    );
    std::fs::write(dir.path().join("job.toml"), manifest).unwrap();
    let sampler = CpuSampler::start();
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
    let cpu = sampler.finish();
    assert!(
        status.success(),
        "the gateway benchmark's run failed: {status}"
    );
    let read = |name: &str| -> Vec<Value> {
        // No calls.jsonl where no agent made a call.
        std::fs::read_to_string(dir.path().join("out").join(name))
            .unwrap_or_default()
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
        cpu,
    }
}
