//! One D-Bus method call to a systemd manager over its private socket, hand-encoded.
//!
//! # Why
//!
//! A non-root agent's workloads run in a scope of the user's own systemd manager
//! ([`super::scope`]). A workload starts as a process of the SSH session
//! (`session-N.scope`, root's), and cgroup v2 lets a user move a process only between
//! cgroups whose common ancestor it may write: `user-<uid>.slice`, above both the session and
//! the user manager, is root's. So the process cannot join the scope by writing
//! `cgroup.procs`; its user manager must move it, by asking the system manager — what
//! `systemd-run --user --scope` itself relies on. The call for that is
//! `org.freedesktop.systemd1.Manager.AttachProcessesToUnit(unit, subcgroup, pids)` (systemd
//! ≥ 238). Neither `systemctl` nor `busctl` makes it on a board without a user D-Bus session
//! bus (`busctl --address` insists on a bus's `Hello`), and the agent links no C (no
//! libdbus, no libsystemd): so the call is written here, the way `host/tc` hand-encodes what
//! netlink-packet-route has no types for.
//!
//! # What is spoken
//!
//! The manager's private socket (`$XDG_RUNTIME_DIR/systemd/private` for a user manager) is a
//! peer-to-peer D-Bus connection: SASL `AUTH EXTERNAL` with our uid, `BEGIN`, then one
//! little-endian METHOD_CALL message (D-Bus specification, "Message Protocol"); the answer is
//! the METHOD_RETURN or ERROR whose REPLY_SERIAL is our serial. No `Hello`: there is no bus.

use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::host::{HostError, Result};

/// How long the manager may take to answer (it asks the system manager in turn; a board
/// under qemu's TCG is slow).
const TIMEOUT: Duration = Duration::from_secs(30);

const METHOD_CALL: u8 = 1;
const METHOD_RETURN: u8 = 2;
const ERROR: u8 = 3;

/// Header field codes (D-Bus specification).
const F_PATH: u8 = 1;
const F_INTERFACE: u8 = 2;
const F_MEMBER: u8 = 3;
const F_ERROR_NAME: u8 = 4;
const F_REPLY_SERIAL: u8 = 5;
const F_DESTINATION: u8 = 6;
const F_SIGNATURE: u8 = 8;

/// Little-endian marshalling with the message's alignment (offsets from the message start).
#[derive(Default)]
struct Writer {
    buf: Vec<u8>,
}

impl Writer {
    fn align(&mut self, n: usize) {
        while !self.buf.len().is_multiple_of(n) {
            self.buf.push(0);
        }
    }
    fn byte(&mut self, b: u8) {
        self.buf.push(b);
    }
    fn u32(&mut self, v: u32) {
        self.align(4);
        self.buf.extend_from_slice(&v.to_le_bytes());
    }
    fn string(&mut self, s: &str) {
        self.u32(s.len() as u32);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }
    fn signature(&mut self, s: &str) {
        self.buf.push(s.len() as u8);
        self.buf.extend_from_slice(s.as_bytes());
        self.buf.push(0);
    }
    /// One header field: `(code, variant)`, a struct, so 8-aligned.
    fn field(&mut self, code: u8, sig: &str, value: impl FnOnce(&mut Writer)) {
        self.align(8);
        self.byte(code);
        self.signature(sig);
        value(self);
    }
}

