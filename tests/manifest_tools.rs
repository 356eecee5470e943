//! Tools defined in the manifest (`[[tools]]`, `agent.tools`) through the
//! real binary: calls with good and bad arguments on both workspaces (real
//! tmux, real HTTP to the fake endpoint), the schemas in every request and
//! trajectory, the order of `agent.tools`, load errors with file, line and
//! key, and a changed schema refusing resume.

mod support;

use serde_json::json;
use support::fake_llm::FakeLlm;
use support::{observations, script, script_job, stderr, TestJob, KEY};

/// Three tools: `view` reads a file, `count` counts its words (an array
/// argument), `slow` outlives its own timeout.
const TOOLS: &str = r#"
[[tools]]
name = "view"
description = "Print a file."
parameters = { type = "object", properties = { path = { type = "string", description = "File path" } }, required = ["path"] }
command = "cat {{ path | sh }}"
timeout = "20s"

[[tools]]
name = "count"
parameters = { type = "object", properties = { words = { type = "array", items = { type = "string" } } }, required = ["words"] }
command = "printf '%s\\n' {{ words | sh }} | wc -l"

[[tools]]
name = "slow"
description = "Takes its time."
command = "sleep 30"
timeout = "1s"
"#;

/// A job for the fake endpoint on `workspace` (the `[workspace]` keys),
/// with `rest` after it.
fn job_for(llm: &FakeLlm, workspace: &str, rest: &str) -> TestJob {
    let job = TestJob::new();
    job.manifest(&support::http_manifest_on(
        llm,
        "max_retries = 0",
        workspace,
        rest,
    ));
    job
}

