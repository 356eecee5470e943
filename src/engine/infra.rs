//! Failures of the workspace (its helper or its container died, or stopped
//! answering) are not the task's fault: an attempt they cut short is run
//! again without counting against `run.max_attempts`, within its own
//! budget (`run.max_infra_retries`). But one task may be the cause (a
//! command that kills the helper, `kill -9 -1`): this module finds it.
//!
//! The workspace counts its failures (`Workspace::failures`, monotone). An
//! attempt is in flight at failure `n` when it began with fewer than `n`
//! failures counted and was still running once `n` was. For every failure
//! the set of tasks in flight is known exactly, even while some of them
//! still run: those that ended are recorded, those running are in the
//! registry with the count they began with.
//!
//! A task is poison when it was in flight at `POISON_STRIKES` or more
//! failures and no other task was in flight at all of them: the other
//! tasks changed, the workspace still broke, this task was always there.
//! Such a task is not run again (`workspace_crash`). So that the other
//! tasks do change, a task that was already in flight at
//! `POISON_STRIKES` failures re-runs only while no other such task runs:
//! the innocent ones it took down with it are then not beside it at the
//! next failure, and they end `ok` once it is quarantined.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Mutex;

/// Failures a task must have been in flight at before it can be poison.
pub const POISON_STRIKES: usize = 2;

/// The ledger of workspace failures and the attempts in flight at them.
#[derive(Debug, Default)]
pub struct InfraLedger {
    state: Mutex<State>,
    /// Held by a suspect (a task in flight at `POISON_STRIKES` failures)
    /// while it runs again: suspects run one at a time.
    suspects: tokio::sync::Mutex<()>,
}

#[derive(Debug, Default)]
struct State {
    next: u64,
    /// Attempts running now: their task and the failure count they began
    /// with.
    running: HashMap<u64, (String, u64)>,
    /// Failure number -> tasks whose ended attempts were in flight at it.
    ended: BTreeMap<u64, HashSet<String>>,
}

/// An attempt registered in the ledger; `end` it with the failure count
/// at its end.
#[derive(Debug)]
pub struct InFlight(u64);

impl State {
    /// Tasks in flight at failure `n`, as far as `now` failures are known.
    fn at(&self, n: u64) -> HashSet<&str> {
        let mut set: HashSet<&str> = self
            .ended
            .get(&n)
            .map(|s| s.iter().map(String::as_str).collect())
            .unwrap_or_default();
        set.extend(
            self.running
                .values()
                .filter(|(_, start)| *start < n)
                .map(|(task, _)| task.as_str()),
        );
        set
    }

    /// Whether `task` was in flight at failure `n` (what `at(n)` holds,
    /// without building the set: this runs as every attempt starts).
    fn was_at(&self, task: &str, n: u64) -> bool {
        self.ended.get(&n).is_some_and(|s| s.contains(task))
            || self
                .running
                .values()
                .any(|(t, start)| t == task && *start < n)
    }

    /// The failures `task` was in flight at, among the first `now`.
    fn strikes(&self, task: &str, now: u64) -> Vec<u64> {
        (1..=now).filter(|&n| self.was_at(task, n)).collect()
    }
}

impl InfraLedger {
    /// An attempt of `task` begins; `failures` is the workspace's count now.
    pub fn begin(&self, task: &str, failures: u64) -> InFlight {
        let mut s = self.state.lock().expect("ledger lock");
        s.next += 1;
        let id = s.next;
        s.running.insert(id, (task.to_string(), failures));
        InFlight(id)
    }

    /// The attempt ended with `failures` counted; returns how many
    /// failures it was in flight at.
    pub fn end(&self, attempt: InFlight, failures: u64) -> u64 {
        let mut s = self.state.lock().expect("ledger lock");
        let Some((task, start)) = s.running.remove(&attempt.0) else {
            return 0;
        };
        for n in start + 1..=failures {
            s.ended.entry(n).or_default().insert(task.clone());
        }
        failures.saturating_sub(start)
    }

    /// Whether `task` brought the workspace down: in flight at
    /// `POISON_STRIKES` failures or more, and the only task in flight at
    /// every one of them. `failures` is the workspace's count now.
    pub fn is_poison(&self, task: &str, failures: u64) -> bool {
        let s = self.state.lock().expect("ledger lock");
        let strikes = s.strikes(task, failures);
        if strikes.len() < POISON_STRIKES {
            return false;
        }
        let mut common = s.at(strikes[0]);
        for &n in &strikes[1..] {
            let at = s.at(n);
            common.retain(|t| at.contains(t));
        }
        common.len() == 1
    }

    /// Whether `task` must re-run alone among suspects.
    pub fn is_suspect(&self, task: &str, failures: u64) -> bool {
        let s = self.state.lock().expect("ledger lock");
        s.strikes(task, failures).len() >= POISON_STRIKES
    }

    /// Waits until no other suspect runs; hold the guard for the attempt.
    pub async fn isolate(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.suspects.lock().await
    }
}

/// One ledger per container of the workspace (its failures are its own,
/// counted apart): a task is suspected only for failures of the container
/// it ran in.
#[derive(Debug, Default)]
pub struct InfraLedgers(
    std::sync::Mutex<std::collections::HashMap<usize, std::sync::Arc<InfraLedger>>>,
);

impl InfraLedgers {
    pub fn of(&self, container: usize) -> std::sync::Arc<InfraLedger> {
        self.0
            .lock()
            .expect("ledgers lock")
            .entry(container)
            .or_default()
            .clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_task_present_at_every_failure_alone_is_poison() {
        let l = InfraLedger::default();
        // Failure 1 hits p, a and b.
        let (p, a, b) = (l.begin("p", 0), l.begin("a", 0), l.begin("b", 0));
        for x in [p, a, b] {
            assert_eq!(l.end(x, 1), 1);
        }
        assert!(!l.is_poison("p", 1), "one failure proves nothing");
        // Failure 2 hits p and c (a and b wait their turn, or finished).
        let (p, c) = (l.begin("p", 1), l.begin("c", 1));
        let a = l.begin("a", 1);
        assert_eq!(l.end(a, 1), 0, "a ended before failure 2");
        l.end(p, 2);
        assert!(
            !l.is_poison("a", 2) && !l.is_poison("b", 2),
            "innocent ones in flight at one failure only"
        );
        // c still runs: it is counted at failure 2 all the same.
        assert!(l.is_poison("p", 2));
        assert!(!l.is_poison("c", 2));
        l.end(c, 2);
    }

    #[test]
    fn tasks_that_were_always_together_are_not_told_apart() {
        let l = InfraLedger::default();
        for f in 0..3 {
            let (p, a) = (l.begin("p", f), l.begin("a", f));
            l.end(p, f + 1);
            l.end(a, f + 1);
        }
        assert!(!l.is_poison("p", 3) && !l.is_poison("a", 3));
        assert!(l.is_suspect("p", 3) && l.is_suspect("a", 3));
        // Alone among suspects, p breaks it again: now it stands out.
        let p = l.begin("p", 3);
        l.end(p, 4);
        assert!(l.is_poison("p", 4));
        assert!(!l.is_poison("a", 4));
    }

    #[test]
    fn a_task_alone_in_the_pool_is_poison_after_two_failures() {
        let l = InfraLedger::default();
        let p = l.begin("p", 0);
        l.end(p, 1);
        assert!(!l.is_poison("p", 1));
        let p = l.begin("p", 1);
        l.end(p, 2);
        assert!(l.is_poison("p", 2));
    }
}
