//! The agent: a conversation as a pure state machine (`conversation`), the
//! tools it offers (`tools`), the thin I/O loop that drives it (`driver`)
//! and the two seams that loop is generic over (`ports`: the model and the
//! shell), with recording fakes of both for tests (`fakes`).

mod conversation;
mod driver;
#[cfg(test)]
pub(crate) mod fakes;
mod ports;
mod tools;

pub use conversation::{Conversation, Next};
pub use driver::{drive, AgentError, DriveLimits};
pub use ports::{Model, Shell};
pub use tools::{observation, tool_schemas, truncate, Action, ToolCall};
