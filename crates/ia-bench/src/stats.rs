//! Latency statistics with honest percentiles.
//!
//! A tail percentile from few samples is mostly noise. Following MLPerf's early-stopping
//! minimums (64 queries for p90, 662 for p99), a percentile computed from fewer samples is
//! still reported but flagged as an estimate. p95 uses 132, the same ~6.6/(1-p) scaling
//! that those two published minimums follow.

use serde::Serialize;

pub const MIN_SAMPLES_P90: usize = 64;
pub const MIN_SAMPLES_P95: usize = 132;
pub const MIN_SAMPLES_P99: usize = 662;

#[derive(Debug, Clone, Serialize, PartialEq)]
pub struct LatencyStats {
    pub count: usize,
    pub mean_ms: f64,
    /// Sample standard deviation (n - 1).
    pub stdev_ms: f64,
    pub min_ms: f64,
    pub max_ms: f64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p95_ms: f64,
    pub p99_ms: f64,
    pub p90_is_estimate: bool,
    pub p95_is_estimate: bool,
    pub p99_is_estimate: bool,
}

impl LatencyStats {
    pub fn from_samples(samples: &[f64]) -> Self {
        let n = samples.len();
        if n == 0 {
            return Self {
                count: 0,
                mean_ms: f64::NAN,
                stdev_ms: f64::NAN,
                min_ms: f64::NAN,
                max_ms: f64::NAN,
                p50_ms: f64::NAN,
                p90_ms: f64::NAN,
                p95_ms: f64::NAN,
                p99_ms: f64::NAN,
                p90_is_estimate: true,
                p95_is_estimate: true,
                p99_is_estimate: true,
            };
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let mean = samples.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            samples.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Self {
            count: n,
            mean_ms: mean,
            stdev_ms: var.sqrt(),
            min_ms: sorted[0],
            max_ms: sorted[n - 1],
            p50_ms: percentile(&sorted, 50.0),
            p90_ms: percentile(&sorted, 90.0),
            p95_ms: percentile(&sorted, 95.0),
            p99_ms: percentile(&sorted, 99.0),
            p90_is_estimate: n < MIN_SAMPLES_P90,
            p95_is_estimate: n < MIN_SAMPLES_P95,
            p99_is_estimate: n < MIN_SAMPLES_P99,
        }
    }
}

/// Consecutive windows of a timed run that [`window_spread`] compares.
pub const WINDOWS: usize = 4;

/// A run whose windows agree within this ([`window_spread`]) kept one speed. On a store of
/// `scripts/predict_data.sh` (2-core Zen 4 VM, 480 results in two passes, 2026-12-07) 32% of
/// the runs were further apart; the two p50s of a configuration whose runs both kept one speed
/// differed by 11.2% (mean of |a - b| / min(a, b)), those of the others by 20.4%.
pub const STEADY_WINDOW_SPREAD: f64 = 0.2;

/// How far the slowest of [`WINDOWS`] consecutive windows of `samples` (in the order they
/// were timed) is above the fastest, by their medians: 0.25 is a window whose median is 25%
/// above another's. A run whose machine slowed down part of the way (a shared VM's slow spell,
/// a neighbour's burst) reads a p50 between its two speeds; a steady run's windows agree.
/// None with fewer than two samples a window.
pub fn window_spread(samples: &[f64]) -> Option<f64> {
    let n = samples.len();
    if n < 2 * WINDOWS {
        return None;
    }
    let medians: Vec<f64> = (0..WINDOWS)
        .map(|w| {
            let mut window = samples[w * n / WINDOWS..(w + 1) * n / WINDOWS].to_vec();
            window.sort_by(f64::total_cmp);
            percentile(&window, 50.0)
        })
        .collect();
    let (low, high) = medians
        .iter()
        .fold((f64::INFINITY, 0f64), |(l, h), m| (l.min(*m), h.max(*m)));
    (low > 0.0).then(|| high / low - 1.0)
}

/// Linear interpolation between closest ranks (numpy's default), on sorted data.
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let lo = rank.floor() as usize;
    let hi = rank.ceil() as usize;
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn matches_numpy_on_a_known_series() {
        // numpy.percentile([1..=10], [50, 90, 95, 99]) == [5.5, 9.1, 9.55, 9.91]
        let s: Vec<f64> = (1..=10).map(f64::from).collect();
        let st = LatencyStats::from_samples(&s);
        assert!((st.p50_ms - 5.5).abs() < 1e-12);
        assert!((st.p90_ms - 9.1).abs() < 1e-12);
        assert!((st.p95_ms - 9.55).abs() < 1e-12);
        assert!((st.p99_ms - 9.91).abs() < 1e-12);
        assert!((st.mean_ms - 5.5).abs() < 1e-12);
        // sample stdev of 1..=10 is sqrt(55/6)
        assert!((st.stdev_ms - (55.0f64 / 6.0).sqrt()).abs() < 1e-12);
    }

    #[test]
    fn flags_estimates_by_sample_count() {
        let st = LatencyStats::from_samples(&vec![1.0; 63]);
        assert!(st.p90_is_estimate && st.p99_is_estimate);
        let st = LatencyStats::from_samples(&vec![1.0; 64]);
        assert!(!st.p90_is_estimate && st.p95_is_estimate);
        let st = LatencyStats::from_samples(&vec![1.0; 662]);
        assert!(!st.p99_is_estimate);
    }

    #[test]
    fn window_spread_compares_the_medians_of_consecutive_windows() {
        // Steady, then twice as slow from the third window on.
        let mut s = vec![1.0; 20];
        s.extend(vec![2.0; 20]);
        assert!((window_spread(&s).unwrap() - 1.0).abs() < 1e-12);
        // One outlier a window moves no median.
        let mut steady = vec![1.0; 40];
        steady[3] = 50.0;
        steady[33] = 50.0;
        assert_eq!(window_spread(&steady), Some(0.0));
        assert_eq!(window_spread(&[1.0; 7]), None);
    }

    #[test]
    fn empty_and_single_sample() {
        assert_eq!(LatencyStats::from_samples(&[]).count, 0);
        let one = LatencyStats::from_samples(&[3.0]);
        assert_eq!((one.p50_ms, one.p99_ms, one.stdev_ms), (3.0, 3.0, 0.0));
    }
}
