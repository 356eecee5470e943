//! The report's figures for jobs with `[environment]` and `[verify]`: the
//! reward distribution, pass@k over the samples of each row
//! (`tasks.repeat`), and where the time went (setup, agent, verify).
//!
//! A run without them reports none of this (the fields are `None`, absent
//! from `--json`), so an ordinary run's report reads as it always did.

use std::collections::{BTreeMap, HashMap};

use serde::Serialize;

use super::collect::percentiles;
use super::model::{Percentiles, ResultLine};

/// A sample passes when its reward reaches this (an `exit_code` check
/// that exited 0).
const PASS: f64 = 1.0;

/// What the checks after the agents gave.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct Rewards {
    /// Tasks with a reward (the check ran and gave one).
    pub verified: u64,
    /// Mean reward over `verified` tasks; `None` if none has one.
    pub mean: Option<f64>,
    /// Share of `verified` tasks with a reward of 1.0 or more.
    pub share_passed: Option<f64>,
    /// Tasks per `verify.status` (passed, failed, timeout, error, skipped).
    pub verify_status: BTreeMap<String, u64>,
    /// Only when tasks carry a `group`: pass@k for k = 1 up to the largest
    /// group.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub pass_at_k: Vec<PassAtK>,
}

/// The unbiased pass@k (Chen et al. 2021), averaged over groups.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PassAtK {
    pub k: u32,
    /// Groups with at least k samples, the ones averaged (fewer than all
    /// when a run stopped partway through some rows' samples).
    pub groups: u64,
    pub value: f64,
}

/// Percentiles of each phase of a task, over the tasks that had it.
#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct PhaseTimes {
    pub setup_s: Option<Percentiles<f64>>,
    pub agent_s: Option<Percentiles<f64>>,
    pub verify_s: Option<Percentiles<f64>>,
}

/// The reward figures, if any task was verified or tried to be (a check
/// that timed out has no reward but is worth reporting).
pub(super) fn rewards(finals: &[ResultLine]) -> Option<Rewards> {
    let attempted = |r: &ResultLine| r.verify.as_ref().is_some_and(|v| v.status != "skipped");
    if !finals.iter().any(|r| r.reward.is_some() || attempted(r)) {
        return None;
    }
    let rewards: Vec<f64> = finals.iter().filter_map(|r| r.reward).collect();
    let n = rewards.len() as f64;
    let mut verify_status = BTreeMap::new();
    for r in finals {
        let status = r.verify.as_ref().map_or("skipped", |v| v.status.as_str());
        *verify_status.entry(status.to_string()).or_default() += 1;
    }
    Some(Rewards {
        verified: rewards.len() as u64,
        mean: (!rewards.is_empty()).then(|| rewards.iter().sum::<f64>() / n),
        share_passed: (!rewards.is_empty())
            .then(|| rewards.iter().filter(|&&x| x >= PASS).count() as f64 / n),
        verify_status,
        pass_at_k: pass_at_k_over_groups(finals),
    })
}

/// pass@k for every k from 1 to the largest group. A sample without a
/// reward (not verified, or its check failed to run) does not pass.
fn pass_at_k_over_groups(finals: &[ResultLine]) -> Vec<PassAtK> {
    // (samples, passes) per group.
    let mut groups: HashMap<&str, (u64, u64)> = HashMap::new();
    for r in finals {
        if let Some(group) = &r.group {
            let g = groups.entry(group.as_str()).or_default();
            g.0 += 1;
            g.1 += u64::from(r.reward.is_some_and(|x| x >= PASS));
        }
    }
    let largest = groups.values().map(|g| g.0).max().unwrap_or(0);
    (1..=largest)
        .map(|k| {
            let values: Vec<f64> = groups
                .values()
                .filter(|g| g.0 >= k)
                .map(|&(n, c)| pass_at_k(n, c, k))
                .collect();
            PassAtK {
                k: k as u32,
                groups: values.len() as u64,
                value: values.iter().sum::<f64>() / values.len() as f64,
            }
        })
        .collect()
}

