//! The `stowage` binary: parses arguments, runs one library operation, prints its summary
//! and maps the outcome to an exit code.

#[macro_use]
mod output;
mod cli;
mod commands;
mod exit;
mod interrupt;
mod progress;

use clap::error::ErrorKind;
use clap::Parser;

use crate::exit::Exit;

fn main() -> std::process::ExitCode {
    let cli = match cli::Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => return usage_error(&e).into(),
    };
    let quiet = cli.quiet;
    // `serve` runs its connections on runtimes of its own, one per core; this one only
    // accepts them and waits for signals.
    let mut builder = match cli.command {
        cli::Command::Serve(_) => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            errln!("error: cannot start the async runtime: {e}");
            return Exit::Error.into();
        }
    };
    let exit = runtime.block_on(async {
        match cli.command {
            cli::Command::Migrate(cmd) => commands::migrate::run(cmd, quiet).await,
            cli::Command::Serve(args) => commands::serve::run(args).await,
            cli::Command::Verify(cmd) => commands::verify::run(cmd, quiet).await,
            cli::Command::Cleanup(args) => commands::cleanup::run(args, quiet),
            cli::Command::Disk(args) => commands::disk::run(args, quiet),
            cli::Command::Url(args) => commands::url::run(args).await,
        }
    });
    exit.into()
}

/// Prints a fatal error the way every command does, and returns the matching exit.
pub(crate) fn fatal(e: &stowage::Error) -> Exit {
    errln!("error: {}", commands::error_text(e));
    match e {
        stowage::Error::Interrupted => Exit::Interrupted,
        _ => Exit::Error,
    }
}

/// A command line clap refused: clap's message on stderr (help and version on stdout, exit
/// 0, as clap does), and with `--json` anywhere on the line also the JSON error document
/// on stdout, so a script never parses an empty stdout.
fn usage_error(e: &clap::Error) -> Exit {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.iter().any(|a| a == "--json") {
        let command = args
            .iter()
            .take_while(|a| !a.starts_with('-'))
            .take(2)
            .cloned()
            .collect::<Vec<_>>()
            .join(" ");
        let rendered = e.render().to_string();
        let mut lines = rendered.lines().filter(|l| !l.trim().is_empty());
        let message = lines
            .next()
            .unwrap_or("invalid arguments")
            .trim_start_matches("error: ")
            .to_owned();
        let hint = foreign_flag_hint(e).or_else(|| {
            lines
                .map(str::trim)
                .find(|l| l.starts_with("tip:"))
                .map(|l| l.trim_start_matches("tip:").trim().to_owned())
        });
        let now = commands::rfc3339(std::time::SystemTime::now());
        commands::print_json(&serde_json::json!({
            "command": command,
            "started": now,
            "finished": now,
            "elapsed_s": 0.0,
            "error": {"kind": "usage", "message": message, "hint": hint},
        }));
    }
    let _ = e.print();
    if let Some(hint) = foreign_flag_hint(e) {
        errln!("hint: {hint}");
    }
    Exit::Error
}

/// What stowage offers instead of an rclone / aws-cli flag it does not have (the
/// "Coming from rclone" section of migrate's and cleanup's `--help` says the same).
fn foreign_flag_hint(e: &clap::Error) -> Option<String> {
    if e.kind() != ErrorKind::UnknownArgument {
        return None;
    }
    let arg = match e.get(clap::error::ContextKind::InvalidArg)? {
        clap::error::ContextValue::String(s) => s.clone(),
        _ => return None,
    };
    let flag = arg.split('=').next().unwrap_or(&arg);
    let instead = match flag {
        "--delete" | "--delete-after" | "--delete-extra" => {
            "stowage has no --delete: a migrate rerun never deletes; `stowage verify s3-to-local` lists the extra files"
        }
        "-c" => {
            "stowage spells it --checksum (migrate s3-to-local): an already present file is told by its content"
        }
        "--size-only" | "--update" | "-u" => {
            "reruns already skip files with the same size and mtime; no flag is needed"
        }
        "--include" | "--exclude" | "--filter" => {
            "stowage has no --include/--exclude; --prefix (or --bucket s3://NAME/PREFIX) narrows the keys"
        }
        "--min-age" => {
            "migrate has no --min-age; `migrate s3-to-local --max-age` copies only recent objects, and `stowage cleanup --max-age` deletes files older than it"
        }
        "--max-age" => {
            "--max-age is offered by `migrate s3-to-local` (copy only recent objects) and `stowage cleanup --max-age` (delete files older than it)"
        }
        "--bwlimit" => "stowage has no --bwlimit; lower --concurrency to copy fewer objects at once",
        _ => return None,
    };
    Some(format!("{instead} (see --help, \"Coming from rclone\")"))
}
