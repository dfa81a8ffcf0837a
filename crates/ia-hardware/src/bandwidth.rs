//! Sustained memory bandwidth, measured as STREAM measures it: the triad `a[i] = b[i] + s *
//! c[i]` over three arrays far larger than the caches, split over every core, the best of
//! several repetitions, 24 bytes counted per element (two loads, one store).

use serde::Serialize;
use std::time::Instant;

#[derive(Debug, Clone, Serialize)]
pub struct Bandwidth {
    /// Bytes per second the triad sustained (best repetition).
    pub bytes_per_s: f64,
    /// Bytes of each of the three arrays.
    pub array_bytes: u64,
    pub threads: usize,
    pub repetitions: usize,
}

/// Runs the triad on three arrays of `array_bytes` each (rounded down to whole f64s),
/// `repetitions` times on every available core.
pub fn measure(array_bytes: u64, repetitions: usize) -> Bandwidth {
    let n = (array_bytes / 8).max(1024) as usize;
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get());
    let mut a = vec![0.0f64; n];
    let b = vec![1.0f64; n];
    let c = vec![2.0f64; n];
    let chunk = n.div_ceil(threads);
    let mut best = f64::INFINITY;
    // The first pass touches every page of `a`; it is not timed.
    for rep in 0..=repetitions.max(1) {
        let start = Instant::now();
        std::thread::scope(|s| {
            for ((a, b), c) in a
                .chunks_mut(chunk)
                .zip(b.chunks(chunk))
                .zip(c.chunks(chunk))
            {
                s.spawn(move || {
                    for ((x, y), z) in a.iter_mut().zip(b).zip(c) {
                        *x = y + 3.0 * z;
                    }
                });
            }
        });
        let seconds = start.elapsed().as_secs_f64();
        if rep > 0 {
            best = best.min(seconds);
        }
    }
    std::hint::black_box(&a);
    Bandwidth {
        bytes_per_s: (24 * n) as f64 / best,
        array_bytes: (8 * n) as u64,
        threads,
        repetitions: repetitions.max(1),
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_triad_reports_a_positive_rate_for_what_it_moved() {
        let b = super::measure(1 << 20, 2);
        assert!(b.bytes_per_s > 0.0 && b.bytes_per_s.is_finite());
        assert_eq!(b.array_bytes, 1 << 20);
        assert!(b.threads >= 1);
    }
}
