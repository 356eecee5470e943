use std::sync::atomic::{AtomicU32, Ordering};

use super::*;

/// An endpoint that answers each call with how many messages it got, or
/// refuses when the last message says "refuse". Asked `return_token_ids`,
/// the reply's record holds that count as its token ids.
struct Counting;

impl Forward for Counting {
    async fn forward(&self, body: Map<String, Value>) -> Result<Forwarded, ForwardError> {
        let messages = body["messages"].as_array().unwrap();
        if messages.last().unwrap()["content"] == "refuse" {
            return Err(ForwardError {
                status: 400,
                body: json!({"error": {"message": "context length exceeded", "code": "context_length_exceeded"}}),
                fatal: None,
            });
        }
        let message =
            json!({"role": "assistant", "content": format!("{} messages", messages.len())});
        Ok(Forwarded {
            response: json!({"id": "r", "object": "chat.completion", "created": 1, "model": "m",
                "choices": [{"index": 0, "finish_reason": "stop", "message": message}],
                "usage": {"prompt_tokens": 2, "completion_tokens": 1, "total_tokens": 3}}),
            reply: crate::llm::ChatReply {
                message,
                finish_reason: Some("stop".into()),
                usage: Usage {
                    prompt_tokens: 2,
                    completion_tokens: 1,
                    total_tokens: 3,
                    ..Usage::default()
                },
                record: match body.get("return_token_ids") {
                    Some(Value::Bool(true)) => json!({"token_ids": [messages.len()]})
                        .as_object()
                        .unwrap()
                        .clone(),
                    _ => serde_json::Map::new(),
                },
            },
        })
    }
}

type Records = Arc<Mutex<Vec<CallRecord>>>;

fn service() -> Service {
    Service {
        tokens: Arc::default(),
        model: "the-model".into(),
    }
}

fn grant(s: &Service, id: &str, max_steps: u32) -> (Grant, Records) {
    let records: Records = Arc::default();
    let r = records.clone();
    let conv = Conversation::new(id.into(), 1, forwarder(Counting), max_steps, move |c| {
        r.lock().unwrap().push(c)
    });
    (s.tokens.grant(conv), records)
}

fn call(token: &str, method: &str, body: Value) -> GatewayCall {
    GatewayCall {
        call: 1,
        method: method.into(),
        path: if method == "GET" {
            "/v1/models"
        } else {
            "/v1/chat/completions"
        }
        .into(),
        authorization: Some(format!("Bearer {token}")),
        body: body.to_string(),
    }
}

fn user(text: &str) -> Value {
    json!({"role": "user", "content": text})
}

#[tokio::test]
async fn a_token_is_valid_only_while_its_grant_lives_and_refusals_are_not_recorded() {
    let s = service();
    let (g, records) = grant(&s, "t1", 10);
    let models = s.handle(call(&g.token, "GET", Value::Null)).await;
    assert_eq!(models.status, 200);
    assert!(models.body.contains("the-model"), "{}", models.body);
    let bogus = s
        .handle(call("convoy-nope", "POST", json!({"messages": []})))
        .await;
    assert_eq!(bogus.status, 401);
    let token = g.token.clone();
    drop(g);
    let expired = s
        .handle(call(&token, "POST", json!({"messages": [user("hi")]})))
        .await;
    assert_eq!(expired.status, 401, "{}", expired.body);
    assert!(records.lock().unwrap().is_empty());
}

