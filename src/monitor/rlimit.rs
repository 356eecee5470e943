//! RLIMIT_NOFILE at startup: a job with 256 workers needs more than the
//! 1024 descriptors many shells hand out, so convoy raises its own soft
//! limit to what the job needs (up to the hard limit) before it starts.
//! The system calls are the `rlimit` crate's.

use ::rlimit::Resource;

/// Descriptors convoy needs: a fixed base (runtime, journal, helper
/// stream, Docker API) plus, per conversation that can be in flight, one
/// HTTP connection to the model and a little slack, plus, for the local
/// workspace, what the helper child and its tmux client use.
pub fn estimate(workers: u64, max_in_flight: u64, local: bool) -> u64 {
    let base = 256;
    let http = workers.min(max_in_flight);
    let per_conversation = if local { 2 } else { 1 };
    base + http + workers * per_conversation
}

/// What happened to the limit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Raised {
    pub before: u64,
    pub after: u64,
    pub hard: u64,
    pub needed: u64,
}

#[derive(Debug, thiserror::Error)]
#[error(
    "this job needs about {needed} open files but the hard limit is {hard}; \
     raise it (e.g. `ulimit -Hn {needed}` as root, or LimitNOFILE= in a systemd unit) \
     or lower run.workers"
)]
pub struct TooLow {
    pub needed: u64,
    pub hard: u64,
}

/// Raises the soft limit towards `needed` (never lowers it). A hard limit
/// below `needed` is a warning; below the bare minimum the job cannot run.
pub fn raise(needed: u64) -> Result<Raised, TooLow> {
    let (soft, hard) = Resource::NOFILE.get().unwrap_or((1024, 1024));
    // Raises the soft limit to min(needed, hard), never lowers it. An error
    // leaves the limit as it was, which the reading below reports.
    let _ = ::rlimit::increase_nofile_limit(needed);
    let (after, _) = Resource::NOFILE.get().unwrap_or((soft, hard));
    let minimum = 256 + 16;
    if after < minimum.min(needed) {
        return Err(TooLow { needed, hard });
    }
    Ok(Raised {
        before: soft,
        after,
        hard,
        needed,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn estimate_grows_with_workers_and_counts_http_once() {
        assert_eq!(estimate(128, 256, false), 256 + 128 + 128);
        assert_eq!(estimate(1000, 256, false), 256 + 256 + 1000);
        assert!(estimate(10, 10, true) > estimate(10, 10, false));
    }

    #[test]
    fn raising_never_lowers_the_limit() {
        let (soft, _) = Resource::NOFILE.get().unwrap();
        let r = raise(64).unwrap();
        assert_eq!(r.before, soft);
        assert_eq!(r.after, soft);
    }
}
