//! Capture of what leaves linkem, in the classic pcap format (nanosecond variant), readable
//! by tcpdump, Wireshark and tshark.
//!
//! The format is small enough to write directly (no dependency): a 24-byte file header —
//! magic `0xa1b23c4d` (nanosecond timestamps), version 2.4, zone 0, accuracy 0, snap length,
//! link type 1 (Ethernet) — then per packet a 16-byte record header (seconds, nanoseconds,
//! captured length, original length) and the frame, all in the writer's byte order (the magic
//! tells readers which). Timestamps are CLOCK_REALTIME at the moment of sending. GSO
//! super-frames are recorded whole, as tcpdump shows them on an interface with offloads on.

use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::path::Path;

/// Nanosecond-resolution pcap magic.
const MAGIC_NS: u32 = 0xa1b2_3c4d;
/// Large enough for a 64 KB GSO frame plus headers.
pub const SNAPLEN: u32 = 262_144;
const LINKTYPE_ETHERNET: u32 = 1;

pub(crate) struct PcapWriter {
    w: BufWriter<File>,
}

impl PcapWriter {
    pub fn create(path: &Path) -> io::Result<Self> {
        let mut w = BufWriter::with_capacity(1 << 20, File::create(path)?);
        let mut h = Vec::with_capacity(24);
        h.extend_from_slice(&MAGIC_NS.to_ne_bytes());
        h.extend_from_slice(&2u16.to_ne_bytes());
        h.extend_from_slice(&4u16.to_ne_bytes());
        h.extend_from_slice(&0i32.to_ne_bytes());
        h.extend_from_slice(&0u32.to_ne_bytes());
        h.extend_from_slice(&SNAPLEN.to_ne_bytes());
        h.extend_from_slice(&LINKTYPE_ETHERNET.to_ne_bytes());
        w.write_all(&h)?;
        Ok(PcapWriter { w })
    }

    /// Appends one frame sent at `real_ns` (ns since the Unix epoch).
    pub fn write(&mut self, real_ns: i64, frame: &[u8]) -> io::Result<()> {
        let cap = frame.len().min(SNAPLEN as usize);
        let mut rec = [0u8; 16];
        let secs = real_ns.div_euclid(1_000_000_000) as u32;
        let nanos = real_ns.rem_euclid(1_000_000_000) as u32;
        rec[0..4].copy_from_slice(&secs.to_ne_bytes());
        rec[4..8].copy_from_slice(&nanos.to_ne_bytes());
        rec[8..12].copy_from_slice(&(cap as u32).to_ne_bytes());
        rec[12..16].copy_from_slice(&(frame.len() as u32).to_ne_bytes());
        self.w.write_all(&rec)?;
        self.w.write_all(&frame[..cap])
    }

    pub fn flush(&mut self) -> io::Result<()> {
        self.w.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writes_classic_pcap() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.pcap");
        let mut w = PcapWriter::create(&p).unwrap();
        w.write(1_700_000_000_123_456_789, &[1, 2, 3]).unwrap();
        w.flush().unwrap();
        drop(w);
        let b = std::fs::read(&p).unwrap();
        assert_eq!(b.len(), 24 + 16 + 3);
        assert_eq!(u32::from_ne_bytes(b[0..4].try_into().unwrap()), MAGIC_NS);
        assert_eq!(u32::from_ne_bytes(b[20..24].try_into().unwrap()), 1);
        assert_eq!(
            u32::from_ne_bytes(b[24..28].try_into().unwrap()),
            1_700_000_000
        );
        assert_eq!(
            u32::from_ne_bytes(b[28..32].try_into().unwrap()),
            123_456_789
        );
        assert_eq!(&b[40..], &[1, 2, 3]);
        // tcpdump reads it back where installed.
        if crate::testing::have_program("tcpdump") {
            let out = std::process::Command::new("tcpdump")
                .args(["-nr", p.to_str().unwrap()])
                .output()
                .unwrap();
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
}
