//! The scheduler: a semaphore-bounded pool of conversations, a deadline per
//! attempt, retries, cancellation (drain, then cancel), and the token and
//! cost budgets checked before each dispatch.

mod budget;
mod control;
mod pool;

pub use budget::Budget;
pub use control::Control;
pub use pool::{run, RunCtx};
