//! `convoy ctl`: a live control channel for a running job. The run serves
//! a unix socket in its run directory (`server`); `convoy ctl RUN_DIR ...`
//! sends one request line and prints the one reply line (`client`).
//!
//! The protocol is one line each way: the request is `pause`, `resume`,
//! `workers N`, `cancel ID` or `status`; the reply is a JSON object with
//! `ok` and either `status` (for `status`) or `error`.

mod client;
mod server;

pub use client::{ctl, CtlAction};
pub use server::CtlServer;

/// The socket's name in the run directory.
pub const SOCKET: &str = "convoy.ctl";

/// A socket path short enough for `sun_path` (108 bytes): the run
/// directory is reached through an open descriptor of it, so its own
/// length does not matter. The descriptor must stay open while the path
/// is used.
fn short_path(dir_fd: &std::fs::File, name: &str) -> std::path::PathBuf {
    use std::os::fd::AsRawFd;
    std::path::PathBuf::from(format!("/proc/self/fd/{}/{name}", dir_fd.as_raw_fd()))
}
