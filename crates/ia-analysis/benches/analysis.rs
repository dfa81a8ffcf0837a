//! Times `changepoint::detect` on a 10,000-point series (a 10% shift every 2,000 points at 3%
//! noise) and `compare::compare` on two runs of 1,000 samples; prints the median of 5.

use ia_analysis::{changepoint, compare};
use std::time::Instant;

/// SplitMix64 + Box-Muller: the same series on every machine.
struct Noise(u64);

impl Noise {
    fn uniform(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        ((z >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    fn normal(&mut self, mean: f64, sd: f64) -> f64 {
        let (u, v) = (self.uniform(), self.uniform());
        mean + sd * (-2.0 * u.ln()).sqrt() * (2.0 * std::f64::consts::PI * v).cos()
    }
}

fn median_ms(mut f: impl FnMut()) -> f64 {
    let mut t: Vec<f64> = (0..5)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed().as_secs_f64() * 1e3
        })
        .collect();
    t.sort_by(f64::total_cmp);
    t[2]
}

fn main() {
    let mut noise = Noise(1);
    let series: Vec<f64> = (0..10_000i32)
        .map(|i| {
            let level = 100.0 * 1.1f64.powi(i / 2000);
            noise.normal(level, 0.03 * level)
        })
        .collect();
    let mut found = 0;
    let ms = median_ms(|| {
        found = changepoint::detect(&series, &changepoint::Options::default()).len();
    });
    println!("changepoint::detect, 10,000 points: {ms:.1} ms (median of 5), {found} change points (4 planted)");
    let a: Vec<f64> = (0..1000).map(|_| noise.normal(100.0, 3.0)).collect();
    let b: Vec<f64> = (0..1000).map(|_| noise.normal(103.0, 3.0)).collect();
    let ms = median_ms(|| {
        compare::compare(&a, &b, 0);
    });
    println!(
        "compare::compare, 2 x 1,000 samples ({} bootstrap resamples): {ms:.1} ms (median of 5)",
        compare::RESAMPLES
    );
}
