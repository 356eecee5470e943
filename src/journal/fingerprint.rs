//! The fingerprint of what shapes a run's data, stored as
//! `fingerprint.json`. One hash per part, so a refused resume (or merge)
//! can say what changed: `prompt` (templates), `model` (provider, model and
//! sampling options), `tools` (the schemas the model gets, in their order,
//! and the commands of `[[tools]]` but not their timeouts: `[[tools]]` and
//! `agent.tools` change this part, not `agent`), `agent`
//! (step limit, timeouts, observation size), `tasks` (the source rows, the id
//! template, repeat), and, when the manifest has them, `environment` and
//! `verify` (the tables without `keep` and their timeouts, which may
//! change on resume). Workers, timeouts of the run, the workspace and the
//! monitor do not change the data and are not in it. Nor do the token
//! options (`llm.logprobs`, `top_logprobs`, `return_token_ids`): they
//! change what is kept beside the conversation (`convoy.turns`), not the
//! conversation, so turning them on resumes a run, and only the tasks run
//! from then on carry token data. (Asked for through `llm.extra_body`,
//! they are in `model`, as all of `extra_body` is.)

use std::collections::BTreeMap;
use std::path::Path;

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};

use crate::manifest::Job;

pub const FILE: &str = "fingerprint.json";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Fingerprint {
    pub version: u32,
    pub parts: BTreeMap<String, String>,
}

