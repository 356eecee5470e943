//! Tasks: reading rows from a JSONL or CSV source, giving each an id,
//! `repeat`, and rendering its prompts (minijinja, strict undefined).

mod plan;
mod shard;
mod source;

pub use plan::{plan, template_env, Task, TaskError};
pub use shard::{Shard, ShardError};
pub use source::{read_rows, Row};
