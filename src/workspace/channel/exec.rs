//! The exec-per-request channel: every request is one `docker exec` of a
//! small bash script that talks to tmux directly. It needs nothing in the
//! image but bash and tmux, so it works where the convoy binary cannot run
//! (another architecture). It costs a whole exec round trip per request
//! (about 58 ms here, and the daemon tops out near 25 execs/s), which is why
//! the helper is the default.
//!
//! Completion is still an event: each session's shell writes its record to
//! the session's own FIFO, and the request's script blocks reading it.

use bollard::exec::{CreateExecOptions, StartExecResults};
use bollard::Docker;
use futures::StreamExt;

use super::client::ChannelError;
use super::protocol::{CheckOp, ErrorKind, Op, Opening, Reply, RunOutput, WorkspaceStats};

/// Where the exec channel keeps its tmux socket and sessions (a tmpfs).
pub const EXEC_ROOT: &str = "/tmp/convoy-exec";
/// Where its rc file and tmux config are copied at boot.
pub const EXEC_FILES: &str = "/opt/convoy/exec";

/// Ops as bash. Output: one header line (`OK ...`, or `ERR KIND MESSAGE`
/// with KIND a wire name of [`ErrorKind`]), then the payload.
const SCRIPT: &str = r#"
set -u
root=/tmp/convoy-exec; files=/opt/convoy/exec; sock=$root/tmux.sock; conf=$files/tmux.conf
t() { tmux -S "$sock" -f "$conf" "$@"; }
op=$1; shift
case $op in
open)
  name=$1; workdir=$2; shift 2
  dir=$root/s/$name; mkdir -p "$dir"; rm -f "$dir/done.fifo"; mkfifo "$dir/done.fifo"
  args=(); for kv in "$@"; do args+=(-e "$kv"); done
  [ -n "$workdir" ] && args+=(-c "$workdir")
  exec 3<>"$dir/done.fifo"
  out=$(t new-session -d -s "$name" -x 250 -y 50 "${args[@]}" -e "CONVOY_SESSION=$name" \
        -e "CONVOY_SESSION_DIR=$dir" -e "CONVOY_FIFO=$dir/done.fifo" \
        "exec bash --noprofile --rcfile '$files/rc.bash' -i" 2>&1) || { echo "ERR shell_did_not_start $out"; exit 0; }
  read -r -t 30 n s rest <&3 || { t kill-session -t "=$name"; echo "ERR shell_did_not_start the shell of session $name did not start within 30s"; exit 0; }
  echo OK ;;
run)
  name=$1; timeout=$2; max=$3; cmd=$4
  dir=$root/s/$name; k=$(date +%s%N)
  [ -d "$dir" ] || { echo "ERR no_such_session no session $name"; exit 0; }
  printf '%s' "$cmd" > "$dir/$k.cmd"
  exec 3<>"$dir/done.fifo"
  # The same line as the helper types (see shim/run.rs, typed_line).
  line=" __convoy_seq=$k; POSIXLY_CORRECT=1; \\unset -f . source builtin command enable; \\enable . source; \\trap -- '__convoy_done exit' EXIT; \\unset POSIXLY_CORRECT; \\. '$dir/$k.cmd' </dev/null >'$dir/$k.out' 2>&1"
  out=$(t send-keys -t "=$name:" -l "$line" \; send-keys -t "=$name:" Enter 2>&1) || { echo "ERR tmux $out"; exit 0; }
  rec() { local n s rc how; while read -r -t "$1" n s rc how <&3; do
            [ "$s" = "$k" ] && { echo "$rc $how"; return 0; }; done; return 1; }
  timed_out=0; killed=0
  if ! r=$(rec "$timeout"); then
    timed_out=1; t send-keys -t "=$name:" C-c
    if ! r=$(rec 2); then
      pane=$(t display-message -p -t "=$name:" '#{pane_pid}')
      fg=$(awk '{print $8}' "/proc/$pane/stat" 2>/dev/null)
      pg=$(awk '{print $5}' "/proc/$pane/stat" 2>/dev/null)
      if [ -n "$fg" ] && [ "$fg" != "$pg" ] && [ "$fg" -gt 0 ]; then kill -9 -- "-$fg"; killed=1; fi
      r=$(rec 2) || r="-1 exit"
    fi
  fi
  set -- $r
  f="$dir/$k.out"; size=$(stat -c %s "$f" 2>/dev/null || echo 0); omitted=0
  [ "$size" -gt "$max" ] && omitted=$((size - max))
  echo "OK $1 $timed_out $killed ${2:-prompt} $omitted"
  if [ "$omitted" -gt 0 ]; then
    head -c $((max / 2)) "$f"; printf '\n[... %s bytes of output omitted ...]\n' "$omitted"; tail -c $((max - max / 2)) "$f"
  else
    cat "$f" 2>/dev/null
  fi
  rm -f "$dir/$k.cmd" "$f" ;;
