//! Sampling: each sample is one row of `metrics.csv` (written by its
//! reporter from the `sample_taken` event). Each row is what was there at the sample
//! and, in the `*_peak` columns, the most there was since the row before:
//! convoy's FDs (read every 100 ms), sessions and in-flight conversations
//! and requests (counted as they open and close). Workspace processes
//! between samples are counted as one per open session (its shell), a
//! floor: what those shells started is only seen by the samples. A sample
//! the workspace does not answer leaves its columns empty in that row (a
//! gap, never a zero) and is kept as a failed sample for the verdict.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use serde::{Serialize, Serializer};

use super::leaks::{Finding, LeakRules, Own};
use super::own::{OwnSampler, FAST};
use super::verdict::FailedSample;
use crate::llm::Llm;
use crate::workspace::Workspace;

/// How long a sample waits for the workspace before it is a gap.
const STATS_WAIT: Duration = Duration::from_secs(30);

/// One row of `metrics.csv`; the header is these field names, in this
/// order, written by the same serializer as the rows so that they cannot
/// drift apart. The workspace's columns are `None` (an empty cell) when
/// the workspace did not answer the sample: a gap, never a zero.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Sample {
    #[serde(serialize_with = "tenths")]
    pub elapsed_s: f64,
    pub open_fds: u64,
    pub threads: u64,
    pub rss_bytes: u64,
    pub tmux_sessions: Option<u64>,
    pub workspace_procs: Option<u64>,
    pub workspace_fds: Option<u64>,
    pub in_flight: u64,
    pub done: u64,
    pub failed: u64,
    pub llm_in_flight: u64,
    /// The adaptive limit on requests in flight (0: no HTTP endpoint).
    pub llm_limit: u64,
    pub leaks: u64,
    /// The most since the previous row (this one included).
    pub open_fds_peak: u64,
    pub tmux_sessions_peak: Option<u64>,
    pub workspace_procs_peak: Option<u64>,
    pub in_flight_peak: u64,
    pub llm_in_flight_peak: u64,
    /// Tasks in their setup and verification phases (last, so readers of
    /// the older columns keep working).
    pub in_setup: u64,
    pub in_verify: u64,
    /// Per endpoint (with `llm.endpoints` of more than one), requests in
    /// flight and its adaptive limit: the columns `llm_in_flight_N` and
    /// `llm_limit_N` after all the others (`reporters::metrics`).
    #[serde(skip)]
    pub llm_endpoints: Vec<(u64, u64)>,
    /// Per container (with `workspace.containers` of more than one),
    /// tmux sessions and processes: the columns `container_sessions_N` and
    /// `container_procs_N` after the endpoints' (empty where the
    /// workspace did not answer).
    #[serde(skip)]
    pub containers: Vec<(Option<u64>, Option<u64>)>,
}

/// Seconds to one decimal: a sample is taken every few seconds, so more
/// digits are noise in the file.
fn tenths<S: Serializer>(v: &f64, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64((v * 10.0).round() / 10.0)
}

/// What the run has done so far, for one sample. The caller builds it from
/// its own statistics, so the monitor depends on no reporter.
#[derive(Debug, Clone, Copy, Default)]
pub struct Counts {
    pub in_flight: u64,
    /// The most in flight since the previous sample.
    pub in_flight_peak: u64,
    /// Tasks done, those of earlier runs of the directory included.
    pub done: u64,
    /// Of `done`: not `ok`.
    pub failed: u64,
    /// Tasks this run finished (what the growth rules count).
    pub ran: u64,
    pub in_setup: u64,
    pub in_verify: u64,
}

/// The latest figures, for the progress line; `None` where the last
/// sample got no answer from the workspace.
#[derive(Debug, Clone, Default)]
pub struct Gauges {
    pub open_fds: u64,
    pub tmux_sessions: Option<u64>,
    pub workspace_procs: Option<u64>,
    pub llm_in_flight: u64,
    pub llm_limit: u64,
    pub leaks: u64,
}

impl Gauges {
    pub fn of(s: &Sample) -> Gauges {
        Gauges {
            open_fds: s.open_fds,
            tmux_sessions: s.tmux_sessions,
            workspace_procs: s.workspace_procs,
            llm_in_flight: s.llm_in_flight,
            llm_limit: s.llm_limit,
            leaks: s.leaks,
        }
    }
}

