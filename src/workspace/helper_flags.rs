//! What the workspace helper is told about the sessions it will run, from
//! the manifest, and how: `convoy shim` flags. One place for both backends,
//! so the docker and local helpers cannot be told different things.

use clap::ValueEnum;

use super::channel::{Isolation, ShimConfig};
use crate::manifest::{WorkspaceKind, WorkspaceSpec};

/// The helper's configuration for this workspace: the manifest's
/// isolation in Docker; on the local workspace always `none` (sessions run
/// as convoy's own user: no uid switch without root, and `"user"` is
/// refused at load). The per-session limits go along either way; the
/// helper uses them only with user isolation.
pub fn shim_config(spec: &WorkspaceSpec) -> ShimConfig {
    ShimConfig {
        isolation: match spec.kind {
            WorkspaceKind::Docker => spec.isolation,
            WorkspaceKind::Local => Isolation::None,
        },
        session_pids: Some(spec.session_pids),
        // Validated at load; an unparsable value cannot reach here.
        session_memory: spec.session_memory_bytes().ok(),
    }
}

/// `config` as the flags of `convoy shim`, spelled as its `--help` says.
pub fn shim_flags(config: &ShimConfig) -> Vec<String> {
    let isolation = config
        .isolation
        .to_possible_value()
        .map(|v| v.get_name().to_string())
        .unwrap_or_default();
    let mut flags = vec!["--isolation".to_string(), isolation];
    if let Some(n) = config.session_pids {
        flags.extend(["--session-pids".to_string(), n.to_string()]);
    }
    if let Some(bytes) = config.session_memory {
        flags.extend(["--session-memory".to_string(), bytes.to_string()]);
    }
    flags
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::{Cli, Command};
    use clap::Parser;

    /// The flags, read back by `convoy shim`'s own parser, give the same
    /// configuration: the spelling cannot drift from the CLI.
    fn read_back(config: &ShimConfig) -> ShimConfig {
        let args = ["convoy", "shim", "--root", "/r"]
            .into_iter()
            .map(String::from)
            .chain(shim_flags(config));
        match Cli::try_parse_from(args).unwrap().command {
            Command::Shim {
                isolation,
                session_pids,
                session_memory,
                ..
            } => ShimConfig {
                isolation,
                session_pids,
                session_memory,
            },
            other => panic!("parsed as {other:?}"),
        }
    }

    #[test]
    fn the_flags_read_back_as_the_same_configuration() {
        for isolation in [Isolation::Auto, Isolation::User, Isolation::None] {
            let config = ShimConfig {
                isolation,
                session_pids: Some(16),
                session_memory: Some(64 << 20),
            };
            assert_eq!(read_back(&config), config);
        }
        let bare = ShimConfig::default();
        assert_eq!(read_back(&bare), bare);
    }

    #[test]
    fn the_local_workspace_never_asks_for_user_isolation() {
        let spec = WorkspaceSpec {
            kind: WorkspaceKind::Local,
            isolation: Isolation::Auto,
            session_pids: 200,
            session_memory: "1g".into(),
            ..WorkspaceSpec::default()
        };
        assert_eq!(
            shim_config(&spec),
            ShimConfig {
                isolation: Isolation::None,
                session_pids: Some(200),
                session_memory: Some(1 << 30),
            }
        );
        let docker = WorkspaceSpec {
            kind: WorkspaceKind::Docker,
            ..spec
        };
        assert_eq!(shim_config(&docker).isolation, Isolation::Auto);
    }
}