close)
  name=$1; dir=$root/s/$name
  t kill-session -t "=$name" 2>/dev/null
  for round in 1 2 3; do
    pids=$(grep -lzxF "CONVOY_SESSION_DIR=$dir" /proc/[0-9]*/environ 2>/dev/null | cut -d/ -f3)
    [ -z "$pids" ] && break
    kill -9 $pids 2>/dev/null
  done
  rm -rf "$dir"; echo OK ;;
remove)
  case $1 in /?*) rm -rf -- "$1"; echo OK ;; *) echo "ERR bad_request refusing to remove $1" ;; esac ;;
list)
  echo OK; t list-sessions -F '#{session_name}' 2>/dev/null ;;
stats)
  echo OK; t list-sessions -F 'S #{session_name}' 2>/dev/null
  for f in $(grep -lz "^CONVOY_SESSION_DIR=$root/s/" /proc/[0-9]*/environ 2>/dev/null); do
    p=${f#/proc/}; p=${p%/environ}
    s=$(tr '\0' '\n' < "$f" 2>/dev/null | sed -n "s|^CONVOY_SESSION_DIR=$root/s/||p")
    n=$(ls "/proc/$p/fd" 2>/dev/null | wc -l)
    echo "P $p $s $n"
  done ;;
shutdown)
  t kill-server 2>/dev/null; echo OK ;;
esac
"#;

pub struct ExecClient {
    docker: Docker,
    container: String,
}

impl ExecClient {
    pub fn new(docker: Docker, container: String) -> ExecClient {
        ExecClient { docker, container }
    }

    pub async fn call(&self, op: Op) -> Result<Reply, ChannelError> {
        match op {
            Op::Check(check) => self.check(check).await,
            op => self.call_one(op).await,
        }
    }

    /// A check, as this channel has no holder: a session opened, the
    /// command run in its shell, the session closed.
    async fn check(&self, check: CheckOp) -> Result<Reply, ChannelError> {
        let session = check.at.session.clone();
        let opened = self.call_one(Op::Open(check.at)).await?;
        if !matches!(opened, Reply::Done) {
            return Ok(opened);
        }
        let ran = self
            .call_one(Op::Run {
                session: session.clone(),
                command: check.command,
                timeout_ms: check.timeout_ms,
                max_output_bytes: check.max_output_bytes,
            })
            .await;
        let closed = self.call_one(Op::Close { session }).await;
        let ran = ran?;
        match closed? {
            Reply::Done => Ok(ran),
            error => Ok(error),
        }
    }

