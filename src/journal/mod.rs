//! The run directory: manifest snapshot, `results.jsonl`,
//! `trajectories.jsonl`, `summary.json`.

mod record;
mod writer;

pub use record::{Status, TaskRecord};
pub use writer::{Journal, JournalError};
