//! The agent: a conversation as a pure state machine (`conversation`), the
//! tools it offers (`tools`) and the thin I/O loop that drives it
//! (`driver`).

mod conversation;
mod driver;
mod tools;

pub use conversation::{Conversation, Next};
pub use driver::{drive, AgentError, DriveLimits};
pub use tools::{observation, tool_schemas, truncate, Action, ToolCall};
