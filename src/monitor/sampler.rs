//! Sampling: each sample is one row of `metrics.csv` (written by its
//! reporter). Each row is what was there at the sample
//! and, in the `*_peak` columns, the most there was since the row before:
//! convoy's FDs (read every 100 ms), sessions and in-flight conversations
//! and requests (counted as they open and close). Workspace processes
//! between samples are counted as one per open session (its shell), a
//! floor: what those shells started is only seen by the samples.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::Serialize;

use super::leaks::{Finding, LeakRules, Own};
use super::own::{OwnSampler, FAST};
use crate::llm::Llm;
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
    /// The most since the previous row (this one included).
    pub open_fds_peak: u64,
    pub tmux_sessions_peak: u64,
    pub workspace_procs_peak: u64,
    pub in_flight_peak: u64,
    pub llm_in_flight_peak: u64,
}

/// The run's counts a sample records (the engine's statistics, as of
/// the sample).
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub in_flight: u64,
    /// The most in flight since the previous sample.
    pub in_flight_peak: u64,
    pub done: u64,
    pub failed: u64,
    /// Tasks this run finished (not earlier runs of the directory).
    pub ran: u64,
}

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

impl Gauges {
    pub fn of(s: &Sample) -> Gauges {
        Gauges {
            open_fds: s.open_fds,
            tmux_sessions: s.tmux_sessions,
            workspace_procs: s.workspace_procs,
            llm_in_flight: s.llm_in_flight,
            llm_limit: s.llm_limit,
            leaks: s.leaks,
        }
    }
}

pub struct Monitor {
    started: Instant,
    pub rules: LeakRules,
    /// The highest of every column over the run, peaks between samples
    /// included (RSS and threads too: the FD thread reads them).
    pub peak: Sample,
    pub first: Option<Sample>,
    pub last: Sample,
    own: OwnSampler,
    /// The most requests in flight to the endpoint so far: each holds one
    /// HTTP connection, which the pool keeps for the next request (the
    /// leak rules also count the TCP connections open at each sample).
    pooled: u64,
}

impl Monitor {
    pub fn new(warmup: u64, started: Instant) -> Monitor {
        Monitor {
            started,
            rules: LeakRules::new(warmup),
            peak: Sample::default(),
            first: None,
            last: Sample::default(),
            own: OwnSampler::start(FAST),
            pooled: 0,
        }
    }

    /// Takes one sample and applies the leak rules; returns the row and
    /// the rules that tripped for the first time. The counts come from
    /// `counts`, read once the workspace has answered so that they are as
    /// fresh as the rest of the row.
    pub async fn sample(
        &mut self,
        workspace: &Workspace,
        counts: impl FnOnce() -> Counts,
        llm: &Llm,
    ) -> (Sample, Vec<Finding>) {
        // Take ownership first: a session opened after this snapshot but
        // before the workspace answers would otherwise look unowned (the
        // rules also want it to last two samples).
        let open: HashSet<String> = workspace.open_sessions();
        let ws = tokio::time::timeout(Duration::from_secs(30), workspace.stats())
            .await
            .ok()
            .and_then(Result::ok);
        let ((open_fds, threads, rss_bytes), own_peak) = self.own.take();
        let sessions_peak = workspace.take_sessions_peak();
        let llm_in_flight = llm.in_flight();
        let llm_peak = llm.take_in_flight_peak().max(llm_in_flight);
        self.pooled = self.pooled.max(llm_peak);
        // The pool can hold a few more connections than requests were ever
        // in flight at once (a connection goes back to the pool a moment
        // after its reply, and a request at that moment opens another), so
        // the connections actually open count too, up to the most the pool
        // can need: a leak of connections still shows past that ceiling.
        let connections = super::own::tcp_connections().min(llm.in_flight_ceiling());
        let pooled = self.pooled.max(connections);
        let tally = counts();
        let tmux_sessions = ws.as_ref().map_or(0, |w| w.sessions.len() as u64);
        let workspace_procs = ws.as_ref().map_or(0, |w| w.processes.len() as u64);
        let s = Sample {
            elapsed_s: (self.started.elapsed().as_secs_f64() * 10.0).round() / 10.0,
            open_fds,
            threads,
            rss_bytes,
            tmux_sessions,
            workspace_procs,
            workspace_fds: ws.as_ref().map_or(0, |w| w.fds),
            in_flight: tally.in_flight,
            done: tally.done,
            failed: tally.failed,
            llm_in_flight,
            llm_limit: llm.limit(),
            leaks: 0,
            open_fds_peak: own_peak.0,
            tmux_sessions_peak: tmux_sessions.max(sessions_peak),
            // Each open session has at least its shell.
            workspace_procs_peak: workspace_procs.max(sessions_peak),
            in_flight_peak: tally.in_flight_peak.max(tally.in_flight),
            llm_in_flight_peak: llm_peak,
        };
        self.peak.threads = self.peak.threads.max(own_peak.1);
        self.peak.rss_bytes = self.peak.rss_bytes.max(own_peak.2);
        let own = Own {
            // Growth is per conversation of this run: a resumed run's
            // earlier tasks did not pass through this process.
            done: tally.ran,
            fds: s.open_fds,
            pooled,
            rss: s.rss_bytes,
        };
        let new = self.rules.observe(s.elapsed_s, &open, ws.as_ref(), own);
        let s = Sample {
            leaks: self.rules.findings.len() as u64,
            ..s
        };
        self.record(&s);
        (s, new)
    }

    /// Samples the workspace did not answer (empty when all did).
    pub fn gaps(&self) -> Vec<String> {
        Vec::new()
    }

    fn record(&mut self, s: &Sample) {
        let p = &mut self.peak;
        p.open_fds = p.open_fds.max(s.open_fds_peak);
        p.threads = p.threads.max(s.threads);
        p.rss_bytes = p.rss_bytes.max(s.rss_bytes);
        p.tmux_sessions = p.tmux_sessions.max(s.tmux_sessions_peak);
        p.workspace_procs = p.workspace_procs.max(s.workspace_procs_peak);
        p.in_flight = p.in_flight.max(s.in_flight_peak);
        p.llm_in_flight = p.llm_in_flight.max(s.llm_in_flight_peak);
        self.first.get_or_insert_with(|| s.clone());
        self.last = s.clone();
    }
}
