//! Named network namespaces, created, entered and deleted without touching the host's.
//!
//! Design:
//! - A namespace is named the way iproute2 names them: a bind mount of the namespace file on
//!   `/run/netns/NAME`, so `ip netns exec NAME …` works on everything edgesim creates.
//! - `setns` changes only the calling thread, so every entry happens on a short-lived OS
//!   thread that exits afterwards (never a tokio worker, never a pooled `spawn_blocking`
//!   thread, which would stay in the namespace and run unrelated work there). What that
//!   thread hands back — a netlink socket, a TCP socket, a raw socket — stays bound to the
//!   namespace it was opened in, so async code uses it from anywhere.
//! - Creation never forks: the throwaway thread `unshare`s a fresh namespace and bind-mounts
//!   its `/proc/thread-self/ns/net`. One thread can create many namespaces in a row, which is
//!   what makes a 200-node bring-up take milliseconds.
//! - Deletion is idempotent: a namespace that is already gone counts as deleted.
//!
//! This is the one seam through which namespaces are created and entered; a rootless mode
//! (inside a user namespace) replaces what is behind it, not its callers.

use std::fs::{self, File, OpenOptions};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, IntoRawFd, OwnedFd};
use std::path::{Path, PathBuf};

use nix::mount::{MntFlags, MsFlags, mount, umount2};
use nix::sched::{CloneFlags, setns, unshare};

use super::{HostError, Result};

/// Where named namespaces live (the iproute2 convention).
pub const NETNS_DIR: &str = "/run/netns";

/// Path of the bind mount that names namespace `name`.
pub fn path(name: &str) -> PathBuf {
    Path::new(NETNS_DIR).join(name)
}

/// Whether namespace `name` exists.
pub fn exists(name: &str) -> bool {
    path(name).exists()
}

/// Names of existing namespaces that start with `prefix`.
pub fn list(prefix: &str) -> Vec<String> {
    let Ok(rd) = fs::read_dir(NETNS_DIR) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .filter_map(|e| e.file_name().into_string().ok())
        .filter(|n| n.starts_with(prefix))
        .collect();
    v.sort();
    v
}

/// Makes `/run/netns` exist and be a shared mount point, as `ip netns add` does, so a namespace
/// mounted there is visible to processes in other mount namespaces (e.g. a workload's).
///
/// Guarantees: idempotent.
pub fn ensure_dir() -> Result<()> {
    let err = |e: io::Error| HostError::io("preparing", NETNS_DIR, e);
    fs::create_dir_all(NETNS_DIR).map_err(err)?;
    let shared = || {
        mount(
            None::<&str>,
            NETNS_DIR,
            None::<&str>,
            MsFlags::MS_SHARED | MsFlags::MS_REC,
            None::<&str>,
        )
    };
    match shared() {
        Ok(()) => Ok(()),
        Err(nix::Error::EINVAL) => {
            // Not a mount point yet: bind it onto itself first, then make it shared.
            mount(
                Some(NETNS_DIR),
                NETNS_DIR,
                None::<&str>,
                MsFlags::MS_BIND | MsFlags::MS_REC,
                None::<&str>,
            )
            .map_err(|e| err(e.into()))?;
            shared().map_err(|e| err(e.into()))
        }
        Err(e) => Err(err(e.into())),
    }
}

/// Runs `f` on a fresh OS thread and waits for it. The thread ends afterwards, so whatever
/// namespace it entered dies with it.
fn on_thread<F, R>(what: &str, f: F) -> Result<R>
where
    F: FnOnce() -> Result<R> + Send,
    R: Send,
{
    std::thread::scope(|s| {
        std::thread::Builder::new()
            .name("edgesim-ns".into())
            .spawn_scoped(s, f)
            .map_err(|e| HostError::io("spawning a thread for", what, e))?
            .join()
            .map_err(|_| HostError::other("thread for", what, "panicked"))?
    })
}

fn create_here(name: &str) -> Result<()> {
    create_here_at(&path(name), name)
}

