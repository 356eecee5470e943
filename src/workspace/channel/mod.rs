//! How session requests reach tmux inside the workspace: the workspace
//! helper (`convoy shim`) and the client that multiplexes every session's
//! requests over its one stdio stream.

mod client;
pub mod exec;
mod link;
pub mod protocol;
mod server_watch;
mod shim;
mod tmux;

pub use client::{ChannelError, ShimClient};
pub use exec::{ExecClient, EXEC_FILES, EXEC_ROOT};
pub use link::Link;
pub use shim::RC;
pub use shim::{hold, reaper, serve, session_exec, Isolation, Launch, ShimConfig};
pub use tmux::CONF;
