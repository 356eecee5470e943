//! What can go wrong with a workspace, and the kind of each failure that
//! callers (the engine's retry rules) act on.

use thiserror::Error;

use super::channel::protocol::{ErrorKind, Reply};
use super::channel::ChannelError;

#[derive(Debug, Error)]
pub enum WorkspaceError {
    #[error("workspace did not boot: {0}")]
    Boot(String),
    #[error(transparent)]
    Channel(#[from] ChannelError),
    /// The helper answered with an error of this kind.
    #[error("workspace helper: {message}")]
    Helper { kind: ErrorKind, message: String },
    #[error("the workspace is lost: {0}")]
    Lost(String),
    #[error("workspace image `{0}` does not exist locally (convoy never pulls); build it with `scripts/build-workspace-image.sh {0}`")]
    MissingImage(String),
}

impl WorkspaceError {
    pub(super) fn unexpected(reply: Reply) -> Self {
        match reply {
            Reply::Error { kind, message } => WorkspaceError::Helper { kind, message },
            other => WorkspaceError::Helper {
                kind: ErrorKind::Internal,
                message: format!("unexpected reply {other:?}"),
            },
        }
    }

    /// What went wrong, as a kind a caller can act on (see
    /// [`ErrorKind`]); never derived from the message.
    pub fn kind(&self) -> ErrorKind {
        match self {
            WorkspaceError::Boot(_) => ErrorKind::Boot,
            WorkspaceError::Channel(ChannelError::Broken(_)) => ErrorKind::HelperLost,
            WorkspaceError::Channel(ChannelError::Handshake(_)) => ErrorKind::Boot,
            WorkspaceError::Helper { kind, .. } => *kind,
            WorkspaceError::Lost(_) => ErrorKind::WorkspaceLost,
            WorkspaceError::MissingImage(_) => ErrorKind::MissingImage,
        }
    }

    /// Whether the same work, tried again (a new attempt in a new
    /// session), may succeed: see [`ErrorKind::is_retryable`].
    pub fn is_retryable(&self) -> bool {
        self.kind().is_retryable()
    }
}
