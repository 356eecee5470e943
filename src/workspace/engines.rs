//! Reaching Docker engines: the default one (`DOCKER_HOST`, else the
//! local socket) or those `workspace.engines` names, over a Unix socket,
//! plain TCP or TLS.

use std::path::PathBuf;

use bollard::Docker;

use super::docker::boot;
use super::error::WorkspaceError;

/// A client of `engine` (`unix:///path`, `tcp://host:port`), or of the
/// default engine (`DOCKER_HOST`, else the local socket), checked with a
/// ping. A `tcp://` engine uses TLS when `DOCKER_TLS_VERIFY` is set, with
/// `key.pem`, `cert.pem` and `ca.pem` from `DOCKER_CERT_PATH` (default
/// `~/.docker`), as the docker CLI does.
pub async fn connect_to(engine: Option<&str>) -> Result<Docker, WorkspaceError> {
    let named = engine.map(str::to_string).unwrap_or_else(default_engine);
    let unreachable =
        |e: bollard::errors::Error| boot(format!("cannot reach Docker at {named}: {e}"));
    let docker = client(engine).map_err(unreachable)?;
    docker.ping().await.map_err(unreachable)?;
    Ok(docker)
}

/// The engine `DOCKER_HOST` names, else the local socket.
pub fn default_engine() -> String {
    std::env::var("DOCKER_HOST").unwrap_or_else(|_| "unix:///var/run/docker.sock".into())
}

pub(super) fn client(engine: Option<&str>) -> Result<Docker, bollard::errors::Error> {
    use bollard::API_DEFAULT_VERSION;
    const TIMEOUT: u64 = 120;
    let Some(engine) = engine else {
        return Docker::connect_with_defaults();
    };
    if engine.starts_with("unix://") {
        return Docker::connect_with_unix(engine, TIMEOUT, API_DEFAULT_VERSION);
    }
    let tls = std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty() && v != "0");
    if tls || engine.starts_with("https://") {
        let dir = std::env::var_os("DOCKER_CERT_PATH")
            .map(PathBuf::from)
            .unwrap_or_else(|| {
                PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".docker")
            });
        return Docker::connect_with_ssl(
            engine,
            &dir.join("key.pem"),
            &dir.join("cert.pem"),
            &dir.join("ca.pem"),
            TIMEOUT,
            API_DEFAULT_VERSION,
        );
    }
    Docker::connect_with_http(engine, TIMEOUT, API_DEFAULT_VERSION)
}
