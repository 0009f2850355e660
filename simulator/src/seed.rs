//! The run's random streams: every consumer (flap schedules, partition targets, the
//! userspace emulator's per-packet decisions) draws from its own stream derived from the
//! seed and a stable name, so adding a consumer never shifts another's draws. A neutral
//! module: validation and linkem both use it, neither owns it.

use rand::SeedableRng;

/// Derives an independent, stable random stream for one consumer from the run's seed and a
/// stable name, so adding a consumer never shifts the draws of another.
pub fn rng_for(seed: u64, name: &str) -> rand_chacha::ChaCha8Rng {
    // FNV-1a: stable across Rust releases, unlike `DefaultHasher`.
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    let mut key = [0u8; 32];
    key[..8].copy_from_slice(&seed.to_le_bytes());
    key[8..16].copy_from_slice(&h.to_le_bytes());
    key[16..24].copy_from_slice(b"edgesim\0");
    rand_chacha::ChaCha8Rng::from_seed(key)
}