/// Plays one conversation that calls each tool, well and badly, in
/// `dir` (made by `bash`, so a tool finding its file there proves it ran
/// in the same shell); checks what the model saw and what was recorded.
/// `names` is the order of the tools the requests must offer.
async fn tools_are_called_well_and_badly(llm: &FakeLlm, job: &TestJob, dir: &str, names: &[&str]) {
    let others: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
    let turns = json!([
        {"calls": [["bash", {"command": format!("mkdir -p {dir} && cd {dir} && printf 'hello\\n' > 'notes 1.txt'")}]]},
        {"calls": [["view", {"path": "notes 1.txt"}]]},
        {"calls": [
            ["view", {}],
            ["view", {"path": 3}],
            ["view", {"path": "notes 1.txt", "lines": 2}],
            ["python", {"code": "1"}]
        ]},
        {"calls": [["slow", {}]]},
        {"calls": [["count", {"words": ["a b", "it's", "$(id)"]}]]},
        {"calls": [["finish", {"message": "done"}]]}
    ]);
    job.tasks(&[json!({"id": "t1", "script": script(turns)})]);
    let out = job.run(&[("CONVOY_TEST_KEY", KEY)]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));

    let r = &job.results()[0];
    assert_eq!((&r["status"], &r["final"]), (&json!("ok"), &json!("done")));
    assert_eq!(r["usage"]["invalid_tool_calls"], 4, "{r}");
    assert_eq!(job.summary()["usage"]["invalid_tool_calls"], 4);
    let traj = job.trajectory("t1");
    let obs = observations(&traj);
    assert_eq!(obs[0], "");
    // The file bash wrote, read relative to bash's `cd`.
    assert_eq!(obs[1], "hello\n");
    assert_eq!(obs[2], "error: view: missing required argument `path`");
    assert_eq!(
        obs[3],
        "error: view: argument `path` must be a string, not a number (3)"
    );
    assert_eq!(
        obs[4],
        "error: view: unknown argument `lines` (known: path)"
    );
    let (init, last) = others.split_at(others.len() - 1);
    assert_eq!(
        obs[5],
        format!(
            "error: there is no tool `python`; the tools are {} and {}",
            init.join(", "),
            last[0]
        )
    );
    // The tool's own timeout, handled as bash's: C-c, and the shell lives on.
    assert!(
        obs[6].contains("[command timed out after 1s; interrupted with C-c"),
        "{}",
        obs[6]
    );
    // Three words, each one shell word: the space, quote and `$(...)` stay
    // inside their word.
    assert_eq!(obs[7].trim(), "3");
    assert_eq!(obs.len(), 8);

    // The schemas as given, in every request and in the trajectory.
    let tools = &traj["tools"];
    let offered: Vec<&str> = tools
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["function"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(offered, names);
    let view = tools
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["function"]["name"] == "view")
        .unwrap();
    assert_eq!(
        view,
        &json!({"type": "function", "function": {
            "name": "view",
            "description": "Print a file.",
            "parameters": {"type": "object",
                "properties": {"path": {"type": "string", "description": "File path"}},
                "required": ["path"]}
        }})
    );
    let requests = llm.requests();
    assert_eq!(requests.len(), 6);
    for req in &requests {
        assert_eq!(&req.body["tools"], tools);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_tools_run_in_the_session_and_bad_calls_are_answered_local() {
    let llm = FakeLlm::start().await;
    // agent.tools sets the order (and leaves `slow` last but one).
    let rest =
        format!("[agent]\ntools = [\"view\", \"count\", \"bash\", \"slow\", \"finish\"]\n{TOOLS}");
    let job = job_for(&llm, "kind = \"local\"\nworkdir = \"work\"", &rest);
    let names = ["view", "count", "bash", "slow", "finish"];
    tools_are_called_well_and_badly(&llm, &job, "sub", &names).await;
    assert_eq!(
        std::fs::read_to_string(job.path("work/sub/notes 1.txt")).unwrap(),
        "hello\n"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn manifest_tools_run_in_the_session_and_bad_calls_are_answered_docker() {
    support::ensure_workspace_image();
    let llm = FakeLlm::start().await;
    let workspace = format!(
        "kind = \"docker\"\nimage = \"{}\"\nnofile = 4096",
        support::WORKSPACE_IMAGE
    );
    let job = job_for(&llm, &workspace, TOOLS);
    // The default order: bash, every [[tools]] entry, finish.
    let names = ["bash", "view", "count", "slow", "finish"];
    tools_are_called_well_and_badly(&llm, &job, "/tmp/manifest-tools", &names).await;
    assert!(support::containers_of_run(&job.path("out")).is_empty());
}

/// `convoy validate` on BASE + `extra`: exit 2, and its one error line.
fn load_error(extra: &str) -> String {
    let job = TestJob::new();
    job.tasks(&[json!({"commands": [], "answer": "a"})]);
    job.write(
        "job.toml",
        &format!(
            "name = \"t\"\n[tasks]\nsource = \"tasks.jsonl\"\n[prompt]\nuser = \"go\"\n[llm]\nprovider = \"script\"\n[workspace]\nkind = \"local\"\n{extra}"
        ),
    );
    let out = std::process::Command::new(support::convoy_bin())
        .args(["validate", "job.toml"])
        .current_dir(job.dir.path())
        .env_remove("RUST_LOG")
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(2), "{err}");
    err
}

/// Lines 1-9 are the base; `[[tools]]` entries start at line 10.
const VIEW: &str = "[[tools]]\nname = \"view\"\nparameters = { type = \"object\", properties = { path = { type = \"string\" } } }\ncommand = \"cat {{ path | sh }}\"\n";

#[test]
fn a_duplicate_tool_name_is_refused_with_file_line_and_key() {
    assert_eq!(
        load_error(&format!("{VIEW}{VIEW}")),
        "error: invalid manifest `job.toml`: line 15, key `tools[1].name`: `view` is defined twice (also tools[0])"
    );
}

#[test]
fn an_invalid_tool_name_is_refused_with_file_line_and_key() {
    assert_eq!(
        load_error(&VIEW.replace("\"view\"", "\"view.file\"")),
        "error: invalid manifest `job.toml`: line 11, key `tools[0].name`: must be 1 to 64 letters, digits, '_' or '-' (a function name), found \"view.file\""
    );
    assert_eq!(
        load_error(&VIEW.replace("\"view\"", "\"finish\"")),
        "error: invalid manifest `job.toml`: line 11, key `tools[0].name`: `finish` is convoy's own tool; give yours another name"
    );
}

#[test]
fn an_unknown_name_in_agent_tools_is_refused_with_file_line_and_key() {
    assert_eq!(
        load_error(&format!("[agent]\ntools = [\"bash\", \"veiw\", \"finish\"]\n{VIEW}")),
        "error: invalid manifest `job.toml`: line 11, key `agent.tools`: `veiw` is not a tool (the tools are bash, finish, view)"
    );
}

#[test]
fn agent_tools_without_a_way_to_end_is_refused_with_file_line_and_key() {
    assert_eq!(
        load_error(&format!("[agent]\ntools = [\"view\", \"bash\"]\n{VIEW}")),
        "error: invalid manifest `job.toml`: line 11, key `agent.tools`: leaves the model no way to end: add \"finish\", or set agent.on_text = \"finish\" (a reply with only text is then the answer)"
    );
}

#[test]
fn parameters_that_are_not_an_object_schema_are_refused() {
    assert_eq!(
        load_error(&VIEW.replace("type = \"object\", ", "")),
        "error: invalid manifest `job.toml`: line 12, key `tools[0].parameters`: must be an object schema: type = \"object\""
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_tool_schema_refuses_resume_naming_part_tools() {
    let job = TestJob::new();
    job.tasks(&[
        json!({"id": "a", "commands": ["echo a"], "answer": "a"}),
        json!({"id": "b", "commands": ["echo b"], "answer": "b"}),
    ]);
    job.manifest(&script_job(
        "kind = \"local\"\nworkdir = \"work\"",
        &format!("[run]\nworkers = 1\n{VIEW}"),
    ));
    let out = job
        .convoy(&["run", "job.toml", "--out", "out", "--limit", "1"], &[])
        .await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let traj = job.trajectory("a");
    assert_eq!(traj["tools"][1]["function"]["name"], "view");

    let manifest = std::fs::read_to_string(job.path("job.toml")).unwrap();
    job.write(
        "job.toml",
        &manifest.replace("{ type = \"string\" }", "{ type = \"integer\" }"),
    );
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(2), "{}", stderr(&out));
    let err = stderr(&out);
    assert!(
        err.contains("part changed since it started (tools)"),
        "{err}"
    );
    // The same schema as before continues.
    job.write("job.toml", &manifest);
    let out = job.run(&[]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    assert_eq!(job.results().len(), 2);
}
