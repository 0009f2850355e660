//! Starting processes inside a node: its network namespace, its cgroup, and a private mount
//! namespace in which the node's hosts file is `/etc/hosts` and `/sys` shows the node's
//! interfaces (what `ip netns exec` does).
//!
//! The setup runs in the forked child before `exec`, so it may only make async-signal-safe
//! calls: raw syscalls on file descriptors and C strings prepared beforehand — no allocation,
//! no locks. Everything it needs is opened in the parent by [`NodeExec::command`], when a
//! command is made, and closed with that command: a [`NodeExec`] itself holds paths, no
//! descriptors, so a lab of thousands of nodes keeps none open for starting processes.

use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where a process started inside a node finds what it enters.
pub struct NodeExec {
    pub ns_name: String,
    netns: PathBuf,
    hosts: Option<CString>,
    cgroup_procs: Vec<PathBuf>,
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
    /// `netns`: the namespace file (`/run/netns/NAME`); `hosts`: file to bind over
    /// `/etc/hosts` (skipped when it does not exist); `cgroup_procs`: the `cgroup.procs` files
    /// the child joins.
    pub fn new(
        ns_name: &str,
        netns: PathBuf,
        hosts: Option<&Path>,
        cgroup_procs: Vec<PathBuf>,
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
    /// terminal's Ctrl-C reaches edgesim, not the workloads), and gets the open-file limit
    /// edgesim started with ([`crate::host::rlimit::child_limit`]).
    ///
    /// The command owns the descriptors it enters the node with (the namespace, one
    /// `cgroup.procs` per hierarchy, all close-on-exec): they close when it is dropped.
    pub fn command(&self, program: &str, args: &[String]) -> io::Result<Command> {
        let with =
            |p: &Path, e: io::Error| io::Error::new(e.kind(), format!("{}: {e}", p.display()));
        let netns_file = File::open(&self.netns).map_err(|e| with(&self.netns, e))?;
        let procs_files: Vec<File> = self
            .cgroup_procs
            .iter()
            .map(|p| {
                OpenOptions::new()
                    .write(true)
                    .open(p)
                    .map_err(|e| with(p, e))
            })
            .collect::<io::Result<_>>()?;
        let mut cmd = Command::new(program);
        cmd.args(args);
        let netns = netns_file.as_raw_fd();
        let procs: Vec<i32> = procs_files.iter().map(|f| f.as_raw_fd()).collect();
        let keep = (netns_file, procs_files);
        let nofile = crate::host::rlimit::child_limit();
        let hosts = self.hosts.clone();
        let etc_hosts = cstr(b"/etc/hosts")?;
        let root = cstr(b"/")?;
        let sys = cstr(b"/sys")?;
        let sysfs = cstr(b"sysfs")?;
        // SAFETY: the closure runs in the child between fork and exec; it only performs raw
        // syscalls (write, setns, unshare, mount, umount2, setsid, setrlimit) on descriptors
        // and C strings that were prepared above and are owned by the closure (`keep` holds
        // the files), which lives as long as the command. It allocates nothing and takes no
        // locks.
        unsafe {
            cmd.pre_exec(move || {
                let _ = &keep;
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
                if let Some(l) = &nofile
                    && libc::setrlimit(libc::RLIMIT_NOFILE, l) != 0
                {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
        Ok(cmd)
    }
}
