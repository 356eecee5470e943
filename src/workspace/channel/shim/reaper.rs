//! The reaper (`convoy reaper`): the process the helper's tmux server runs
//! under. It is a child subreaper, so whatever a session abandons after
//! its shell died (a `nohup` or `setsid` child of an `exit`ed shell) is
//! re-parented to it rather than to init: every process a session ever
//! started stays below the reaper, where a sweep finds it. It reaps what
//! ends there, and exits once nothing is left below it (the server gone).
//! It is a process of its own, not the helper, because the helper's own
//! children (tmux clients) are waited for by its runtime, which must not
//! find them reaped by someone else; and it outlives a helper that dies,
//! as the tmux server does, for the next helper to adopt.

use std::io::Write;
use std::path::Path;

use nix::errno::Errno;
use nix::sys::wait::{waitpid, WaitPidFlag};
use nix::unistd::Pid;

/// The file (in the helper's private directory) where the reaper writes
/// its pid once the server runs below it.
pub const PID_FILE: &str = "reaper.pid";

/// Runs `argv` (the tmux client that starts the server) as a child
/// subreaper, says `ok` (or why not) on stdout, then reaps until nothing
/// is left below it. Never returns.
pub fn reaper(pid_file: &Path, argv: &[String]) -> ! {
    let say = |line: &str| {
        let mut out = std::io::stdout();
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    };
    // Out of convoy's process group: a Ctrl-C on the terminal is
    // convoy's to handle, and the server must live until the helper ends it.
    let _ = nix::unistd::setsid();
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        say(&format!("cannot become a subreaper: {e}"));
        std::process::exit(1);
    }
    let Some((program, args)) = argv.split_first() else {
        say("no command");
        std::process::exit(2);
    };
    let status = match std::process::Command::new(program).args(args).status() {
        Ok(s) => s,
        Err(e) => {
            say(&format!("cannot run {program}: {e}"));
            std::process::exit(1);
        }
    };
    if !status.success() {
        say(&format!("{program} failed: {status}"));
        std::process::exit(1);
    }
    // A server that was running already is not below this reaper: then
    // there is nothing to reap, and the reaper that started it stays.
    match waitpid(None::<Pid>, Some(WaitPidFlag::WNOHANG)) {
        Err(Errno::ECHILD) => {
            say("ok");
            std::process::exit(0);
        }
        _ => {
            let _ = std::fs::write(pid_file, std::process::id().to_string());
            say("ok");
        }
    }
    // Stdout was the helper's pipe: let it go.
    if let Ok(null) = std::fs::OpenOptions::new().write(true).open("/dev/null") {
        let _ = nix::unistd::dup2(std::os::fd::AsRawFd::as_raw_fd(&null), 1);
    }
    loop {
        if let Err(Errno::ECHILD) = waitpid(None::<Pid>, None) {
            std::process::exit(0);
        }
    }
}
