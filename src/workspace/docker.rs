//! The `docker` backend: ONE container for the whole job, booted through
//! bollard, with the workspace helper (`convoy shim`, this very binary)
//! copied in once and started in ONE long-lived attached exec. Every
//! session request travels over that exec's stdio stream; no `docker exec`
//! per command.
//!
//! The container has an init process as PID 1 (orphans are reaped), the
//! labels `convoy.job` and `convoy.run`, and `workspace.nofile` as its
//! open-files limit, clamped (with a warning giving both numbers) when the
//! daemon cannot grant it. It is removed at the end of the job, on failure
//! and on Ctrl-C, unless `workspace.keep = true`.

use std::path::{Path, PathBuf};

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::models::{ContainerCreateBody, HostConfig, ResourcesUlimits};
use bollard::query_parameters::{
    CreateContainerOptionsBuilder, RemoveContainerOptionsBuilder, UploadToContainerOptionsBuilder,
};
use bollard::Docker;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::channel::ShimClient;
use super::shared::WorkspaceError;
use crate::manifest::Job;

/// Where the helper binary and its root live inside the container.
const HELPER_DIR: &str = "/opt/convoy";
const HELPER_BIN: &str = "/opt/convoy/convoy";
const HELPER_ROOT: &str = "/tmp/convoy-shim";

/// The container and the helper's exec. Dropping it without `stop` still
/// removes the container (in the background).
pub struct DockerBackend {
    docker: Docker,
    container: Option<String>,
    keep: bool,
}

impl Drop for DockerBackend {
    fn drop(&mut self) {
        if let Some(id) = self.container.take() {
            if !self.keep {
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

fn boot(msg: impl std::fmt::Display) -> WorkspaceError {
    WorkspaceError::Boot(msg.to_string())
}

impl DockerBackend {
    /// Boots the container and the helper; returns the backend, the
    /// connected client and the sessions' working directory.
    pub async fn start(
        job: &Job,
        run_label: &str,
    ) -> Result<(DockerBackend, ShimClient, String), WorkspaceError> {
        let spec = &job.manifest.workspace;
        let docker = connect().await?;
        check_image(&docker, &spec.image).await?;

        let mut backend = DockerBackend {
            docker: docker.clone(),
            container: None,
            keep: spec.keep,
        };
        let mut nofile = spec.nofile;
        let id = match backend.create_and_start(job, run_label, nofile).await {
            Ok(id) => id,
            Err(e) if is_rlimit_denied(&e) => {
                let max = daemon_nofile_limit(&docker, &spec.image).await.ok_or_else(|| {
                    boot(format!(
                        "the Docker daemon refused workspace.nofile = {nofile} and its own limit could not be read: {e}"
                    ))
                })?;
                tracing::warn!(
                    "workspace.nofile = {nofile} is more than the Docker daemon allows ({max}); using {max}"
                );
                nofile = max;
                backend.create_and_start(job, run_label, nofile).await?
            }
            Err(e) => return Err(e),
        };
        tracing::info!(
            "workspace container {} booted from {} (nofile {nofile})",
            short(&id),
            spec.image
        );

        let tmux = exec_output(&docker, &id, &["tmux", "-V"]).await;
        if !tmux.as_ref().is_ok_and(|(code, _)| *code == 0) {
            return Err(boot(format!(
                "image `{}` has no tmux ({}); build one with scripts/build-workspace-image.sh",
                spec.image,
                tmux.map(|(_, out)| out)
                    .unwrap_or_else(|e| e.to_string())
                    .trim()
            )));
        }

        let helper = helper_binary()?;
        upload_helper(&docker, &id, &helper).await?;
        match exec_output(&docker, &id, &[HELPER_BIN, "--version"]).await {
            Ok((0, _)) => {}
            other => {
                let why = match other {
                    Ok((code, out)) => format!("exit {code}: {}", out.trim()),
                    Err(e) => e.to_string(),
                };
                return Err(boot(format!(
                    "the convoy binary `{}` cannot run in image `{}` ({why}); build a static one \
                     (see README, \"Docker workspace\") and point CONVOY_HELPER at it",
                    helper.display(),
                    spec.image
                )));
            }
        }
        let client = start_helper(&docker, &id).await?;
        let workdir = spec.workdir.clone().unwrap_or_else(|| "/workspace".into());
        Ok((backend, client, workdir))
    }

    async fn create_and_start(
        &mut self,
        job: &Job,
        run_label: &str,
        nofile: u64,
    ) -> Result<String, WorkspaceError> {
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
            ..Default::default()
        };
        let labels = [
            ("convoy.job".to_string(), job.manifest.name.clone()),
            ("convoy.run".to_string(), run_label.to_string()),
        ]
        .into_iter()
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
        // Owned from here: any error below removes it (Drop).
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

    /// Removes the container (unless `keep`).
    pub async fn stop(mut self) {
        if let Some(id) = self.container.take() {
            if self.keep {
                tracing::info!(
                    "keeping workspace container {} (workspace.keep = true)",
                    short(&id)
                );
            } else {
                remove(&self.docker, &id).await;
            }
        }
    }
}

/// Connects to the daemon named by DOCKER_HOST (or the default socket).
pub async fn connect() -> Result<Docker, WorkspaceError> {
    let docker =
        Docker::connect_with_defaults().map_err(|e| boot(format!("cannot reach Docker: {e}")))?;
    docker.ping().await.map_err(|e| {
        boot(format!(
            "cannot reach Docker at {}: {e}",
            std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
        ))
    })?;
    Ok(docker)
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

fn is_rlimit_denied(e: &WorkspaceError) -> bool {
    let s = e.to_string();
    s.contains("rlimit") && s.contains("operation not permitted")
}

/// The open-files hard limit a container gets when it asks for none: the
/// most the daemon can grant.
async fn daemon_nofile_limit(docker: &Docker, image: &str) -> Option<u64> {
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["sleep".into(), "60".into()]),
        entrypoint: Some(vec![]),
        labels: Some(
            [("convoy.probe".to_string(), "nofile".to_string())]
                .into_iter()
                .collect(),
        ),
        ..Default::default()
    };
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

/// Runs a command in the container; its exit code and combined output.
async fn exec_output(
    docker: &Docker,
    id: &str,
    cmd: &[&str],
) -> Result<(i64, String), bollard::errors::Error> {
    let exec = docker
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(cmd.to_vec()),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                ..Default::default()
            },
        )
        .await?;
    let mut text = String::new();
    if let StartExecResults::Attached { mut output, .. } = docker.start_exec(&exec.id, None).await?
    {
        while let Some(chunk) = output.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk?.into_bytes()));
        }
    }
    let code = docker.inspect_exec(&exec.id).await?.exit_code.unwrap_or(-1);
    Ok((code, text))
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

