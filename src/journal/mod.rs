//! The run directory: manifest snapshot and fingerprint, `results.jsonl`,
//! `trajectories.jsonl`, `turns.jsonl` (partial), `summary.json` and `summaries.jsonl`, `run.json`; resume,
//! the lock, export and merge.

mod atomic;
mod export;
mod fingerprint;
mod merge;
mod read;
mod tail;
mod writer;

pub use crate::events::{Status, TaskRecord};
pub use atomic::{write_atomically, AtomicFile};
pub use export::{export, ArgumentsAs, ExportError, ExportFormat, ExportOptions, ExportStats};
pub use fingerprint::Fingerprint;
pub use merge::{merge, MergeError, MergeStats};
pub use read::{read_final, Final, FinalReader, Finals, JournalReadError};
pub use writer::{lock_holder, Journal, JournalError, Previous, RunInfo, CALLS, RUN_INFO};
