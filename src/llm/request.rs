//! The request body convoy sends, built from the conversation without
//! copying it: the model, the messages in their canonical form, the tools,
//! and the sampling options of the manifest.
//!
//! Canonical assistant messages: servers are strict about what comes back
//! (llama.cpp answers HTTP 500 to `content: null`, OpenAI rejects an empty
//! `tool_calls`, DeepSeek-style endpoints reject `reasoning_content`). So an
//! assistant message is sent back as `role`, `content` (a string, `""`
//! where the reply had `null`), `tool_calls` (`id`, `type`,
//! `function.name`, `function.arguments` as a string), and
//! `reasoning_content` only with `llm.send_reasoning_content`. Everything
//! else a server returned (`function_call`, `refusal`, provider extras)
//! stays in the trajectory, which keeps each reply exactly as received.
//! Other messages are convoy's own and already canonical.

use serde::ser::{SerializeMap, SerializeSeq};
use serde::{Serialize, Serializer};
use serde_json::{json, Map, Value};

use crate::manifest::LlmSpec;

/// `llm.tool_choice` value that sends no `tool_choice` field.
pub const TOOL_CHOICE_OMIT: &str = "omit";

/// The request body, serialized straight from the conversation's messages.
#[derive(Serialize)]
pub(super) struct Body<'a> {
    pub model: &'a str,
    pub messages: Outgoing<'a>,
    pub tools: &'a Value,
    #[serde(flatten)]
    pub options: &'a Map<String, Value>,
}

/// Sampling, token-record and extra fields of the manifest, merged into
/// every request; `extra_body` last, so its keys win. `tool_choice` defaults to `"auto"`: some servers (llama-cpp-python)
/// ignore the tools without it, and for the others it is the default.
pub(super) fn options(spec: &LlmSpec) -> Map<String, Value> {
    let mut options = sampling(spec);
    let mut set = |k: &str, v: Option<Value>| {
        if let Some(v) = v {
            options.insert(k.to_string(), v);
        }
    };
    set(
        "tool_choice",
        match &spec.tool_choice {
            None => Some(json!("auto")),
            Some(Value::String(s)) if s == TOOL_CHOICE_OMIT => None,
            Some(v) => Some(v.clone()),
        },
    );
    set(
        "parallel_tool_calls",
        spec.parallel_tool_calls.map(|v| json!(v)),
    );
    options.extend(super::tokens::options(spec));
    for (k, v) in &spec.extra_body {
        options.insert(k.clone(), v.clone());
    }
    options
}

/// The sampling options the manifest sets: `temperature`, `top_p`,
/// `max_tokens`, `seed`.
pub(super) fn sampling(spec: &LlmSpec) -> Map<String, Value> {
    [
        ("temperature", spec.temperature.map(|v| json!(v))),
        ("top_p", spec.top_p.map(|v| json!(v))),
        ("max_tokens", spec.max_tokens.map(|v| json!(v))),
        ("seed", spec.seed.map(|v| json!(v))),
    ]
    .into_iter()
    .filter_map(|(k, v)| Some((k.to_string(), v?)))
    .collect()
}

/// The messages as sent: assistant messages canonical, the rest as built.
pub(super) struct Outgoing<'a> {
    pub messages: &'a [Value],
    pub send_reasoning: bool,
}

impl Serialize for Outgoing<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.messages.len()))?;
        for m in self.messages {
            match m.as_object() {
                Some(o) if o.get("role").and_then(Value::as_str) == Some("assistant") => seq
                    .serialize_element(&Assistant {
                        message: o,
                        send_reasoning: self.send_reasoning,
                    })?,
                _ => seq.serialize_element(m)?,
            }
        }
        seq.end()
    }
}

struct Assistant<'a> {
    message: &'a Map<String, Value>,
    send_reasoning: bool,
}

impl Serialize for Assistant<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let m = self.message;
        let mut map = s.serialize_map(None)?;
        map.serialize_entry("role", "assistant")?;
        map.serialize_entry("content", &content_text(m.get("content")))?;
        let calls = m
            .get("tool_calls")
            .and_then(Value::as_array)
            .filter(|c| !c.is_empty());
        if let Some(calls) = calls {
            map.serialize_entry("tool_calls", &Calls(calls))?;
        }
        if self.send_reasoning {
            if let Some(r) = m.get("reasoning_content").filter(|r| !r.is_null()) {
                map.serialize_entry("reasoning_content", r)?;
            }
        }
        map.end()
    }
}

