//! The scheduler: a semaphore-bounded pool of conversations, a deadline per
//! attempt, retries, and cancellation (drain, then cancel).

mod control;
mod pool;

pub use control::Control;
pub use pool::{run, RunCtx};
