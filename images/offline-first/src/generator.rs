//! The built-in write generator: seeded `PUT`s at a steady rate, so a scenario can drive a
//! replica without an external client (as `iot-collector` simulates its sensors).
//!
//! - [`WriteSequence`] is *what* is written: the n-th key and value are a pure function of
//!   (`--seed`, replica id, n). Keys are drawn uniformly from a small key space
//!   (`--write-keys`), so replicas writing concurrently hit the same keys and conflict;
//!   values name the replica and the write's number, so a conflict's values tell who wrote
//!   what. The sequence starts over when the process restarts (it depends on nothing else);
//!   the writes it repeats are new changes all the same.
//! - [`Pacer`] is *when*: a token bucket filled at `--write-rate` per second and capped at
//!   two ticks' worth (at least one write), so a replica that was stalled (a frozen
//!   container, a slow disk) does not fire a burst of overdue writes afterwards: the
//!   generator's rate is an upper bound.
//!
//! The task itself lives in the crate root (it writes through the same path as `PUT /kv/{key}`).

use std::time::Duration;

use edge_common::rng::SeededRng;

/// One generated write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedWrite {
    pub key: String,
    pub value: String,
}

/// The seeded sequence of writes of one replica.
#[derive(Debug, Clone)]
pub struct WriteSequence {
    rng: SeededRng,
    replica: String,
    keys: u32,
    width: usize,
    next: u64,
}

impl WriteSequence {
    /// The sequence of replica `replica` under `seed`, over keys `gen-0` … `gen-{keys - 1}`
    /// (zero-padded to one width, so they sort numerically). `keys` of 0 counts as 1.
    pub fn new(seed: u64, replica: &str, keys: u32) -> Self {
        let keys = keys.max(1);
        Self {
            rng: SeededRng::for_stream(seed, &format!("writes/{replica}")),
            replica: replica.to_string(),
            keys,
            width: (keys - 1).to_string().len(),
            next: 1,
        }
    }

    /// How many writes were drawn so far.
    pub fn drawn(&self) -> u64 {
        self.next - 1
    }

    /// The next write: a uniformly drawn key, and a value `<replica>#<n>:<16 hex digits>`.
    pub fn next_write(&mut self) -> GeneratedWrite {
        let n = self.next;
        self.next += 1;
        // Multiply-shift: uniform enough for a key space this small, and no modulo bias to
        // speak of (keys ≤ 2^32, 64 random bits).
        let k = (u128::from(self.rng.next_u64()) * u128::from(self.keys)) >> 64;
        let tag = self.rng.next_u64();
        GeneratedWrite {
            key: format!("gen-{k:0width$}", width = self.width),
            value: format!("{}#{n}:{tag:016x}", self.replica),
        }
    }
}

impl Iterator for WriteSequence {
    type Item = GeneratedWrite;

    fn next(&mut self) -> Option<GeneratedWrite> {
        Some(self.next_write())
    }
}

/// A token bucket: how many writes are due each time the generator wakes.
#[derive(Debug, Clone)]
pub struct Pacer {
    rate: f64,
    tick: Duration,
    cap: f64,
    credit: f64,
}

impl Pacer {
    /// Shortest time between wake-ups; above 100 writes/s a tick carries several writes.
    const MIN_TICK: Duration = Duration::from_millis(10);
    /// Longest time between wake-ups, so a slow generator still notices `--write-until`.
    const MAX_TICK: Duration = Duration::from_secs(1);

    /// A pacer for `rate` writes per second (> 0 and finite; see [`parse_rate`]).
    pub fn new(rate: f64) -> Self {
        let tick = Duration::from_secs_f64(
            (1.0 / rate).clamp(Self::MIN_TICK.as_secs_f64(), Self::MAX_TICK.as_secs_f64()),
        );
        let per_tick = rate * tick.as_secs_f64();
        Self {
            rate,
            tick,
            cap: (2.0 * per_tick).max(1.0),
            credit: 0.0,
        }
    }

    /// How long the generator sleeps between wake-ups.
    pub fn tick(&self) -> Duration {
        self.tick
    }

    /// Adds the credit earned over `elapsed` (since the previous call) and takes the whole
    /// writes it covers. Credit beyond two ticks' worth (at least one write) is forfeited.
    pub fn due(&mut self, elapsed: Duration) -> u64 {
        self.credit = (self.credit + self.rate * elapsed.as_secs_f64()).min(self.cap);
        let n = self.credit.floor();
        self.credit -= n;
        // `n` is a whole number in [0, cap], and cap is at most 2 × rate × tick.
        n as u64
    }
}

/// The highest `--write-rate` accepted (every write is `fsync`ed; far above what a disk
/// sustains, so the realised rate is the disk's).
pub const MAX_RATE: f64 = 1e6;

