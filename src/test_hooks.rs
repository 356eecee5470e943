//! Faults the integration tests inject on purpose: a conversation that
//! panics (`CONVOY_TEST_PANIC=CMD`) and workspaces that leak sessions,
//! descriptors or processes (`CONVOY_TEST_LEAK=session|fd|process`), so the
//! tests can prove that a panic still closes its session and that the leak
//! rules catch each kind of leak.
//!
//! A user's convoy must never act on these variables, so they exist only
//! in a build with the `test-hooks` cargo feature (Cargo.toml says how the
//! tests get it). Without it every hook below is an empty function whose
//! body never names a variable: the code that reads them is not compiled
//! in, not merely skipped at run time (`.ci/run` checks a plain build's
//! binary for their names).

/// Which leak `CONVOY_TEST_LEAK` asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Leak {
    /// Conversations forget their session instead of closing it.
    Session,
    /// Each closed session leaves a file descriptor open in convoy.
    Fd,
    /// The helper leaves a closed session's processes alive.
    Process,
}

/// What of convoy's environment the local helper must inherit for the
/// hooks it runs (`Leak::Process` is the helper's): nothing without them.
#[cfg(feature = "test-hooks")]
pub const HELPER_ENV: &[&str] = &["CONVOY_TEST_LEAK"];
#[cfg(not(feature = "test-hooks"))]
pub const HELPER_ENV: &[&str] = &[];

/// The leak this process was asked for, if any.
#[cfg(feature = "test-hooks")]
pub fn leak() -> Option<Leak> {
    match std::env::var("CONVOY_TEST_LEAK").ok()?.as_str() {
        "session" => Some(Leak::Session),
        "fd" => Some(Leak::Fd),
        "process" => Some(Leak::Process),
        _ => None,
    }
}

/// Without the hooks nothing is ever leaked on purpose.
#[cfg(not(feature = "test-hooks"))]
pub fn leak() -> Option<Leak> {
    None
}

/// Panics when the model asks to run exactly `CONVOY_TEST_PANIC`'s
/// command, so the tests can prove a panicking conversation still has its
/// session closed and the job goes on.
#[cfg(feature = "test-hooks")]
pub fn panic_on(command: &str) {
    static TRIGGER: std::sync::OnceLock<Option<String>> = std::sync::OnceLock::new();
    let trigger = TRIGGER.get_or_init(|| std::env::var("CONVOY_TEST_PANIC").ok());
    if trigger.as_deref() == Some(command) {
        panic!("deliberate panic (CONVOY_TEST_PANIC) on `{command}`");
    }
}

/// Without the hooks no command panics.
#[cfg(not(feature = "test-hooks"))]
pub fn panic_on(_command: &str) {}

#[cfg(test)]
mod tests {
    use super::*;

    /// The tests are built with the hooks (the crate's dev-dependency on
    /// itself turns them on); without them the local helper would not
    /// even be handed `CONVOY_TEST_LEAK`, and the leak tests could not
    /// work.
    #[test]
    fn the_tests_are_built_with_the_hooks() {
        assert_eq!(
            HELPER_ENV,
            ["CONVOY_TEST_LEAK"],
            "built without the `test-hooks` feature"
        );
    }
}
