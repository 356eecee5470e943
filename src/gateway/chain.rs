//! What a conversation's model calls add to its record. An agent sends
//! its whole history with every call; storing each request whole would
//! grow with the square of the conversation. So each call keeps only what
//! is new: the request's messages past the previous request's messages
//! and the previous reply (a prefix match), plus its own reply. A request
//! that does not extend the previous one (the agent trimmed or rewrote
//! its history) is kept whole and marked `restart`. The longest chain,
//! the last request's messages plus its reply, is the trajectory.

use serde_json::Value;

/// The messages seen so far: the last request's, then its reply.
#[derive(Debug, Default)]
pub struct Chain {
    seen: Vec<Value>,
}

/// What one call adds.
#[derive(Debug, Clone, PartialEq)]
pub struct Added {
    /// The request's messages past what the chain holds, then the reply.
    pub messages: Vec<Value>,
    /// The request did not extend the chain: `messages` holds it whole.
    pub restart: bool,
}

impl Chain {
    /// Takes in one call (its request's messages and its reply) and says
    /// what it added.
    pub fn extend(&mut self, request: Vec<Value>, reply: Value) -> Added {
        let extends = request.len() >= self.seen.len()
            && request.iter().zip(&self.seen).all(|(a, b)| same(a, b));
        let from = if extends { self.seen.len() } else { 0 };
        let mut messages: Vec<Value> = request[from..].to_vec();
        messages.push(reply.clone());
        self.seen = request;
        self.seen.push(reply);
        Added {
            messages,
            restart: !extends,
        }
    }

    /// The longest chain: the last request's messages and its reply.
    pub fn messages(&self) -> &[Value] {
        &self.seen
    }
}

/// Whether a message the agent sent back is the one the chain holds. An
/// assistant reply comes back as the agent's client rebuilt it: `content`
/// `null`, `""` or absent are the same, and of its tool calls only the
/// ids, names and arguments count.
fn same(sent: &Value, held: &Value) -> bool {
    if sent == held {
        return true;
    }
    let assistant = |m: &Value| m["role"] == "assistant";
    if !(assistant(sent) && assistant(held)) {
        return false;
    }
    let content = |m: &Value| match &m["content"] {
        Value::Null => Value::String(String::new()),
        c => c.clone(),
    };
    let calls = |m: &Value| -> Vec<(Value, Value, Value)> {
        m["tool_calls"]
            .as_array()
            .map(|calls| {
                calls
                    .iter()
                    .map(|c| {
                        (
                            c["id"].clone(),
                            c["function"]["name"].clone(),
                            c["function"]["arguments"].clone(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
    };
    content(sent) == content(held) && calls(sent) == calls(held)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn m(role: &str, content: &str) -> Value {
        json!({"role": role, "content": content})
    }

    #[test]
    fn each_call_keeps_only_what_it_adds_and_a_rewrite_is_a_restart() {
        let mut chain = Chain::default();
        let (sys, u1, a1) = (m("system", "s"), m("user", "u1"), m("assistant", "a1"));
        let first = chain.extend(vec![sys.clone(), u1.clone()], a1.clone());
        assert_eq!(first.messages, [sys.clone(), u1.clone(), a1.clone()]);
        assert!(!first.restart, "the first call extends the empty chain");
        let (t1, a2) = (m("tool", "out"), m("assistant", "a2"));
        let second = chain.extend(
            vec![sys.clone(), u1.clone(), a1.clone(), t1.clone()],
            a2.clone(),
        );
        assert_eq!(second.messages, [t1.clone(), a2.clone()]);
        assert!(!second.restart);
        // The agent dropped a message: the request is kept whole.
        let a3 = m("assistant", "a3");
        let third = chain.extend(vec![sys.clone(), t1.clone()], a3.clone());
        assert_eq!(third.messages, [sys.clone(), t1.clone(), a3.clone()]);
        assert!(third.restart);
        assert_eq!(chain.messages(), [sys, t1, a3]);
    }

    #[test]
    fn a_reply_rebuilt_by_the_client_still_extends_the_chain() {
        let mut chain = Chain::default();
        let u = m("user", "u");
        let received = json!({"role": "assistant", "content": null, "refusal": null,
            "tool_calls": [{"id": "c1", "type": "function", "index": 0,
                "function": {"name": "ls", "arguments": "{}"}}]});
        chain.extend(vec![u.clone()], received);
        let rebuilt = json!({"role": "assistant",
            "tool_calls": [{"id": "c1", "type": "function", "function": {"name": "ls", "arguments": "{}"}}]});
        let out = json!({"role": "tool", "tool_call_id": "c1", "content": "a"});
        let next = chain.extend(vec![u, rebuilt, out.clone()], m("assistant", "done"));
        assert!(!next.restart);
        assert_eq!(next.messages, [out, m("assistant", "done")]);
    }

    #[test]
    fn a_request_that_changes_the_reply_it_got_is_a_restart() {
        let mut chain = Chain::default();
        let (u, a) = (m("user", "u"), m("assistant", "a"));
        chain.extend(vec![u.clone()], a);
        let edited = m("assistant", "a, edited");
        let next = chain.extend(vec![u.clone(), edited.clone()], m("assistant", "b"));
        assert!(next.restart);
        assert_eq!(next.messages.len(), 3);
    }
}
