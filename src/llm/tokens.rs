//! The token-level record (issue 15): what convoy asks the endpoint for
//! when `llm.logprobs` or `llm.return_token_ids` is set, and what it keeps
//! of each reply beside the message, for trainers that must not
//! re-tokenize.
//!
//! Asked for: `logprobs: true` (with `top_logprobs: N` when set) and
//! `return_token_ids: true`, vLLM's chat-completions option (0.10.2 and
//! later), which puts `token_ids` on the choice and `prompt_token_ids` on
//! the response. `llm.extra_body` is merged after these and wins, as it
//! does everywhere: it is also how a server's own spelling is sent (SGLang's
//! `return_prompt_token_ids`).
//!
//! Kept, when the request asks for any of it: of the first choice its
//! `logprobs`, `token_ids`, `prompt_token_ids` (SGLang puts them there),
//! `finish_reason`, `stop_reason` (vLLM) and `matched_stop` (SGLang's
//! name for it), and of the response its `prompt_token_ids` (vLLM), each
//! only when the endpoint sent it with a value. Without these options
//! nothing is asked and nothing kept: the record stays empty.

use serde_json::{json, Map, Value};

use crate::manifest::LlmSpec;

/// The request fields the manifest's token options add.
pub(super) fn options(spec: &LlmSpec) -> Map<String, Value> {
    let mut options = Map::new();
    if spec.logprobs {
        options.insert("logprobs".into(), json!(true));
        if let Some(n) = spec.top_logprobs {
            options.insert("top_logprobs".into(), json!(n));
        }
    }
    if spec.return_token_ids {
        options.insert("return_token_ids".into(), json!(true));
    }
    options
}

/// Whether a request with these fields asks for token data (so its reply's
/// are kept): after `extra_body`, which may ask (SGLang's
/// `return_prompt_token_ids`) or take back (`logprobs = false`).
pub(super) fn asked(options: &Map<String, Value>) -> bool {
    ["logprobs", "return_token_ids", "return_prompt_token_ids"]
        .iter()
        .any(|k| options.get(*k) == Some(&Value::Bool(true)))
}

/// The choice's keys kept, then the response's.
const CHOICE_KEYS: [&str; 6] = [
    "logprobs",
    "token_ids",
    "prompt_token_ids",
    "finish_reason",
    "stop_reason",
    "matched_stop",
];
const RESPONSE_KEYS: [&str; 1] = ["prompt_token_ids"];

/// Adds to `record` what the endpoint's `response` holds of the token
/// data (see the module docs).
pub(super) fn keep(response: &Value, record: &mut Map<String, Value>) {
    let choice = response.pointer("/choices/0");
    let found = CHOICE_KEYS
        .iter()
        .filter_map(|k| Some((*k, choice?.get(*k)?)))
        .chain(
            RESPONSE_KEYS
                .iter()
                .filter_map(|k| Some((*k, response.get(*k)?))),
        );
    for (key, value) in found.filter(|(_, v)| !v.is_null()) {
        record.insert(key.to_string(), value.clone());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(extra: &str) -> LlmSpec {
        toml::from_str(&format!("base_url = \"http://x\"\n{extra}")).unwrap()
    }

    #[test]
    fn options_ask_only_for_what_the_manifest_sets() {
        assert!(options(&spec("")).is_empty());
        assert!(!asked(&options(&spec(""))));
        let all = options(&spec(
            "logprobs = true\ntop_logprobs = 3\nreturn_token_ids = true",
        ));
        assert_eq!(
            Value::Object(all.clone()),
            json!({"logprobs": true, "top_logprobs": 3, "return_token_ids": true})
        );
        assert!(asked(&all));
        assert!(asked(&options(&spec("return_token_ids = true"))));
        let mut taken_back = all;
        taken_back.insert("logprobs".into(), json!(false));
        taken_back.insert("return_token_ids".into(), json!(false));
        assert!(!asked(&taken_back));
    }

    #[test]
    fn keeps_what_the_endpoint_sent_and_nothing_null() {
        let vllm = json!({
            "choices": [{"index": 0, "message": {"role": "assistant", "content": "hi"},
                         "logprobs": {"content": [{"token": "hi", "logprob": -0.1}]},
                         "finish_reason": "stop", "stop_reason": null, "token_ids": [7, 8]}],
            "prompt_token_ids": [1, 2, 3],
            "usage": {"prompt_tokens": 3},
        });
        let mut record = Map::new();
        keep(&vllm, &mut record);
        assert_eq!(
            Value::Object(record),
            json!({"logprobs": {"content": [{"token": "hi", "logprob": -0.1}]},
                   "token_ids": [7, 8], "finish_reason": "stop", "prompt_token_ids": [1, 2, 3]})
        );
        let sglang = json!({"choices": [{"message": {}, "finish_reason": "stop",
            "matched_stop": 151645, "prompt_token_ids": [4], "token_ids": [5]}]});
        let mut record = Map::new();
        keep(&sglang, &mut record);
        assert_eq!(
            Value::Object(record),
            json!({"token_ids": [5], "prompt_token_ids": [4], "finish_reason": "stop",
                   "matched_stop": 151645})
        );
    }
}
