//! Workspaces: where conversations' shell commands run. One workspace per
//! job, one tmux session per conversation, every request through the
//! workspace helper (`channel`).

pub mod channel;
pub mod docker;
mod docker_exec;
mod helper_flags;
mod local;
pub mod procfs;
mod session;
mod shared;
pub mod sweep;

pub use channel::protocol::{ErrorKind, RunOutput};
pub use session::Session;
pub use shared::{ShutdownReport, Workspace, WorkspaceError};
