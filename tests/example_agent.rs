//! The example external agent (`examples/agent/run.py`) as convoy runs it:
//! its prompt in a file, its answer to a file, its model calls over HTTP
//! to an OpenAI-compatible endpoint (here the strict fake one, which
//! answers HTTP 500 to what llama.cpp's server refuses).

mod support;

use std::path::Path;

use serde_json::{json, Value};
use support::fake_llm::FakeLlm;

/// Runs the agent in a fresh directory on `script`; returns its exit
/// status, its answer and the directory.
async fn run_agent(llm: &FakeLlm, script: Value) -> (i32, String, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let prompt = dir.path().join("prompt.txt");
    std::fs::write(&prompt, script.to_string()).unwrap();
    std::fs::write(dir.path().join("system.txt"), "You are a test.").unwrap();
    let agent = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agent/run.py");
    let out = tokio::process::Command::new("python3")
        .arg(&agent)
        .current_dir(dir.path())
        .env("OPENAI_BASE_URL", llm.base_url())
        .env("OPENAI_API_KEY", "tok-1")
        .env("CONVOY_PROMPT_FILE", &prompt)
        .env("CONVOY_SYSTEM_FILE", dir.path().join("system.txt"))
        .env("CONVOY_ANSWER", dir.path().join("answer.txt"))
        .output()
        .await
        .expect("python3 runs");
    let answer = std::fs::read_to_string(dir.path().join("answer.txt")).unwrap_or_default();
    let code = out.status.code().unwrap_or(-1);
    if code != 0 {
        eprintln!("the agent said: {}", String::from_utf8_lossy(&out.stderr));
    }
    (code, answer, dir)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_example_agent_runs_its_tools_and_writes_its_answer() {
    let llm = FakeLlm::start().await;
    let script = json!({"turns": [
        {"content": null, "calls": [["bash", {"command": "echo made > f.txt; cat f.txt"}]]},
        {"content": "checking", "calls": [["bash", {"command": "exit 3"}]]},
        {"content": "the answer is 42"},
    ]});
    let (code, answer, dir) = run_agent(&llm, script).await;
    assert_eq!(code, 0);
    assert_eq!(answer, "the answer is 42");
    assert_eq!(
        std::fs::read_to_string(dir.path().join("f.txt")).unwrap(),
        "made\n"
    );
    let requests = llm.requests();
    assert_eq!(requests.len(), 3);
    assert!(
        requests.iter().all(|r| r.status == 200),
        "the strict server took every request"
    );
    assert_eq!(requests[0].authorization.as_deref(), Some("Bearer tok-1"));
    let last = &requests[2].body["messages"];
    assert_eq!(
        last[0],
        json!({"role": "system", "content": "You are a test."})
    );
    assert_eq!(last[3]["content"], "made\n");
    assert_eq!(last[5]["content"], "\n[exit code 3]");
    let tools: Vec<&str> = requests[0].body["tools"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(tools, ["bash", "finish"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn twenty_calls_then_finish() {
    let llm = FakeLlm::start().await;
    let turns: Vec<Value> = (0..19)
        .map(|i| json!({"content": null, "calls": [["bash", {"command": format!("echo {i}")}]]}))
        .collect();
    // Past the script's end the fake model calls `finish` ("done").
    let (code, answer, _dir) = run_agent(&llm, json!({ "turns": turns })).await;
    assert_eq!((code, answer.as_str()), (0, "done"));
    let requests = llm.requests();
    assert_eq!(requests.len(), 20);
    assert_eq!(requests[19].body["messages"][39]["content"], "18\n");
}
