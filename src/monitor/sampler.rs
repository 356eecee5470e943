//! Sampling and `metrics.csv`.

use std::collections::HashSet;
use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;

use super::leaks::{Finding, LeakRules};
use crate::llm::Llm;
use crate::report::Tally;
use crate::workspace::Workspace;

/// One row of `metrics.csv`.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    pub elapsed_s: f64,
    pub open_fds: u64,
    pub threads: u64,
    pub rss_bytes: u64,
    pub tmux_sessions: u64,
    pub workspace_procs: u64,
    pub workspace_fds: u64,
    pub in_flight: u64,
    pub done: u64,
    pub failed: u64,
    pub llm_in_flight: u64,
    /// The adaptive limit on requests in flight (0: no HTTP endpoint).
    pub llm_limit: u64,
    pub leaks: u64,
}

const HEADER: &str = "elapsed_s,open_fds,threads,rss_bytes,tmux_sessions,workspace_procs,workspace_fds,in_flight,done,failed,llm_in_flight,llm_limit,leaks\n";

/// The latest figures, for the progress line.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub open_fds: u64,
    pub tmux_sessions: u64,
    pub workspace_procs: u64,
    pub llm_in_flight: u64,
    pub llm_limit: u64,
    pub leaks: u64,
}

/// convoy's own open FDs, threads and RSS (bytes), from /proc/self.
pub fn own_usage() -> (u64, u64, u64) {
    let fds = std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64);
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (fds, field("Threads:"), field("VmRSS:") * 1024)
}

pub struct Monitor {
    started: Instant,
    csv: BufWriter<File>,
    pub rules: LeakRules,
    pub gauges: Arc<Mutex<Gauges>>,
    pub peak: Sample,
    pub first: Option<Sample>,
    pub last: Sample,
}

impl Monitor {
    pub fn create(run_dir: &Path, warmup: u64, started: Instant) -> std::io::Result<Monitor> {
        let mut csv = BufWriter::new(File::create(run_dir.join("metrics.csv"))?);
        csv.write_all(HEADER.as_bytes())?;
        Ok(Monitor {
            started,
            csv,
            rules: LeakRules::new(warmup),
            gauges: Arc::default(),
            peak: Sample::default(),
            first: None,
            last: Sample::default(),
        })
    }

    /// Takes one sample, applies the leak rules, appends the row. New
    /// findings are logged here, the first time each rule trips.
    pub async fn sample(
        &mut self,
        workspace: &Workspace,
        tally: &Tally,
        llm: &Llm,
    ) -> Vec<Finding> {
        let (open_fds, threads, rss_bytes) = own_usage();
        // Take ownership first: a session opened after this snapshot but
        // before the workspace answers would otherwise look unowned (the
        // rules also want it to last two samples).
        let open: HashSet<String> = workspace.open_sessions();
        let ws = tokio::time::timeout(Duration::from_secs(30), workspace.stats())
            .await
            .ok()
            .and_then(Result::ok);
        let s = Sample {
            elapsed_s: self.started.elapsed().as_secs_f64(),
            open_fds,
            threads,
            rss_bytes,
            tmux_sessions: ws.as_ref().map_or(0, |w| w.sessions.len() as u64),
            workspace_procs: ws.as_ref().map_or(0, |w| w.processes.len() as u64),
            workspace_fds: ws.as_ref().map_or(0, |w| w.fds),
            in_flight: tally.in_flight,
            done: tally.done,
            failed: tally.not_ok(),
            llm_in_flight: llm.in_flight(),
            llm_limit: llm.limit(),
            leaks: 0,
        };
        let new = self.rules.observe(
            s.elapsed_s,
            &open,
            ws.as_ref(),
            s.done,
            s.open_fds,
            s.rss_bytes,
        );
        for f in &new {
            tracing::warn!("leak detected ({}): {}", f.rule, f.detail);
        }
        let s = Sample {
            leaks: self.rules.findings.len() as u64,
            ..s
        };
        self.record(s);
        new
    }

    fn record(&mut self, s: Sample) {
        let row = format!(
            "{:.1},{},{},{},{},{},{},{},{},{},{},{},{}\n",
            s.elapsed_s,
            s.open_fds,
            s.threads,
            s.rss_bytes,
            s.tmux_sessions,
            s.workspace_procs,
            s.workspace_fds,
            s.in_flight,
            s.done,
            s.failed,
            s.llm_in_flight,
            s.llm_limit,
            s.leaks
        );
        if self
            .csv
            .write_all(row.as_bytes())
            .and_then(|()| self.csv.flush())
            .is_err()
        {
            tracing::warn!("cannot write metrics.csv");
        }
        let p = &mut self.peak;
        p.open_fds = p.open_fds.max(s.open_fds);
        p.threads = p.threads.max(s.threads);
        p.rss_bytes = p.rss_bytes.max(s.rss_bytes);
        p.tmux_sessions = p.tmux_sessions.max(s.tmux_sessions);
        p.workspace_procs = p.workspace_procs.max(s.workspace_procs);
        *self.gauges.lock().expect("gauges lock") = Gauges {
            open_fds: s.open_fds,
            tmux_sessions: s.tmux_sessions,
            workspace_procs: s.workspace_procs,
            llm_in_flight: s.llm_in_flight,
            llm_limit: s.llm_limit,
            leaks: s.leaks,
        };
        self.first.get_or_insert_with(|| s.clone());
        self.last = s;
    }
}
