//! The process's open-file limit (`RLIMIT_NOFILE`), raised for edgesim and given back to the
//! programs it starts.
//!
//! Design: a lab holds few descriptors per node (see [`crate::fabric`] and
//! [`crate::targets::netns`] for the count), but a few thousand nodes with workloads still
//! outgrow the customary soft limit of 1024. The soft limit is raised to the hard one once,
//! at startup of the `edgesim` binary and again (a no-op the second time) by the library
//! before it provisions a lab, so a library user gets the same. The hard limit is never
//! touched: raising it is the administrator's call (`ulimit -Hn`, `LimitNOFILE=`).
//!
//! Workloads get the soft limit edgesim itself started with, as systemd does for its
//! services: programs built around `select(2)` misbehave with descriptors above 1023, and a
//! program that wants more raises its own limit. [`child_limit`] is what the fork-exec path
//! restores.

use std::sync::OnceLock;

use nix::sys::resource::{Resource, getrlimit, setrlimit};

/// The soft and hard `RLIMIT_NOFILE` this process started with, recorded by the first call to
/// [`raise_nofile`].
static ORIGINAL: OnceLock<(u64, u64)> = OnceLock::new();

/// The current soft and hard `RLIMIT_NOFILE`.
pub fn nofile() -> std::io::Result<(u64, u64)> {
    getrlimit(Resource::RLIMIT_NOFILE).map_err(std::io::Error::from)
}

/// Raises the soft `RLIMIT_NOFILE` to the hard limit and returns the limits in force.
///
/// Guarantees: idempotent; never lowers a limit; on failure the limits stay as they were
/// (the caller may carry on with the soft limit, which the up-front checks then account for).
pub fn raise_nofile() -> std::io::Result<(u64, u64)> {
    let (soft, hard) = nofile()?;
    let _ = ORIGINAL.set((soft, hard));
    // An unlimited hard limit still stops at `fs.nr_open`: the kernel refuses more.
    let target = hard.min(nr_open().unwrap_or(hard));
    if soft >= target {
        return Ok((soft, hard));
    }
    setrlimit(Resource::RLIMIT_NOFILE, target, hard).map_err(std::io::Error::from)?;
    tracing::debug!(from = soft, to = target, "raised the soft open-file limit");
    Ok((target, hard))
}

/// `fs.nr_open`: the most descriptors any process may be allowed.
pub fn nr_open() -> Option<u64> {
    std::fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// The `RLIMIT_NOFILE` to give a child process: the limits this process started with, when
/// [`raise_nofile`] changed them; `None` when nothing needs restoring.
pub fn child_limit() -> Option<libc::rlimit> {
    let &(soft, hard) = ORIGINAL.get()?;
    let (now_soft, _) = nofile().ok()?;
    (now_soft != soft).then_some(libc::rlimit {
        rlim_cur: soft as libc::rlim_t,
        rlim_max: hard as libc::rlim_t,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn raising_reaches_the_hard_limit_and_is_idempotent() {
        let (soft, hard) = raise_nofile().unwrap();
        assert_eq!(
            soft,
            hard.min(nr_open().unwrap()),
            "soft limit raised to the hard one"
        );
        assert_eq!(raise_nofile().unwrap(), (soft, hard));
        let &(orig_soft, orig_hard) = ORIGINAL.get().unwrap();
        assert!(orig_soft <= soft && orig_hard == hard);
        // A child gets the original soft limit back exactly when it was changed.
        match child_limit() {
            Some(l) => assert_eq!(l.rlim_cur, orig_soft as libc::rlim_t),
            None => assert_eq!(orig_soft, soft),
        }
    }
}
