//! LLaMA-Factory's sharegpt dataset format, from normalised OpenAI messages:
//! `{"conversations": [{"from", "value"}...], "system": "...", "tools": "..."}`
//! with `columns: {messages: conversations, system: system, tools: tools}`
//! in its `dataset_info.json` (see LLaMA-Factory's `data/README.md`).
//!
//! The mapping, and why:
//! - the first `system` message becomes the `system` field (`""` if none);
//! - `user` -> `human`; an assistant reply without tool calls -> `gpt`;
//! - an assistant reply with tool calls -> one `function_call` turn whose
//!   value is the JSON list `[{"name", "arguments"}]` (arguments as
//!   objects unless `--arguments string`: LLaMA-Factory `json.dumps` them,
//!   so a string would come out double-encoded in older versions);
//! - text the model wrote beside its tool calls stays in that turn, before
//!   the calls wrapped in `<tool_call>...</tool_call>`: LLaMA-Factory's
//!   function formatter keeps what is outside that block as the text of the
//!   turn. It cannot be a `gpt` turn of its own, because LLaMA-Factory
//!   requires human/observation and gpt/function_call turns to alternate
//!   and skips a row where they do not;
//! - the tool results of one reply -> one `observation` turn (several
//!   results joined by `\n</tool_response>\n<tool_response>\n`, as
//!   LLaMA-Factory's own OpenAI-format converter joins them), with `name`,
//!   the tool's name (several: comma-separated);
//! - `tools`: the function definitions (`[{"name", "description",
//!   "parameters"}]`) as a JSON string, the shape LLaMA-Factory parses.
//!
//! A conversation whose turns do not alternate that way (it ends on a tool
//! result, e.g. a task stopped at its step limit) would be skipped by
//! LLaMA-Factory with a warning; here it is skipped and counted, so the
//! stats line says what the data set lacks.

use serde_json::{json, Map, Value};

/// The sharegpt line of normalised `messages` and `tools`; `Ok(None)` when
/// its turns do not alternate as LLaMA-Factory requires.
pub(super) fn line(messages: Vec<Value>, tools: &Value) -> Result<Option<Value>, String> {
    let mut system = String::new();
    let mut turns: Vec<Value> = Vec::new();
    let mut results: Vec<(String, String)> = Vec::new();
    for (i, m) in messages.into_iter().enumerate() {
        let role = m.get("role").and_then(Value::as_str).unwrap_or("");
        let content = text(&m);
        if role != "tool" {
            flush(&mut results, &mut turns);
        }
        match role {
            "system" if i == 0 => system = content,
            "user" => turns.push(json!({"from": "human", "value": content})),
            "assistant" => turns.push(assistant_turn(&m, content)?),
            "tool" => {
                let name = m.get("name").and_then(Value::as_str).unwrap_or("");
                results.push((name.to_string(), content));
            }
            other => return Err(format!("message {i}: no sharegpt turn for role `{other}`")),
        }
    }
    flush(&mut results, &mut turns);
    if !alternates(&turns) {
        return Ok(None);
    }
    let mut line = Map::new();
    line.insert("conversations".to_string(), Value::Array(turns));
    line.insert("system".to_string(), Value::String(system));
    line.insert("tools".to_string(), Value::String(functions(tools)));
    Ok(Some(Value::Object(line)))
}

fn text(m: &Value) -> String {
    m.get("content")
        .and_then(Value::as_str)
        .unwrap_or_default()
        .to_string()
}

fn assistant_turn(m: &Value, content: String) -> Result<Value, String> {
    let calls = match m.get("tool_calls").and_then(Value::as_array) {
        Some(calls) if !calls.is_empty() => calls,
        _ => return Ok(json!({"from": "gpt", "value": content})),
    };
    let calls: Vec<Value> = calls
        .iter()
        .map(|c| json!({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}))
        .collect();
    let calls = Value::Array(calls).to_string();
    let value = if content.trim().is_empty() {
        calls
    } else {
        format!("{content}\n<tool_call>{calls}</tool_call>")
    };
    Ok(json!({"from": "function_call", "value": value}))
}

/// Appends the pending tool results as one observation turn.
fn flush(results: &mut Vec<(String, String)>, turns: &mut Vec<Value>) {
    if results.is_empty() {
        return;
    }
    let (names, values): (Vec<String>, Vec<String>) = results.drain(..).unzip();
    turns.push(json!({
        "from": "observation",
        "value": values.join("\n</tool_response>\n<tool_response>\n"),
        "name": names.join(","),
    }));
}

