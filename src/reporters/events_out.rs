//! `convoy run --events PATH|-`: the event stream as JSON lines, flushed
//! at the end of every batch.

use std::io::{BufWriter, Write};

use crate::events::{to_json_line, Event};

use super::Reporter;

pub struct EventsOut {
    out: BufWriter<Box<dyn Write + Send>>,
}

impl EventsOut {
    pub fn new(out: Box<dyn Write + Send>) -> EventsOut {
        EventsOut {
            out: BufWriter::new(out),
        }
    }
}

impl Reporter for EventsOut {
    fn name(&self) -> &'static str {
        "the event stream (--events)"
    }

    fn on(&mut self, ev: &Event) -> anyhow::Result<()> {
        self.out.write_all(to_json_line(ev)?.as_bytes())?;
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(self.out.flush()?)
    }
}
