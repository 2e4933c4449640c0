//! The one way stowage runs filesystem work on tokio's blocking pool.
//!
//! A panic in the closure is resumed in the caller with its own payload, as if the work
//! had run inline; it is never turned into an error or a second, misleading panic. The
//! only other way a blocking task ends early is the runtime shutting down before it
//! ran: that is [`Cancelled`], an error each caller's error type can hold.

use std::io;

/// A blocking task that never ran to completion because its runtime is shutting down.
#[derive(Debug, thiserror::Error)]
#[error("a blocking task was cancelled: the runtime is shutting down")]
pub(crate) struct Cancelled(#[source] pub(crate) tokio::task::JoinError);

impl From<Cancelled> for io::Error {
    fn from(c: Cancelled) -> io::Error {
        io::Error::new(io::ErrorKind::Interrupted, c)
    }
}

impl From<Cancelled> for crate::local::PlaceError {
    fn from(c: Cancelled) -> crate::local::PlaceError {
        crate::local::PlaceError::Io(c.into())
    }
}

impl From<Cancelled> for crate::Error {
    fn from(_: Cancelled) -> crate::Error {
        crate::Error::Interrupted
    }
}

impl From<Cancelled> for object_store::Error {
    fn from(c: Cancelled) -> object_store::Error {
        object_store::Error::JoinError { source: c.0 }
    }
}

/// Runs `f` on the blocking pool and returns what it returned.
pub(crate) async fn run<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, Cancelled> {
    match tokio::task::spawn_blocking(f).await {
        Ok(value) => Ok(value),
        Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
        Err(e) => Err(Cancelled(e)),
    }
}

/// [`run`] for fallible work: a cancellation becomes the closure's own error type.
pub(crate) async fn try_run<T: Send + 'static, E: From<Cancelled> + Send + 'static>(
    f: impl FnOnce() -> Result<T, E> + Send + 'static,
) -> Result<T, E> {
    run(f).await?
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_panic_reaches_the_caller_with_its_own_payload() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap();
        let caught = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            rt.block_on(super::run(|| -> () { panic!("the disk is on fire") }))
        }))
        .expect_err("the panic is resumed, not returned");
        assert_eq!(
            caught.downcast_ref::<&str>(),
            Some(&"the disk is on fire"),
            "the original payload, not a second message"
        );
    }
}
