//! A link to the workspace's tmux server: the helper's one stream (the fast
//! path), or one `docker exec` per request (the fallback when the helper
//! cannot run in the image, and the baseline the benchmark compares with).

use super::client::{ChannelError, ShimClient};
use super::exec::ExecClient;
use super::protocol::{Op, Reply};

pub enum Link {
    Shim(ShimClient),
    Exec(ExecClient),
}

impl Link {
    pub async fn call(&self, op: Op) -> Result<Reply, ChannelError> {
        match self {
            Link::Shim(c) => c.call(op).await,
            Link::Exec(c) => c.call(op).await,
        }
    }

    /// Any answer from the helper; never resolves for exec (there is no
    /// helper to hang, and each request has its own exec).
    pub async fn ping(&self) -> Result<(), ChannelError> {
        match self {
            Link::Shim(c) => c.ping().await,
            Link::Exec(_) => std::future::pending().await,
        }
    }

    /// Marks the link broken (its helper stopped answering); waiting calls
    /// fail as retryable.
    pub fn abandon(&self) {
        if let Link::Shim(c) = self {
            c.abandon();
        }
    }

    /// A broken link needs recovery before it serves again.
    pub fn is_broken(&self) -> bool {
        match self {
            Link::Shim(c) => c.is_broken(),
            Link::Exec(_) => false,
        }
    }

    /// Resolves when the link breaks (never, for exec: each request stands
    /// alone, and a dead container shows in its errors).
    pub async fn closed(&self) {
        match self {
            Link::Shim(c) => c.closed().await,
            Link::Exec(_) => std::future::pending().await,
        }
    }
}
