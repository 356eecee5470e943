//! The agent: a conversation as a pure state machine (`conversation`), the
//! tools it offers (`toolbox`: convoy's own in `tools`, the manifest's
//! with their arguments checked by `arguments`), the thin I/O loop that
//! drives it (`driver`) and the two seams that loop is generic over
//! (`ports`: the model and the shell), with recording fakes of both for
//! tests (`fakes`).

mod arguments;
mod conversation;
mod driver;
#[cfg(test)]
pub(crate) mod fakes;
mod ports;
mod toolbox;
mod tools;

pub use arguments::{check_arguments, parameters_problem, takes_other_keys};
pub use conversation::{Conversation, Next};
pub use driver::{drive, AgentError, DriveLimits};
pub use ports::{Model, Shell};
pub use toolbox::Toolbox;
pub use tools::{observation, truncate, Action, ToolCall};
