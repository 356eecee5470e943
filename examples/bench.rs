//! The Docker workspace benchmark (`scripts/bench.sh`). Everything runs in
//! one go on this machine: the release `convoy` binary, one container per
//! scenario, and an instant LLM served over HTTP by the in-process fake, so
//! the real client path is in the loop.
//!
//! Overhead per tool call is measured from the fake server's side: the time
//! between a reply to a conversation and that conversation's next request
//! is what convoy spent running the tool call (plus its own HTTP client).

#[path = "../tests/support/fake_llm.rs"]
mod fake_llm;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fake_llm::FakeLlm;
use serde_json::{json, Value};

struct Run {
    wall: Duration,
    requests: Vec<fake_llm::Recorded>,
    summary: Value,
    peak_rss_kb: u64,
    peak_fds: u64,
}

#[derive(Clone, Copy)]
enum Channel {
    Helper,
    Exec,
}

impl Channel {
    fn name(self) -> &'static str {
        match self {
            Channel::Helper => "helper",
            Channel::Exec => "exec",
        }
    }
}

fn convoy_bin() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("CONVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/convoy"))
}

/// Runs `convos` conversations of `calls` bash calls each (`command`), at
/// `workers`, through `channel`; the model takes `think_ms` per turn.
async fn run(
    llm: &FakeLlm,
    channel: Channel,
    convos: usize,
    calls: usize,
    workers: usize,
    command: &str,
    think_ms: u64,
) -> Run {
    llm.clear();
    let dir = tempfile::tempdir().unwrap();
    let turns: Vec<Value> = (0..calls)
        .map(|_| json!({"calls": [["bash", {"command": command}]], "delay_ms": think_ms}))
        .chain([json!({"calls": [["finish", {"message": "done"}]]})])
        .collect();
    let mut rows = String::new();
    for i in 0..convos {
        let script = json!({"conv": i, "turns": turns}).to_string();
        rows.push_str(&json!({"id": format!("c{i}"), "script": script}).to_string());
        rows.push('\n');
    }
    std::fs::write(dir.path().join("tasks.jsonl"), rows).unwrap();
    let manifest = format!(
        r#"name = "bench"
[tasks]
source = "tasks.jsonl"
id = "{{{{ id }}}}"
[prompt]
user = "{{{{ script }}}}"
[llm]
base_url = "{}"
model = "instant"
max_in_flight = 4096
[agent]
max_steps = {}
[workspace]
kind = "{}"
nofile = 1048576
channel = "{}"
[run]
workers = {workers}
task_timeout = "60m"
"#,
        llm.base_url(),
        calls + 1,
        std::env::var("BENCH_KIND").unwrap_or_else(|_| "docker".into()),
        channel.name()
    );
    std::fs::write(dir.path().join("job.toml"), manifest).unwrap();

    let started = Instant::now();
    let mut child = tokio::process::Command::new(convoy_bin())
        .args(["run", "job.toml", "--out", "out"])
        .current_dir(dir.path())
        .env("RUST_LOG", "error")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id().unwrap();
    let (mut peak_rss_kb, mut peak_fds) = (0, 0);
    let status = loop {
        tokio::select! {
            s = child.wait() => break s.unwrap(),
            _ = tokio::time::sleep(Duration::from_millis(100)) => {
                let (rss, fds) = sample(pid);
                peak_rss_kb = peak_rss_kb.max(rss);
                peak_fds = peak_fds.max(fds);
            }
        }
    };
    let wall = started.elapsed();
    assert!(status.success(), "convoy failed: {status}");
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/summary.json")).unwrap(),
    )
    .unwrap();
    Run {
        wall,
        requests: llm.requests(),
        summary,
        peak_rss_kb,
        peak_fds,
    }
}

/// RSS (kB) and open FDs of a process.
fn sample(pid: u32) -> (u64, u64) {
    let rss = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1)?.parse().ok())
        })
        .unwrap_or(0);
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64);
    (rss, fds)
}

/// Gaps between consecutive requests of each conversation, in ms: one per
/// tool call.
fn call_gaps(requests: &[fake_llm::Recorded]) -> Vec<f64> {
    let mut by_conv: HashMap<String, Vec<Instant>> = HashMap::new();
    for r in requests {
        let conv = r.body["messages"]
            .as_array()
            .and_then(|m| m.iter().find(|m| m["role"] == "user"))
            .and_then(|m| m["content"].as_str())
            .unwrap_or_default()
            .to_string();
        by_conv.entry(conv).or_default().push(r.at);
    }
    let mut gaps = Vec::new();
    for times in by_conv.values_mut() {
        times.sort();
        gaps.extend(
            times
                .windows(2)
                .map(|w| (w[1] - w[0]).as_secs_f64() * 1000.0),
        );
    }
    gaps.sort_by(|a, b| a.partial_cmp(b).unwrap());
    gaps
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}

