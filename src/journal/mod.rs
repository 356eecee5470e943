//! The run directory: manifest snapshot, `results.jsonl`,
//! `trajectories.jsonl`, `summary.json`.

mod export;
mod merge;
mod read;
mod record;
mod writer;

pub use export::{export, ExportError, ExportOptions, ExportStats};
pub use merge::{merge, MergeError, MergeStats};
pub use read::{read_final, Final, FinalReader, Finals, JournalReadError};
pub use record::{Status, TaskRecord};
pub use writer::{Journal, JournalError};
