//! The plan at a glance, before anything runs: what `convoy validate`
//! (`--json`) and `convoy run --dry-run` print. How many tasks, which ids,
//! what the first prompt looks like once rendered, where the commands run,
//! which model answers and with which tools; with `[environment]` and `[verify]`, the first
//! task's rendered workdir, files, setup and check.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::manifest::{Job, Provider, WorkspaceKind};
use crate::tasks::{Task, TaskEnv, TaskVerify};

#[derive(Debug, Clone, Serialize)]
pub struct PlanSummary {
    /// The manifest as given (`-` for stdin).
    pub manifest: String,
    pub name: String,
    pub tasks: usize,
    pub first_id: Option<String>,
    pub last_id: Option<String>,
    /// The first task's rendered prompts.
    pub first_prompt: Option<FirstPrompt>,
    /// The first task's rendered `[environment]`, when the job has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_environment: Option<EnvironmentView>,
    /// The first task's rendered `[verify]`, when the job has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_verify: Option<VerifyView>,
    /// The first task's rendered external agent command
    /// (`agent.kind = "external"`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub first_agent_command: Option<String>,
    pub workspace: WorkspaceView,
    pub endpoint: EndpointView,
    /// The token data asked for and kept per assistant turn
    /// (`llm.logprobs`, `top_logprobs`, `return_token_ids`), e.g.
    /// `["logprobs", "top_logprobs 5", "token_ids"]`.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub token_data: Vec<String>,
    /// The tools the model is offered, in order.
    pub tools: Vec<String>,
    pub workers: u32,
    /// The run directory `convoy run` would write (when known).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub run_dir: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct FirstPrompt {
    pub system: Option<String>,
    pub user: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EnvironmentView {
    pub workdir: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub seed: Option<String>,
    pub files: Vec<FileView>,
    pub setup: Vec<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct VerifyView {
    pub command: String,
    pub files: Vec<FileView>,
}

/// A file as written into a workdir: its path and size, not its content
/// (a hidden check file is the answer key).
#[derive(Debug, Clone, Serialize)]
pub struct FileView {
    pub path: String,
    pub bytes: usize,
}

fn file_views(files: &[(String, String)]) -> Vec<FileView> {
    files
        .iter()
        .map(|(path, content)| FileView {
            path: path.clone(),
            bytes: content.len(),
        })
        .collect()
}

impl From<&TaskEnv> for EnvironmentView {
    fn from(e: &TaskEnv) -> Self {
        EnvironmentView {
            workdir: e.workdir.clone(),
            seed: e.seed.clone(),
            files: file_views(&e.files),
            setup: e.setup.clone(),
        }
    }
}

impl From<&TaskVerify> for VerifyView {
    fn from(v: &TaskVerify) -> Self {
        VerifyView {
            command: v.command.clone(),
            files: file_views(&v.files),
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct WorkspaceView {
    /// `docker` or `local`, as the manifest spells it.
    pub kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub workdir: Option<String>,
    /// `auto`, `user` or `none`, as the manifest says (on `local`, `auto`
    /// means `none`).
    pub isolation: String,
    /// Most processes one conversation may have at once (user isolation).
    pub session_pids: u64,
    /// Most memory one conversation may hold, as written ("4g").
    pub session_memory: String,
}

#[derive(Debug, Clone, Serialize)]
pub struct EndpointView {
    /// `openai` or `script`.
    pub provider: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub base_url: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub model: Option<String>,
    /// The variable the API key is read from (never the key).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub api_key_env: Option<String>,
    /// With `llm.endpoints`: one line per server.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub servers: Vec<String>,
}

/// One server of `llm.endpoints`, in one line.
fn server_line(e: &crate::manifest::Endpoint) -> String {
    let mut line = format!("{}/chat/completions, model {}", e.base_url, e.model);
    if let Some(k) = &e.api_key_env {
        let _ = write!(line, ", key from ${k}");
    }
    let _ = write!(
        line,
        ", weight {}, max_in_flight {}",
        e.weight, e.max_in_flight
    );
    if e.role == crate::manifest::Role::Fallback {
        line.push_str(", fallback");
    }
    line
}

/// A unit enum's name as the manifest spells it (its serde name), so
/// messages never show Rust's `Local` for the user's `local`.
fn spelled<T: Serialize>(v: &T) -> String {
    serde_json::to_value(v)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .unwrap_or_default()
}

impl PlanSummary {
    pub fn new(job: &Job, plan: &[Task], run_dir: Option<&Path>) -> PlanSummary {
        let m = &job.manifest;
        let ws = &m.workspace;
        let docker = ws.kind == WorkspaceKind::Docker;
        let openai = m.llm.provider == Provider::Openai;
        PlanSummary {
            manifest: job.path.display().to_string(),
            name: m.name.clone(),
            tasks: plan.len(),
            first_id: plan.first().map(|t| t.id.clone()),
            last_id: plan.last().map(|t| t.id.clone()),
            first_prompt: plan.first().map(|t| FirstPrompt {
                system: t.system.clone(),
                user: t.user.clone(),
            }),
            first_environment: plan.first().and_then(|t| t.env.as_ref()).map(Into::into),
            first_verify: plan.first().and_then(|t| t.verify.as_ref()).map(Into::into),
            first_agent_command: plan.first().and_then(|t| t.agent_command.clone()),
            workspace: WorkspaceView {
                kind: spelled(&ws.kind),
                image: docker.then(|| ws.image.clone()),
                workdir: ws.workdir.clone(),
                isolation: spelled(&ws.isolation),
                session_pids: ws.session_pids,
                session_memory: ws.session_memory.clone(),
            },
            endpoint: EndpointView {
                provider: spelled(&m.llm.provider),
                base_url: m.llm.base_url.clone().filter(|_| openai),
                model: m.llm.model.clone().filter(|_| openai),
                api_key_env: m.llm.api_key_env.clone().filter(|_| openai),
                servers: if m.llm.endpoints.is_empty() {
                    Vec::new()
                } else {
                    m.llm.endpoints().iter().map(server_line).collect()
                },
            },
            token_data: token_data(&m.llm).filter(|_| openai).collect(),
            // An external agent brings its own.
            tools: match m.agent.kind {
                crate::manifest::AgentKind::External => Vec::new(),
                crate::manifest::AgentKind::Builtin => crate::manifest::offered_tools(m),
            },
            workers: m.run.workers,
            run_dir: run_dir.map(|d| d.display().to_string()),
        }
    }

    /// `validate`'s one line: valid, how many tasks, which ids, where.
    pub fn one_line(&self) -> String {
        format!(
            "{}: valid; {} tasks (first `{}`, last `{}`), workspace {}",
            self.manifest,
            self.tasks,
            self.first_id.as_deref().unwrap_or(""),
            self.last_id.as_deref().unwrap_or(""),
            self.workspace.kind
        )
    }

    /// What `validate` prints: its one line, then the first task's
    /// environment and check, if the job has them.
    pub fn validated(&self) -> String {
        format!("{}\n{}", self.one_line(), self.environment_text())
    }

    /// The first task's rendered environment and check, a line each
    /// (empty without `[environment]` and `[verify]`).
    fn environment_text(&self) -> String {
        let mut s = String::new();
        let id = self.first_id.as_deref().unwrap_or("");
        let files = |files: &[FileView]| {
            let list: Vec<String> = files
                .iter()
                .map(|f| format!("{} ({} bytes)", f.path, f.bytes))
                .collect();
            list.join(", ")
        };
        if let Some(e) = &self.first_environment {
            let _ = writeln!(s, "environment of the first task (`{id}`):");
            let _ = writeln!(s, "  workdir:   {}", e.workdir);
            if let Some(seed) = &e.seed {
                let _ = writeln!(s, "  seed:      {seed}");
            }
            if !e.files.is_empty() {
                let _ = writeln!(s, "  files:     {}", files(&e.files));
            }
            for (i, command) in e.setup.iter().enumerate() {
                let label = if i == 0 { "setup:" } else { "" };
                let _ = writeln!(s, "  {label:<10} {}", one_line_of(command));
            }
        }
        if let Some(c) = &self.first_agent_command {
            let _ = writeln!(s, "external agent of the first task (`{id}`):");
            let _ = writeln!(s, "  command:   {}", one_line_of(c));
        }
        if let Some(v) = &self.first_verify {
            let _ = writeln!(s, "verification of the first task (`{id}`):");
            let _ = writeln!(s, "  command:   {}", one_line_of(&v.command));
            if !v.files.is_empty() {
                let _ = writeln!(
                    s,
                    "  files:     {} (hidden from the model)",
                    files(&v.files)
                );
            }
        }
        s
    }

    /// The dry run's description of the plan, for people.
    pub fn render(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "plan of `{}` (job `{}`):", self.manifest, self.name);
        let _ = writeln!(
            s,
            "  tasks:     {} (first `{}`, last `{}`)",
            self.tasks,
            self.first_id.as_deref().unwrap_or(""),
            self.last_id.as_deref().unwrap_or("")
        );
        let ws = &self.workspace;
        let mut where_ = ws.kind.clone();
        if let Some(image) = &ws.image {
            let _ = write!(where_, ", image {image}");
        }
        if let Some(dir) = &ws.workdir {
            let _ = write!(where_, ", workdir {dir}");
        }
        let _ = writeln!(s, "  workspace: {where_}");
        let _ = writeln!(s, "  isolation: {}", ws.isolation_words());
        let e = &self.endpoint;
        let endpoint = match (&e.base_url, &e.model) {
            (Some(url), Some(model)) => format!(
                "{url}/chat/completions, model {model}{}",
                e.api_key_env
                    .as_ref()
                    .map_or(String::new(), |k| format!(", key from ${k}"))
            ),
            _ => format!("{} provider (no network)", e.provider),
        };
        if e.servers.is_empty() {
            let _ = writeln!(s, "  endpoint:  {endpoint}");
        } else {
            let _ = writeln!(s, "  endpoints: {} servers", e.servers.len());
            for line in &e.servers {
                let _ = writeln!(s, "    {line}");
            }
        }
        if !self.token_data.is_empty() {
            let _ = writeln!(
                s,
                "  keeps:     {} per assistant turn (`convoy` in trajectories.jsonl)",
                self.token_data.join(", ")
            );
        }
        match &self.first_agent_command {
            Some(c) => {
                let _ = writeln!(s, "  agent:     external: {}", one_line_of(c));
            }
            None => {
                let _ = writeln!(s, "  tools:     {}", self.tools.join(", "));
            }
        }
        let _ = writeln!(s, "  workers:   {}", self.workers);
        if let Some(dir) = &self.run_dir {
            let _ = writeln!(s, "  run dir:   {dir}");
        }
        if let (Some(p), Some(id)) = (&self.first_prompt, &self.first_id) {
            let _ = writeln!(s, "first prompt (task `{id}`):");
            if let Some(system) = &p.system {
                let _ = writeln!(s, "  [system]\n{}", indent(system));
            }
            let _ = writeln!(s, "  [user]\n{}", indent(&p.user));
        }
        s.push_str(&self.environment_text());
        s
    }
}

impl WorkspaceView {
    /// What the isolation setting means here, in one line.
    fn isolation_words(&self) -> String {
        let limits = format!(
            "at most {} processes and {} of memory each",
            self.session_pids, self.session_memory
        );
        match (self.kind.as_str(), self.isolation.as_str()) {
            ("local", _) => "none (local: every session runs as convoy's own user)".to_string(),
            (_, "auto") => {
                format!(
                    "auto (each conversation its own uid if the container runs as root; {limits})"
                )
            }
            (_, "user") => format!("user (each conversation its own uid; {limits})"),
            (_, other) => format!("{other} (every session as the container's user)"),
        }
    }
}

/// The token options the manifest sets, as the plan names them.
fn token_data(llm: &crate::manifest::LlmSpec) -> impl Iterator<Item = String> {
    let logprobs = llm.logprobs.then(|| "logprobs".to_string());
    let top = llm
        .top_logprobs
        .filter(|_| llm.logprobs)
        .map(|n| format!("top_logprobs {n}"));
    let ids = llm.return_token_ids.then(|| "token_ids".to_string());
    [logprobs, top, ids].into_iter().flatten()
}

/// A command on one line: a multi-line one shows its first line and how
/// many more there are.
fn one_line_of(command: &str) -> String {
    let mut lines = command.trim().lines();
    let first = lines.next().unwrap_or("");
    match lines.count() {
        0 => first.to_string(),
        n => format!("{first} (+{n} more lines)"),
    }
}

fn indent(text: &str) -> String {
    text.trim_end()
        .lines()
        .map(|l| format!("    {l}"))
        .collect::<Vec<_>>()
        .join("\n")
}
