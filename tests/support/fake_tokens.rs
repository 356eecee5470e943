//! The fake server's token data, as strict and as shaped as the real
//! ones: OpenAI answers 400 to `top_logprobs` without `logprobs: true` and
//! to more than 20; vLLM answers `return_token_ids` with `token_ids` on
//! the choice and `prompt_token_ids` on the response.
//!
//! The reply's "tokens" are its text (the content, else its tool calls as
//! `name(arguments)`) cut after each space; a token's id is the sum of its
//! bytes and its logprob `-0.1 x (its place + 1)`, so tests can predict
//! both. The prompt's tokens are the words of every message's content.

use serde_json::{json, Value};

/// What a server refuses of the token options, as (status, message).
pub fn check(body: &Value) -> Result<(), (u16, String)> {
    let Some(top) = body.get("top_logprobs").filter(|v| !v.is_null()) else {
        return Ok(());
    };
    if body.get("logprobs") != Some(&Value::Bool(true)) {
        return Err((
            400,
            "top_logprobs: logprobs must be set to true if top_logprobs is used".into(),
        ));
    }
    match top.as_u64() {
        Some(n) if n <= 20 => Ok(()),
        _ => Err((
            400,
            format!("top_logprobs: must be an integer from 0 to 20, got {top}"),
        )),
    }
}

/// Adds to `reply` (a whole `chat.completion`) the token data `body`
/// asks for.
pub fn add(body: &Value, reply: &mut Value) {
    let message = &reply["choices"][0]["message"];
    let text = match message["content"].as_str().filter(|t| !t.is_empty()) {
        Some(t) => t.to_string(),
        None => message["tool_calls"]
            .as_array()
            .into_iter()
            .flatten()
            .map(|c| {
                let f = &c["function"];
                format!(
                    "{}({})",
                    f["name"].as_str().unwrap_or(""),
                    f["arguments"].as_str().unwrap_or("")
                )
            })
            .collect(),
    };
    let tokens: Vec<&str> = text.split_inclusive(' ').collect();
    if body["logprobs"] == true {
        let top = body["top_logprobs"].as_u64().unwrap_or(0) as usize;
        let content: Vec<Value> = tokens
            .iter()
            .enumerate()
            .map(|(i, t)| {
                let logprob = -0.1 * (i + 1) as f64;
                let alternatives: Vec<Value> = (0..top)
                    .map(|k| {
                        let alt = format!("{t}~{k}");
                        json!({"token": alt, "logprob": logprob - 1.0 - k as f64, "bytes": alt.as_bytes()})
                    })
                    .collect();
                json!({"token": t, "logprob": logprob, "bytes": t.as_bytes(), "top_logprobs": alternatives})
            })
            .collect();
        reply["choices"][0]["logprobs"] = json!({ "content": content });
    }
    if body["return_token_ids"] == true {
        reply["choices"][0]["token_ids"] = tokens.iter().map(|t| id(t)).collect();
        let prompt: Value = body["messages"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|m| m["content"].as_str())
            .flat_map(str::split_whitespace)
            .map(id)
            .collect();
        reply["prompt_token_ids"] = prompt;
    }
}

/// A token's fake id: the sum of its bytes.
pub fn id(token: &str) -> Value {
    json!(token.bytes().map(u64::from).sum::<u64>())
}