pub struct Monitor {
    started: Instant,
    pub rules: LeakRules,
    /// The highest of every column over the run, peaks between samples
    /// included (RSS and threads too: the FD thread reads them). A
    /// workspace column is `None` until a sample got an answer.
    pub peak: Sample,
    pub first: Option<Sample>,
    pub last: Sample,
    /// The samples the workspace did not answer, in order.
    pub failed: Vec<FailedSample>,
    own: OwnSampler,
    /// The most requests in flight to the endpoint so far: each holds one
    /// HTTP connection, which the pool keeps for the next request (the
    /// leak rules also count the TCP connections open at each sample).
    pooled: u64,
}

impl Monitor {
    pub fn new(warmup: u64, started: Instant) -> Monitor {
        Monitor {
            started,
            rules: LeakRules::new(warmup),
            peak: Sample::default(),
            first: None,
            last: Sample::default(),
            failed: Vec::new(),
            own: OwnSampler::start(FAST),
            pooled: 0,
        }
    }

    /// Takes one sample and applies the leak rules; returns the row and
    /// the rules that tripped for the first time. The counts come from
    /// `counts`, read once the workspace has answered so that they are as
    /// fresh as the rest of the row. A workspace that does not answer
    /// makes a row with gaps and a failed sample, which the verdict
    /// reports.
    pub async fn sample(
        &mut self,
        workspace: &Workspace,
        counts: impl FnOnce() -> Counts,
        llm: &Llm,
    ) -> (Sample, Vec<Finding>) {
        // Take ownership first: a session opened after this snapshot but
        // before the workspace answers would otherwise look unowned (the
        // rules also want it to last two samples).
        let open: HashSet<String> = workspace.open_sessions();
        let mut per_container = Vec::new();
        let ws = match tokio::time::timeout(STATS_WAIT, workspace.stats_by_container()).await {
            Ok(Ok((ws, each))) => {
                per_container = each;
                Ok(ws)
            }
            Ok(Err(e)) => Err(e.to_string()),
            Err(_) => Err(format!("no answer within {}s", STATS_WAIT.as_secs())),
        };
        let elapsed_s = self.started.elapsed().as_secs_f64();
        let ws = ws.map_err(|why| self.missed(elapsed_s, why)).ok();
        let ((open_fds, threads, rss_bytes), own_peak) = self.own.take();
        let sessions_peak = workspace.take_sessions_peak();
        let llm_in_flight = llm.in_flight();
        let llm_peak = llm.take_in_flight_peak().max(llm_in_flight);
        self.pooled = self.pooled.max(llm_peak);
        // The pool can hold a few more connections than requests were ever
        // in flight at once (a connection goes back to the pool a moment
        // after its reply, and a request at that moment opens another), so
        // the connections actually open count too, up to the most the pool
        // can need: a leak of connections still shows past that ceiling.
        let connections = super::own::tcp_connections().min(llm.in_flight_ceiling());
        let pooled = self.pooled.max(connections);
        let counts = counts();
        let tmux_sessions = ws.as_ref().map(|w| w.sessions.len() as u64);
        let workspace_procs = ws.as_ref().map(|w| w.processes.len() as u64);
        let s = Sample {
            elapsed_s,
            open_fds,
            threads,
            rss_bytes,
            tmux_sessions,
            workspace_procs,
            workspace_fds: ws.as_ref().map(|w| w.fds),
            in_flight: counts.in_flight,
            done: counts.done,
            failed: counts.failed,
            llm_in_flight,
            llm_limit: llm.limit(),
            leaks: 0,
            open_fds_peak: own_peak.0,
            // convoy's own count of open sessions is only half the peak:
            // without the workspace's answer the row has none.
            tmux_sessions_peak: tmux_sessions.map(|n| n.max(sessions_peak)),
            // Each open session has at least its shell.
            workspace_procs_peak: workspace_procs.map(|n| n.max(sessions_peak)),
            in_flight_peak: counts.in_flight_peak.max(counts.in_flight),
            llm_in_flight_peak: llm_peak,
            in_setup: counts.in_setup,
            in_verify: counts.in_verify,
            // A gap in every container's columns when the workspace did
            // not answer.
            containers: match workspace.containers() {
                1 => Vec::new(),
                n if per_container.len() == n => per_container
                    .iter()
                    .map(|(s, p)| (Some(*s), Some(*p)))
                    .collect(),
                n => vec![(None, None); n],
            },
            llm_endpoints: llm
                .endpoint_load()
                .into_iter()
                .map(|(n, limit)| (n as u64, limit as u64))
                .collect(),
        };
        self.peak.threads = self.peak.threads.max(own_peak.1);
        self.peak.rss_bytes = self.peak.rss_bytes.max(own_peak.2);
        let own = Own {
            // Growth is per conversation of this run: a resumed run's
            // earlier tasks did not pass through this process.
            done: counts.ran,
            fds: s.open_fds,
            pooled,
            rss: s.rss_bytes,
        };
        let new = self.rules.observe(s.elapsed_s, &open, ws.as_ref(), own);
        let s = Sample {
            leaks: self.rules.findings.len() as u64,
            ..s
        };
        self.record(&s);
        (s, new)
    }

