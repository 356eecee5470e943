//! convoy: a command-line orchestrator for agentic data synthesis.
//!
//! # Theory of operation
//!
//! A job manifest (`manifest`) names a task source, prompt templates, an LLM
//! endpoint, a workspace and limits. `convoy run` first builds the whole plan
//! (`tasks`): every row is read and every prompt rendered before anything
//! starts, so bad input fails in a second with the file and line.
//!
//! The run then boots ONE workspace (`workspace`): a private tmux server,
//! either on this host (`local`) or inside one Docker container (`docker`,
//! through bollard). Requests reach tmux through the workspace helper,
//! `convoy shim`, which is this same binary speaking a small line protocol
//! over one stdio stream (`workspace::channel`): a child process locally,
//! one long-lived attached exec in the container. Inside, the helper drives
//! tmux through one control-mode client. A supervisor restarts a helper
//! whose stream broke, or boots a new container if the old one died. Every
//! conversation gets its own tmux session; a
//! command is run by the session's shell, its output goes to a file, and its
//! completion is announced by a record the shell writes to a FIFO: an event,
//! never a screen poll.
//!
//! The `engine` runs one conversation per task under a bound of
//! `run.workers` (adjustable while it runs); before each dispatch it checks
//! the endpoint is up and the token/cost budgets allow another task. It
//! reaches the workspace, the model and the monitor through small traits
//! (`engine::ports`), so its unit tests drive it with recording fakes. A
//! conversation (`agent`) is a pure state machine of chat messages driven
//! by a thin loop that asks its model handle for a reply and runs its tool
//! calls in its session. The `llm` client is one per job: retries by
//! reason, an adaptive (AIMD) in-flight limit, rate buckets and an outage
//! gate that every request passes; each conversation talks through its own
//! handle, built from its task. Each session has exactly one owner: the
//! conversation closes it; if the conversation is dropped (deadline, panic,
//! cancellation) the session's guard hands it to the reaper.
//!
//! The `monitor` raises RLIMIT_NOFILE at start and samples convoy and the
//! workspace; the engine applies the leak rules through it, and the
//! verdict (clean, leak or unknown) ends up in `summary.json`.
//!
//! Everything the engine does is an `events::Event` on one channel, the
//! only seam between it and what records or displays a run. The
//! `reporters` each consume the stream on their own: the journal appends
//! each finished turn (partial trajectories) and makes each result durable
//! before the others count it; `metrics.csv`, the progress display, the
//! printed summary and `--events` read the same events. `convoy ctl`
//! (`ctl`) steers a running engine through a socket in the run directory.
//! Run again on its directory, a job continues: the journal repairs torn
//! lines, checks the fingerprint and hands back what is done (`app::plan`
//! drops those tasks). What a crashed run left (containers, tmux servers)
//! is found by its owner's pid and start time and removed
//! (`workspace::sweep`). `convoy report`, `merge` and `export` read run
//! directories after the fact.
//!
//! `app` wires these together and maps every error to an exit code
//! (`exit::Exit`).

pub mod agent;
pub mod app;
pub mod cli;
pub mod ctl;
pub mod engine;
pub mod events;
pub mod exit;
pub mod gateway;
pub mod journal;
pub mod llm;
pub mod manifest;
pub mod monitor;
pub mod report;
pub mod reporters;
pub mod tasks;
pub mod test_hooks;
pub mod workspace;
