//! A conversation as a pure state machine: the messages so far, the step
//! count, and what the next reply means. No I/O here, so every rule (turn
//! limits, tool-call answering, final answers) is unit-tested.

use serde_json::{json, Value};

use super::toolbox::Toolbox;
use super::tools::{parse_call, ToolCall};
use crate::llm::{turn_record, ChatReply, Usage};

#[derive(Debug, Clone)]
pub struct Conversation {
    /// Exactly what was sent and received, in OpenAI chat format.
    pub messages: Vec<Value>,
    /// What convoy keeps about assistant turns beside their messages (the
    /// trajectory's `convoy.turns`): `{"message": <index in messages>,
    /// ...the reply's record}` for each reply whose record is not empty.
    /// Never sent to the endpoint, so `messages` stays OpenAI's format.
    pub turns: Vec<Value>,
    /// Model replies so far.
    pub steps: u32,
    pub usage: Usage,
    /// An external agent's: the tools of its last request (the
    /// trajectory's, in place of the job's), and its own output.
    pub tools: Option<Value>,
    pub agent_output: Option<String>,
}

/// What a model reply asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Next {
    /// Run these tool calls in order, answering each under its id.
    Calls(Vec<ToolCall>),
    /// The reply had no tool calls: its text (the final answer, unless the
    /// driver asks the model to go on).
    Final(String),
}

impl Conversation {
    pub fn new(system: Option<&str>, user: &str) -> Conversation {
        let mut messages = Vec::with_capacity(8);
        if let Some(s) = system {
            messages.push(json!({ "role": "system", "content": s }));
        }
        messages.push(json!({ "role": "user", "content": user }));
        Conversation {
            messages,
            turns: Vec::new(),
            steps: 0,
            usage: Usage::default(),
            tools: None,
            agent_output: None,
        }
    }

    /// Records a model reply (its message as received, and its record
    /// beside it) and says what it asks for, each call read against the
    /// `tools` offered. Calls that will not run (bad JSON, an unknown tool,
    /// arguments their schema refuses) are counted in
    /// `usage.invalid_tool_calls`.
    pub fn on_reply(&mut self, reply: ChatReply, tools: &Toolbox) -> Next {
        let ChatReply {
            message,
            usage,
            record,
            ..
        } = reply;
        self.steps += 1;
        self.usage.add(&usage);
        self.turns.extend(turn_record(self.messages.len(), record));
        let calls: Vec<ToolCall> = message
            .get("tool_calls")
            .and_then(Value::as_array)
            .map(|calls| {
                calls
                    .iter()
                    .enumerate()
                    .map(|(i, c)| parse_call(i, c, tools))
                    .collect()
            })
            .unwrap_or_default();
        self.usage.invalid_tool_calls += calls
            .iter()
            .filter(|c| matches!(c.action, super::tools::Action::Invalid { .. }))
            .count() as u64;
        let text = message
            .get("content")
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_string();
        self.messages.push(message);
        if calls.is_empty() {
            Next::Final(text)
        } else {
            Next::Calls(calls)
        }
    }

    /// Asks the model to go on after a reply without tool calls.
    pub fn on_nudge(&mut self, prompt: &str) {
        self.messages
            .push(json!({ "role": "user", "content": prompt }));
    }

    /// Answers one tool call.
    pub fn on_observation(&mut self, call_id: &str, content: String) {
        self.messages.push(json!({
            "role": "tool",
            "tool_call_id": call_id,
            "content": content,
        }));
    }
}

#[cfg(test)]
mod tests {
    use serde_json::Map;

    use super::*;
    use crate::agent::Action;

    fn reply(message: Value) -> ChatReply {
        ChatReply {
            message,
            finish_reason: None,
            usage: Usage::default(),
            record: Map::new(),
        }
    }

    #[test]
    fn text_without_tool_calls_is_final() {
        let mut c = Conversation::new(Some("sys"), "hi");
        let next = c.on_reply(
            reply(json!({"role": "assistant", "content": "done"})),
            &Toolbox::builtin(),
        );
        assert_eq!(next, Next::Final("done".into()));
        assert_eq!(c.messages.len(), 3);
        assert_eq!(c.steps, 1);
        assert!(c.turns.is_empty());
    }

    #[test]
    fn several_calls_keep_their_ids_and_order() {
        let mut c = Conversation::new(None, "hi");
        let reply = json!({"role": "assistant", "content": "let me look", "tool_calls": [
            {"id": "x1", "type": "function", "function": {"name": "bash", "arguments": "{\"command\":\"ls\"}"}},
            {"id": "x2", "type": "function", "function": {"name": "finish", "arguments": "{\"message\":\"m\"}"}}
        ]});
        let Next::Calls(calls) = c.on_reply(self::reply(reply), &Toolbox::builtin()) else {
            panic!("expected calls")
        };
        assert_eq!(calls[0].id, "x1");
        assert_eq!(
            calls[1].action,
            Action::Finish {
                message: "m".into()
            }
        );
        c.on_observation("x1", "out".into());
        assert_eq!(c.messages[2]["tool_call_id"], "x1");
    }

    #[test]
    fn invalid_calls_are_counted_and_reasoning_is_kept() {
        let mut c = Conversation::new(None, "hi");
        let reply = json!({"role": "assistant", "content": null, "reasoning_content": "hmm", "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "bash", "arguments": "{\"command\": "}},
            {"id": "b", "type": "function", "function": {"name": "python", "arguments": "{}"}},
            {"id": "c", "type": "function", "function": {"name": "bash", "arguments": "{\"command\":\"ls\"}"}}
        ]});
        let Next::Calls(calls) = c.on_reply(self::reply(reply), &Toolbox::builtin()) else {
            panic!("expected calls")
        };
        assert_eq!(calls.len(), 3);
        assert_eq!(c.usage.invalid_tool_calls, 2);
        assert_eq!(c.messages[1]["reasoning_content"], "hmm");
    }

    #[test]
    fn a_reply_s_record_is_kept_beside_its_message() {
        let mut c = Conversation::new(Some("sys"), "hi");
        let mut first = reply(json!({"role": "assistant", "content": null, "tool_calls": [
            {"id": "a", "type": "function", "function": {"name": "bash", "arguments": "{\"command\":\"ls\"}"}}
        ]}));
        first.record.insert("token_ids".into(), json!([1, 2]));
        c.on_reply(first, &Toolbox::builtin());
        c.on_observation("a", "out".into());
        // A reply without a record adds no turn.
        c.on_reply(
            reply(json!({"role": "assistant", "content": "x"})),
            &Toolbox::builtin(),
        );
        c.on_nudge("go on");
        let mut last = reply(json!({"role": "assistant", "content": "done"}));
        last.record.insert("finish_reason".into(), json!("stop"));
        c.on_reply(last, &Toolbox::builtin());
        assert_eq!(
            c.turns,
            [
                json!({"message": 2, "token_ids": [1, 2]}),
                json!({"message": 6, "finish_reason": "stop"})
            ]
        );
        assert_eq!(c.messages[6]["content"], "done");
        assert!(c.messages.iter().all(|m| m.get("token_ids").is_none()));
    }
}
