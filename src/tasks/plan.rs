//! The plan: every row turned into a task with an id and rendered prompts,
//! before anything runs. A bad row fails the whole job up front, with
//! `file:line`.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use minijinja::{Environment, UndefinedBehavior};
use serde_json::{Map, Value};
use thiserror::Error;

use super::env::{check_workdirs, EnvTemplates, TaskEnv, TaskVerify};
use super::source::read_rows;
use crate::manifest::Job;

/// One unit of work: a conversation to run.
#[derive(Debug, Clone)]
pub struct Task {
    /// Position in the plan (0-based); also orders the output.
    pub index: usize,
    pub id: String,
    /// Line of the row in the task source.
    pub line: usize,
    /// The row's fields, when the plan was asked to keep them (the
    /// `script` provider plays the policy a row holds); empty otherwise:
    /// everything else a row feeds is rendered here, and a 100,000-row
    /// job should not hold every row twice.
    pub vars: Map<String, Value>,
    pub system: Option<String>,
    pub user: String,
    /// Its own directory, files and setup (`[environment]`).
    pub env: Option<TaskEnv>,
    /// Its check after the agent (`[verify]`).
    pub verify: Option<TaskVerify>,
    /// With `tasks.repeat > 1`: the row's id without `#k`, and k.
    pub group: Option<String>,
    pub sample: Option<u32>,
    /// The external agent's command (`agent.kind = "external"`).
    pub agent_command: Option<String>,
}

#[derive(Debug, Error)]
pub enum TaskError {
    #[error("failed to read task source `{path}`: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}:{line}: {message}", path.display())]
    Row {
        path: PathBuf,
        line: usize,
        message: String,
    },
    #[error("task source `{}` has no rows", path.display())]
    Empty { path: PathBuf },
    /// The manifest's `tasks.source` names a file that cannot be read.
    #[error("invalid manifest `{}`: {}key `tasks.source`: cannot read `{}`: {error}",
        manifest.display(), line.map_or(String::new(), |l| format!("line {l}, ")), path.display())]
    Source {
        manifest: PathBuf,
        line: Option<usize>,
        path: PathBuf,
        error: std::io::Error,
    },
}

impl TaskError {
    pub fn row(path: &Path, line: usize, message: impl Into<String>) -> Self {
        TaskError::Row {
            path: path.to_path_buf(),
            line,
            message: message.into(),
        }
    }
}

/// The template environment every template of a job is rendered with
/// (prompts, ids, environments, tool commands): an undefined variable is
/// an error, never "", and `sh` shell-quotes a value.
pub fn template_env() -> Environment<'static> {
    let mut env = Environment::new();
    env.set_undefined_behavior(UndefinedBehavior::Strict);
    env.set_keep_trailing_newline(true);
    env.add_filter("sh", super::quote::sh);
    env
}

