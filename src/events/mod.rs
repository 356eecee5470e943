//! The event stream: the only seam between the engine and what records or
//! displays a run, and the types events carry (task records, statuses,
//! run statistics).

mod json;
mod kind;
mod record;
mod stats;

pub use json::to_json_line;
pub use kind::{
    CancelReason, Event, EventKind, Finished, Outcome, RunStarted, SampleTaken, Stopped,
};
pub use record::{Phases, Status, TaskRecord, VerifyRecord, VerifyStatus};
pub use stats::RunStats;
