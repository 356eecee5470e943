//! Warnings about the engine or the manifest that a container's boot
//! finds: said once per process, not once per container of a fleet (or
//! per replacement).

use bollard::Docker;

use crate::manifest::Job;

/// Says so when task workdirs will be made on the container's own
/// filesystem and the engine's storage driver is fuse-overlayfs, where
/// every directory and file created costs a round trip to its daemon
/// (measured here: 1 to 2 ms each, and they queue under load; README,
/// "What a task environment costs"). A mount is the way out.
pub(super) async fn warn_slow_workdirs(docker: &Docker, job: &Job) {
    let Some(env) = &job.manifest.environment else {
        return;
    };
    if under_a_mount(&env.workdir, &job.manifest.workspace.mounts) {
        return;
    }
    let driver = docker.info().await.ok().and_then(|i| i.driver);
    if driver.as_deref() == Some("fuse-overlayfs") {
        warn_once(format!(
            "environment.workdir = {:?} is on the container's own filesystem, and this Docker engine's storage driver is fuse-overlayfs: each file and directory a task's workdir gets costs 1 to 2 ms there; mount a host directory at its parent ([[workspace.mounts]]) (a task of 3 small files then takes under a millisecond)",
            env.workdir
        ));
    }
}

/// Logs `message` unless it was said already.
pub(super) fn warn_once(message: String) {
    static SAID: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
    let mut said = SAID.lock().unwrap_or_else(|e| e.into_inner());
    if !said.contains(&message) {
        tracing::warn!("{message}");
        said.push(message);
    }
}

/// Whether every workdir the template renders is inside a mount: its part
/// before anything rendered is.
fn under_a_mount(workdir: &str, mounts: &[crate::manifest::Mount]) -> bool {
    let fixed = workdir.split("{{").next().unwrap_or_default();
    mounts.iter().any(|m| {
        let root = m.container.trim_end_matches('/');
        fixed.starts_with(&format!("{root}/"))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn workdirs_under_a_mount_are_told_by_their_fixed_part() {
        let mounts: Vec<crate::manifest::Mount> =
            toml::from_str::<toml::Table>("m = [{ host = \"/h\", container = \"/tasks/\" }]")
                .unwrap()["m"]
                .clone()
                .try_into()
                .unwrap();
        assert!(under_a_mount("/tasks/{{ id }}", &mounts));
        assert!(under_a_mount("/tasks/run1/{{ id }}/src", &mounts));
        assert!(
            !under_a_mount("/tasks{{ id }}", &mounts),
            "/tasksX is not under /tasks"
        );
        assert!(
            !under_a_mount("/tasks", &mounts),
            "the mount point itself is replaced"
        );
        assert!(!under_a_mount("/work/{{ id }}", &mounts));
        assert!(!under_a_mount("/work/{{ id }}", &[]));
    }
}
