//! Loading a manifest: read, parse (serde, unknown keys rejected), then
//! validate the values serde cannot judge. Every error names the file, the
//! line and the key.

use std::fmt;
use std::path::{Path, PathBuf};

use thiserror::Error;

use super::endpoints::check_endpoints;
use super::environment::check_environment;
use super::external::check_external;
use super::schema::{Manifest, OnText};
use super::tools::check_tools;
#[cfg(test)]
use super::wording::MINIMUMS;
use super::wording::{key_at_line, line_of, line_of_key, plain_words, with_caret};
use super::workspace_rules::check_workspace;

/// A loaded, validated manifest and where it came from.
#[derive(Debug, Clone)]
pub struct Job {
    /// The manifest path as given.
    pub path: PathBuf,
    /// The directory relative paths in the manifest are resolved against.
    pub dir: PathBuf,
    /// The manifest text, for the snapshot in the run directory.
    pub text: String,
    pub manifest: Manifest,
}

impl Job {
    /// A manifest-relative path made usable from the current directory.
    pub fn resolve(&self, path: &Path) -> PathBuf {
        if path.is_absolute() || self.dir == Path::new(".") {
            path.to_path_buf()
        } else {
            self.dir.join(path)
        }
    }

    /// The line of the manifest where `key` (dotted) is written, if it is.
    pub fn line_of(&self, key: &str) -> Option<usize> {
        line_of_key(&self.text, key)
    }
}

/// How `convoy run -` names a manifest read from stdin.
pub const STDIN_NAME: &str = "<stdin>";

/// One problem in a manifest, located as precisely as we can.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub line: Option<usize>,
    pub key: Option<String>,
    pub message: String,
}

impl fmt::Display for Problem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (self.line, &self.key) {
            (Some(line), Some(key)) => write!(f, "line {line}, key `{key}`: {}", self.message),
            (Some(line), None) => write!(f, "line {line}: {}", self.message),
            (None, Some(key)) => write!(f, "key `{key}`: {}", self.message),
            (None, None) => write!(f, "{}", self.message),
        }
    }
}

#[derive(Debug, Error)]
pub enum ManifestError {
    #[error("failed to read manifest `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid manifest `{path}`: {}", list(.problems))]
    Invalid {
        path: PathBuf,
        problems: Vec<Problem>,
    },
}

fn list(problems: &[Problem]) -> String {
    if problems.len() == 1 {
        return problems[0].to_string();
    }
    let mut out = String::new();
    for p in problems {
        out.push_str("\n  ");
        out.push_str(&p.to_string());
    }
    out
}