    /// Keeps a sample the workspace did not answer; says so when a run of
    /// them starts, not at every one (an outage lasts many samples).
    fn missed(&mut self, at_s: f64, why: String) {
        let answered_before = self.first.is_some() && self.last.tmux_sessions.is_some();
        if answered_before || self.failed.is_empty() {
            tracing::warn!(
                "the workspace did not answer the monitor's sample at {at_s:.1}s ({why}): \
                 metrics.csv has a gap there and the leak verdict cannot be clean"
            );
        }
        self.failed.push(FailedSample { at_s, why });
    }

    fn record(&mut self, s: &Sample) {
        let p = &mut self.peak;
        p.open_fds = p.open_fds.max(s.open_fds_peak);
        p.threads = p.threads.max(s.threads);
        p.rss_bytes = p.rss_bytes.max(s.rss_bytes);
        // `None` is below every number: a gap never lowers a peak, and the
        // peak stays `None` only if no sample was answered.
        p.tmux_sessions = p.tmux_sessions.max(s.tmux_sessions_peak);
        p.workspace_procs = p.workspace_procs.max(s.workspace_procs_peak);
        p.in_flight = p.in_flight.max(s.in_flight_peak);
        p.llm_in_flight = p.llm_in_flight.max(s.llm_in_flight_peak);
        if p.containers.len() < s.containers.len() {
            p.containers.resize(s.containers.len(), (None, None));
        }
        for (peak, now) in p.containers.iter_mut().zip(&s.containers) {
            peak.0 = peak.0.max(now.0);
            peak.1 = peak.1.max(now.1);
        }
        self.first.get_or_insert_with(|| s.clone());
        self.last = s.clone();
    }
}

/// Samples for tests: one the workspace answered, one it did not.
#[cfg(test)]
pub(crate) mod test_samples {
    use super::Sample;

    pub(crate) fn answered(elapsed_s: f64, sessions: u64) -> Sample {
        Sample {
            elapsed_s,
            open_fds: 12,
            tmux_sessions: Some(sessions),
            workspace_procs: Some(sessions * 2),
            workspace_fds: Some(40),
            tmux_sessions_peak: Some(sessions + 1),
            workspace_procs_peak: Some(sessions * 2 + 1),
            ..Sample::default()
        }
    }

    pub(crate) fn unanswered(elapsed_s: f64) -> Sample {
        Sample {
            elapsed_s,
            open_fds: 13,
            ..Sample::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::test_samples::{answered, unanswered};
    use super::*;

    fn recorded(samples: &[Sample]) -> Monitor {
        let mut m = Monitor::new(0, Instant::now());
        for s in samples {
            m.record(s);
        }
        m
    }

    #[test]
    fn a_gap_neither_lowers_a_peak_nor_reads_as_the_end() {
        let m = recorded(&[answered(5.0, 3), unanswered(12.345), answered(15.0, 0)]);
        assert_eq!(m.peak.tmux_sessions, Some(4));
        assert_eq!(m.last.tmux_sessions, Some(0));
        assert_eq!(Gauges::of(&m.last).tmux_sessions, Some(0));
        let m = recorded(&[answered(5.0, 3), unanswered(12.0)]);
        assert_eq!(
            Gauges::of(&m.last).tmux_sessions,
            None,
            "the gauge says unknown"
        );
    }

    #[test]
    fn peaks_stay_unknown_when_no_sample_was_answered() {
        let m = recorded(&[unanswered(1.0), unanswered(2.0)]);
        assert_eq!((m.peak.tmux_sessions, m.peak.workspace_procs), (None, None));
        assert_eq!(m.last.tmux_sessions, None);
    }
}
