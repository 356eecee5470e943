//! A task's workdir, made ready by the helper before a session's shell
//! starts in it (`open` with `prepare`), and removed at the task's end
//! (`remove`). The helper is root in a container, and the workdir may hold
//! what a previous session (another uid) left, so nothing here follows a
//! symbolic link found inside it: a link planted where a file or directory
//! is to be written is removed, never written through.

use std::io::Write;
use std::os::unix::fs::{lchown, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};

use super::super::protocol::{ErrorKind, OpError, Prepare};

/// Makes `workdir` ready as `prepare` says and, with a session uid, gives
/// the whole tree to it (mode 0700: other sessions cannot look in).
pub(super) fn prepare(workdir: &str, p: &Prepare, uid: Option<u32>) -> Result<(), OpError> {
    let dir = absolute(workdir)?;
    if p.fresh {
        remove_tree(&dir)?;
        std::fs::create_dir_all(&dir).map_err(|e| io("cannot create", &dir, &e))?;
    } else if !dir.is_dir() {
        return Err(OpError::new(
            ErrorKind::BadWorkdir,
            format!("workdir `{workdir}` is not a directory"),
        ));
    }
    if let Some(seed) = &p.seed {
        copy_seed(seed, &dir)?;
    }
    for rel in &p.dirs {
        let path = inside(&dir, rel)?;
        make_dirs(&dir, &path)?;
    }
    for (rel, content) in &p.files {
        let path = inside(&dir, rel)?;
        if let Some(parent) = path.parent() {
            make_dirs(&dir, parent)?;
        }
        write_new(&path, content)?;
    }
    if let Some(uid) = uid {
        give(&dir, uid)?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io("cannot set the mode of", &dir, &e))?;
    }
    Ok(())
}

/// Removes a task's workdir; gone already is fine.
pub(super) fn remove(path: &str) -> Result<(), OpError> {
    let dir = absolute(path)?;
    if dir.parent().is_none() {
        return Err(OpError::new(
            ErrorKind::BadRequest,
            format!("refusing to remove `{path}`"),
        ));
    }
    remove_tree(&dir)
}

fn io(what: &str, path: &Path, e: &std::io::Error) -> OpError {
    OpError::io(format!("{what} {}", path.display()), e)
}

/// An absolute path without `..`: the helper never resolves a workdir
/// against its own working directory.
fn absolute(path: &str) -> Result<PathBuf, OpError> {
    let p = Path::new(path);
    if !p.is_absolute() || p.components().any(|c| c == Component::ParentDir) {
        return Err(OpError::new(
            ErrorKind::BadRequest,
            format!("workdir `{path}` is not an absolute path without `..`"),
        ));
    }
    Ok(p.to_path_buf())
}

/// `rel` under `dir`, refused if it could leave it (validation refused such
/// keys already; the helper does not rely on that).
fn inside(dir: &Path, rel: &str) -> Result<PathBuf, OpError> {
    let ok = !rel.is_empty()
        && Path::new(rel)
            .components()
            .all(|c| matches!(c, Component::Normal(_) | Component::CurDir));
    if !ok {
        return Err(OpError::new(
            ErrorKind::BadRequest,
            format!("file `{rel}` is not a relative path inside the workdir"),
        ));
    }
    Ok(dir.join(rel))
}

fn remove_tree(dir: &Path) -> Result<(), OpError> {
    // `remove_dir_all` removes a symbolic link itself, never its target.
    let removed = match std::fs::symlink_metadata(dir) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(dir),
        Ok(_) => std::fs::remove_file(dir),
        Err(e) => Err(e),
    };
    match removed {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io("cannot remove", dir, &e)),
        _ => Ok(()),
    }
}

/// Each directory from `dir` down to `path`, made if missing; anything
/// else in the way (a file, a link) is removed first.
fn make_dirs(dir: &Path, path: &Path) -> Result<(), OpError> {
    let rel = path.strip_prefix(dir).unwrap_or(Path::new(""));
    let mut at = dir.to_path_buf();
    for c in rel.components() {
        at.push(c);
        match std::fs::symlink_metadata(&at) {
            Ok(m) if m.is_dir() => continue,
            Ok(_) => std::fs::remove_file(&at).map_err(|e| io("cannot remove", &at, &e))?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io("cannot inspect", &at, &e)),
        }
        std::fs::create_dir(&at).map_err(|e| io("cannot create", &at, &e))?;
    }
    Ok(())
}

/// Writes `content` to a new file at `path`, whatever was there.
fn write_new(path: &Path, content: &str) -> Result<(), OpError> {
    remove_tree(path)?;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o644)
        .open(path)
        .map_err(|e| io("cannot create", path, &e))?;
    f.write_all(content.as_bytes())
        .map_err(|e| io("cannot write", path, &e))
}

