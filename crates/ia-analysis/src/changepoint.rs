//! Change points of a series: E-Divisive means (Matteson & James 2014, α = 1) proposes where
//! the distribution changes, and a Student t-test between the neighbouring segments decides
//! whether the change is real, as Apache Otava (ex-Hunter, Daly et al. 2020, "The Use of
//! Change Point Detection to Identify Software Performance Regressions") does.
//!
//! * The series is cut into windows (half-overlapping). In each, the split that maximises the
//!   energy statistic Q̂ is a candidate; it is kept when the t-test between its two sides
//!   gives p below the threshold and the means differ by at least the minimum magnitude, and
//!   then each side is searched again.
//! * The candidates of every window are then validated together over the whole series: each
//!   change point is tested between the segments its neighbours bound; the weakest failure is
//!   removed and the rest tested again, until every remaining one passes.

use crate::special::student_t_two_sided;
use serde::Serialize;

/// What makes a change point.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct Options {
    /// Points per window of the search (at least 8).
    pub window: usize,
    /// The t-test's p-value must be below this.
    pub max_p_value: f64,
    /// |after / before - 1| must be at least this.
    pub min_magnitude: f64,
}

impl Default for Options {
    fn default() -> Self {
        Self {
            window: 64,
            max_p_value: 0.001,
            min_magnitude: 0.0,
        }
    }
}

/// A change between index - 1 and index.
#[derive(Debug, Clone, Copy, PartialEq, Serialize)]
pub struct ChangePoint {
    /// The first point after the change.
    pub index: usize,
    /// Means of the segments on either side (bounded by the neighbouring change points).
    pub before_mean: f64,
    pub after_mean: f64,
    /// after / before - 1.
    pub magnitude: f64,
    pub p_value: f64,
    /// Points in the segments on either side.
    pub before_points: usize,
    pub after_points: usize,
}

/// Fewest points on either side of a split.
const MIN_SIDE: usize = 3;

/// The change points of `series`, in order.
pub fn detect(series: &[f64], options: &Options) -> Vec<ChangePoint> {
    let n = series.len();
    if n < 2 * MIN_SIDE || series.iter().any(|v| !v.is_finite()) {
        return Vec::new();
    }
    let window = options.window.max(8).min(n);
    let mut candidates = Vec::new();
    let mut start = 0;
    loop {
        let end = (start + window).min(n);
        split(series, start, end, options, &mut candidates);
        if end == n {
            break;
        }
        start += window / 2;
    }
    candidates.sort_unstable();
    candidates.dedup();
    validate(series, candidates, options)
}

/// Searches `series[a..b]` for its strongest split and, when it passes, both sides again.
fn split(series: &[f64], a: usize, b: usize, options: &Options, out: &mut Vec<usize>) {
    if b - a < 2 * MIN_SIDE {
        return;
    }
    let Some(tau) = strongest_split(&series[a..b]) else {
        return;
    };
    let at = a + tau;
    if passes(&test(&series[a..at], &series[at..b]), options) {
        out.push(at);
        split(series, a, at, options, out);
        split(series, at, b, options, out);
    }
}

/// The split of `z` maximising the E-Divisive statistic Q̂ (α = 1), with at least `MIN_SIDE`
/// points on each side. O(m²): the pairwise distances' 2-D prefix sums give every split's
/// within- and between-sums.
fn strongest_split(z: &[f64]) -> Option<usize> {
    let m = z.len();
    // s[i][j] = sum of |z_a - z_b| over a < i, b < j.
    let w = m + 1;
    let mut s = vec![0.0; w * w];
    for i in 0..m {
        let mut row = 0.0;
        for j in 0..m {
            row += (z[i] - z[j]).abs();
            s[(i + 1) * w + j + 1] = s[i * w + j + 1] + row;
        }
    }
    let at = |i: usize, j: usize| s[i * w + j];
    let total = at(m, m);
    let mut best: Option<(usize, f64)> = None;
    for tau in MIN_SIDE..=m - MIN_SIDE {
        let (p, q) = (tau as f64, (m - tau) as f64);
        let between = at(tau, m) - at(tau, tau);
        let within_left = at(tau, tau) / 2.0;
        let within_right = (total - 2.0 * at(tau, m) + at(tau, tau)) / 2.0;
        let e = 2.0 * between / (p * q)
            - within_left / (p * (p - 1.0) / 2.0)
            - within_right / (q * (q - 1.0) / 2.0);
        let stat = p * q / (p + q) * e;
        if best.is_none_or(|(_, b)| stat > b) {
            best = Some((tau, stat));
        }
    }
    best.map(|(tau, _)| tau)
}

/// The t-test between two neighbouring segments.
#[derive(Debug, Clone, Copy)]
struct Test {
    before_mean: f64,
    after_mean: f64,
    p_value: f64,
}

impl Test {
    fn magnitude(&self) -> f64 {
        if self.before_mean == 0.0 {
            if self.after_mean == 0.0 {
                0.0
            } else {
                f64::INFINITY
            }
        } else {
            self.after_mean / self.before_mean - 1.0
        }
    }
}

fn passes(t: &Test, options: &Options) -> bool {
    t.p_value < options.max_p_value && t.magnitude().abs() >= options.min_magnitude
}

