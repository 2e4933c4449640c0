//! The `stowage` binary: parses arguments, runs one library operation, prints its summary
//! and maps the outcome to an exit code.

#[macro_use]
mod output;
mod cli;
mod commands;
mod exit;
mod interrupt;
mod progress;

use clap::Parser;

use crate::exit::Exit;

fn main() -> std::process::ExitCode {
    let cli = cli::Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            errln!("error: cannot start the async runtime: {e}");
            return Exit::Error.into();
        }
    };
    let exit = runtime.block_on(async {
        match cli.command {
            cli::Command::Migrate(cmd) => commands::migrate::run(cmd).await,
            cli::Command::Serve(args) => commands::serve::run(args).await,
            cli::Command::Verify(cmd) => commands::verify::run(cmd).await,
            cli::Command::Cleanup(args) => Exit::from_status(commands::cleanup::run(args)),
            cli::Command::Disk(args) => Exit::from_status(commands::disk::run(args)),
            cli::Command::Url(args) => commands::url::run(args).await,
        }
    });
    exit.into()
}

/// Prints a fatal error the way every command does, and returns the matching exit.
pub(crate) fn fatal(e: &stowage::Error) -> Exit {
    errln!("error: {e}");
    match e {
        stowage::Error::Interrupted => Exit::Interrupted,
        _ => Exit::Error,
    }
}