/// `cp -a seed/. dir/`: cp keeps modes, times and links as they are, and
/// is what a user would type.
fn copy_seed(seed: &str, dir: &Path) -> Result<(), OpError> {
    if !Path::new(seed).is_dir() {
        return Err(OpError::new(
            ErrorKind::BadWorkdir,
            format!("seed `{seed}` is not a directory"),
        ));
    }
    let out = std::process::Command::new("cp")
        .arg("-a")
        .arg("--")
        .arg(format!("{}/.", seed.trim_end_matches('/')))
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .output()
        .map_err(|e| OpError::io("cannot run cp", &e))?;
    if out.status.success() {
        return Ok(());
    }
    Err(OpError::new(
        ErrorKind::Internal,
        format!(
            "copying seed `{seed}` into {} failed: {}",
            dir.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ),
    ))
}

/// Gives `dir` and everything under it to `uid` (its own group too),
/// links themselves rather than their targets.
fn give(dir: &Path, uid: u32) -> Result<(), OpError> {
    lchown(dir, Some(uid), Some(uid)).map_err(|e| io("cannot give away", dir, &e))?;
    let meta = std::fs::symlink_metadata(dir).map_err(|e| io("cannot inspect", dir, &e))?;
    if !meta.is_dir() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).map_err(|e| io("cannot read", dir, &e))? {
        let entry = entry.map_err(|e| io("cannot read", dir, &e))?;
        give(&entry.path(), uid)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prep(fresh: bool, files: &[(&str, &str)]) -> Prepare {
        Prepare {
            fresh,
            files: files
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Prepare::default()
        }
    }

    #[test]
    fn a_fresh_prepare_removes_what_was_there_and_writes_the_files() {
        let tmp = tempfile::tempdir().unwrap();
        let w = tmp.path().join("t/1");
        let w_str = w.display().to_string();
        prepare(&w_str, &prep(true, &[("a/b/c.txt", "hi")]), None).unwrap();
        std::fs::write(w.join("left.txt"), "x").unwrap();
        prepare(&w_str, &prep(true, &[("d.txt", "d")]), None).unwrap();
        assert!(!w.join("left.txt").exists());
        assert!(!w.join("a").exists());
        assert_eq!(std::fs::read_to_string(w.join("d.txt")).unwrap(), "d");
        // Not fresh: what is there stays, the new file joins it.
        prepare(&w_str, &prep(false, &[("e.txt", "e")]), None).unwrap();
        assert!(w.join("d.txt").exists() && w.join("e.txt").exists());
    }

    #[test]
    fn a_link_in_the_way_is_replaced_never_written_through() {
        let tmp = tempfile::tempdir().unwrap();
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let w = tmp.path().join("w");
        let w_str = w.display().to_string();
        prepare(&w_str, &prep(true, &[]), None).unwrap();
        std::os::unix::fs::symlink(&outside, w.join("sub")).unwrap();
        std::os::unix::fs::symlink(outside.join("f"), w.join("check.sh")).unwrap();
        let p = prep(false, &[("sub/x", "1"), ("check.sh", "2")]);
        prepare(&w_str, &p, None).unwrap();
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
        assert!(w.join("sub").symlink_metadata().unwrap().is_dir());
        assert_eq!(std::fs::read_to_string(w.join("check.sh")).unwrap(), "2");
    }

    #[test]
    fn paths_that_leave_the_workdir_are_refused() {
        let tmp = tempfile::tempdir().unwrap();
        let w = tmp.path().join("w").display().to_string();
        for bad in ["../x", "a/../../x", "/etc/x", ""] {
            let err = prepare(&w, &prep(true, &[(bad, "")]), None).unwrap_err();
            assert_eq!(err.kind, ErrorKind::BadRequest, "{bad}");
        }
        assert_eq!(remove("rel").unwrap_err().kind, ErrorKind::BadRequest);
        assert_eq!(remove("/").unwrap_err().kind, ErrorKind::BadRequest);
    }

    #[test]
    fn a_seed_is_copied_in_and_a_missing_one_is_a_bad_workdir() {
        let tmp = tempfile::tempdir().unwrap();
        let seed = tmp.path().join("seed");
        std::fs::create_dir_all(seed.join("src")).unwrap();
        std::fs::write(seed.join("src/main.c"), "int main;").unwrap();
        std::fs::write(seed.join(".hidden"), "h").unwrap();
        let w = tmp.path().join("w");
        let mut p = prep(true, &[]);
        p.seed = Some(seed.display().to_string());
        prepare(&w.display().to_string(), &p, None).unwrap();
        assert!(w.join("src/main.c").exists() && w.join(".hidden").exists());
        p.seed = Some(tmp.path().join("nope").display().to_string());
        let err = prepare(&w.display().to_string(), &p, None).unwrap_err();
        assert_eq!(err.kind, ErrorKind::BadWorkdir);
        remove(&w.display().to_string()).unwrap();
        assert!(!w.exists());
        remove(&w.display().to_string()).unwrap();
    }
}