/// Parses `--write-rate`: writes per second, from 0 to [`MAX_RATE`].
///
/// # Errors
/// When it is not such a number.
pub fn parse_rate(s: &str) -> Result<f64, String> {
    let r: f64 = s
        .trim()
        .parse()
        .map_err(|e| format!("`{s}` is not a number: {e}"))?;
    if (0.0..=MAX_RATE).contains(&r) {
        Ok(r)
    } else {
        Err(format!(
            "`{s}`: the rate must be from 0 to {MAX_RATE} writes per second"
        ))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use super::*;

    fn first(seed: u64, replica: &str, keys: u32, n: usize) -> Vec<GeneratedWrite> {
        WriteSequence::new(seed, replica, keys).take(n).collect()
    }

    #[test]
    fn the_sequence_is_a_pure_function_of_seed_and_replica() {
        let a = first(7, "edge-1", 20, 500);
        assert_eq!(a, first(7, "edge-1", 20, 500), "same inputs, same writes");
        // Drawing in pieces, from a clone, gives the same writes.
        let mut s = WriteSequence::new(7, "edge-1", 20);
        let head: Vec<_> = (&mut s).take(200).collect();
        let fork = s.clone();
        let tail: Vec<_> = s.take(300).collect();
        assert_eq!([head, tail].concat(), a);
        assert_eq!(fork.drawn(), 200);
        assert_eq!(fork.take(300).collect::<Vec<_>>(), a[200..]);

        let other_replica = first(7, "edge-2", 20, 500);
        let other_seed = first(8, "edge-1", 20, 500);
        let keys = |w: &[GeneratedWrite]| w.iter().map(|x| x.key.clone()).collect::<Vec<_>>();
        assert_ne!(
            keys(&a),
            keys(&other_replica),
            "replicas write different sequences"
        );
        assert_ne!(
            keys(&a),
            keys(&other_seed),
            "seeds give different sequences"
        );
        assert!(
            a.iter()
                .zip(&other_replica)
                .all(|(x, y)| x.value != y.value)
        );
    }

    #[test]
    fn keys_cover_the_key_space_and_values_name_the_writer() {
        let w = first(1, "cloud", 20, 2000);
        let keys: BTreeSet<_> = w.iter().map(|x| x.key.as_str()).collect();
        let expected: BTreeSet<String> = (0..20).map(|k| format!("gen-{k:02}")).collect();
        assert_eq!(
            keys,
            expected.iter().map(String::as_str).collect::<BTreeSet<_>>()
        );
        assert_eq!(w[0].value.split(':').next(), Some("cloud#1"));
        assert_eq!(w[1999].value.split(':').next(), Some("cloud#2000"));
        // Roughly uniform: every key gets 100 ± 50 of 2000 writes.
        for k in &expected {
            let n = w.iter().filter(|x| &x.key == k).count();
            assert!((50..150).contains(&n), "{k}: {n}");
        }
        assert!(first(1, "x", 1, 10).iter().all(|x| x.key == "gen-0"));
        assert!(first(1, "x", 0, 10).iter().all(|x| x.key == "gen-0"));
        assert_eq!(first(1, "x", 1000, 1)[0].key.len(), "gen-000".len());
    }

    #[test]
    fn pacer_holds_the_rate_and_does_not_burst_after_a_stall() {
        let mut p = Pacer::new(20.0);
        assert_eq!(p.tick(), Duration::from_millis(50));
        let total: u64 = (0..200).map(|_| p.due(Duration::from_millis(50))).sum();
        assert!((199..=200).contains(&total), "{total}");
        // A 10 s stall earns two ticks' worth, not 200 writes.
        assert_eq!(p.due(Duration::from_secs(10)), 2);

        let mut fast = Pacer::new(1000.0);
        assert_eq!(fast.tick(), Duration::from_millis(10));
        let total: u64 = (0..100).map(|_| fast.due(Duration::from_millis(10))).sum();
        assert!((999..=1000).contains(&total), "{total}");

        // Slow rates still wake every second, and never owe more than one write.
        let mut slow = Pacer::new(0.5);
        assert_eq!(slow.tick(), Duration::from_secs(1));
        assert_eq!(slow.due(Duration::from_secs(1)), 0);
        assert_eq!(slow.due(Duration::from_secs(1)), 1);
        assert_eq!(slow.due(Duration::from_secs(60)), 1);
        assert_eq!(Pacer::new(1e-300).tick(), Duration::from_secs(1));
    }

    #[test]
    fn rates_parse() {
        assert_eq!(parse_rate("0"), Ok(0.0));
        assert_eq!(parse_rate(" 2.5 "), Ok(2.5));
        assert!(parse_rate("-1").is_err());
        assert_eq!(parse_rate("1e6"), Ok(MAX_RATE));
        assert!(parse_rate("1e7").is_err());
        assert!(parse_rate("inf").is_err());
        assert!(parse_rate("NaN").is_err());
        assert!(parse_rate("fast").is_err());
    }
}
