//! The job manifest: TOML schema, defaults, loading and validation.
//!
//! Every key is documented on its struct field and has its default in one
//! place (the `Default` impls in `schema`). Unknown keys, wrong types, bad
//! durations and impossible values are errors that name the file, the line
//! and the key.

mod containers;
mod endpoints;
mod environment;
mod external;
mod load;
mod run_spec;
mod schema;
mod starter;
mod tools;
mod wording;
mod workspace_rules;

pub use containers::Containers;
pub use endpoints::{Endpoint, EndpointSpec, Role};
pub use environment::escapes;
pub use load::{load, Job, ManifestError, Problem};
pub use schema::*;
pub use starter::{write_starter, StarterError, JOB_TOML, TASKS_JSONL};
