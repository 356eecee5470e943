//! A fake OpenAI-compatible Chat Completions server for tests and
//! benchmarks, on 127.0.0.1 with an ephemeral port.
//!
//! It plays a script carried by the conversation itself: the first user
//! message must be a JSON object `{"turns": [TURN, ...]}`. The reply to a
//! request is `turns[k]`, where k is the number of assistant messages the
//! request already holds; past the end it answers with the text "done".
//! A TURN is `{"content": "text" | null, "calls": [["bash", {"command": "ls"}], ...],
//! "delay_ms": 0}` (each call becomes a tool call with id `call_{k}_{i}`;
//! `delay_ms` makes the model that slow for this turn; `"status": 400` makes
//! the endpoint fail this turn with that HTTP status).
//!
//! A user message that is not such JSON gets `"bash" {"command": <text>}`
//! once, then a final text answer: the "instant LLM" used by benchmarks.
//!
//! Every request is recorded (headers, body, time) for assertions.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::routing::post;
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub authorization: Option<String>,
    pub body: Value,
}

#[derive(Clone, Default)]
struct Shared {
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// When set, every request gets this status and error message.
    fail_with: Arc<Mutex<Option<(u16, String)>>>,
    /// Requests being answered now, and the most at once.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    peak: Arc<std::sync::atomic::AtomicUsize>,
}

pub struct FakeLlm {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl FakeLlm {
    pub async fn start() -> FakeLlm {
        let shared = Shared::default();
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        FakeLlm { addr, shared, task }
    }

    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn requests(&self) -> Vec<Recorded> {
        self.shared.requests.lock().unwrap().clone()
    }

    /// Forgets the recorded requests and the peak.
    pub fn clear(&self) {
        self.shared.requests.lock().unwrap().clear();
        self.shared
            .peak
            .store(0, std::sync::atomic::Ordering::SeqCst);
    }

    /// The most requests that were being answered at once.
    pub fn peak_in_flight(&self) -> usize {
        self.shared.peak.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Answer every request with `status` and an OpenAI-style error.
    pub fn fail_with(&self, status: u16, message: &str) {
        *self.shared.fail_with.lock().unwrap() = Some((status, message.to_string()));
    }
}

impl Drop for FakeLlm {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn complete(
    State(shared): State<Shared>,
    headers: HeaderMap,
    Json(body): Json<Value>,
) -> (StatusCode, Json<Value>) {
    shared.requests.lock().unwrap().push(Recorded {
        at: Instant::now(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        body: body.clone(),
    });
    if let Some((status, message)) = shared.fail_with.lock().unwrap().clone() {
        return (
            StatusCode::from_u16(status).unwrap(),
            Json(json!({"error": {"message": message, "type": "test"}})),
        );
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let k = messages.iter().filter(|m| m["role"] == "assistant").count();
    let user = messages
        .iter()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default();
    let turn = match serde_json::from_str::<Value>(user) {
        Ok(script) if script.get("turns").is_some() => script["turns"].get(k).cloned(),
        _ if k == 0 => Some(json!({"content": null, "calls": [["bash", {"command": user}]]})),
        _ => None,
    };
    if let Some(status) = turn.as_ref().and_then(|t| t["status"].as_u64()) {
        return (
            StatusCode::from_u16(status as u16).unwrap(),
            Json(json!({"error": {"message": "scripted failure", "type": "test"}})),
        );
    }
    if let Some(ms) = turn.as_ref().and_then(|t| t["delay_ms"].as_u64()) {
        use std::sync::atomic::Ordering::SeqCst;
        let now = shared.in_flight.fetch_add(1, SeqCst) + 1;
        shared.peak.fetch_max(now, SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        shared.in_flight.fetch_sub(1, SeqCst);
    }
    let message = match turn {
        Some(turn) => {
            let calls: Vec<Value> = turn["calls"]
                .as_array()
                .cloned()
                .unwrap_or_default()
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let args = match &c[1] {
                        Value::String(raw) => raw.clone(),
                        other => other.to_string(),
                    };
                    json!({"id": format!("call_{k}_{i}"), "type": "function",
                           "function": {"name": c[0], "arguments": args}})
                })
                .collect();
            let mut m = json!({"role": "assistant", "content": turn["content"].clone()});
            if !calls.is_empty() {
                m["tool_calls"] = Value::Array(calls);
            }
            m
        }
        None => json!({"role": "assistant", "content": "done"}),
    };
    let finish = if message.get("tool_calls").is_some() {
        "tool_calls"
    } else {
        "stop"
    };
    (
        StatusCode::OK,
        Json(json!({
            "id": "chatcmpl-fake",
            "object": "chat.completion",
            "model": body["model"],
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
        })),
    )
}
