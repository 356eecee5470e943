//! The `script` provider: a fixed policy read from each task row, with no
//! network. A row carries `commands` (a list of shell commands) and `answer`
//! (the final text); the provider asks for each command in turn through the
//! `bash` tool, then calls `finish` with the answer. Smoke jobs and CI use
//! it to exercise everything but the model.

use serde_json::{json, Map, Value};

use super::types::{ChatReply, Usage};

/// Checks a row has what the script provider plays.
pub fn check_row(vars: &Map<String, Value>) -> Result<(), String> {
    let commands_ok = match vars.get("commands") {
        None => true,
        Some(Value::Array(items)) => items.iter().all(Value::is_string),
        Some(_) => false,
    };
    if !commands_ok {
        return Err("the script provider needs `commands` to be a list of strings".into());
    }
    match vars.get("answer") {
        Some(Value::String(_)) => Ok(()),
        _ => Err("the script provider needs `answer` (a string) in every row".into()),
    }
}

/// The reply to `messages`: the next command, or `finish` once all ran.
pub fn reply(vars: &Map<String, Value>, messages: &[Value]) -> ChatReply {
    let step = messages
        .iter()
        .filter(|m| m.get("role").and_then(Value::as_str) == Some("assistant"))
        .count();
    let commands = vars
        .get("commands")
        .and_then(Value::as_array)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let (name, args) = match commands.get(step) {
        Some(cmd) => ("bash", json!({ "command": cmd })),
        None => {
            let answer = vars
                .get("answer")
                .and_then(Value::as_str)
                .unwrap_or_default();
            ("finish", json!({ "message": answer }))
        }
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
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plays_commands_then_finish() {
        let vars = json!({"commands": ["ls", "pwd"], "answer": "ok"});
        let vars = vars.as_object().unwrap();
        let mut msgs = vec![json!({"role": "user", "content": "go"})];
        let mut names = Vec::new();
        for _ in 0..3 {
            let r = reply(vars, &msgs);
            names.push(
                r.message["tool_calls"][0]["function"]["name"]
                    .as_str()
                    .unwrap()
                    .to_string(),
            );
            msgs.push(r.message);
        }
        assert_eq!(names, ["bash", "bash", "finish"]);
        assert!(check_row(vars).is_ok());
        assert!(check_row(json!({"commands": [1]}).as_object().unwrap()).is_err());
    }
}
