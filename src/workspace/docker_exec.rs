//! Exec plumbing with the Docker API: running a command in the container
//! for its output, copying files in, and the one long-lived attached exec
//! the workspace helper runs in.

use bollard::container::LogOutput;
use bollard::exec::{CreateExecOptions, StartExecOptions, StartExecResults};
use bollard::query_parameters::UploadToContainerOptionsBuilder;
use bollard::Docker;
use futures::StreamExt;
use tokio::io::AsyncWriteExt;

use super::channel::ShimClient;
use super::docker::boot;
use super::error::WorkspaceError;

/// Runs a command in the container; its exit code and combined output.
pub(super) async fn exec_output(
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

/// Copies files (absolute path, bytes, mode) into the container.
pub(super) async fn upload(
    docker: &Docker,
    id: &str,
    files: &[(&str, &[u8], u32)],
) -> Result<(), WorkspaceError> {
    let mut archive = tar::Builder::new(Vec::new());
    for (path, bytes, mode) in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(bytes.len() as u64);
        header.set_mode(*mode);
        header.set_mtime(0);
        archive
            .append_data(&mut header, path.trim_start_matches('/'), *bytes)
            .map_err(|e| boot(format!("cannot pack {path}: {e}")))?;
    }
    let tarball = archive
        .into_inner()
        .map_err(|e| boot(format!("cannot pack files for the container: {e}")))?;
    let opts = UploadToContainerOptionsBuilder::new().path("/").build();
    docker
        .upload_to_container(id, Some(opts), bollard::body_full(tarball.into()))
        .await
        .map_err(|e| boot(format!("cannot copy files into the container: {e}")))
}

/// Starts `cmd` (the helper, `convoy shim`) in one attached exec and
/// connects to it.
pub(super) async fn start_helper(
    docker: &Docker,
    id: &str,
    cmd: Vec<String>,
) -> Result<ShimClient, WorkspaceError> {
    let exec = docker
        .create_exec(
            id,
            CreateExecOptions {
                cmd: Some(cmd),
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
    tokio::time::timeout(super::shared::HELLO_WAIT, ShimClient::connect(rx, input))
        .await
        .map_err(|_| boot("the workspace helper did not say hello within 30s"))?
        .map_err(|e| boot(e.to_string()))
}
