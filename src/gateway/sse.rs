//! A whole chat completion told as server-sent events, for an agent that
//! asked for `stream: true`. convoy asks the endpoint for the whole reply
//! (retries and the recorded reply stay simple) and streams it to the
//! agent afterwards: one chunk with the message, one with the finish
//! reason, one with the usage when the agent asked for it
//! (`stream_options.include_usage`), then `[DONE]`.

use serde_json::{json, Map, Value};

/// The events for `response` (a `chat.completion` object).
pub fn events(response: &Value, include_usage: bool) -> String {
    let head = |choices: Value| {
        let mut chunk = Map::new();
        for k in ["id", "created", "model", "system_fingerprint"] {
            if let Some(v) = response.get(k) {
                chunk.insert(k.into(), v.clone());
            }
        }
        chunk.insert("object".into(), json!("chat.completion.chunk"));
        chunk.insert("choices".into(), choices);
        Value::Object(chunk)
    };
    let choices = response["choices"].as_array().cloned().unwrap_or_default();
    let mut out = String::new();
    let mut send = |v: Value| {
        out.push_str("data: ");
        out.push_str(&v.to_string());
        out.push_str("\n\n");
    };
    let deltas: Vec<Value> = choices
        .iter()
        .map(|c| json!({"index": c["index"], "delta": delta(&c["message"]), "finish_reason": null}))
        .collect();
    send(head(Value::Array(deltas)));
    let ends: Vec<Value> = choices
        .iter()
        .map(|c| json!({"index": c["index"], "delta": {}, "finish_reason": c["finish_reason"]}))
        .collect();
    send(head(Value::Array(ends)));
    if include_usage {
        if let Some(usage) = response.get("usage") {
            let mut last = head(json!([]));
            last["usage"] = usage.clone();
            send(last);
        }
    }
    out.push_str("data: [DONE]\n\n");
    out
}

/// A message as one delta: its role, content and reasoning as they are,
/// its tool calls with their index.
fn delta(message: &Value) -> Value {
    let mut d = Map::new();
    d.insert("role".into(), json!("assistant"));
    for k in ["content", "reasoning_content", "refusal"] {
        if let Some(v) = message.get(k).filter(|v| !v.is_null()) {
            d.insert(k.into(), v.clone());
        }
    }
    if let Some(calls) = message["tool_calls"].as_array() {
        let calls: Vec<Value> = calls
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let mut c = c.clone();
                c["index"] = json!(i);
                c
            })
            .collect();
        d.insert("tool_calls".into(), Value::Array(calls));
    }
    Value::Object(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn chunks(text: &str) -> Vec<Value> {
        assert!(text.ends_with("data: [DONE]\n\n"), "{text}");
        text.split("\n\n")
            .filter_map(|e| e.strip_prefix("data: "))
            .filter(|d| *d != "[DONE]")
            .map(|d| serde_json::from_str(d).unwrap())
            .collect()
    }

    #[test]
    fn a_reply_with_tool_calls_streams_as_one_delta_then_its_finish() {
        let response = json!({"id": "x", "object": "chat.completion", "created": 1, "model": "m",
            "choices": [{"index": 0, "finish_reason": "tool_calls", "message": {"role": "assistant",
                "content": null, "tool_calls": [{"id": "c1", "type": "function",
                "function": {"name": "ls", "arguments": "{}"}}]}}],
            "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}});
        let c = chunks(&events(&response, false));
        assert_eq!(c.len(), 2);
        assert_eq!(c[0]["object"], "chat.completion.chunk");
        assert_eq!(c[0]["id"], "x");
        let delta = &c[0]["choices"][0]["delta"];
        assert_eq!(delta["tool_calls"][0]["index"], 0);
        assert_eq!(delta["tool_calls"][0]["function"]["name"], "ls");
        assert!(delta.get("content").is_none(), "null content is left out");
        assert_eq!(c[1]["choices"][0]["finish_reason"], "tool_calls");
        let with_usage = chunks(&events(&response, true));
        assert_eq!(with_usage[2]["usage"]["total_tokens"], 5);
        assert_eq!(with_usage[2]["choices"], json!([]));
    }
}
