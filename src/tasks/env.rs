//! A task's own environment and check, rendered from its row before
//! anything runs: `[environment]` (workdir, seed, files, setup) and
//! `[verify]` (hidden files, the command, the reward rule). Every template
//! sees the row's fields plus `id`, the task's id (with `#k` for repeated
//! samples), so that each sample gets a directory of its own. A template
//! that fails, a docker workdir that is not absolute, or two tasks that
//! would share a directory fail the plan at the row's `file:line`.

use std::path::{Component, Path, PathBuf};
use std::time::Duration;

use minijinja::Environment;
use serde_json::{Map, Value};

use super::plan::{describe, template_env, Task, TaskError};
use super::source::Row;
use crate::manifest::{escapes, EnvironmentSpec, Job, RunAs, VerifySpec, WorkspaceKind};
pub use crate::manifest::{Keep, RewardRule, VerifyWhen};

/// A task's own environment, rendered from its row (`[environment]`).
#[derive(Debug, Clone, PartialEq)]
pub struct TaskEnv {
    /// Absolute in the Docker workspace; for local, already resolved to an
    /// absolute host path, except a relative workdir with no
    /// `workspace.workdir`: that one stays relative, and the local
    /// workspace resolves it under the run's temporary directory.
    pub workdir: String,
    /// A directory copied into the workdir first: a path in the container
    /// (docker, absolute) or an absolute host path (local; written relative
    /// to the manifest). A seed that renders empty means none.
    pub seed: Option<String>,
    /// (path relative to workdir, content), in manifest order; paths
    /// checked not to escape.
    pub files: Vec<(String, String)>,
    /// Rendered commands, in order; one that renders empty is left out.
    pub setup: Vec<String>,
    pub setup_timeout: Duration,
    /// `environment.setup_user = "root"`.
    pub setup_as_root: bool,
    pub keep: Keep,
}

/// The check after the agent (`[verify]`), rendered from the row.
#[derive(Debug, Clone, PartialEq)]
pub struct TaskVerify {
    pub files: Vec<(String, String)>,
    pub command: String,
    pub timeout: Duration,
    pub reward: RewardRule,
    pub when: VerifyWhen,
    /// `verify.user = "root"`.
    pub as_root: bool,
}

/// The job's `[environment]` and `[verify]` templates, compiled once and
/// rendered per task. Each template is named by its manifest key, which is
/// what an error says.
pub(super) struct EnvTemplates<'j> {
    templates: Environment<'static>,
    environment: Option<&'j EnvironmentSpec>,
    verify: Option<&'j VerifySpec>,
    docker: bool,
    /// Local: the absolute `workspace.workdir` a relative workdir goes
    /// under, when it is set.
    local_base: Option<PathBuf>,
    job: &'j Job,
    source: &'j Path,
}

fn file_key(table: &str, path: &str) -> String {
    format!("{table}.files.{path:?}")
}

fn setup_key(i: usize) -> String {
    format!("environment.setup[{i}]")
}