fn create_here_at(p: &Path, name: &str) -> Result<()> {
    let cerr = |source: io::Error| HostError::NsCreate {
        name: name.to_string(),
        source,
    };
    OpenOptions::new()
        .read(true)
        .write(true)
        .create_new(true)
        .open(p)
        .map_err(cerr)?;
    let res = unshare(CloneFlags::CLONE_NEWNET)
        .and_then(|()| {
            mount(
                Some("/proc/thread-self/ns/net"),
                p,
                None::<&str>,
                MsFlags::MS_BIND,
                None::<&str>,
            )
        })
        .map_err(|e| cerr(e.into()));
    if res.is_err() {
        let _ = fs::remove_file(p);
    }
    res
}

/// Creates a namespace pinned at the file `p` (outside `/run/netns`: a folder of the
/// caller's, where an unprivileged user holding CAP_SYS_ADMIN may create it); fails if `p`
/// exists. [`delete_at`] removes it.
///
/// Guarantees: on error nothing is left behind. Assumes: CAP_SYS_ADMIN, `p`'s folder exists.
pub fn create_at(p: &Path) -> Result<()> {
    let name = p.display().to_string();
    on_thread("creating a namespace", || create_here_at(p, &name))
}

/// Creates namespace `name` (fails if it exists).
///
/// Guarantees: on error nothing is left behind. Assumes: root (CAP_SYS_ADMIN).
pub fn create(name: &str) -> Result<()> {
    create_many(std::slice::from_ref(&name.to_string()))
}

/// Creates several namespaces from one thread, in order. On error the ones this call created
/// are deleted again.
pub fn create_many(names: &[String]) -> Result<()> {
    ensure_dir()?;
    on_thread("creating namespaces", || {
        for (i, n) in names.iter().enumerate() {
            if let Err(e) = create_here(n) {
                for done in &names[..i] {
                    let _ = delete(done);
                }
                return Err(e);
            }
        }
        Ok(())
    })
}

/// Creates a namespace that has no name: it lives as long as the returned handle (and any
/// socket opened inside it), and the kernel frees it, with every interface in it, when the
/// last one is closed — also when the process holding them is killed.
///
/// Assumes: CAP_SYS_ADMIN.
pub fn create_anonymous(what: &str) -> Result<OwnedFd> {
    on_thread("creating a namespace", || {
        unshare(CloneFlags::CLONE_NEWNET).map_err(|e| HostError::NsCreate {
            name: what.to_string(),
            source: e.into(),
        })?;
        File::open("/proc/thread-self/ns/net")
            .map(OwnedFd::from)
            .map_err(|source| HostError::NsOpen {
                name: what.to_string(),
                source,
            })
    })
}

/// Deletes namespace `name`. A namespace that does not exist counts as deleted.
///
/// Guarantees: idempotent. The kernel frees the namespace (and the interfaces in it) once the
/// last process inside it has exited.
pub fn delete(name: &str) -> Result<()> {
    delete_at(&path(name), name)
}

/// Deletes the namespace pinned at `p` ([`create_at`]); `name` for errors. Idempotent.
pub fn delete_at(p: &Path, name: &str) -> Result<()> {
    let derr = |source: io::Error| HostError::NsDelete {
        name: name.to_string(),
        source,
    };
    match umount2(p, MntFlags::MNT_DETACH) {
        Ok(()) | Err(nix::Error::EINVAL) | Err(nix::Error::ENOENT) => {}
        Err(e) => return Err(derr(e.into())),
    }
    match fs::remove_file(p) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(derr(e)),
    }
}

/// Opens a handle on namespace `name`, for entering it later without a path lookup.
pub fn open(name: &str) -> Result<OwnedFd> {
    File::open(path(name))
        .map(OwnedFd::from)
        .map_err(|source| HostError::NsOpen {
            name: name.to_string(),
            source,
        })
}

/// Opens a handle on the namespace pinned at `p` ([`create_at`]).
pub fn open_at(p: &Path) -> Result<OwnedFd> {
    File::open(p)
        .map(OwnedFd::from)
        .map_err(|source| HostError::NsOpen {
            name: p.display().to_string(),
            source,
        })
}

