//! A fake OpenAI-compatible Chat Completions server for tests and
//! benchmarks, on 127.0.0.1 with an ephemeral port.
//!
//! It is as strict as llama.cpp's server about what comes back (see
//! `check_request`): an assistant message with `content: null` gets HTTP
//! 500, as llama-cpp-python answers it; other keys than the canonical ones,
//! a tool message without a known `tool_call_id`, `reasoning_content`
//! (unless `accept_reasoning`), a bad `tool_choice` or `top_logprobs`
//! without `logprobs: true` get HTTP 400. Both with an OpenAI-style JSON
//! error. Asked for `logprobs` or `return_token_ids`, it answers with them
//! as OpenAI and vLLM do (`fake_tokens`).
//!
//! It plays a script carried by the conversation itself: the first user
//! message must be a JSON object `{"turns": [TURN, ...]}`. The reply to a
//! request is `turns[k]`, where k is the number of assistant messages the
//! request already holds; past the end it calls `finish` with the text of
//! the last assistant message if that had no tool calls (a model obeying
//! convoy's request to go on), else with "done".
//! A TURN is `{"content": "text" | null, "calls": [["bash", {"command": "ls"}], ...],
//! "delay_ms": 0}` (each call becomes a tool call with id `call_{k}_{i}`;
//! a call's arguments given as a string are sent verbatim, so they can be
//! invalid JSON; `delay_ms` makes the model that slow for this turn;
//! `"status": 400` makes the endpoint fail this turn with that HTTP status;
//! `"reasoning": "..."` adds `reasoning_content`; `"finish_reason"`
//! overrides it; `"stop_reason"` is put on the choice, as vLLM does; `"raw": {...}` is the whole assistant message, verbatim,
//! e.g. with a provider's extra fields; `"close": true` answers with
//! `Connection: close`, so the connection ends after the reply, as with a
//! server whose keep-alive timeout is short). `"faults": [FAULT, ...]` answers the first attempts at
//! this turn with those faults, in order, then the turn itself. A FAULT is
//! `{"status": 429, "retry_after": "1", "message": "..."}`, `{"stall_ms": 3000}` (answers,
//! but that late), `{"reset": true}` (the connection breaks mid-reply) or
//! `{"body": {...}}` (a 200 with that body, e.g. `{"choices": []}`).
//!
//! Faults for the whole server: `storm` (a share of all requests get 429 or
//! 503), `go_down` (every connection breaks and the port closes) and `slow`
//! (every answer that much later).
//!
//! A user message that is not such JSON gets `"bash" {"command": <text>}`
//! once, then `finish` with "done": the "instant LLM" used by benchmarks.
//!
//! Every request is recorded (headers, body as parsed and as sent, time)
//! for assertions; a body that is not JSON gets HTTP 400.

#![allow(dead_code)]

// By path, as the examples include this file on its own.
#[path = "fake_tokens.rs"]
pub mod tokens;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};

#[derive(Debug, Clone)]
pub struct Recorded {
    pub at: Instant,
    pub authorization: Option<String>,
    pub headers: HeaderMap,
    pub body: Value,
    /// The body exactly as it came over the wire.
    pub raw: Bytes,
    /// The HTTP status answered (0: the connection was broken).
    pub status: u16,
}

/// A share of requests answered 429 (with `Retry-After` when given) or 503.
#[derive(Debug, Clone, Copy)]
pub struct Storm {
    pub p429: f64,
    pub p503: f64,
    pub retry_after_s: Option<u64>,
}

#[derive(Clone, Default)]
struct Shared {
    requests: Arc<Mutex<Vec<Recorded>>>,
    /// When set, every request gets this status and error message.
    fail_with: Arc<Mutex<Option<(u16, String)>>>,
    /// Requests being answered now, and the most at once.
    in_flight: Arc<std::sync::atomic::AtomicUsize>,
    peak: Arc<std::sync::atomic::AtomicUsize>,
    /// Attempts so far at each (conversation, turn), for scripted faults.
    attempts: Arc<Mutex<HashMap<(String, usize), usize>>>,
    storm: Arc<Mutex<Option<(Storm, fastrand::Rng)>>>,
    down: Arc<std::sync::atomic::AtomicBool>,
    /// Accept `reasoning_content` in assistant messages sent back.
    accept_reasoning: Arc<std::sync::atomic::AtomicBool>,
    /// When set, both routes answer 401 to any other bearer key.
    key: Arc<Mutex<Option<String>>>,
    /// `/v1/models` answers 404, as on servers without it.
    no_models: Arc<std::sync::atomic::AtomicBool>,
    /// Every chat answer takes this long (a slow server).
    delay_ms: Arc<std::sync::atomic::AtomicU64>,
}

