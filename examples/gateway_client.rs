//! The gateway benchmark's CPU-light agent (`scripts/bench.sh --gateway`):
//! the same 10 model calls as `bench/gateway_agent.py`, from a native
//! binary over one keep-alive HTTP/1.1 connection, so that what the
//! benchmark measures at 64 and 512 agents is the gateway, not Python
//! interpreters. Prints the time of each call as the agent saw it, in
//! seconds. It runs inside the workspace (mounted by the benchmark); only
//! the standard library and serde_json.

use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Instant;

use serde_json::{json, Value};

fn main() {
    if let Err(e) = run() {
        eprintln!("gateway_client: {e}");
        std::process::exit(1);
    }
}

fn run() -> Result<(), String> {
    let env = |k: &str| std::env::var(k).map_err(|_| format!("{k} is not set"));
    let base = env("OPENAI_BASE_URL")?;
    let token = env("OPENAI_API_KEY")?;
    // http://host:port/v1 -> ("host:port", "/v1")
    let rest = base
        .strip_prefix("http://")
        .ok_or(format!("{base}: not http://"))?;
    let (addr, prefix) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let prompt = std::fs::read_to_string(env("CONVOY_PROMPT_FILE")?).map_err(|e| e.to_string())?;
    let stream = TcpStream::connect(addr).map_err(|e| format!("{addr}: {e}"))?;
    stream.set_nodelay(true).map_err(|e| e.to_string())?;
    let mut reader = BufReader::new(stream.try_clone().map_err(|e| e.to_string())?);
    let mut writer = stream;
    let mut messages = vec![json!({"role": "user", "content": prompt})];
    let mut seen = Vec::new();
    for _ in 0..10 {
        let body = json!({"model": "m", "messages": messages}).to_string();
        let start = Instant::now();
        write!(
            writer,
            "POST {prefix}/chat/completions HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        )
        .map_err(|e| e.to_string())?;
        let reply = read_response(&mut reader)?;
        seen.push(start.elapsed().as_secs_f64());
        let message = reply
            .get("choices")
            .and_then(|c| c.get(0))
            .and_then(|c| c.get("message"))
            .ok_or(format!("no choice in {reply}"))?;
        let calls = message
            .get("tool_calls")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        let content = message.get("content").and_then(Value::as_str).unwrap_or("");
        let mut assistant = json!({"role": "assistant", "content": content});
        if !calls.is_empty() {
            assistant["tool_calls"] = Value::Array(calls.clone());
        }
        messages.push(assistant);
        for c in &calls {
            messages.push(json!({"role": "tool", "tool_call_id": c["id"], "content": "ok"}));
        }
    }
    std::fs::write(env("CONVOY_ANSWER")?, "done").map_err(|e| e.to_string())?;
    let times: Vec<String> = seen.iter().map(|s| format!("{s:.6}")).collect();
    println!("{}", times.join(" "));
    Ok(())
}

/// One HTTP/1.1 response with a Content-Length body (the gateway's
/// non-streaming answers); its JSON. Anything but 200 is an error.
fn read_response(reader: &mut impl BufRead) -> Result<Value, String> {
    let mut status = String::new();
    reader.read_line(&mut status).map_err(|e| e.to_string())?;
    if !status.starts_with("HTTP/1.1 200") {
        return Err(format!("gateway answered {}", status.trim()));
    }
    let mut length = None;
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).map_err(|e| e.to_string())?;
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            if k.eq_ignore_ascii_case("content-length") {
                length = v.trim().parse::<usize>().ok();
            }
        }
    }
    let length = length.ok_or("no Content-Length in the gateway's answer")?;
    let mut body = vec![0; length];
    reader.read_exact(&mut body).map_err(|e| e.to_string())?;
    serde_json::from_slice(&body).map_err(|e| e.to_string())
}
