//! The body convoy sends upstream for a request an external agent wrote
//! itself (through the model gateway): the agent's request, changed only
//! where the job owner, who configures the endpoint, must have the last
//! word.
//!
//! - `model` is `llm.model`: the agent does not know which model serves it.
//! - `stream` and `stream_options` are removed: convoy answers a streaming
//!   client itself from the whole reply, and needs the whole reply (usage,
//!   the trajectory) anyway.
//! - `llm.extra_body` is merged in and its keys win: it is how the owner
//!   makes the endpoint work (a vLLM `chat_template_kwargs`, a provider's
//!   routing), which an agent written for any endpoint cannot know.
//! - The sampling options (`llm.temperature`, `top_p`, `max_tokens`,
//!   `seed`) fill in only what the request leaves out: they are the job's
//!   defaults, and an agent that sets its own means it.
//! - So do the token options (`llm.logprobs` with `top_logprobs`,
//!   `llm.return_token_ids`), so the trajectory's last reply carries its
//!   token data; `logprobs` and `top_logprobs` as a pair: an agent that
//!   set either keeps its choice (a `top_logprobs` beside its own
//!   `logprobs: false` would be a 400).
//! - `llm.tool_choice` and `llm.parallel_tool_calls` are not applied: they
//!   are about convoy's own tools, and the agent's tools are its own (a
//!   `tool_choice` without `tools` is a 400 at OpenAI).
//!
//! Everything else goes through as the agent sent it, the messages above
//! all: never made canonical (`request`), so the endpoint gets the values
//! the agent wrote, in its key order.

use serde_json::{Map, Value};

use crate::manifest::LlmSpec;

/// What the manifest does to an agent's request.
#[derive(Debug, Clone, Default)]
pub(super) struct ForwardRules {
    model: String,
    sampling: Map<String, Value>,
    tokens: Map<String, Value>,
    extra_body: Map<String, Value>,
}

impl ForwardRules {
    pub(super) fn new(spec: &LlmSpec) -> ForwardRules {
        ForwardRules {
            model: spec.model.clone().unwrap_or_default(),
            sampling: super::request::sampling(spec),
            tokens: super::tokens::options(spec),
            extra_body: spec
                .extra_body
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect(),
        }
    }

    /// The body sent upstream for `request`. Keys the agent wrote keep
    /// their place (`shift_remove`, and `insert` on a key already there).
    pub(super) fn body(&self, mut request: Map<String, Value>) -> Map<String, Value> {
        for (k, v) in &self.sampling {
            if !request.contains_key(k) {
                request.insert(k.clone(), v.clone());
            }
        }
        let own_logprobs = ["logprobs", "top_logprobs"]
            .iter()
            .any(|k| request.contains_key(*k));
        for (k, v) in &self.tokens {
            let paired = matches!(k.as_str(), "logprobs" | "top_logprobs");
            let agents = request.contains_key(k) || (paired && own_logprobs);
            if !agents {
                request.insert(k.clone(), v.clone());
            }
        }
        for (k, v) in &self.extra_body {
            request.insert(k.clone(), v.clone());
        }
        request.shift_remove("stream");
        request.shift_remove("stream_options");
        request.insert("model".into(), Value::String(self.model.clone()));
        request
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn rules(extra: &str) -> ForwardRules {
        let spec: LlmSpec = toml::from_str(&format!(
            "base_url = \"http://x\"\nmodel = \"real\"\n{extra}"
        ))
        .expect("a spec");
        ForwardRules::new(&spec)
    }

    fn map(v: Value) -> Map<String, Value> {
        v.as_object().expect("an object").clone()
    }

    #[test]
    fn the_manifest_sets_the_model_and_extra_body_and_streaming_is_dropped() {
        let r = rules(
            "temperature = 0.2\nmax_tokens = 100\nextra_body = { top_k = 5, user = \"owner\" }",
        );
        let agent = json!({
            "model": "gpt-whatever",
            "messages": [{"content": "hi", "role": "user"}],
            "stream": true,
            "stream_options": {"include_usage": true},
            "temperature": 0.9,
            "user": "agent",
            "tools": [{"type": "function", "function": {"name": "t"}}],
            "response_format": {"type": "json_object"},
        });
        let sent = Value::Object(r.body(map(agent.clone())));
        assert_eq!(
            sent,
            json!({
                "model": "real",
                "messages": [{"content": "hi", "role": "user"}],
                // The agent's own sampling stays; the manifest's fills in.
                "temperature": 0.9,
                // extra_body wins over the agent.
                "user": "owner",
                "tools": agent["tools"],
                "response_format": {"type": "json_object"},
                "max_tokens": 100,
                "top_k": 5,
            })
        );
        // The agent's keys keep their order.
        let keys: Vec<&String> = sent.as_object().unwrap().keys().collect();
        assert_eq!(
            keys,
            [
                "model",
                "messages",
                "temperature",
                "user",
                "tools",
                "response_format",
                "max_tokens",
                "top_k"
            ]
        );
    }

    #[test]
    fn token_options_fill_in_and_logprobs_go_as_a_pair() {
        let r = rules("logprobs = true\ntop_logprobs = 4\nreturn_token_ids = true");
        let sent = r.body(map(json!({"messages": []})));
        assert_eq!(
            (
                &sent["logprobs"],
                &sent["top_logprobs"],
                &sent["return_token_ids"]
            ),
            (&json!(true), &json!(4), &json!(true))
        );
        let sent = r.body(map(json!({"messages": [], "logprobs": false})));
        assert_eq!(sent["logprobs"], false);
        assert!(!sent.contains_key("top_logprobs"), "{sent:?}");
        assert_eq!(sent["return_token_ids"], true);
        assert!(!rules("")
            .body(map(json!({"messages": []})))
            .contains_key("logprobs"));
    }

    #[test]
    fn tool_choice_of_the_manifest_is_not_forced_on_the_agent() {
        let r = rules("tool_choice = \"required\"\nparallel_tool_calls = false");
        let sent = r.body(map(json!({"messages": []})));
        assert!(!sent.contains_key("tool_choice"), "{sent:?}");
        assert!(!sent.contains_key("parallel_tool_calls"), "{sent:?}");
        assert_eq!(sent["model"], "real");
    }
}
