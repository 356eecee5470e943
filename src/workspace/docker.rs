//! The `docker` backend: ONE container for the whole job, booted through
//! bollard, with the workspace helper (`convoy shim`, this very binary)
//! copied in once and started in ONE long-lived attached exec. Every
//! session request travels over that exec's stdio stream; no `docker exec`
//! per command.
//!
//! The container has an init process as PID 1 (orphans are reaped), the
//! labels `convoy.job` and `convoy.run` and its owner's (for `convoy
//! sweep`), and `workspace.nofile` as its open-files limit, clamped (with a
//! warning giving both numbers) when the daemon cannot grant it. It is
//! removed at the end of the job, on failure and on Ctrl-C, unless
//! `workspace.keep = true`. The short-lived container that asks the daemon
//! for that limit carries the same owner labels, so a convoy killed
//! mid-probe leaves it to the sweep.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bollard::models::{ContainerCreateBody, HostConfig, ResourcesUlimits};
use bollard::query_parameters::{CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder};
use bollard::Docker;

use super::channel::{ExecClient, Isolation, Link, CONF, EXEC_FILES, EXEC_ROOT, RC};
use super::docker_exec::{exec_output, start_helper, upload};
use super::error::WorkspaceError;
use super::helper_flags::{shim_config, shim_flags};
use super::{sweep, warnings};
use crate::manifest::{ChannelKind, Job, WorkspaceSpec};

pub(super) use super::engines::client;
pub use super::engines::{connect_to, default_engine};

/// Where the helper binary and its root live inside the container.
const HELPER_BIN: &str = "/opt/convoy/convoy";
/// Root's (mode 0711), not under /tmp: sessions reach only their own
/// entries in it (see the helper's `Shim`).
const HELPER_ROOT: &str = "/run/convoy";
/// How long the end of a job waits for Docker to remove the container.
const REMOVE_WAIT: Duration = Duration::from_secs(20);

/// The container and how requests reach it. Dropping it without `stop`
/// still removes the container (in the background).
pub struct DockerBackend {
    docker: Docker,
    container: Option<String>,
    job: Job,
    run_label: String,
    /// The open-files limit the daemon granted (after clamping).
    nofile: u64,
    /// The helper runs in this image (else: one exec per request).
    helper_ok: bool,
    /// Held while the backend lives: `convoy sweep` leaves its containers
    /// alone. The file is on the host, out of the sessions' reach.
    lock: Option<(sweep::RunLock, PathBuf)>,
}

impl Drop for DockerBackend {
    fn drop(&mut self) {
        if let Some((_lock, path)) = self.lock.take() {
            let _ = std::fs::remove_file(path);
        }
        if let Some(id) = self.container.take() {
            if !self.job.manifest.workspace.keep {
                let docker = self.docker.clone();
                if let Ok(rt) = tokio::runtime::Handle::try_current() {
                    rt.spawn(async move { remove(&docker, &id).await });
                }
            }
        }
    }
}

async fn remove(docker: &Docker, id: &str) {
    let opts = RemoveContainerOptionsBuilder::new()
        .force(true)
        .v(true)
        .build();
    if let Err(e) = docker.remove_container(id, Some(opts)).await {
        tracing::warn!("could not remove workspace container {}: {e}", short(id));
    }
}

fn short(id: &str) -> &str {
    &id[..id.len().min(12)]
}

pub(super) fn boot(msg: impl std::fmt::Display) -> WorkspaceError {
    WorkspaceError::Boot(msg.to_string())
}

