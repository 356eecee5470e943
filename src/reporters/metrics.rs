//! `metrics.csv`: one row per monitor sample, written by the `csv` crate
//! from the `Sample` type, so the header and the rows cannot drift.

use std::fs::File;
use std::path::Path;

use crate::events::{Event, EventKind};

use super::Reporter;

pub struct MetricsCsv {
    csv: csv::Writer<File>,
}

impl MetricsCsv {
    pub fn create(run_dir: &Path) -> std::io::Result<MetricsCsv> {
        Ok(MetricsCsv {
            csv: csv::Writer::from_writer(File::create(run_dir.join("metrics.csv"))?),
        })
    }
}

impl Reporter for MetricsCsv {
    fn name(&self) -> &'static str {
        "metrics.csv"
    }

    /// The samples are also in `summary.json`'s figures; a full disk here
    /// is logged, not a reason to stop the job.
    fn critical(&self) -> bool {
        false
    }

    fn on(&mut self, ev: &Event) -> anyhow::Result<()> {
        if let EventKind::SampleTaken(s) = &ev.kind {
            self.csv.serialize(&s.sample)?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(self.csv.flush()?)
    }
}