/// The chance that at least one of k samples drawn without replacement from
/// n, c of which pass, passes: 1 - C(n-c, k) / C(n, k). The ratio is taken
/// as the product of (1 - k/i) for i in n-c+1..=n, so no binomial (which
/// overflows past n = 60 or so) is ever formed. Needs k <= n.
pub(super) fn pass_at_k(n: u64, c: u64, k: u64) -> f64 {
    if n - c < k {
        // Every draw of k includes a pass.
        return 1.0;
    }
    let fail_all: f64 = (n - c + 1..=n).map(|i| 1.0 - k as f64 / i as f64).product();
    1.0 - fail_all
}

/// The phase percentiles, if any task had a setup or verify phase.
pub(super) fn phase_times(finals: &[ResultLine]) -> Option<PhaseTimes> {
    let phases: Vec<_> = finals.iter().filter_map(|r| r.phases.as_ref()).collect();
    if !phases
        .iter()
        .any(|p| p.setup_s.is_some() || p.verify_s.is_some())
    {
        return None;
    }
    let of = |pick: fn(&super::model::PhasesLine) -> Option<f64>| {
        percentiles(
            phases.iter().filter_map(|p| pick(p)).collect(),
            f64::total_cmp,
        )
    };
    Some(PhaseTimes {
        setup_s: of(|p| p.setup_s),
        agent_s: of(|p| p.agent_s),
        verify_s: of(|p| p.verify_s),
    })
}

impl Rewards {
    /// The report's lines about rewards.
    pub(super) fn render(&self) -> String {
        let statuses: Vec<String> = self
            .verify_status
            .iter()
            .map(|(k, v)| format!("{k} {v}"))
            .collect();
        let mut s = format!("rewards: {} verified", self.verified);
        if let (Some(mean), Some(share)) = (self.mean, self.share_passed) {
            s.push_str(&format!(
                ", mean {mean:.3}, {:.1}% at 1.0 or more",
                share * 100.0
            ));
        }
        s.push_str(&format!("; verify: {}\n", statuses.join(", ")));
        if !self.pass_at_k.is_empty() {
            let figures: Vec<String> = self
                .pass_at_k
                .iter()
                .map(|p| format!("pass@{} {:.3}", p.k, p.value))
                .collect();
            let groups = self.pass_at_k[0].groups;
            s.push_str(&format!("{} ({groups} groups)\n", figures.join(", ")));
        }
        s
    }
}

