//! Ctrl-C and SIGTERM become a cancellation the library honours: operations stop, clean
//! up their temp files and report what they did.

use tokio_util::sync::CancellationToken;

/// A token cancelled on the first SIGINT or SIGTERM, saying `stopping` (what the command
/// does now, e.g. "removing temp files"). A second signal exits at once.
pub(crate) fn cancel_on_signals(stopping: &'static str) -> CancellationToken {
    let token = CancellationToken::new();
    let t = token.clone();
    tokio::spawn(async move {
        let mut term =
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => return,
            };
        for _ in 0..2 {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            if t.is_cancelled() {
                errln!("interrupted again: exiting now");
                std::process::exit(130);
            }
            errln!("interrupted: stopping, {stopping} (press Ctrl-C again to exit at once)");
            t.cancel();
        }
    });
    token
}
