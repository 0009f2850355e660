//! A small, seeded pseudo-random generator (SplitMix64).
//!
//! The workloads need randomness only for simulation (sensor noise) and for retry jitter, and
//! they need it reproducible: every stream is derived from `EDGESIM_SEED` plus a stream name,
//! so two runs with the same seed make the same choices. SplitMix64 passes BigCrush, is a few
//! lines, and needs no dependency; it is not for cryptography.

/// A SplitMix64 generator.
#[derive(Debug, Clone)]
pub struct SeededRng {
    state: u64,
}

impl SeededRng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    /// An independent generator for the named stream under `seed` (e.g. `"jitter"` or a
    /// device id), so adding a stream does not shift the numbers another stream sees.
    pub fn for_stream(seed: u64, stream: &str) -> Self {
        // FNV-1a of the stream name, mixed with the seed.
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for b in stream.bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0100_0000_01b3);
        }
        let mut r = Self::new(seed ^ h.rotate_left(17));
        r.next_u64();
        r
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// A uniform float in `[0, 1)`.
    pub fn next_f64(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 * (1.0 / (1u64 << 53) as f64)
    }

    /// A standard normal sample (Box–Muller).
    pub fn next_gaussian(&mut self) -> f64 {
        let u1 = self.next_f64().max(f64::MIN_POSITIVE);
        let u2 = self.next_f64();
        (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reproducible_and_independent_streams() {
        let a: Vec<u64> = (0..4)
            .map(|_| SeededRng::for_stream(7, "x").next_u64())
            .collect();
        assert!(a.windows(2).all(|w| w[0] == w[1]));
        let mut x = SeededRng::for_stream(7, "x");
        let mut y = SeededRng::for_stream(7, "y");
        assert_ne!(x.next_u64(), y.next_u64());
        let mut z = SeededRng::for_stream(8, "x");
        assert_ne!(SeededRng::for_stream(7, "x").next_u64(), z.next_u64());
    }

    #[test]
    fn floats_in_range_and_roughly_uniform() {
        let mut r = SeededRng::new(1);
        let n = 10_000;
        let mut sum = 0.0;
        for _ in 0..n {
            let f = r.next_f64();
            assert!((0.0..1.0).contains(&f));
            sum += f;
        }
        let mean = sum / f64::from(n);
        assert!((mean - 0.5).abs() < 0.02, "mean {mean}");
    }
}
