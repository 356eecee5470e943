//! Run statistics: counts kept from the event stream. The engine keeps
//! one for its own decisions (the monitor's counts, the outcome); any
//! reporter may keep its own from the same events.

use std::collections::BTreeMap;

use serde::Serialize;

use super::kind::EventKind;
use super::record::{Status, TaskRecord};
use crate::llm::Usage;

/// Counts over a run, earlier runs of the same directory included.
#[derive(Debug, Default, Clone, Serialize)]
pub struct RunStats {
    /// Tasks with a final record.
    pub done: u64,
    /// Of `done`, by status.
    #[serde(rename = "counts")]
    pub by_status: BTreeMap<Status, u64>,
    /// Tasks cancelled before they finished (not results).
    pub cancelled: u64,
    #[serde(skip)]
    pub in_flight: u64,
    /// The most in flight since `take_window` last ran.
    #[serde(skip)]
    pub in_flight_peak: u64,
    /// Tasks in their setup or verification phase right now: gauges the
    /// engine fills in for the monitor, not counted from events.
    #[serde(skip)]
    pub in_setup: u64,
    #[serde(skip)]
    pub in_verify: u64,
    pub usage: Usage,
    /// Model turns.
    pub steps: u64,
    /// Of `done`: tasks an earlier run of this directory finished, which
    /// this run skips. Rates count only the others.
    #[serde(rename = "skipped")]
    pub earlier: u64,
}

impl RunStats {
    pub fn on(&mut self, ev: &EventKind) {
        match ev {
            EventKind::TaskStarted { attempt: 1, .. } => {
                self.in_flight += 1;
                self.in_flight_peak = self.in_flight_peak.max(self.in_flight);
            }
            EventKind::TaskFinished(f) => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.count(&f.record);
            }
            EventKind::TaskCancelled { .. } => {
                self.in_flight = self.in_flight.saturating_sub(1);
                self.cancelled += 1;
            }
            EventKind::RunStarted(r) => *self = r.earlier.clone(),
            _ => {}
        }
    }

    /// Counts a task's final record (of this run, or of an earlier run of
    /// the same directory).
    fn count(&mut self, r: &TaskRecord) {
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
    pub fn take_window(&mut self) -> RunStats {
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
