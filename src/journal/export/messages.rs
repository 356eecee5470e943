//! A trajectory's messages as chat templates want them.
//!
//! - Only the keys templates use are kept (`role`, `content`, `tool_calls`,
//!   `tool_call_id`, `name`; `reasoning_content` on request): provider
//!   extras such as `refusal` or `annotations` would otherwise turn into
//!   columns, or template errors, in the trainer.
//! - `content` is always a string (`""` where the endpoint sent `null`):
//!   templates concatenate it, and `"\n" + None` is an error in Jinja.
//! - A tool message carries `name`, the name of the tool it answers, taken
//!   from the assistant call with its `tool_call_id` (templates such as
//!   Llama 3.1's and Mistral's render it; the trajectory only has the id).
//! - `function.arguments` is the JSON string OpenAI sends, or with
//!   `ArgumentsAs::Object` the object it encodes, which is what Hugging
//!   Face templates render with `tojson` (a string there comes out
//!   double-encoded: `"{\"command\": ...}"`). Arguments that are not a JSON
//!   object (the model wrote broken JSON) stay the string it wrote and are
//!   counted, since inventing an object would put words in its mouth.

use std::collections::HashMap;

use serde_json::{Map, Value};

/// How `function.arguments` of a tool call is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ArgumentsAs {
    /// The JSON string, as OpenAI sends it.
    #[default]
    String,
    /// The JSON object (what Hugging Face chat templates render).
    Object,
}

/// The message keys chat templates use, in the order they are written.
const MESSAGE_KEYS: [&str; 6] = [
    "role",
    "content",
    "reasoning_content",
    "tool_calls",
    "tool_call_id",
    "name",
];

/// Counts kept while normalising, for the export's stats line.
#[derive(Debug, Default)]
pub(super) struct Counts {
    /// Tool calls whose arguments are not a JSON object, kept as strings.
    pub arguments_kept_as_string: usize,
    /// Tool messages whose `tool_call_id` names no earlier call: written
    /// without `name`.
    pub results_without_call: usize,
}

/// Normalises `messages` in place (see the module docs); `Err` names the
/// message that is not a chat message.
pub(super) fn normalise(
    messages: &mut [Value],
    keep_reasoning: bool,
    arguments: ArgumentsAs,
    counts: &mut Counts,
) -> Result<(), String> {
    let mut names: HashMap<String, String> = HashMap::new();
    for (i, message) in messages.iter_mut().enumerate() {
        let Value::Object(m) = message else {
            return Err(format!("message {i} is not an object"));
        };
        let mut out = Map::new();
        for key in MESSAGE_KEYS {
            if key == "reasoning_content" && !keep_reasoning {
                continue;
            }
            if let Some(v) = m.remove(key) {
                out.insert(key.to_string(), v);
            }
        }
        match out.get("content") {
            None | Some(Value::Null) => {
                out.insert("content".to_string(), Value::String(String::new()));
            }
            Some(_) => {}
        }
        if let Some(Value::Array(calls)) = out.get_mut("tool_calls") {
            for (k, call) in calls.iter_mut().enumerate() {
                let id = call.get("id").and_then(Value::as_str).map(str::to_string);
                let Some(function) = call.get_mut("function").and_then(Value::as_object_mut) else {
                    return Err(format!(
                        "message {i}: tool call {k} has no `function` object"
                    ));
                };
                let name = function.get("name").and_then(Value::as_str).unwrap_or("");
                if let Some(id) = id {
                    names.insert(id, name.to_string());
                }
                if let Some(args) = function.get_mut("arguments") {
                    if !convert_arguments(args, arguments) {
                        counts.arguments_kept_as_string += 1;
                    }
                }
            }
        }
        if out.get("role").and_then(Value::as_str) == Some("tool") {
            let id = out.get("tool_call_id").and_then(Value::as_str);
            match id.and_then(|id| names.get(id)) {
                Some(name) => {
                    out.insert("name".to_string(), Value::String(name.clone()));
                }
                None if out.contains_key("name") => {}
                None => counts.results_without_call += 1,
            }
        }
        *m = out;
    }
    Ok(())
}

