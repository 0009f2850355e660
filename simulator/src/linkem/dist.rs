//! netem's random machinery, reproduced in userspace: correlated uniform draws
//! (`get_crandom`), delay jitter through inverse-CDF tables (`tabledist`), and the tables
//! themselves.
//!
//! Design:
//! - Arithmetic is netem's own, integer for integer (`u32` probabilities, the correlated
//!   blend in 64 bits, the table scale `NETEM_DIST_SCALE` = 8192 and its rounding), so a
//!   configuration behaves here as it does in the kernel; only the generator differs
//!   (a seeded ChaCha8 stream instead of the kernel's prandom state).
//! - Jitter tables are the ones iproute2 ships (`normal.dist`, `pareto.dist`,
//!   `paretonormal.dist`), read through [`crate::host::tc::dist`] exactly as `tc` reads them.
//!   Where iproute2's data files are not installed (minimal images, devices), the same tables
//!   are computed here by a port of iproute2's generators (`normal.c`, `pareto.c`,
//!   `paretonormal.c`): a unit test checks the computed tables against the installed ones.
//!   Tables are loaded once per process and shared.

use std::sync::{Arc, OnceLock};

use rand::Rng;

use crate::host::tc::Distribution;

/// `NETEM_DIST_SCALE`: table values are fixed-point with this denominator.
pub const DIST_SCALE: i64 = 8192;

/// A fraction in `[0, 1]` as netem holds it: a fraction of `u32::MAX`, rounded half to even
/// (tc's `get_percent`).
pub fn prob_u32(p: f64) -> u32 {
    (p.clamp(0.0, 1.0) * f64::from(u32::MAX)).round_ties_even() as u32
}

/// netem's correlated random number generator state (`struct crndstate`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Crnd {
    rho: u32,
    last: u32,
}

impl Crnd {
    /// A generator with correlation `rho` (fraction of `u32::MAX`). As in netem's
    /// `init_crandom`, the remembered value starts random (drawn from `rng` only when there is
    /// a correlation, so uncorrelated configurations consume nothing).
    pub fn new(rho: u32, rng: &mut impl Rng) -> Self {
        let last = if rho == 0 { 0 } else { rng.next_u32() };
        Crnd { rho, last }
    }

    /// `get_crandom`: a uniform `u32`, blended with the previous answer by `rho`.
    pub fn next(&mut self, rng: &mut impl Rng) -> u32 {
        if self.rho == 0 {
            return rng.next_u32();
        }
        let value = u64::from(rng.next_u32());
        let rho = u64::from(self.rho) + 1;
        let answer = ((value * ((1u64 << 32) - rho) + u64::from(self.last) * rho) >> 32) as u32;
        self.last = answer;
        answer
    }
}

/// netem's `tabledist`: a delay around `mu` (ns) spread by `sigma` (ns), uniform without a
/// table, else shaped by the inverse-CDF `table`. May be negative, as in netem.
pub fn tabledist(
    mu: i64,
    sigma: i32,
    cor: &mut Crnd,
    rng: &mut impl Rng,
    table: Option<&[i16]>,
) -> i64 {
    if sigma == 0 {
        return mu;
    }
    let rnd = cor.next(rng);
    match table {
        None | Some([]) => {
            // sigma is positive and below 2^31, so 2 * sigma fits a u32.
            let span = 2 * sigma as u32;
            i64::from(rnd % span) + mu - i64::from(sigma)
        }
        Some(t) => {
            let t = i64::from(t[rnd as usize % t.len()]);
            let sigma = i64::from(sigma);
            let mut x = (sigma % DIST_SCALE) * t;
            if x >= 0 {
                x += DIST_SCALE / 2;
            } else {
                x -= DIST_SCALE / 2;
            }
            x / DIST_SCALE + (sigma / DIST_SCALE) * t + mu
        }
    }
}

