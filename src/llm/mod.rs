//! The model side of a conversation: an OpenAI-compatible Chat Completions
//! client (one shared reqwest client, retries, error classes, an adaptive
//! in-flight limit, rate buckets, outage handling) and the `script`
//! provider that needs no network.

mod bucket;
mod client;
mod health;
mod limiter;
mod openai;
pub mod script;
mod types;

pub use client::{Llm, LlmReport};
pub use limiter::LimiterStats;
pub use openai::OpenAiClient;
pub use types::{ChatReply, LlmError, Usage};
