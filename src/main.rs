//! The `convoy` binary: parse arguments, run the library, map the outcome to
//! an exit code. Everything else lives in the library.

fn main() -> std::process::ExitCode {
    let cli = convoy::cli::Cli::parse_args();
    let code = convoy::app::main(cli);
    std::process::ExitCode::from(code.as_u8())
}
