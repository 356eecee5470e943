//! Exporting a run directory as training data, one JSONL line per task (its
//! final result and final trajectory, see `read`), in one of two shapes:
//!
//! - `openai`: `{"messages": [...], "tools": [...]}`, the conversational
//!   format TRL's SFT trainer reads and `apply_chat_template(messages,
//!   tools=tools)` renders;
//! - `sharegpt`: `{"conversations": [{"from", "value"}], "system", "tools"}`,
//!   LLaMA-Factory's sharegpt dataset format.
//!
//! `run` drives the export, `select` picks the tasks (status, reward, best
//! of each group), `messages` normalises a trajectory's messages
//! (the keys chat templates know, tool names, arguments as strings or
//! objects), `sharegpt` turns them into LLaMA-Factory's turns.

mod messages;
mod run;
mod select;
mod sharegpt;

pub use run::{export, ArgumentsAs, ExportError, ExportFormat, ExportOptions, ExportStats};
