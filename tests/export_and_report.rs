//! What trainers and people get from a run directory: `convoy export`
//! never destroys an existing file on error, its rows render with a real
//! tool-calling chat template (Qwen2.5's, written here) without
//! double-encoded arguments, its sharegpt rows follow LLaMA-Factory's
//! rules; every run's summary is kept; `convoy report` of a run still
//! going counts what is done and in flight, and reporting writes nothing.
//! Real binary, real tmux, real HTTP (the fake OpenAI server).

mod support;

use serde_json::{json, Value};
use support::fake_llm::FakeLlm;
use support::{convoy_bin, http_manifest, read_jsonl, script, script_job, stderr, TestJob, KEY};

const ENV: &[(&str, &str)] = &[("CONVOY_TEST_KEY", KEY)];

/// A finished run of the script provider: `n` tasks, the odd ones with
/// commands full of quotes, backslashes, angle brackets and non-ASCII.
async fn script_run(n: usize) -> TestJob {
    let job = TestJob::new();
    let rows: Vec<Value> = (0..n)
        .map(|i| {
            let commands = if i % 2 == 0 {
                json!([format!("echo {i}")])
            } else {
                json!([
                    "printf '%s\\n' \"a \\\"quoted\\\" word\" > q.txt",
                    "cat q.txt | grep -c '<tag>' || echo 'naïve café \\\\ done'",
                ])
            };
            json!({"id": format!("s{i}"), "commands": commands, "answer": format!("answer {i}")})
        })
        .collect();
    job.tasks(&rows);
    job.manifest(&script_job("kind = \"local\"\nworkdir = \"work\"", ""));
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_errors_leave_an_existing_out_file_untouched() {
    let job = script_run(3).await;
    let precious = "{\"messages\": [\"an earlier export, 1 line\"]}\n";
    let file = job.write("sft.jsonl", precious);
    let cases: [(&[&str], &str); 5] = [
        (
            &["export", "out", "--only", "okk", "--out", "sft.jsonl"],
            "possible values: ok, failed, timeout, max_steps, context_limit, workspace_crash",
        ),
        (
            &["export", "missing-run", "--out", "sft.jsonl"],
            "run directory `missing-run` does not exist",
        ),
        (&["export", "tmp", "--out", "sft.jsonl"], "results.jsonl"),
        (
            &["export", "out", "--format", "alpaca", "--out", "sft.jsonl"],
            "possible values: openai, sharegpt",
        ),
        (
            &["export", "out", "--arguments", "dict", "--out", "sft.jsonl"],
            "possible values: string, object",
        ),
    ];
    for (args, says) in cases {
        let out = job.convoy(args, &[]).await;
        assert_eq!(out.status.code(), Some(2), "{args:?}: {}", stderr(&out));
        assert!(stderr(&out).contains(says), "{args:?}: {}", stderr(&out));
        assert_eq!(
            std::fs::read_to_string(&file).unwrap(),
            precious,
            "{args:?} touched the file"
        );
    }
    // A damaged journal (a bad line in the middle) is an error too.
    let traj = std::fs::read_to_string(job.path("out/trajectories.jsonl")).unwrap();
    std::fs::write(
        job.path("out/trajectories.jsonl"),
        format!("not json\n{traj}"),
    )
    .unwrap();
    let out = job
        .convoy(&["export", "out", "--out", "sft.jsonl"], &[])
        .await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    assert!(
        stderr(&out).contains("trajectories.jsonl:1:"),
        "{}",
        stderr(&out)
    );
    assert_eq!(std::fs::read_to_string(&file).unwrap(), precious);
    std::fs::write(job.path("out/trajectories.jsonl"), traj).unwrap();

    // Success replaces it whole, and leaves no temporary file behind.
    let out = job
        .convoy(&["export", "out", "--out", "sft.jsonl"], &[])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(read_jsonl(&file).len(), 3);
    let names: Vec<String> = std::fs::read_dir(job.dir.path())
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(names.is_empty(), "temporary files left: {names:?}");
}

/// A faithful copy of Qwen2.5-Instruct's chat template (tool calling part
/// included), as its tokenizer_config.json ships it.
const QWEN25: &str = r#"{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"#;

/// Renders one exported row as `apply_chat_template(messages, tools=tools)`
/// would.
fn render(row: &Value) -> String {
    let mut env = minijinja::Environment::new();
    env.add_template("qwen", QWEN25).unwrap();
    env.get_template("qwen")
        .unwrap()
        .render(minijinja::context! {
            messages => minijinja::Value::from_serialize(&row["messages"]),
            tools => minijinja::Value::from_serialize(&row["tools"]),
        })
        .unwrap()
}

/// The `{"name", "arguments"}` objects of the rendered `<tool_call>` blocks
/// after the system turn (whose tool instructions show an example block).
fn rendered_calls(text: &str) -> Vec<Value> {
    let body = &text[text.find("<|im_end|>\n").unwrap()..];
    body.split("<tool_call>\n")
        .skip(1)
        .map(|rest| {
            let block = &rest[..rest.find("\n</tool_call>").unwrap()];
            serde_json::from_str(block)
                .unwrap_or_else(|e| panic!("a rendered call is not JSON ({e}): {block}"))
        })
        .collect()
}

/// Each call of the row's assistant messages, as `{"name", "arguments"}`.
fn calls(row: &Value) -> Vec<Value> {
    row["messages"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(|m| m["tool_calls"].as_array())
        .flatten()
        .map(|c| json!({"name": c["function"]["name"], "arguments": c["function"]["arguments"]}))
        .collect()
}

/// A finished run against the fake server: text beside calls, parallel
/// calls, arguments that are not valid JSON, every conversation ending
/// with `finish`.
async fn http_run(llm: &FakeLlm) -> TestJob {
    let job = TestJob::new();
    let finish = json!({"content": null, "calls": [["finish", {"message": "all done"}]]});
    let conversations = [
        (
            "text-beside",
            json!([{"content": "I will list the files first.",
                    "calls": [["bash", {"command": "ls -la . && echo \"x > y\""}]]}, finish]),
        ),
        (
            "parallel",
            json!([{"content": "Two at once.",
                    "calls": [["bash", {"command": "echo 'a b' > f.txt"}],
                              ["bash", {"command": "cat f.txt; printf 'tab\\there\\n'"}]]},
                   finish]),
        ),
        (
            "broken-json",
            json!([{"content": null, "calls": [["bash", "{\"command\": \"ls\""]]}, finish]),
        ),
    ];
    job.tasks(
        &conversations
            .iter()
            .map(|(id, turns)| json!({"id": id, "script": script(turns.clone())}))
            .collect::<Vec<_>>(),
    );
    job.manifest(&http_manifest(llm, "", ""));
    let out = job.run(ENV).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    job
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_exported_row_renders_with_a_qwen25_template_with_arguments_once_unescaped() {
    let llm = FakeLlm::start().await;
    let jobs = [script_run(4).await, http_run(&llm).await];
    let (mut rows_checked, mut calls_checked) = (0, 0);
    for job in &jobs {
        let out = job
            .convoy(
                &[
                    "export",
                    "out",
                    "--arguments",
                    "object",
                    "--out",
                    "sft.jsonl",
                ],
                &[],
            )
            .await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let rows = read_jsonl(&job.path("sft.jsonl"));
        assert_eq!(rows.len(), job.results().len());
        for row in &rows {
            let text = render(row);
            let want = calls(row);
            assert_eq!(rendered_calls(&text), want, "{text}");
            for call in &want {
                let args = &call["arguments"];
                if args.is_string() {
                    // Not JSON at all: kept as the model wrote it.
                    assert_eq!(args, "{\"command\": \"ls\"");
                    continue;
                }
                assert!(args.is_object(), "{call}");
                // Once, as a JSON object after `"arguments": ` (not a JSON
                // string of one). Text with <>&' is skipped here only
                // because minijinja's tojson escapes those as \u003c etc.
                // (Hugging Face's does not); the parse above covers it.
                let literal = format!("\"arguments\": {args}");
                if !literal.contains(['<', '>', '&', '\'']) {
                    assert_eq!(text.matches(&literal).count(), 1, "{literal} in {text}");
                }
                calls_checked += 1;
            }
            // Tool results say which tool they answer.
            for m in row["messages"].as_array().unwrap() {
                if m["role"] == "tool" {
                    assert_eq!(m["name"], "bash", "{m}");
                }
            }
            rows_checked += 1;
        }
        // The default (strings, as OpenAI sends them) is what renders
        // double-encoded: the reason for --arguments object.
        let out = job
            .convoy(&["export", "out", "--out", "strings.jsonl"], &[])
            .await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let row = &read_jsonl(&job.path("strings.jsonl"))[0];
        let first = &rendered_calls(&render(row))[0];
        assert!(first["arguments"].is_string(), "{first}");
    }
    assert_eq!(rows_checked, 7);
    // 4 script tasks: 6 bash calls and 4 finish; http: 3 bash + 3 finish
    // (and 1 broken call, not counted).
    assert_eq!(calls_checked, 6 + 4 + 3 + 3);
    let text_beside = read_jsonl(&jobs[1].path("sft.jsonl"))
        .into_iter()
        .map(|r| render(&r))
        .find(|t| t.contains("I will list the files first."))
        .unwrap();
    assert!(
        text_beside.contains("<|im_start|>assistant\nI will list the files first.\n<tool_call>\n"),
        "{text_beside}"
    );
    // The stats line counts the broken call.
    let out = jobs[1]
        .convoy(&["export", "out", "--arguments", "object"], &[])
        .await;
    assert!(
        stderr(&out).contains("1 tool calls kept their arguments as a string"),
        "{}",
        stderr(&out)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sharegpt_rows_follow_llama_factory_rules() {
    let llm = FakeLlm::start().await;
    let job = http_run(&llm).await;
    let out = job
        .convoy(
            &["export", "out", "--format", "sharegpt", "--out", "sg.jsonl"],
            &[],
        )
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let rows = read_jsonl(&job.path("sg.jsonl"));
    assert_eq!(rows.len(), 3);
    for row in &rows {
        let keys: Vec<&String> = row.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["conversations", "system", "tools"]);
        assert_eq!(row["system"], "You are a test.");
        let tools: Value = serde_json::from_str(row["tools"].as_str().unwrap()).unwrap();
        let names: Vec<&str> = tools
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t["name"].as_str().unwrap())
            .collect();
        assert_eq!(names, ["bash", "finish"]);
        let turns = row["conversations"].as_array().unwrap();
        assert_eq!(turns.len() % 2, 0, "{row}");
        for (i, t) in turns.iter().enumerate() {
            let from = t["from"].as_str().unwrap();
            let allowed: &[&str] = if i % 2 == 0 {
                &["human", "observation"]
            } else {
                &["gpt", "function_call"]
            };
            assert!(allowed.contains(&from), "turn {i} is {from}: {row}");
            if from == "observation" {
                assert_eq!(t["name"].as_str().unwrap().split(',').next(), Some("bash"));
            }
        }
        // The last turn is the finish call, arguments as an object.
        let last = turns.last().unwrap()["value"].as_str().unwrap();
        let last: Value = serde_json::from_str(last).unwrap();
        assert_eq!(
            last,
            json!([{"name": "finish", "arguments": {"message": "all done"}}])
        );
    }
    let by_text = |needle: &str| {
        rows.iter()
            .flat_map(|r| r["conversations"].as_array().unwrap().clone())
            // Not the human turn: the fake server's script is the prompt.
            .find(|t| t["from"] != "human" && t["value"].as_str().unwrap().contains(needle))
            .unwrap()
    };
    let beside = by_text("I will list the files first.");
    assert_eq!(beside["from"], "function_call");
    let value = beside["value"].as_str().unwrap();
    let inner = value
        .strip_prefix("I will list the files first.\n<tool_call>")
        .and_then(|v| v.strip_suffix("</tool_call>"))
        .unwrap_or_else(|| panic!("{value}"));
    let inner: Value = serde_json::from_str(inner).unwrap();
    assert_eq!(
        inner[0]["arguments"]["command"],
        "ls -la . && echo \"x > y\""
    );
    let parallel = by_text("Two at once.");
    assert_eq!(parallel["from"], "function_call");
    let results = by_text("</tool_response>\n<tool_response>");
    assert_eq!(results["from"], "observation");
    assert_eq!(results["name"], "bash,bash");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_resumed_run_keeps_every_summary_in_summaries_jsonl() {
    let job = TestJob::new();
    job.tasks(
        &(0..5)
            .map(|i| json!({"id": format!("t{i}"), "commands": ["true"], "answer": "a"}))
            .collect::<Vec<_>>(),
    );
    job.manifest(&script_job("kind = \"local\"\nworkdir = \"work\"", ""));
    let out = job
        .convoy(&["run", "job.toml", "--out", "out", "--limit", "2"], &[])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let history = read_jsonl(&job.path("out/summaries.jsonl"));
    let figures: Vec<(u64, u64, u64)> = history
        .iter()
        .map(|s| {
            (
                s["total_tasks"].as_u64().unwrap(),
                s["done"].as_u64().unwrap(),
                s["skipped"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(figures, [(2, 2, 0), (5, 5, 2)]);
    // summary.json is the latest run's: the history's last line.
    assert_eq!(job.summary(), history[1]);
    assert_ne!(history[0]["started_at"], history[1]["started_at"]);
}

/// Names, sizes and modification times of the files in `dir`.
fn listing(dir: &std::path::Path) -> Vec<(String, u64, std::time::SystemTime)> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| {
            let e = e.unwrap();
            let m = e.metadata().unwrap();
            (
                e.file_name().to_string_lossy().into_owned(),
                m.len(),
                m.modified().unwrap(),
            )
        })
        .collect();
    files.sort();
    files
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn report_of_a_running_run_counts_done_and_in_flight_and_writes_nothing() {
    let job = TestJob::new();
    job.tasks(
        &(0..12)
            .map(|i| json!({"id": format!("t{i:02}"), "commands": ["sleep 1"], "answer": "a"}))
            .collect::<Vec<_>>(),
    );
    job.manifest(&script_job(
        "kind = \"local\"\nworkdir = \"work\"",
        "[run]\nworkers = 2\n",
    ));
    let mut run = job.spawn(convoy_bin(), &["run", "job.toml", "--out", "out"], &[]);
    let pid = run.id().unwrap().to_string();
    job.wait_for_results(2).await;
    let names = |l: Vec<(String, u64, std::time::SystemTime)>| -> Vec<String> {
        l.into_iter().map(|f| f.0).collect()
    };
    let before = names(listing(&job.path("out")));
    // The run's own progress is the event: ask until a report has seen
    // tasks in flight (between two of them, for an instant, none is).
    let mut live = None;
    for _ in 0..200 {
        let out = job.convoy(&["report", "out", "--json"], &[]).await;
        assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
        let r: Value = serde_json::from_slice(&out.stdout).unwrap();
        if r["state"] != "running" {
            break;
        }
        if r["in_flight"].as_u64().unwrap() > 0 {
            live = Some(r);
            break;
        }
    }
    let live = live.expect("no report saw the run with tasks in flight");
    assert_eq!(live["pid"], pid.as_str());
    assert_eq!(live["total_tasks"], 12);
    assert!(live["finished"].as_u64().unwrap() >= 2, "{live}");
    assert!(live["in_flight"].as_u64().unwrap() <= 2, "{live}");
    assert!(
        live["leaks"]["verdict"]
            .as_str()
            .unwrap()
            .starts_with("not known yet"),
        "{live}"
    );
    let out = job.convoy(&["report", "out"], &[]).await;
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("state: running (pid {pid}")),
        "{text}"
    );
    assert!(
        text.contains("of 12 (") && text.contains("; in flight: "),
        "{text}"
    );
    // Reporting added no file (only the run itself may, at its end).
    let after: Vec<String> = names(listing(&job.path("out")))
        .into_iter()
        .filter(|n| !n.starts_with("summar"))
        .collect();
    assert_eq!(after, before);

    let status = run.wait().await.unwrap();
    assert_eq!(status.code(), Some(0));
    let before = listing(&job.path("out"));
    let out = job.convoy(&["report", "out", "--json"], &[]).await;
    let done: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(done["state"], "finished");
    assert_eq!(
        (done["finished"].as_u64(), done["in_flight"].as_u64()),
        (Some(12), Some(0))
    );
    assert_eq!(done["leaks"]["verdict"], "clean");
    job.convoy(&["report", "out"], &[]).await;
    assert_eq!(
        listing(&job.path("out")),
        before,
        "report changed the run directory"
    );
    // On request, the chart goes where it is asked to.
    let out = job.convoy(&["report", "out", "--chart=fds.svg"], &[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert!(std::fs::read_to_string(job.path("fds.svg"))
        .unwrap()
        .contains("<polyline"));
    assert_eq!(listing(&job.path("out")), before);
}