impl<'j> EnvTemplates<'j> {
    /// `None` when the job has neither table.
    pub fn new(job: &'j Job, source: &'j Path) -> Result<Option<EnvTemplates<'j>>, TaskError> {
        let m = &job.manifest;
        if m.environment.is_none() && m.verify.is_none() {
            return Ok(None);
        }
        let mut named: Vec<(String, &str)> = Vec::new();
        if let Some(e) = &m.environment {
            named.push(("environment.workdir".into(), &e.workdir));
            named.extend(e.seed.as_deref().map(|s| ("environment.seed".into(), s)));
            named.extend(
                e.files
                    .iter()
                    .map(|(p, t)| (file_key("environment", p), t.as_str())),
            );
            named.extend(
                e.setup
                    .iter()
                    .enumerate()
                    .map(|(i, s)| (setup_key(i), s.as_str())),
            );
        }
        if let Some(v) = &m.verify {
            named.push(("verify.command".into(), &v.command));
            named.extend(
                v.files
                    .iter()
                    .map(|(p, t)| (file_key("verify", p), t.as_str())),
            );
        }
        let mut templates = template_env();
        for (name, src) in named {
            // Validation compiled each of these already; keep the error anyway.
            templates
                .add_template_owned(name.clone(), src.to_string())
                .map_err(|e| TaskError::row(source, 0, format!("{name} template: {e}")))?;
        }
        let ws = &m.workspace;
        let local_base = match (ws.kind, &ws.workdir) {
            (WorkspaceKind::Local, Some(dir)) => Some(absolute(&job.resolve(Path::new(dir)))),
            _ => None,
        };
        Ok(Some(EnvTemplates {
            templates,
            environment: m.environment.as_ref(),
            verify: m.verify.as_ref(),
            docker: ws.kind == WorkspaceKind::Docker,
            local_base,
            job,
            source,
        }))
    }

    /// Renders both tables for the task `id` made from `row`.
    pub fn render(
        &self,
        id: &str,
        row: &Row,
    ) -> Result<(Option<TaskEnv>, Option<TaskVerify>), TaskError> {
        let mut vars = row.vars.clone();
        vars.insert("id".into(), Value::String(id.to_string()));
        let r = Render {
            t: self,
            vars: &vars,
            line: row.line,
        };
        let env = match self.environment {
            None => None,
            Some(e) => Some(TaskEnv {
                workdir: r.workdir()?,
                seed: r.seed(e)?,
                files: r.files("environment", &e.files)?,
                setup: r.setup(e.setup.len())?,
                setup_timeout: e.setup_timeout,
                setup_as_root: e.setup_user == RunAs::Root,
                keep: e.keep,
            }),
        };
        let verify = match self.verify {
            None => None,
            Some(v) => {
                let command = r.text("verify.command")?;
                if command.trim().is_empty() {
                    return Err(r.error("verify.command", "rendered an empty command"));
                }
                Some(TaskVerify {
                    files: r.files("verify", &v.files)?,
                    command,
                    timeout: v.timeout,
                    reward: v.reward,
                    when: v.when,
                    as_root: v.user == RunAs::Root,
                })
            }
        };
        Ok((env, verify))
    }
}

/// One task's rendering: the templates, its variables and its row's line.
struct Render<'a, 'j> {
    t: &'a EnvTemplates<'j>,
    vars: &'a Map<String, Value>,
    line: usize,
}

impl Render<'_, '_> {
    fn error(&self, key: &str, message: impl std::fmt::Display) -> TaskError {
        TaskError::row(self.t.source, self.line, format!("{key}: {message}"))
    }

    fn text(&self, key: &str) -> Result<String, TaskError> {
        let tpl = self.t.templates.get_template(key).expect("added in new");
        tpl.render(self.vars)
            .map_err(|e| self.error(key, describe(&e, &tpl, self.vars)))
    }

    fn files(
        &self,
        table: &str,
        files: &crate::manifest::FileTemplates,
    ) -> Result<Vec<(String, String)>, TaskError> {
        files
            .keys()
            .map(|p| Ok((p.clone(), self.text(&file_key(table, p))?)))
            .collect()
    }

    /// Commands that render empty are left out, so a row can go without.
    fn setup(&self, n: usize) -> Result<Vec<String>, TaskError> {
        let mut commands = Vec::with_capacity(n);
        for i in 0..n {
            let c = self.text(&setup_key(i))?;
            if !c.trim().is_empty() {
                commands.push(c);
            }
        }
        Ok(commands)
    }

    fn workdir(&self) -> Result<String, TaskError> {
        let key = "environment.workdir";
        let raw = self.text(key)?;
        let raw = raw.trim();
        if raw.is_empty() || raw.chars().any(char::is_control) {
            return Err(self.error(
                key,
                format!("rendered {raw:?}: a workdir must be a non-empty path without control characters"),
            ));
        }
        let path = Path::new(raw);
        let dir = if path.is_absolute() {
            normalize(path)
        } else if self.t.docker {
            return Err(self.error(
                key,
                format!("must be an absolute path in the docker workspace, rendered `{raw}`"),
            ));
        } else if escapes(raw).is_some() {
            return Err(self.error(
                key,
                format!("rendered `{raw}`: a relative workdir must name a directory inside the workspace's"),
            ));
        } else {
            match &self.t.local_base {
                Some(base) => normalize(&base.join(path)),
                None => normalize(path),
            }
        };
        // The workdir is emptied for every attempt: never the root.
        if dir.parent().is_none() {
            return Err(self.error(key, format!("rendered `{raw}`, the root directory")));
        }
        Ok(dir.to_string_lossy().into_owned())
    }

