//! Writing a file so that readers see the old version or the whole new one,
//! never a truncated or half-written mix: the bytes go to a temporary file
//! in the destination's own directory (so the rename stays on one file
//! system) and only a successful `commit` renames it over the destination.
//!
//! Every file convoy writes outside the append-only journal goes through
//! here: `export --out`, the files `merge` writes, the report's chart, the
//! run directory's snapshots and summary. An error anywhere before the
//! commit (a bad argument, a missing run directory, a full disk) drops the
//! temporary file and leaves an existing destination untouched.

use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};

use tempfile::NamedTempFile;

/// A file being written; dropped without `commit`, it disappears.
#[derive(Debug)]
pub struct AtomicFile {
    path: PathBuf,
    tmp: NamedTempFile,
}

impl AtomicFile {
    /// Starts writing `path`: creates the temporary file beside it. A
    /// symbolic link is followed (its target is replaced, the link stays).
    /// Errors name `path`'s directory, never the temporary file.
    pub fn create(path: &Path) -> std::io::Result<AtomicFile> {
        let path = match std::fs::canonicalize(path) {
            Ok(target) if path.is_symlink() => target,
            _ => path.to_path_buf(),
        };
        let dir = parent_dir(&path);
        match std::fs::metadata(dir) {
            Ok(m) if m.is_dir() => {}
            Ok(_) => {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::NotADirectory,
                    format!("`{}` is not a directory", dir.display()),
                ))
            }
            Err(e) => {
                return Err(std::io::Error::new(
                    e.kind(),
                    format!("no directory `{}`", dir.display()),
                ))
            }
        }
        let name = path
            .file_name()
            .map_or_else(|| "out".into(), |n| n.to_string_lossy());
        let tmp = tempfile::Builder::new()
            .prefix(&format!(".{name}."))
            .suffix(".tmp")
            // What `File::create` would give (0666 less the umask), not
            // tempfile's private 0600: an export is usually shared.
            .permissions(std::os::unix::fs::PermissionsExt::from_mode(0o666))
            .tempfile_in(dir)
            // tempfile's error names its random file; ours names the
            // directory the user chose.
            .map_err(|e| {
                std::io::Error::new(
                    e.kind(),
                    format!("cannot create a file in `{}`: {}", dir.display(), e.kind()),
                )
            })?;
        Ok(AtomicFile { path, tmp })
    }

    /// Where the file will be once committed.
    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&mut self) -> &mut File {
        self.tmp.as_file_mut()
    }

    /// Makes the bytes durable, renames them into place and makes the
    /// rename durable.
    pub fn commit(self) -> std::io::Result<()> {
        self.tmp.as_file().sync_all()?;
        self.tmp.persist(&self.path).map_err(|e| e.error)?;
        File::open(parent_dir(&self.path))?.sync_all()
    }
}

/// The directory `path` is in (`.` for a bare file name).
fn parent_dir(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// Writes `bytes` to `path` through an `AtomicFile`.
pub fn write_atomically(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    let mut f = AtomicFile::create(path)?;
    f.file().write_all(bytes)?;
    f.commit()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entries(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[test]
    fn an_uncommitted_file_leaves_the_old_one_and_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.jsonl");
        std::fs::write(&path, "old\n").unwrap();
        let mut f = AtomicFile::create(&path).unwrap();
        f.file().write_all(b"new, but never committed\n").unwrap();
        assert_eq!(entries(dir.path()).len(), 2, "the temporary is beside it");
        drop(f);
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "old\n");
        assert_eq!(entries(dir.path()), ["data.jsonl"]);
    }

    #[test]
    fn a_commit_replaces_the_file_whole_with_ordinary_permissions() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data.jsonl");
        std::fs::write(&path, "old\n").unwrap();
        write_atomically(&path, b"new\n").unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "new\n");
        assert_eq!(entries(dir.path()), ["data.jsonl"]);
        let reference = dir.path().join("reference");
        File::create(&reference).unwrap();
        let mode = |p: &Path| std::fs::metadata(p).unwrap().permissions().mode();
        assert_eq!(mode(&path), mode(&reference), "the mode File::create gives");
    }

    #[test]
    fn a_missing_directory_is_named_not_the_temporary_file() {
        let e = AtomicFile::create(Path::new("no-such-dir/x.json")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotFound);
        assert_eq!(e.to_string(), "no directory `no-such-dir`");
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("afile");
        std::fs::write(&file, "x").unwrap();
        let e = AtomicFile::create(&file.join("x.json")).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::NotADirectory);
        assert!(e.to_string().ends_with("afile` is not a directory"), "{e}");
    }

    #[test]
    fn a_symbolic_link_stays_and_its_target_is_replaced() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("target.jsonl");
        let link = dir.path().join("link.jsonl");
        std::fs::write(&target, "old\n").unwrap();
        std::os::unix::fs::symlink(&target, &link).unwrap();
        write_atomically(&link, b"new\n").unwrap();
        assert!(link.is_symlink(), "the link was replaced by a file");
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "new\n");
    }
}
