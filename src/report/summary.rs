//! Counting a run's events into the final summary (`summary.json` and the
//! lines printed at the end).

use std::collections::BTreeMap;

use serde::Serialize;

use crate::events::Event;
use crate::journal::Status;
use crate::llm::Usage;
use crate::workspace::ShutdownReport;

/// Running counts, fed by events.
#[derive(Debug, Default, Clone)]
pub struct Tally {
    pub by_status: BTreeMap<Status, u64>,
    pub done: u64,
    pub cancelled: u64,
    pub in_flight: u64,
    pub usage: Usage,
    pub steps: u64,
}

impl Tally {
    pub fn on(&mut self, ev: &Event) {
        match ev {
            Event::TaskStarted { attempt, .. } => {
                if *attempt == 1 {
                    self.in_flight += 1;
                }
            }
            Event::StepDone { .. } => {}
            Event::TaskFinished(f) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.done += 1;
                *self.by_status.entry(f.record.status).or_default() += 1;
                self.usage.add(&f.record.usage);
                self.steps += f.record.steps as u64;
            }
            Event::TaskCancelled { .. } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.cancelled += 1;
            }
        }
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
    pub counts: BTreeMap<String, u64>,
    /// Tasks cancelled or never started (Ctrl-C, a fatal error).
    pub not_run: u64,
    pub usage: Usage,
    pub steps: u64,
    pub started_at: String,
    pub finished_at: String,
    pub duration_s: f64,
    pub conversations_per_s: f64,
    pub workers: usize,
    pub leaks: LeakVerdict,
    pub stopped_because: Option<String>,
    pub exit_code: u8,
}

#[derive(Debug, Serialize)]
pub struct LeakVerdict {
    /// `clean` or `leak`.
    pub verdict: &'static str,
    #[serde(flatten)]
    pub shutdown: ShutdownReport,
}

impl LeakVerdict {
    pub fn from_shutdown(shutdown: ShutdownReport) -> LeakVerdict {
        let verdict = if shutdown.stray_sessions.is_empty() {
            "clean"
        } else {
            "leak"
        };
        LeakVerdict { verdict, shutdown }
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
            "{}: {}/{} tasks done ({}) in {:.1}s, {:.1} conversations/s\n",
            self.name,
            self.done,
            self.total_tasks,
            if counts.is_empty() {
                "none".to_string()
            } else {
                counts.join(", ")
            },
            self.duration_s,
            self.conversations_per_s
        );
        s.push_str(&format!(
            "tokens: {} prompt, {} completion; {} model turns; {} LLM retries\n",
            self.usage.prompt_tokens, self.usage.completion_tokens, self.steps, self.usage.retries
        ));
        if self.not_run > 0 {
            s.push_str(&format!(
                "not run: {} tasks (run again to do them)\n",
                self.not_run
            ));
        }
        s.push_str(&format!("leaks: {}", self.leaks.verdict));
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