/// Tool calls per second: calls over the span of the run's LLM requests.
fn calls_per_s(run: &Run) -> f64 {
    let first = run.requests.iter().map(|r| r.at).min().unwrap();
    let last = run.requests.iter().map(|r| r.at).max().unwrap();
    let calls = call_gaps(&run.requests).len();
    calls as f64 / (last - first).as_secs_f64()
}

#[tokio::main]
async fn main() {
    let llm = FakeLlm::start().await;
    let arg = std::env::args().nth(1).unwrap_or_default();
    let quick = arg == "--quick";
    if arg == "--overhead" {
        // Only the helper's per-call overhead, five times each: how much it
        // varies between runs, in short (3-call) and long (300-call)
        // conversations, whose growing history every request carries.
        run(&llm, Channel::Helper, 8, 5, 8, "true", 0).await;
        println!(
            "| run | 3-call conversations, median (ms) | 300-call conversation, median (ms) |"
        );
        println!("|---:|---:|---:|");
        for i in 1..=5 {
            let short = call_gaps(
                &run(&llm, Channel::Helper, 100, 3, 1, "true", 0)
                    .await
                    .requests,
            );
            let long = call_gaps(
                &run(&llm, Channel::Helper, 1, 300, 1, "true", 0)
                    .await
                    .requests,
            );
            println!(
                "| {i} | {:.2} | {:.2} |",
                percentile(&short, 0.5),
                percentile(&long, 0.5)
            );
        }
        return;
    }
    println!("convoy Docker workspace benchmark (instant LLM over HTTP, `true` as the command)\n");

    println!("| measure | helper (one exec for the job) | exec per call | ratio |");
    println!("|---|---:|---:|---:|");
    // Warm-up (image layers, page cache, the daemon): not measured.
    run(&llm, Channel::Helper, 8, 5, 8, "true", 0).await;
    // Every row runs the same conversations through both channels: as
    // many, with as many tool calls each. At 1, sequential 3-call
    // conversations, where every gap between requests is one tool call.
    let sequential = if quick { 10 } else { 40 };
    let h = run(&llm, Channel::Helper, sequential, 3, 1, "true", 0).await;
    let e = run(&llm, Channel::Exec, sequential, 3, 1, "true", 0).await;
    let (hg, eg) = (call_gaps(&h.requests), call_gaps(&e.requests));
    for (label, p) in [
        ("overhead per tool call, median (ms)", 0.5),
        ("overhead per tool call, p99 (ms)", 0.99),
    ] {
        let (a, b) = (percentile(&hg, p), percentile(&eg, p));
        println!("| {label} | {a:.2} | {b:.2} | {:.1}x |", b / a);
    }
    for conc in [1usize, 64, 512] {
        // Otherwise `conc` conversations at once, each `calls` long (the
        // exec path manages about a dozen calls a second, which bounds
        // how long they can be).
        let calls = match conc {
            1 => 3,
            64 if !quick => 10,
            _ => 3,
        };
        let (a, b) = if conc == 1 {
            (calls_per_s(&h), calls_per_s(&e))
        } else {
            let h = run(&llm, Channel::Helper, conc, calls, conc, "true", 0).await;
            let e = run(&llm, Channel::Exec, conc, calls, conc, "true", 0).await;
            (calls_per_s(&h), calls_per_s(&e))
        };
        let convos = if conc == 1 { sequential } else { conc };
        println!(
            "| tool calls/s, {conc} concurrent conversations ({convos} of {calls} calls, both) | {a:.0} | {b:.1} | {:.1}x |",
            a / b
        );
    }
    println!();

    let n = if quick { 500 } else { 2000 };
    let r = run(&llm, Channel::Helper, n, 3, 256, "true", 0).await;
    println!("| measure | value |");
    println!("|---|---:|");
    println!(
        "| conversations/s, 3-call conversations, workers 256 ({n} conversations) | {:.1} (wall {:.1}s) |",
        r.summary["conversations_per_s"].as_f64().unwrap(),
        r.wall.as_secs_f64()
    );
    let n = if quick { 500 } else { 2000 };
    // Every conversation waits 30 s on the model before its one tool call:
    // long enough for all of them to be in flight at once, each with an
    // open session and an HTTP request outstanding.
    let r = run(&llm, Channel::Helper, n, 1, n, "true", 30_000).await;
    println!(
        "| convoy peak RSS, {n} concurrent conversations (MB) | {:.1} |",
        r.peak_rss_kb as f64 / 1024.0
    );
    println!(
        "| convoy peak open FDs, {n} concurrent conversations | {} |",
        r.peak_fds
    );
    println!(
        "| ... conversations waiting on the model at once (peak) | {} |",
        llm.peak_in_flight()
    );
    println!(
        "| ... all {n} done in | {:.1}s ({} ok) |",
        r.wall.as_secs_f64(),
        r.summary["counts"]["ok"]
    );
}