    fn seed(&self, e: &EnvironmentSpec) -> Result<Option<String>, TaskError> {
        if e.seed.is_none() {
            return Ok(None);
        }
        let key = "environment.seed";
        let raw = self.text(key)?;
        let raw = raw.trim();
        if raw.is_empty() {
            return Ok(None);
        }
        if !self.t.docker {
            let path = absolute(&self.t.job.resolve(Path::new(raw)));
            return Ok(Some(path.to_string_lossy().into_owned()));
        }
        if !Path::new(raw).is_absolute() {
            return Err(self.error(
                key,
                format!("must be an absolute path in the docker workspace, rendered `{raw}`"),
            ));
        }
        Ok(Some(raw.to_string()))
    }
}

/// `path` made absolute against the current directory, without touching
/// the file system beyond that (it need not exist yet).
fn absolute(path: &Path) -> PathBuf {
    normalize(&std::path::absolute(path).unwrap_or_else(|_| path.to_path_buf()))
}

/// `path` without `.`, `..` (lexically) and doubled or trailing slashes,
/// so that two spellings of one directory compare equal.
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in path.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other),
        }
    }
    out
}

/// Fails when two tasks would share a workdir, or one's lies inside
/// another's (each is emptied for every attempt), naming both ids.
pub(super) fn check_workdirs(tasks: &[Task], source: &Path) -> Result<(), TaskError> {
    let mut dirs: Vec<(&Path, &Task)> = tasks
        .iter()
        .filter_map(|t| t.env.as_ref().map(|e| (Path::new(&e.workdir), t)))
        .collect();
    // Component order puts a directory's descendants right after it, so
    // comparing neighbours finds every clash.
    dirs.sort_by(|a, b| a.0.cmp(b.0));
    for pair in dirs.windows(2) {
        let (outer, inner) = (pair[0], pair[1]);
        if !inner.0.starts_with(outer.0) {
            continue;
        }
        let (first, second) = if outer.1.index < inner.1.index {
            (outer, inner)
        } else {
            (inner, outer)
        };
        let how = if outer.0 == inner.0 {
            format!("the same workdir `{}`", outer.0.display())
        } else {
            format!(
                "nested workdirs (`{}` is inside `{}`)",
                inner.0.display(),
                outer.0.display()
            )
        };
        return Err(TaskError::row(
            source,
            second.1.line,
            format!(
                "environment.workdir: tasks `{}` (line {}) and `{}` render {how}; each task needs a directory of its own (use `{{{{ id }}}}` in it)",
                first.1.id, first.1.line, second.1.id
            ),
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::manifest::load;

    /// The plan of a job with `workspace` and `tables` over `rows`, each
    /// row run `repeat` times.
    fn plan_repeated(
        dir: &Path,
        repeat: u32,
        workspace: &str,
        tables: &str,
        rows: &str,
    ) -> Result<Vec<Task>, String> {
        std::fs::write(dir.join("t.jsonl"), rows).unwrap();
        let text = format!(
            "name = \"t\"\n[tasks]\nsource = \"t.jsonl\"\nid = \"{{{{ name }}}}\"\nrepeat = {repeat}\n[prompt]\nuser = \"go\"\n[llm]\nprovider = \"script\"\n[workspace]\n{workspace}\n{tables}"
        );
        let p = dir.join("job.toml");
        std::fs::write(&p, text).unwrap();
        let job = load(&p).map_err(|e| e.to_string())?;
        super::super::plan(&job, true).map_err(|e| e.to_string())
    }

    fn plan_of(dir: &Path, workspace: &str, tables: &str, rows: &str) -> Result<Vec<Task>, String> {
        plan_repeated(dir, 1, workspace, tables, rows)
    }

    const TABLES: &str = r#"
[environment]
workdir = "/tasks/{{ id }}/"
seed = "/seed/{{ repo }}"
files = { "task.md" = "fix {{ bug }}", "notes/a.txt" = "{{ id }}" }
setup = ["git init -q", "{{ setup_cmd }}"]
keep = "failed"
setup_user = "root"
[verify]
files = { "check.sh" = "test {{ bug }}" }
command = "bash check.sh {{ id }}"
reward = "last_line"
when = "always"
"#;

    #[test]
    fn every_template_sees_the_row_and_the_id_of_each_sample() {
        let d = tempfile::tempdir().unwrap();
        let rows = "{\"name\":\"a\",\"repo\":\"r\",\"bug\":\"b1\",\"setup_cmd\":\"make\"}\n{\"name\":\"b\",\"repo\":\"r\",\"bug\":\"b2\",\"setup_cmd\":\" \"}\n";
        let t = plan_of(d.path(), "kind = \"docker\"", TABLES, rows).unwrap();
        assert_eq!(t[0].env.as_ref().unwrap().workdir, "/tasks/a");
        assert_eq!((t[0].group.as_deref(), t[0].sample), (None, None));
        let t = plan_repeated(d.path(), 2, "kind = \"docker\"", TABLES, rows).unwrap();
        let ids: Vec<_> = t.iter().map(|t| t.id.as_str()).collect();
        assert_eq!(ids, ["a#1", "a#2", "b#1", "b#2"]);
        assert_eq!((t[1].group.as_deref(), t[1].sample), (Some("a"), Some(2)));
        let env = |s: &[(&str, &str)]| -> Vec<(String, String)> {
            s.iter()
                .map(|(p, c)| (p.to_string(), c.to_string()))
                .collect()
        };
        assert_eq!(
            t[1].env,
            Some(TaskEnv {
                workdir: "/tasks/a#2".into(),
                seed: Some("/seed/r".into()),
                files: env(&[("task.md", "fix b1"), ("notes/a.txt", "a#2")]),
                setup: vec!["git init -q".into(), "make".into()],
                setup_timeout: Duration::from_secs(300),
                setup_as_root: true,
                keep: Keep::Failed,
            })
        );
        assert_eq!(
            t[1].verify,
            Some(TaskVerify {
                files: env(&[("check.sh", "test b1")]),
                command: "bash check.sh a#2".into(),
                timeout: Duration::from_secs(600),
                reward: RewardRule::LastLine,
                when: VerifyWhen::Always,
                as_root: false,
            })
        );
        // A setup command that renders empty is left out.
        assert_eq!(t[2].env.as_ref().unwrap().setup, ["git init -q"]);
    }

    #[test]
    fn an_undefined_variable_names_the_key_and_the_row() {
        let d = tempfile::tempdir().unwrap();
        let tables = TABLES;
        let rows = "{\"name\":\"a\",\"repo\":\"r\",\"bug\":\"b\",\"setup_cmd\":\"x\"}\n{\"name\":\"b\",\"repo\":\"r\",\"setup_cmd\":\"x\"}\n";
        let err = plan_of(d.path(), "kind = \"docker\"", tables, rows).unwrap_err();
        assert!(
            err.ends_with("t.jsonl:2: environment.files.\"task.md\": undefined variable `bug` (row has: name, repo, setup_cmd, id)"),
            "{err}"
        );
        let rows = "{\"name\":\"a\",\"repo\":\"r\",\"bug\":\"b\"}\n";
        let err = plan_of(d.path(), "kind = \"docker\"", tables, rows).unwrap_err();
        assert!(
            err.contains("t.jsonl:1: environment.setup[1]: undefined variable `setup_cmd`"),
            "{err}"
        );
    }

    #[test]
    fn where_a_workdir_may_be() {
        let d = tempfile::tempdir().unwrap();
        let rows = "{\"name\":\"a\"}\n";
        let dir_of = |workspace: &str, workdir: &str| {
            let tables = format!("[environment]\nworkdir = \"{workdir}\"\n");
            plan_of(d.path(), workspace, &tables, rows)
                .map(|t| t[0].env.as_ref().unwrap().workdir.clone())
        };
        let err = dir_of("kind = \"docker\"", "tasks/{{ id }}").unwrap_err();
        assert!(
            err.ends_with("t.jsonl:1: environment.workdir: must be an absolute path in the docker workspace, rendered `tasks/a`"),
            "{err}"
        );
        let err = dir_of("kind = \"docker\"", "/x/..").unwrap_err();
        assert!(err.contains("the root directory"), "{err}");
        // Local: under workspace.workdir, made absolute; else left for the
        // workspace to put under its temporary directory.
        let base = std::path::absolute(d.path().join("work")).unwrap();
        assert_eq!(
            dir_of("kind = \"local\"\nworkdir = \"work\"", "t/./{{ id }}").unwrap(),
            base.join("t/a").to_string_lossy()
        );
        assert_eq!(dir_of("kind = \"local\"", "t/{{ id }}").unwrap(), "t/a");
        assert_eq!(
            dir_of("kind = \"local\"", "/abs/{{ id }}").unwrap(),
            "/abs/a"
        );
        let err = dir_of("kind = \"local\"", "../{{ id }}").unwrap_err();
        assert!(
            err.contains("environment.workdir: rendered `../a`"),
            "{err}"
        );
    }

    #[test]
    fn two_tasks_in_one_workdir_are_named() {
        let d = tempfile::tempdir().unwrap();
        let rows = "{\"name\":\"a\",\"d\":\"x\"}\n{\"name\":\"b\",\"d\":\"y\"}\n{\"name\":\"c\",\"d\":\"x\"}\n";
        let tables = "[environment]\nworkdir = \"/t/{{ d }}\"\n";
        let err = plan_of(d.path(), "kind = \"docker\"", tables, rows).unwrap_err();
        assert!(
            err.ends_with("t.jsonl:3: environment.workdir: tasks `a` (line 1) and `c` render the same workdir `/t/x`; each task needs a directory of its own (use `{{ id }}` in it)"),
            "{err}"
        );
        let rows = "{\"name\":\"a\",\"d\":\"x/in\"}\n{\"name\":\"b\",\"d\":\"x-2\"}\n{\"name\":\"c\",\"d\":\"x\"}\n";
        let err = plan_of(d.path(), "kind = \"docker\"", tables, rows).unwrap_err();
        assert!(
            err.contains(
                "tasks `a` (line 1) and `c` render nested workdirs (`/t/x/in` is inside `/t/x`)"
            ),
            "{err}"
        );
        let rows = "{\"name\":\"a\",\"d\":\"x\"}\n{\"name\":\"b\",\"d\":\"x-2\"}\n";
        assert!(plan_of(d.path(), "kind = \"docker\"", tables, rows).is_ok());
    }

    #[test]
    fn a_verify_command_that_renders_empty_is_refused_and_an_empty_seed_is_none() {
        let d = tempfile::tempdir().unwrap();
        let tables = "[environment]\nworkdir = \"/t/{{ id }}\"\nseed = \"{{ s }}\"\n[verify]\ncommand = \"{{ c }}\"\n";
        let t = plan_of(
            d.path(),
            "kind = \"docker\"",
            tables,
            "{\"name\":\"a\",\"s\":\"\",\"c\":\"true\"}\n",
        )
        .unwrap();
        assert_eq!(t[0].env.as_ref().unwrap().seed, None);
        let err = plan_of(
            d.path(),
            "kind = \"docker\"",
            tables,
            "{\"name\":\"a\",\"s\":\"/s\",\"c\":\" \"}\n",
        )
        .unwrap_err();
        assert!(
            err.ends_with("t.jsonl:1: verify.command: rendered an empty command"),
            "{err}"
        );
        let err = plan_of(
            d.path(),
            "kind = \"docker\"",
            tables,
            "{\"name\":\"a\",\"s\":\"s\",\"c\":\"x\"}\n",
        )
        .unwrap_err();
        assert!(
            err.contains("environment.seed: must be an absolute path"),
            "{err}"
        );
    }
}