impl DockerBackend {
    /// Boots the container and its channel; returns the backend, the link
    /// and the sessions' working directory.
    pub async fn start(
        job: &Job,
        run_label: &str,
        engine: Option<&str>,
    ) -> Result<(DockerBackend, Link, String), WorkspaceError> {
        let spec = &job.manifest.workspace;
        let docker = connect_to(engine).await?;
        check_image(&docker, &spec.image).await?;
        warnings::warn_slow_workdirs(&docker, job).await;
        let mut backend = DockerBackend {
            docker,
            container: None,
            job: job.clone(),
            run_label: run_label.to_string(),
            nofile: spec.nofile,
            helper_ok: spec.channel == ChannelKind::Helper,
            lock: None,
        };
        let name = format!("{}-{:08x}", job.manifest.name, fastrand::u32(..));
        backend.lock = Some(sweep::RunLock::create(&name).map_err(|e| {
            boot(format!(
                "cannot create the run's lock file in {}: {e}",
                sweep::lock_dir().display()
            ))
        })?);
        let booted = match backend.boot_container().await {
            Ok(()) => backend.connect_link().await,
            Err(e) => Err(e),
        };
        match booted {
            Ok(link) => {
                let workdir = spec.workdir.clone().unwrap_or_else(|| "/workspace".into());
                Ok((backend, link, workdir))
            }
            Err(e) => {
                // Removed before the error is returned: dropping the
                // backend only starts a removal, and convoy exits next.
                backend.stop().await;
                Err(e)
            }
        }
    }

    /// The open-files limit the container was granted (after clamping).
    pub fn nofile(&self) -> u64 {
        self.nofile
    }

    /// After the link broke: a new helper if the container still runs, a
    /// new container (and helper) if it died. Sessions of a dead container
    /// are gone; their conversations fail and are tried again.
    pub async fn recover(&mut self) -> Result<Link, WorkspaceError> {
        let id = self.container.clone().unwrap_or_default();
        // A container being killed still reports "running" for a moment, and
        // a helper started in it would break again at once (costing every
        // in-flight task a second attempt): let the state settle first.
        tokio::time::sleep(Duration::from_millis(500)).await;
        let state = self
            .docker
            .inspect_container(
                &id,
                None::<bollard::query_parameters::InspectContainerOptions>,
            )
            .await
            .ok()
            .and_then(|c| c.state);
        let running = state.as_ref().and_then(|s| s.running).unwrap_or(false);
        if !running {
            let (code, oom) = state
                .map(|s| (s.exit_code.unwrap_or(-1), s.oom_killed.unwrap_or(false)))
                .unwrap_or((-1, false));
            tracing::warn!(
                "workspace container {} died (exit code {code}{}); booting a new one, in-flight tasks will be tried again",
                short(&id),
                if oom { ", killed for lack of memory" } else { "" }
            );
            if let Some(id) = self.container.take() {
                remove(&self.docker, &id).await;
            }
            self.boot_container().await?;
        } else {
            tracing::warn!(
                "restarting the workspace helper in container {}",
                short(&id)
            );
        }
        self.connect_link().await
    }