    async fn call_one(&self, op: Op) -> Result<Reply, ChannelError> {
        let args: Vec<String> = match &op {
            // Preparing a workdir (as root, for a session's uid) is the
            // helper's: this channel has no uids and no file transfer.
            Op::Open(Opening {
                prepare: Some(_), ..
            }) => {
                return Ok(Reply::Error {
                    kind: ErrorKind::BadRequest,
                    message: "task environments ([environment]) need the workspace helper; workspace.channel = \"exec\" cannot prepare a workdir".into(),
                })
            }
            Op::Open(Opening {
                session,
                workdir,
                env,
                prepare: None,
            }) => [
                "open".into(),
                session.clone(),
                workdir.clone().unwrap_or_default(),
            ]
            .into_iter()
            .chain(env.iter().map(|(k, v)| format!("{k}={v}")))
            .collect(),
            Op::Run {
                session,
                command,
                timeout_ms,
                max_output_bytes,
            } => vec![
                "run".into(),
                session.clone(),
                format!("{:.3}", *timeout_ms as f64 / 1000.0),
                max_output_bytes.to_string(),
                command.clone(),
            ],
            Op::Close { session } => vec!["close".into(), session.clone()],
            Op::Remove { path } => vec!["remove".into(), path.clone()],
            Op::List => vec!["list".into()],
            Op::Stats => vec!["stats".into()],
            Op::Shutdown => vec!["shutdown".into()],
            Op::GatewayOpen { .. } | Op::GatewayNext { .. } | Op::GatewayAnswer(_) => {
                return Ok(Reply::Error {
                    kind: ErrorKind::BadRequest,
                    message: "the model gateway (agent.kind = \"external\") needs the workspace helper; workspace.channel = \"exec\" has none".into(),
                })
            }
            // `call` makes a check three calls of this channel.
            Op::Check(_) => {
                return Ok(Reply::Error {
                    kind: ErrorKind::BadRequest,
                    message: "the exec channel runs a check as open, run and close".into(),
                })
            }
        };
        let out = self.exec(&args).await?;
        let (header, payload) = out.split_once('\n').unwrap_or((out.as_str(), ""));
        if let Some(error) = header.strip_prefix("ERR ") {
            let (kind, message) = error.split_once(' ').unwrap_or((error, ""));
            return Ok(Reply::Error {
                kind: ErrorKind::from_wire(kind),
                message: message.to_string(),
            });
        }
        let fields: Vec<&str> = header.split(' ').collect();
        if fields.first() != Some(&"OK") {
            return Err(ChannelError::Broken(format!(
                "exec channel: unexpected output {header:?}"
            )));
        }
        Ok(match op {
            Op::Run { .. } => {
                let num = |i: usize| {
                    fields
                        .get(i)
                        .and_then(|f| f.parse::<i64>().ok())
                        .unwrap_or(0)
                };
                Reply::Ran(RunOutput {
                    output: payload.to_string(),
                    exit_code: num(1) as i32,
                    timed_out: num(2) == 1,
                    killed: num(3) == 1,
                    shell_exited: fields.get(4) == Some(&"exit"),
                    omitted_bytes: num(5) as u64,
                    shell_restarted: false,
                })
            }
            Op::List => Reply::Sessions {
                names: payload.lines().map(str::to_string).collect(),
            },
            Op::Stats => Reply::Stats(parse_stats(payload)),
            _ => Reply::Done,
        })
    }

    async fn exec(&self, args: &[String]) -> Result<String, ChannelError> {
        let broken = |e: bollard::errors::Error| ChannelError::Broken(format!("docker exec: {e}"));
        let mut cmd = vec![
            "bash".to_string(),
            "-c".into(),
            SCRIPT.into(),
            "convoy-exec".into(),
        ];
        cmd.extend(args.iter().cloned());
        let exec = self
            .docker
            .create_exec(
                &self.container,
                CreateExecOptions {
                    cmd: Some(cmd),
                    attach_stdout: Some(true),
                    attach_stderr: Some(false),
                    ..Default::default()
                },
            )
            .await
            .map_err(broken)?;
        let mut bytes = Vec::new();
        if let StartExecResults::Attached { mut output, .. } = self
            .docker
            .start_exec(&exec.id, None)
            .await
            .map_err(broken)?
        {
            while let Some(chunk) = output.next().await {
                bytes.extend_from_slice(&chunk.map_err(broken)?.into_bytes());
            }
        }
        Ok(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// `S name` lines are sessions, `P pid session fds` lines processes.
fn parse_stats(payload: &str) -> WorkspaceStats {
    let mut stats = WorkspaceStats::default();
    for line in payload.lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f.as_slice() {
            ["S", name] => stats.sessions.push(name.to_string()),
            ["P", pid, session, fds] => {
                if let Ok(pid) = pid.parse() {
                    stats.processes.push((pid, Some(session.to_string())));
                    stats.fds += fds.parse::<u64>().unwrap_or(0);
                }
            }
            _ => {}
        }
    }
    stats
}
