//! The one event stream between the scheduler and everything that records
//! or displays a run (journal, progress, summary).

use serde_json::Value;

use crate::journal::TaskRecord;

/// A task's final state and its conversation.
#[derive(Debug)]
pub struct Finished {
    pub record: TaskRecord,
    /// Exactly what was sent and received.
    pub messages: Vec<Value>,
}

/// Something that happened in a run, in the order it happened.
#[derive(Debug)]
pub enum Event {
    /// A conversation started (or started again, for a retry). `attempt`
    /// numbers every run of the task, re-runs after a workspace failure
    /// included (the record's `attempt` does not count those).
    TaskStarted { id: String, attempt: u32 },
    /// A conversation finished a turn (the prompt, or a model reply and
    /// its tool results): the messages it added, for the partial journal.
    StepDone {
        id: String,
        attempt: u32,
        step: u32,
        messages: Vec<Value>,
    },
    /// A task reached its final state. The recorder makes it durable before
    /// it counts as done.
    TaskFinished(Box<Finished>),
    /// A task was cancelled before it finished (Ctrl-C); it is not recorded
    /// as done, so a later run does it again.
    TaskCancelled { id: String },
}
