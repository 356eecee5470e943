//! How session requests reach tmux inside the workspace: the workspace
//! helper (`convoy shim`) and the client that multiplexes every session's
//! requests over its one stdio stream.

mod client;
pub mod protocol;
mod shim;
mod tmux;

pub use client::{ChannelError, ShimClient};
pub use shim::serve;
