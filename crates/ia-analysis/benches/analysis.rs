//! Times `changepoint::detect` on a 10,000-point series (a 10% shift every 2,000 points at 3%
//! noise) and `compare::compare` on two runs of 1,000 samples; prints the median of 5.

use ia_analysis::rng::SplitMix;
use ia_analysis::{changepoint, compare};
use std::time::Instant;

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
    let mut noise = SplitMix::new(1);
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
