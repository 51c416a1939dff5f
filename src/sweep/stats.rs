//! Means and 95% confidence intervals over seeds.
//!
//! The interval is Student's t: `mean ± t(0.975, n − 1) · s / √n`, `s` the sample standard
//! deviation (n − 1 in the denominator): each seed is one independent run of the whole
//! experiment, and a handful of seeds is far from the normal limit (t(0.975, 4) = 2.776 for five
//! seeds, against 1.960). One seed has no interval.

use statrs::distribution::{ContinuousCDF, StudentsT};

/// A mean over seeds and its 95% interval.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimate {
    /// Values averaged.
    pub n: usize,
    /// Their mean.
    pub mean: f64,
    /// Half the width of the 95% interval (`None` below two values).
    pub half_width: Option<f64>,
}

impl Estimate {
    /// The interval's ends (the mean twice without one).
    pub fn interval(&self) -> (f64, f64) {
        let h = self.half_width.unwrap_or(0.0);
        (self.mean - h, self.mean + h)
    }

    /// Whether the two 95% intervals share a point (always, when either has none).
    pub fn overlaps(&self, other: &Estimate) -> bool {
        if self.half_width.is_none() || other.half_width.is_none() {
            return true;
        }
        let (a, b) = (self.interval(), other.interval());
        a.0 <= b.1 && b.0 <= a.1
    }
}

/// The two-sided 95% quantile of Student's t with `df` degrees of freedom.
pub fn t975(df: usize) -> f64 {
    StudentsT::new(0.0, 1.0, df as f64)
        .expect("df > 0")
        .inverse_cdf(0.975)
}

/// Mean and 95% interval of `values` (`None` when empty).
pub fn estimate(values: &[f64]) -> Option<Estimate> {
    let n = values.len();
    if n == 0 {
        return None;
    }
    let mean = values.iter().sum::<f64>() / n as f64;
    let half_width = (n >= 2).then(|| {
        let var = values.iter().map(|v| (v - mean).powi(2)).sum::<f64>() / (n - 1) as f64;
        t975(n - 1) * var.sqrt() / (n as f64).sqrt()
    });
    Some(Estimate {
        n,
        mean,
        half_width,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn t_quantiles_match_the_tables() {
        // Standard t tables, two-sided 95%.
        for (df, t) in [(1, 12.706), (2, 4.303), (4, 2.776), (9, 2.262), (30, 2.042)] {
            assert!((t975(df) - t).abs() < 5e-4, "df {df}: {} vs {t}", t975(df));
        }
    }

    #[test]
    fn interval_of_known_values() {
        // 0.1, 0.2, 0.3, 0.4, 0.5: mean 0.3, s = 0.158114, s/√5 = 0.070711, × 2.776445 = 0.196324.
        let e = estimate(&[0.1, 0.2, 0.3, 0.4, 0.5]).unwrap();
        assert_eq!(e.n, 5);
        assert!((e.mean - 0.3).abs() < 1e-12);
        assert!((e.half_width.unwrap() - 0.196324).abs() < 1e-5, "{e:?}");
        let one = estimate(&[0.7]).unwrap();
        assert_eq!((one.mean, one.half_width), (0.7, None));
        assert!(estimate(&[]).is_none());
        // Equal values: a zero-width interval.
        assert_eq!(estimate(&[0.5, 0.5]).unwrap().half_width, Some(0.0));
    }

    #[test]
    fn overlap_is_about_the_intervals() {
        let a = estimate(&[0.1, 0.12, 0.11]).unwrap();
        let b = estimate(&[0.8, 0.82, 0.81]).unwrap();
        let c = estimate(&[0.05, 0.5, 0.3]).unwrap();
        assert!(!a.overlaps(&b));
        assert!(a.overlaps(&c) && c.overlaps(&a));
    }
}
