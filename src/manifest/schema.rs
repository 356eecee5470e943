//! The manifest schema. Each struct is one TOML table; `Default` holds every
//! default value, so the reference in README.md and the code agree.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

pub use super::environment::{
    EnvironmentSpec, FileTemplates, Keep, RewardRule, RunAs, VerifySpec, VerifyWhen,
};
pub use super::run_spec::{MonitorSpec, OnLeak, RunSpec};
pub use super::tools::{offered_tools, ToolSpec, BUILTIN_TOOLS};

/// How conversations are kept apart in the workspace: the helper's own
/// enum, so the manifest and `convoy shim --isolation` take the same words.
pub use crate::workspace::channel::Isolation;

/// A whole job manifest, as parsed. Paths are still relative to the manifest
/// file; `Job` (in `load`) resolves them.
#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// Job name: labels, default run directory, summary.
    pub name: String,
    pub tasks: TasksSpec,
    pub prompt: PromptSpec,
    pub llm: LlmSpec,
    #[serde(default)]
    pub agent: AgentSpec,
    #[serde(default)]
    pub workspace: WorkspaceSpec,
    #[serde(default)]
    pub run: RunSpec,
    #[serde(default)]
    pub monitor: MonitorSpec,
    /// Each conversation's own directory, files and setup (`[environment]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environment: Option<EnvironmentSpec>,
    /// The check after the agent and its reward (`[verify]`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub verify: Option<VerifySpec>,
    /// Tools of the job's own (`[[tools]]`), offered next to `bash` and
    /// `finish`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tools: Vec<ToolSpec>,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct TasksSpec {
    /// Task rows: `.jsonl` (one JSON object per line) or `.csv` (header row
    /// names the variables), relative to the manifest.
    pub source: PathBuf,
    /// Template for each task's id, rendered with the row's variables.
    /// Default: the row's line number in the source.
    #[serde(default)]
    pub id: Option<String>,
    /// Run every row this many times; ids get a `#k` suffix (k = 1..=N).
    #[serde(default = "one")]
    pub repeat: u32,
}

