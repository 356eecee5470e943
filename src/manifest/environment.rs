//! `[environment]` and `[verify]`: each conversation's own directory, what
//! is put in it before the model's first turn, and the check after its
//! last. The tables hold templates; `tasks::env` renders them per task.
//! Here: their schema, defaults, and the rules that need no task row
//! (template syntax, file keys that would escape the workdir, which keys
//! go with which workspace kind).

use std::path::{Component, Path};
use std::time::Duration;

use indexmap::IndexMap;
use serde::{Deserialize, Serialize};

use super::schema::{Manifest, WorkspaceKind};

/// When a task's workdir is kept after the task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    #[default]
    Never,
    /// Status not ok, or a reward below 1.0.
    Failed,
    Always,
}

/// How a verification's outcome becomes a reward.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RewardRule {
    /// 1.0 if the command exits 0, else 0.0.
    #[default]
    ExitCode,
    /// The last line of the output, parsed as a float.
    LastLine,
}

/// Which tasks are verified.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum VerifyWhen {
    /// Only tasks that ended with status ok.
    #[default]
    Finished,
    /// Also max_steps, timeout and failed ones.
    Always,
}

/// Who runs setup or verification commands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum RunAs {
    /// The conversation's own user (with user isolation), as the agent.
    #[default]
    Agent,
    /// The container's root: for tasks that install packages, or checks
    /// that must read what the agent cannot.
    Root,
}

/// Paths (relative to the workdir) and their content templates, in the
/// order the manifest writes them (files are written in that order).
pub type FileTemplates = IndexMap<String, String>;

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct EnvironmentSpec {
    /// This conversation's own directory (template), created fresh for
    /// every attempt. Docker: absolute. Local: a relative path is under
    /// `workspace.workdir`, else under the run's temporary workspace.
    pub workdir: String,
    /// A directory copied into the workdir first (template). Docker: a path
    /// in the container; local: relative to the manifest.
    #[serde(default)]
    pub seed: Option<String>,
    #[serde(default)]
    pub files: FileTemplates,
    /// Commands run in the session before the first model turn, in order.
    #[serde(default)]
    pub setup: Vec<String>,
    /// For all setup commands together.
    #[serde(
        default = "EnvironmentSpec::default_setup_timeout",
        with = "humantime_serde"
    )]
    pub setup_timeout: Duration,
    #[serde(default)]
    pub keep: Keep,
    #[serde(default)]
    pub setup_user: RunAs,
}

