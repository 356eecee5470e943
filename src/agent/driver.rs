//! The I/O loop around a `Conversation`: ask the model, run its tool calls
//! in the session, repeat until a final answer, an error or the step limit.
//! A reply with only text is the answer (`agent.on_text = "finish"`) or is
//! answered with `agent.continue_prompt` (`"continue"`).

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

use super::conversation::{Conversation, Next};
use super::tools::{observation, Action};
use crate::llm::{Llm, LlmError};
use crate::manifest::OnText;
use crate::tasks::Task;
use crate::workspace::{Session, WorkspaceError};

#[derive(Debug, Clone)]
pub struct DriveLimits {
    pub max_steps: u32,
    pub command_timeout: Duration,
    pub max_observation_chars: usize,
    /// A reply with text and no tool call: go on or finish.
    pub on_text: OnText,
    /// The user message that asks the model to go on.
    pub continue_prompt: Arc<str>,
}

#[derive(Debug, Error)]
pub enum AgentError {
    #[error(transparent)]
    Llm(#[from] LlmError),
    #[error(transparent)]
    Workspace(#[from] WorkspaceError),
    #[error("reached the step limit ({0} model turns) without a final answer")]
    MaxSteps(u32),
    /// A reply without tool calls cut at `max_tokens`: its text is not a
    /// final answer, and another attempt would most likely be cut again.
    #[error("the model's reply was cut at its token limit (finish_reason \"length\") before it gave a final answer")]
    Truncated,
}

/// Runs the conversation to its end; the final answer on success. The
/// conversation keeps every message even when this returns an error or is
/// cancelled, so partial trajectories are never lost.
pub async fn drive(
    conv: &mut Conversation,
    task: &Task,
    llm: &Llm,
    session: &Session,
    tools: &Value,
    limits: &DriveLimits,
    mut on_turn: impl FnMut(u32, &[Value]),
) -> Result<String, AgentError> {
    // Output beyond this is cut by the helper already; the model sees at
    // most `max_observation_chars` after `observation` trims it.
    let max_bytes = (limits.max_observation_chars as u64)
        .saturating_mul(4)
        .max(4096);
    let mut reported = 0;
    loop {
        // Everything since the last report is one finished turn (the first
        // time: the prompt).
        on_turn(conv.steps, &conv.messages[reported..]);
        reported = conv.messages.len();
        if conv.steps >= limits.max_steps {
            return Err(AgentError::MaxSteps(limits.max_steps));
        }
        let reply = llm.complete(task, &conv.messages, tools).await?;
        let cut = reply.finish_reason.as_deref() == Some("length");
        let next = conv.on_reply(reply.message, &reply.usage);
        let calls = match next {
            // The text stays in the trajectory; the model is asked to go
            // on, cut or not, until it calls a tool or `finish`.
            Next::Final(_) if limits.on_text == OnText::Continue => {
                conv.on_nudge(&limits.continue_prompt);
                continue;
            }
            Next::Final(_) if cut => return Err(AgentError::Truncated),
            Next::Final(text) => return Ok(text),
            Next::Calls(calls) => calls,
        };
        for call in calls {
            match call.action {
                Action::Finish { message } => return Ok(message),
                Action::Invalid { error } => conv.on_observation(&call.id, error),
                Action::Bash { command, timeout } => {
                    crate::test_hooks::panic_on(&command);
                    let timeout = timeout.unwrap_or(limits.command_timeout);
                    let out = session.run(&command, timeout, max_bytes).await?;
                    let text = observation(&out, timeout, limits.max_observation_chars);
                    conv.on_observation(&call.id, text);
                }
            }
        }
    }
}