/// A reply's `content` as a string: `null` is `""`, a list of content
/// parts is their text joined.
fn content_text(v: Option<&Value>) -> std::borrow::Cow<'_, str> {
    match v {
        Some(Value::String(s)) => s.as_str().into(),
        None | Some(Value::Null) => "".into(),
        Some(Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(Value::as_str).or_else(|| p.as_str()))
            .collect::<String>()
            .into(),
        Some(other) => other.to_string().into(),
    }
}

/// The id a tool call is answered under: its own, else `call_{index}`.
pub fn call_id(call: &Value, index: usize) -> String {
    call.get("id")
        .and_then(Value::as_str)
        .filter(|id| !id.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| format!("call_{index}"))
}

struct Calls<'a>(&'a [Value]);

impl Serialize for Calls<'_> {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut seq = s.serialize_seq(Some(self.0.len()))?;
        for (i, call) in self.0.iter().enumerate() {
            let name = call
                .pointer("/function/name")
                .and_then(Value::as_str)
                .unwrap_or_default();
            // The API's arguments are a JSON string; some servers send an
            // object, which goes back as its JSON text.
            let arguments = match call.pointer("/function/arguments") {
                Some(Value::String(a)) => a.clone(),
                None | Some(Value::Null) => "{}".to_string(),
                Some(other) => other.to_string(),
            };
            seq.serialize_element(&json!({
                "id": call_id(call, i),
                "type": "function",
                "function": { "name": name, "arguments": arguments },
            }))?;
        }
        seq.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(messages: &[Value], send_reasoning: bool) -> Value {
        let options = Map::new();
        let body = Body {
            model: "m",
            messages: Outgoing {
                messages,
                send_reasoning,
            },
            tools: &json!([]),
            options: &options,
        };
        serde_json::to_value(&body).unwrap()
    }

    #[test]
    fn assistant_messages_go_back_canonical() {
        let reply = json!({
            "role": "assistant", "content": null, "refusal": null,
            "function_call": null, "reasoning_content": "think",
            "provider_extra": {"x": 1},
            "tool_calls": [
                {"id": "a", "type": "function", "index": 0,
                 "function": {"name": "bash", "arguments": "{\"command\":\"ls\"}"}},
                {"function": {"name": "finish", "arguments": {"message": "m"}}}
            ]
        });
        let messages = vec![json!({"role": "user", "content": "hi"}), reply.clone()];
        let body = sent(&messages, false);
        assert_eq!(
            body["messages"][1],
            json!({"role": "assistant", "content": "", "tool_calls": [
                {"id": "a", "type": "function",
                 "function": {"name": "bash", "arguments": "{\"command\":\"ls\"}"}},
                {"id": "call_1", "type": "function",
                 "function": {"name": "finish", "arguments": "{\"message\":\"m\"}"}}
            ]})
        );
        assert_eq!(body["messages"][0], messages[0]);
        // The trajectory's copy is untouched.
        assert_eq!(messages[1], reply);
        let with = sent(&messages, true);
        assert_eq!(with["messages"][1]["reasoning_content"], "think");
    }

    #[test]
    fn empty_tool_calls_are_not_sent_and_text_stays() {
        let messages = vec![json!({"role": "assistant", "content": "done", "tool_calls": []})];
        assert_eq!(
            sent(&messages, false)["messages"][0],
            json!({"role": "assistant", "content": "done"})
        );
    }

    fn spec(extra: &str) -> LlmSpec {
        toml::from_str(&format!("base_url = \"http://x\"\n{extra}")).unwrap()
    }

    #[test]
    fn tool_choice_is_auto_unless_set_or_omitted() {
        assert_eq!(options(&spec(""))["tool_choice"], "auto");
        assert_eq!(
            options(&spec("tool_choice = \"required\""))["tool_choice"],
            "required"
        );
        assert!(!options(&spec("tool_choice = \"omit\"")).contains_key("tool_choice"));
    }

    #[test]
    fn token_options_are_sent_and_extra_body_wins() {
        assert!(!options(&spec("")).contains_key("logprobs"));
        let o = options(&spec(
            "logprobs = true\ntop_logprobs = 2\nreturn_token_ids = true\nextra_body = { top_logprobs = 5 }",
        ));
        assert_eq!(
            (&o["logprobs"], &o["top_logprobs"], &o["return_token_ids"]),
            (&json!(true), &json!(5), &json!(true))
        );
    }
}