impl PhaseTimes {
    /// The report's lines about phases, one per phase some task had.
    pub(super) fn render(&self) -> String {
        let phases = [
            ("setup", &self.setup_s),
            ("agent", &self.agent_s),
            ("verify", &self.verify_s),
        ];
        phases
            .iter()
            .filter_map(|(name, p)| {
                p.as_ref().map(|p| {
                    format!(
                        "{name} (s): p50 {:.3}, p90 {:.3}, p99 {:.3}, max {:.3}\n",
                        p.p50, p.p90, p.p99, p.max
                    )
                })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn pass_at_k_matches_hand_computed_values() {
        // n=4, c=1: 1 - C(3,k)/C(4,k) = 1 - 3/4, 1 - 3/6, 1 - 1/4, 1 - 0/1.
        let got: Vec<f64> = (1..=4).map(|k| pass_at_k(4, 1, k)).collect();
        for (g, want) in got.iter().zip([0.25, 0.5, 0.75, 1.0]) {
            assert!(close(*g, want), "{got:?}");
        }
        // No pass: never; all pass: always.
        assert!((1..=5).all(|k| pass_at_k(5, 0, k) == 0.0));
        assert!((1..=3).all(|k| pass_at_k(3, 3, k) == 1.0));
        // n=10, c=3, k=5: 1 - C(7,5)/C(10,5) = 1 - 21/252.
        assert!(close(pass_at_k(10, 3, 5), 1.0 - 21.0 / 252.0));
    }

    /// A result line as the engine writes it for a task with `[verify]`.
    fn result(id: &str, group: Option<&str>, reward: Option<f64>, verify: &str) -> String {
        let mut r = serde_json::json!({
            "id": id, "status": "ok", "final": null, "steps": 1, "usage": {},
            "attempt": 1, "started_at": "2024-05-01T10:00:00Z",
            "finished_at": "2024-05-01T10:00:02Z", "duration_s": 2.0, "error": null,
            "reward": reward,
            "verify": {"status": verify, "exit_code": null, "output": null, "duration_s": 0.5},
            "phases": {"setup_s": 0.25, "agent_s": 1.25, "verify_s": 0.5}
        });
        if let Some(g) = group {
            r["group"] = g.into();
        }
        format!("{r}\n")
    }

    fn report_of(lines: &[String]) -> serde_json::Value {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("results.jsonl"), lines.concat()).unwrap();
        let report = super::super::analyze(dir.path()).unwrap();
        let mut json = serde_json::to_value(&report).unwrap();
        json["text"] = report.render().into();
        json
    }

    #[test]
    fn report_json_has_rewards_pass_at_k_and_phases() {
        let r = report_of(&[
            result("a#1", Some("a"), Some(1.0), "passed"),
            result("a#2", Some("a"), Some(0.0), "failed"),
            result("b#1", Some("b"), None, "timeout"),
            result("b#2", Some("b"), Some(0.0), "failed"),
            result("c#1", Some("c"), Some(1.0), "passed"),
        ]);
        let rewards = &r["rewards"];
        assert_eq!(rewards["verified"], 4);
        assert_eq!(rewards["mean"], 0.5);
        assert_eq!(rewards["share_passed"], 0.5);
        assert_eq!(
            rewards["verify_status"],
            serde_json::json!({"passed": 2, "failed": 2, "timeout": 1})
        );
        // a: n=2 c=1, b: n=2 c=0, c: n=1 c=1 (only in k=1).
        assert_eq!(
            rewards["pass_at_k"],
            serde_json::json!([
                {"k": 1, "groups": 3, "value": (0.5 + 0.0 + 1.0) / 3.0},
                {"k": 2, "groups": 2, "value": 0.5}
            ])
        );
        assert_eq!(r["phases"]["setup_s"]["p50"], 0.25);
        assert_eq!(r["phases"]["agent_s"]["p99"], 1.25);
        assert_eq!(r["phases"]["verify_s"]["max"], 0.5);
        let text = r["text"].as_str().unwrap();
        assert!(
            text.contains("rewards: 4 verified, mean 0.500, 50.0% at 1.0 or more; verify: failed 2, passed 2, timeout 1\n"),
            "{text}"
        );
        assert!(
            text.contains("pass@1 0.500, pass@2 0.500 (3 groups)\n"),
            "{text}"
        );
        assert!(text.contains("setup (s): p50 0.250, p90 0.250"), "{text}");
    }

    #[test]
    fn a_run_without_checks_reports_nothing_new() {
        let plain = serde_json::json!({
            "id": "a", "status": "ok", "final": null, "steps": 1, "usage": {}, "attempt": 1,
            "started_at": "2024-05-01T10:00:00Z", "finished_at": "2024-05-01T10:00:02Z",
            "duration_s": 2.0, "error": null
        });
        // As written today without `[verify]`, and as written before rewards.
        let mut today = plain.clone();
        today["reward"] = serde_json::Value::Null;
        today["verify"] = serde_json::json!({"status": "skipped", "exit_code": null,
                                             "output": null, "duration_s": null});
        today["phases"] = serde_json::json!({"setup_s": null, "agent_s": 2.0, "verify_s": null});
        let r = report_of(&[format!("{plain}\n"), format!("{}\n", today)]);
        assert!(
            r.get("rewards").is_none() && r.get("phases").is_none(),
            "{r}"
        );
        let text = r["text"].as_str().unwrap();
        assert!(
            !text.contains("rewards") && !text.contains("agent (s)"),
            "{text}"
        );
    }

    #[test]
    fn pass_at_k_of_large_groups_stays_finite() {
        // C(1000, 500) overflows any integer and f64; the product does not.
        let p = pass_at_k(1000, 1, 500);
        assert!(close(p, 0.5), "{p}");
    }
}