/// A handle on the calling thread's own network namespace (a board's, for the device agent).
pub fn current() -> Result<OwnedFd> {
    File::open("/proc/thread-self/ns/net")
        .map(OwnedFd::from)
        .map_err(|source| HostError::NsOpen {
            name: "(this process's)".to_string(),
            source,
        })
}

/// Whether `fd` is the calling thread's network namespace.
fn is_current(fd: std::os::fd::BorrowedFd<'_>) -> bool {
    use std::os::unix::fs::MetadataExt;
    // /proc/self/fd/N resolves to the namespace file itself.
    match (
        fs::metadata(format!("/proc/self/fd/{}", fd.as_raw_fd())),
        fs::metadata("/proc/thread-self/ns/net"),
    ) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

/// Enters the namespace behind `fd` on the calling thread. A no-op where the thread is in it
/// already, so that work in the process's own namespace needs no CAP_SYS_ADMIN (the device
/// agent holds CAP_NET_ADMIN alone).
fn enter(fd: std::os::fd::BorrowedFd<'_>, name: &str) -> Result<()> {
    if is_current(fd) {
        return Ok(());
    }
    setns(fd, CloneFlags::CLONE_NEWNET).map_err(|e| HostError::NsEnter {
        name: name.to_string(),
        source: e.into(),
    })
}

/// Runs `f` inside the namespace behind `fd`, on a throwaway thread, and returns its result.
/// `what` names the namespace in errors.
pub fn run_in_fd<F, R>(fd: impl AsFd + Send, what: &str, f: F) -> Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    on_thread(what, move || {
        enter(fd.as_fd(), what)?;
        Ok(f())
    })
}

/// Runs `f` inside namespace `name`, on a throwaway thread, and returns its result.
pub fn run_in<F, R>(name: &str, f: F) -> Result<R>
where
    F: FnOnce() -> R + Send,
    R: Send,
{
    let fd = open(name)?;
    run_in_fd(&fd, name, f)
}

/// Opens one raw `NETLINK_ROUTE` socket inside each namespace, in order, from one thread.
pub fn netlink_sockets<Fd: AsFd + Sync>(
    namespaces: &[(Fd, &str)],
) -> Result<Vec<netlink_sys::Socket>> {
    netlink_sockets_with(namespaces, |_| Ok(()))
}

/// [`netlink_sockets`], running `prepare` inside each namespace first (with the namespace's
/// name), e.g. to write its sysctls: `/proc/sys/net` opened there is that namespace's.
pub fn netlink_sockets_with<Fd: AsFd + Sync>(
    namespaces: &[(Fd, &str)],
    prepare: impl Fn(&str) -> Result<()> + Sync,
) -> Result<Vec<netlink_sys::Socket>> {
    on_thread("opening netlink sockets", || {
        let mut out = Vec::with_capacity(namespaces.len());
        for (fd, name) in namespaces {
            enter(fd.as_fd(), name)?;
            prepare(name)?;
            let sock = netlink_sys::Socket::new(netlink_sys::protocols::NETLINK_ROUTE)
                .map_err(|e| HostError::io("opening a netlink socket in", *name, e))?;
            out.push(sock);
        }
        Ok(out)
    })
}

/// Turns a netlink socket opened inside a namespace into an rtnetlink handle bound to that
/// namespace. The connection task runs on the current tokio runtime.
pub fn handle_from_socket(sock: netlink_sys::Socket) -> rtnetlink::Handle {
    let fd = sock.into_raw_fd();
    // SAFETY: `fd` was just released by `into_raw_fd`, so the TokioSocket becomes its only owner.
    let tsock = unsafe { netlink_sys::TokioSocket::from_raw_fd(fd) };
    let (conn, handle, _) = rtnetlink::from_socket(tsock);
    tokio::spawn(conn);
    handle
}

/// An rtnetlink handle whose requests act inside namespace `name`.
pub fn netlink(name: &str) -> Result<rtnetlink::Handle> {
    let fd = open(name)?;
    let mut socks = netlink_sockets(&[(&fd, name)])?;
    let sock = socks
        .pop()
        .ok_or_else(|| HostError::other("opening a netlink socket in", name, "no socket"))?;
    Ok(handle_from_socket(sock))
}