    /// Creates and starts the container (clamping nofile if the daemon
    /// refuses it), checks tmux, and copies the helper in.
    async fn boot_container(&mut self) -> Result<(), WorkspaceError> {
        let image = self.job.manifest.workspace.image.clone();
        let id = match self.create_and_start(self.nofile).await {
            Ok(id) => id,
            Err(e) => {
                // Whether the daemon refused the open-files limit is told by
                // the most it grants, not by the wording of its error.
                let asked = self.nofile;
                let probe = probe_body(&image, self.owner_labels());
                match daemon_nofile_limit(&self.docker, probe).await {
                    Some(max) if max < asked => {
                        warnings::warn_once(format!(
                            "workspace.nofile = {asked} is more than the Docker daemon allows ({max}); using {max}"
                        ));
                        self.nofile = max;
                        self.create_and_start(max).await?
                    }
                    _ => return Err(e),
                }
            }
        };
        tracing::info!(
            "workspace container {} booted from {image} (nofile {})",
            short(&id),
            self.nofile
        );

        let tmux = exec_output(&self.docker, &id, &["tmux", "-V"]).await;
        if !tmux.as_ref().is_ok_and(|(code, _)| *code == 0) {
            return Err(boot(format!(
                "image `{image}` has no tmux ({}); build one with scripts/build-workspace-image.sh",
                tmux.map(|(_, out)| out)
                    .unwrap_or_else(|e| e.to_string())
                    .trim()
            )));
        }
        upload(
            &self.docker,
            &id,
            &[
                (&format!("{EXEC_FILES}/rc.bash"), RC.as_bytes(), 0o644),
                (&format!("{EXEC_FILES}/tmux.conf"), CONF.as_bytes(), 0o644),
            ],
        )
        .await?;
        if self.helper_ok {
            let helper = helper_binary()?;
            let bytes = std::fs::read(&helper).map_err(|e| {
                boot(format!(
                    "cannot read the helper binary `{}`: {e}",
                    helper.display()
                ))
            })?;
            upload(&self.docker, &id, &[(HELPER_BIN, &bytes, 0o755)]).await?;
            if let Err(why) = match exec_output(&self.docker, &id, &[HELPER_BIN, "--version"]).await
            {
                Ok((0, _)) => Ok(()),
                Ok((code, out)) => Err(format!("exit {code}: {}", out.trim())),
                Err(e) => Err(e.to_string()),
            } {
                // The exec channel cannot switch users: with isolation
                // required, falling back would run sessions unisolated.
                if self.job.manifest.workspace.isolation == Isolation::User {
                    return Err(boot(format!(
                        "the convoy binary `{}` cannot run in image `{image}` ({why}), and \
                         workspace.isolation = \"user\" needs it. Build a static convoy (README, \
                         \"Docker workspace\") and set CONVOY_HELPER.",
                        helper.display()
                    )));
                }
                tracing::warn!(
                    "the convoy binary `{}` cannot run in image `{image}` ({why}); falling back to one \
                     docker exec per request, which costs ~60 ms per command and caps the whole job near \
                     25 commands/s. Build a static convoy (README, \"Docker workspace\") and set CONVOY_HELPER.",
                    helper.display()
                );
                self.helper_ok = false;
            }
        }
        Ok(())
    }

    async fn connect_link(&self) -> Result<Link, WorkspaceError> {
        let id = self.container.clone().expect("booted");
        if self.helper_ok {
            let cmd = helper_command(&self.job.manifest.workspace);
            Ok(Link::Shim(start_helper(&self.docker, &id, cmd).await?))
        } else {
            Ok(Link::Exec(ExecClient::new(self.docker.clone(), id)))
        }
    }

