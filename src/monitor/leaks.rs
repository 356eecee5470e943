//! Leak rules. Each looks at consecutive samples, so that a session being
//! opened or closed while a sample is taken never counts:
//!
//! - `orphan_session`: a tmux session alive in the workspace that no open
//!   conversation owns, in two samples in a row.
//! - `orphan_process`: a process started by a session that is no longer
//!   open (or that shed its session marker), in two samples in a row.
//! - `fd_growth` / `rss_growth`: convoy's open FDs or RSS growing with the
//!   number of finished conversations (least-squares slope after warm-up).

use std::collections::{BTreeSet, HashSet};

use serde::Serialize;

use crate::workspace::channel::protocol::WorkspaceStats;

/// FDs per finished conversation above which convoy leaks FDs.
const FD_SLOPE: f64 = 0.01;
/// Bytes of RSS per finished conversation above which convoy leaks memory.
const RSS_SLOPE: f64 = 32.0 * 1024.0;
/// Conversations a slope must span before it is judged.
const FD_SPAN: f64 = 500.0;
const RSS_SPAN: f64 = 2000.0;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Finding {
    pub rule: &'static str,
    pub detail: String,
    /// Seconds into the run when it was first seen.
    pub at_s: f64,
}

#[derive(Debug, Default)]
pub struct LeakRules {
    warmup: u64,
    prev_sessions: BTreeSet<String>,
    prev_procs: BTreeSet<u32>,
    /// (done, open fds, rss bytes) after warm-up.
    points: Vec<(f64, f64, f64)>,
    pub findings: Vec<Finding>,
}

impl LeakRules {
    /// `warmup`: finished conversations before growth is judged (pools,
    /// caches and buffers fill up first).
    pub fn new(warmup: u64) -> LeakRules {
        LeakRules {
            warmup,
            ..Default::default()
        }
    }

    fn fired(&self, rule: &str) -> bool {
        self.findings.iter().any(|f| f.rule == rule)
    }

    fn fire(&mut self, rule: &'static str, detail: String, at_s: f64) -> Option<Finding> {
        if self.fired(rule) {
            return None;
        }
        let f = Finding { rule, detail, at_s };
        self.findings.push(f.clone());
        Some(f)
    }

    /// Looks at one sample; returns the rules that tripped for the first
    /// time.
    pub fn observe(
        &mut self,
        at_s: f64,
        open: &HashSet<String>,
        ws: Option<&WorkspaceStats>,
        done: u64,
        fds: u64,
        rss: u64,
    ) -> Vec<Finding> {
        let mut new = Vec::new();
        if let Some(ws) = ws {
            let orphans: BTreeSet<String> = ws
                .sessions
                .iter()
                .filter(|s| !open.contains(*s))
                .cloned()
                .collect();
            let lasting: Vec<String> = orphans.intersection(&self.prev_sessions).cloned().collect();
            if !lasting.is_empty() {
                new.extend(self.fire(
                    "orphan_session",
                    format!(
                        "tmux sessions alive that no conversation owns: {}",
                        lasting.join(", ")
                    ),
                    at_s,
                ));
            }
            self.prev_sessions = orphans;

            let orphans: BTreeSet<u32> = ws
                .processes
                .iter()
                .filter(|(_, s)| s.as_ref().is_none_or(|s| !open.contains(s)))
                .map(|(pid, _)| *pid)
                .collect();
            let lasting: Vec<String> = ws
                .processes
                .iter()
                .filter(|(pid, _)| orphans.contains(pid) && self.prev_procs.contains(pid))
                .map(|(pid, s)| format!("{pid} ({})", s.as_deref().unwrap_or("no session")))
                .collect();
            if !lasting.is_empty() {
                new.extend(self.fire(
                    "orphan_process",
                    format!("processes of no open session: {}", lasting.join(", ")),
                    at_s,
                ));
            }
            self.prev_procs = orphans;
        }

        if done >= self.warmup {
            self.points.push((done as f64, fds as f64, rss as f64));
            if let Some((slope, span)) = slope(&self.points, |p| p.1) {
                if span >= FD_SPAN && slope > FD_SLOPE {
                    new.extend(self.fire(
                        "fd_growth",
                        format!(
                            "convoy's open FDs grow by {:.1} per 1000 finished conversations",
                            slope * 1000.0
                        ),
                        at_s,
                    ));
                }
            }
            if let Some((slope, span)) = slope(&self.points, |p| p.2) {
                if span >= RSS_SPAN && slope > RSS_SLOPE {
                    new.extend(self.fire(
                        "rss_growth",
                        format!(
                            "convoy's RSS grows by {:.0} KiB per finished conversation",
                            slope / 1024.0
                        ),
                        at_s,
                    ));
                }
            }
        }
        new
    }
}

