//! The job's model: an HTTP endpoint or the offline script.

use serde_json::Value;

use super::openai::OpenAiClient;
use super::script;
use super::types::{ChatReply, LlmError};
use crate::manifest::{LlmSpec, Provider};
use crate::tasks::Task;

/// One per job, shared by every conversation.
#[derive(Debug)]
pub enum Llm {
    OpenAi(OpenAiClient),
    Script,
}

impl Llm {
    pub fn new(spec: &LlmSpec) -> Result<Llm, LlmError> {
        Ok(match spec.provider {
            Provider::Openai => Llm::OpenAi(OpenAiClient::new(spec)?),
            Provider::Script => Llm::Script,
        })
    }

    /// Requests in flight to the endpoint now.
    pub fn in_flight(&self) -> u64 {
        match self {
            Llm::OpenAi(c) => c.in_flight() as u64,
            Llm::Script => 0,
        }
    }

    /// The model's next reply to `messages` in `task`'s conversation.
    pub async fn complete(
        &self,
        task: &Task,
        messages: &[Value],
        tools: &Value,
    ) -> Result<ChatReply, LlmError> {
        match self {
            Llm::OpenAi(c) => c.complete(messages, tools).await,
            Llm::Script => Ok(script::reply(&task.vars, messages)),
        }
    }
}