/// Writes `args` as `mode` asks; false if an object was asked for but the
/// arguments are not one (they stay as they were).
fn convert_arguments(args: &mut Value, mode: ArgumentsAs) -> bool {
    match (mode, &*args) {
        (ArgumentsAs::String, Value::String(_)) => true,
        (ArgumentsAs::String, other) => {
            *args = Value::String(other.to_string());
            true
        }
        (ArgumentsAs::Object, Value::Object(_)) => true,
        (ArgumentsAs::Object, Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(object @ Value::Object(_)) => {
                *args = object;
                true
            }
            _ => false,
        },
        (ArgumentsAs::Object, _) => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn conversation() -> Vec<Value> {
        vec![
            json!({"role": "system", "content": "be brief"}),
            json!({"role": "user", "content": "list"}),
            json!({"role": "assistant", "content": null, "refusal": null, "reasoning_content": "hm",
                   "tool_calls": [
                       {"id": "c1", "type": "function",
                        "function": {"name": "bash", "arguments": "{\"command\": \"ls -a\"}"}},
                       {"id": "c2", "type": "function",
                        "function": {"name": "bash", "arguments": "{\"command\": "}}]}),
            json!({"role": "tool", "tool_call_id": "c1", "content": "a b"}),
            json!({"role": "tool", "tool_call_id": "c2", "content": "error: bad json"}),
            json!({"role": "tool", "tool_call_id": "nope", "content": "?"}),
        ]
    }

    #[test]
    fn keeps_template_keys_in_order_and_names_tool_results() {
        let mut m = conversation();
        let mut counts = Counts::default();
        normalise(&mut m, false, ArgumentsAs::String, &mut counts).unwrap();
        let keys: Vec<&String> = m[2].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["role", "content", "tool_calls"]);
        assert_eq!(m[2]["content"], "");
        assert_eq!(
            m[2]["tool_calls"][0]["function"]["arguments"],
            "{\"command\": \"ls -a\"}"
        );
        let keys: Vec<&String> = m[3].as_object().unwrap().keys().collect();
        assert_eq!(keys, ["role", "content", "tool_call_id", "name"]);
        assert_eq!(
            (&m[3]["name"], &m[4]["name"]),
            (&json!("bash"), &json!("bash"))
        );
        assert!(m[5].get("name").is_none());
        assert_eq!(counts.results_without_call, 1);
        assert_eq!(counts.arguments_kept_as_string, 0);
    }

    #[test]
    fn arguments_as_objects_keep_broken_ones_as_strings() {
        let mut m = conversation();
        let mut counts = Counts::default();
        normalise(&mut m, true, ArgumentsAs::Object, &mut counts).unwrap();
        let calls = &m[2]["tool_calls"];
        assert_eq!(
            calls[0]["function"]["arguments"],
            json!({"command": "ls -a"})
        );
        assert_eq!(calls[1]["function"]["arguments"], "{\"command\": ");
        assert_eq!(counts.arguments_kept_as_string, 1);
        assert_eq!(m[2]["reasoning_content"], "hm");
    }

    #[test]
    fn object_arguments_become_strings_when_strings_are_asked_for() {
        let mut args = json!({"command": "ls"});
        assert!(convert_arguments(&mut args, ArgumentsAs::String));
        assert_eq!(args, json!("{\"command\":\"ls\"}"));
        let mut args = json!("[1, 2]");
        assert!(
            !convert_arguments(&mut args, ArgumentsAs::Object),
            "not an object"
        );
        assert_eq!(args, json!("[1, 2]"));
    }

    #[test]
    fn a_call_without_function_is_an_error() {
        let mut m = vec![json!({"role": "assistant", "tool_calls": [{"id": "x"}]})];
        let err = normalise(&mut m, false, ArgumentsAs::String, &mut Counts::default());
        assert_eq!(
            err.unwrap_err(),
            "message 0: tool call 0 has no `function` object"
        );
    }
}
