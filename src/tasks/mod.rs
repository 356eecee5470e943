//! Tasks: reading rows from a JSONL or CSV source, giving each an id,
//! `repeat`, and rendering its prompts and its environment (minijinja,
//! strict undefined, with the `sh` filter of `quote`).

mod env;
mod plan;
mod quote;
mod shard;
mod source;

pub use env::{Keep, RewardRule, TaskEnv, TaskVerify, VerifyWhen};
pub use plan::{plan, template_env, Task, TaskError};
pub use quote::quote;
pub use shard::{Shard, ShardError};
pub use source::{read_rows, Row};
