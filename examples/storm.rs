//! The fault-storm benchmark (`scripts/storm.sh`): the same 1,000 instant
//! conversations (one `true` through bash, then an answer) against the
//! in-process fake endpoint, once healthy and once answering 20% of
//! requests with 429 (`Retry-After: 1`) and 5% with 503. Prints the wall
//! times side by side, retries by reason, and the adaptive limiter's trace
//! from the storm run's metrics.csv.
//!
//! `--endpoints`: the overhead of routing instead. The same healthy job
//! through one fake endpoint and through three (`llm.endpoints`), five
//! runs of each, alternating; requests/s of each run and the ratio of the
//! medians.

#[path = "../tests/support/fake_llm.rs"]
mod fake_llm;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fake_llm::{FakeLlm, Storm};
use serde_json::{json, Value};

const CONVERSATIONS: usize = 1000;
const WORKERS: usize = 64;

fn convoy_bin() -> PathBuf {
    std::env::var_os("CONVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("target/release/convoy"))
}

struct Run {
    wall: Duration,
    /// convoy's CPU seconds (user + system, from its rusage).
    cpu_s: f64,
    summary: Value,
    metrics: String,
}

/// One run of the job against `servers` fake endpoints (1: `base_url`).
async fn run(storm: Option<Storm>, servers: usize) -> Run {
    let mut llms = Vec::new();
    for _ in 0..servers {
        llms.push(FakeLlm::start().await);
    }
    if let Some(s) = storm {
        llms[0].storm(s);
    }
    let endpoint = match llms.as_slice() {
        [one] => format!("base_url = \"{}\"", one.base_url()),
        all => format!(
            "endpoints = [{}]",
            all.iter()
                .map(|l| format!("{{ base_url = \"{}\" }}", l.base_url()))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    };
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("work")).unwrap();
    let rows: String = (0..CONVERSATIONS)
        .map(|i| format!("{}\n", json!({"id": format!("c{i}"), "script": "true"})))
        .collect();
    std::fs::write(dir.path().join("tasks.jsonl"), rows).unwrap();
    let manifest = format!(
        r#"name = "storm"
[tasks]
source = "tasks.jsonl"
id = "{{{{ id }}}}"
[prompt]
user = "{{{{ script }}}}"
[llm]
{endpoint}
model = "fake"
max_in_flight = {WORKERS}
max_retries = 12
[workspace]
kind = "local"
workdir = "work"
[run]
workers = {WORKERS}
[monitor]
interval = "500ms"
"#
    );
    std::fs::write(dir.path().join("job.toml"), manifest).unwrap();
    let cpu0 = children_cpu_s();
    let t0 = Instant::now();
    let out = tokio::process::Command::new(convoy_bin())
        .args(["run", "job.toml", "--out", "out"])
        .current_dir(dir.path())
        .env("RUST_LOG", "warn")
        .output()
        .await
        .unwrap();
    let wall = t0.elapsed();
    let cpu_s = children_cpu_s() - cpu0;
    assert!(
        out.status.success(),
        "convoy failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |f: &str| std::fs::read_to_string(dir.path().join("out").join(f)).unwrap();
    Run {
        wall,
        cpu_s,
        summary: serde_json::from_str(&read("summary.json")).unwrap(),
        metrics: read("metrics.csv"),
    }
}

/// CPU seconds of this process's waited-for children so far.
fn children_cpu_s() -> f64 {
    use nix::sys::resource::{getrusage, UsageWho};
    let u = getrusage(UsageWho::RUSAGE_CHILDREN).expect("getrusage");
    let s = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    s(u.user_time()) + s(u.system_time())
}

/// One endpoint against three, same job, alternating runs.
async fn routing() {
    let rate =
        |r: &Run| r.summary["llm"]["requests"].as_f64().unwrap_or(0.0) / r.wall.as_secs_f64();
    let (mut one, mut three) = (Vec::new(), Vec::new());
    let (mut cpu_one, mut cpu_three) = (Vec::new(), Vec::new());
    println!(
        "| run | endpoints | wall time (s) | requests | requests/s | convoy CPU per request (ms) |"
    );
    println!("|---:|---:|---:|---:|---:|---:|");
    for i in 1..=5 {
        for (servers, rates, cpus) in [(1, &mut one, &mut cpu_one), (3, &mut three, &mut cpu_three)]
        {
            let r = run(None, servers).await;
            let per_request_ms =
                r.cpu_s * 1000.0 / r.summary["llm"]["requests"].as_f64().unwrap_or(1.0);
            println!(
                "| {i} | {servers} | {:.2} | {} | {:.0} | {per_request_ms:.3} |",
                r.wall.as_secs_f64(),
                r.summary["llm"]["requests"],
                rate(&r)
            );
            rates.push(rate(&r));
            cpus.push(per_request_ms);
        }
    }
    let median = |v: &mut Vec<f64>| {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap());
        v[v.len() / 2]
    };
    let (m1, m3) = (median(&mut one), median(&mut three));
    println!(
        "\nmedian requests/s: one endpoint {m1:.0}, three {m3:.0}; three / one = {:.3}",
        m3 / m1
    );
    let (c1, c3) = (median(&mut cpu_one), median(&mut cpu_three));
    println!(
        "median convoy CPU per request (its tmux and shells included): one endpoint {c1:.3} ms, three {c3:.3} ms; three / one = {:.3}",
        c3 / c1
    );
}

#[tokio::main]
async fn main() {
    if std::env::args().any(|a| a == "--endpoints") {
        return routing().await;
    }
    let calm = run(None, 1).await;
    let stormy = run(
        Some(Storm {
            p429: 0.20,
            p503: 0.05,
            retry_after_s: Some(1),
        }),
        1,
    )
    .await;
    let ok = |r: &Run| r.summary["counts"]["ok"].as_u64().unwrap_or(0);
    let reason = |r: &Run, k: &str| {
        r.summary["llm"]["retries_by_reason"][k]
            .as_u64()
            .unwrap_or(0)
    };
    let lim = |r: &Run, k: &str| r.summary["llm"]["limiter"][k].as_u64().unwrap_or(0);
    println!("| measure | no faults | storm (20% 429 + 5% 503) |");
    println!("|---|---:|---:|");
    println!(
        "| wall time (s) | {:.1} | {:.1} |",
        calm.wall.as_secs_f64(),
        stormy.wall.as_secs_f64()
    );
    println!(
        "| conversations ok | {} / {CONVERSATIONS} | {} / {CONVERSATIONS} |",
        ok(&calm),
        ok(&stormy)
    );
    println!(
        "| requests answered 200 | {} | {} |",
        calm.summary["llm"]["requests"], stormy.summary["llm"]["requests"]
    );
    for k in ["http_429", "http_503", "timeout", "connection"] {
        println!(
            "| retries {k} | {} | {} |",
            reason(&calm, k),
            reason(&stormy, k)
        );
    }
    println!(
        "| limiter cuts / lowest / end (ceiling {WORKERS}) | {} / {} / {} | {} / {} / {} |",
        lim(&calm, "cuts"),
        lim(&calm, "lowest"),
        lim(&calm, "current"),
        lim(&stormy, "cuts"),
        lim(&stormy, "lowest"),
        lim(&stormy, "current")
    );
    println!("\nlimiter trace of the storm run (metrics.csv, every 500 ms):\n");
    println!("| elapsed s | llm_limit | llm_in_flight | done |");
    println!("|---:|---:|---:|---:|");
    let mut lines = stormy.metrics.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let col = |name: &str| header.iter().position(|h| *h == name).unwrap();
    for line in lines {
        let v: Vec<&str> = line.split(',').collect();
        println!(
            "| {} | {} | {} | {} |",
            v[col("elapsed_s")],
            v[col("llm_limit")],
            v[col("llm_in_flight")],
            v[col("done")]
        );
    }
}
