//! Which final results an export keeps: the status filter (`--only`), the
//! reward floor (`--min-reward`) and one sample per group
//! (`--best-of-group`), in that order, so `--only ok --best-of-group` is the
//! best of each group's `ok` samples.
//!
//! The best of a group can only be known once every sample of it has been
//! read, so selection is a pass over the (small) result records before the
//! (large) trajectories are streamed out.

use std::cmp::Ordering;
use std::collections::HashMap;

use serde_json::Value;

/// What selection needs of one final result.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Candidate {
    pub(super) id: String,
    pub(super) status: String,
    pub(super) reward: Option<f64>,
    pub(super) group: Option<String>,
    pub(super) sample: Option<u32>,
}

impl Candidate {
    /// Reads the fields off a result record; the message names the field
    /// whose type is wrong (the caller adds file and line). Results written
    /// before rewards existed have none of these fields: not verified, no
    /// group.
    pub(super) fn from_result(id: &str, status: &str, result: &Value) -> Result<Self, String> {
        let reward = match result.get("reward") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_f64()
                    .ok_or("expected a number or null `reward`".to_string())?,
            ),
        };
        let group = match result.get("group") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_str()
                    .ok_or("expected a string `group`".to_string())?
                    .to_string(),
            ),
        };
        let sample = match result.get("sample") {
            None | Some(Value::Null) => None,
            Some(v) => Some(
                v.as_u64()
                    .and_then(|n| u32::try_from(n).ok())
                    .ok_or("expected a sample number `sample`".to_string())?,
            ),
        };
        Ok(Candidate {
            id: id.to_string(),
            status: status.to_string(),
            reward,
            group,
            sample,
        })
    }
}

/// The filters, as `ExportOptions` holds them.
#[derive(Debug, Clone, Copy)]
pub(super) struct Filters<'a> {
    pub(super) only: &'a [String],
    pub(super) min_reward: Option<f64>,
    pub(super) best_of_group: bool,
}

/// Why a candidate was left out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Dropped {
    Status,
    /// Below `--min-reward`, or not verified (no reward to compare).
    Reward,
    /// Another sample of its group was better.
    NotBest,
}

/// For each candidate (same order), `None` if it is kept or why it is not.
pub(super) fn select(candidates: &[Candidate], filters: Filters<'_>) -> Vec<Option<Dropped>> {
    let mut verdicts: Vec<Option<Dropped>> = candidates
        .iter()
        .map(|c| {
            if !filters.only.is_empty() && !filters.only.contains(&c.status) {
                Some(Dropped::Status)
            } else if filters
                .min_reward
                .is_some_and(|min| !c.reward.is_some_and(|r| r >= min))
            {
                Some(Dropped::Reward)
            } else {
                None
            }
        })
        .collect();
    if filters.best_of_group {
        // The best survivor so far of each group; a task without a group
        // is a group of its own (keyed apart, so no id can pose as a group).
        let mut best: HashMap<(bool, &str), usize> = HashMap::new();
        for (i, c) in candidates.iter().enumerate() {
            if verdicts[i].is_some() {
                continue;
            }
            let key = match &c.group {
                Some(g) => (true, g.as_str()),
                None => (false, c.id.as_str()),
            };
            match best.get(&key) {
                Some(&j) if !better(c, &candidates[j]) => verdicts[i] = Some(Dropped::NotBest),
                Some(&j) => {
                    verdicts[j] = Some(Dropped::NotBest);
                    best.insert(key, i);
                }
                None => {
                    best.insert(key, i);
                }
            }
        }
    }
    verdicts
}

