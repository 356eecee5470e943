//! The model side of a conversation: an OpenAI-compatible Chat Completions
//! client (one shared reqwest client, retries, error classes, a shared
//! in-flight limit) and the `script` provider that needs no network.

mod client;
mod openai;
pub mod script;
mod types;

pub use client::Llm;
pub use openai::OpenAiClient;
pub use types::{ChatReply, LlmError, Usage};