fn digest(bytes: &[u8]) -> String {
    let d = Sha256::digest(bytes);
    let hex: String = d.iter().take(16).map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

fn digest_json(v: &Value) -> String {
    digest(v.to_string().as_bytes())
}

/// `spec` as JSON without the keys that may change on resume.
fn table<T: Serialize>(spec: &Option<T>, free: &[&str]) -> Option<Value> {
    let mut v = serde_json::to_value(spec.as_ref()?).unwrap_or_default();
    if let Some(map) = v.as_object_mut() {
        for key in free {
            map.remove(*key);
        }
    }
    Some(v)
}

/// The schemas, plus the commands of `[[tools]]` when there are any (a run
/// directory from before `[[tools]]` keeps its digest).
fn tools_digest(m: &crate::manifest::Manifest, schemas: &Value) -> String {
    if m.tools.is_empty() {
        return digest_json(schemas);
    }
    let commands: Vec<Value> = m.tools.iter().map(|t| json!([t.name, t.command])).collect();
    digest_json(&json!([schemas, commands]))
}

/// The model part: what shapes the model's answers. With `llm.endpoints`
/// it also covers the set of model names they serve, not their URLs, order
/// or number: a job moved to other replicas of the same model, or given
/// one more, resumes; and when every endpoint serves `llm.model`, it is the
/// fingerprint of the same job on `base_url`.
fn model_digest(l: &crate::manifest::LlmSpec) -> String {
    let mut v = json!({
        "provider": l.provider, "model": l.model, "temperature": l.temperature,
        "top_p": l.top_p, "max_tokens": l.max_tokens, "seed": l.seed,
        "tool_choice": l.tool_choice, "parallel_tool_calls": l.parallel_tool_calls,
        "extra_body": l.extra_body, "send_reasoning_content": l.send_reasoning_content,
    });
    let models: std::collections::BTreeSet<String> = l.model_names().into_iter().collect();
    let only_llm_model = models.len() == 1 && l.model.as_ref() == models.first();
    if !l.endpoints.is_empty() && !only_llm_model {
        v["endpoint_models"] = json!(models);
    }
    digest_json(&v)
}

impl Fingerprint {
    /// The fingerprint of `job` with these tool schemas. The task source is
    /// read here; an unreadable source has already failed planning.
    pub fn of(job: &Job, tools: &Value) -> Fingerprint {
        let m = &job.manifest;
        let l = &m.llm;
        let mut rows = std::fs::read(job.resolve(&m.tasks.source)).unwrap_or_default();
        rows.extend_from_slice(json!([m.tasks.id, m.tasks.repeat]).to_string().as_bytes());
        let parts = [
            (
                "prompt",
                digest_json(&json!([m.prompt.system, m.prompt.user])),
            ),
            ("model", model_digest(l)),
            ("tools", tools_digest(m, tools)),
            (
                "agent",
                digest_json(&table(&Some(&m.agent), &["tools"]).unwrap_or_default()),
            ),
            ("tasks", digest(&rows)),
        ];
        let mut parts: BTreeMap<String, String> =
            parts.into_iter().map(|(k, v)| (k.to_string(), v)).collect();
        // Only when set: a run directory from before these tables has no
        // such parts, and must not read as changed.
        let tables = [
            (
                "environment",
                table(&m.environment, &["keep", "setup_timeout"]),
            ),
            ("verify", table(&m.verify, &["timeout"])),
        ];
        for (name, value) in tables {
            if let Some(v) = value {
                parts.insert(name.to_string(), digest_json(&v));
            }
        }
        Fingerprint { version: 1, parts }
    }

    /// The parts that differ, by name.
    pub fn changed(&self, other: &Fingerprint) -> Vec<String> {
        let names: std::collections::BTreeSet<&String> = self
            .parts
            .keys()
            .chain(other.parts.keys())
            .filter(|k| self.parts.get(*k) != other.parts.get(*k))
            .collect();
        names.into_iter().cloned().collect()
    }

    /// One short hash of all parts, for the manifest snapshot's header.
    pub fn short(&self) -> String {
        digest_json(&serde_json::to_value(&self.parts).unwrap_or_default())
    }

    pub fn read(dir: &Path) -> std::io::Result<Option<Fingerprint>> {
        match std::fs::read_to_string(dir.join(FILE)) {
            Ok(text) => serde_json::from_str(&text)
                .map(Some)
                .map_err(std::io::Error::other),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp(pairs: &[(&str, &str)]) -> Fingerprint {
        Fingerprint {
            version: 1,
            parts: pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// The fingerprint of a scripted job in `dir` with `tail` after `[llm]`.
    fn of_job(dir: &Path, tail: &str) -> Fingerprint {
        let path = dir.join("job.toml");
        let text = format!(
            "name = \"j\"\n[tasks]\nsource = \"t.jsonl\"\n[prompt]\nuser = \"go\"\n[llm]\nprovider = \"script\"\n{tail}\n"
        );
        std::fs::write(&path, text).unwrap();
        let job = crate::manifest::load(&path).unwrap();
        let tools = crate::agent::Toolbox::new(&job.manifest).unwrap();
        Fingerprint::of(&job, tools.schemas())
    }

    #[test]
    fn tools_and_their_order_are_the_part_tools_not_agent() {
        let dir = tempfile::tempdir().unwrap();
        let of = |tail: &str| of_job(dir.path(), tail);
        let view = "[[tools]]\nname = \"view\"\nparameters = { type = \"object\", properties = { path = { type = \"string\" } } }\ncommand = \"cat {{ path | sh }}\"\n";
        let base = of("");
        let with_view = of(view);
        assert_eq!(base.changed(&with_view), ["tools"]);
        let integer = view.replace("\"string\"", "\"integer\"");
        assert_eq!(with_view.changed(&of(&integer)), ["tools"]);
        let order = format!("[agent]\ntools = [\"view\", \"bash\", \"finish\"]\n{view}");
        assert_eq!(with_view.changed(&of(&order)), ["tools"]);
        // Listing the default order changes nothing, nor does a timeout.
        let same =
            format!("[agent]\ntools = [\"bash\", \"view\", \"finish\"]\n{view}timeout = \"5s\"\n");
        assert!(with_view.changed(&of(&same)).is_empty());
        // What the tool runs is part of it too.
        let command = view.replace("cat ", "head ");
        assert_eq!(with_view.changed(&of(&command)), ["tools"]);
    }

    #[test]
    fn on_text_and_continue_prompt_are_part_of_agent() {
        let dir = tempfile::tempdir().unwrap();
        let of = |agent: &str| of_job(dir.path(), &format!("[agent]\n{agent}"));
        let base = of("");
        assert_eq!(base.changed(&of("on_text = \"finish\"")), ["agent"]);
        assert_eq!(base.changed(&of("continue_prompt = \"Go on.\"")), ["agent"]);
        assert!(base.changed(&of("on_text = \"continue\"")).is_empty());
    }

    #[test]
    fn environment_and_verify_are_parts_but_keep_and_timeouts_are_free() {
        let dir = tempfile::tempdir().unwrap();
        let of = |tables: &str| of_job(dir.path(), tables);
        let none = of("");
        assert!(!none.parts.contains_key("environment"), "{none:?}");
        let env = "[environment]\nworkdir = \"/t/{{ id }}\"\nsetup = [\"git init\"]\n";
        let verify = "[verify]\ncommand = \"bash check.sh\"\n";
        let base = of(&format!("{env}{verify}"));
        assert_eq!(none.changed(&base), ["environment", "verify"]);
        let setup = env.replace("git init", "git init -q");
        assert_eq!(
            base.changed(&of(&format!("{setup}{verify}"))),
            ["environment"]
        );
        let reward = format!("{env}{verify}reward = \"last_line\"\n");
        assert_eq!(base.changed(&of(&reward)), ["verify"]);
        let free =
            format!("{env}keep = \"always\"\nsetup_timeout = \"1m\"\n{verify}timeout = \"1s\"\n");
        assert!(base.changed(&of(&free)).is_empty());
    }

    #[test]
    fn endpoints_count_by_model_name_not_url() {
        let dir = tempfile::tempdir().unwrap();
        let of = |llm: &str| {
            let path = dir.path().join("job.toml");
            let text = format!("name = \"j\"\n[tasks]\nsource = \"t.jsonl\"\n[prompt]\nuser = \"go\"\n[llm]\nmodel = \"m\"\n{llm}\n");
            std::fs::write(&path, text).unwrap();
            let job = crate::manifest::load(&path).unwrap();
            let tools = crate::agent::Toolbox::new(&job.manifest).unwrap();
            Fingerprint::of(&job, tools.schemas())
        };
        let one = of("base_url = \"http://a:1/v1\"");
        assert!(one.changed(&of("base_url = \"http://b:2/v1\"")).is_empty());
        let two = of("endpoints = [{ base_url = \"http://a:1/v1\" }, { base_url = \"http://b:1/v1\", weight = 3 }]");
        let moved =
            of("endpoints = [{ base_url = \"http://c:1/v1\" }, { base_url = \"http://d:1/v1\" }]");
        assert!(
            two.changed(&moved).is_empty(),
            "other replicas of the same model resume"
        );
        let other = of("endpoints = [{ base_url = \"http://a:1/v1\" }, { base_url = \"http://b:1/v1\", model = \"n\" }]");
        assert_eq!(two.changed(&other), ["model"]);
        // One more replica, another order, or the same model on base_url:
        // the same job.
        assert!(two.changed(&one).is_empty());
        let three = of("endpoints = [{ base_url = \"http://c:1/v1\" }, { base_url = \"http://b:1/v1\" }, { base_url = \"http://a:1/v1\" }]");
        assert!(two.changed(&three).is_empty());
        let swapped = of("endpoints = [{ base_url = \"http://b:1/v1\", model = \"n\" }, { base_url = \"http://a:1/v1\" }]");
        assert!(other.changed(&swapped).is_empty());
    }

    #[test]
    fn token_options_are_not_in_the_fingerprint() {
        let dir = tempfile::tempdir().unwrap();
        let of = |tail: &str| of_job(dir.path(), tail);
        let tokens = of("logprobs = true\ntop_logprobs = 5\nreturn_token_ids = true");
        assert!(of("").changed(&tokens).is_empty());
        assert_eq!(of("temperature = 0.5").changed(&tokens), ["model"]);
    }

    #[test]
    fn changed_names_each_differing_part_once() {
        let a = fp(&[("agent", "1"), ("prompt", "1"), ("tasks", "1")]);
        let b = fp(&[("agent", "1"), ("prompt", "2"), ("tasks", "2")]);
        assert_eq!(a.changed(&b), ["prompt", "tasks"]);
        assert!(a.changed(&a).is_empty());
    }
}