type SocketReply = std::sync::mpsc::Sender<io::Result<socket2::Socket>>;
type SocketRequest = (
    socket2::Domain,
    socket2::Type,
    Option<socket2::Protocol>,
    SocketReply,
);

/// A long-lived thread that sits inside one namespace and opens sockets there on request.
///
/// Probes and metric scrapes run from inside nodes many times a second; a dedicated thread
/// that entered the namespace once makes each socket cost a channel round trip (microseconds)
/// instead of a thread spawn. The thread ends when the factory is dropped.
#[derive(Clone)]
pub struct SocketFactory {
    tx: std::sync::mpsc::Sender<SocketRequest>,
    name: std::sync::Arc<str>,
}

impl std::fmt::Debug for SocketFactory {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SocketFactory")
            .field("ns", &self.name)
            .finish()
    }
}

impl SocketFactory {
    /// Starts a factory inside the namespace behind `fd`; `name` is for errors.
    pub fn start(fd: OwnedFd, name: &str) -> Result<Self> {
        let (tx, rx) = std::sync::mpsc::channel::<SocketRequest>();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel::<io::Result<()>>();
        std::thread::Builder::new()
            .name("edgesim-sockets".into())
            .spawn(move || {
                if let Err(e) = setns(fd.as_fd(), CloneFlags::CLONE_NEWNET) {
                    let _ = ready_tx.send(Err(e.into()));
                    return;
                }
                drop(fd);
                let _ = ready_tx.send(Ok(()));
                while let Ok((d, t, p, reply)) = rx.recv() {
                    let _ = reply.send(socket2::Socket::new(d, t, p));
                }
            })
            .map_err(|e| HostError::io("spawning the socket thread for", name, e))?;
        ready_rx
            .recv()
            .map_err(|_| HostError::other("starting the socket thread for", name, "thread died"))?
            .map_err(|source| HostError::NsEnter {
                name: name.to_string(),
                source,
            })?;
        Ok(SocketFactory {
            tx,
            name: name.into(),
        })
    }

    /// Opens a socket inside the namespace. It stays bound to that namespace wherever it is
    /// used afterwards.
    pub fn socket(
        &self,
        domain: socket2::Domain,
        ty: socket2::Type,
        protocol: Option<socket2::Protocol>,
    ) -> io::Result<socket2::Socket> {
        let (rtx, rrx) = std::sync::mpsc::channel();
        self.tx
            .send((domain, ty, protocol, rtx))
            .map_err(|_| io::Error::other(format!("socket thread of {} has stopped", self.name)))?;
        rrx.recv()
            .map_err(|_| io::Error::other(format!("socket thread of {} has stopped", self.name)))?
    }

    /// The namespace this factory opens sockets in.
    pub fn namespace(&self) -> &str {
        &self.name
    }
}

/// The inode number identifying the namespace behind `fd` (to tell namespaces apart in tests
/// and to check that the host's namespace is never the one being changed).
pub fn inode(fd: &impl AsRawFd) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let p = format!("/proc/self/fd/{}", fd.as_raw_fd());
    Ok(fs::metadata(p)?.ino())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_enter_delete() {
        if !crate::testing::netns() {
            return;
        }
        let name = format!("edgesim-unit-{}", std::process::id());
        create(&name).unwrap();
        assert!(exists(&name));
        let host = File::open("/proc/self/ns/net").unwrap();
        let ns_ino = inode(&open(&name).unwrap()).unwrap();
        assert_ne!(inode(&host).unwrap(), ns_ino);
        let seen = run_in(&name, || {
            fs::metadata("/proc/thread-self/ns/net")
                .map(|m| std::os::unix::fs::MetadataExt::ino(&m))
                .unwrap()
        })
        .unwrap();
        assert_eq!(seen, ns_ino);
        // The calling thread never moved.
        let here = fs::metadata("/proc/thread-self/ns/net").unwrap();
        assert_eq!(
            std::os::unix::fs::MetadataExt::ino(&here),
            inode(&host).unwrap()
        );
        assert!(create(&name).is_err(), "creating twice must fail");
        delete(&name).unwrap();
        assert!(!exists(&name));
        delete(&name).unwrap();
    }
}