/// Student's two-sample t-test with pooled variance (scipy's `ttest_ind`, as Otava uses).
fn test(x: &[f64], y: &[f64]) -> Test {
    let mean = |v: &[f64]| v.iter().sum::<f64>() / v.len() as f64;
    let (mx, my) = (mean(x), mean(y));
    let (nx, ny) = (x.len() as f64, y.len() as f64);
    let p_value = if x.len() < 2 || y.len() < 2 {
        1.0
    } else {
        let ss = |v: &[f64], m: f64| v.iter().map(|a| (a - m).powi(2)).sum::<f64>();
        let df = nx + ny - 2.0;
        let pooled = (ss(x, mx) + ss(y, my)) / df;
        let se = (pooled * (1.0 / nx + 1.0 / ny)).sqrt();
        if se > 0.0 {
            student_t_two_sided((my - mx) / se, df)
        } else if mx == my {
            1.0
        } else {
            0.0
        }
    };
    Test {
        before_mean: mx,
        after_mean: my,
        p_value,
    }
}

/// Tests every candidate between the segments its neighbours bound; removes the weakest
/// failure and tests again, until every remaining one passes.
fn validate(series: &[f64], mut cps: Vec<usize>, options: &Options) -> Vec<ChangePoint> {
    loop {
        let tests: Vec<Test> = (0..cps.len())
            .map(|k| {
                let a = if k == 0 { 0 } else { cps[k - 1] };
                let b = cps.get(k + 1).copied().unwrap_or(series.len());
                test(&series[a..cps[k]], &series[cps[k]..b])
            })
            .collect();
        let weakest = tests
            .iter()
            .enumerate()
            .filter(|(_, t)| !passes(t, options))
            .max_by(|a, b| {
                a.1.p_value
                    .total_cmp(&b.1.p_value)
                    .then(b.1.magnitude().abs().total_cmp(&a.1.magnitude().abs()))
            })
            .map(|(k, _)| k);
        match weakest {
            Some(k) => {
                cps.remove(k);
            }
            None => {
                return cps
                    .iter()
                    .zip(&tests)
                    .enumerate()
                    .map(|(k, (&index, t))| ChangePoint {
                        index,
                        before_mean: t.before_mean,
                        after_mean: t.after_mean,
                        magnitude: t.magnitude(),
                        p_value: t.p_value,
                        before_points: index - if k == 0 { 0 } else { cps[k - 1] },
                        after_points: cps.get(k + 1).copied().unwrap_or(series.len()) - index,
                    })
                    .collect()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::rng::SplitMix;

    /// A 10% shift at 3% noise (sd 3 on a mean of 100), 50 points either side, in 500
    /// generated series: found within two points of where it happened in at least 95%.
    /// (`cargo test -p ia-analysis -- --nocapture` prints the figure.)
    #[test]
    fn a_ten_percent_shift_at_three_percent_noise_is_found() {
        let mut noise = SplitMix::new(7);
        let trials = 500;
        let mut found = 0;
        for _ in 0..trials {
            let series: Vec<f64> = (0..100)
                .map(|i| noise.normal(if i < 50 { 100.0 } else { 110.0 }, 3.0))
                .collect();
            let cps = detect(&series, &Options::default());
            if cps.iter().any(|c| c.index.abs_diff(50) <= 2) {
                found += 1;
            }
        }
        let rate = found as f64 / trials as f64;
        eprintln!("10% shift at 3% noise: found in {found} of {trials} series");
        assert!(rate >= 0.95, "detected {rate}");
    }

    /// Stationary noise at the default threshold: at most one false change point per 1,000
    /// points (200 series of 1,000 points).
    #[test]
    fn stationary_noise_gives_at_most_one_false_change_per_thousand_points() {
        let mut noise = SplitMix::new(11);
        let series_count = 200;
        let mut false_points = 0;
        for _ in 0..series_count {
            let series: Vec<f64> = (0..1000).map(|_| noise.normal(100.0, 3.0)).collect();
            false_points += detect(&series, &Options::default()).len();
        }
        let per_thousand = false_points as f64 / series_count as f64;
        eprintln!(
            "stationary noise: {false_points} change points in {series_count} x 1,000 points"
        );
        assert!(per_thousand <= 1.0, "{per_thousand} per 1,000 points");
    }

    #[test]
    fn each_change_point_reports_its_segments() {
        let series: Vec<f64> = (0..40)
            .map(|i| if i < 20 { 10.0 } else { 12.0 } + (i % 3) as f64 * 0.01)
            .collect();
        let cps = detect(&series, &Options::default());
        assert_eq!(cps.len(), 1, "{cps:?}");
        let c = cps[0];
        assert_eq!((c.index, c.before_points, c.after_points), (20, 20, 20));
        assert!(
            (c.magnitude - 0.2).abs() < 0.01 && c.p_value < 1e-10,
            "{c:?}"
        );
        // A minimum magnitude above it hides it.
        let strict = Options {
            min_magnitude: 0.5,
            ..Options::default()
        };
        assert!(detect(&series, &strict).is_empty());
    }

    #[test]
    fn short_constant_or_broken_series_have_no_change_points() {
        let o = Options::default();
        assert!(detect(&[1.0, 2.0, 3.0], &o).is_empty());
        assert!(detect(&[5.0; 100], &o).is_empty());
        assert!(detect(&[1.0, f64::NAN, 1.0, 1.0, 1.0, 1.0, 1.0], &o).is_empty());
    }
}
