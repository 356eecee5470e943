//! `metrics.csv`: one row per monitor sample, written by the `csv` crate
//! from the `Sample` type, so the header and the rows cannot drift. A job
//! with several endpoints has two more columns per endpoint at the end,
//! `llm_in_flight_N` and `llm_limit_N`.

use std::fs::File;
use std::path::Path;

use crate::events::{Event, EventKind};
use crate::monitor::Sample;

use super::Reporter;

pub struct MetricsCsv {
    csv: csv::Writer<File>,
    header_written: bool,
}

impl MetricsCsv {
    pub fn create(run_dir: &Path) -> std::io::Result<MetricsCsv> {
        Ok(MetricsCsv {
            csv: csv::WriterBuilder::new()
                .has_headers(false)
                .from_writer(File::create(run_dir.join("metrics.csv"))?),
            header_written: false,
        })
    }

    /// The header: `Sample`'s fields, as the serializer names them, then
    /// the endpoints' columns.
    fn write_header(&mut self, sample: &Sample) -> anyhow::Result<()> {
        let mut names = csv::Writer::from_writer(Vec::new());
        names.serialize(Sample::default())?;
        let text = String::from_utf8(names.into_inner()?)?;
        let mut header: Vec<String> = text
            .lines()
            .next()
            .unwrap_or_default()
            .split(',')
            .map(str::to_string)
            .collect();
        for i in 0..sample.llm_endpoints.len() {
            header.push(format!("llm_in_flight_{i}"));
            header.push(format!("llm_limit_{i}"));
        }
        for i in 0..sample.containers.len() {
            header.push(format!("container_sessions_{i}"));
            header.push(format!("container_procs_{i}"));
        }
        self.csv.write_record(&header)?;
        self.header_written = true;
        Ok(())
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
            if !self.header_written {
                self.write_header(&s.sample)?;
            }
            let endpoints: Vec<u64> = s
                .sample
                .llm_endpoints
                .iter()
                .flat_map(|(n, limit)| [*n, *limit])
                .collect();
            let containers: Vec<Option<u64>> = s
                .sample
                .containers
                .iter()
                .flat_map(|(sessions, procs)| [*sessions, *procs])
                .collect();
            self.csv.serialize((&s.sample, endpoints, containers))?;
        }
        Ok(())
    }

    fn flush(&mut self) -> anyhow::Result<()> {
        Ok(self.csv.flush()?)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::events::SampleTaken;
    use crate::monitor::test_samples::{answered, unanswered};

    /// The columns as README and `convoy report` know them.
    const COLUMNS: &str = "elapsed_s,open_fds,threads,rss_bytes,tmux_sessions,workspace_procs,\
        workspace_fds,in_flight,done,failed,llm_in_flight,llm_limit,leaks,open_fds_peak,\
        tmux_sessions_peak,workspace_procs_peak,in_flight_peak,llm_in_flight_peak,in_setup,in_verify";

    /// The lines of `metrics.csv` after `samples`.
    fn written(samples: &[Sample]) -> Vec<String> {
        let dir = tempfile::tempdir().unwrap();
        let mut csv = MetricsCsv::create(dir.path()).unwrap();
        for s in samples {
            let ev = Event {
                elapsed: Duration::ZERO,
                kind: EventKind::SampleTaken(Box::new(SampleTaken {
                    sample: s.clone(),
                    llm_retries: Default::default(),
                })),
            };
            csv.on(&ev).unwrap();
        }
        csv.flush().unwrap();
        let text = std::fs::read_to_string(dir.path().join("metrics.csv")).unwrap();
        text.lines().map(str::to_string).collect()
    }

    #[test]
    fn the_header_is_the_sample_fields_in_the_documented_order() {
        let lines = written(&[answered(0.04, 1)]);
        assert_eq!(lines[0], COLUMNS);
        assert_eq!(lines[1], "0.0,12,0,0,1,2,40,0,0,0,0,0,0,0,2,3,0,0,0,0");
        assert_eq!(lines.len(), 2);
    }

    #[test]
    fn each_endpoint_adds_its_in_flight_and_limit_at_the_end() {
        let mut s = answered(0.04, 1);
        s.llm_endpoints = vec![(3, 64), (0, 32)];
        let lines = written(&[s]);
        assert_eq!(
            lines[0],
            format!("{COLUMNS},llm_in_flight_0,llm_limit_0,llm_in_flight_1,llm_limit_1")
        );
        assert_eq!(
            lines[1],
            "0.0,12,0,0,1,2,40,0,0,0,0,0,0,0,2,3,0,0,0,0,3,64,0,32"
        );
    }

    #[test]
    fn a_sample_the_workspace_did_not_answer_is_empty_cells_not_zeros() {
        let lines = written(&[answered(5.0, 3), unanswered(12.345), answered(15.0, 0)]);
        let header: Vec<&str> = lines[0].split(',').collect();
        let gap: Vec<&str> = lines[2].split(',').collect();
        let cell = |name: &str| gap[header.iter().position(|h| *h == name).unwrap()];
        assert_eq!(cell("elapsed_s"), "12.3");
        assert_eq!(cell("open_fds"), "13");
        for name in [
            "tmux_sessions",
            "workspace_procs",
            "workspace_fds",
            "tmux_sessions_peak",
            "workspace_procs_peak",
        ] {
            assert_eq!(cell(name), "", "{name} in {}", lines[2]);
        }
    }
}
