//! Latency statistics over the measured runs of one configuration.

use serde::{Deserialize, Serialize};

/// Summary of a sample of latencies in milliseconds.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// How many runs.
    pub runs: usize,
    /// The fastest.
    pub min_ms: f64,
    /// The median.
    pub p50_ms: f64,
    /// The 90th percentile.
    pub p90_ms: f64,
    /// The 99th percentile.
    pub p99_ms: f64,
    /// The slowest.
    pub max_ms: f64,
    /// The mean.
    pub mean_ms: f64,
    /// Sample standard deviation (n − 1); 0 for a single run.
    pub stddev_ms: f64,
}

impl Summary {
    /// Summarises `samples`; `None` when there are none.
    ///
    /// ```
    /// let s = convnext_edge::bench::stats::Summary::of(&[4.0, 1.0, 3.0, 2.0]).unwrap();
    /// assert_eq!((s.min_ms, s.p50_ms, s.max_ms, s.mean_ms), (1.0, 2.5, 4.0, 2.5));
    /// ```
    pub fn of(samples: &[f64]) -> Option<Summary> {
        if samples.is_empty() {
            return None;
        }
        let mut sorted = samples.to_vec();
        sorted.sort_by(f64::total_cmp);
        let n = sorted.len();
        let mean = sorted.iter().sum::<f64>() / n as f64;
        let var = if n > 1 {
            sorted.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / (n - 1) as f64
        } else {
            0.0
        };
        Some(Summary {
            runs: n,
            min_ms: sorted[0],
            p50_ms: percentile(&sorted, 50.0),
            p90_ms: percentile(&sorted, 90.0),
            p99_ms: percentile(&sorted, 99.0),
            max_ms: sorted[n - 1],
            mean_ms: mean,
            stddev_ms: var.sqrt(),
        })
    }
}

/// Percentile `p` (0–100) of ascending `sorted` data, interpolating linearly between the two
/// nearest ranks (numpy's default, `method="linear"`).
pub fn percentile(sorted: &[f64], p: f64) -> f64 {
    let rank = p / 100.0 * (sorted.len() - 1) as f64;
    let (lo, hi) = (rank.floor() as usize, rank.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (rank - lo as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_match_numpy_linear() {
        // numpy.percentile(range(1, 101), [50, 90, 99]) = [50.5, 90.1, 99.01]
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        let s = Summary::of(&v).unwrap();
        assert!((s.p50_ms - 50.5).abs() < 1e-9);
        assert!((s.p90_ms - 90.1).abs() < 1e-9);
        assert!((s.p99_ms - 99.01).abs() < 1e-9);
        assert_eq!((s.min_ms, s.max_ms, s.runs), (1.0, 100.0, 100));
        // numpy.std(range(1, 101), ddof=1) = 29.011491975882016
        assert!((s.stddev_ms - 29.011491975882016).abs() < 1e-9);
    }

    #[test]
    fn single_and_empty_samples() {
        let s = Summary::of(&[7.0]).unwrap();
        assert_eq!((s.p50_ms, s.p99_ms, s.stddev_ms), (7.0, 7.0, 0.0));
        assert!(Summary::of(&[]).is_none());
        // unsorted input, even count: median between the middle two
        assert_eq!(Summary::of(&[9.0, 1.0, 5.0, 3.0]).unwrap().p50_ms, 4.0);
    }
}