fn one() -> u32 {
    1
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct PromptSpec {
    /// System message template (optional).
    #[serde(default)]
    pub system: Option<String>,
    /// First user message template. Variables come from the task row; an
    /// undefined variable is an error, never "".
    pub user: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Provider {
    /// An OpenAI-compatible Chat Completions endpoint.
    #[default]
    Openai,
    /// No network: plays each task row's `commands` (a list of shell
    /// commands), then its `answer`. For smoke jobs and CI.
    Script,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct LlmSpec {
    #[serde(default)]
    pub provider: Provider,
    /// Endpoint root, e.g. `http://127.0.0.1:8000/v1`; convoy posts to
    /// `{base_url}/chat/completions`. For `openai`, this or `endpoints`.
    #[serde(default)]
    pub base_url: Option<String>,
    /// Several servers for one job (see `endpoints`): conversations are
    /// spread over them and stay on theirs.
    #[serde(default)]
    pub endpoints: Vec<super::EndpointSpec>,
    /// How long a conversation waits for room on its endpoint before it
    /// moves to one with room (and stays there).
    #[serde(default = "LlmSpec::default_sticky_wait", with = "humantime_serde")]
    pub sticky_wait: Duration,
    /// Model name sent with every request. Required for `openai`.
    #[serde(default)]
    pub model: Option<String>,
    /// Name of the environment variable holding the API key. The key itself
    /// never goes in a manifest and is never written anywhere.
    #[serde(default)]
    pub api_key_env: Option<String>,
    /// Per-request timeout (whole request, including a slow generation).
    #[serde(default = "LlmSpec::default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default = "LlmSpec::default_connect_timeout", with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Retries of one request on 429, 408, 5xx, connection errors, timeouts.
    #[serde(default = "LlmSpec::default_max_retries")]
    pub max_retries: u32,
    /// Most requests in flight at once, for the whole job (and each
    /// endpoint's ceiling unless it sets its own).
    #[serde(default = "LlmSpec::default_max_in_flight")]
    pub max_in_flight: u32,
    /// Consecutive connection failures (across all conversations) after
    /// which the endpoint counts as down: dispatching stops and convoy
    /// probes it until it answers.
    #[serde(default = "LlmSpec::default_outage_after")]
    pub outage_after: u32,
    /// How long an outage may last before the job gives up (exit 4; results
    /// so far are kept).
    #[serde(default = "LlmSpec::default_outage_timeout", with = "humantime_serde")]
    pub outage_timeout: Duration,
    /// Optional request rate cap for the whole job (token bucket).
    #[serde(default)]
    pub requests_per_minute: Option<u32>,
    /// Optional token rate cap for the whole job (token bucket, charged
    /// with each reply's `usage.total_tokens`).
    #[serde(default)]
    pub tokens_per_minute: Option<u64>,
    /// Token budget for the job: no new task starts once the tokens used
    /// plus a reserve per running task would pass it.
    #[serde(default)]
    pub max_total_tokens: Option<u64>,
    /// Cost budget for the job, in the unit of `llm.price` (needs it).
    #[serde(default)]
    pub max_cost: Option<f64>,
    /// Prices per million tokens, for `max_cost` and the reported cost.
    #[serde(default)]
    pub price: Option<Price>,
    /// Tokens held back per running task when checking the budgets. Default:
    /// the mean tokens of the tasks finished so far.
    #[serde(default)]
    pub reserve_tokens_per_task: Option<u64>,
    #[serde(default)]
    pub temperature: Option<f64>,
    #[serde(default)]
    pub top_p: Option<f64>,
    #[serde(default)]
    pub max_tokens: Option<u32>,
    #[serde(default)]
    pub seed: Option<i64>,
    /// Ask for the log-probability of each token the model produced
    /// (`logprobs: true`); kept per assistant turn in the trajectory
    /// record, under `convoy`, never in `messages`.
    #[serde(default)]
    pub logprobs: bool,
    /// With `logprobs`: the N most likely alternatives at each token (0 to
    /// 20, as OpenAI allows).
    #[serde(default)]
    pub top_logprobs: Option<u8>,
    /// Ask the server for the token ids of the prompt and of the reply
    /// (vLLM's `return_token_ids`), kept like `logprobs`.
    #[serde(default)]
    pub return_token_ids: bool,
    /// `"auto"`, `"required"`, `"none"` or an OpenAI tool_choice object;
    /// `"omit"` sends no `tool_choice` (for a server that rejects the
    /// field). Not set: `"auto"`.
    #[serde(default)]
    pub tool_choice: Option<serde_json::Value>,
    #[serde(default)]
    pub parallel_tool_calls: Option<bool>,
    /// Send each assistant message's `reasoning_content` back, for
    /// endpoints that want it (interleaved thinking). Default: it stays in
    /// the trajectory only, as most endpoints reject it.
    #[serde(default)]
    pub send_reasoning_content: bool,
    /// More fields for the request body, as given (e.g.
    /// `reasoning_effort = "high"`). They cannot replace `model`,
    /// `messages`, `tools` or `stream`.
    #[serde(default)]
    pub extra_body: BTreeMap<String, serde_json::Value>,
    /// More HTTP headers for every request. Not `Authorization`: the key
    /// comes from `api_key_env` and never sits in a manifest.
    #[serde(default)]
    pub extra_headers: BTreeMap<String, String>,
}

/// Prices per million tokens.
#[derive(Debug, Clone, Copy, Deserialize, Serialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub prompt: f64,
    pub completion: f64,
}

impl Price {
    pub fn cost(&self, prompt_tokens: u64, completion_tokens: u64) -> f64 {
        (prompt_tokens as f64 * self.prompt + completion_tokens as f64 * self.completion) / 1e6
    }
}

impl LlmSpec {
    fn default_timeout() -> Duration {
        Duration::from_secs(600)
    }
    fn default_connect_timeout() -> Duration {
        Duration::from_secs(10)
    }
    fn default_max_retries() -> u32 {
        8
    }
    fn default_sticky_wait() -> Duration {
        Duration::from_secs(2)
    }
    fn default_max_in_flight() -> u32 {
        256
    }
    fn default_outage_after() -> u32 {
        5
    }
    fn default_outage_timeout() -> Duration {
        Duration::from_secs(600)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct AgentSpec {
    /// Most model turns per conversation; reaching it ends the task with
    /// status `max_steps`.
    #[serde(default = "AgentSpec::default_max_steps")]
    pub max_steps: u32,
    /// Default time limit of one shell command (the `bash` tool may ask for
    /// another).
    #[serde(
        default = "AgentSpec::default_command_timeout",
        with = "humantime_serde"
    )]
    pub command_timeout: Duration,
    /// Longer observations keep their head and tail and say how much was cut.
    #[serde(default = "AgentSpec::default_max_observation_chars")]
    pub max_observation_chars: u32,
    /// A reply with text and no tool call: `continue` asks the model to go
    /// on (`continue_prompt`), `finish` takes the text as the answer.
    #[serde(default)]
    pub on_text: OnText,
    /// The user message that answers a text-only reply (`on_text =
    /// "continue"`).
    #[serde(default = "AgentSpec::default_continue_prompt")]
    pub continue_prompt: String,
    /// The tools the model is offered, in this order: `bash`, `finish`
    /// and names of `[[tools]]`. Default: `bash`, every `[[tools]]` entry,
    /// `finish`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tools: Option<Vec<String>>,
    /// Whose agent runs each conversation: convoy's own, or the job's
    /// (`command`, talking to the model through the gateway).
    #[serde(default, skip_serializing_if = "AgentKind::is_builtin")]
    pub kind: AgentKind,
    /// The external agent's command, rendered per task (the row's fields
    /// and `id`); it runs in the conversation's session.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<String>,
}

/// Whose agent runs the conversations.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum AgentKind {
    /// convoy's agent: its tools, its loop.
    #[default]
    Builtin,
    /// The job's own program (`agent.command`), through the gateway.
    External,
}

impl AgentKind {
    fn is_builtin(&self) -> bool {
        *self == AgentKind::Builtin
    }
}

/// What a reply with text and no tool call means.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum OnText {
    /// The text stays in the trajectory; a user message asks the model to
    /// call a tool or `finish`, within `max_steps` (as agent evaluation
    /// harnesses do).
    #[default]
    Continue,
    /// The text is the final answer.
    Finish,
}