    async fn create_and_start(&mut self, nofile: u64) -> Result<String, WorkspaceError> {
        let job = &self.job;
        let spec = &job.manifest.workspace;
        let binds = spec
            .mounts
            .iter()
            .map(|m| {
                let host = job.resolve(&m.host);
                let host = host
                    .canonicalize()
                    .map_err(|e| boot(format!("mount host path `{}`: {e}", host.display())))?;
                let ro = if m.read_only { ":ro" } else { "" };
                Ok(format!("{}:{}{ro}", host.display(), m.container))
            })
            .collect::<Result<Vec<_>, WorkspaceError>>()?;
        let host_config = HostConfig {
            init: Some(true),
            binds: Some(binds),
            ulimits: Some(vec![ResourcesUlimits {
                name: Some("nofile".into()),
                soft: Some(nofile as i64),
                hard: Some(nofile as i64),
            }]),
            memory: spec.memory_bytes().and_then(Result::ok),
            nano_cpus: spec.cpus.map(|c| (c * 1e9) as i64),
            pids_limit: spec.pids_limit,
            network_mode: spec.network.clone(),
            // The helper's command and output files churn with every tool
            // call: keep them in memory, not on the image's overlay.
            tmpfs: Some(
                [(HELPER_ROOT, "0711"), (EXEC_ROOT, "1777")]
                    .into_iter()
                    .map(|(p, mode)| (p.to_string(), format!("rw,exec,mode={mode},size=2g")))
                    .collect(),
            ),
            ..Default::default()
        };
        let labels = [
            ("convoy.job".to_string(), job.manifest.name.clone()),
            ("convoy.run".to_string(), self.run_label.clone()),
        ]
        .into_iter()
        .chain(self.owner_labels())
        .collect();
        let body = ContainerCreateBody {
            image: Some(spec.image.clone()),
            cmd: Some(vec!["sleep".into(), "infinity".into()]),
            entrypoint: Some(vec![]),
            working_dir: Some(spec.workdir.clone().unwrap_or_else(|| "/workspace".into())),
            env: Some(spec.env.iter().map(|(k, v)| format!("{k}={v}")).collect()),
            user: spec.user.clone(),
            labels: Some(labels),
            host_config: Some(host_config),
            ..Default::default()
        };
        let name = format!("convoy-{}-{:08x}", job.manifest.name, fastrand::u32(..));
        let opts = CreateContainerOptionsBuilder::new().name(&name).build();
        let created = self
            .docker
            .create_container(Some(opts), body)
            .await
            .map_err(|e| boot(format!("cannot create the workspace container: {e}")))?;
        // Owned from here: any error below removes it.
        self.container = Some(created.id.clone());
        if let Err(e) = self
            .docker
            .start_container(
                created.id.as_str(),
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            if let Some(id) = self.container.take() {
                remove(&self.docker, &id).await;
            }
            return Err(boot(format!("cannot start the workspace container: {e}")));
        }
        Ok(created.id)
    }

    /// Who owns the containers this backend creates, for `convoy sweep`
    /// after a crash: this process and the host file whose lock it holds.
    fn owner_labels(&self) -> Vec<(String, String)> {
        owner_labels(self.lock.as_ref().map(|(_, path)| path.as_path()))
    }

    /// Removes the container (unless `keep`), at most `REMOVE_WAIT`, and
    /// its lock file.
    pub async fn stop(mut self) {
        if let Some(id) = self.container.take() {
            if self.job.manifest.workspace.keep {
                tracing::info!(
                    "keeping workspace container {} (workspace.keep = true)",
                    short(&id)
                );
            } else if tokio::time::timeout(REMOVE_WAIT, remove(&self.docker, &id))
                .await
                .is_err()
            {
                tracing::warn!(
                    "Docker did not remove workspace container {} within {}s; `convoy sweep` removes it",
                    short(&id),
                    REMOVE_WAIT.as_secs()
                );
            }
        }
    }
}

/// The image must exist locally: convoy never pulls.
pub async fn check_image(docker: &Docker, image: &str) -> Result<(), WorkspaceError> {
    match docker.inspect_image(image).await {
        Ok(_) => Ok(()),
        Err(bollard::errors::Error::DockerResponseServerError {
            status_code: 404, ..
        }) => Err(WorkspaceError::MissingImage(image.to_string())),
        Err(e) => Err(boot(format!("cannot inspect image `{image}`: {e}"))),
    }
}

/// The owner labels of a container: this process (pid and start time, so
/// a reused pid is not taken for it), the host, and the lock file, if any.
/// Every container convoy creates carries them, so that whatever a killed
/// convoy leaves is `convoy sweep`'s to remove.
fn owner_labels(lock: Option<&Path>) -> Vec<(String, String)> {
    let (pid, start) = sweep::me();
    [
        (sweep::LABEL_PID.to_string(), pid.to_string()),
        (sweep::LABEL_PID_START.to_string(), start.to_string()),
        (sweep::LABEL_HOST.to_string(), sweep::hostname()),
    ]
    .into_iter()
    .chain(lock.map(|path| (sweep::LABEL_LOCK.to_string(), path.display().to_string())))
    .collect()
}

