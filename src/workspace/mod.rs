//! Workspaces: where conversations' shell commands run. One workspace per
//! job (one container, or a fleet of them), one tmux session per
//! conversation, every request through the workspace helper (`channel`).

mod capacity;
pub mod channel;
pub mod docker;
mod docker_exec;
mod engines;
mod env;
mod error;
mod fleet;
pub mod gateway;
mod helper_flags;
mod local;
pub mod procfs;
mod session;
mod shared;
pub mod sweep;
mod warnings;

pub use channel::protocol::{ErrorKind, Prepare, RunOutput};
pub use env::{Place, ALWAYS as DEFAULT_ENV, HOME_DIR, TMP_DIR};
pub use error::WorkspaceError;
pub use fleet::{Pin, Workspace};
pub use session::Session;
pub use shared::ShutdownReport;
