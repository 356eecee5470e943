//! The summary printed at the end of a run (stdout, or stderr when stdout
//! carries the event stream).

use crate::events::{Event, EventKind, RunStarted};
use crate::report::say;
use crate::report::Summary;

use super::Reporter;

pub struct SummaryPrinter {
    to_stderr: bool,
    start: Option<RunStarted>,
}

impl SummaryPrinter {
    pub fn new(to_stderr: bool) -> SummaryPrinter {
        SummaryPrinter {
            to_stderr,
            start: None,
        }
    }
}

impl Reporter for SummaryPrinter {
    fn name(&self) -> &'static str {
        "the summary"
    }

    fn critical(&self) -> bool {
        false
    }

    fn on(&mut self, ev: &Event) -> anyhow::Result<()> {
        match &ev.kind {
            EventKind::RunStarted(s) => self.start = Some((**s).clone()),
            EventKind::RunFinished(o) => {
                let start = self.start.as_ref().expect("run_started comes first");
                let text = format!(
                    "{}run directory: {}\n",
                    Summary::new(start, o, o.exit_code).render(),
                    start.run_dir
                );
                if self.to_stderr {
                    crate::report::term::eprint_line(text.trim_end());
                } else {
                    say(&text);
                }
            }
            _ => {}
        }
        Ok(())
    }
}