/// The container that asks the daemon for its open-files limit: `image`,
/// doing nothing for a minute, labelled as a probe and with `owner`'s
/// labels (a convoy killed mid-probe leaves it to the sweep).
fn probe_body(image: &str, owner: Vec<(String, String)>) -> ContainerCreateBody {
    ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["sleep".into(), "60".into()]),
        entrypoint: Some(vec![]),
        labels: Some(
            [("convoy.probe".to_string(), "nofile".to_string())]
                .into_iter()
                .chain(owner)
                .collect(),
        ),
        ..Default::default()
    }
}

/// The open-files hard limit a container gets when it asks for none: the
/// most the daemon can grant. `body` is the probe's (`probe_body`).
async fn daemon_nofile_limit(docker: &Docker, body: ContainerCreateBody) -> Option<u64> {
    let id = docker
        .create_container(
            None::<bollard::query_parameters::CreateContainerOptions>,
            body,
        )
        .await
        .ok()?
        .id;
    let limit = async {
        docker
            .start_container(
                id.as_str(),
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
            .ok()?;
        let (code, out) = exec_output(docker, &id, &["sh", "-c", "ulimit -Hn"])
            .await
            .ok()?;
        (code == 0).then(|| out.trim().parse().ok()).flatten()
    }
    .await;
    remove(docker, &id).await;
    limit
}

/// The binary to copy into the container: `CONVOY_HELPER` if set (e.g. a
/// static build), else this binary.
fn helper_binary() -> Result<PathBuf, WorkspaceError> {
    match std::env::var_os("CONVOY_HELPER") {
        Some(p) => Ok(PathBuf::from(p)),
        None => {
            std::env::current_exe().map_err(|e| boot(format!("cannot find the convoy binary: {e}")))
        }
    }
}

/// The helper's command line in the container: its root, leave the tmux
/// server to the next helper when the stream closes (the container's
/// removal cleans up), and how to keep sessions apart.
fn helper_command(spec: &WorkspaceSpec) -> Vec<String> {
    [HELPER_BIN, "shim", "--root", HELPER_ROOT, "--keep-on-eof"]
        .into_iter()
        .map(String::from)
        .chain(shim_flags(&shim_config(spec)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nofile_probe_carries_the_owner_labels_of_the_job_container() {
        let lock = Path::new("/tmp/.convoy-locks-0/job-1.lock");
        let body = probe_body("img", owner_labels(Some(lock)));
        let labels = body.labels.unwrap();
        let (pid, start) = sweep::me();
        // What the sweep reads to tell a dead owner's container (and
        // takes the lock of first).
        for (key, value) in [
            (sweep::LABEL_PID, pid.to_string()),
            (sweep::LABEL_PID_START, start.to_string()),
            (sweep::LABEL_HOST, sweep::hostname()),
            (sweep::LABEL_LOCK, lock.display().to_string()),
            ("convoy.probe", "nofile".to_string()),
        ] {
            assert_eq!(labels.get(key), Some(&value), "label {key}: {labels:?}");
        }
        assert_eq!(body.image.as_deref(), Some("img"));
    }

    #[test]
    fn the_helper_command_carries_the_isolation_and_the_session_limits() {
        let spec = WorkspaceSpec {
            isolation: Isolation::User,
            session_pids: 300,
            session_memory: "512m".into(),
            ..WorkspaceSpec::default()
        };
        assert_eq!(
            helper_command(&spec),
            [
                HELPER_BIN,
                "shim",
                "--root",
                HELPER_ROOT,
                "--keep-on-eof",
                "--isolation",
                "user",
                "--session-pids",
                "300",
                "--session-memory",
                "536870912",
            ]
        );
        // The defaults: auto, 1024 processes, 4g.
        let cmd = helper_command(&WorkspaceSpec::default()).join(" ");
        assert!(
            cmd.ends_with("--isolation auto --session-pids 1024 --session-memory 4294967296"),
            "{cmd}"
        );
    }
}
