//! The model side of a conversation: an OpenAI-compatible Chat Completions
//! client (one shared reqwest client, retries, error classes, an adaptive
//! in-flight limit, rate buckets, outage handling, the check before a job)
//! and the `script` provider that needs no network. `Llm` is the job's
//! (shared counters and limits); each conversation talks to its own
//! `ModelHandle`, built from its task's row.

mod bucket;
mod client;
mod endpoint;
mod failure;
mod forward;
mod handle;
mod health;
mod latency;
mod limiter;
mod openai;
mod preflight;
mod request;
mod route;
pub mod script;
mod tokens;
mod types;

pub use client::{Llm, LlmReport};
pub use endpoint::EndpointReport;
pub use handle::ModelHandle;
pub use limiter::LimiterStats;
pub use openai::OpenAiClient;
pub use request::{call_id, TOOL_CHOICE_OMIT};
pub use types::{turn_record, ChatReply, Forwarded, LlmError, Usage};
