//! The two seams the driver is generic over: the `Model` that replies and
//! the `Shell` that runs commands. The agent consumes them, so they are
//! defined here; the real ones (a conversation's `ModelHandle`, a
//! workspace `Session`) are adapted below, and tests drive a conversation
//! with recording fakes (`fakes`) instead of HTTP and tmux.

use std::future::Future;
use std::time::Duration;

use serde_json::Value;

use crate::llm::{ChatReply, LlmError, ModelHandle};
use crate::workspace::{RunOutput, Session, WorkspaceError};

/// What answers a conversation. `Send` futures: conversations run as
/// spawned tokio tasks.
pub trait Model: Send + Sync {
    /// The next reply to `messages`, offering `tools`.
    fn complete(
        &self,
        messages: &[Value],
        tools: &Value,
    ) -> impl Future<Output = Result<ChatReply, LlmError>> + Send;
}

/// Where a conversation's commands run.
pub trait Shell: Send + Sync {
    /// Runs `command`, interrupting it after `timeout`; output beyond
    /// `max_output_bytes` is cut.
    fn run(
        &self,
        command: &str,
        timeout: Duration,
        max_output_bytes: u64,
    ) -> impl Future<Output = Result<RunOutput, WorkspaceError>> + Send;
}

impl Model for ModelHandle {
    fn complete(
        &self,
        messages: &[Value],
        tools: &Value,
    ) -> impl Future<Output = Result<ChatReply, LlmError>> + Send {
        ModelHandle::complete(self, messages, tools)
    }
}

impl Shell for Session {
    fn run(
        &self,
        command: &str,
        timeout: Duration,
        max_output_bytes: u64,
    ) -> impl Future<Output = Result<RunOutput, WorkspaceError>> + Send {
        Session::run(self, command, timeout, max_output_bytes)
    }
}
