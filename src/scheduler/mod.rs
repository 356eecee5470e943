//! The scheduler: a semaphore-bounded pool of conversations, a deadline per
//! attempt, retries, cancellation (drain, then cancel), and the token and
//! cost budgets checked before each dispatch; failures of the workspace
//! re-run what they cut short and quarantine the task that causes them.

mod budget;
mod control;
mod infra;
mod pool;

pub use budget::Budget;
pub use control::{exit_after, Control, SHUTDOWN_BOUND};
pub use pool::{run, RunCtx};
