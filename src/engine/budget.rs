//! Token and cost budgets (`llm.max_total_tokens`, `llm.max_cost`): checked
//! before each task is dispatched. A task may start only if the tokens the
//! job used so far, plus a reserve for every running task and for the new
//! one, stay within the budget; otherwise dispatching stops and what is
//! running finishes. The reserve is `llm.reserve_tokens_per_task`, or the
//! mean of the tasks finished so far (0 until the first one finishes, so
//! the first `workers` tasks always start).

use std::sync::atomic::{AtomicU64, Ordering};

use crate::manifest::{LlmSpec, Price};

#[derive(Debug)]
pub struct Budget {
    max_tokens: Option<u64>,
    max_cost: Option<f64>,
    reserve: Option<u64>,
    finished: AtomicU64,
    finished_tokens: AtomicU64,
}

impl Budget {
    pub fn new(spec: &LlmSpec) -> Budget {
        Budget {
            max_tokens: spec.max_total_tokens,
            max_cost: spec.max_cost,
            reserve: spec.reserve_tokens_per_task,
            finished: AtomicU64::new(0),
            finished_tokens: AtomicU64::new(0),
        }
    }

    /// No budget (tests).
    #[cfg(test)]
    pub fn unlimited() -> Budget {
        Budget::tokens_or_not(None, None)
    }

    /// A token budget of `max` with `reserve` held per running task (tests).
    #[cfg(test)]
    pub fn tokens(max: u64, reserve: u64) -> Budget {
        Budget::tokens_or_not(Some(max), Some(reserve))
    }

    #[cfg(test)]
    fn tokens_or_not(max_tokens: Option<u64>, reserve: Option<u64>) -> Budget {
        Budget {
            max_tokens,
            max_cost: None,
            reserve,
            finished: AtomicU64::new(0),
            finished_tokens: AtomicU64::new(0),
        }
    }

    /// A task ended (any status) having used `tokens`.
    pub fn on_task_end(&self, tokens: u64) {
        self.finished.fetch_add(1, Ordering::Relaxed);
        self.finished_tokens.fetch_add(tokens, Ordering::Relaxed);
    }

    /// Why no further task may start, if that is so: the job used `spent`
    /// (prompt and completion tokens, and their price when known) and
    /// `running` tasks are in flight now.
    pub fn exceeded(&self, spent: (u64, u64, Option<Price>), running: u64) -> Option<String> {
        if self.max_tokens.is_none() && self.max_cost.is_none() {
            return None;
        }
        let (prompt, completion, price) = spent;
        let used = prompt + completion;
        let reserve = self.reserve.unwrap_or_else(|| {
            let n = self.finished.load(Ordering::Relaxed);
            self.finished_tokens.load(Ordering::Relaxed) / n.max(1)
        });
        let held = reserve * (running + 1);
        if let Some(max) = self.max_tokens {
            if used + held > max {
                return Some(format!(
                    "token budget reached: {used} tokens used, {held} reserved for {} running tasks, llm.max_total_tokens = {max}",
                    running + 1
                ));
            }
        }
        if let (Some(max), Some(price)) = (self.max_cost, price) {
            // The reserve is priced at the dearer kind of token, so the
            // budget errs on the safe side.
            let dearer = price.prompt.max(price.completion);
            let cost = price.cost(prompt, completion) + held as f64 * dearer / 1e6;
            if cost > max {
                return Some(format!(
                    "cost budget reached: {:.4} spent or reserved, llm.max_cost = {max}",
                    cost
                ));
            }
        }
        None
    }
}
