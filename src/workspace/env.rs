//! What a session's environment holds, and where a task's session opens:
//! the defaults every session gets, a task's HOME and TMPDIR inside its
//! workdir, and what the manifest says (which wins over both).

use super::channel::protocol::Prepare;

/// Every session gets these unless `workspace.env` (or `pass_env`) says
/// otherwise: a pager or a prompt waiting for a human would swallow a
/// command until its timeout.
pub const ALWAYS: [(&str, &str); 6] = [
    ("PAGER", "cat"),
    ("GIT_PAGER", "cat"),
    ("MANPAGER", "cat"),
    ("GIT_TERMINAL_PROMPT", "0"),
    ("DEBIAN_FRONTEND", "noninteractive"),
    ("PIP_NO_INPUT", "1"),
];

/// A task's HOME and TMPDIR, relative to its workdir: inside it, so that
/// what tools write there goes with the workdir (fresh per attempt,
/// removed with it), and hidden from a plain `ls`.
pub const HOME_DIR: &str = ".home";
pub const TMP_DIR: &str = ".tmp";

/// Where a task's session opens: its own workdir, made ready by the helper
/// before the shell starts (see [`Prepare`]). A relative workdir is under
/// the workspace's own (`workspace.workdir`, else its temporary one).
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Place {
    pub workdir: String,
    pub prepare: Prepare,
}

/// The variables of convoy's own environment named in
/// `workspace.pass_env`, then `workspace.env` (which wins). Validation
/// refused every key variable (`llm.api_key_env`, each endpoint's) in
/// `pass_env`; a named variable convoy does
/// not have is said once.
pub(super) fn configured(spec: &crate::manifest::WorkspaceSpec) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    for name in &spec.pass_env {
        match std::env::var(name) {
            Ok(v) if !spec.env.contains_key(name) => env.push((name.clone(), v)),
            Ok(_) => {}
            Err(_) => tracing::warn!(
                "workspace.pass_env names `{name}`, which convoy's environment does not have (or not as UTF-8); sessions get none"
            ),
        }
    }
    env.extend(spec.env.iter().map(|(k, v)| (k.clone(), v.clone())));
    env
}

/// One session's environment: [`ALWAYS`], HOME and TMPDIR inside `workdir`
/// (a task's own), then `configured`, each variable once. Also the
/// directories to make in the workdir for the HOME and TMPDIR it kept.
pub(super) fn session_env(
    configured: &[(String, String)],
    workdir: Option<&str>,
) -> (Vec<(String, String)>, Vec<String>) {
    let set = |k: &str| configured.iter().any(|(c, _)| c == k);
    let mut env: Vec<(String, String)> = ALWAYS
        .iter()
        .filter(|(k, _)| !set(k))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let mut dirs = Vec::new();
    if let Some(w) = workdir {
        for (k, d) in [("HOME", HOME_DIR), ("TMPDIR", TMP_DIR)] {
            if !set(k) {
                env.push((k.into(), format!("{}/{d}", w.trim_end_matches('/'))));
                dirs.push(d.to_string());
            }
        }
    }
    env.extend(configured.iter().cloned());
    (env, dirs)
}

/// A task's workdir as the helper sees it: a relative one is under the
/// workspace's workdir `base`.
pub(super) fn resolve(base: Option<&str>, workdir: &str) -> String {
    match base {
        Some(base) if !workdir.starts_with('/') => {
            format!("{}/{workdir}", base.trim_end_matches('/'))
        }
        _ => workdir.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workspace_env_wins_over_every_default() {
        let configured = vec![
            ("PAGER".to_string(), "less".to_string()),
            ("HOME".to_string(), "/root".to_string()),
        ];
        let (env, dirs) = session_env(&configured, Some("/tasks/a/"));
        let get = |k: &str| -> Vec<&str> {
            env.iter()
                .filter(|(n, _)| n == k)
                .map(|(_, v)| v.as_str())
                .collect()
        };
        assert_eq!(get("PAGER"), vec!["less"]);
        assert_eq!(get("HOME"), vec!["/root"]);
        assert_eq!(get("TMPDIR"), vec!["/tasks/a/.tmp"]);
        assert_eq!(get("GIT_TERMINAL_PROMPT"), vec!["0"]);
        assert_eq!(dirs, vec![".tmp"]);
        // Without a task environment: the defaults, no HOME or TMPDIR.
        let (env, dirs) = session_env(&[], None);
        assert_eq!(env.len(), ALWAYS.len());
        assert!(dirs.is_empty());
    }
}
