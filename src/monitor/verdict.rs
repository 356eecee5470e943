//! The end-of-run verdicts: whether anything leaked, and the start, peak
//! and end of what the monitor sampled (both go into `summary.json`).

use serde::Serialize;

use super::leaks::Finding;
use super::sampler::Monitor;
use crate::workspace::ShutdownReport;

#[derive(Debug, Serialize)]
pub struct LeakVerdict {
    /// `clean`, `leak`, or `unknown` (nothing was found, but a look at the
    /// workspace failed, so clean cannot be said).
    pub verdict: &'static str,
    /// Why the verdict is `unknown`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unknown_because: Vec<String>,
    /// Leak rules that tripped while the job ran (or at its end).
    pub findings: Vec<Finding>,
    #[serde(flatten)]
    pub shutdown: ShutdownReport,
}

impl LeakVerdict {
    /// `gaps` are the looks at the workspace that failed.
    pub fn new(shutdown: ShutdownReport, findings: Vec<Finding>, gaps: Vec<String>) -> LeakVerdict {
        let found = !findings.is_empty()
            || !shutdown.stray_sessions.is_empty()
            || !shutdown.stray_processes.is_empty();
        let verdict = match (found, gaps.is_empty()) {
            (true, _) => "leak",
            (false, true) => "clean",
            (false, false) => "unknown",
        };
        LeakVerdict {
            verdict,
            unknown_because: if found { Vec::new() } else { gaps },
            findings,
            shutdown,
        }
    }

    pub fn is_leak(&self) -> bool {
        self.verdict == "leak"
    }
}

/// Start, peak and end of the monitor's samples; peaks include what
/// happened between samples.
#[derive(Debug, Serialize)]
pub struct MetricsSummary {
    pub open_fds_start: u64,
    pub open_fds_peak: u64,
    pub open_fds_end: u64,
    pub rss_bytes_peak: u64,
    pub threads_peak: u64,
    pub tmux_sessions_peak: u64,
    pub tmux_sessions_end: u64,
    pub workspace_procs_peak: u64,
    pub workspace_procs_end: u64,
    /// Conversations in flight at once, at most.
    pub in_flight_peak: u64,
    /// Requests in flight to the endpoint at once, at most.
    pub llm_in_flight_peak: u64,
    pub samples_csv: &'static str,
}

impl MetricsSummary {
    pub fn from_monitor(m: &Monitor) -> MetricsSummary {
        MetricsSummary {
            open_fds_start: m.first.as_ref().map_or(0, |s| s.open_fds),
            open_fds_peak: m.peak.open_fds,
            open_fds_end: m.last.open_fds,
            rss_bytes_peak: m.peak.rss_bytes,
            threads_peak: m.peak.threads,
            tmux_sessions_peak: m.peak.tmux_sessions,
            tmux_sessions_end: m.last.tmux_sessions,
            workspace_procs_peak: m.peak.workspace_procs,
            workspace_procs_end: m.last.workspace_procs,
            in_flight_peak: m.peak.in_flight,
            llm_in_flight_peak: m.peak.llm_in_flight,
            samples_csv: "metrics.csv",
        }
    }
}