/// Least-squares slope of `y` over done, and the span of done it covers.
fn slope(points: &[(f64, f64, f64)], y: impl Fn(&(f64, f64, f64)) -> f64) -> Option<(f64, f64)> {
    if points.len() < 4 {
        return None;
    }
    let n = points.len() as f64;
    let mx = points.iter().map(|p| p.0).sum::<f64>() / n;
    let my = points.iter().map(&y).sum::<f64>() / n;
    let sxx: f64 = points.iter().map(|p| (p.0 - mx).powi(2)).sum();
    if sxx == 0.0 {
        return None;
    }
    let sxy: f64 = points.iter().map(|p| (p.0 - mx) * (y(p) - my)).sum();
    let span = points.last()?.0 - points.first()?.0;
    Some((sxy / sxx, span))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ws(sessions: &[&str], procs: &[(u32, Option<&str>)]) -> WorkspaceStats {
        WorkspaceStats {
            sessions: sessions.iter().map(|s| s.to_string()).collect(),
            processes: procs
                .iter()
                .map(|(p, s)| (*p, s.map(str::to_string)))
                .collect(),
            fds: 0,
        }
    }

    fn open(names: &[&str]) -> HashSet<String> {
        names.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn an_unowned_session_trips_only_when_it_lasts() {
        let mut r = LeakRules::new(0);
        // c2 is being opened or closed during this sample: not yet a leak.
        assert!(r
            .observe(1.0, &open(&["c1"]), Some(&ws(&["c1", "c2"], &[])), 0, 10, 0)
            .is_empty());
        assert!(r
            .observe(2.0, &open(&["c1"]), Some(&ws(&["c1", "c3"], &[])), 0, 10, 0)
            .is_empty());
        let f = r.observe(3.0, &open(&["c1"]), Some(&ws(&["c1", "c3"], &[])), 0, 10, 0);
        assert_eq!(f.len(), 1);
        assert_eq!(f[0].rule, "orphan_session");
        assert!(f[0].detail.contains("c3"));
        // Fires once.
        assert!(r
            .observe(4.0, &open(&["c1"]), Some(&ws(&["c1", "c3"], &[])), 0, 10, 0)
            .is_empty());
    }

    #[test]
    fn processes_of_closed_sessions_and_without_marker_trip() {
        let mut r = LeakRules::new(0);
        let sample = ws(&["c1"], &[(10, Some("c1")), (11, Some("c9")), (12, None)]);
        assert!(r
            .observe(1.0, &open(&["c1"]), Some(&sample), 0, 10, 0)
            .is_empty());
        let f = r.observe(2.0, &open(&["c1"]), Some(&sample), 0, 10, 0);
        assert_eq!(f[0].rule, "orphan_process");
        assert!(f[0].detail.contains("11 (c9)") && f[0].detail.contains("12 (no session)"));
        assert!(!f[0].detail.contains("10 ("));
    }

    #[test]
    fn fd_growth_with_conversations_trips_and_flat_does_not() {
        let mut flat = LeakRules::new(100);
        let mut leaky = LeakRules::new(100);
        let mut tripped = Vec::new();
        for i in 0..20u64 {
            let done = i * 100;
            assert!(flat
                .observe(i as f64, &open(&[]), None, done, 40 + i % 3, 50 << 20)
                .is_empty());
            tripped.extend(leaky.observe(
                i as f64,
                &open(&[]),
                None,
                done,
                40 + done / 20,
                50 << 20,
            ));
        }
        assert_eq!(tripped.len(), 1);
        assert_eq!(tripped[0].rule, "fd_growth");
    }
}