#[tokio::test]
async fn calls_are_answered_and_recorded_as_what_they_add() {
    let s = service();
    let (g, records) = grant(&s, "t1", 10);
    let bad = s
        .handle(call(&g.token, "POST", json!({"messages": "no"})))
        .await;
    assert_eq!(bad.status, 400);
    let first = s
        .handle(call(
            &g.token,
            "POST",
            json!({"model": "x", "messages": [user("a")], "tools": []}),
        ))
        .await;
    assert_eq!(first.status, 200);
    let reply: Value = serde_json::from_str(&first.body).unwrap();
    let said = reply["choices"][0]["message"].clone();
    assert_eq!(said["content"], "1 messages");
    let second = s
        .handle(call(
            &g.token,
            "POST",
            json!({"messages": [user("a"), said, user("b")], "stream": true,
                "stream_options": {"include_usage": true}}),
        ))
        .await;
    assert_eq!(second.content_type, "text/event-stream");
    assert!(second.body.contains("3 messages") && second.body.ends_with("data: [DONE]\n\n"));
    let refused = s
        .handle(call(
            &g.token,
            "POST",
            json!({"messages": [user("refuse")]}),
        ))
        .await;
    assert_eq!(refused.status, 400);
    assert!(
        refused.body.contains("context_length_exceeded"),
        "the endpoint's own body"
    );
    let r = records.lock().unwrap();
    assert_eq!(r.iter().map(|c| c.seq).collect::<Vec<_>>(), [1, 2, 3]);
    assert_eq!(r[0].messages_added.len(), 2, "the request and its reply");
    assert_eq!(
        r[1].messages_added,
        [
            user("b"),
            json!({"role": "assistant", "content": "3 messages"})
        ]
    );
    assert!(!r[1].restart);
    assert_eq!((r[2].status, r[2].messages_added.len()), (400, 0));
    assert_ne!(r[0].tools_hash, r[1].tools_hash, "[] and no tools differ");
    let summary = g.conversation.summary();
    assert_eq!((summary.calls, summary.usage.total_tokens), (3, 6));
    assert_eq!(summary.messages.len(), 4);
    assert!(summary.turns.is_empty(), "no token data asked for");
}

#[tokio::test]
async fn the_last_reply_s_record_indexes_the_longest_chain() {
    let s = service();
    let (g, _) = grant(&s, "t1", 10);
    let ask = |messages: Vec<Value>| json!({"messages": messages, "return_token_ids": true});
    let first = s.handle(call(&g.token, "POST", ask(vec![user("a")]))).await;
    let reply: Value = serde_json::from_str(&first.body).unwrap();
    let said = reply["choices"][0]["message"].clone();
    let second = s
        .handle(call(
            &g.token,
            "POST",
            ask(vec![user("a"), said, user("b")]),
        ))
        .await;
    assert_eq!(second.status, 200);
    // A call that gets no reply changes neither the chain nor its record.
    let refused = s
        .handle(call(&g.token, "POST", ask(vec![user("refuse")])))
        .await;
    assert_eq!(refused.status, 400);
    let summary = g.conversation.summary();
    assert_eq!(summary.messages.len(), 4);
    assert_eq!(summary.turns, [json!({"message": 3, "token_ids": [3]})]);
}

#[tokio::test]
async fn past_max_steps_a_call_is_a_400_with_code_max_steps() {
    let s = service();
    let (g, records) = grant(&s, "t1", 2);
    for _ in 0..2 {
        let ok = s
            .handle(call(&g.token, "POST", json!({"messages": [user("a")]})))
            .await;
        assert_eq!(ok.status, 200);
    }
    let over = s
        .handle(call(&g.token, "POST", json!({"messages": [user("a")]})))
        .await;
    assert_eq!(over.status, 400);
    let body: Value = serde_json::from_str(&over.body).unwrap();
    assert_eq!(body["error"]["code"], "max_steps");
    assert!(g.conversation.summary().over_max_steps);
    assert_eq!(records.lock().unwrap().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_conversations_calls_never_cross() {
    let s = Arc::new(service());
    let grants: Vec<_> = (0..200).map(|i| grant(&s, &format!("t{i}"), 100)).collect();
    let done = Arc::new(AtomicU32::new(0));
    let mut joins = Vec::new();
    for (i, (g, _)) in grants.iter().enumerate() {
        for k in 0..3 {
            let (s, token, done) = (s.clone(), g.token.clone(), done.clone());
            joins.push(tokio::spawn(async move {
                let text = format!("conv {i} call {k}");
                let r = s
                    .handle(call(&token, "POST", json!({"messages": [user(&text)]})))
                    .await;
                assert_eq!(r.status, 200);
                done.fetch_add(1, Ordering::Relaxed);
            }));
        }
    }
    for j in joins {
        j.await.unwrap();
    }
    assert_eq!(done.load(Ordering::Relaxed), 600);
    for (i, (g, records)) in grants.iter().enumerate() {
        let r = records.lock().unwrap();
        assert_eq!(r.len(), 3);
        for c in r.iter() {
            assert_eq!(c.id, format!("t{i}"));
            let asked = c.messages_added[0]["content"].as_str().unwrap();
            assert!(asked.starts_with(&format!("conv {i} call")), "{asked}");
        }
        assert_eq!(g.conversation.summary().calls, 3);
    }
}