/// Reads, parses and validates the manifest at `path`; `-` reads it from
/// stdin, and its relative paths are then relative to the current directory.
pub fn load(path: &Path) -> Result<Job, ManifestError> {
    if path == Path::new("-") {
        let mut text = String::new();
        std::io::Read::read_to_string(&mut std::io::stdin(), &mut text).map_err(|source| {
            ManifestError::Read {
                path: PathBuf::from(STDIN_NAME),
                source,
            }
        })?;
        return from_text(Path::new(STDIN_NAME), Path::new("."), text);
    }
    let text = std::fs::read_to_string(path).map_err(|source| ManifestError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    from_text(path, dir, text)
}

fn from_text(path: &Path, dir: &Path, text: String) -> Result<Job, ManifestError> {
    let invalid = |problems| ManifestError::Invalid {
        path: path.to_path_buf(),
        problems,
    };
    let manifest = parse(&text).map_err(|p| invalid(vec![p]))?;
    let problems = validate(&manifest, &text);
    if !problems.is_empty() {
        return Err(invalid(problems));
    }
    Ok(Job {
        path: path.to_path_buf(),
        dir: dir.to_path_buf(),
        text,
        manifest,
    })
}

fn parse(text: &str) -> Result<Manifest, Problem> {
    if text.trim().is_empty() {
        return Err(Problem {
            line: None,
            key: None,
            message: "the manifest is empty (`convoy init` writes a starter job)".to_string(),
        });
    }
    // A syntax error first: the serde error would lose the key it is in.
    if let Err(e) = toml_edit::ImDocument::parse(text) {
        let line = e.span().map(|s| line_of(text, s.start));
        return Err(Problem {
            line,
            key: line.and_then(|l| key_at_line(text, l)),
            message: with_caret(text, e.span(), e.message().trim()),
        });
    }
    let de = toml::Deserializer::new(text);
    serde_path_to_error::deserialize(de).map_err(|err| {
        let path = err.path().to_string();
        let path = (path != "." && !path.is_empty()).then_some(path);
        let inner = err.into_inner();
        let message = inner.message().trim();
        // "missing field `x`" in table `t` is key `t.x`, required.
        if let Some(field) = message
            .strip_prefix("missing field `")
            .and_then(|m| m.strip_suffix('`'))
        {
            let key = match &path {
                Some(table) => format!("{table}.{field}"),
                None => field.to_string(),
            };
            let line = path.as_deref().and_then(|t| line_of_key(text, t));
            return Problem {
                line,
                key: Some(key),
                message: "is required".to_string(),
            };
        }
        let message = plain_words(message, path.as_deref().unwrap_or(""));
        Problem {
            line: inner.span().map(|s| line_of(text, s.start)),
            key: path,
            message: with_caret(text, inner.span(), &message),
        }
    })
}

fn validate(m: &Manifest, text: &str) -> Vec<Problem> {
    let mut problems = Vec::new();
    let mut check = |ok: bool, key: &str, message: &str| {
        if !ok {
            problems.push(Problem {
                line: line_of_key(text, key),
                key: Some(key.to_string()),
                message: message.to_string(),
            });
        }
    };

    check(
        !m.name.is_empty()
            && m.name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
        "name",
        "must be non-empty and use only letters, digits, '-', '_' and '.'",
    );
    check(m.tasks.repeat >= 1, "tasks.repeat", "must be at least 1");
    let ext = m.tasks.source.extension().and_then(|e| e.to_str());
    check(
        matches!(ext, Some("jsonl") | Some("csv")),
        "tasks.source",
        "must be a .jsonl or .csv file",
    );
    for (key, template) in [
        ("prompt.user", Some(&m.prompt.user)),
        ("prompt.system", m.prompt.system.as_ref()),
        ("tasks.id", m.tasks.id.as_ref()),
    ] {
        if let Some(t) = template {
            let env = crate::tasks::template_env();
            if let Err(e) = env.template_from_str(t) {
                check(false, key, &format!("invalid template: {e}"));
            }
        }
    }

    check_endpoints(m, &mut check);
    check(
        m.llm.max_in_flight >= 1,
        "llm.max_in_flight",
        "must be at least 1",
    );
    let llm = &m.llm;
    if let Some(t) = llm.temperature {
        check(
            (0.0..=2.0).contains(&t),
            "llm.temperature",
            "must be between 0 and 2",
        );
    }
    if let Some(p) = llm.top_p {
        check(
            (0.0..=1.0).contains(&p),
            "llm.top_p",
            "must be between 0 and 1",
        );
    }
    check(
        llm.outage_after >= 1,
        "llm.outage_after",
        "must be at least 1",
    );
    check(
        llm.requests_per_minute.is_none_or(|r| r >= 1),
        "llm.requests_per_minute",
        "must be at least 1",
    );
    check(
        llm.tokens_per_minute.is_none_or(|t| t >= 1),
        "llm.tokens_per_minute",
        "must be at least 1",
    );
    check(
        llm.max_total_tokens.is_none_or(|t| t >= 1),
        "llm.max_total_tokens",
        "must be at least 1",
    );
    check(
        llm.max_cost.is_none_or(|c| c > 0.0 && c.is_finite()),
        "llm.max_cost",
        "must be more than 0",
    );
    check(
        llm.max_cost.is_none() || llm.price.is_some(),
        "llm.max_cost",
        "needs llm.price (prompt and completion prices per million tokens)",
    );
    check(
        llm.price.is_none_or(|p| {
            p.prompt >= 0.0
                && p.completion >= 0.0
                && p.prompt.is_finite()
                && p.completion.is_finite()
        }),
        "llm.price",
        "prices must be 0 or more",
    );
    if let Some(n) = llm.top_logprobs {
        check(n <= 20, "llm.top_logprobs", "must be from 0 to 20");
        check(
            llm.logprobs,
            "llm.top_logprobs",
            "needs llm.logprobs = true (servers refuse top_logprobs without it)",
        );
    }
    if let Some(tc) = &llm.tool_choice {
        check(
            matches!(tc.as_str(), Some("auto" | "required" | "none" | "omit")) || tc.is_object(),
            "llm.tool_choice",
            "must be \"auto\", \"required\", \"none\", \"omit\" or a tool_choice table",
        );
    }
    for key in llm.extra_body.keys() {
        check(
            !matches!(key.as_str(), "model" | "messages" | "tools" | "stream"),
            "llm.extra_body",
            &format!("`{key}` is set by convoy and cannot be overridden"),
        );
    }
    for (name, value) in &llm.extra_headers {
        check(
            !name.eq_ignore_ascii_case("authorization"),
            "llm.extra_headers",
            "`Authorization` cannot be set here: name the key's environment variable in llm.api_key_env",
        );
        check(
            reqwest::header::HeaderName::from_bytes(name.as_bytes()).is_ok()
                && reqwest::header::HeaderValue::from_str(value).is_ok(),
            "llm.extra_headers",
            &format!("`{name}` is not a valid HTTP header name and value"),
        );
    }

    check(
        m.agent.max_steps >= 1,
        "agent.max_steps",
        "must be at least 1",
    );
    check(
        m.agent.max_observation_chars >= 200,
        "agent.max_observation_chars",
        "must be at least 200",
    );
    check(
        m.agent.on_text == OnText::Finish || !m.agent.continue_prompt.trim().is_empty(),
        "agent.continue_prompt",
        "must not be empty with agent.on_text = \"continue\"",
    );

    check(m.run.workers >= 1, "run.workers", "must be at least 1");
    check(
        m.run.max_attempts >= 1,
        "run.max_attempts",
        "must be at least 1",
    );

    for (key, d) in [
        ("llm.timeout", m.llm.timeout),
        ("llm.connect_timeout", m.llm.connect_timeout),
        ("llm.outage_timeout", m.llm.outage_timeout),
        ("agent.command_timeout", m.agent.command_timeout),
        ("run.task_timeout", m.run.task_timeout),
        ("monitor.interval", m.monitor.interval),
    ] {
        check(!d.is_zero(), key, "must be more than 0s");
    }

    check_workspace(m, &mut check);
    check_environment(m, &mut check);
    check_tools(m, &mut check);
    check_external(m, &mut check);
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = r#"
name = "t"
[tasks]
source = "t.jsonl"
[prompt]
user = "hi {{ x }}"
[llm]
provider = "script"
"#;

    fn problems(extra: &str) -> Vec<Problem> {
        let text = format!("{BASE}{extra}");
        match parse(&text) {
            Err(p) => vec![p],
            Ok(m) => validate(&m, &text),
        }
    }

    #[test]
    fn minimal_manifest_is_valid_with_defaults() {
        let m = parse(BASE).unwrap();
        assert!(validate(&m, BASE).is_empty());
        assert_eq!(m.run.workers, 128);
        assert_eq!(m.agent.max_steps, 30);
        assert_eq!(m.llm.timeout.as_secs(), 600);
        let ws = &m.workspace;
        assert_eq!(ws.isolation, crate::manifest::Isolation::Auto);
        assert_eq!(ws.session_pids, 1024);
        assert_eq!(ws.session_memory_bytes(), Ok(4 << 30));
    }

    #[test]
    fn unknown_key_names_table_and_line() {
        let p = problems("[run]\nwrkers = 3\n");
        assert_eq!(p.len(), 1);
        assert_eq!(p[0].key.as_deref(), Some("run.wrkers"));
        assert!(
            p[0].message
                .starts_with("unknown key `wrkers` (did you mean `workers`?)"),
            "{}",
            p[0].message
        );
        assert_eq!(p[0].line, Some(10));
    }

    #[test]
    fn zero_workers_names_key_and_line() {
        let p = problems("[run]\nworkers = 0\n");
        assert_eq!(p[0].key.as_deref(), Some("run.workers"));
        assert_eq!(p[0].line, Some(10));
    }

    #[test]
    fn negative_steps_and_bad_duration_are_rejected() {
        let p = problems("[agent]\nmax_steps = -1\n");
        assert_eq!(p[0].key.as_deref(), Some("agent.max_steps"));
        let p = problems("[run]\ntask_timeout = \"ten minutes\"\n");
        assert_eq!(p[0].key.as_deref(), Some("run.task_timeout"));
        assert_eq!(p[0].line, Some(10));
    }

    #[test]
    fn syntax_error_keeps_line_caret_and_key() {
        let text = "name = \"t\"\n[tasks]\nsource = \"t.jsonl\n[prompt]\nuser = \"x\"\n";
        let p = parse(text).unwrap_err();
        assert_eq!(p.line, Some(3));
        assert_eq!(p.key.as_deref(), Some("tasks.source"));
        assert!(
            p.message
                .contains("\n  3 | source = \"t.jsonl\n    |                  ^"),
            "{}",
            p.message
        );
        let p = problems("[run\nworkers = 1\n");
        assert_eq!(p[0].line, Some(9));
        assert!(p[0].message.contains("\n  9 | [run\n"), "{}", p[0].message);
    }

    #[test]
    fn type_errors_use_the_manifest_words_not_rusts() {
        let p = problems("[run]\nworkers = \"many\"\n");
        assert_eq!(p[0].key.as_deref(), Some("run.workers"));
        assert!(
            p[0].message
                .starts_with("must be a whole number >= 1, found string \"many\""),
            "{}",
            p[0].message
        );
        let p = problems("[run]\nworkers = -1\n");
        assert!(
            p[0].message
                .starts_with("must be a whole number >= 1, found integer `-1`"),
            "{}",
            p[0].message
        );
        let p = problems("[workspace]\nkeep = 1\n");
        assert!(
            p[0].message.starts_with("must be true or false"),
            "{}",
            p[0].message
        );
        for p in [
            problems("[run]\nworkers = 1.5\n"),
            problems("[llm]\nmax_retries = -2\n"),
        ] {
            assert!(!p[0].message.contains("u32"), "{}", p[0].message);
        }
    }

    #[test]
    fn an_empty_manifest_says_so() {
        assert!(parse("\n  \n")
            .unwrap_err()
            .message
            .starts_with("the manifest is empty"));
    }

    #[test]
    fn a_missing_key_is_named_with_its_table() {
        let p = parse("name = \"t\"\n[tasks]\nid = \"x\"\n[prompt]\nuser = \"x\"\n[llm]\n")
            .unwrap_err();
        assert_eq!(p.key.as_deref(), Some("tasks.source"));
        assert_eq!(p.line, Some(2));
        assert_eq!(p.message, "is required");
    }

    #[test]
    fn the_minimums_agree_with_validation() {
        for (key, min) in MINIMUMS {
            let (table, field) = key.split_once('.').unwrap();
            let setting = format!("{field} = {}\n", min - 1);
            let text = match table {
                "tasks" => BASE.replace("[tasks]\n", &format!("[tasks]\n{setting}")),
                "llm" => format!("{BASE}{setting}"),
                _ => format!("{BASE}[{table}]\n{setting}"),
            };
            let p = match parse(&text) {
                Err(p) => vec![p],
                Ok(m) => validate(&m, &text),
            };
            assert!(
                p.iter().any(|p| p.key.as_deref() == Some(key)),
                "{key} = {} was accepted: {p:?}",
                min - 1
            );
        }
    }

    #[test]
    fn openai_needs_url_and_model() {
        let text = BASE.replace("provider = \"script\"", "provider = \"openai\"");
        let m = parse(&text).unwrap();
        let keys: Vec<_> = validate(&m, &text)
            .into_iter()
            .filter_map(|p| p.key)
            .collect();
        assert_eq!(keys, ["llm.base_url", "llm.model"]);
    }

    #[test]
    fn llm_options_are_checked() {
        let p = problems("max_cost = 5.0\n[llm.extra_body]\nmodel = \"x\"\nreasoning_effort = \"high\"\n[llm.extra_headers]\nAuthorization = \"Bearer k\"\n");
        let keys: Vec<_> = p.iter().filter_map(|p| p.key.as_deref()).collect();
        assert_eq!(
            keys,
            ["llm.max_cost", "llm.extra_body", "llm.extra_headers"]
        );
        assert!(p[0].message.contains("needs llm.price"), "{}", p[0].message);
        assert!(p[1].message.contains("`model`"), "{}", p[1].message);
        assert!(p[2].message.contains("api_key_env"), "{}", p[2].message);
        assert!(problems("tool_choice = \"required\"\nseed = 7\nparallel_tool_calls = false\n[llm.price]\nprompt = 1.0\ncompletion = 2.0\n").is_empty());
        let p = problems("tool_choice = \"sometimes\"\n");
        assert_eq!(p[0].key.as_deref(), Some("llm.tool_choice"));
    }

    #[test]
    fn top_logprobs_needs_logprobs_and_at_most_20() {
        assert!(
            problems("logprobs = true\ntop_logprobs = 20\nreturn_token_ids = true\n").is_empty()
        );
        for (extra, words) in [
            ("top_logprobs = 3\n", "needs llm.logprobs = true"),
            ("logprobs = true\ntop_logprobs = 21\n", "from 0 to 20"),
            ("logprobs = true\ntop_logprobs = -1\n", "whole number"),
        ] {
            let p = problems(extra);
            assert_eq!(p[0].key.as_deref(), Some("llm.top_logprobs"), "{extra}");
            assert!(p[0].message.contains(words), "{extra}: {}", p[0].message);
        }
    }
}
