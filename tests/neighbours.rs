//! Hostile neighbours in one Docker workspace with the default isolation
//! (`user`: the test image runs as root): a conversation attacks the tmux
//! server, the helper, convoy's files and FIFOs, the other conversations'
//! data or the workspace's limits, again and again, while canary
//! conversations beside it check their exact observations. Half the
//! canaries are mid-conversation when the attacks land, half start while
//! they go on. Paths are found the way a model would find them
//! (`find`, `pgrep`), never taken from convoy's source. Real binary, real
//! tmux, real Docker; scripted conversations.

mod support;

use std::time::Duration;

use serde_json::Value;
use support::hostile::{
    assert_canaries_exact, canaries, docker_job, observations_of, row, run_bounded, Canary,
};
use support::{stderr, TestJob};

const CANARIES: usize = 8;

/// Longer than any of these runs takes when convoy keeps its deadlines.
const BOUND: Duration = Duration::from_secs(240);

/// Every path outside /proc and /sys that `find` selects with `test`, as
/// a shell word list (tmpfs mounts included: no `-xdev`).
fn found(test: &str) -> String {
    format!("$(find / -path /proc -prune -o -path /sys -prune -o {test} -print 2>/dev/null)")
}

/// An attack, then again every second and a half, four times in all.
fn repeated(attack: &str) -> Vec<String> {
    let mut commands = vec![attack.to_string()];
    for _ in 0..3 {
        commands.push("sleep 1.5".to_string());
        commands.push(attack.to_string());
    }
    commands
}

/// Runs the attackers (started first) beside the canaries in one job
/// whose pool holds the attackers and half the canaries; asserts every
/// canary exact, no attacker ever seeing a canary's secret, and convoy
/// exiting 0 or 1.
async fn run_beside_canaries(attackers: &[(&str, Vec<String>)], workspace: &str) -> TestJob {
    let job = TestJob::new();
    let canaries = canaries(CANARIES);
    let mut rows: Vec<Value> = attackers.iter().map(|(id, c)| row(id, c)).collect();
    rows.extend(canaries.iter().map(Canary::row));
    job.tasks(&rows);
    let run = format!(
        "[agent]\ncommand_timeout = \"20s\"\n[run]\nworkers = {}\nmax_attempts = 1\n\
         task_timeout = \"90s\"\n",
        attackers.len() + CANARIES / 2
    );
    job.manifest(&docker_job(workspace, &run));
    let out = run_bounded(&job, BOUND).await;
    let ids: Vec<&str> = attackers.iter().map(|(id, _)| *id).collect();
    assert_canaries_exact(&job, &out, &canaries, &ids);
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "convoy exit {:?}: {}",
        out.status.code(),
        stderr(&out)
    );
    job
}

