//! Simulated sensors.
//!
//! Each device produces a temperature-like signal: a per-device base level, a slow daily-ish
//! sine wave and Gaussian noise, all drawn from a stream of the seeded generator named after
//! the device, so the same seed gives the same values (within one process lifetime).

use edge_common::rng::SeededRng;

/// One simulated device.
#[derive(Debug, Clone)]
pub struct Sensor {
    pub id: String,
    base: f64,
    phase: f64,
    rng: SeededRng,
}

impl Sensor {
    /// The sensor `id` under `seed`.
    pub fn new(id: String, seed: u64) -> Self {
        let mut rng = SeededRng::for_stream(seed, &id);
        let base = 15.0 + 10.0 * rng.next_f64();
        let phase = std::f64::consts::TAU * rng.next_f64();
        Self {
            id,
            base,
            phase,
            rng,
        }
    }

    /// The value at wall-clock time `ts_ms`.
    pub fn sample(&mut self, ts_ms: u64) -> f64 {
        let t = ts_ms as f64 / 1000.0;
        let wave = 3.0 * (std::f64::consts::TAU * t / 600.0 + self.phase).sin();
        let v = self.base + wave + 0.2 * self.rng.next_gaussian();
        (v * 1000.0).round() / 1000.0
    }
}

/// The ids of `n` devices on a node: `<prefix>-sensor-1` … `<prefix>-sensor-n`.
pub fn device_ids(prefix: &str, n: u32) -> Vec<String> {
    (1..=n).map(|i| format!("{prefix}-sensor-{i}")).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn same_seed_same_values_and_plausible_range() {
        let mut a = Sensor::new("gw-1-sensor-1".into(), 7);
        let mut b = Sensor::new("gw-1-sensor-1".into(), 7);
        let mut c = Sensor::new("gw-1-sensor-2".into(), 7);
        let va: Vec<f64> = (0..50).map(|i| a.sample(i * 100)).collect();
        let vb: Vec<f64> = (0..50).map(|i| b.sample(i * 100)).collect();
        let vc: Vec<f64> = (0..50).map(|i| c.sample(i * 100)).collect();
        assert_eq!(va, vb);
        assert_ne!(va, vc);
        assert!(va.iter().all(|v| (10.0..30.0).contains(v)));
        assert_eq!(
            device_ids("gw-1", 2),
            vec!["gw-1-sensor-1", "gw-1-sensor-2"]
        );
    }
}
