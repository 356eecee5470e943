//! Where the CPU of a benchmark run went, by part: convoy (the run's
//! process, exact, from its rusage), the workspace helper (sampled from
//! /proc), the Docker engine (dockerd, containerd and its shims, sampled),
//! the fake endpoint (this process, exact, less the sampler's own thread),
//! and everything else the machine did meanwhile (the agents, tmux, the
//! kernel): the machine's busy time from /proc/stat less the named parts.
//! Processes that live through the run are sampled every 250 ms; short
//! ones (the agents) land in "everything else".

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use nix::sys::resource::{getrusage, UsageWho};

/// CPU seconds by part over one run.
#[derive(Debug, Default, Clone, Copy)]
pub struct CpuSplit {
    pub convoy: f64,
    pub helper: f64,
    pub engine: f64,
    pub endpoint: f64,
    pub rest: f64,
}

#[derive(Clone, Copy, PartialEq, Eq, Hash)]
enum Part {
    Helper,
    Engine,
}

/// Samples from `start` until `finish`; the child (convoy) must have been
/// waited for in between, so that its rusage is counted.
pub struct CpuSampler {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<(HashMap<Part, f64>, f64)>,
    children: f64,
    this: f64,
    busy: f64,
}

impl CpuSampler {
    pub fn start() -> CpuSampler {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let children = rusage_s(UsageWho::RUSAGE_CHILDREN);
        let this = rusage_s(UsageWho::RUSAGE_SELF);
        let busy = busy_s();
        let thread = std::thread::spawn(move || sample(&flag));
        CpuSampler {
            stop,
            thread,
            children,
            this,
            busy,
        }
    }

    pub fn finish(self) -> CpuSplit {
        self.stop.store(true, Ordering::Relaxed);
        let (parts, sampler) = self.thread.join().expect("the CPU sampler panicked");
        let convoy = rusage_s(UsageWho::RUSAGE_CHILDREN) - self.children;
        let endpoint = rusage_s(UsageWho::RUSAGE_SELF) - self.this - sampler;
        let helper = parts.get(&Part::Helper).copied().unwrap_or(0.0);
        let engine = parts.get(&Part::Engine).copied().unwrap_or(0.0);
        let busy = busy_s() - self.busy;
        CpuSplit {
            convoy,
            helper,
            engine,
            endpoint,
            rest: (busy - convoy - helper - engine - endpoint - sampler).max(0.0),
        }
    }
}

/// Per part, the CPU seconds its processes used between the first and the
/// last time they were seen; and the sampler thread's own CPU seconds.
fn sample(stop: &AtomicBool) -> (HashMap<Part, f64>, f64) {
    // pid -> (part, ticks when first seen, ticks when last seen)
    let mut seen: HashMap<u32, (Kind, u64, u64)> = HashMap::new();
    let mut first_pass = true;
    loop {
        let last = stop.load(Ordering::Relaxed);
        for pid in pids() {
            let entry = seen.entry(pid).or_insert_with(|| {
                let kind = classify(pid);
                // A process there before the run counts from now; one
                // started during it, from its start.
                let ticks = match (kind, first_pass) {
                    (Kind::Part(_), true) => ticks(&format!("/proc/{pid}/stat")).unwrap_or(0),
                    _ => 0,
                };
                (kind, ticks, ticks)
            });
            if entry.0 == Kind::Starting {
                // Seen before its exec (a `docker exec` starts as runc's
                // init): tell what it became.
                entry.0 = classify(pid);
            }
            if let Kind::Part(_) = entry.0 {
                if let Some(t) = ticks(&format!("/proc/{pid}/stat")) {
                    entry.2 = t;
                }
            }
        }
        first_pass = false;
        if last {
            break;
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    let tick = tick_s();
    let mut parts = HashMap::new();
    for (kind, first, last) in seen.into_values() {
        if let Kind::Part(part) = kind {
            *parts.entry(part).or_insert(0.0) += (last - first) as f64 * tick;
        }
    }
    let own = ticks("/proc/thread-self/stat").unwrap_or(0) as f64 * tick;
    (parts, own)
}

fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|d| {
            d.filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default()
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Part(Part),
    /// Not yet what it will run (runc's init before its exec).
    Starting,
    Other,
}

/// The helper is the workspace's `/opt/convoy/convoy` that is not a
/// session's holder (`session-exec`); the engine is dockerd, containerd and
/// the shims.
fn classify(pid: u32) -> Kind {
    let Ok(comm) = std::fs::read_to_string(format!("/proc/{pid}/comm")) else {
        return Kind::Other;
    };
    match comm.trim() {
        "dockerd" | "containerd" => return Kind::Part(Part::Engine),
        c if c.starts_with("containerd-shim") => return Kind::Part(Part::Engine),
        c if c.starts_with("runc") => return Kind::Starting,
        "convoy" => {}
        _ => return Kind::Other,
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    let mut args = cmdline.split(|b| *b == 0);
    let is_helper = args.next() == Some(b"/opt/convoy/convoy".as_slice())
        && args.next() != Some(b"session-exec".as_slice());
    if is_helper {
        Kind::Part(Part::Helper)
    } else {
        Kind::Other
    }
}

/// utime + stime of a /proc stat file, in clock ticks.
fn ticks(path: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(path).ok()?;
    // The fields after the command name, which is in parentheses.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are the stat file's 14th and 15th fields.
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// The machine's busy CPU seconds since boot (all but idle and iowait).
fn busy_s() -> f64 {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu = stat.lines().next().unwrap_or_default();
    let v: Vec<u64> = cpu
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal (guest is in user)
    let busy: u64 = v
        .iter()
        .take(8)
        .enumerate()
        .filter(|(i, _)| *i != 3 && *i != 4)
        .map(|(_, t)| t)
        .sum();
    busy as f64 * tick_s()
}

fn tick_s() -> f64 {
    // USER_HZ: /proc reports in these on every Linux this runs on.
    0.01
}

fn rusage_s(who: UsageWho) -> f64 {
    let u = getrusage(who).expect("getrusage");
    let s = |t: nix::sys::time::TimeVal| t.tv_sec() as f64 + t.tv_usec() as f64 / 1e6;
    s(u.user_time()) + s(u.system_time())
}
