//! The tests' fake OpenAI-compatible server (tests/support/fake_llm.rs) as
//! a process of its own, for scripts that need a real HTTP endpoint on
//! this machine: `scripts/soak.sh` runs its conversations through it, so
//! the soak measures the path users take (convoy's HTTP client and its
//! connection pool), not only the `script` provider.
//!
//! Prints its base URL on the first line of stdout, then serves until its
//! stdin closes (the script that started it exited) or it is signalled.
//! The fake records every request for the tests' assertions; here nobody
//! reads them, so they are dropped every second to keep memory flat.

#[path = "../tests/support/fake_llm.rs"]
mod fake_llm;

use std::io::Write;
use std::time::Duration;

use tokio::io::AsyncReadExt;

#[tokio::main]
async fn main() {
    let llm = fake_llm::FakeLlm::start().await;
    println!("{}", llm.base_url());
    std::io::stdout().flush().expect("stdout");
    let mut stdin = tokio::io::stdin();
    let mut sink = [0u8; 256];
    let mut forget = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            n = stdin.read(&mut sink) => if !matches!(n, Ok(n) if n > 0) { break },
            _ = tokio::signal::ctrl_c() => break,
            _ = forget.tick() => llm.clear(),
        }
    }
}
