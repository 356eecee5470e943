//! Everything convoy reads from /proc, in one place: process start times
//! and states, terminal foreground groups, environments, command lines and
//! open files. The workspace helper uses it to find and sweep the processes
//! a session started, `convoy sweep` to find what crashed runs left. Every
//! function is blocking (file reads) and cheap for one process; scans of
//! every process belong on a blocking thread.

use std::collections::HashSet;

/// The fields of `/proc/PID/stat` after the command name (which may hold
/// spaces and parentheses, so fields start after the last `)`): index 0 is
/// the state (field 3 of proc(5)).
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.get(stat.rfind(')')? + 2..)?;
    Some(rest.split_whitespace().map(str::to_string).collect())
}

/// When the process started (clock ticks since boot), unless it is gone
/// or a zombie. With the pid it names a process uniquely.
pub fn start_time(pid: u32) -> Option<u64> {
    let fields = stat_fields(pid)?;
    if fields.first().map(String::as_str) == Some("Z") {
        return None;
    }
    fields.get(19)?.parse().ok()
}

/// Exists and has not exited (a zombie has exited but is not reaped yet).
pub fn is_running(pid: u32) -> bool {
    stat_fields(pid).is_some_and(|f| f.first().map(String::as_str) != Some("Z"))
}

/// The terminal's foreground process group of the shell `pid` (field 8),
/// if it is not the shell's own group (field 5).
pub fn foreground_group(shell: u32) -> Option<i32> {
    let fields = stat_fields(shell)?;
    let pgrp: i32 = fields.get(2)?.parse().ok()?;
    let tpgid: i32 = fields.get(5)?.parse().ok()?;
    (tpgid > 0 && tpgid != pgrp).then_some(tpgid)
}

/// Every pid in /proc.
pub fn pids() -> Vec<u32> {
    std::fs::read_dir("/proc")
        .map(|dir| {
            dir.filter_map(|e| e.ok())
                .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
                .collect()
        })
        .unwrap_or_default()
}

/// The process's environment entries (`NAME=value`, raw bytes).
fn environ(pid: u32) -> Option<Vec<u8>> {
    std::fs::read(format!("/proc/{pid}/environ")).ok()
}

fn entries(env: &[u8]) -> impl Iterator<Item = &str> {
    env.split(|&b| b == 0)
        .filter_map(|e| std::str::from_utf8(e).ok())
}

/// The process's command line, its arguments as they were passed.
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .map(|b| {
            b.split(|&c| c == 0)
                .filter(|a| !a.is_empty())
                .map(|a| String::from_utf8_lossy(a).into_owned())
                .collect()
        })
        .unwrap_or_default()
}

/// How many files the process has open.
pub fn open_files(pid: u32) -> u64 {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64)
}

/// One process as the helper sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proc {
    pub pid: u32,
    pub ppid: u32,
    /// Real uid.
    pub uid: u32,
    /// Exited, not reaped yet: holds nothing but its pid.
    pub zombie: bool,
    /// Its command name (`Name:`, at most 15 bytes).
    pub name: String,
    /// The value of its `CONVOY_SESSION_DIR` entry, if it has one.
    pub session_dir: Option<String>,
}

/// Every process but `me`, with its parent, uid and session marker.
/// Processes that end while they are read are left out.
pub fn scan(me: u32) -> Vec<Proc> {
    pids()
        .into_iter()
        .filter(|&pid| pid != me)
        .filter_map(|pid| {
            let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
            let field = |name: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(name))
                    .and_then(|v| v.split_whitespace().next())
                    .map(str::to_string)
            };
            let zombie = field("State:").as_deref() == Some("Z");
            let name = field("Name:").unwrap_or_default();
            let ppid = field("PPid:")?.parse().ok()?;
            let uid = field("Uid:")?.parse().ok()?;
            let session_dir = environ(pid).and_then(|env| {
                entries(&env)
                    .find_map(|e| e.strip_prefix("CONVOY_SESSION_DIR="))
                    .map(str::to_string)
            });
            Some(Proc {
                pid,
                ppid,
                uid,
                zombie,
                name,
                session_dir,
            })
        })
        .collect()
}

/// `root` and every process below it in `procs` (children of children).
pub fn descendants(procs: &[Proc], root: u32) -> HashSet<u32> {
    let mut found: HashSet<u32> = [root].into();
    loop {
        let before = found.len();
        for p in procs {
            if found.contains(&p.ppid) {
                found.insert(p.pid);
            }
        }
        if found.len() == before {
            return found;
        }
    }
}

/// The process's resident memory in bytes (0 if it is gone).
pub fn rss_bytes(pid: u32) -> u64 {
    let pages = std::fs::read_to_string(format!("/proc/{pid}/statm"))
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .unwrap_or(0);
    pages * page_size()
}

fn page_size() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE)
        .ok()
        .flatten()
        .map_or(4096, |p| p as u64)
}

/// The real uid of a process, from the owner of its /proc entry (one
/// `stat`, no read): the effective uid, which for session processes is the
/// same; `None` if it is gone.
pub fn owner(pid: u32) -> Option<u32> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/proc/{pid}"))
        .ok()
        .map(|m| m.uid())
}

/// Running processes (not `me`) whose command line or environment
/// contains `needle`.
pub fn mentioning(needle: &[u8], me: u32) -> Vec<u32> {
    pids()
        .into_iter()
        .filter(|&pid| pid != me && is_running(pid))
        .filter(|pid| {
            ["cmdline", "environ"].iter().any(|f| {
                std::fs::read(format!("/proc/{pid}/{f}"))
                    .is_ok_and(|b| b.windows(needle.len()).any(|w| w == needle))
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_child_is_found_by_its_marker_and_its_command_line() {
        let mut child = std::process::Command::new("sleep")
            .arg("1000")
            .env("CONVOY_SESSION_DIR", "/r/s/m1")
            .spawn()
            .unwrap();
        let pid = child.id();
        // Until it has exec'd, the child's environment is still ours.
        for _ in 0..1000 {
            if cmdline(pid) == ["sleep", "1000"] {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(2));
        }
        let me = std::process::id();
        let found = scan(me);
        let child_seen = found.iter().find(|p| p.pid == pid).unwrap();
        assert_eq!((child_seen.ppid, child_seen.zombie), (me, false));
        assert!(descendants(&found, me).contains(&pid));
        assert!(rss_bytes(pid) > 0 && owner(pid).is_some());
        assert_eq!(cmdline(pid), ["sleep", "1000"]);
        assert!(mentioning(b"CONVOY_SESSION_DIR=/r/s/m1", me).contains(&pid));
        assert_eq!(child_seen.session_dir.as_deref(), Some("/r/s/m1"));
        assert!(start_time(pid).is_some() && is_running(pid));
        child.kill().unwrap();
        child.wait().unwrap();
        assert!(start_time(pid).is_none() && !is_running(pid));
    }
}