/// Reads every row of the job's source and renders every prompt.
/// `keep_rows`: keep each row's fields in its tasks (`Task::vars`), for
/// whoever reads them later (the script provider plays a row's policy);
/// without it they are dropped once the row is rendered.
pub fn plan(job: &Job, keep_rows: bool) -> Result<Vec<Task>, TaskError> {
    let m = &job.manifest;
    let path = job.resolve(&m.tasks.source);
    let rows = read_rows(&path).map_err(|e| match e {
        TaskError::Read { path, source } => TaskError::Source {
            manifest: job.path.clone(),
            line: job.line_of("tasks.source"),
            path,
            error: source,
        },
        other => other,
    })?;
    if rows.is_empty() {
        return Err(TaskError::Empty { path });
    }

    let mut env = template_env();
    // The templates were compiled once during manifest validation, so adding
    // them here cannot fail for syntax; keep the error anyway.
    let add = |env: &mut Environment<'static>, name: &'static str, src: &str| {
        env.add_template_owned(name, src.to_string())
            .map_err(|e| TaskError::row(&path, 0, format!("{name} template: {e}")))
    };
    add(&mut env, "user", &m.prompt.user)?;
    if let Some(s) = &m.prompt.system {
        add(&mut env, "system", s)?;
    }
    if let Some(s) = &m.tasks.id {
        add(&mut env, "id", s)?;
    }
    if let Some(s) = &m.agent.command {
        add(&mut env, "agent", s)?;
    }
    let render_with = |name: &str, key: &str, line: usize, vars: &Map<String, Value>| {
        let tpl = env.get_template(name).expect("template added above");
        tpl.render(vars).map_err(|e| {
            TaskError::row(&path, line, format!("{key}: {}", describe(&e, &tpl, vars)))
        })
    };
    let render =
        |name: &str, key: &str, row: &super::Row| render_with(name, key, row.line, &row.vars);

    let envs = EnvTemplates::new(job, &path)?;
    let repeat = m.tasks.repeat as usize;
    let mut tasks = Vec::with_capacity(rows.len() * repeat);
    let mut first_line: HashMap<String, usize> = HashMap::with_capacity(rows.len());
    // Each row is dropped once its tasks are made, so the rows and the
    // tasks are not all held at once.
    for row in rows {
        let row = &row;
        let base_id = match &m.tasks.id {
            Some(_) => render("id", "tasks.id", row)?.trim().to_string(),
            None => row.line.to_string(),
        };
        if base_id.is_empty() {
            return Err(TaskError::row(
                &path,
                row.line,
                "tasks.id rendered an empty id",
            ));
        }
        if let Some(first) = first_line.insert(base_id.clone(), row.line) {
            return Err(TaskError::row(
                &path,
                row.line,
                format!("duplicate task id `{base_id}` (first at line {first})"),
            ));
        }
        let user = render("user", "prompt.user", row)?;
        let system = match &m.prompt.system {
            Some(_) => Some(render("system", "prompt.system", row)?),
            None => None,
        };
        for k in 1..=repeat {
            let (id, group, sample) = if repeat == 1 {
                (base_id.clone(), None, None)
            } else {
                let k = k as u32;
                (format!("{base_id}#{k}"), Some(base_id.clone()), Some(k))
            };
            let (env, verify) = match &envs {
                Some(e) => e.render(&id, row)?,
                None => (None, None),
            };
            // As the environment's templates: the row's fields and `id`.
            let agent_command = match &m.agent.command {
                Some(_) => {
                    let mut vars = row.vars.clone();
                    vars.insert("id".into(), Value::String(id.clone()));
                    Some(render_with("agent", "agent.command", row.line, &vars)?)
                }
                None => None,
            };
            tasks.push(Task {
                index: tasks.len(),
                id,
                line: row.line,
                vars: if keep_rows {
                    row.vars.clone()
                } else {
                    Map::new()
                },
                system: system.clone(),
                user: user.clone(),
                env,
                verify,
                group,
                sample,
                agent_command,
            });
        }
    }
    check_workdirs(&tasks, &path)?;
    Ok(tasks)
}