impl AgentSpec {
    fn default_max_steps() -> u32 {
        30
    }
    fn default_command_timeout() -> Duration {
        Duration::from_secs(120)
    }
    fn default_max_observation_chars() -> u32 {
        30_000
    }
    fn default_continue_prompt() -> String {
        "Continue. When you are done, call the `finish` tool with your answer.".to_string()
    }
}

impl Default for AgentSpec {
    fn default() -> Self {
        AgentSpec {
            max_steps: Self::default_max_steps(),
            command_timeout: Self::default_command_timeout(),
            max_observation_chars: Self::default_max_observation_chars(),
            on_text: OnText::default(),
            continue_prompt: Self::default_continue_prompt(),
            tools: None,
            kind: AgentKind::Builtin,
            command: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum WorkspaceKind {
    /// One shared Docker container.
    #[default]
    Docker,
    /// A private tmux server on this host.
    Local,
}

/// How requests reach tmux in a Docker workspace.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// The workspace helper in one long-lived exec (fast).
    #[default]
    Helper,
    /// One `docker exec` per request: for images the helper cannot run in,
    /// and as the benchmark's baseline.
    Exec,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct Mount {
    /// Host path, relative to the manifest.
    pub host: PathBuf,
    /// Absolute path inside the container.
    pub container: String,
    #[serde(default)]
    pub read_only: bool,
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkspaceSpec {
    #[serde(default)]
    pub kind: WorkspaceKind,
    /// Docker image (must exist locally).
    #[serde(default = "WorkspaceSpec::default_image")]
    pub image: String,
    /// Directory every session starts in. For `local`, relative to the
    /// manifest; default: a fresh temporary directory of the run.
    #[serde(default)]
    pub workdir: Option<String>,
    /// Bind mounts (docker only).
    #[serde(default)]
    pub mounts: Vec<Mount>,
    /// Open-files limit of the container (docker only).
    #[serde(default = "WorkspaceSpec::default_nofile")]
    pub nofile: u64,
    /// Containers the job's conversations are spread over (docker only):
    /// each its own helper, supervisor and recovery; a new conversation
    /// goes to the healthy one with the fewest open sessions. `"auto"`: as
    /// many as `run.workers` need at `sessions_per_container`.
    #[serde(default)]
    pub containers: super::Containers,
    /// With `containers = "auto"`: the sessions one container is given at
    /// most. Default: measured at boot, at most 256 (`workspace::capacity`).
    #[serde(default)]
    pub sessions_per_container: Option<u32>,
    /// Docker engines the containers are spread over, in turn
    /// (`unix:///var/run/docker.sock`, `tcp://host:2376`); default: the
    /// one `DOCKER_HOST` names, or the local socket. A `tcp://` engine
    /// uses TLS when `DOCKER_TLS_VERIFY` is set, with the certificates in
    /// `DOCKER_CERT_PATH`, as the docker CLI does.
    #[serde(default)]
    pub engines: Vec<String>,
    /// Environment variables of every session.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Variables of convoy's own environment copied into every session.
    /// Nothing else of it reaches a session; a key variable
    /// (`llm.api_key_env`, an endpoint's `api_key_env`) never does.
    #[serde(default)]
    pub pass_env: Vec<String>,
    /// Keep the container after the job (docker only), for inspection.
    #[serde(default)]
    pub keep: bool,
    /// How requests reach tmux (docker only): "helper" or "exec".
    #[serde(default)]
    pub channel: ChannelKind,
    /// Memory limit of the container, e.g. "4g", "512m" (docker only).
    #[serde(default)]
    pub memory: Option<String>,
    /// CPUs the container may use, e.g. 1.5 (docker only).
    #[serde(default)]
    pub cpus: Option<f64>,
    /// Most processes in the container (docker only).
    #[serde(default)]
    pub pids_limit: Option<i64>,
    /// Docker network mode: "bridge", "host", "none", or a network name.
    #[serde(default)]
    pub network: Option<String>,
    /// User the container's processes run as, e.g. "1000:1000".
    #[serde(default)]
    pub user: Option<String>,
    /// How conversations are kept apart. docker: "auto" runs each as a uid
    /// of its own when the container runs as root (the default image
    /// does), "user" requires that, "none" runs every session as the
    /// container's user (for tasks that need root). local: sessions run as
    /// convoy's own user ("auto" means "none"; "user" is refused).
    #[serde(default = "WorkspaceSpec::default_isolation")]
    pub isolation: Isolation,
    /// Most processes (threads included) one conversation may have at once
    /// (with user isolation).
    #[serde(default = "WorkspaceSpec::default_session_pids")]
    pub session_pids: u64,
    /// Most resident memory one conversation's processes may hold together,
    /// a size like `memory` (with user isolation).
    #[serde(default = "WorkspaceSpec::default_session_memory")]
    pub session_memory: String,
}

impl WorkspaceSpec {
    fn default_image() -> String {
        "convoy-workspace:bookworm".to_string()
    }
    fn default_nofile() -> u64 {
        65_536
    }

    fn default_isolation() -> Isolation {
        Isolation::Auto
    }
    fn default_session_pids() -> u64 {
        1024
    }
    fn default_session_memory() -> String {
        "4g".to_string()
    }

    /// `memory` in bytes ("512m", "4g", "1024k" or plain bytes).
    pub fn memory_bytes(&self) -> Option<Result<i64, String>> {
        let bytes = size_bytes(self.memory.as_deref()?);
        Some(bytes.map(|b| i64::try_from(b).unwrap_or(i64::MAX)))
    }

    /// `session_memory` in bytes.
    pub fn session_memory_bytes(&self) -> Result<u64, String> {
        size_bytes(&self.session_memory)
    }
}

/// The least `session_memory` (64m): below it a shell and a few tools no
/// longer fit.
pub const MIN_SESSION_MEMORY: u64 = 64 << 20;

/// A size such as "512m", "4g", "1024k" or plain bytes, in bytes.
fn size_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim().to_ascii_lowercase();
    let (num, mult) = match text.chars().last() {
        Some('k') => (&text[..text.len() - 1], 1u64 << 10),
        Some('m') => (&text[..text.len() - 1], 1 << 20),
        Some('g') => (&text[..text.len() - 1], 1 << 30),
        _ => (&text[..], 1),
    };
    num.parse::<f64>()
        .ok()
        .filter(|n| *n > 0.0 && n.is_finite())
        .map(|n| (n * mult as f64) as u64)
        .ok_or_else(|| format!("`{text}` is not a size like \"512m\" or \"4g\""))
}

impl Default for WorkspaceSpec {
    fn default() -> Self {
        WorkspaceSpec {
            kind: WorkspaceKind::default(),
            image: Self::default_image(),
            workdir: None,
            mounts: Vec::new(),
            nofile: Self::default_nofile(),
            containers: super::Containers::default(),
            sessions_per_container: None,
            engines: Vec::new(),
            env: BTreeMap::new(),
            pass_env: Vec::new(),
            keep: false,
            channel: ChannelKind::default(),
            memory: None,
            cpus: None,
            pids_limit: None,
            network: None,
            user: None,
            isolation: Self::default_isolation(),
            session_pids: Self::default_session_pids(),
            session_memory: Self::default_session_memory(),
        }
    }
}
