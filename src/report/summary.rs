//! Counting a run's events into the final summary (`summary.json` and the
//! lines printed at the end).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::events::Event;
use crate::journal::{Status, TaskRecord};
use crate::llm::{LlmReport, Usage};
use crate::monitor::{LeakVerdict, Monitor, Verdict};

/// Running counts, fed by events.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub by_status: BTreeMap<Status, u64>,
    pub done: u64,
    pub cancelled: u64,
    pub in_flight: u64,
    /// The most in flight since the monitor last took it (`take_window`).
    pub in_flight_peak: u64,
    pub usage: Usage,
    pub steps: u64,
    /// Of `done`: tasks an earlier run of this directory finished, which
    /// this run skips. Rates count only the others.
    pub earlier: u64,
}

impl Tally {
    pub fn on(&mut self, ev: &Event) {
        match ev {
            Event::TaskStarted { attempt, .. } => {
                if *attempt == 1 {
                    self.in_flight += 1;
                    self.in_flight_peak = self.in_flight_peak.max(self.in_flight);
                }
            }
            Event::StepDone { .. } => {}
            Event::TaskFinished(f) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.count(&f.record);
            }
            Event::TaskCancelled { .. } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.cancelled += 1;
            }
        }
    }

    /// Counts a task's final record (of this run, or of an earlier run of
    /// the same directory).
    pub fn count(&mut self, r: &TaskRecord) {
        self.done += 1;
        *self.by_status.entry(r.status).or_default() += 1;
        self.usage.add(&r.usage);
        self.steps += r.steps as u64;
    }

    /// Counts a task an earlier run of the directory finished.
    pub fn count_earlier(&mut self, r: &TaskRecord) {
        self.count(r);
        self.earlier += 1;
    }

    /// Tasks this run finished (what rates are made of).
    pub fn ran(&self) -> u64 {
        self.done - self.earlier
    }

    /// Tasks finished per second by this run over `elapsed_s`; `None`
    /// before it finished any (a resumed run with nothing left to do has
    /// no rate).
    pub fn rate(&self, elapsed_s: f64) -> Option<f64> {
        (self.ran() > 0 && elapsed_s > 0.0).then(|| self.ran() as f64 / elapsed_s)
    }

    /// A copy for one monitor sample; the in-flight peak starts again from
    /// what is in flight now, so each sample holds the peak since the last.
    pub fn take_window(&mut self) -> Tally {
        let t = self.clone();
        self.in_flight_peak = self.in_flight;
        t
    }

    pub fn ok(&self) -> u64 {
        self.by_status.get(&Status::Ok).copied().unwrap_or(0)
    }

    pub fn not_ok(&self) -> u64 {
        self.done - self.ok()
    }
}

/// `summary.json`.
#[derive(Debug, Serialize)]
pub struct Summary {
    pub name: String,
    pub total_tasks: u64,
    pub done: u64,
    /// Of `done`: tasks an earlier run of this directory finished.
    pub skipped: u64,
    /// `I/N` when the run was one shard of the job.
    pub shard: Option<String>,
    pub counts: BTreeMap<String, u64>,
    /// Tasks cancelled or never started (Ctrl-C, a fatal error).
    pub not_run: u64,
    pub usage: Usage,
    pub steps: u64,
    pub started_at: String,
    pub finished_at: String,
    pub duration_s: f64,
    /// Tasks this run finished per second (not those `skipped`); `null`
    /// when it finished none.
    pub conversations_per_s: Option<f64>,
    pub workers: usize,
    /// Requests, tokens, cost, retries by reason, the in-flight limiter and
    /// outages.
    pub llm: LlmReport,
    pub leaks: LeakVerdict,
    /// Start, peak and end of what the monitor sampled.
    pub metrics: Option<MetricsSummary>,
    pub stopped_because: Option<String>,
    pub exit_code: u8,
}

/// Start, peak and end of the monitor's samples; peaks include what
/// happened between samples. The workspace's figures are `null` when no
/// sample got an answer (peak) or the final one did not (end): unknown,
/// never read as 0.
#[derive(Debug, Serialize)]
pub struct MetricsSummary {
    pub open_fds_start: u64,
    pub open_fds_peak: u64,
    pub open_fds_end: u64,
    pub rss_bytes_peak: u64,
    pub threads_peak: u64,
    pub tmux_sessions_peak: Option<u64>,
    pub tmux_sessions_end: Option<u64>,
    pub workspace_procs_peak: Option<u64>,
    pub workspace_procs_end: Option<u64>,
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

impl Summary {
    /// The lines printed at the end of a run.
    pub fn render(&self) -> String {
        let counts: Vec<String> = self
            .counts
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let mut s = format!(
            "{}: {}/{} tasks done ({}) in {:.1}s",
            self.name,
            self.done,
            self.total_tasks,
            if counts.is_empty() {
                "none".to_string()
            } else {
                counts.join(", ")
            },
            self.duration_s,
        );
        if let Some(rate) = self.conversations_per_s {
            s.push_str(&format!(", {rate:.1} conversations/s"));
        }
        s.push('\n');
        s.push_str(&format!(
            "tokens: {} prompt, {} completion; {} model turns; {} LLM retries\n",
            self.usage.prompt_tokens, self.usage.completion_tokens, self.steps, self.usage.retries
        ));
        if self.skipped > 0 {
            s.push_str(&format!(
                "continued: {} of the done tasks were finished by earlier runs of this directory\n",
                self.skipped
            ));
        }
        if let Some(shard) = &self.shard {
            s.push_str(&format!("shard {shard} of the job\n"));
        }
        s.push_str(&self.llm.render());
        if self.not_run > 0 {
            s.push_str(&format!(
                "not run: {} tasks (run again to do them)\n",
                self.not_run
            ));
        }
        if let Some(m) = &self.metrics {
            let known = |v: Option<u64>| v.map_or_else(|| "unknown".to_string(), |n| n.to_string());
            s.push_str(&format!(
                "convoy FDs {} -> peak {} -> {}; RSS peak {:.1} MB; tmux sessions peak {}, end {}; workspace processes peak {}, end {}; in flight peak {}\n",
                m.open_fds_start,
                m.open_fds_peak,
                m.open_fds_end,
                m.rss_bytes_peak as f64 / 1048576.0,
                known(m.tmux_sessions_peak),
                known(m.tmux_sessions_end),
                known(m.workspace_procs_peak),
                known(m.workspace_procs_end),
                m.in_flight_peak
            ));
        }
        s.push_str(&format!("leaks: {}", self.leaks.verdict.as_str()));
        if let Verdict::Unknown { why } = &self.leaks.verdict {
            for reason in why {
                s.push_str(&format!("\n  not checked: {reason}"));
            }
        }
        for f in &self.leaks.findings {
            s.push_str(&format!("\n  {} at {:.0}s: {}", f.rule, f.at_s, f.detail));
        }
        if !self.leaks.shutdown.stray_processes.is_empty() {
            s.push_str(&format!(
                " (processes left running: {:?})",
                self.leaks.shutdown.stray_processes
            ));
        }
        if !self.leaks.shutdown.stray_sessions.is_empty() {
            s.push_str(&format!(
                " (sessions left open: {})",
                self.leaks.shutdown.stray_sessions.join(", ")
            ));
        }
        s.push('\n');
        if let Some(why) = &self.stopped_because {
            s.push_str(&format!("stopped: {why}\n"));
        }
        s
    }
}