/// The table for `d`: `None` for uniform (netem's built-in behaviour), the given values for a
/// custom table, else iproute2's table (installed file, or computed when absent).
pub fn table(d: &Distribution) -> Option<Arc<[i16]>> {
    static NORMAL: OnceLock<Arc<[i16]>> = OnceLock::new();
    static PARETO: OnceLock<Arc<[i16]>> = OnceLock::new();
    static PARETONORMAL: OnceLock<Arc<[i16]>> = OnceLock::new();
    type Cell = OnceLock<Arc<[i16]>>;
    let (cell, generate): (&Cell, fn() -> Vec<i16>) = match d {
        Distribution::Uniform => return None,
        Distribution::Custom(v) => return Some(v.as_slice().into()),
        Distribution::Normal => (&NORMAL, generate_normal),
        Distribution::Pareto => (&PARETO, generate_pareto),
        Distribution::ParetoNormal => (&PARETONORMAL, generate_paretonormal),
    };
    Some(
        cell.get_or_init(|| match d.table() {
            Ok(Some(t)) => t.into(),
            Ok(None) | Err(_) => {
                tracing::debug!(
                    distribution = d.name(),
                    "iproute2 table not installed; using the computed table"
                );
                generate().into()
            }
        })
        .clone(),
    )
}

// The generators below port iproute2's netem/{normal,pareto,paretonormal}.c, loop for loop,
// so that the computed tables equal the shipped ones.

const GEN_TABLESIZE: usize = 16384;
const PARETO_A: f64 = 3.0;

unsafe extern "C" {
    /// The C library's error function (libm, which std already links on Linux).
    fn erf(x: f64) -> f64;
}

fn normal_cdf(x: f64) -> f64 {
    // SAFETY: `erf` is a pure libm function of one double, with no preconditions.
    0.5 + 0.5 * unsafe { erf(x / std::f64::consts::SQRT_2) }
}

/// C's `rint` in the default rounding mode.
fn rint(x: f64) -> f64 {
    x.round_ties_even()
}

fn clamp_i16(v: i64) -> i16 {
    v.clamp(i64::from(i16::MIN), i64::from(i16::MAX)) as i16
}

/// The inverse normal CDF sampled as iproute2's `normal.c` samples it.
fn normal_quantiles() -> Vec<f64> {
    let mut table = vec![0.0f64; GEN_TABLESIZE + 1];
    let mut x = -10.0f64;
    while x < 10.05 {
        let i = rint(GEN_TABLESIZE as f64 * normal_cdf(x)) as usize;
        table[i.min(GEN_TABLESIZE)] = x;
        x += 0.00005;
    }
    table
}

/// iproute2's `normal.dist`.
pub fn generate_normal() -> Vec<i16> {
    let q = normal_quantiles();
    (0..GEN_TABLESIZE)
        .step_by(4)
        .map(|i| clamp_i16(rint(q[i] * DIST_SCALE as f64) as i64))
        .collect()
}

/// One value of iproute2's Pareto table (a = 3, shifted and scaled to mean 0), for sample
/// `i` of 65536.
fn pareto_value(i: u32) -> i64 {
    let mut d = f64::from(i) / 65536.0;
    d = 1.0 / d.powf(1.0 / PARETO_A);
    d -= 1.5;
    d *= (4.0 / 3.0) * DIST_SCALE as f64;
    if d > 32767.0 {
        d = 32767.0;
    }
    rint(d) as i64
}

/// iproute2's `pareto.dist`.
pub fn generate_pareto() -> Vec<i16> {
    (1..=4096u32)
        .rev()
        .map(|k| clamp_i16(pareto_value(k * 16)))
        .collect()
}