/// Whether `a` beats `b` within a group: a higher reward (any reward beats
/// none), then the lower sample number. On a full tie the earlier line (`b`,
/// already seen) stays.
fn better(a: &Candidate, b: &Candidate) -> bool {
    let by_reward = match (a.reward, b.reward) {
        (Some(x), Some(y)) => x.total_cmp(&y),
        (Some(_), None) => Ordering::Greater,
        (None, Some(_)) => Ordering::Less,
        (None, None) => Ordering::Equal,
    };
    // A missing sample number sorts after every real one.
    let by_sample = b
        .sample
        .unwrap_or(u32::MAX)
        .cmp(&a.sample.unwrap_or(u32::MAX));
    by_reward.then(by_sample) == Ordering::Greater
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn c(id: &str, status: &str, reward: Option<f64>, group: Option<(&str, u32)>) -> Candidate {
        Candidate {
            id: id.to_string(),
            status: status.to_string(),
            reward,
            group: group.map(|g| g.0.to_string()),
            sample: group.map(|g| g.1),
        }
    }

    fn kept<'c>(candidates: &'c [Candidate], filters: Filters<'_>) -> Vec<&'c str> {
        select(candidates, filters)
            .iter()
            .zip(candidates)
            .filter(|(v, _)| v.is_none())
            .map(|(_, c)| c.id.as_str())
            .collect()
    }

    const NONE: Filters<'static> = Filters {
        only: &[],
        min_reward: None,
        best_of_group: false,
    };

    fn fixture() -> Vec<Candidate> {
        vec![
            c("p#1", "ok", Some(0.0), Some(("p", 1))),
            c("p#2", "failed", Some(0.5), Some(("p", 2))),
            c("p#3", "ok", Some(0.5), Some(("p", 3))),
            c("q#1", "ok", None, Some(("q", 1))),
            c("q#2", "timeout", None, Some(("q", 2))),
            c("lone", "ok", Some(1.0), None),
            c("unverified", "ok", None, None),
        ]
    }

    #[test]
    fn min_reward_keeps_rewards_at_or_above_whatever_the_status_and_drops_nulls() {
        let min = Filters {
            min_reward: Some(0.5),
            ..NONE
        };
        assert_eq!(kept(&fixture(), min), ["p#2", "p#3", "lone"]);
        let ok_only = ["ok".to_string()];
        let both = Filters {
            only: &ok_only,
            ..min
        };
        assert_eq!(kept(&fixture(), both), ["p#3", "lone"]);
        let verdicts = select(&fixture(), both);
        assert_eq!(verdicts[1], Some(Dropped::Status));
        assert_eq!(verdicts[0], Some(Dropped::Reward));
        assert_eq!(verdicts[6], Some(Dropped::Reward));
    }

    #[test]
    fn best_of_group_takes_the_highest_reward_then_the_lowest_sample() {
        let best = Filters {
            best_of_group: true,
            ..NONE
        };
        // p: 0.5 twice, sample 2 is lower; q: no rewards, sample 1; tasks
        // without a group are their own.
        assert_eq!(kept(&fixture(), best), ["p#2", "q#1", "lone", "unverified"]);
        // Lines out of sample order: the lower sample still wins the tie.
        let mut reversed = fixture();
        reversed.reverse();
        assert_eq!(kept(&reversed, best), ["unverified", "lone", "q#1", "p#2"]);
        // Among `ok` samples only.
        let ok_only = ["ok".to_string()];
        let ok_best = Filters {
            only: &ok_only,
            ..best
        };
        assert_eq!(
            kept(&fixture(), ok_best),
            ["p#3", "q#1", "lone", "unverified"]
        );
        assert_eq!(
            select(&fixture(), ok_best)[0],
            Some(Dropped::NotBest),
            "p#1 lost to p#3"
        );
    }

    #[test]
    fn a_task_id_never_joins_a_group_of_the_same_name() {
        let candidates = [
            c("p", "ok", Some(1.0), None),
            c("p#1", "ok", Some(0.0), Some(("p", 1))),
        ];
        let best = Filters {
            best_of_group: true,
            ..NONE
        };
        assert_eq!(kept(&candidates, best), ["p", "p#1"]);
    }

    #[test]
    fn fields_are_read_from_old_and_new_results() {
        let old = json!({"id": "a", "status": "ok"});
        assert_eq!(
            Candidate::from_result("a", "ok", &old).unwrap(),
            c("a", "ok", None, None)
        );
        let new = json!({"reward": 0.25, "group": "g", "sample": 3});
        assert_eq!(
            Candidate::from_result("g#3", "ok", &new).unwrap(),
            c("g#3", "ok", Some(0.25), Some(("g", 3)))
        );
        let bad = json!({"reward": "high"});
        assert_eq!(
            Candidate::from_result("a", "ok", &bad).unwrap_err(),
            "expected a number or null `reward`"
        );
    }
}
