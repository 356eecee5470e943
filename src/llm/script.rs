//! The `script` provider: a fixed policy read from each task row, with no
//! network. A row carries `commands` (a list of shell commands) and `answer`
//! (the final text); the provider asks for each command in turn through the
//! `bash` tool, then calls `finish` with the answer. Smoke jobs and CI use
//! it to exercise everything but the model.

use serde_json::{json, Map, Value};

use super::types::{ChatReply, Forwarded, Usage};

/// What one row asks the provider to play: read once, when a
/// conversation's model handle is built, so the check before the job and
/// the replies follow the same rules.
#[derive(Debug, Clone, PartialEq)]
pub struct Script {
    commands: Vec<String>,
    answer: String,
}

impl Script {
    /// Reads a row; the error says which field is wrong (the caller adds
    /// where the row is).
    pub fn from_row(vars: &Map<String, Value>) -> Result<Script, String> {
        let commands = match vars.get("commands") {
            None => Some(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|c| c.as_str().map(str::to_string))
                .collect(),
            Some(_) => None,
        };
        let Some(commands) = commands else {
            return Err("the script provider needs `commands` to be a list of strings".into());
        };
        match vars.get("answer") {
            Some(Value::String(answer)) => Ok(Script {
                commands,
                answer: answer.clone(),
            }),
            _ => Err("the script provider needs `answer` (a string) in every row".into()),
        }
    }

    /// The reply to `messages`: the next command, or `finish` once all ran.
    pub fn reply(&self, messages: &[Value]) -> ChatReply {
        let step = messages
            .iter()
            .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
            .count();
        let (name, args) = match self.commands.get(step) {
            Some(cmd) => ("bash", json!({ "command": cmd })),
            None => ("finish", json!({ "message": self.answer })),
        };
        ChatReply {
            message: json!({
                "role": "assistant",
                "content": null,
                "tool_calls": [{
                    "id": format!("call_{step}"),
                    "type": "function",
                    "function": { "name": name, "arguments": args.to_string() },
                }],
            }),
            finish_reason: Some("tool_calls".into()),
            usage: Usage::default(),
            record: serde_json::Map::new(),
        }
    }
}

impl Script {
    /// The reply to an external agent's request, as an endpoint would send
    /// it: the next turn for the request's `messages`, whatever tools the
    /// agent offers (a smoke job's agent offers `bash` and `finish`).
    pub fn forward(&self, request: &Map<String, Value>) -> Forwarded {
        let messages = request
            .get("messages")
            .and_then(Value::as_array)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let reply = self.reply(messages);
        let response = json!({
            "id": "chatcmpl-script",
            "object": "chat.completion",
            "model": "script",
            "choices": [{
                "index": 0,
                "message": reply.message,
                "finish_reason": reply.finish_reason,
            }],
            "usage": {"prompt_tokens": 0, "completion_tokens": 0, "total_tokens": 0},
        });
        Forwarded { response, reply }
    }
}

/// Checks a row has what the script provider plays.
pub fn check_row(vars: &Map<String, Value>) -> Result<(), String> {
    Script::from_row(vars).map(drop)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(v: Value) -> Map<String, Value> {
        v.as_object().expect("a JSON object").clone()
    }

    #[test]
    fn plays_commands_then_finish() {
        let script = Script::from_row(&row(json!({"commands": ["ls", "pwd"], "answer": "ok"})))
            .expect("a valid row");
        let mut msgs = vec![json!({"role": "user", "content": "go"})];
        let mut names = Vec::new();
        for _ in 0..3 {
            let r = script.reply(&msgs);
            names.push(
                r.message["tool_calls"][0]["function"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
            msgs.push(r.message);
        }
        assert_eq!(names, ["bash", "bash", "finish"]);
        assert_eq!(
            msgs[3]["tool_calls"][0]["function"]["arguments"],
            r#"{"message":"ok"}"#
        );
    }

    #[test]
    fn a_forwarded_request_gets_the_next_turn_as_an_endpoint_reply() {
        let script = Script::from_row(&row(json!({"commands": ["ls"], "answer": "ok"})))
            .expect("a valid row");
        let first = script.forward(&row(
            json!({"messages": [{"role": "user", "content": "go"}]}),
        ));
        assert_eq!(first.response["choices"][0]["message"], first.reply.message);
        assert_eq!(
            first.response["choices"][0]["message"]["tool_calls"][0]["function"]["name"],
            "bash"
        );
        assert_eq!(first.response["choices"][0]["finish_reason"], "tool_calls");
        let later = script.forward(&row(json!({"messages": [
            {"role": "user", "content": "go"}, first.reply.message,
            {"role": "tool", "tool_call_id": "call_0", "content": "a"},
        ]})));
        assert_eq!(
            later.reply.message["tool_calls"][0]["function"]["name"],
            "finish"
        );
        // A request without messages is the first turn, not a panic.
        assert_eq!(
            script.forward(&Map::new()).reply.message,
            first.reply.message
        );
    }

    #[test]
    fn rows_without_a_playable_policy_say_which_field() {
        assert!(check_row(&row(json!({"answer": "only an answer"}))).is_ok());
        let err = check_row(&row(json!({"commands": [1], "answer": "a"}))).unwrap_err();
        assert!(err.contains("`commands` to be a list of strings"), "{err}");
        let err = check_row(&row(json!({"commands": "ls", "answer": "a"}))).unwrap_err();
        assert!(err.contains("`commands`"), "{err}");
        let err = check_row(&row(json!({"commands": ["ls"]}))).unwrap_err();
        assert!(err.contains("`answer` (a string)"), "{err}");
    }
}
