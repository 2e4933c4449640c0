//! Exit codes: the one place that maps outcomes to process statuses.

/// How a stowage command ended, as the shell sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Exit {
    /// Everything done and verified.
    Success,
    /// Finished, but some items failed, were rejected, unverified or different.
    Problems,
    /// Usage, configuration or fatal error; nothing (more) was done.
    Error,
    /// Interrupted by Ctrl-C or SIGTERM, after cleaning up.
    Interrupted,
    /// Another run held the store lock for all of `--wait`; nothing was done.
    Locked,
    /// The reader of stdout went away (`stowage ... | head`): ended quietly, as `ls` does
    /// when killed by SIGPIPE.
    BrokenPipe,
}

impl Exit {
    pub(crate) fn code(self) -> u8 {
        match self {
            Exit::Success => 0,
            Exit::Problems => 1,
            Exit::Error => 2,
            Exit::Locked => 3,
            Exit::Interrupted => 130,
            Exit::BrokenPipe => 141,
        }
    }

    /// `Success` when nothing went wrong, `Problems` otherwise.
    pub(crate) fn from_problems(any: bool) -> Exit {
        if any {
            Exit::Problems
        } else {
            Exit::Success
        }
    }
}

impl From<Exit> for std::process::ExitCode {
    fn from(e: Exit) -> Self {
        std::process::ExitCode::from(e.code())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_are_the_documented_ones() {
        assert_eq!(Exit::Success.code(), 0);
        assert_eq!(Exit::Problems.code(), 1);
        assert_eq!(Exit::Error.code(), 2);
        assert_eq!(Exit::Interrupted.code(), 130);
        assert_eq!(Exit::Locked.code(), 3);
        assert_eq!(Exit::BrokenPipe.code(), 141);
        assert_eq!(Exit::from_problems(false), Exit::Success);
        assert_eq!(Exit::from_problems(true), Exit::Problems);
    }
}
