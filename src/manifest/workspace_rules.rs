//! The `[workspace]` rules serde cannot judge: which keys go with which
//! kind and channel, sizes and limits, and how conversations are kept
//! apart.

use super::schema::{ChannelKind, Isolation, Manifest, WorkspaceKind, MIN_SESSION_MEMORY};

/// Reports through `check(ok, key, message)` each rule `m.workspace`
/// breaks.
pub(super) fn check_workspace(m: &Manifest, check: &mut impl FnMut(bool, &str, &str)) {
    let ws = &m.workspace;
    check(
        ws.kind == WorkspaceKind::Docker || ws.mounts.is_empty(),
        "workspace.mounts",
        "mounts need workspace.kind = \"docker\"",
    );
    check(
        ws.mounts.iter().all(|mt| mt.container.starts_with('/')),
        "workspace.mounts",
        "every `container` path must be absolute",
    );
    check(
        ws.kind == WorkspaceKind::Docker || ws.channel == ChannelKind::Helper,
        "workspace.channel",
        "\"exec\" needs workspace.kind = \"docker\"",
    );
    check(ws.nofile >= 64, "workspace.nofile", "must be at least 64");
    let count = ws.containers.count();
    check(
        count.is_none_or(|n| n >= 1),
        "workspace.containers",
        "must be at least 1",
    );
    check(
        ws.kind == WorkspaceKind::Docker || count == Some(1),
        "workspace.containers",
        "several containers need workspace.kind = \"docker\"",
    );
    check(
        ws.sessions_per_container.is_none_or(|n| n >= 1),
        "workspace.sessions_per_container",
        "must be at least 1",
    );
    check(
        ws.sessions_per_container.is_none() || count.is_none(),
        "workspace.sessions_per_container",
        "is for workspace.containers = \"auto\"",
    );
    check(
        ws.kind == WorkspaceKind::Docker || ws.engines.is_empty(),
        "workspace.engines",
        "engines need workspace.kind = \"docker\"",
    );
    for e in &ws.engines {
        check(
            ["unix://", "tcp://", "http://", "https://"]
                .iter()
                .any(|scheme| e.starts_with(scheme) && e.len() > scheme.len()),
            "workspace.engines",
            &format!(
                "`{e}` is not an engine address: unix:///path/to/docker.sock or tcp://host:port"
            ),
        );
    }
    check(
        count.is_none_or(|n| ws.engines.len() <= n as usize),
        "workspace.engines",
        &format!(
            "{} engines for workspace.containers = {}: each engine gets a container, so give at least as many containers",
            ws.engines.len(),
            ws.containers
        ),
    );
    if let Some(Err(e)) = ws.memory_bytes() {
        check(false, "workspace.memory", &e);
    }
    check(
        ws.cpus.is_none_or(|c| c > 0.0 && c.is_finite()),
        "workspace.cpus",
        "must be more than 0",
    );
    check(
        ws.pids_limit.is_none_or(|p| p >= 16),
        "workspace.pids_limit",
        "must be at least 16",
    );
    check(
        ws.env.keys().all(|k| is_env_name(k)),
        "workspace.env",
        "variable names must be letters, digits and '_', not starting with a digit",
    );
    check(
        ws.pass_env.iter().all(|k| is_env_name(k)),
        "workspace.pass_env",
        "variable names must be letters, digits and '_', not starting with a digit",
    );
    // Every key variable of the job, `llm.api_key_env` first, then each
    // endpoint's as resolved (named by the manifest key it came from);
    // each variable once.
    let own = m
        .llm
        .api_key_env
        .clone()
        .map(|k| (k, "llm.api_key_env".to_string()));
    let endpoints = m.llm.endpoints().into_iter();
    let keys = own
        .into_iter()
        .chain(endpoints.filter_map(|e| Some((e.api_key_env?, e.key_named))));
    let mut said: Vec<String> = Vec::new();
    for (key, named) in keys {
        if said.contains(&key) {
            continue;
        }
        check(
            !ws.pass_env.contains(&key),
            "workspace.pass_env",
            &format!("`{key}` is {named}: an API key never reaches a session"),
        );
        said.push(key);
    }
    check(
        ws.kind == WorkspaceKind::Docker || ws.workdir.as_deref().is_none_or(|w| !w.is_empty()),
        "workspace.workdir",
        "must not be empty",
    );
    check(
        ws.session_pids >= 16,
        "workspace.session_pids",
        "must be at least 16",
    );
    match ws.session_memory_bytes() {
        Err(e) => check(false, "workspace.session_memory", &e),
        Ok(b) => check(
            b >= MIN_SESSION_MEMORY,
            "workspace.session_memory",
            "must be at least 64m",
        ),
    }
    if ws.isolation == Isolation::User {
        check(
            ws.kind == WorkspaceKind::Docker,
            "workspace.isolation",
            "\"user\" needs workspace.kind = \"docker\": the local workspace runs every session as convoy's own user (no uid switch without root)",
        );
        check(
            ws.kind != WorkspaceKind::Docker || ws.channel == ChannelKind::Helper,
            "workspace.isolation",
            "\"user\" needs workspace.channel = \"helper\": the exec channel has no helper to switch users",
        );
        check(
            ws.user.as_deref().is_none_or(is_root),
            "workspace.isolation",
            "\"user\" needs the container to run as root, and workspace.user is not root (set isolation = \"none\" or remove workspace.user)",
        );
    }
}