async fn upload_helper(docker: &Docker, id: &str, binary: &Path) -> Result<(), WorkspaceError> {
    let bytes = std::fs::read(binary).map_err(|e| {
        boot(format!(
            "cannot read the helper binary `{}`: {e}",
            binary.display()
        ))
    })?;
    let mut archive = tar::Builder::new(Vec::with_capacity(bytes.len() + 4096));
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o755);
    header.set_mtime(0);
    archive
        .append_data(
            &mut header,
            HELPER_BIN.trim_start_matches('/'),
            bytes.as_slice(),
        )
        .and_then(|()| archive.finish())
        .map_err(|e| boot(format!("cannot pack the helper: {e}")))?;
    let tarball = archive
        .into_inner()
        .map_err(|e| boot(format!("cannot pack the helper: {e}")))?;
    let opts = UploadToContainerOptionsBuilder::new().path("/").build();
    docker
        .upload_to_container(id, Some(opts), bollard::body_full(tarball.into()))
        .await
        .map_err(|e| boot(format!("cannot copy the helper into {HELPER_DIR}: {e}")))
}

/// Starts `convoy shim` in one attached exec and connects to it.
async fn start_helper(docker: &Docker, id: &str) -> Result<ShimClient, WorkspaceError> {
    let exec = docker
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(vec![HELPER_BIN, "shim", "--root", HELPER_ROOT]),
                attach_stdin: Some(true),
                attach_stdout: Some(true),
                attach_stderr: Some(true),
                tty: Some(false),
                ..Default::default()
            },
        )
        .await
        .map_err(|e| boot(format!("cannot create the helper exec: {e}")))?;
    let started = docker
        .start_exec(
            &exec.id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: Some(1 << 20),
            }),
        )
        .await
        .map_err(|e| boot(format!("cannot start the helper exec: {e}")))?;
    let StartExecResults::Attached { mut output, input } = started else {
        return Err(boot("the helper exec did not attach"));
    };
    // The exec multiplexes stdout and stderr; the client wants stdout as a
    // byte stream, so a pump forwards it through an in-memory pipe.
    let (mut tx, rx) = tokio::io::duplex(1 << 20);
    tokio::spawn(async move {
        while let Some(chunk) = output.next().await {
            match chunk {
                Ok(LogOutput::StdOut { message }) => {
                    if tx.write_all(&message).await.is_err() {
                        break;
                    }
                }
                Ok(LogOutput::StdErr { message }) => {
                    for line in String::from_utf8_lossy(&message).lines() {
                        tracing::warn!(target: "convoy::shim", "{line}");
                    }
                }
                Ok(_) => {}
                Err(e) => {
                    tracing::warn!("the helper stream broke: {e}");
                    break;
                }
            }
        }
    });
    ShimClient::connect(rx, input)
        .await
        .map_err(|e| boot(e.to_string()))
}
