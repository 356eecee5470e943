//! The rules of `agent.kind = "external"`: the job's own agent, talking
//! to the model through convoy's gateway (see `crate::gateway`).

use super::schema::{AgentKind, ChannelKind, Manifest};

/// Reports through `check(ok, key, message)` each rule the agent's kind
/// and command break.
pub(super) fn check_external(m: &Manifest, check: &mut impl FnMut(bool, &str, &str)) {
    let a = &m.agent;
    if a.kind == AgentKind::Builtin {
        check(
            a.command.is_none(),
            "agent.command",
            "is for agent.kind = \"external\" (convoy's own agent has no command)",
        );
        return;
    }
    match &a.command {
        None => check(
            false,
            "agent.kind",
            "\"external\" needs agent.command: the agent's command line, run in each conversation's session",
        ),
        Some(c) if c.trim().is_empty() => check(false, "agent.command", "must not be empty"),
        Some(c) => {
            if let Err(e) = crate::tasks::template_env().template_from_str(c) {
                check(false, "agent.command", &format!("invalid template: {e}"));
            }
        }
    }
    check(
        m.tools.is_empty() && a.tools.is_none(),
        "agent.kind",
        "an external agent brings its own tools: [[tools]] and agent.tools are for convoy's own agent",
    );
    check(
        m.workspace.channel != ChannelKind::Exec,
        "workspace.channel",
        "an external agent needs the workspace helper (its model gateway); \"exec\" has none",
    );
}
