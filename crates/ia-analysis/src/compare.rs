//! One combination measured in two runs: is the candidate slower or faster than the baseline?
//!
//! * Effect: the ratio of the medians (candidate / baseline) with a percentile-bootstrap 95%
//!   confidence interval (each run's samples resampled independently, a fixed seed).
//! * Significance: the Mann-Whitney U test (two-sided, normal approximation with tie and
//!   continuity corrections), robust to the long right tail of latency samples.
//! * Many combinations compared at once: Holm's step-down correction of the p-values
//!   (family-wise error), so that comparing 100 combinations does not report 5 changes that
//!   are noise.

use crate::rng::SplitMix;
use crate::special::normal_two_sided;
use serde::Serialize;

/// Bootstrap resamples per interval.
pub const RESAMPLES: usize = 2000;
/// Significance level after correction.
pub const ALPHA: f64 = 0.05;

/// The comparison of one combination's samples.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Comparison {
    pub baseline_median: f64,
    pub candidate_median: f64,
    /// candidate / baseline.
    pub ratio: f64,
    pub ratio_ci95: (f64, f64),
    pub mann_whitney_p: f64,
}

/// Compares two runs' samples of one combination; `None` when either has no samples.
pub fn compare(baseline: &[f64], candidate: &[f64], seed: u64) -> Option<Comparison> {
    let finite = |v: &[f64]| -> Vec<f64> { v.iter().copied().filter(|x| x.is_finite()).collect() };
    let (b, c) = (finite(baseline), finite(candidate));
    if b.is_empty() || c.is_empty() {
        return None;
    }
    let (mb, mc) = (median(&b), median(&c));
    let mut rng = SplitMix::new(seed);
    let mut ratios: Vec<f64> = (0..RESAMPLES)
        .map(|_| median(&resample(&c, &mut rng)) / median(&resample(&b, &mut rng)))
        .collect();
    ratios.sort_by(f64::total_cmp);
    let pick = |q: f64| ratios[((RESAMPLES as f64 - 1.0) * q).round() as usize];
    Some(Comparison {
        baseline_median: mb,
        candidate_median: mc,
        ratio: mc / mb,
        ratio_ci95: (pick(0.025), pick(0.975)),
        mann_whitney_p: mann_whitney(&b, &c),
    })
}

/// What one comparison concludes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Verdict {
    Regression,
    Improvement,
    NoSignificantChange,
}

/// The verdict of a comparison whose corrected p-value is `adjusted_p`: a change when it is
/// significant, the confidence interval excludes 1, and the ratio moves beyond `threshold`
/// (0.05 = 5%) in the metric's bad (regression) or good direction.
pub fn verdict(c: &Comparison, adjusted_p: f64, threshold: f64, lower_is_better: bool) -> Verdict {
    let (low, high) = c.ratio_ci95;
    let significant = adjusted_p < ALPHA && (low > 1.0 || high < 1.0);
    if !significant {
        return Verdict::NoSignificantChange;
    }
    let worse = if lower_is_better {
        c.ratio > 1.0 + threshold
    } else {
        c.ratio < 1.0 - threshold
    };
    let better = if lower_is_better {
        c.ratio < 1.0 - threshold
    } else {
        c.ratio > 1.0 + threshold
    };
    match (worse, better) {
        (true, _) => Verdict::Regression,
        (_, true) => Verdict::Improvement,
        _ => Verdict::NoSignificantChange,
    }
}

/// Holm's step-down adjusted p-values, in the order given.
pub fn holm(p: &[f64]) -> Vec<f64> {
    let m = p.len();
    let mut order: Vec<usize> = (0..m).collect();
    order.sort_by(|&a, &b| p[a].total_cmp(&p[b]));
    let mut adjusted = vec![0.0; m];
    let mut running: f64 = 0.0;
    for (rank, &i) in order.iter().enumerate() {
        running = running.max(((m - rank) as f64 * p[i]).min(1.0));
        adjusted[i] = running;
    }
    adjusted
}