/// LLaMA-Factory's rule: human or observation at even positions, gpt or
/// function_call at odd ones, and an even count (the row ends on a reply).
fn alternates(turns: &[Value]) -> bool {
    let at = |t: &Value| t["from"].as_str().unwrap_or("").to_string();
    turns.len().is_multiple_of(2)
        && turns.iter().enumerate().all(|(i, t)| {
            let from = at(t);
            if i.is_multiple_of(2) {
                from == "human" || from == "observation"
            } else {
                from == "gpt" || from == "function_call"
            }
        })
}

/// The function definitions of OpenAI `tools`, as a JSON string.
fn functions(tools: &Value) -> String {
    let list: Vec<&Value> = tools
        .as_array()
        .map(|t| {
            t.iter()
                .map(|tool| tool.get("function").unwrap_or(tool))
                .collect()
        })
        .unwrap_or_default();
    serde_json::to_string(&list).expect("json values serialize")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn call(id: &str, name: &str, args: Value) -> Value {
        json!({"id": id, "type": "function", "function": {"name": name, "arguments": args}})
    }

    fn tools() -> Value {
        json!([{"type": "function", "function": {"name": "bash", "description": "run",
                 "parameters": {"type": "object"}}}])
    }

    #[test]
    fn maps_roles_calls_text_and_results() {
        let messages = vec![
            json!({"role": "system", "content": "sys"}),
            json!({"role": "user", "content": "go"}),
            json!({"role": "assistant", "content": "Let me look.",
                   "tool_calls": [call("a", "bash", json!({"command": "ls"})),
                                  call("b", "bash", json!({"command": "pwd"}))]}),
            json!({"role": "tool", "tool_call_id": "a", "name": "bash", "content": "x"}),
            json!({"role": "tool", "tool_call_id": "b", "name": "bash", "content": "/w"}),
            json!({"role": "assistant", "content": "",
                   "tool_calls": [call("c", "finish", json!({"answer": "done"}))]}),
        ];
        let line = line(messages, &tools()).unwrap().unwrap();
        assert_eq!(line["system"], "sys");
        let turns = line["conversations"].as_array().unwrap();
        let from: Vec<&str> = turns.iter().map(|t| t["from"].as_str().unwrap()).collect();
        assert_eq!(
            from,
            ["human", "function_call", "observation", "function_call"]
        );
        assert_eq!(
            turns[1]["value"],
            "Let me look.\n<tool_call>[{\"name\":\"bash\",\"arguments\":{\"command\":\"ls\"}},\
             {\"name\":\"bash\",\"arguments\":{\"command\":\"pwd\"}}]</tool_call>"
        );
        assert_eq!(
            turns[2]["value"],
            "x\n</tool_response>\n<tool_response>\n/w"
        );
        assert_eq!(turns[2]["name"], "bash,bash");
        let finish: Value = serde_json::from_str(turns[3]["value"].as_str().unwrap()).unwrap();
        assert_eq!(
            finish,
            json!([{"name": "finish", "arguments": {"answer": "done"}}])
        );
        let tools: Value = serde_json::from_str(line["tools"].as_str().unwrap()).unwrap();
        assert_eq!(
            tools,
            json!([{"name": "bash", "description": "run",
                                  "parameters": {"type": "object"}}])
        );
    }

    #[test]
    fn a_plain_answer_is_a_gpt_turn_and_no_system_is_empty() {
        let messages = vec![
            json!({"role": "user", "content": "hi"}),
            json!({"role": "assistant", "content": "hello"}),
        ];
        let line = line(messages, &json!([])).unwrap().unwrap();
        assert_eq!(
            line["conversations"][1],
            json!({"from": "gpt", "value": "hello"})
        );
        assert_eq!(
            (&line["system"], &line["tools"]),
            (&json!(""), &json!("[]"))
        );
    }

    #[test]
    fn a_conversation_ending_on_a_tool_result_does_not_alternate() {
        let messages = vec![
            json!({"role": "user", "content": "go"}),
            json!({"role": "assistant", "content": "", "tool_calls": [call("a", "bash", json!({}))]}),
            json!({"role": "tool", "tool_call_id": "a", "name": "bash", "content": "x"}),
        ];
        assert_eq!(line(messages, &tools()).unwrap(), None);
        let two_users = vec![
            json!({"role": "user", "content": "a"}),
            json!({"role": "user", "content": "b"}),
        ];
        assert_eq!(line(two_users, &tools()).unwrap(), None);
    }

    #[test]
    fn a_late_system_message_is_an_error() {
        let messages = vec![
            json!({"role": "user", "content": "go"}),
            json!({"role": "system", "content": "late"}),
        ];
        assert_eq!(
            line(messages, &tools()).unwrap_err(),
            "message 1: no sharegpt turn for role `system`"
        );
    }
}