/// A name a shell can hold as a variable.
fn is_env_name(k: &str) -> bool {
    !k.is_empty()
        && !k.starts_with(|c: char| c.is_ascii_digit())
        && k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
}

/// `workspace.user` names root: "root" or uid 0, with any group.
fn is_root(user: &str) -> bool {
    matches!(user.split(':').next(), Some("root" | "0"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The keys `[workspace]` + `keys` breaks (tests/cli_errors.rs checks
    /// the messages, lines and exit code through the binary).
    fn broken(keys: &str) -> Vec<String> {
        let text = format!(
            "name = \"t\"\n[tasks]\nsource = \"t.jsonl\"\n[prompt]\nuser = \"x\"\n[llm]\n[workspace]\n{keys}"
        );
        let m: Manifest = toml::from_str(&text).unwrap();
        let mut keys = Vec::new();
        check_workspace(&m, &mut |ok, key: &str, _: &str| {
            if !ok {
                keys.push(key.to_string());
            }
        });
        keys
    }

    #[test]
    fn user_isolation_needs_docker_the_helper_and_root() {
        for refused in [
            "kind = \"local\"\nisolation = \"user\"\n",
            "channel = \"exec\"\nisolation = \"user\"\n",
            "user = \"1000:1000\"\nisolation = \"user\"\n",
            "user = \"nobody\"\nisolation = \"user\"\n",
        ] {
            assert_eq!(broken(refused), ["workspace.isolation"], "{refused}");
        }
        for fine in [
            "isolation = \"user\"\n",
            "user = \"root\"\nisolation = \"user\"\n",
            "user = \"0:0\"\nisolation = \"user\"\n",
            "user = \"1000\"\nisolation = \"auto\"\n",
            "kind = \"local\"\nisolation = \"auto\"\n",
            "channel = \"exec\"\nisolation = \"none\"\n",
        ] {
            assert_eq!(broken(fine), Vec::<String>::new(), "{fine}");
        }
    }

    #[test]
    fn no_endpoint_key_in_pass_env() {
        let text = "name = \"t\"\n[tasks]\nsource = \"t.jsonl\"\n[prompt]\nuser = \"x\"\n\
            [llm]\napi_key_env = \"A\"\n[[llm.endpoints]]\nbase_url = \"http://a/v1\"\n\
            [[llm.endpoints]]\nbase_url = \"http://b/v1\"\napi_key_env = \"B\"\n\
            [[llm.endpoints]]\nbase_url = \"http://c/v1\"\napi_key_env = \"A\"\n\
            [workspace]\npass_env = [\"HOME\", \"A\", \"B\"]\n";
        let m: Manifest = toml::from_str(text).unwrap();
        let mut said = Vec::new();
        check_workspace(&m, &mut |ok, key: &str, message: &str| {
            if !ok {
                said.push(format!("{key}: {message}"));
            }
        });
        assert_eq!(
            said,
            [
                "workspace.pass_env: `A` is llm.api_key_env: an API key never reaches a session",
                "workspace.pass_env: `B` is llm.endpoints[1].api_key_env: an API key never reaches a session",
            ]
        );
    }

    #[test]
    fn session_limits_have_floors() {
        assert_eq!(broken("session_pids = 15\n"), ["workspace.session_pids"]);
        assert_eq!(
            broken("session_memory = \"63m\"\n"),
            ["workspace.session_memory"]
        );
        assert_eq!(
            broken("session_pids = 16\nsession_memory = \"64m\"\n"),
            Vec::<String>::new()
        );
    }
}
