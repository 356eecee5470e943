//! Recording fakes of the agent's two seams, for tests that drive
//! conversations without HTTP, tmux or Docker (the driver's own, and the
//! engine's): a `ScriptedModel` that replies from a queue and records what
//! it was sent, and a `RecordingShell` that records every command and
//! answers it from a closure, or never (to hold a conversation mid-command
//! for deadline and cancellation tests). Tests wait on what the fakes saw
//! (`RecordingShell::wait_calls`), never on time.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use serde_json::{json, Value};
use tokio::sync::watch;

use super::ports::{Model, Shell};
use crate::llm::{ChatReply, LlmError, Usage};
use crate::workspace::{ErrorKind, RunOutput, WorkspaceError};

/// A model that plays replies in order and records every request's
/// messages. Past its last reply it answers with an error saying so, so a
/// test that asks once too often fails on that, not on a hang.
pub(crate) struct ScriptedModel {
    replies: Mutex<VecDeque<Result<ChatReply, LlmError>>>,
    seen: Mutex<Vec<Vec<Value>>>,
}

impl ScriptedModel {
    pub(crate) fn new(replies: impl IntoIterator<Item = ChatReply>) -> ScriptedModel {
        ScriptedModel::from_results(replies.into_iter().map(Ok))
    }

    /// Replies and errors (an endpoint that fails at some turn).
    pub(crate) fn from_results(
        replies: impl IntoIterator<Item = Result<ChatReply, LlmError>>,
    ) -> ScriptedModel {
        ScriptedModel {
            replies: Mutex::new(replies.into_iter().collect()),
            seen: Mutex::default(),
        }
    }

    /// The messages of each request, in the order they came.
    pub(crate) fn seen(&self) -> Vec<Vec<Value>> {
        self.seen.lock().expect("seen lock").clone()
    }
}

impl Model for ScriptedModel {
    async fn complete(&self, messages: &[Value], _tools: &Value) -> Result<ChatReply, LlmError> {
        let n = {
            let mut seen = self.seen.lock().expect("seen lock");
            seen.push(messages.to_vec());
            seen.len()
        };
        self.replies
            .lock()
            .expect("replies lock")
            .pop_front()
            .unwrap_or_else(|| {
                Err(LlmError::Config(format!(
                    "the scripted model has no reply left for request {n}"
                )))
            })
    }
}

/// Replies for a `ScriptedModel`. Each costs `USAGE`, so token totals in
/// tests are a count of replies.
pub(crate) mod reply {
    use super::*;

    pub(crate) const USAGE: Usage = Usage {
        prompt_tokens: 10,
        completion_tokens: 5,
        total_tokens: 15,
        retries: 0,
        invalid_tool_calls: 0,
    };

    /// One assistant message calling each `(tool, arguments)` in order.
    pub(crate) fn tools<'a>(calls: impl IntoIterator<Item = (&'a str, Value)>) -> ChatReply {
        // Ids unique across a test binary, as an endpoint's are.
        static NEXT_ID: AtomicU64 = AtomicU64::new(1);
        let calls: Vec<Value> = calls
            .into_iter()
            .map(|(name, args)| {
                json!({
                    "id": format!("call_{}", NEXT_ID.fetch_add(1, Ordering::Relaxed)),
                    "type": "function",
                    "function": { "name": name, "arguments": args.to_string() },
                })
            })
            .collect();
        answer(
            json!({ "role": "assistant", "content": null, "tool_calls": calls }),
            "tool_calls",
        )
    }

    /// Runs `command` with the job's command timeout.
    pub(crate) fn bash(command: &str) -> ChatReply {
        tools([("bash", json!({ "command": command }))])
    }

    pub(crate) fn finish(message: &str) -> ChatReply {
        tools([("finish", json!({ "message": message }))])
    }

    /// Text and no tool call.
    pub(crate) fn text(content: &str) -> ChatReply {
        answer(json!({ "role": "assistant", "content": content }), "stop")
    }

    fn answer(message: Value, finish_reason: &str) -> ChatReply {
        ChatReply {
            message,
            finish_reason: Some(finish_reason.into()),
            usage: USAGE,
            record: serde_json::Map::new(),
        }
    }
}

/// One command a `RecordingShell` was asked to run.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct ShellCall {
    pub command: String,
    pub timeout: Duration,
    pub max_output_bytes: u64,
}

type Answer = dyn Fn(&str) -> Option<Result<RunOutput, WorkspaceError>> + Send + Sync;

/// A shell that records every command, then answers it as told.
pub(crate) struct RecordingShell {
    /// `None`: the command never finishes.
    answer: Box<Answer>,
    calls: Mutex<Vec<ShellCall>>,
    /// How many commands have begun, for `wait_calls`.
    begun: watch::Sender<usize>,
}

impl RecordingShell {
    /// Every command prints `output` and exits 0.
    pub(crate) fn output(output: &str) -> RecordingShell {
        let out = RunOutput {
            output: output.into(),
            ..RunOutput::default()
        };
        RecordingShell::answering(move |_| Ok(out.clone()))
    }

    /// Each command is answered by `f` (fail some, echo others, ...).
    pub(crate) fn answering(
        f: impl Fn(&str) -> Result<RunOutput, WorkspaceError> + Send + Sync + 'static,
    ) -> RecordingShell {
        RecordingShell::new(Box::new(move |command| Some(f(command))))
    }

    /// Commands are recorded and never finish: the conversation waits
    /// until its deadline or cancellation drops it.
    pub(crate) fn hanging() -> RecordingShell {
        RecordingShell::new(Box::new(|_| None))
    }

    fn new(answer: Box<Answer>) -> RecordingShell {
        RecordingShell {
            answer,
            calls: Mutex::default(),
            begun: watch::Sender::new(0),
        }
    }

    /// What a workspace whose session broke answers.
    pub(crate) fn session_closed() -> WorkspaceError {
        WorkspaceError::Helper {
            kind: ErrorKind::SessionClosed,
            message: "the session was closed while its command ran (fake)".into(),
        }
    }

    pub(crate) fn calls(&self) -> Vec<ShellCall> {
        self.calls.lock().expect("calls lock").clone()
    }

    pub(crate) fn commands(&self) -> Vec<String> {
        self.calls().into_iter().map(|c| c.command).collect()
    }

    /// Returns once `n` commands have begun (answered or not).
    pub(crate) async fn wait_calls(&self, n: usize) {
        let mut begun = self.begun.subscribe();
        // The sender lives in `self`, so the channel cannot close here.
        let _ = begun.wait_for(|&b| b >= n).await;
    }
}

impl Shell for RecordingShell {
    async fn run(
        &self,
        command: &str,
        timeout: Duration,
        max_output_bytes: u64,
    ) -> Result<RunOutput, WorkspaceError> {
        self.calls.lock().expect("calls lock").push(ShellCall {
            command: command.into(),
            timeout,
            max_output_bytes,
        });
        self.begun.send_modify(|b| *b += 1);
        match (self.answer)(command) {
            Some(answer) => answer,
            None => std::future::pending().await,
        }
    }
}
