//! Per-conversation users (`isolation = "user"`): each open session runs
//! as a uid no other open session has, taken from a pool of its own. A
//! closed session's uid comes back to the pool only once no process of it
//! is left, so a uid never carries one conversation's leftovers into the
//! next.
//!
//! The kernel counts processes per uid across the whole host (that is what
//! `session_pids` limits), and other convoy jobs may run containers on the
//! same engine: so each helper's pool starts at a base of its own, drawn
//! at random among [`BASES`] blocks of 65,536 uids above [`FIRST_UID`],
//! kept in its private directory for a helper that takes over.
//!
//! Also here: the session launcher (`convoy session-exec`, what a tmux
//! pane runs: it drops to the session's uid with its limits and execs the
//! shell) and the memory watch that holds each session to
//! `session_memory`.

use std::collections::{HashMap, HashSet};

/// The lowest uid handed to a session; far above the users an image has.
pub const FIRST_UID: u32 = 1 << 20;

/// How many blocks of 65,536 uids a pool's base is drawn from.
pub const BASES: u32 = 16_000;

/// The pool of session uids.
#[derive(Debug, Default)]
pub(super) struct Users {
    /// The first uid of this pool.
    base: u32,
    /// Never handed out yet: the next is `FIRST_UID + fresh`.
    fresh: u32,
    /// Handed out before and free again (no process left).
    free: Vec<u32>,
    /// Held by an open session.
    open: HashMap<u32, String>,
    /// Of a closed session, until its last process is gone.
    draining: HashMap<u32, String>,
}

impl Users {
    /// The pool whose base is kept in `file`, or a new base (written
    /// there).
    pub fn load_or_draw(file: &std::path::Path) -> std::io::Result<Users> {
        let kept = std::fs::read_to_string(file)
            .ok()
            .and_then(|s| s.trim().parse::<u32>().ok());
        let base = match kept {
            Some(b) => b,
            None => {
                let b = FIRST_UID + fastrand::u32(..BASES) * 65_536;
                std::fs::write(file, b.to_string())?;
                b
            }
        };
        Ok(Users::with_base(base))
    }

    pub fn with_base(base: u32) -> Users {
        Users {
            base,
            ..Users::default()
        }
    }

    /// A uid for `session`, known to no process, and whether this pool
    /// never handed it out before (then it has no name yet).
    pub fn take(&mut self, session: &str) -> (u32, bool) {
        let (uid, fresh) = match self.free.pop() {
            Some(uid) => (uid, false),
            None => {
                self.fresh += 1;
                (self.base + self.fresh - 1, true)
            }
        };
        self.open.insert(uid, session.to_string());
        (uid, fresh)
    }

    /// Marks `uid` taken by `session` (a session a previous helper
    /// opened, adopted); keeps fresh uids above it.
    pub fn adopt(&mut self, session: &str, uid: u32) {
        self.fresh = self.fresh.max(uid.saturating_sub(self.base) + 1);
        self.free.retain(|&u| u != uid);
        self.open.insert(uid, session.to_string());
    }

    /// The session is closed; its uid drains until `settle` sees none of
    /// its processes.
    pub fn release(&mut self, uid: u32) {
        if let Some(session) = self.open.remove(&uid) {
            self.draining.insert(uid, session);
        }
    }

    /// Given the uids that still have processes, returns the drained ones
    /// to the pool; returns the closed sessions that still have processes
    /// (uid, session).
    pub fn settle(&mut self, busy: &HashSet<u32>) -> Vec<(u32, String)> {
        let drained: Vec<u32> = self
            .draining
            .keys()
            .filter(|u| !busy.contains(u))
            .copied()
            .collect();
        for uid in drained {
            self.draining.remove(&uid);
            self.free.push(uid);
        }
        self.draining.iter().map(|(u, s)| (*u, s.clone())).collect()
    }

    /// The session a uid of the pool belongs (or belonged) to.
    pub fn session_of(&self, uid: u32) -> Option<&str> {
        self.open
            .get(&uid)
            .or_else(|| self.draining.get(&uid))
            .map(String::as_str)
    }

    /// Whether `uid` is one the pool ever handed out.
    pub fn is_session_uid(&self, uid: u32) -> bool {
        (self.base..self.base + self.fresh).contains(&uid)
    }

    /// Open sessions by uid.
    pub fn open(&self) -> impl Iterator<Item = (u32, &str)> {
        self.open.iter().map(|(u, s)| (*u, s.as_str()))
    }
}

