//! The I/O loop around a `Conversation`: ask the model, run its tool calls
//! in the session, repeat until a final answer, an error or the step limit.
//! A reply with only text is the answer (`agent.on_text = "finish"`) or is
//! answered with `agent.continue_prompt` (`"continue"`). It knows neither
//! tasks nor transports: the model and the shell come in as `ports`.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use thiserror::Error;

use super::conversation::{Conversation, Next};
use super::ports::{Model, Shell};
use super::toolbox::Toolbox;
use super::tools::{observation, Action};
use crate::llm::LlmError;
use crate::manifest::OnText;
use crate::workspace::WorkspaceError;

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
/// cancelled, so partial trajectories are never lost. `on_turn` gets each
/// finished turn: its step, the messages it added and the records of its
/// replies (`Conversation::turns`).
pub async fn drive(
    conv: &mut Conversation,
    model: &impl Model,
    shell: &impl Shell,
    tools: &Toolbox,
    limits: &DriveLimits,
    mut on_turn: impl FnMut(u32, &[Value], &[Value]),
) -> Result<String, AgentError> {
    // Output beyond this is cut by the helper already; the model sees at
    // most `max_observation_chars` after `observation` trims it.
    let max_bytes = (limits.max_observation_chars as u64)
        .saturating_mul(4)
        .max(4096);
    let (mut reported, mut reported_turns) = (0, 0);
    loop {
        // Everything since the last report is one finished turn (the first
        // time: the prompt).
        on_turn(
            conv.steps,
            &conv.messages[reported..],
            &conv.turns[reported_turns..],
        );
        (reported, reported_turns) = (conv.messages.len(), conv.turns.len());
        if conv.steps >= limits.max_steps {
            return Err(AgentError::MaxSteps(limits.max_steps));
        }
        let reply = model.complete(&conv.messages, tools.schemas()).await?;
        let cut = reply.finish_reason.as_deref() == Some("length");
        let next = conv.on_reply(reply, tools);
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
                // A manifest tool's command runs as `bash` would run it:
                // same session, same timeout handling, same observation.
                Action::Bash { command, timeout }
                | Action::Tool {
                    command, timeout, ..
                } => {
                    crate::test_hooks::panic_on(&command);
                    let timeout = timeout.unwrap_or(limits.command_timeout);
                    let out = shell.run(&command, timeout, max_bytes).await?;
                    let text = observation(&out, timeout, limits.max_observation_chars);
                    conv.on_observation(&call.id, text);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::agent::fakes::{reply, RecordingShell, ScriptedModel, ShellCall};

    fn limits(max_steps: u32, on_text: OnText) -> DriveLimits {
        DriveLimits {
            max_steps,
            command_timeout: Duration::from_secs(7),
            max_observation_chars: 2000,
            on_text,
            continue_prompt: "go on".into(),
        }
    }

    /// Drives a fresh conversation; the result and the conversation.
    async fn run(
        model: &ScriptedModel,
        shell: &RecordingShell,
        limits: &DriveLimits,
    ) -> (Result<String, AgentError>, Conversation) {
        let mut conv = Conversation::new(Some("sys"), "task");
        let tools = Toolbox::builtin();
        let r = drive(&mut conv, model, shell, &tools, limits, |_, _, _| {}).await;
        (r, conv)
    }

    #[tokio::test]
    async fn tool_calls_reach_the_shell_in_order_with_the_command_timeout() {
        let model = ScriptedModel::new([
            reply::tools([
                ("bash", json!({ "command": "ls" })),
                ("bash", json!({ "command": "sleep 9", "timeout": 30 })),
            ]),
            reply::bash("pwd"),
            reply::finish("done"),
        ]);
        let shell = RecordingShell::output("out\n");
        let (r, conv) = run(&model, &shell, &limits(10, OnText::Finish)).await;
        assert_eq!(r.expect("a final answer"), "done");
        let call = |command: &str, secs| ShellCall {
            command: command.into(),
            timeout: Duration::from_secs(secs),
            max_output_bytes: 8000,
        };
        assert_eq!(
            shell.calls(),
            [call("ls", 7), call("sleep 9", 30), call("pwd", 7)]
        );
        // Each answer is in the next request, under its call's id.
        let second = &model.seen()[1];
        assert_eq!(second[3]["role"], "tool");
        assert_eq!(second[3]["tool_call_id"], second[2]["tool_calls"][0]["id"]);
        assert_eq!(second[4]["content"], "out\n");
        assert_eq!(conv.steps, 3);
    }

    #[tokio::test]
    async fn a_manifest_tool_runs_in_the_shell_and_a_bad_call_is_answered() {
        let text = r#"
name = "t"
[tasks]
source = "t.jsonl"
[prompt]
user = "go"
[llm]
provider = "script"
[[tools]]
name = "view"
parameters = { type = "object", properties = { path = { type = "string" } }, required = ["path"] }
command = "cat {{ path | sh }}"
timeout = "3s"
[[tools]]
name = "here"
command = "pwd"
"#;
        let tools = Toolbox::new(&toml::from_str(text).unwrap()).unwrap();
        let model = ScriptedModel::new([
            reply::tools([
                ("view", json!({ "path": "a b" })),
                ("view", json!({ "file": "a" })),
                ("here", json!({})),
            ]),
            reply::finish("done"),
        ]);
        let shell = RecordingShell::output("contents\n");
        let mut conv = Conversation::new(None, "task");
        let limits = limits(10, OnText::Finish);
        let r = drive(&mut conv, &model, &shell, &tools, &limits, |_, _, _| {}).await;
        assert_eq!(r.expect("a final answer"), "done");
        let call = |command: &str, secs| ShellCall {
            command: command.into(),
            timeout: Duration::from_secs(secs),
            max_output_bytes: 8000,
        };
        // The tool's own timeout, else the job's command timeout.
        assert_eq!(shell.calls(), [call("cat 'a b'", 3), call("pwd", 7)]);
        let answers: Vec<Value> = conv.messages[2..5]
            .iter()
            .map(|m| m["content"].clone())
            .collect();
        assert_eq!(
            answers,
            [
                "contents\n",
                "error: view: missing required argument `path`; unknown argument `file` (known: path)",
                "contents\n"
            ]
        );
        assert_eq!(conv.usage.invalid_tool_calls, 1);
    }

    #[tokio::test]
    async fn finish_ends_with_its_message_and_nothing_after_it_runs() {
        let model = ScriptedModel::new([reply::tools([
            ("finish", json!({ "message": "the answer" })),
            ("bash", json!({ "command": "never" })),
        ])]);
        let shell = RecordingShell::output("");
        let (r, _) = run(&model, &shell, &limits(10, OnText::Continue)).await;
        assert_eq!(r.expect("a final answer"), "the answer");
        assert!(shell.calls().is_empty());
        assert_eq!(model.seen().len(), 1);
    }

    #[tokio::test]
    async fn text_is_nudged_under_continue_and_final_under_finish() {
        let model = ScriptedModel::new([reply::text("thinking"), reply::finish("ok")]);
        let shell = RecordingShell::output("");
        let (r, _) = run(&model, &shell, &limits(10, OnText::Continue)).await;
        assert_eq!(r.expect("a final answer"), "ok");
        let second = &model.seen()[1];
        let last = second.last().expect("messages");
        assert_eq!(*last, json!({ "role": "user", "content": "go on" }));

        let model = ScriptedModel::new([reply::text("thinking")]);
        let (r, _) = run(&model, &shell, &limits(10, OnText::Finish)).await;
        assert_eq!(r.expect("a final answer"), "thinking");
    }

    #[tokio::test]
    async fn the_step_limit_ends_the_drive_with_max_steps() {
        let model = ScriptedModel::new((0..5).map(|i| {
            let mut r = reply::bash(&format!("echo {i}"));
            r.record.insert("token_ids".into(), json!([i]));
            r
        }));
        let shell = RecordingShell::output("");
        let mut turns = Vec::new();
        let mut conv = Conversation::new(None, "task");
        let limits = limits(2, OnText::Finish);
        let r = drive(
            &mut conv,
            &model,
            &shell,
            &Toolbox::builtin(),
            &limits,
            |step, _, records: &[Value]| turns.push((step, records.to_vec())),
        )
        .await;
        assert!(matches!(r, Err(AgentError::MaxSteps(2))), "{r:?}");
        assert_eq!(model.seen().len(), 2);
        assert_eq!(shell.commands(), ["echo 0", "echo 1"]);
        // The prompt, then each turn with its reply's record, reported once.
        let first = json!({"message": 1, "token_ids": [0]});
        let second = json!({"message": 3, "token_ids": [1]});
        assert_eq!(
            turns,
            [
                (0, vec![]),
                (1, vec![first.clone()]),
                (2, vec![second.clone()])
            ]
        );
        assert_eq!(conv.turns, [first, second]);
    }

    #[tokio::test]
    async fn a_shell_error_ends_the_drive_with_a_workspace_error() {
        let model =
            ScriptedModel::new([reply::bash("ls"), reply::bash("boom"), reply::finish("x")]);
        let shell = RecordingShell::answering(|command| match command {
            "boom" => Err(RecordingShell::session_closed()),
            _ => Ok(Default::default()),
        });
        let (r, conv) = run(&model, &shell, &limits(10, OnText::Finish)).await;
        assert!(matches!(r, Err(AgentError::Workspace(_))), "{r:?}");
        assert_eq!(shell.commands(), ["ls", "boom"]);
        assert_eq!(model.seen().len(), 2);
        // What was said before the error stays in the trajectory.
        assert_eq!(conv.steps, 2);
    }

    #[tokio::test]
    async fn a_drive_dropped_mid_command_keeps_what_was_said() {
        let model = ScriptedModel::new([reply::bash("hangs")]);
        let shell = RecordingShell::hanging();
        let mut conv = Conversation::new(None, "task");
        let (tools, limits) = (Toolbox::builtin(), limits(10, OnText::Finish));
        // Cancellation as the pool does it: the drive's future is dropped,
        // here once its command has begun.
        tokio::select! {
            r = drive(&mut conv, &model, &shell, &tools, &limits, |_, _, _| {}) => {
                panic!("the drive ended: {r:?}")
            }
            () = shell.wait_calls(1) => {}
        }
        assert_eq!(conv.steps, 1);
        let last = conv.messages.last().expect("messages");
        let call = &last["tool_calls"][0]["function"];
        assert_eq!(call["arguments"], r#"{"command":"hangs"}"#);
    }
}
