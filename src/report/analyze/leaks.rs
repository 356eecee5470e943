//! The leak part of `convoy report`: the verdict of the latest run as its
//! `summary.json` says it (`clean`, `leak`, or `unknown` with why; older
//! directories have no `why`), or why there is none yet.

use super::model::{LeakReport, RunState, SummaryLeaks};

/// The leak report of a run in `state`; `leaks` is its summary's, if it
/// has one.
pub(super) fn leak_report(
    state: RunState,
    has_summary: bool,
    leaks: Option<SummaryLeaks>,
) -> LeakReport {
    let pending = match state {
        RunState::Running => {
            Some("not known yet: the run is still going (the verdict comes at its end)")
        }
        RunState::Stopped if has_summary => {
            Some("unknown (the latest run did not finish; summary.json is an earlier run's)")
        }
        RunState::Stopped => Some("unknown (no summary.json: the run did not finish)"),
        RunState::Finished => None,
    };
    if let Some(verdict) = pending {
        return LeakReport {
            verdict: verdict.into(),
            why: Vec::new(),
            findings: Vec::new(),
            stray_sessions: Vec::new(),
            stray_processes: Vec::new(),
        };
    }
    let leaks = leaks.unwrap_or_default();
    LeakReport {
        verdict: leaks
            .verdict
            .unwrap_or_else(|| "unknown (summary.json has no leak verdict)".into()),
        why: leaks.why,
        findings: leaks.findings,
        stray_sessions: leaks.stray_sessions,
        stray_processes: leaks.stray_processes,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn from_summary(leaks: serde_json::Value) -> LeakReport {
        let leaks: SummaryLeaks = serde_json::from_value(leaks).unwrap();
        leak_report(RunState::Finished, true, Some(leaks))
    }

    #[test]
    fn an_unknown_verdict_is_read_with_why() {
        let r = from_summary(serde_json::json!({
            "verdict": "unknown",
            "why": ["the workspace could not be listed at the end: no answer within 10s",
                    "2 samples failed (first at 12.0 s: no answer within 30s)"],
            "findings": [], "reaped": 0, "stray_sessions": [], "stray_processes": []
        }));
        assert_eq!(r.verdict, "unknown");
        assert_eq!(r.why.len(), 2);
        let json = serde_json::to_value(&r).unwrap();
        assert_eq!(
            json["why"][1],
            "2 samples failed (first at 12.0 s: no answer within 30s)"
        );
    }

    /// Directories written before the verdict could be `unknown` still
    /// read: no `why`, the verdict as it was.
    #[test]
    fn an_older_summary_without_why_still_reads() {
        let r = from_summary(serde_json::json!({
            "verdict": "clean", "findings": [], "reaped": 1,
            "stray_sessions": [], "stray_processes": []
        }));
        assert_eq!((r.verdict.as_str(), r.why.len()), ("clean", 0));
    }
}