/// Gives `uid` a name in /etc/passwd and /etc/group (`convoy-UID`), so
/// that tools asking who they are (`whoami`, `id -un`, git's default
/// identity) get an answer. Once per uid of the pool (a helper that takes
/// over may name one again: the same name). Best effort: an image whose
/// /etc cannot be written still runs, and says so once.
pub(super) fn name_user(uid: u32) {
    use std::io::Write;
    let name = format!("convoy-{uid}");
    let add = |file: &str, line: String| -> std::io::Result<()> {
        std::fs::OpenOptions::new()
            .append(true)
            .open(file)?
            .write_all(line.as_bytes())
    };
    let result = add(
        "/etc/passwd",
        format!("{name}:x:{uid}:{uid}:convoy session:/nonexistent:/bin/bash\n"),
    )
    .and_then(|()| add("/etc/group", format!("{name}:x:{uid}:\n")));
    if let Err(e) = result {
        static SAID: std::sync::Once = std::sync::Once::new();
        SAID.call_once(|| eprintln!("cannot name session users in /etc/passwd ({e}); `whoami` in a session will not know its name"));
    }
}

/// What `convoy session-exec` is told.
#[derive(Debug, Clone, Default)]
pub struct Launch {
    /// Drop to this uid (and gid) first.
    pub uid: Option<u32>,
    /// RLIMIT_NPROC for that uid.
    pub nproc: Option<u64>,
    /// Hold the command as a subreaper rather than become it (a check's
    /// holder, see `check::hold`).
    pub hold: bool,
    /// The shell and its arguments.
    pub argv: Vec<String>,
}

/// The session launcher: runs in the tmux pane, as the helper's user, and
/// replaces itself with the session's shell. On the way it makes the
/// shell a child subreaper (what it starts and then abandons, by `nohup`,
/// `setsid` or a double fork, is re-parented to the shell, so the session's
/// processes stay one tree), marks everything the session runs first in
/// line for the OOM killer, and, given a uid, takes the session's limits
/// and becomes that uid with no way back (no supplementary groups, no new
/// privileges from setuid binaries). Returns only on failure.
pub fn session_exec(launch: &Launch) -> std::io::Error {
    use std::os::unix::process::CommandExt;
    let fail = |what: &str, e: nix::Error| {
        std::io::Error::other(format!("convoy session-exec: {what}: {e}"))
    };
    if let Err(e) = nix::sys::prctl::set_child_subreaper(true) {
        return fail("cannot become a subreaper", e);
    }
    // Raising one's own score needs no privilege.
    let _ = std::fs::write("/proc/self/oom_score_adj", "1000");
    if let Some(uid) = launch.uid {
        if let Some(n) = launch.nproc {
            if let Err(e) =
                nix::sys::resource::setrlimit(nix::sys::resource::Resource::RLIMIT_NPROC, n, n)
            {
                return fail("cannot set the process limit", e);
            }
        }
        let (u, g) = (
            nix::unistd::Uid::from_raw(uid),
            nix::unistd::Gid::from_raw(uid),
        );
        if let Err(e) = nix::unistd::setgroups(&[])
            .and_then(|()| nix::unistd::setresgid(g, g, g))
            .and_then(|()| nix::unistd::setresuid(u, u, u))
        {
            return fail(&format!("cannot become uid {uid}"), e);
        }
        if let Err(e) = nix::sys::prctl::set_no_new_privs() {
            return fail("cannot refuse new privileges", e);
        }
    }
    let Some((program, args)) = launch.argv.split_first() else {
        return std::io::Error::other("convoy session-exec: no command");
    };
    let e = std::process::Command::new(program).args(args).exec();
    std::io::Error::other(format!("convoy session-exec: cannot run {program}: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_uid_comes_back_only_once_its_processes_are_gone() {
        let mut users = Users::with_base(FIRST_UID);
        let (a, fresh) = users.take("a");
        assert!(fresh);
        let (b, _) = users.take("b");
        assert_ne!(a, b);
        assert!(users.is_session_uid(a) && users.is_session_uid(b));
        users.release(a);
        // A process of `a` is left: its uid is not handed out again.
        assert_eq!(users.settle(&[a].into()), vec![(a, "a".to_string())]);
        let (c, _) = users.take("c");
        assert!(c != a && c != b);
        assert_eq!(users.session_of(a), Some("a"));
        assert!(users.settle(&HashSet::new()).is_empty());
        assert_eq!(users.take("d"), (a, false));
        assert_eq!(users.session_of(a), Some("d"));
    }

    #[test]
    fn adopted_uids_are_not_handed_out_again() {
        let mut users = Users::with_base(FIRST_UID);
        users.adopt("old", FIRST_UID + 4);
        let fresh: Vec<u32> = (0..6).map(|i| users.take(&format!("s{i}")).0).collect();
        assert!(!fresh.contains(&(FIRST_UID + 4)), "{fresh:?}");
    }

    #[test]
    fn a_pool_keeps_its_base_for_the_next_helper() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("uid-base");
        let mut first = Users::load_or_draw(&file).unwrap();
        let (uid, _) = first.take("a");
        assert!(
            uid >= FIRST_UID && (uid - FIRST_UID).is_multiple_of(65_536),
            "{uid}"
        );
        let mut next = Users::load_or_draw(&file).unwrap();
        next.adopt("a", uid);
        assert_eq!(next.take("b"), (uid + 1, true));
    }
}
