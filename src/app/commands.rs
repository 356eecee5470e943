//! The commands that read or write run directories and files but run no
//! job: `init`, `completions`, `report`, `sweep`, `merge`, `export`. Each
//! prints through [`super::say`] (a closed stdout ends output quietly) and
//! maps its errors to an exit code: a destination the user named that
//! cannot be (no such directory, a file where a directory must be) is
//! invalid input (2); a write that fails on a good destination is
//! infrastructure (4).

use std::io::ErrorKind;
use std::path::{Path, PathBuf};

use super::say;
use crate::cli::Cli;
use crate::exit::{Exit, Failure};
use crate::manifest;
use crate::report::is_closed_pipe;

/// A destination that cannot be written: the user's to fix when the path
/// itself is wrong, infrastructure otherwise.
fn output_failure(path: &Path, e: std::io::Error) -> Failure {
    let error = anyhow::anyhow!("cannot write `{}`: {e}", path.display());
    match e.kind() {
        ErrorKind::NotFound
        | ErrorKind::NotADirectory
        | ErrorKind::IsADirectory
        | ErrorKind::AlreadyExists
        | ErrorKind::PermissionDenied => Failure::invalid(error),
        _ => Failure::infra(error),
    }
}

/// `convoy init DIR`: the starter job.
pub(super) fn init(dir: &Path) -> Result<Exit, Failure> {
    if dir.exists() && !dir.is_dir() {
        return Err(Failure::invalid(anyhow::anyhow!(
            "cannot write the starter job: `{}` is not a directory",
            dir.display()
        )));
    }
    let files = manifest::write_starter(dir).map_err(|e| match e {
        manifest::StarterError::Exists(_) => Failure::invalid(e),
        other => Failure::infra(other),
    })?;
    for f in &files {
        say(&format!("wrote {}\n", f.display()));
    }
    say(&format!(
        "run it: convoy run {}   (offline: script provider, local workspace)\n",
        files[0].display()
    ));
    Ok(Exit::Ok)
}

/// `convoy completions SHELL`: the completion script on stdout (the
/// hidden helper command left out).
pub(super) fn completions(shell: clap_complete::Shell) -> Result<Exit, Failure> {
    // clap_complete lists hidden subcommands too; rebuild the command
    // without the helper's.
    let full = <Cli as clap::CommandFactory>::command();
    let mut cmd = clap::Command::new("convoy")
        .args(full.get_arguments().cloned())
        .subcommands(full.get_subcommands().filter(|c| !c.is_hide_set()).cloned());
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut cmd, "convoy", &mut script);
    say(&String::from_utf8_lossy(&script));
    Ok(Exit::Ok)
}

/// Prints the report; writes nothing unless `chart` asks for the chart
/// (`Some(None)`: RUN_DIR/metrics.svg).
pub(super) fn report(
    dir: &Path,
    json: bool,
    chart: Option<Option<PathBuf>>,
) -> Result<Exit, Failure> {
    let report = crate::report::analyze(dir).map_err(Failure::invalid)?;
    if json {
        let text = serde_json::to_string_pretty(&report).map_err(Failure::infra)?;
        say(&format!("{text}\n"));
    } else {
        say(&report.render());
    }
    if let Some(path) = chart {
        let path = path.unwrap_or_else(|| dir.join("metrics.svg"));
        crate::report::write_chart(dir, &path).map_err(|e| match e {
            crate::report::ReportError::Write { path, source } => output_failure(&path, source),
            other => Failure::invalid(other),
        })?;
        eprintln!("chart: {}", path.display());
    }
    Ok(Exit::Ok)
}

pub(super) fn sweep(
    runtime: &tokio::runtime::Runtime,
    manifest: Option<&Path>,
) -> Result<Exit, Failure> {
    let engines = match manifest {
        Some(path) => {
            crate::manifest::load(path)
                .map_err(Failure::invalid)?
                .manifest
                .workspace
                .engines
        }
        None => Vec::new(),
    };
    let swept = runtime.block_on(crate::workspace::sweep::sweep(&engines));
    say(&swept.render());
    if let Some(e) = &swept.docker_unreachable {
        say(&format!("Docker not checked (unreachable: {e})\n"));
    }
    if swept.is_empty() {
        say("nothing left by crashed runs\n");
    }
    Ok(Exit::Ok)
}

pub(super) fn merge(out: &Path, dirs: &[PathBuf]) -> Result<Exit, Failure> {
    let stats = crate::journal::merge(out, dirs).map_err(|e| match e {
        crate::journal::MergeError::Write { .. } => Failure::infra(e),
        other => Failure::invalid(other),
    })?;
    let counts: Vec<String> = stats
        .by_status
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    say(&format!(
        "merged {} run directories into {}: {} tasks ({}), {} duplicates dropped\n",
        dirs.len(),
        out.display(),
        stats.tasks,
        counts.join(", "),
        stats.duplicates
    ));
    Ok(Exit::Ok)
}

/// Exports to stdout, or to `out` through an `AtomicFile`: any error
/// leaves an existing file as it was. A reader of stdout that stops early
/// (`| head`) ends the export quietly.
pub(super) fn export(
    dir: &Path,
    options: &crate::journal::ExportOptions,
    out: Option<&Path>,
) -> Result<Exit, Failure> {
    let failure = |e: crate::journal::ExportError| match e {
        crate::journal::ExportError::Write(_) => Failure::infra(e),
        other => Failure::invalid(other),
    };
    let stats = match out {
        Some(path) => {
            let mut file =
                crate::journal::AtomicFile::create(path).map_err(|e| output_failure(path, e))?;
            let stats = crate::journal::export(dir, options, file.file()).map_err(failure)?;
            file.commit().map_err(|e| output_failure(path, e))?;
            stats
        }
        None => match crate::journal::export(dir, options, &mut std::io::stdout().lock()) {
            Err(crate::journal::ExportError::Write(e)) if is_closed_pipe(&e) => {
                return Ok(Exit::Ok)
            }
            other => other.map_err(failure)?,
        },
    };
    eprintln!("{}", stats.render());
    Ok(Exit::Ok)
}