/// The message that asks the manager to move `pids` into `subcgroup` (`/workloads`, or empty
/// for the unit's own cgroup) of `unit`, with serial `serial`.
pub fn attach_message(serial: u32, unit: &str, subcgroup: &str, pids: &[u32]) -> Vec<u8> {
    let mut body = Writer::default();
    body.string(unit);
    body.string(subcgroup);
    body.u32((pids.len() * 4) as u32);
    for p in pids {
        body.u32(*p);
    }
    let mut m = Writer::default();
    m.buf.extend_from_slice(&[b'l', METHOD_CALL, 0, 1]);
    m.u32(body.buf.len() as u32);
    m.u32(serial);
    // The header fields' array: its length is patched in once they are written.
    m.u32(0);
    let start = m.buf.len();
    m.field(F_PATH, "o", |w| w.string("/org/freedesktop/systemd1"));
    m.field(F_INTERFACE, "s", |w| {
        w.string("org.freedesktop.systemd1.Manager")
    });
    m.field(F_MEMBER, "s", |w| w.string("AttachProcessesToUnit"));
    m.field(F_DESTINATION, "s", |w| w.string("org.freedesktop.systemd1"));
    m.field(F_SIGNATURE, "g", |w| w.signature("ssau"));
    let len = (m.buf.len() - start) as u32;
    m.buf[12..16].copy_from_slice(&len.to_le_bytes());
    m.align(8);
    m.buf.extend_from_slice(&body.buf);
    m.buf
}

/// A received message: its type, the header fields this module reads, and its body.
#[derive(Debug, Default, PartialEq)]
pub struct Incoming {
    pub kind: u8,
    pub reply_serial: Option<u32>,
    pub error_name: Option<String>,
    /// The first string of the body, where its signature starts with one (an error's text).
    pub text: Option<String>,
}

/// Reading at offsets from the message start, in the message's byte order.
struct Reader<'a> {
    buf: &'a [u8],
    pos: usize,
    big: bool,
}

impl Reader<'_> {
    fn bad(&self, what: &str) -> HostError {
        HostError::other(
            "reading",
            "a D-Bus message from systemd",
            format!("{what} at byte {}", self.pos),
        )
    }
    fn align(&mut self, n: usize) {
        self.pos = self.pos.div_ceil(n) * n;
    }
    fn take(&mut self, n: usize) -> Result<&[u8]> {
        let end = self.pos.checked_add(n).filter(|e| *e <= self.buf.len());
        match end {
            Some(end) => {
                let s = &self.buf[self.pos..end];
                self.pos = end;
                Ok(s)
            }
            None => Err(self.bad("truncated")),
        }
    }
    fn byte(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }
    fn u32(&mut self) -> Result<u32> {
        self.align(4);
        let b: [u8; 4] = self.take(4)?.try_into().map_err(|_| self.bad("u32"))?;
        Ok(if self.big {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        })
    }
    fn string(&mut self) -> Result<String> {
        let n = self.u32()? as usize;
        let s = String::from_utf8_lossy(self.take(n)?).into_owned();
        self.take(1)?;
        Ok(s)
    }
    fn signature(&mut self) -> Result<String> {
        let n = usize::from(self.byte()?);
        let s = String::from_utf8_lossy(self.take(n)?).into_owned();
        self.take(1)?;
        Ok(s)
    }
}

/// Parses one whole message (`buf` holds exactly it).
pub fn parse(buf: &[u8]) -> Result<Incoming> {
    let mut r = Reader {
        buf,
        pos: 0,
        big: buf.first() == Some(&b'B'),
    };
    let endian = r.byte()?;
    if endian != b'l' && endian != b'B' {
        return Err(r.bad("not a D-Bus message"));
    }
    let mut m = Incoming {
        kind: r.byte()?,
        ..Incoming::default()
    };
    r.take(2)?;
    let _body_len = r.u32()?;
    let _serial = r.u32()?;
    let fields_len = r.u32()? as usize;
    let fields_end = r.pos + fields_len;
    let mut body_sig = String::new();
    while r.pos < fields_end {
        r.align(8);
        let code = r.byte()?;
        let sig = r.signature()?;
        match sig.as_str() {
            "s" | "o" => {
                let v = r.string()?;
                if code == F_ERROR_NAME {
                    m.error_name = Some(v);
                }
            }
            "g" => {
                let v = r.signature()?;
                if code == F_SIGNATURE {
                    body_sig = v;
                }
            }
            "u" => {
                let v = r.u32()?;
                if code == F_REPLY_SERIAL {
                    m.reply_serial = Some(v);
                }
            }
            other => return Err(r.bad(&format!("header field of type {other}"))),
        }
    }
    r.pos = fields_end;
    r.align(8);
    if body_sig.starts_with('s') {
        m.text = Some(r.string()?);
    }
    Ok(m)
}

