//! The Docker workspace benchmark (`scripts/bench.sh`). Everything runs in
//! one go on this machine: the release `convoy` binary, one container per
//! run, and an instant LLM served over HTTP by the in-process fake, so the
//! real client path is in the loop.
//!
//! Three ways to run the same conversations are compared side by side:
//! the helper with `workspace.isolation = "user"` (each conversation its
//! own uid, the default when the container runs as root) and `"none"`
//! (every session as the container's user), and one `docker exec` per
//! call (which cannot switch users, so `"none"`). Runs of the two helper
//! modes alternate, so that load from elsewhere on the machine falls on
//! both alike.
//!
//! Overhead per tool call is measured from the fake server's side: the time
//! between a reply to a conversation and that conversation's next request
//! is what convoy spent running the tool call (plus its own HTTP client).

#[path = "bench/cpu.rs"]
mod cpu;
#[path = "bench/environments.rs"]
mod environments;
#[path = "../tests/support/fake_llm.rs"]
mod fake_llm;
#[path = "bench/gateway.rs"]
mod gateway;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fake_llm::FakeLlm;
use serde_json::{json, Value};

/// How requests reach tmux, and how sessions are kept apart.
#[derive(Clone, Copy)]
struct Mode {
    channel: &'static str,
    isolation: &'static str,
}

const USER: Mode = Mode {
    channel: "helper",
    isolation: "user",
};
const NONE: Mode = Mode {
    channel: "helper",
    isolation: "none",
};
/// The exec channel cannot switch users.
const EXEC: Mode = Mode {
    channel: "exec",
    isolation: "none",
};

/// Conversations of `calls` bash calls each (then `finish`), `workers` at
/// once; the model takes `think_ms` per turn.
#[derive(Clone, Copy)]
struct Load {
    convos: usize,
    calls: usize,
    workers: usize,
    think_ms: u64,
}

impl Load {
    const fn new(convos: usize, calls: usize, workers: usize) -> Load {
        Load {
            convos,
            calls,
            workers,
            think_ms: 0,
        }
    }
}

struct Run {
    wall: Duration,
    summary: Value,
    peak_rss_kb: u64,
    peak_fds: u64,
    timing: Timing,
    /// The lines of results.jsonl.
    results: Vec<Value>,
}

/// What the fake saw of one or more runs of the same load.
#[derive(Default)]
struct Timing {
    /// Overhead per tool call (ms), sorted.
    gaps: Vec<f64>,
    /// Seconds between each run's first and last model request, summed.
    span_s: f64,
    convos: usize,
}

impl Timing {
    fn of(requests: &[fake_llm::Recorded], convos: usize) -> Timing {
        let first = requests.iter().map(|r| r.at).min().unwrap();
        let last = requests.iter().map(|r| r.at).max().unwrap();
        Timing {
            gaps: call_gaps(requests),
            span_s: (last - first).as_secs_f64(),
            convos,
        }
    }

    /// Both runs' figures as if one run.
    fn pooled(mut self, other: &Timing) -> Timing {
        self.gaps.extend(&other.gaps);
        self.gaps.sort_by(|a, b| a.partial_cmp(b).unwrap());
        self.span_s += other.span_s;
        self.convos += other.convos;
        self
    }

    fn overhead_ms(&self, p: f64) -> f64 {
        percentile(&self.gaps, p)
    }

    /// Tool calls per second between the first and the last request.
    fn calls_per_s(&self) -> f64 {
        self.gaps.len() as f64 / self.span_s
    }

    /// Conversations per second, over the same span.
    fn convos_per_s(&self) -> f64 {
        self.convos as f64 / self.span_s
    }
}

fn convoy_bin() -> PathBuf {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::env::var_os("CONVOY_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/convoy"))
}

/// Runs `load` through `mode`, each tool call running `true`.
async fn run(llm: &FakeLlm, mode: Mode, load: Load) -> Run {
    run_with(llm, mode, load, "").await
}

