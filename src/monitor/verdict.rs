//! The leak verdict of a run: `clean`, `leak` or `unknown`. A run is
//! `clean` only when every check was made and found nothing: a workspace
//! that could not be listed or inspected at the end, a sample it did not
//! answer, or a monitor that never ran make the verdict `unknown`, with
//! why, because "nothing found" where nothing could be looked at is not
//! evidence of no leak. A leak found wins over `unknown`: what was seen
//! stays seen, whatever else could not be checked.
//!
//! Only `leak` fails a job (exit 3 with `monitor.on_leak = "fail"`).
//! `unknown` is reported (summary line, `summary.json`, `convoy report`)
//! but does not fail it: it says the checks were incomplete, usually
//! because the workspace was in trouble, which the task results already
//! say; failing every such job would make `on_leak = "fail"` fail jobs
//! that leaked nothing.

use serde::Serialize;

use super::leaks::Finding;
use super::sampler::Monitor;
use crate::workspace::ShutdownReport;

/// What the leak checks of a run concluded.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum Verdict {
    /// Every check was made; none found a leak.
    Clean,
    /// A leak rule tripped, or the end of the job found something left.
    Leak,
    /// Nothing was found, but some check could not be made.
    Unknown {
        /// Each check that could not be made, and why.
        why: Vec<String>,
    },
}

impl Verdict {
    pub fn as_str(&self) -> &'static str {
        match self {
            Verdict::Clean => "clean",
            Verdict::Leak => "leak",
            Verdict::Unknown { .. } => "unknown",
        }
    }

    pub fn is_leak(&self) -> bool {
        *self == Verdict::Leak
    }
}

/// A sample the workspace did not answer: an empty cell in `metrics.csv`
/// for each workspace column of that row.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FailedSample {
    /// Seconds into the run.
    pub at_s: f64,
    pub why: String,
}

/// The verdict with its evidence, as `summary.json` holds it under `leaks`.
#[derive(Debug, Serialize)]
pub struct LeakVerdict {
    /// `verdict` (`clean`, `leak`, `unknown`) and, for `unknown`, `why`.
    #[serde(flatten)]
    pub verdict: Verdict,
    /// Leak rules that tripped while the job ran (or at its end).
    pub findings: Vec<Finding>,
    #[serde(flatten)]
    pub shutdown: ShutdownReport,
}

impl LeakVerdict {
    /// `failed`: the samples the workspace did not answer; `None` when the
    /// monitor did not run at all (nothing was sampled).
    pub fn new(
        shutdown: ShutdownReport,
        findings: Vec<Finding>,
        failed: Option<&[FailedSample]>,
    ) -> LeakVerdict {
        let leak = !findings.is_empty()
            || !shutdown.stray_sessions.is_empty()
            || !shutdown.stray_processes.is_empty();
        let mut why = shutdown.unchecked.clone();
        match failed {
            None => why
                .push("the monitor did not run: nothing was sampled while the job ran".to_string()),
            Some([]) => {}
            Some(all @ [first, ..]) => why.push(format!(
                "{} {} failed (first at {:.1} s: {})",
                all.len(),
                if all.len() == 1 { "sample" } else { "samples" },
                first.at_s,
                first.why
            )),
        }
        let verdict = if leak {
            Verdict::Leak
        } else if why.is_empty() {
            Verdict::Clean
        } else {
            Verdict::Unknown { why }
        };
        LeakVerdict {
            verdict,
            findings,
            shutdown,
        }
    }
}

/// Start, peak and end of the monitor's samples; peaks include what
/// happened between samples. The workspace's figures are `null` when no
/// sample got an answer (peak) or the final one did not (end): unknown,
/// never read as 0.
#[derive(Debug, Serialize)]
pub struct MetricsSummary {
    pub open_fds_start: u64,
    pub open_fds_peak: u64,
    pub open_fds_end: u64,
    pub rss_bytes_peak: u64,
    pub threads_peak: u64,
    pub tmux_sessions_peak: Option<u64>,
    pub tmux_sessions_end: Option<u64>,
    pub workspace_procs_peak: Option<u64>,
    pub workspace_procs_end: Option<u64>,
    /// Conversations in flight at once, at most.
    pub in_flight_peak: u64,
    /// Requests in flight to the endpoint at once, at most.
    pub llm_in_flight_peak: u64,
    pub samples_csv: &'static str,
    /// Per container, with `workspace.containers` of more than one.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<ContainerFigures>,
}

/// One container's sessions and processes: peak over the samples, end.
#[derive(Debug, Serialize)]
pub struct ContainerFigures {
    pub index: usize,
    pub sessions_peak: Option<u64>,
    pub sessions_end: Option<u64>,
    pub processes_peak: Option<u64>,
    pub processes_end: Option<u64>,
}