impl EnvironmentSpec {
    fn default_setup_timeout() -> Duration {
        Duration::from_secs(5 * 60)
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySpec {
    /// Written into the workdir only after the agent ended.
    #[serde(default)]
    pub files: FileTemplates,
    /// The check (template), run after the agent ended.
    pub command: String,
    #[serde(default = "VerifySpec::default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    #[serde(default)]
    pub reward: RewardRule,
    #[serde(default)]
    pub when: VerifyWhen,
    #[serde(default)]
    pub user: RunAs,
}

impl VerifySpec {
    fn default_timeout() -> Duration {
        Duration::from_secs(10 * 60)
    }
}

/// Why `path` (a file key) does not name a file inside the workdir, if
/// it does not: absolute, empty, or climbing out with `..` (`a/../../x`).
pub fn escapes(path: &str) -> Option<&'static str> {
    let p = Path::new(path);
    if p.is_absolute() {
        return Some("is absolute");
    }
    let mut depth = 0i32;
    for c in p.components() {
        match c {
            Component::Normal(_) => depth += 1,
            Component::CurDir => {}
            Component::ParentDir if depth == 0 => return Some("climbs out of the workdir"),
            Component::ParentDir => depth -= 1,
            Component::RootDir | Component::Prefix(_) => return Some("is absolute"),
        }
    }
    (depth == 0).then_some("names no file in the workdir")
}

/// Reports through `check(ok, key, message)` each rule `[environment]` and
/// `[verify]` break. Rules that need a rendered value (an absolute docker
/// workdir, two tasks in one workdir) are checked while planning.
pub(super) fn check_environment(m: &Manifest, check: &mut impl FnMut(bool, &str, &str)) {
    let local = m.workspace.kind == WorkspaceKind::Local;
    let mut templates: Vec<(&str, &str)> = Vec::new();
    if let Some(e) = &m.environment {
        templates.push(("environment.workdir", &e.workdir));
        templates.extend(e.seed.as_deref().map(|s| ("environment.seed", s)));
        templates.extend(e.files.values().map(|v| ("environment.files", v.as_str())));
        templates.extend(e.setup.iter().map(|s| ("environment.setup", s.as_str())));
        check(
            !e.workdir.trim().is_empty(),
            "environment.workdir",
            "must not be empty",
        );
        check_files(&e.files, "environment.files", check);
        check(
            !e.setup_timeout.is_zero(),
            "environment.setup_timeout",
            "must be more than 0s",
        );
        check(
            !(local && e.setup_user == RunAs::Root),
            "environment.setup_user",
            "\"root\" needs workspace.kind = \"docker\": the local workspace runs every session as convoy's own user",
        );
    }
    if let Some(v) = &m.verify {
        templates.push(("verify.command", &v.command));
        templates.extend(v.files.values().map(|t| ("verify.files", t.as_str())));
        check(
            !v.command.trim().is_empty(),
            "verify.command",
            "must not be empty",
        );
        check_files(&v.files, "verify.files", check);
        check(
            v.files.is_empty() || m.environment.is_some(),
            "verify.files",
            "need [environment]: without a workdir of its own, every conversation would write them into the same directory",
        );
        check(
            !v.timeout.is_zero(),
            "verify.timeout",
            "must be more than 0s",
        );
        check(
            !(local && v.user == RunAs::Root),
            "verify.user",
            "\"root\" needs workspace.kind = \"docker\": the local workspace runs every session as convoy's own user",
        );
    }
    let env = crate::tasks::template_env();
    for (key, t) in templates {
        if let Err(e) = env.template_from_str(t) {
            check(false, key, &format!("invalid template: {e}"));
        }
    }
}

fn check_files(files: &FileTemplates, key: &str, check: &mut impl FnMut(bool, &str, &str)) {
    for path in files.keys() {
        if let Some(why) = escapes(path) {
            check(
                false,
                key,
                &format!("`{path}` {why}: keys are paths inside the workdir"),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys `extra` (after a local or docker preamble) breaks.
    fn broken(kind: &str, extra: &str) -> Vec<String> {
        let text = format!(
            "name = \"t\"\n[tasks]\nsource = \"t.jsonl\"\n[prompt]\nuser = \"x\"\n[llm]\n[workspace]\nkind = \"{kind}\"\n{extra}"
        );
        let m: Manifest = toml::from_str(&text).unwrap();
        let mut keys = Vec::new();
        check_environment(&m, &mut |ok, key: &str, _: &str| {
            if !ok {
                keys.push(key.to_string());
            }
        });
        keys
    }

    #[test]
    fn defaults_and_manifest_order() {
        let m: Manifest = toml::from_str(
            "name = \"t\"\n[tasks]\nsource = \"t.jsonl\"\n[prompt]\nuser = \"x\"\n[llm]\n[environment]\nworkdir = \"/t/{{ id }}\"\nfiles = { \"z.md\" = \"z\", \"a.md\" = \"a\" }\n[verify]\ncommand = \"true\"\n",
        )
        .unwrap();
        let e = m.environment.unwrap();
        assert_eq!(e.setup_timeout, Duration::from_secs(300));
        assert_eq!((e.keep, e.setup_user), (Keep::Never, RunAs::Agent));
        let names: Vec<_> = e.files.keys().collect();
        assert_eq!(names, ["z.md", "a.md"]);
        let v = m.verify.unwrap();
        assert_eq!(v.timeout, Duration::from_secs(600));
        assert_eq!(
            (v.reward, v.when, v.user),
            (RewardRule::ExitCode, VerifyWhen::Finished, RunAs::Agent)
        );
    }

    #[test]
    fn file_keys_that_escape_the_workdir_are_refused() {
        for bad in ["../x", "a/../../x", "/etc/passwd", "", ".", "a/.."] {
            assert!(escapes(bad).is_some(), "{bad:?} accepted");
        }
        for fine in ["task.md", "a/b/c.txt", "./a", "a/../b"] {
            assert_eq!(escapes(fine), None, "{fine:?} refused");
        }
        let keys = broken(
            "docker",
            "[environment]\nworkdir = \"/t\"\nfiles = { \"../x\" = \"\" }\n[verify]\ncommand = \"true\"\nfiles = { \"a/../../x\" = \"\" }\n",
        );
        assert_eq!(keys, ["environment.files", "verify.files"]);
    }

    #[test]
    fn root_needs_docker_and_verify_files_need_an_environment() {
        let env = "[environment]\nworkdir = \"w\"\nsetup_user = \"root\"\n[verify]\ncommand = \"true\"\nuser = \"root\"\n";
        assert_eq!(
            broken("local", env),
            ["environment.setup_user", "verify.user"]
        );
        assert!(broken("docker", env).is_empty());
        assert_eq!(
            broken(
                "docker",
                "[verify]\ncommand = \"true\"\nfiles = { \"c.sh\" = \"x\" }\n"
            ),
            ["verify.files"]
        );
    }

    #[test]
    fn empty_values_zero_timeouts_and_bad_templates_are_named() {
        let keys = broken(
            "docker",
            "[environment]\nworkdir = \" \"\nsetup = [\"{{ x \"]\nsetup_timeout = \"0s\"\n[verify]\ncommand = \"\"\ntimeout = \"0s\"\n",
        );
        assert_eq!(
            keys,
            [
                "environment.workdir",
                "environment.setup_timeout",
                "verify.command",
                "verify.timeout",
                "environment.setup"
            ]
        );
    }
}
