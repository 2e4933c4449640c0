//! Printing that survives its reader going away.
//!
//! `println!` panics when stdout is a closed pipe (`stowage cleanup --dry-run | head`).
//! Every line the binary prints goes through [`out!`], [`outln!`] or [`errln!`] instead
//! (serve's access log through [`logln!`], which drops the line rather than stop serving):
//! on `BrokenPipe` the process exits at once, quietly, with status 141 (128 + SIGPIPE, what
//! the shell reports for `ls | head`), like `ls` and `rg`. Any other write error is
//! reported on stderr (when it can be) and ends the process with status 2.
//!
//! Exiting at a print is safe: prints happen between operations on the store (the
//! library's reporter calls are synchronous, and no delete is half done at that moment).

use std::fmt;
use std::io::{self, Write};

use crate::exit::Exit;

/// Writes `args` to stdout, or ends the process as described in the module docs.
pub(crate) fn stdout(args: fmt::Arguments<'_>) {
    let mut out = io::stdout().lock();
    if let Err(e) = out.write_fmt(args).and_then(|()| out.flush()) {
        write_failed("stdout", &e);
    }
}

/// Writes `args` to stderr, or ends the process as described in the module docs.
/// Formatted first and written whole (one `write(2)` for a line): written piece by piece,
/// a message could interleave with `serve`'s access-log lines, which other threads write
/// without stderr's lock ([`log_line`]).
pub(crate) fn stderr(args: fmt::Arguments<'_>) {
    let text = fmt::format(args);
    if let Err(e) = io::stderr().lock().write_all(text.as_bytes()) {
        write_failed("stderr", &e);
    }
}

/// Writes a log line to stderr, ignoring a write error: a server keeps serving when the
/// reader of its log has gone.
pub(crate) fn log(args: fmt::Arguments<'_>) {
    log_line(fmt::format(args).as_bytes());
}

/// Writes one whole log line to stderr with one `write(2)`, without taking stderr's lock,
/// and drops it on an error. The lock would be held across the syscall, so threads
/// serving requests at once would queue on it (a futex sleep and wake for about one
/// request in four on two cores); the kernel keeps each `write` of a line whole instead
/// (for a pipe, up to `PIPE_BUF`, 4 KiB; a file or a socket, any line).
pub(crate) fn log_line(mut line: &[u8]) {
    use std::os::fd::AsFd;
    let stderr = io::stderr();
    while !line.is_empty() {
        match rustix::io::write(stderr.as_fd(), line) {
            Ok(0) => return,
            Ok(n) => line = &line[n..],
            Err(rustix::io::Errno::INTR) => {}
            Err(_) => return,
        }
    }
}

fn write_failed(stream: &str, e: &io::Error) -> ! {
    if e.kind() == io::ErrorKind::BrokenPipe {
        std::process::exit(Exit::BrokenPipe.code().into());
    }
    let _ = writeln!(io::stderr(), "stowage: cannot write to {stream}: {e}");
    std::process::exit(Exit::Error.code().into());
}

/// `print!` that ends the process quietly when stdout's reader has gone.
macro_rules! out {
    ($($arg:tt)*) => { $crate::output::stdout(format_args!($($arg)*)) };
}

/// `println!` that ends the process quietly when stdout's reader has gone.
macro_rules! outln {
    () => { $crate::output::stdout(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `eprintln!` that ends the process quietly when stderr's reader has gone.
macro_rules! errln {
    () => { $crate::output::stderr(format_args!("\n")) };
    ($($arg:tt)*) => { $crate::output::stderr(format_args!("{}\n", format_args!($($arg)*))) };
}

/// A log line on stderr that is dropped, not fatal, when stderr's reader has gone (serve's
/// access log: a dead log pipe must not stop the server).
macro_rules! logln {
    ($($arg:tt)*) => { $crate::output::log(format_args!("{}\n", format_args!($($arg)*))) };
}
