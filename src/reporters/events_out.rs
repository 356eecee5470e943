//! `convoy run --events PATH|-`: the event stream as JSON lines, flushed
//! at the end of every batch. A reader that goes away (`--events - | head`)
//! is the reader's choice: the stream stops quietly and the run goes on,
//! as for the summary on stdout; any other write error stops the run.

use std::io::{BufWriter, Write};

use crate::events::{to_json_line, Event};

use super::Reporter;

pub struct EventsOut {
    out: BufWriter<Box<dyn Write + Send>>,
    /// The reader went away.
    closed: bool,
}

impl EventsOut {
    pub fn new(out: Box<dyn Write + Send>) -> EventsOut {
        EventsOut {
            out: BufWriter::new(out),
            closed: false,
        }
    }
}

impl EventsOut {
    fn quiet_if_closed(&mut self, r: std::io::Result<()>) -> anyhow::Result<()> {
        match r {
            Err(e) if crate::report::is_closed_pipe(&e) => {
                self.closed = true;
                Ok(())
            }
            other => Ok(other?),
        }
    }
}

impl Reporter for EventsOut {
    fn name(&self) -> &'static str {
        "the event stream (--events)"
    }

    fn on(&mut self, ev: &Event) -> anyhow::Result<()> {
        if self.closed {
            return Ok(());
        }
        let line = to_json_line(ev)?;
        let written = self.out.write_all(line.as_bytes());
        self.quiet_if_closed(written)
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        if self.closed {
            return Ok(());
        }
        let flushed = self.out.flush();
        self.quiet_if_closed(flushed)
    }
}