/// What went wrong rendering `tpl` for `row`. An undefined variable is
/// named, with the variables the template does have (minijinja's own "undefined
/// value" does not say which one); anything else is minijinja's error with
/// its detail.
pub(super) fn describe(
    e: &minijinja::Error,
    tpl: &minijinja::Template,
    vars: &Map<String, Value>,
) -> String {
    let has = || {
        let keys: Vec<&str> = vars.keys().map(String::as_str).collect();
        format!("(row has: {})", keys.join(", "))
    };
    if e.kind() == minijinja::ErrorKind::UndefinedError {
        let mut missing: Vec<String> = tpl
            .undeclared_variables(false)
            .into_iter()
            .filter(|v| !vars.contains_key(v))
            .collect();
        missing.sort();
        let names: Vec<String> = missing.iter().map(|v| format!("`{v}`")).collect();
        match names.len() {
            0 => {}
            1 => return format!("undefined variable {} {}", names[0], has()),
            _ => return format!("undefined variables {} {}", names.join(", "), has()),
        }
    }
    let mut s = e.to_string();
    if let Some(detail) = e.detail() {
        if !s.contains(detail) {
            s = format!("{s}: {detail}");
        }
    }
    if e.kind() == minijinja::ErrorKind::UndefinedError {
        s = format!("{s} {}", has());
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::load;

    fn job(dir: &Path, extra: &str, rows: &str) -> Job {
        std::fs::write(dir.join("t.jsonl"), rows).unwrap();
        let text = format!(
            "name = \"t\"\n[tasks]\nsource = \"t.jsonl\"\n{extra}\n[prompt]\nuser = \"read {{{{ path }}}}\"\n[llm]\nprovider = \"openai\"\nbase_url = \"http://127.0.0.1:1/v1\"\nmodel = \"m\"\n"
        );
        let p = dir.join("job.toml");
        std::fs::write(&p, text).unwrap();
        load(&p).unwrap()
    }

    #[test]
    fn ids_repeat_and_render() {
        let d = tempfile::tempdir().unwrap();
        let j = job(
            d.path(),
            "id = \"{{ path }}\"\nrepeat = 2",
            "{\"path\":\"a\"}\n{\"path\":\"b\"}\n",
        );
        let t = plan(&j, true).unwrap();
        let ids: Vec<_> = t.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["a#1", "a#2", "b#1", "b#2"]);
        assert_eq!(t[2].user, "read b");
    }

    #[test]
    fn default_id_is_line_number() {
        let d = tempfile::tempdir().unwrap();
        let j = job(d.path(), "", "{\"path\":\"a\"}\n\n{\"path\":\"b\"}\n");
        let ids: Vec<_> = plan(&j, true).unwrap().into_iter().map(|t| t.id).collect();
        assert_eq!(ids, ["1", "3"]);
    }

    #[test]
    fn undefined_variable_names_row_and_variable() {
        let d = tempfile::tempdir().unwrap();
        let j = job(
            d.path(),
            "",
            "{\"path\":\"a\"}\n{\"path\":\"b\"}\n{\"path\":\"c\"}\n{\"file\":\"d\"}\n",
        );
        let err = plan(&j, true).unwrap_err().to_string();
        assert!(
            err.ends_with("t.jsonl:4: prompt.user: undefined variable `path` (row has: file)"),
            "{err}"
        );
        // The same for the id template.
        let j = job(
            d.path(),
            "id = \"{{ name }}-{{ path }}\"",
            "{\"path\":\"a\",\"n\":1}\n",
        );
        let err = plan(&j, true).unwrap_err().to_string();
        assert!(
            err.ends_with("t.jsonl:1: tasks.id: undefined variable `name` (row has: path, n)"),
            "{err}"
        );
    }

    #[test]
    fn a_missing_source_names_the_manifest_line_and_key() {
        let d = tempfile::tempdir().unwrap();
        let j = job(d.path(), "", "{}\n");
        std::fs::remove_file(d.path().join("t.jsonl")).unwrap();
        let err = plan(&j, true).unwrap_err().to_string();
        assert!(
            err.contains("job.toml`: line 3, key `tasks.source`: cannot read `"),
            "{err}"
        );
        assert_eq!(err.matches("No such file").count(), 1, "{err}");
    }

    #[test]
    fn duplicate_ids_name_both_lines() {
        let d = tempfile::tempdir().unwrap();
        let j = job(
            d.path(),
            "id = \"{{ path }}\"",
            "{\"path\":\"a\"}\n{\"path\":\"b\"}\n{\"path\":\"a\"}\n",
        );
        let err = plan(&j, true).unwrap_err().to_string();
        assert!(
            err.contains("t.jsonl:3: duplicate task id `a` (first at line 1)"),
            "{err}"
        );
    }
}
