//! convoy's own open FDs, threads and RSS, read from /proc/self. Besides
//! the monitor's samples, a small thread reads them every `FAST` between
//! samples and keeps the highest, so the summary's peaks are peaks and not
//! whatever the samples happened to land on. Reading /proc/self costs well
//! under a millisecond even with thousands of FDs open.

use std::sync::mpsc;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use super::peaks::Peak;

/// How often the monitor's thread reads between samples.
pub const FAST: Duration = Duration::from_millis(100);

/// convoy's own open FDs.
fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count() as u64)
}

/// Returns once convoy's open FDs stop falling (checked every 10 ms, at
/// most a second): what was just let go (the HTTP pool's connections,
/// closed by their own tasks a moment after the pool is dropped) is gone
/// before a measurement.
pub async fn settle_fds() {
    const STEP: Duration = Duration::from_millis(10);
    const STABLE_STEPS: u32 = 5;
    let mut last = open_fds();
    let mut stable = 0;
    for _ in 0..100 {
        tokio::time::sleep(STEP).await;
        let now = open_fds();
        stable = if now < last { 0 } else { stable + 1 };
        last = now;
        if stable >= STABLE_STEPS {
            break;
        }
    }
}

/// convoy's own open FDs, threads and RSS (bytes), from /proc/self.
pub fn own_usage() -> (u64, u64, u64) {
    let fds = open_fds();
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find(|l| l.starts_with(name))
            .and_then(|l| l.split_whitespace().nth(1)?.parse::<u64>().ok())
            .unwrap_or(0)
    };
    (fds, field("Threads:"), field("VmRSS:") * 1024)
}

/// convoy's open TCP connections: its FDs that are sockets listed in
/// /proc/self/net/tcp or tcp6. These are the HTTP pool's connections to
/// the model endpoints (a local Docker engine is reached over a unix
/// socket), which the leak rules must not take for leaked descriptors.
pub fn tcp_connections() -> u64 {
    let mut inodes = std::collections::HashSet::new();
    for table in ["/proc/self/net/tcp", "/proc/self/net/tcp6"] {
        let text = std::fs::read_to_string(table).unwrap_or_default();
        // The tenth column of each row after the header is the inode.
        inodes.extend(
            text.lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().nth(9))
                .filter(|i| *i != "0")
                .map(str::to_string),
        );
    }
    let Ok(dir) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    dir.filter_map(Result::ok)
        .filter_map(|e| std::fs::read_link(e.path()).ok())
        .filter(|target| {
            target
                .to_str()
                .and_then(|t| t.strip_prefix("socket:["))
                .and_then(|t| t.strip_suffix(']'))
                .is_some_and(|inode| inodes.contains(inode))
        })
        .count() as u64
}

/// The highest readings since the last `take`.
#[derive(Debug, Default)]
struct OwnPeaks {
    fds: Peak,
    threads: Peak,
    rss: Peak,
}

/// The reading thread. It stops when this is dropped.
pub struct OwnSampler {
    peaks: Arc<OwnPeaks>,
    stop: Option<mpsc::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl OwnSampler {
    /// Starts reading every `every`. Without a thread (the system refused
    /// one) the peaks are the samples' own.
    pub fn start(every: Duration) -> OwnSampler {
        let peaks = Arc::new(OwnPeaks::default());
        let (stop, stopped) = mpsc::channel::<()>();
        let p = peaks.clone();
        let thread = std::thread::Builder::new()
            .name("convoy-own-usage".into())
            .spawn(move || {
                // Ends when the sender is dropped (or sends).
                while let Err(mpsc::RecvTimeoutError::Timeout) = stopped.recv_timeout(every) {
                    let (fds, threads, rss) = own_usage();
                    p.fds.observe(fds);
                    p.threads.observe(threads);
                    p.rss.observe(rss);
                }
            })
            .map_err(|e| tracing::warn!("cannot start the FD sampler thread: {e}"))
            .ok();
        OwnSampler {
            peaks,
            stop: Some(stop),
            thread,
        }
    }

    /// Reads now, and returns the highest FDs, threads and RSS since the
    /// last call (this reading included) and this reading.
    pub fn take(&self) -> ((u64, u64, u64), (u64, u64, u64)) {
        let now = own_usage();
        let peak = (
            self.peaks.fds.take().max(now.0),
            self.peaks.threads.take().max(now.1),
            self.peaks.rss.take().max(now.2),
        );
        (now, peak)
    }
}

impl Drop for OwnSampler {
    fn drop(&mut self) {
        drop(self.stop.take());
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_peak_holds_fds_opened_and_closed_between_takes() {
        // Other tests of this process open and close FDs meanwhile, so the
        // figures are absolute: N far above what the rest ever holds.
        const N: u64 = 1000;
        let s = OwnSampler::start(Duration::from_millis(5));
        let files: Vec<_> = (0..N)
            .map(|_| std::fs::File::open("/dev/null").unwrap())
            .collect();
        // Wait for the thread to have read them: its reading is the event.
        let mut seen = 0;
        for _ in 0..2000 {
            seen = seen.max(s.peaks.fds.take());
            if seen >= N {
                break;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        s.peaks.fds.observe(seen);
        drop(files);
        let (now, peak) = s.take();
        assert!(peak.0 >= N, "peak {peak:?}");
        assert!(now.0 < N, "now {now:?}: the files are closed");
    }

    #[test]
    fn tcp_connections_counts_this_process_sockets() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (server, _) = listener.accept().unwrap();
        // The listener and both ends of the connection (other tests of
        // this process may hold more).
        assert!(tcp_connections() >= 3);
        drop((listener, client, server));
    }
}
