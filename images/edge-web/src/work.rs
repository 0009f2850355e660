//! The CPU work a request costs: SHA-256 over a number of KiB of data.
//!
//! Hashing is real, memory-touching computation whose time is linear in the input, has no
//! shortcut an optimiser could take (the digest is returned), and runs at very different
//! speeds on a Cortex-A76 at 2.4 GHz, an Orin's A78AE and a server core, so the same
//! `--work-kib` shows the difference between hardware profiles (and CPU quotas) as latency.

use sha2::{Digest, Sha256};

/// The block fed to the hasher repeatedly: 64 KiB of a fixed pattern (a hash per request
/// of fresh data would measure the allocator, not the CPU).
const BLOCK: usize = 64 * 1024;

/// Hashes `kib` KiB of the fixed pattern, salted with `salt` (so two requests with different
/// salts have different digests); returns the hex digest.
pub fn hash_kib(kib: u64, salt: u64) -> String {
    let block = pattern();
    let mut h = Sha256::new();
    h.update(salt.to_le_bytes());
    let mut left = kib.saturating_mul(1024);
    while left > 0 {
        let n = usize::try_from(left.min(BLOCK as u64)).unwrap_or(BLOCK);
        h.update(&block[..n]);
        left -= n as u64;
    }
    hex(&h.finalize())
}

fn pattern() -> &'static [u8] {
    static P: std::sync::OnceLock<Vec<u8>> = std::sync::OnceLock::new();
    P.get_or_init(|| {
        let mut rng = edge_common::rng::SeededRng::new(0x5eed);
        (0..BLOCK / 8)
            .flat_map(|_| rng.next_u64().to_le_bytes())
            .collect()
    })
}

/// Lower-case hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut s = String::with_capacity(bytes.len() * 2);
    for b in bytes {
        s.push(char::from(DIGITS[usize::from(b >> 4)]));
        s.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_salted_and_sized() {
        assert_eq!(hash_kib(3, 1), hash_kib(3, 1));
        assert_ne!(hash_kib(3, 1), hash_kib(3, 2));
        assert_ne!(hash_kib(3, 1), hash_kib(4, 1));
        // Crosses a block boundary.
        assert_ne!(hash_kib(64, 1), hash_kib(65, 1));
        assert_eq!(hash_kib(0, 0).len(), 64);
    }

    #[test]
    fn hex_encodes() {
        assert_eq!(hex(&[0x00, 0xab, 0x7f]), "00ab7f");
    }
}
