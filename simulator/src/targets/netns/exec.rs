//! Starting processes inside a node: its network namespace, its cgroup, and a private mount
//! namespace in which the node's hosts file is `/etc/hosts` and `/sys` shows the node's
//! interfaces (what `ip netns exec` does).
//!
//! The setup runs in the forked child before `exec`, so it may only make async-signal-safe
//! calls: raw syscalls on file descriptors and C strings prepared beforehand — no allocation,
//! no locks. Everything it needs is opened by [`NodeExec`] in the parent.

use std::ffi::CString;
use std::fs::File;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::Command;

/// What a process needs to start inside a node.
pub struct NodeExec {
    pub ns_name: String,
    netns: OwnedFd,
    hosts: Option<CString>,
    cgroup_procs: Vec<File>,
}

impl std::fmt::Debug for NodeExec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NodeExec")
            .field("ns", &self.ns_name)
            .finish()
    }
}

fn cstr(s: &[u8]) -> io::Result<CString> {
    CString::new(s).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "path contains NUL"))
}

impl NodeExec {
    /// `hosts`: file to bind over `/etc/hosts` (skipped when it does not exist);
    /// `cgroup_procs`: opened `cgroup.procs` files the child joins.
    pub fn new(
        ns_name: &str,
        netns: OwnedFd,
        hosts: Option<&Path>,
        cgroup_procs: Vec<File>,
    ) -> io::Result<Self> {
        let hosts = match hosts {
            Some(p) if p.exists() => Some(cstr(p.as_os_str().as_bytes())?),
            _ => None,
        };
        Ok(NodeExec {
            ns_name: ns_name.to_string(),
            netns,
            hosts,
            cgroup_procs,
        })
    }

    /// A command that runs `program args…` inside the node. The child becomes the leader of
    /// a new session (so signals for the whole workload go to its process group, and a
    /// terminal's Ctrl-C reaches edgesim, not the workloads).
    pub fn command(&self, program: &str, args: &[String]) -> io::Result<Command> {
        let mut cmd = Command::new(program);
        cmd.args(args);
        let netns = self.netns.as_raw_fd();
        let hosts = self.hosts.clone();
        let procs: Vec<i32> = self.cgroup_procs.iter().map(|f| f.as_raw_fd()).collect();
        let etc_hosts = cstr(b"/etc/hosts")?;
        let root = cstr(b"/")?;
        let sys = cstr(b"/sys")?;
        let sysfs = cstr(b"sysfs")?;
        // SAFETY: the closure runs in the child between fork and exec; it only performs raw
        // syscalls (write, setns, unshare, mount, umount2, setsid) on descriptors and C
        // strings that were prepared above and are owned by `self`/the closure, which outlive
        // the spawn call. It allocates nothing and takes no locks.
        unsafe {
            cmd.pre_exec(move || {
                for fd in &procs {
                    if libc::write(*fd, b"0".as_ptr().cast(), 1) < 0 {
                        return Err(io::Error::last_os_error());
                    }
                }
                if libc::setns(netns, libc::CLONE_NEWNET) != 0 {
                    return Err(io::Error::last_os_error());
                }
                if libc::unshare(libc::CLONE_NEWNS) != 0 {
                    return Err(io::Error::last_os_error());
                }
                // Keep mounts made here out of the host's mount namespace.
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                if let Some(h) = &hosts
                    && libc::mount(
                        h.as_ptr(),
                        etc_hosts.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                // A sysfs of this network namespace, as `ip netns exec` mounts; best effort
                // (it fails in some containers, and few programs need it).
                if libc::umount2(sys.as_ptr(), libc::MNT_DETACH) == 0 {
                    libc::mount(
                        sysfs.as_ptr(),
                        sys.as_ptr(),
                        sysfs.as_ptr(),
                        0,
                        std::ptr::null(),
                    );
                }
                if libc::setsid() < 0 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }
}