/// iproute2's `paretonormal.dist`: a quarter normal, three quarters Pareto, quantile by
/// quantile.
pub fn generate_paretonormal() -> Vec<i16> {
    let q = normal_quantiles();
    (0..GEN_TABLESIZE)
        .step_by(4)
        .map(|i| {
            let norm = rint(q[i] * DIST_SCALE as f64) as i64;
            let par = pareto_value(65536 - 4 * i as u32);
            // C integer division truncates toward zero, as Rust's does.
            clamp_i16((norm + 3 * par) / 4)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn moments(v: &[f64]) -> (f64, f64) {
        let n = v.len() as f64;
        let mean = v.iter().sum::<f64>() / n;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n;
        (mean, var.sqrt())
    }

    fn samples(d: &Distribution, mu: i64, sigma: i32, rho: f64, n: usize) -> Vec<f64> {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        let mut cor = Crnd::new(prob_u32(rho), &mut rng);
        let t = table(d);
        (0..n)
            .map(|_| tabledist(mu, sigma, &mut cor, &mut rng, t.as_deref()) as f64)
            .collect()
    }

    #[test]
    fn computed_tables_match_iproute2() {
        for (d, generate) in [
            (Distribution::Normal, generate_normal as fn() -> Vec<i16>),
            (Distribution::Pareto, generate_pareto),
            (Distribution::ParetoNormal, generate_paretonormal),
        ] {
            let computed = generate();
            assert_eq!(computed.len(), 4096, "{}", d.name());
            match d.table() {
                Ok(Some(installed)) => {
                    assert_eq!(installed.len(), computed.len());
                    let worst = installed
                        .iter()
                        .zip(&computed)
                        .map(|(a, b)| (i32::from(*a) - i32::from(*b)).abs())
                        .max()
                        .unwrap_or(0);
                    assert!(worst <= 1, "{}: differs by up to {worst}", d.name());
                }
                _ => eprintln!("skipped comparison: iproute2 {} table absent", d.name()),
            }
        }
    }

    #[test]
    fn uniform_jitter_moments() {
        // netem's uniform: mu ± sigma, so stddev sigma/√3.
        let s = samples(&Distribution::Uniform, 20_000_000, 5_000_000, 0.0, 200_000);
        let (mean, sd) = moments(&s);
        assert!((mean - 20e6).abs() < 0.01 * 5e6, "mean {mean}");
        assert!((sd - 5e6 / 3f64.sqrt()).abs() < 0.02 * 5e6, "sd {sd}");
        assert!(s.iter().all(|x| (15e6..25e6).contains(x)));
    }

    #[test]
    fn normal_jitter_moments() {
        let s = samples(&Distribution::Normal, 20_000_000, 5_000_000, 0.0, 200_000);
        let (mean, sd) = moments(&s);
        assert!((mean - 20e6).abs() < 0.02 * 5e6, "mean {mean}");
        assert!((sd - 5e6).abs() < 0.03 * 5e6, "sd {sd}");
    }

    #[test]
    fn pareto_jitter_is_right_skewed_around_mu() {
        for d in [Distribution::Pareto, Distribution::ParetoNormal] {
            let s = samples(&d, 20_000_000, 5_000_000, 0.0, 200_000);
            let (mean, _) = moments(&s);
            let mut sorted = s.clone();
            sorted.sort_by(f64::total_cmp);
            let median = sorted[sorted.len() / 2];
            assert!((mean - 20e6).abs() < 0.05 * 5e6, "{} mean {mean}", d.name());
            assert!(median < mean, "{}: median {median} mean {mean}", d.name());
        }
    }

    #[test]
    fn correlation_couples_successive_draws() {
        // The correlated generator itself: lag-1 correlation follows rho. (As in netem, the
        // modulo that maps a draw to a jitter or table index scrambles most of it again —
        // netem's documented weakness, reproduced rather than fixed so both paths agree.)
        let lag1 = |rho: f64| {
            let mut rng = ChaCha8Rng::seed_from_u64(2);
            let mut c = Crnd::new(prob_u32(rho), &mut rng);
            let s: Vec<f64> = (0..50_000).map(|_| f64::from(c.next(&mut rng))).collect();
            let (m, sd) = moments(&s);
            let cov: f64 =
                s.windows(2).map(|w| (w[0] - m) * (w[1] - m)).sum::<f64>() / (s.len() - 1) as f64;
            cov / (sd * sd)
        };
        assert!(lag1(0.0).abs() < 0.02);
        assert!(lag1(0.9) > 0.85, "{}", lag1(0.9));
        assert!((lag1(0.5) - 0.5).abs() < 0.05, "{}", lag1(0.5));
    }

    #[test]
    fn zero_sigma_consumes_nothing() {
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut cor = Crnd::default();
        assert_eq!(tabledist(7, 0, &mut cor, &mut rng, None), 7);
        let mut fresh = ChaCha8Rng::seed_from_u64(3);
        assert_eq!(rng.next_u32(), fresh.next_u32());
    }
}