impl MetricsSummary {
    pub fn from_monitor(m: &Monitor) -> MetricsSummary {
        MetricsSummary {
            open_fds_start: m.first.as_ref().map_or(0, |s| s.open_fds),
            open_fds_peak: m.peak.open_fds,
            open_fds_end: m.last.open_fds,
            rss_bytes_peak: m.peak.rss_bytes,
            threads_peak: m.peak.threads,
            tmux_sessions_peak: m.peak.tmux_sessions,
            tmux_sessions_end: m.last.tmux_sessions,
            workspace_procs_peak: m.peak.workspace_procs,
            workspace_procs_end: m.last.workspace_procs,
            in_flight_peak: m.peak.in_flight,
            llm_in_flight_peak: m.peak.llm_in_flight,
            samples_csv: "metrics.csv",
            containers: m
                .peak
                .containers
                .iter()
                .enumerate()
                .map(|(index, peak)| {
                    let end = m.last.containers.get(index).copied().unwrap_or_default();
                    ContainerFigures {
                        index,
                        sessions_peak: peak.0,
                        sessions_end: end.0,
                        processes_peak: peak.1,
                        processes_end: end.1,
                    }
                })
                .collect(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn finding() -> Finding {
        Finding {
            rule: "orphan_session",
            detail: "c3".into(),
            at_s: 3.0,
        }
    }

    fn failed(n: usize) -> Vec<FailedSample> {
        (0..n)
            .map(|i| FailedSample {
                at_s: 12.0 + i as f64 * 5.0,
                why: format!("no answer within 30s ({i})"),
            })
            .collect()
    }

    fn unlisted() -> ShutdownReport {
        ShutdownReport {
            unchecked: vec!["the workspace could not be listed at the end: gone".into()],
            ..Default::default()
        }
    }

    fn why(v: &LeakVerdict) -> Vec<String> {
        match &v.verdict {
            Verdict::Unknown { why } => why.clone(),
            other => panic!("not unknown: {other:?}"),
        }
    }

    #[test]
    fn every_check_made_and_nothing_found_is_clean() {
        let v = LeakVerdict::new(ShutdownReport::default(), vec![], Some(&[]));
        assert_eq!(v.verdict, Verdict::Clean);
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["verdict"], "clean");
        assert!(json.get("why").is_none(), "{json}");
    }

    #[test]
    fn a_finding_or_a_stray_at_the_end_is_a_leak() {
        let v = LeakVerdict::new(ShutdownReport::default(), vec![finding()], Some(&[]));
        assert_eq!(v.verdict, Verdict::Leak);
        let stray = ShutdownReport {
            stray_processes: vec![42],
            ..Default::default()
        };
        let v = LeakVerdict::new(stray, vec![], Some(&[]));
        assert!(v.verdict.is_leak());
        assert_eq!(serde_json::to_value(&v).unwrap()["verdict"], "leak");
    }

    #[test]
    fn a_listing_that_failed_at_the_end_is_unknown_not_clean() {
        let v = LeakVerdict::new(unlisted(), vec![], Some(&[]));
        assert_eq!(
            why(&v),
            vec!["the workspace could not be listed at the end: gone"]
        );
        let json = serde_json::to_value(&v).unwrap();
        assert_eq!(json["verdict"], "unknown");
        assert_eq!(
            json["why"][0],
            "the workspace could not be listed at the end: gone"
        );
        // The evidence fields are there as for any verdict.
        assert_eq!(json["stray_sessions"], serde_json::json!([]));
        assert_eq!(json["findings"], serde_json::json!([]));
    }

    #[test]
    fn failed_samples_are_unknown_with_their_count_and_the_first() {
        let v = LeakVerdict::new(ShutdownReport::default(), vec![], Some(&failed(3)));
        assert_eq!(
            why(&v),
            vec!["3 samples failed (first at 12.0 s: no answer within 30s (0))"]
        );
        let v = LeakVerdict::new(ShutdownReport::default(), vec![], Some(&failed(1)));
        assert!(why(&v)[0].starts_with("1 sample failed (first at 12.0 s"));
    }

    #[test]
    fn no_monitor_is_unknown_and_every_reason_is_kept() {
        let v = LeakVerdict::new(unlisted(), vec![], None);
        let why = why(&v);
        assert_eq!(why.len(), 2, "{why:?}");
        assert!(why[1].contains("the monitor did not run"), "{why:?}");
    }

    #[test]
    fn a_leak_wins_over_unknown() {
        let v = LeakVerdict::new(unlisted(), vec![finding()], Some(&failed(2)));
        assert_eq!(v.verdict, Verdict::Leak);
        let stray = ShutdownReport {
            stray_sessions: vec!["c9".into()],
            ..unlisted()
        };
        assert!(LeakVerdict::new(stray, vec![], None).verdict.is_leak());
    }
}