/// Two-sided Mann-Whitney U p-value (normal approximation, tie- and continuity-corrected).
pub fn mann_whitney(x: &[f64], y: &[f64]) -> f64 {
    let (n1, n2) = (x.len() as f64, y.len() as f64);
    let mut all: Vec<(f64, bool)> = x
        .iter()
        .map(|&v| (v, true))
        .chain(y.iter().map(|&v| (v, false)))
        .collect();
    all.sort_by(|a, b| a.0.total_cmp(&b.0));
    let n = all.len();
    let mut rank_sum_x = 0.0;
    let mut ties = 0.0;
    let mut i = 0;
    while i < n {
        let mut j = i;
        while j + 1 < n && all[j + 1].0 == all[i].0 {
            j += 1;
        }
        // Ranks i+1 ..= j+1 share their mean.
        let rank = (i + j + 2) as f64 / 2.0;
        let t = (j - i + 1) as f64;
        ties += t * t * t - t;
        rank_sum_x += rank * all[i..=j].iter().filter(|a| a.1).count() as f64;
        i = j + 1;
    }
    let u = rank_sum_x - n1 * (n1 + 1.0) / 2.0;
    let mean = n1 * n2 / 2.0;
    let nf = n as f64;
    let var = n1 * n2 / 12.0 * ((nf + 1.0) - ties / (nf * (nf - 1.0)));
    if var <= 0.0 {
        return 1.0;
    }
    let z = ((u - mean).abs() - 0.5).max(0.0) / var.sqrt();
    normal_two_sided(z)
}

fn median(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

fn resample(v: &[f64], rng: &mut SplitMix) -> Vec<f64> {
    (0..v.len())
        .map(|_| v[(rng.next_u64() % v.len() as u64) as usize])
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix;

    #[test]
    fn mann_whitney_matches_the_normal_approximation() {
        // Complete separation of 5 and 5: U = 0, mean 12.5, variance 5 x 5 x 11 / 12; with the
        // continuity correction z = 12 / 4.787 = 2.5067, p = 0.01219 (scipy's
        // mannwhitneyu(..., method="asymptotic") computes the same).
        let p = mann_whitney(&[1.0, 2.0, 3.0, 4.0, 5.0], &[6.0, 7.0, 8.0, 9.0, 10.0]);
        assert!((p - 0.012_19).abs() < 1e-4, "{p}");
        assert_eq!(mann_whitney(&[1.0, 1.0], &[1.0, 1.0]), 1.0);
    }

    #[test]
    fn holm_steps_down_and_stays_monotone() {
        let adjusted = holm(&[0.01, 0.04, 0.03, 0.005]);
        // Sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1 -> 0.02, 0.03, 0.06, 0.06.
        assert_eq!(adjusted, vec![0.03, 0.06, 0.06, 0.02]);
    }

    #[test]
    fn a_ten_percent_slowdown_is_a_regression_and_noise_is_not() {
        let mut noise = SplitMix::new(3);
        let base: Vec<f64> = (0..50).map(|_| noise.normal(100.0, 3.0)).collect();
        let slow: Vec<f64> = (0..50).map(|_| noise.normal(110.0, 3.0)).collect();
        let same: Vec<f64> = (0..50).map(|_| noise.normal(100.0, 3.0)).collect();
        let c = compare(&base, &slow, 1).unwrap();
        assert!(c.ratio_ci95.0 > 1.05 && c.ratio_ci95.1 < 1.15, "{c:?}");
        assert_eq!(
            verdict(&c, c.mann_whitney_p, 0.05, true),
            Verdict::Regression
        );
        // Throughput going up by the same ratio is an improvement.
        assert_eq!(
            verdict(&c, c.mann_whitney_p, 0.05, false),
            Verdict::Improvement
        );
        let n = compare(&base, &same, 1).unwrap();
        assert_eq!(
            verdict(&n, n.mann_whitney_p, 0.05, true),
            Verdict::NoSignificantChange
        );
        assert!(compare(&[], &same, 1).is_none());
    }
}
