//! The journal as a reporter (`run.json` is written before the workspace
//! boots, by the caller): each turn and each final record appended, synced
//! at the end of every batch, `summary.json` at the end; closing releases
//! the directory's lock.

use crate::events::{Event, EventKind, RunStarted};
use crate::journal::Journal;
use crate::report::Summary;

use super::Reporter;

pub struct JournalReporter {
    journal: Journal,
    start: Option<RunStarted>,
}

impl JournalReporter {
    pub fn new(journal: Journal) -> JournalReporter {
        JournalReporter {
            journal,
            start: None,
        }
    }
}

impl Reporter for JournalReporter {
    fn name(&self) -> &'static str {
        "the journal"
    }

    fn on(&mut self, ev: &Event) -> anyhow::Result<()> {
        match &ev.kind {
            EventKind::RunStarted(s) => self.start = Some((**s).clone()),
            EventKind::TurnDone {
                id,
                attempt,
                step,
                messages,
                turns,
            } => self
                .journal
                .append_turn(id, *attempt, *step, messages, turns)?,
            EventKind::TaskFinished(f) => self.journal.append(f)?,
            EventKind::CallDone { record, .. } => self.journal.append_call(record)?,
            EventKind::RunFinished(o) => {
                // Tried even after the journal failed: the summary says
                // why the run stopped.
                let synced = self.journal.sync();
                let start = self.start.as_ref().expect("run_started comes first");
                self.journal
                    .write_summary(&Summary::new(start, o, o.exit_code))?;
                synced?;
            }
            _ => {}
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(self.journal.sync()?)
    }

    fn finish(self: Box<Self>) -> anyhow::Result<()> {
        Ok(self.journal.close()?)
    }
}
