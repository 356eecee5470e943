//! The progress display as a reporter: its own counts from the events,
//! the monitor's gauges and retry counts from each sample.

use crate::events::{Event, EventKind, RunStats};
use crate::monitor::Gauges;
use crate::report::Progress;

use super::Reporter;

pub struct ProgressReporter {
    progress: Progress,
    stats: RunStats,
}

impl ProgressReporter {
    pub fn new(progress: Progress) -> ProgressReporter {
        ProgressReporter {
            progress,
            stats: RunStats::default(),
        }
    }
}

impl Reporter for ProgressReporter {
    fn name(&self) -> &'static str {
        "the progress display"
    }

    fn critical(&self) -> bool {
        false
    }

    fn on(&mut self, ev: &Event) -> anyhow::Result<()> {
        self.stats.on(&ev.kind);
        match &ev.kind {
            EventKind::SampleTaken(s) => {
                self.progress.gauges(Gauges::of(&s.sample));
                self.progress.retries(&s.llm_retries);
            }
            // The last line after the final sample: its gauges are the end
            // state (sessions closed, connections dropped).
            EventKind::RunFinished(o) => self.progress.finish(&o.stats, &o.llm.retries_by_reason),
            _ => {}
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        self.progress.update(&self.stats);
        Ok(())
    }
}
