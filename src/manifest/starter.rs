//! The starter job `convoy init` writes: an annotated manifest and three
//! task rows that run offline as they are (script provider, local
//! workspace), with every other setting present and commented, so a new
//! user edits a working job instead of reading the whole reference first.
//!
//! Commented-out settings are written `#key = value` (no space after `#`),
//! prose comments `# text`: the tests uncomment every setting and check the
//! result still fits the schema, so this file cannot drift from it.

use std::io::Write;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// `job.toml` of the starter job.
pub const JOB_TOML: &str = r##"# A convoy job. Run it:        convoy run job.toml
# Check it without running:     convoy run job.toml --dry-run
# Durations are strings such as "30s", "10m". Unknown keys are errors.
# Lines starting with `#key = ...` are settings left at their default:
# remove the `#` to set one.
name = "starter"                 # letters, digits, - _ . ; the run directory is runs/{name}

[tasks]
source = "tasks.jsonl"           # .jsonl (one JSON object per line) or .csv (header = variable names)
id = "{{ name }}"                # each task's id, rendered from its row (default: the line number)
#repeat = 1                      # run each row N times; ids get "#1".."#N"

[prompt]
# Templates (minijinja); variables come from the task row. A variable the
# row does not have is an error, never "".
system = "You are a careful shell user. Use the bash tool, then call finish."
user = "{{ question }}"

[llm]
# "script" needs no model and no network: it plays each row's `commands`
# through the bash tool, then finishes with its `answer`. For a real model,
# set provider = "openai" and the three keys below it.
provider = "script"
#base_url = "http://127.0.0.1:8000/v1"   # requests go to {base_url}/chat/completions
# Instead of base_url, several servers (README, "Many model servers"); each entry may
# also set model, api_key_env, max_in_flight and role = "fallback":
#endpoints = [{ base_url = "http://gpu-a:8000/v1" }, { base_url = "http://gpu-b:8000/v1", weight = 2 }]
#sticky_wait = "2s"                      # a conversation moves off its endpoint after waiting this long for room
#model = "qwen2.5-7b-instruct"
#api_key_env = "OPENAI_API_KEY"          # the variable's NAME; the key never goes in a file
#timeout = "600s"                        # per request, a slow generation included
#connect_timeout = "10s"
#max_retries = 8                         # per request: 429, 408, 5xx, connection errors, timeouts
#max_in_flight = 256                     # requests in flight, whole job (each endpoint adapts its own limit under it)
#outage_after = 5                        # consecutive connection failures that mean "endpoint down"
#outage_timeout = "10m"                  # give up on an outage after this long (exit 4)
#requests_per_minute = 600               # rate caps for the whole job
#tokens_per_minute = 2000000
#max_total_tokens = 50000000             # budget: no new task once it would be passed
#max_cost = 25.0                         # budget in the unit of `price` (needs it)
#price = { prompt = 0.15, completion = 0.60 }   # per million tokens
#reserve_tokens_per_task = 20000         # held back per running task by the budgets
#temperature = 0.7
#top_p = 0.95
#max_tokens = 4096
#seed = 1
#logprobs = false                        # true: keep each reply's token logprobs (trajectories.jsonl, key `convoy`)
#top_logprobs = 5                        # with logprobs = true: the N likeliest alternatives per token, 0 to 20
#return_token_ids = false                # true: keep the prompt's and the reply's token ids (vLLM)
#tool_choice = "auto"                    # "auto", "required", "none", a tool_choice table, or "omit" (no field)
#send_reasoning_content = false          # true: reasoning_content goes back to the endpoint
#parallel_tool_calls = true
#extra_body = { reasoning_effort = "high" }     # merged into every request
#extra_headers = { "X-Team" = "data" }          # not Authorization: use api_key_env

[agent]
max_steps = 10                   # model turns per conversation (default 30)
#command_timeout = "120s"        # per shell command; the bash tool may ask for another
#max_observation_chars = 30000   # longer command output keeps its head and tail
#on_text = "continue"            # a reply with text and no tool call: "continue" or "finish" (the text is the answer)
#continue_prompt = "Continue. When you are done, call the `finish` tool with your answer."
#tools = ["view", "bash", "finish"]   # the tools offered, in this order (default: bash, every [[tools]] entry, finish)
#kind = "builtin"                # or "external": a program of your own runs each conversation (its own tools,
                                 # its own loop) and calls the model through convoy's gateway; needs `command`
#command = "python3 /opt/agent/run.py --task {{ id | sh }}"   # external only: rendered per task like the prompts,
                                 # run in the conversation's session (relative paths: from its working directory)

[workspace]
# "local": a private tmux server on this host. "docker": one shared
# container for the whole job (build its image once with
# scripts/build-workspace-image.sh), then the docker-only keys below apply.
kind = "local"
#workdir = "work"                # local: relative to this file (default: a fresh temp dir per run)
#env = { LANG = "C.UTF-8" }      # set in every session
#pass_env = ["HF_TOKEN"]         # of convoy's own variables, only these reach sessions (never the API key)
#isolation = "auto"              # docker: "auto" = each conversation its own uid if the container runs as root,
                                 # "user" = required, "none" = all as the container's user (tasks that need root);
                                 # local: sessions run as convoy's user ("auto" = "none", "user" is refused)
