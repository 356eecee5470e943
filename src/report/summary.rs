//! The final summary (`summary.json` and the lines printed at the end),
//! made of the run's first and last events.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::events::{Outcome, RunStarted};
use crate::llm::{LlmReport, Usage};
use crate::monitor::{LeakVerdict, MetricsSummary, Verdict};

/// `summary.json`.
#[derive(Debug, Serialize)]
pub struct Summary<'a> {
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
    /// Of `not_run`: conversations cancelled before they finished.
    pub cancelled: u64,
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
    pub llm: &'a LlmReport,
    pub leaks: &'a LeakVerdict,
    /// Start, peak and end of what the monitor sampled.
    pub metrics: Option<&'a MetricsSummary>,
    pub stopped_because: Option<String>,
    pub exit_code: u8,
}

impl<'a> Summary<'a> {
    /// The summary of the run `start` began and `end` ended, with the exit
    /// code it ends with.
    pub fn new(start: &'a RunStarted, end: &'a Outcome, exit_code: u8) -> Summary<'a> {
        let stats = &end.stats;
        Summary {
            name: start.name.clone(),
            total_tasks: start.total_tasks,
            done: stats.done,
            skipped: stats.earlier,
            shard: start.shard.clone(),
            counts: stats
                .by_status
                .iter()
                .map(|(s, n)| (s.as_str().to_string(), *n))
                .collect(),
            not_run: start.total_tasks.saturating_sub(stats.done),
            cancelled: stats.cancelled,
            usage: stats.usage,
            steps: stats.steps,
            started_at: start.started_at.clone(),
            finished_at: end.finished_at.clone(),
            duration_s: end.duration_s,
            conversations_per_s: stats.rate(end.duration_s),
            workers: end.workers,
            llm: &end.llm,
            leaks: &end.leaks,
            metrics: end.metrics.as_ref(),
            stopped_because: end.stopped.as_ref().map(|s| s.detail.clone()),
            exit_code,
        }
    }

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