/// Reads one whole message from `s`.
fn read_message(s: &mut UnixStream) -> Result<Vec<u8>> {
    let io = |e| HostError::io("reading from", "the systemd manager's socket", e);
    let mut head = [0u8; 16];
    s.read_exact(&mut head).map_err(io)?;
    let word = |b: &[u8]| -> u32 {
        let b: [u8; 4] = [b[0], b[1], b[2], b[3]];
        if head[0] == b'B' {
            u32::from_be_bytes(b)
        } else {
            u32::from_le_bytes(b)
        }
    };
    let body = word(&head[4..8]) as usize;
    let fields = word(&head[12..16]) as usize;
    let total = (16 + fields).div_ceil(8) * 8 + body;
    // The specification's limit on a message: 128 MiB.
    if total > 128 << 20 {
        return Err(HostError::other(
            "reading from",
            "the systemd manager's socket",
            format!("a message of {total} bytes"),
        ));
    }
    let mut buf = head.to_vec();
    buf.resize(total, 0);
    s.read_exact(&mut buf[16..]).map_err(io)?;
    Ok(buf)
}

/// Asks the systemd manager listening on `socket` (its private socket) to move `pids` into
/// `subcgroup` of `unit` (`AttachProcessesToUnit`). Returns once it has, or with the
/// manager's error (name and text).
pub fn attach_processes(socket: &Path, unit: &str, subcgroup: &str, pids: &[u32]) -> Result<()> {
    let what = || format!("{} (AttachProcessesToUnit {unit})", socket.display());
    let io = |e| HostError::io("calling systemd over", what(), e);
    let mut s = UnixStream::connect(socket).map_err(io)?;
    s.set_read_timeout(Some(TIMEOUT)).map_err(io)?;
    s.set_write_timeout(Some(TIMEOUT)).map_err(io)?;
    let uid = nix::unistd::getuid().as_raw().to_string();
    let hex: String = uid.bytes().map(|b| format!("{b:02x}")).collect();
    s.write_all(format!("\0AUTH EXTERNAL {hex}\r\n").as_bytes())
        .map_err(io)?;
    // Byte by byte up to the line's end: what follows belongs to the message stream.
    let mut line = Vec::new();
    while !line.ends_with(b"\r\n") && line.len() < 512 {
        let mut b = [0u8; 1];
        s.read_exact(&mut b).map_err(io)?;
        line.push(b[0]);
    }
    if !line.starts_with(b"OK ") {
        return Err(HostError::other(
            "authenticating to",
            what(),
            String::from_utf8_lossy(&line).trim().to_string(),
        ));
    }
    const SERIAL: u32 = 1;
    let mut out = b"BEGIN\r\n".to_vec();
    out.extend(attach_message(SERIAL, unit, subcgroup, pids));
    s.write_all(&out).map_err(io)?;
    loop {
        let m = parse(&read_message(&mut s)?)?;
        if m.reply_serial != Some(SERIAL) {
            continue;
        }
        return match m.kind {
            METHOD_RETURN => Ok(()),
            ERROR => Err(HostError::other(
                "calling systemd over",
                what(),
                format!(
                    "{}: {}",
                    m.error_name.as_deref().unwrap_or("error"),
                    m.text.as_deref().unwrap_or("")
                ),
            )),
            k => Err(HostError::other(
                "calling systemd over",
                what(),
                format!("an answer of message type {k}"),
            )),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_call_is_marshalled_as_the_specification_says() {
        let m = attach_message(1, "edgesim-t3-pi.scope", "/workloads", &[4242]);
        // Fixed header: little endian, METHOD_CALL, no flags, version 1, body length, serial.
        assert_eq!(&m[..4], b"l\x01\x00\x01");
        let body_len = u32::from_le_bytes(m[4..8].try_into().unwrap()) as usize;
        assert_eq!(u32::from_le_bytes(m[8..12].try_into().unwrap()), 1);
        let fields = u32::from_le_bytes(m[12..16].try_into().unwrap()) as usize;
        let body_at = (16 + fields).div_ceil(8) * 8;
        assert_eq!(m.len(), body_at + body_len);
        // The first field: PATH, of signature "o", then the object path itself.
        assert_eq!(&m[16..20], b"\x01\x01o\x00");
        assert_eq!(u32::from_le_bytes(m[20..24].try_into().unwrap()), 25);
        assert_eq!(&m[24..50], b"/org/freedesktop/systemd1\0");
        // The body: "ssau" — two strings, then the array of one pid, 4-aligned.
        let body = &m[body_at..];
        let mut want = Vec::new();
        want.extend(19u32.to_le_bytes());
        want.extend(b"edgesim-t3-pi.scope\0");
        want.extend(10u32.to_le_bytes());
        want.extend(b"/workloads\0\0");
        want.extend(4u32.to_le_bytes());
        want.extend(4242u32.to_le_bytes());
        assert_eq!(body, want.as_slice());
        // Every header field is 8-aligned and the signature field names the body.
        let text = String::from_utf8_lossy(&m[..body_at]);
        assert!(text.contains("AttachProcessesToUnit"), "{text}");
        assert!(m[..body_at].windows(7).any(|w| w == b"\x08\x01g\x00\x04ss"));
    }

    /// An ERROR as systemd sends it: REPLY_SERIAL, ERROR_NAME, SIGNATURE "s", the text.
    fn error_reply(big: bool, serial: u32, name: &str, text: &str) -> Vec<u8> {
        let w32 = |v: u32| {
            if big {
                v.to_be_bytes()
            } else {
                v.to_le_bytes()
            }
        };
        let pad = |b: &mut Vec<u8>, n: usize| {
            while !b.len().is_multiple_of(n) {
                b.push(0)
            }
        };
        let mut f = vec![F_REPLY_SERIAL, 1, b'u', 0];
        f.extend(w32(serial));
        pad(&mut f, 8);
        f.extend([F_ERROR_NAME, 1, b's', 0]);
        f.extend(w32(name.len() as u32));
        f.extend(name.as_bytes());
        f.push(0);
        pad(&mut f, 8);
        f.extend([F_SIGNATURE, 1, b'g', 0, 1, b's', 0]);
        let mut body = w32(text.len() as u32).to_vec();
        body.extend(text.as_bytes());
        body.push(0);
        let mut m = vec![if big { b'B' } else { b'l' }, ERROR, 1, 1];
        m.extend(w32(body.len() as u32));
        m.extend(w32(7));
        m.extend(w32(f.len() as u32));
        m.extend(f);
        pad(&mut m, 8);
        m.extend(body);
        m
    }

    #[test]
    fn an_error_answer_gives_its_name_and_text_in_either_byte_order() {
        for big in [false, true] {
            let m = parse(&error_reply(
                big,
                1,
                "org.freedesktop.DBus.Error.AccessDenied",
                "Process 7 not owned by uid 1000",
            ))
            .unwrap();
            assert_eq!(m.kind, ERROR);
            assert_eq!(m.reply_serial, Some(1));
            assert_eq!(
                m.error_name.as_deref(),
                Some("org.freedesktop.DBus.Error.AccessDenied")
            );
            assert_eq!(m.text.as_deref(), Some("Process 7 not owned by uid 1000"));
        }
    }

    #[test]
    fn a_truncated_or_foreign_message_is_an_error_not_a_panic() {
        let full = error_reply(false, 1, "x.y", "z");
        for n in [0, 3, 17, full.len() - 1] {
            assert!(parse(&full[..n]).is_err(), "{n} bytes");
        }
        assert!(parse(b"GET / HTTP/1.1\r\n\r\n").is_err());
    }
}
