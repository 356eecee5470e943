//! Several Docker engines (`workspace.engines`), for real on one machine:
//! the local socket, and the same engine exposed a second way, a TCP
//! listener on loopback in front of the socket that the test starts (and
//! kills mid-job). The real binary, real Docker, real tmux; the script
//! provider.

mod support;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use support::{containers_of_run, docker, observations, stderr, TestJob};
use tokio::net::{TcpListener, UnixStream};
use tokio::task::JoinSet;

const SOCKET: &str = "/var/run/docker.sock";

/// A TCP listener on loopback that forwards each connection to the Docker
/// socket: a second engine address for the same engine. Dropping (or
/// `kill`) stops the listener and breaks every connection it carried.
struct TcpEngine {
    addr: String,
    connections: Arc<AtomicUsize>,
    tasks: JoinSet<()>,
}

impl TcpEngine {
    async fn start() -> TcpEngine {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("tcp://{}", listener.local_addr().unwrap());
        let connections = Arc::new(AtomicUsize::new(0));
        let mut tasks = JoinSet::new();
        let count = connections.clone();
        tasks.spawn(async move {
            let mut carried = JoinSet::new();
            while let Ok((mut tcp, _)) = listener.accept().await {
                count.fetch_add(1, Ordering::SeqCst);
                carried.spawn(async move {
                    if let Ok(mut unix) = UnixStream::connect(SOCKET).await {
                        let _ = tokio::io::copy_bidirectional(&mut tcp, &mut unix).await;
                    }
                });
            }
        });
        TcpEngine {
            addr,
            connections,
            tasks,
        }
    }

    /// The listener goes away, and with it every connection it carried
    /// (the connection tasks live in the accept task's set).
    fn kill(&mut self) {
        self.tasks.abort_all();
    }
}

fn manifest(engine: &TcpEngine, containers: u32, extra: &str) -> String {
    let engines = format!("engines = [\"unix://{SOCKET}\", \"{}\"]", engine.addr);
    support::fleet_job(containers, &engines, extra)
}

fn rows(n: usize, sleep: &str) -> Vec<Value> {
    support::hostname_rows(n, sleep)
}

/// Every task ended `ok`, once, attempt 1; the hostnames they ran on.
fn all_ok_once(job: &TestJob, n: usize) -> BTreeSet<String> {
    let results = job.results();
    let ids: BTreeSet<&str> = results.iter().map(|r| r["id"].as_str().unwrap()).collect();
    assert_eq!((results.len(), ids.len()), (n, n), "one result per task");
    let mut hosts = BTreeSet::new();
    for r in &results {
        assert_eq!(r["status"], "ok", "{r}");
        assert_eq!(r["attempt"], 1, "{r}");
        let obs = observations(&job.trajectory(r["id"].as_str().unwrap()));
        hosts.insert(obs[0].trim().to_string());
    }
    hosts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn containers_spread_over_two_engines() {
    let engine = TcpEngine::start().await;
    let job = TestJob::new();
    job.tasks(&rows(24, "0.2"));
    job.manifest(&manifest(&engine, 2, "[run]\nworkers = 8\n"));
    let out = job.run(&[("RUST_LOG", "info")]).await;
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let hosts = all_ok_once(&job, 24);
    assert_eq!(
        hosts.len(),
        2,
        "both containers ran conversations: {hosts:?}"
    );
    assert!(
        engine.connections.load(Ordering::SeqCst) > 0,
        "nothing went through the TCP engine"
    );
    assert!(
        stderr(&out).contains("2 containers on 2 engines"),
        "{}",
        stderr(&out)
    );
    assert_eq!(containers_of_run(&job.path("out")), Vec::<String>::new());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_engine_that_goes_away_takes_only_its_container_and_the_job_goes_on() {
    let mut engine = TcpEngine::start().await;
    let job = TestJob::new();
    job.tasks(&rows(40, "1"));
    job.manifest(&manifest(
        &engine,
        2,
        "[run]\nworkers = 8\nmax_attempts = 1\n",
    ));
    let child = job.spawn(
        support::convoy_bin(),
        &["run", "job.toml", "--out", "out"],
        &[("RUST_LOG", "info")],
    );
    job.wait_for_results(4).await;
    engine.kill();
    let out = tokio::time::timeout(Duration::from_secs(400), child.wait_with_output())
        .await
        .expect("convoy did not exit")
        .unwrap();
    let log = stderr(&out);
    // The verdict cannot be clean (the container behind the dead engine
    // could not be checked), which does not change the exit code.
    assert_eq!(out.status.code(), Some(0), "{log}");
    all_ok_once(&job, 40);
    assert!(log.contains("writing off a workspace container"), "{log}");
    let rerun = job
        .results()
        .iter()
        .filter(|r| r["infra_retries"].as_u64() > Some(0))
        .count();
    assert!(rerun > 0, "nothing was re-run");
    let s = job.summary();
    assert!(
        s["leaks"]["why"].to_string().contains("written off"),
        "{}",
        s["leaks"]
    );
    // Its container is still on the engine nobody could reach (here the
    // same engine as the socket's). `convoy sweep job.toml` finds it on
    // the manifest's engines even with DOCKER_HOST naming one that does
    // not answer, and says which engines it could not look at.
    let left = containers_of_run(&job.path("out"));
    assert!(left.len() <= 1, "{left:?}");
    let swept = job
        .convoy(
            &["sweep", "job.toml"],
            &[("DOCKER_HOST", "tcp://127.0.0.1:9")],
        )
        .await;
    let said = String::from_utf8_lossy(&swept.stdout);
    assert_eq!(swept.status.code(), Some(0), "{said}{}", stderr(&swept));
    assert!(said.contains("tcp://127.0.0.1:9"), "{said}");
    assert_eq!(
        containers_of_run(&job.path("out")),
        Vec::<String>::new(),
        "{said}"
    );
    for id in left {
        // Only if the sweep missed it (the assertion above says so).
        let _ = docker(&["rm", "-f", &id]);
    }
}