pub struct FakeLlm {
    pub addr: SocketAddr,
    shared: Shared,
    task: tokio::task::JoinHandle<()>,
}

impl FakeLlm {
    pub async fn start() -> FakeLlm {
        FakeLlm::start_on("127.0.0.1:0".parse().unwrap()).await
    }

    /// Starts on `addr` (e.g. the address of a server that went down, to
    /// bring the endpoint back).
    pub async fn start_on(addr: SocketAddr) -> FakeLlm {
        let shared = Shared::default();
        let app = Router::new()
            .route("/v1/chat/completions", post(complete))
            .route("/v1/models", get(models))
            .with_state(shared.clone());
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
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

    /// From now on answer a share of requests with 429 or 503 (seeded, so
    /// a run is repeatable).
    pub fn storm(&self, storm: Storm) {
        *self.shared.storm.lock().unwrap() = Some((storm, fastrand::Rng::with_seed(7)));
    }

    /// The endpoint goes away: requests in progress and new ones on open
    /// connections break, and the port stops listening.
    pub fn go_down(&self) {
        self.shared
            .down
            .store(true, std::sync::atomic::Ordering::SeqCst);
        self.task.abort();
    }

    /// Every chat answer takes `ms` longer from now on (a slow server).
    pub fn slow(&self, ms: u64) {
        self.shared
            .delay_ms
            .store(ms, std::sync::atomic::Ordering::SeqCst);
    }

    /// Both routes answer 401 unless the request carries `Bearer key`.
    pub fn require_key(&self, key: &str) {
        *self.shared.key.lock().unwrap() = Some(key.to_string());
    }

    /// `/v1/models` answers 404 from now on.
    pub fn without_models(&self) {
        self.shared
            .no_models
            .store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Accept `reasoning_content` sent back (an endpoint that wants it).
    pub fn accept_reasoning(&self) {
        self.shared
            .accept_reasoning
            .store(true, std::sync::atomic::Ordering::SeqCst);
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

/// The 401 a server with a key gives a request without it.
fn key_refused(shared: &Shared, headers: &HeaderMap) -> Option<Response> {
    let key = shared.key.lock().unwrap().clone()?;
    let sent = headers.get("authorization").and_then(|v| v.to_str().ok());
    (sent != Some(format!("Bearer {key}").as_str())).then(|| error_reply(401, "Invalid API Key"))
}

async fn models(State(shared): State<Shared>, headers: HeaderMap) -> Response {
    if shared.down.load(std::sync::atomic::Ordering::SeqCst) {
        return broken_reply();
    }
    if let Some(refused) = key_refused(&shared, &headers) {
        return refused;
    }
    if shared.no_models.load(std::sync::atomic::Ordering::SeqCst) {
        return StatusCode::NOT_FOUND.into_response();
    }
    Json(json!({"object": "list", "data": [{"id": "fake-model", "object": "model"}]}))
        .into_response()
}

fn error_reply(status: u16, message: &str) -> Response {
    (
        StatusCode::from_u16(status).unwrap(),
        Json(json!({"error": {"message": message, "type": "test"}})),
    )
        .into_response()
}

/// A reply whose connection breaks after a few bytes.
fn broken_reply() -> Response {
    let chunks: Vec<Result<Bytes, std::io::Error>> = vec![
        Ok(Bytes::from_static(b"{\"id\": \"chatcmpl-")),
        Err(std::io::Error::other("connection reset on purpose")),
    ];
    Response::new(Body::from_stream(futures::stream::iter(chunks)))
}

async fn complete(State(shared): State<Shared>, headers: HeaderMap, raw: Bytes) -> Response {
    let Ok(body) = serde_json::from_slice::<Value>(&raw) else {
        return error_reply(400, "the body is not JSON");
    };
    let (status, response) = match key_refused(&shared, &headers) {
        Some(refused) => (401, refused),
        None => answer(&shared, &body).await,
    };
    shared.requests.lock().unwrap().push(Recorded {
        at: Instant::now(),
        authorization: headers
            .get("authorization")
            .and_then(|v| v.to_str().ok())
            .map(str::to_string),
        headers,
        body,
        raw,
        status,
    });
    response
}

async fn answer(shared: &Shared, body: &Value) -> (u16, Response) {
    use std::sync::atomic::Ordering::SeqCst;
    if shared.down.load(SeqCst) {
        return (0, broken_reply());
    }
    if let Some((status, message)) = shared.fail_with.lock().unwrap().clone() {
        return (status, error_reply(status, &message));
    }
    if let Err((status, message)) = check_request(body, shared.accept_reasoning.load(SeqCst)) {
        return (status, error_reply(status, &message));
    }
    let delay = shared.delay_ms.load(SeqCst);
    if delay > 0 {
        tokio::time::sleep(std::time::Duration::from_millis(delay)).await;
    }
    if let Some((storm, rng)) = shared.storm.lock().unwrap().as_mut() {
        let x = rng.f64();
        if x < storm.p429 {
            let mut r = error_reply(429, "rate limited (storm)");
            if let Some(s) = storm.retry_after_s {
                r.headers_mut()
                    .insert("retry-after", s.to_string().parse().unwrap());
            }
            return (429, r);
        }
        if x < storm.p429 + storm.p503 {
            return (503, error_reply(503, "overloaded (storm)"));
        }
    }
    let messages = body["messages"].as_array().cloned().unwrap_or_default();
    let k = messages.iter().filter(|m| m["role"] == "assistant").count();
    let user = messages
        .iter()
        .find(|m| m["role"] == "user")
        .and_then(|m| m["content"].as_str())
        .unwrap_or_default()
        .to_string();
    let turn = match serde_json::from_str::<Value>(&user) {
        Ok(script) if script.get("turns").is_some() => script["turns"].get(k).cloned(),
        _ if k == 0 => Some(json!({"content": null, "calls": [["bash", {"command": user}]]})),
        _ => None,
    };
    let turn = turn.or_else(|| Some(finish_turn(&messages)));
    let attempt = {
        let mut a = shared.attempts.lock().unwrap();
        let n = a.entry((user.clone(), k)).or_default();
        *n += 1;
        *n - 1
    };
    let fault = turn
        .as_ref()
        .and_then(|t| t["faults"].get(attempt))
        .cloned();
    if let Some(f) = &fault {
        if f["reset"] == true {
            return (0, broken_reply());
        }
        if let Some(status) = f["status"].as_u64() {
            let message = f["message"].as_str().unwrap_or("scripted fault");
            let mut r = error_reply(status as u16, message);
            if let Some(after) = f["retry_after"].as_str() {
                r.headers_mut()
                    .insert("retry-after", after.parse().unwrap());
            }
            return (status as u16, r);
        }
        if f.get("body").is_some() {
            return (
                200,
                (StatusCode::OK, Json(f["body"].clone())).into_response(),
            );
        }
        if let Some(ms) = f["stall_ms"].as_u64() {
            tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        }
    }
    if let Some(status) = turn.as_ref().and_then(|t| t["status"].as_u64()) {
        return (
            status as u16,
            error_reply(status as u16, "scripted failure"),
        );
    }
    if let Some(ms) = turn.as_ref().and_then(|t| t["delay_ms"].as_u64()) {
        let now = shared.in_flight.fetch_add(1, SeqCst) + 1;
        shared.peak.fetch_max(now, SeqCst);
        tokio::time::sleep(std::time::Duration::from_millis(ms)).await;
        shared.in_flight.fetch_sub(1, SeqCst);
    }
    let message = match &turn {
        Some(turn) if turn.get("raw").is_some() => turn["raw"].clone(),
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
            if let Some(r) = turn.get("reasoning") {
                m["reasoning_content"] = r.clone();
            }
            m
        }
        None => json!({"role": "assistant", "content": "done"}),
    };
    let finish = match turn.as_ref().and_then(|t| t["finish_reason"].as_str()) {
        Some(f) => f.to_string(),
        None if message.get("tool_calls").is_some() => "tool_calls".into(),
        None => "stop".into(),
    };
    let mut reply = json!({
        "id": "chatcmpl-fake",
        "object": "chat.completion",
        "model": body["model"],
        "choices": [{"index": 0, "message": message, "finish_reason": finish}],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15},
    });
    if let Some(r) = turn.as_ref().and_then(|t| t.get("stop_reason")) {
        reply["choices"][0]["stop_reason"] = r.clone();
    }
    tokens::add(body, &mut reply);
    let mut response = (StatusCode::OK, Json(reply)).into_response();
    if turn.as_ref().is_some_and(|t| t["close"] == true) {
        response
            .headers_mut()
            .insert("connection", "close".parse().unwrap());
    }
    (200, response)
}

/// Past the end of a script: `finish` with the last assistant text when
/// that reply had no tool calls (the model answers convoy's request to go
/// on), else with "done".
fn finish_turn(messages: &[Value]) -> Value {
    let last = messages.iter().rev().find(|m| m["role"] == "assistant");
    let answer = match last {
        Some(m) if m.get("tool_calls").is_none() => m["content"].as_str().unwrap_or("done"),
        _ => "done",
    };
    json!({"content": "", "calls": [["finish", {"message": answer}]]})
}

/// What llama.cpp's server (through llama-cpp-python) and OpenAI refuse in
/// a request, as (status, message). `content: null` in an assistant
/// message is a 500, as llama-cpp-python's chat templates crash on it.
fn check_request(body: &Value, accept_reasoning: bool) -> Result<(), (u16, String)> {
    let bad = |m: String| Err((400, m));
    tokens::check(body)?;
    if let Some(tc) = body.get("tool_choice") {
        let ok = matches!(tc.as_str(), Some("auto" | "none" | "required")) || tc.is_object();
        if !ok {
            return bad(format!("invalid tool_choice: {tc}"));
        }
    }
    let Some(messages) = body["messages"].as_array().filter(|m| !m.is_empty()) else {
        return bad("'messages' must be a non-empty array".into());
    };
    let mut call_ids = std::collections::HashSet::new();
    for (i, m) in messages.iter().enumerate() {
        let Some(o) = m.as_object() else {
            return bad(format!("messages[{i}] is not an object"));
        };
        let role = o.get("role").and_then(Value::as_str).unwrap_or("");
        let allowed: &[&str] = match role {
            "system" | "user" => &["role", "content", "name"],
            "assistant" if accept_reasoning => {
                &["role", "content", "tool_calls", "reasoning_content"]
            }
            "assistant" => &["role", "content", "tool_calls"],
            "tool" => &["role", "content", "tool_call_id", "name"],
            other => return bad(format!("messages[{i}]: unknown role `{other}`")),
        };
        if let Some(k) = o.keys().find(|k| !allowed.contains(&k.as_str())) {
            return bad(format!("messages[{i}] ({role}): unexpected key `{k}`"));
        }
        match o.get("content") {
            Some(Value::String(_)) => {}
            Some(Value::Null) if role == "assistant" => {
                return Err((
                    500,
                    format!("messages[{i}]: can only concatenate str (not \"NoneType\") to str"),
                ))
            }
            _ => {
                return bad(format!(
                    "messages[{i}] ({role}): `content` must be a string"
                ))
            }
        }
        if role == "assistant" {
            if let Some(calls) = o.get("tool_calls") {
                let Some(calls) = calls.as_array().filter(|c| !c.is_empty()) else {
                    return bad(format!(
                        "messages[{i}]: `tool_calls` must be a non-empty array"
                    ));
                };
                for c in calls {
                    check_call(c).map_err(|e| (400, format!("messages[{i}]: {e}")))?;
                    call_ids.insert(c["id"].as_str().unwrap_or_default().to_string());
                }
            }
        }
        if role == "tool" {
            match o.get("tool_call_id").and_then(Value::as_str) {
                Some(id) if call_ids.contains(id) => {}
                Some(id) => return bad(format!("messages[{i}]: no tool call has id `{id}`")),
                None => {
                    return bad(format!(
                        "messages[{i}]: a tool message needs `tool_call_id`"
                    ))
                }
            }
        }
    }
    Ok(())
}

/// A tool call sent back: exactly `id`, `type: "function"`, and
/// `function` with `name` and string `arguments`.
fn check_call(c: &Value) -> Result<(), String> {
    let keys = |v: &Value| -> Vec<String> {
        let mut k: Vec<String> = v
            .as_object()
            .map(|o| o.keys().cloned().collect())
            .unwrap_or_default();
        k.sort();
        k
    };
    if keys(c) != ["function", "id", "type"] || !c["id"].is_string() || c["type"] != "function" {
        return Err(format!(
            "a tool call must be {{id, type: \"function\", function}}: {c}"
        ));
    }
    if keys(&c["function"]) != ["arguments", "name"]
        || !c["function"]["name"].is_string()
        || !c["function"]["arguments"].is_string()
    {
        return Err(format!(
            "a tool call's function must be {{name, arguments (a string)}}: {c}"
        ));
    }
    Ok(())
}