#session_pids = 1024             # most processes+threads of one conversation (user isolation)
#session_memory = "4g"           # most memory of one conversation's processes together (user isolation)
#image = "convoy-workspace:bookworm"            # docker only
#mounts = [{ host = "./repo", container = "/workspace", read_only = true }]   # docker only
#nofile = 65536                  # docker only: the container's open-files limit
#containers = 1                  # docker only: containers the conversations are spread over, or "auto" (see README, "A fleet of containers")
#sessions_per_container = 1500   # with containers = "auto": sessions per container (default: measured at boot, at most 256)
#engines = ["unix:///var/run/docker.sock", "tcp://builder-2:2376"]   # docker only: engines the containers are spread over (default: DOCKER_HOST or the local socket)
#keep = false                    # docker only: keep the container after the job
#channel = "helper"              # docker only: "helper" (fast) or "exec" (one docker exec per request)
#memory = "4g"                   # docker only
#cpus = 1.5                      # docker only
#pids_limit = 4096               # docker only
#network = "none"                # docker only: "bridge", "host", "none" or a network name
#user = "1000:1000"              # docker only

[run]
workers = 4                      # conversations in flight at once (default 128; --workers N)
#task_timeout = "30m"            # deadline of one attempt
#max_attempts = 2                # only errors are retried, not timeout or max_steps
#max_infra_retries = 5           # re-runs after the workspace failed under a task (not attempts)
#out = "runs/starter"            # run directory, relative to this file (--out DIR; default:
                                 # runs/starter under the current directory)
#grace = "30s"                   # after the first Ctrl-C, before in-flight tasks are cancelled

[monitor]
#interval = "5s"                 # samples into metrics.csv; also the cadence of plain progress lines
#on_leak = "warn"                # or "fail": exit 3 when a leak is detected

# Each conversation in a directory of its own, set up from its row, and a
# check afterwards that gives it a reward. Templates see the row's fields
# and `id`. To use them, remove the `#` of the table lines too.
#[environment]
#workdir = "tasks/{{ id }}"      # docker: absolute; local: under workspace.workdir (else the run's temp dir)
#seed = "repo"                   # a directory copied into the workdir first (local: relative to this file)
#files = { "task.md" = "{{ question }}" }   # written into the workdir (paths inside it)
#setup = ["git init -q"]         # run in the session before the first turn, in order
#setup_timeout = "5m"            # for all setup commands together
#keep = "never"                  # "never", "failed" or "always": keep the workdir after the task
#setup_user = "agent"            # or "root" (docker only)

#[verify]
#files = { "check.sh" = "test -s greeting.txt" }   # written after the agent ended: the model never sees them
#command = "bash check.sh"       # the check, run in the workdir after the agent ended
#timeout = "10m"
#reward = "exit_code"            # 1.0 when it exits 0, else 0.0; or "last_line": its last line as a number
#when = "finished"               # only tasks that ended ok; or "always"
#user = "agent"                  # or "root" (docker only)

# Tools of your own, offered next to bash and finish. A call's arguments
# are checked against `parameters` (a JSON schema) before anything runs,
# then fill in `command`, which runs in the conversation's shell like a
# bash call; `sh` shell-quotes a value. To add one, remove the `#` of the
# table line too; repeat the table for more.
#[[tools]]
#name = "view"                   # a function name: letters, digits, _ and -
#description = "Print a file with line numbers."
#parameters = { type = "object", properties = { path = { type = "string", description = "File path" } }, required = ["path"] }
#command = "nl -ba {{ path | sh }}"
#timeout = "30s"                 # default: agent.command_timeout
"##;

/// `tasks.jsonl` of the starter job: what the script provider plays.
pub const TASKS_JSONL: &str = r#"{"name": "hello", "question": "Write a greeting to a file and read it back.", "commands": ["echo 'hello from convoy' > greeting.txt", "cat greeting.txt"], "answer": "greeting.txt says: hello from convoy"}
{"name": "count", "question": "How many lines does a three-line file have?", "commands": ["printf 'a\\nb\\nc\\n' > three.txt && wc -l < three.txt"], "answer": "3"}
{"name": "shell-state", "question": "Show that the shell keeps its directory and variables between commands.", "commands": ["mkdir -p sub && cd sub && export SEEN=yes", "echo \"$SEEN in $(basename \"$PWD\")\""], "answer": "yes in sub"}
"#;