/// Attackers that each repeat one attack, beside the canaries.
async fn repeated_beside_canaries(attacks: &[(&str, &str)]) -> TestJob {
    let attackers: Vec<_> = attacks.iter().map(|(id, a)| (*id, repeated(a))).collect();
    run_beside_canaries(&attackers, "").await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tmux_commands_of_a_neighbour_reach_no_other_conversation() {
    let sockets = found("-type s");
    let kill_each = format!("for s in {sockets}; do tmux -S \"$s\" kill-server; done");
    let hijack_each = format!(
        "for s in {sockets}; do tmux -S \"$s\" set-hook -g session-created kill-session; \
         for t in $(tmux -S \"$s\" list-sessions -F '#{{session_name}}'); do \
         tmux -S \"$s\" send-keys -t \"$t\" 'cd /; export CANARY=hijacked SECRET=hijacked' Enter; \
         done; done"
    );
    repeated_beside_canaries(&[
        ("kill_server", "tmux kill-server"),
        ("kill_every_socket", &kill_each),
        ("keys_and_hooks", &hijack_each),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neighbour_that_kills_or_deletes_everything_takes_down_no_other() {
    repeated_beside_canaries(&[
        ("pkill_convoy", "pkill -9 -f convoy"),
        ("pkill_tmux", "pkill -9 tmux"),
        ("kill_all", "kill -9 -1"),
        (
            "rm_everything",
            "rm -rf /tmp/* /tmp/.[!.]* /run/* /var/tmp/* /dev/shm/* 2>/dev/null; echo removed",
        ),
    ])
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neighbour_that_stops_tmux_and_the_helper_stops_no_other_conversation() {
    repeated_beside_canaries(&[
        ("stop_tmux", "pkill -STOP tmux"),
        ("stop_helper", "pkill -STOP -f 'convoy shim'"),
    ])
    .await;
}

/// Forged completion records, for every session name and several
/// sequence numbers, into every FIFO found and the attacker's own, for
/// five seconds. Opening read-write never blocks on a FIFO nobody reads.
fn forge_records() -> String {
    format!(
        "fifos=\"{} $CONVOY_FIFO\"; (end=$((SECONDS + 5)); while [ $SECONDS -lt $end ]; do \
         for f in $fifos; do timeout 2 bash -c 'exec 3<>\"$1\" && for n in $(seq 0 20); do \
         for k in 0 1 2 3 4 5 6; do printf \"c%s %s 0 prompt\\nc%s %s 1 exit\\n\" $n $k $n $k >&3; \
         done; done' _ \"$f\"; done; sleep 0.2; done) 2>/dev/null & sleep 5.5; wait; echo forged",
        found("-type p")
    )
}

/// Commands of the two conversations that look at who they are: their
/// uid, their limits, their HOME, the helper's and tmux's OOM score.
fn identity() -> Vec<String> {
    vec![
        "id -u".to_string(),
        "ulimit -u; cat /proc/self/oom_score_adj; stat -c %a \"$HOME\"; \
         [ \"$(stat -c %u \"$HOME\")\" = \"$(id -u)\" ] && echo owns-home"
            .to_string(),
        "for p in $(pgrep -u 0 tmux) $(pgrep -u 0 -f 'convoy shim'); do \
         cat /proc/$p/oom_score_adj 2>/dev/null; done | sort -u"
            .to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_neighbour_can_neither_write_read_nor_forge_another_conversations_files() {
    let out_files = found("-name '*.out'");
    let cmd_files = found("-name '*.cmd'");
    let mut who0 = identity();
    // A secret of who0's own, and where it is, for who1 to try.
    who0.push(
        "echo SECRET-who0 >\"$HOME/secret\" && echo \"$HOME/secret\" >/tmp/peer-path \
         && chmod 644 /tmp/peer-path"
            .to_string(),
    );
    who0.push("sleep 4".to_string());
    let mut who1 = identity();
    who1.push(
        "for i in $(seq 50); do [ -s /tmp/peer-path ] && break; sleep 0.1; done; \
         cat \"$(cat /tmp/peer-path)\""
            .to_string(),
    );
    // The environment of every process while the canaries run theirs.
    who1.push(
        "for i in $(seq 30); do cat /proc/[0-9]*/environ 2>/dev/null | tr '\\0' '\\n' \
         | grep '^SECRET='; sleep 0.1; done | sort -u"
            .to_string(),
    );
    let job = run_beside_canaries(
        &[
            (
                "inject_output",
                repeated(&format!(
                    "for f in {out_files}; do echo INJECTED >>\"$f\"; tail -c 200 \"$f\"; done 2>&1"
                )),
            ),
            (
                "read_commands",
                repeated(&format!("for f in {cmd_files}; do cat \"$f\"; done 2>&1")),
            ),
            ("forge_records", vec![forge_records()]),
            ("who0", who0),
            ("who1", who1),
        ],
        "",
    )
    .await;
    let (w0, w1) = (observations_of(&job, "who0"), observations_of(&job, "who1"));
    let mut wrong = Vec::new();
    let uid = |obs: &[String]| obs.first().and_then(|o| o.trim().parse::<u32>().ok());
    match (uid(&w0), uid(&w1)) {
        (Some(a), Some(b)) if a != 0 && b != 0 && a != b => {}
        _ => wrong.push("two conversations' `id -u`: two different uids, neither 0".to_string()),
    }
    for (name, obs) in [("who0", &w0), ("who1", &w1)] {
        if obs.get(1).map(String::as_str) != Some("1024\n1000\n700\nowns-home\n") {
            wrong.push(format!(
                "{name}: ulimit -u 1024, oom_score_adj 1000, HOME 0700 and its own"
            ));
        }
        // -1000 where the helper may lower its own score (root with
        // CAP_SYS_RESOURCE: not in a default container), else 0: either
        // way far below the sessions' 1000.
        let helper_scores = obs.get(2).map(String::as_str).unwrap_or("");
        let below: bool = !helper_scores.trim().is_empty()
            && helper_scores
                .lines()
                .all(|l| l.trim().parse::<i32>().is_ok_and(|v| v <= 0));
        if !below {
            wrong.push(format!(
                "{name}: the helper and tmux are root's with oom_score_adj at most 0"
            ));
        }
    }
    if !w1.get(3).is_some_and(|o| o.contains("Permission denied")) {
        wrong.push("who1: reading who0's file is denied".to_string());
    }
    if w1.get(4).map(String::as_str) != Some("") {
        wrong.push("who1: no other conversation's environment is readable".to_string());
    }
    assert!(
        wrong.is_empty(),
        "expected:\n  {}\nwho0 saw {w0:#?}\nwho1 saw {w1:#?}",
        wrong.join("\n  ")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_bomb_in_one_conversation_starves_no_other() {
    // The container's own limit keeps a bomb that nothing else stops off
    // the host's process table.
    let job = run_beside_canaries(
        &[(
            "bomb",
            vec![
                "ulimit -u".to_string(),
                "timeout 8 bash -c 'for i in $(seq 5000); do sleep 30 & done' >/dev/null 2>&1; \
                 echo launched"
                    .to_string(),
                "timeout 10 bash -c ':(){ :|:& };:' >/dev/null 2>&1; echo bombed".to_string(),
            ],
        )],
        "pids_limit = 2500\n",
    )
    .await;
    let bomb = observations_of(&job, "bomb");
    assert_eq!(
        bomb.first().map(String::as_str),
        Some("1024\n"),
        "workspace.session_pids defaults to 1024: {bomb:#?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_memory_hog_in_one_conversation_is_stopped_and_harms_no_other() {
    // 2 GiB in 64 MiB steps, against a 256 MiB cap; then eight processes
    // of 64 MiB each, under the cap alone, over it together.
    let hog = "python3 -c 'import time\nb = []\nfor n in range(32):\n    \
               b.append(b\"x\" * (64 << 20)); print(\"held\", (n + 1) * 64, flush=True); \
               time.sleep(0.2)\nprint(\"hog-complete\", flush=True); time.sleep(5)'";
    let many = "for i in $(seq 8); do python3 -c 'import time; b = b\"x\" * (64 << 20); \
                time.sleep(20)' & done; sleep 8; echo \"hogs alive: $(pgrep -c -u \"$(id -u)\" python3)\"";
    let job = run_beside_canaries(
        &[
            ("hog", vec![hog.to_string(), "echo after".to_string()]),
            ("hogs", vec![many.to_string(), "echo after".to_string()]),
        ],
        "session_memory = \"256m\"\n",
    )
    .await;
    let (hog, hogs) = (observations_of(&job, "hog"), observations_of(&job, "hogs"));
    assert!(
        !hog.concat().contains("hog-complete"),
        "one process held 2 GiB under a 256 MiB cap: {hog:#?}"
    );
    assert!(
        !hogs.concat().contains("hogs alive: 8"),
        "eight processes held 512 MiB together under a 256 MiB cap: {hogs:#?}"
    );
    // The conversation is told why its process died.
    for obs in [&hog, &hogs] {
        assert!(
            obs.concat()
                .contains("over workspace.session_memory (256 MiB); killed its largest"),
            "{obs:#?}"
        );
    }
}