/// `run`, with `extra` appended to the manifest (tables such as
/// `[environment]` and `[verify]`).
async fn run_with(llm: &FakeLlm, mode: Mode, load: Load, extra: &str) -> Run {
    llm.clear();
    let dir = tempfile::tempdir().unwrap();
    let turns: Vec<Value> = (0..load.calls)
        .map(|_| json!({"calls": [["bash", {"command": "true"}]], "delay_ms": load.think_ms}))
        .chain([json!({"calls": [["finish", {"message": "done"}]]})])
        .collect();
    write_rows(dir.path(), "c", load.convos, &turns);
    let manifest = format!(
        r#"{}[agent]
max_steps = {}
[workspace]
kind = "docker"
nofile = 1048576
channel = "{}"
isolation = "{}"
[run]
workers = {}
task_timeout = "60m"
{}"#,
        head("bench", llm),
        load.calls + 1,
        mode.channel,
        mode.isolation,
        load.workers,
        extra,
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
    assert!(
        status.success(),
        "convoy failed ({} isolation {}): {status}\n{}",
        mode.channel,
        mode.isolation,
        failures(dir.path())
    );
    let summary: Value = serde_json::from_str(
        &std::fs::read_to_string(dir.path().join("out/summary.json")).unwrap(),
    )
    .unwrap();
    let results = std::fs::read_to_string(dir.path().join("out/results.jsonl"))
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    Run {
        wall,
        summary,
        peak_rss_kb,
        peak_fds,
        timing: Timing::of(&llm.requests(), load.convos),
        results,
    }
}

/// Why a run failed, for the panic: its counts and its first few errors
/// (the run directory goes with the temporary directory).
fn failures(dir: &Path) -> String {
    let read = |name: &str| std::fs::read_to_string(dir.join("out").join(name)).unwrap_or_default();
    let errors: Vec<String> = read("results.jsonl")
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .filter(|r| r["status"] != "ok")
        .take(3)
        .map(|r| format!("{} {}: {}", r["id"], r["status"], r["error"]))
        .collect();
    let summary = read("summary.json");
    format!("summary: {summary}\nfirst errors:\n{}", errors.join("\n"))
}

/// Runs `load` through `a` and `b`, `a` first unless `b_first`.
async fn both(llm: &FakeLlm, a: Mode, b: Mode, load: Load, b_first: bool) -> (Run, Run) {
    if b_first {
        let rb = run(llm, b, load).await;
        (run(llm, a, load).await, rb)
    } else {
        let ra = run(llm, a, load).await;
        (ra, run(llm, b, load).await)
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

/// One row of the first table. `lower_is_better` says which way the
/// helper-vs-exec ratio is taken, so that it reads "times better".
fn row(label: &str, user: f64, none: f64, exec: f64, lower_is_better: bool, decimals: usize) {
    let vs_exec = if lower_is_better {
        exec / none
    } else {
        none / exec
    };
    println!(
        "| {label} | {user:.decimals$} | {none:.decimals$} | {:.2} | {exec:.decimals$} | {vs_exec:.1}x |",
        user / none
    );
}

/// The tool calls/s and conversations/s rows of the first table.
fn rate_rows(what: &str, user: &Timing, none: &Timing, exec: &Timing) {
    type Rate = fn(&Timing) -> f64;
    let rates: [(&str, Rate); 2] = [
        ("tool calls/s", Timing::calls_per_s),
        ("conversations/s", Timing::convos_per_s),
    ];
    for (name, rate) in rates {
        let (u, n, e) = (rate(user), rate(none), rate(exec));
        row(&format!("{name}, {what}"), u, n, e, false, 1);
    }
}

/// `--overhead`: only the helper's per-call overhead, five times each in
/// both isolation modes: how much it varies between runs, in short
/// (3-call) and long (300-call) conversations, whose growing history every
/// request carries.
async fn overhead(llm: &FakeLlm) {
    run(llm, USER, Load::new(8, 5, 8)).await;
    run(llm, NONE, Load::new(8, 5, 8)).await;
    println!("| run | 3-call conversations, median (ms), \"user\" | ... \"none\" | 300-call conversation, median (ms), \"user\" | ... \"none\" |");
    println!("|---:|---:|---:|---:|---:|");
    for i in 1..=5 {
        let short = both(llm, USER, NONE, Load::new(100, 3, 1), i % 2 == 0).await;
        let long = both(llm, USER, NONE, Load::new(1, 300, 1), i % 2 == 1).await;
        println!(
            "| {i} | {:.2} | {:.2} | {:.2} | {:.2} |",
            short.0.timing.overhead_ms(0.5),
            short.1.timing.overhead_ms(0.5),
            long.0.timing.overhead_ms(0.5),
            long.1.timing.overhead_ms(0.5),
        );
    }
}

#[tokio::main]
async fn main() {
    let llm = FakeLlm::start().await;
    let arg = std::env::args().nth(1).unwrap_or_default();
    let quick = arg == "--quick";
    if arg == "--overhead" {
        overhead(&llm).await;
        return;
    }
    if let Some(how) = arg.strip_prefix("--gateway") {
        gateway::table(&llm, how == "-quick").await;
        return;
    }
    if let Some(how) = arg.strip_prefix("--environments") {
        environments::table(&llm, how == "-quick").await;
        return;
    }
    println!("convoy Docker workspace benchmark (instant LLM over HTTP, `true` as the command)\n");

    println!("| measure | helper, isolation \"user\" | helper, isolation \"none\" | user / none | exec per call | helper (\"none\") vs exec |");
    println!("|---|---:|---:|---:|---:|---:|");
    // Warm-up (image layers, page cache, the daemon): not measured.
    run(&llm, USER, Load::new(8, 5, 8)).await;
    run(&llm, NONE, Load::new(8, 5, 8)).await;
    // Every row runs the same conversations through every mode: as many,
    // with as many tool calls each. At 1, sequential 3-call conversations,
    // where every gap between requests is one tool call; the helper modes
    // twice each (user, none, none, user), pooled.
    let sequential = if quick { 10 } else { 40 };
    let load = Load::new(sequential, 3, 1);
    let (u1, n1) = both(&llm, USER, NONE, load, false).await;
    let e = run(&llm, EXEC, load).await.timing;
    let (u2, n2) = both(&llm, USER, NONE, load, true).await;
    let (u, n) = (u1.timing.pooled(&u2.timing), n1.timing.pooled(&n2.timing));
    for (label, p) in [
        ("overhead per tool call, median (ms)", 0.5),
        ("overhead per tool call, p99 (ms)", 0.99),
    ] {
        row(
            label,
            u.overhead_ms(p),
            n.overhead_ms(p),
            e.overhead_ms(p),
            true,
            2,
        );
    }
    rate_rows(
        &format!("1 concurrent conversation ({sequential} of 3 calls)"),
        &u,
        &n,
        &e,
    );
    for (i, conc) in [64usize, 512].into_iter().enumerate() {
        // `conc` conversations at once, each `calls` long (the exec path
        // manages about a dozen calls a second, which bounds how long they
        // can be).
        let calls = if conc == 64 && !quick { 10 } else { 3 };
        let load = Load::new(conc, calls, conc);
        let (u, n) = both(&llm, USER, NONE, load, i % 2 == 0).await;
        let e = run(&llm, EXEC, load).await;
        rate_rows(
            &format!("{conc} concurrent conversations ({conc} of {calls} calls)"),
            &u.timing,
            &n.timing,
            &e.timing,
        );
    }
    println!();

    println!("| measure (helper) | isolation \"user\" | isolation \"none\" | user / none |");
    println!("|---|---:|---:|---:|");
    let n = if quick { 500 } else { 2000 };
    let (u, o) = both(&llm, USER, NONE, Load::new(n, 3, 256), false).await;
    let rate = |r: &Run| r.summary["conversations_per_s"].as_f64().unwrap();
    println!(
        "| conversations/s, 3-call conversations, workers 256 ({n} conversations; wall) | {:.1} ({:.1}s) | {:.1} ({:.1}s) | {:.2} |",
        rate(&u),
        u.wall.as_secs_f64(),
        rate(&o),
        o.wall.as_secs_f64(),
        rate(&u) / rate(&o)
    );
    // Every conversation waits 30 s on the model before its one tool call:
    // long enough for all of them to be in flight at once, each with an
    // open session and an HTTP request outstanding.
    let load = Load {
        think_ms: 30_000,
        ..Load::new(n, 1, n)
    };
    let u = run(&llm, USER, load).await;
    let u_peak = llm.peak_in_flight();
    let o = run(&llm, NONE, load).await;
    let o_peak = llm.peak_in_flight();
    let (u_rss, o_rss) = (u.peak_rss_kb as f64 / 1024.0, o.peak_rss_kb as f64 / 1024.0);
    println!(
        "| convoy peak RSS, {n} concurrent conversations (MB) | {u_rss:.1} | {o_rss:.1} | {:.2} |",
        u_rss / o_rss
    );
    println!(
        "| convoy peak open FDs, {n} concurrent conversations | {} | {} | {:.2} |",
        u.peak_fds,
        o.peak_fds,
        u.peak_fds as f64 / o.peak_fds as f64
    );
    println!("| ... conversations waiting on the model at once (peak) | {u_peak} | {o_peak} | |");
    println!(
        "| ... all {n} done in (s) | {:.1} ({} ok) | {:.1} ({} ok) | {:.2} |",
        u.wall.as_secs_f64(),
        u.summary["counts"]["ok"],
        o.wall.as_secs_f64(),
        o.summary["counts"]["ok"],
        u.wall.as_secs_f64() / o.wall.as_secs_f64()
    );
}

/// `tasks.jsonl` in `dir`: `n` rows `{id: PREFIXi, script}`, each playing
/// `turns` on the fake endpoint.
fn write_rows(dir: &Path, prefix: &str, n: usize, turns: &[Value]) {
    let mut rows = String::new();
    for i in 0..n {
        let script = json!({"conv": i, "turns": turns}).to_string();
        rows.push_str(&json!({"id": format!("{prefix}{i}"), "script": script}).to_string());
        rows.push('\n');
    }
    std::fs::write(dir.join("tasks.jsonl"), rows).unwrap();
}

/// The manifest's first tables for a job of `tasks.jsonl` rows whose
/// `script` the instant fake endpoint plays.
fn head(name: &str, llm: &FakeLlm) -> String {
    format!(
        "name = \"{name}\"\n[tasks]\nsource = \"tasks.jsonl\"\nid = \"{{{{ id }}}}\"\n[prompt]\nuser = \"{{{{ script }}}}\"\n[llm]\nbase_url = \"{}\"\nmodel = \"instant\"\nmax_in_flight = 4096\n",
        llm.base_url()
    )
}
