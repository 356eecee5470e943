//! Registering a new session with the helper (`open` and `check` both):
//! its uid, its directory, FIFO and metadata, its workdir made ready, its
//! entry in the registry; and removing those files again.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use super::super::protocol::{ErrorKind, OpError, Opening};
use super::adopt::SessionMeta;
use super::sessions::{blocking, make_dir, SessionState, Shim};
use super::shell::check_name;

impl Shim {
    /// Registers the new session `name`: its uid, its files, its workdir
    /// made ready (`prepare`, timed), and its entry in the registry, so that
    /// a sweep counts its processes as an open session's from the first.
    /// `listen`: read its completion FIFO (a shell will write there).
    pub(super) async fn admit(
        &self,
        at: Opening,
        listen: bool,
    ) -> Result<(Arc<tokio::sync::Mutex<SessionState>>, Option<Duration>), OpError> {
        let Opening {
            session,
            workdir,
            env,
            prepare,
        } = at;
        let name = session.as_str();
        check_name(name)?;
        if prepare.is_some() && workdir.is_none() {
            return Err(OpError::new(
                ErrorKind::BadRequest,
                "prepare without a workdir",
            ));
        }
        if let (Some(w), None) = (&workdir, &prepare) {
            if !Path::new(w).is_dir() {
                return Err(OpError::new(
                    ErrorKind::BadWorkdir,
                    format!("workdir `{w}` is not a directory"),
                ));
            }
        }
        let exists = || {
            OpError::new(
                ErrorKind::SessionExists,
                format!("session `{name}` exists already"),
            )
        };
        if self
            .sessions
            .lock()
            .expect("sessions lock")
            .contains_key(name)
        {
            return Err(exists());
        }
        let as_root = prepare.as_ref().is_some_and(|p| p.as_root);
        let taken = (self.user_isolation && !as_root)
            .then(|| self.users.lock().expect("users lock").take(name));
        if let Some((uid, true)) = taken {
            super::users::name_user(uid);
        }
        let uid = taken.map(|(uid, _)| uid);
        let dir = self.session_dir(name);
        let mut made = self.make_session_files(name, uid, &workdir, &env);
        let mut prepared = None;
        if let (Ok(()), Some(p), Some(w)) = (&made, prepare, workdir.clone()) {
            // Before the shell exists: it starts in the finished tree, as
            // its owner.
            let clock = std::time::Instant::now();
            made = blocking(move || super::prepare::prepare(&w, &p, uid)).await;
            prepared = Some(clock.elapsed());
        }
        let reader = made.and_then(|()| {
            listen
                .then(|| {
                    self.listen(name)
                        .map_err(|e| OpError::io(format!("cannot open the FIFO of `{name}`"), &e))
                })
                .transpose()
        });
        let reader = match reader {
            Ok(r) => r,
            Err(e) => {
                self.remove_session_files(name, uid);
                return Err(e);
            }
        };
        let state = Arc::new(tokio::sync::Mutex::new(SessionState {
            seq: 0,
            dir,
            workdir,
            env,
            uid,
            dead: false,
            pane: None,
            _reader: reader,
        }));
        {
            let mut sessions = self.sessions.lock().expect("sessions lock");
            if sessions.contains_key(name) {
                drop(sessions);
                self.remove_session_files(name, uid);
                return Err(exists());
            }
            sessions.insert(name.to_string(), state.clone());
        }
        self.ids
            .lock()
            .expect("ids lock")
            .insert(name.to_string(), (uid, None));
        Ok((state, prepared))
    }

    /// The session's directory (its own, with its HOME), its completion
    /// FIFO (writable by it alone) and its metadata (the helper's).
    pub(super) fn make_session_files(
        &self,
        name: &str,
        uid: Option<u32>,
        workdir: &Option<String>,
        env: &[(String, String)],
    ) -> Result<(), OpError> {
        let dir = self.session_dir(name);
        let fifo = self.fifo_path(name);
        let owner = uid.map(nix::unistd::Uid::from_raw);
        let group = uid.map(nix::unistd::Gid::from_raw);
        let io = |what: &str, path: &Path, e: std::io::Error| {
            OpError::io(format!("cannot {what} {}", path.display()), &e)
        };
        // Whatever a previous session of that name left goes first.
        let _ = std::fs::remove_dir_all(&dir);
        let _ = std::fs::remove_file(&fifo);
        for d in [dir.clone(), dir.join("home")] {
            make_dir(&d, 0o700).map_err(|e| OpError::new(ErrorKind::Internal, format!("{e:#}")))?;
            nix::unistd::chown(&d, owner, group).map_err(|e| io("give away", &d, e.into()))?;
        }
        nix::unistd::mkfifo(&fifo, nix::sys::stat::Mode::from_bits_truncate(0o600))
            .map_err(|e| io("create FIFO", &fifo, e.into()))?;
        nix::unistd::chown(&fifo, owner, group).map_err(|e| io("give away", &fifo, e.into()))?;
        let meta = SessionMeta {
            workdir: workdir.clone(),
            env: env.to_vec(),
            uid,
        };
        let path = self.meta_path(name);
        std::fs::write(&path, serde_json::to_vec(&meta).unwrap_or_default())
            .map_err(|e| io("write", &path, e))
    }

    pub(super) fn remove_session_files(&self, name: &str, uid: Option<u32>) {
        let _ = std::fs::remove_dir_all(self.session_dir(name));
        let _ = std::fs::remove_file(self.fifo_path(name));
        let _ = std::fs::remove_file(self.meta_path(name));
        if let Some(uid) = uid {
            self.users.lock().expect("users lock").release(uid);
        }
    }
}