#[derive(Debug, Error)]
pub enum StarterError {
    #[error("`{}` already exists; convoy init never overwrites a file (choose another directory or move it away)", .0.display())]
    Exists(PathBuf),
    #[error("cannot write `{}`: {source}", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Writes the starter job into `dir` (created if missing) and returns the
/// files written. Refuses, writing nothing, if either file exists.
pub fn write_starter(dir: &Path) -> Result<Vec<PathBuf>, StarterError> {
    let files = [
        (dir.join("job.toml"), JOB_TOML),
        (dir.join("tasks.jsonl"), TASKS_JSONL),
    ];
    if let Some((path, _)) = files.iter().find(|(p, _)| p.exists()) {
        return Err(StarterError::Exists(path.clone()));
    }
    let io = |path: &Path| {
        let path = path.to_path_buf();
        move |source| StarterError::Write { path, source }
    };
    std::fs::create_dir_all(dir).map_err(io(dir))?;
    for (path, text) in &files {
        // create_new: a file that appeared since the check is not clobbered.
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(path)
            .map_err(|e| match e.kind() {
                std::io::ErrorKind::AlreadyExists => StarterError::Exists(path.clone()),
                _ => io(path)(e),
            })?;
        f.write_all(text.as_bytes()).map_err(io(path))?;
    }
    Ok(files.into_iter().map(|(p, _)| p).collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::Manifest;

    /// The starter with every `#key = value` and `#[table]` line
    /// uncommented.
    fn uncommented() -> String {
        JOB_TOML
            .lines()
            .map(|l| match l.strip_prefix('#') {
                Some(rest) if rest.starts_with(|c: char| c.is_ascii_lowercase() || c == '[') => {
                    rest
                }
                _ => l,
            })
            .map(|l| format!("{l}\n"))
            .collect()
    }

    #[test]
    fn every_commented_setting_fits_the_schema() {
        // Uncomment every setting: the manifest must still parse (no
        // unknown key, every value of the right type).
        let all = uncommented();
        let uncommented = JOB_TOML
            .lines()
            .filter(|l| l.starts_with("#") && !l.starts_with("# "))
            .count();
        assert!(uncommented > 40, "only {uncommented} settings found");
        let m: Manifest = toml::from_str(&all).unwrap_or_else(|e| panic!("{e}\n{all}"));
        assert_eq!(m.llm.max_retries, 8);
        assert_eq!(m.workspace.mounts.len(), 1);
        assert_eq!(m.tools.len(), 1);
        assert_eq!(
            crate::manifest::offered_tools(&m),
            ["view", "bash", "finish"]
        );
        // Each commented value is the documented default where there is one.
        let d: Manifest = toml::from_str(JOB_TOML).unwrap();
        assert_eq!(d.llm.timeout, m.llm.timeout);
        assert_eq!(d.agent.command_timeout, m.agent.command_timeout);
        assert_eq!(d.run.task_timeout, m.run.task_timeout);
        assert_eq!(d.monitor.interval, m.monitor.interval);
        assert_eq!(d.workspace.nofile, m.workspace.nofile);
        assert_eq!(d.workspace.isolation, m.workspace.isolation);
        assert_eq!(d.workspace.session_pids, m.workspace.session_pids);
        assert_eq!(d.workspace.session_memory, m.workspace.session_memory);
    }

    /// Every key of every table, as serde's own "unknown field" error
    /// lists them, appears in the starter (set or commented): a key added
    /// to the schema must be added here too.
    #[test]
    fn every_key_of_the_schema_is_in_the_starter() {
        let all = uncommented();
        let fields_of = |table: &str| -> Vec<String> {
            let text = match table {
                "" => format!("zzz_unknown = 1\n{all}"),
                "tools" => all.replace("[[tools]]\n", "[[tools]]\nzzz_unknown = 1\n"),
                t => all.replace(&format!("[{t}]\n"), &format!("[{t}]\nzzz_unknown = 1\n")),
            };
            let err = toml::from_str::<Manifest>(&text).unwrap_err().to_string();
            let list = err
                .split("expected one of ")
                .nth(1)
                .or_else(|| err.split("expected ").nth(1))
                .unwrap_or_else(|| panic!("{table}: {err}"));
            list.split(", ")
                .flat_map(|f| f.split(" or "))
                .map(|f| {
                    f.trim()
                        .trim_matches(|c: char| c == '`' || c.is_whitespace())
                        .to_string()
                })
                .filter(|f| !f.is_empty())
                .collect()
        };
        for table in [
            "",
            "tasks",
            "prompt",
            "llm",
            "agent",
            "workspace",
            "run",
            "monitor",
            "environment",
            "verify",
            "tools",
        ] {
            let fields = fields_of(table);
            assert!(!fields.is_empty(), "{table}");
            for field in fields {
                let written = JOB_TOML.lines().any(|l| {
                    let l = l.strip_prefix('#').unwrap_or(l);
                    l.starts_with(&format!("{field} "))
                        || l.starts_with(&format!("[{field}]"))
                        || l.starts_with(&format!("[[{field}]]"))
                });
                assert!(written, "`{table}.{field}` is not in the starter job.toml");
            }
        }
    }

    #[test]
    fn refuses_to_overwrite_and_writes_nothing_then() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("tasks.jsonl"), "mine\n").unwrap();
        let err = write_starter(d.path()).unwrap_err().to_string();
        assert!(err.contains("tasks.jsonl` already exists"), "{err}");
        assert!(!d.path().join("job.toml").exists());
        assert_eq!(
            std::fs::read_to_string(d.path().join("tasks.jsonl")).unwrap(),
            "mine\n"
        );
    }
}
