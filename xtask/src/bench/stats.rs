//! Summaries of paired runs: the ratio of each pair, then median, min and
//! max over the pairs. Pairs rather than two pooled medians, so a burst of
//! load from another process shifts both halves of a pair and cancels.

/// Median of `v` (the mean of the middle two for an even count); NaN when empty.
pub fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| !x.is_nan()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let n = s.len();
    if n % 2 == 1 {
        s[n / 2]
    } else {
        (s[n / 2 - 1] + s[n / 2]) / 2.0
    }
}

pub fn min(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::min)
}

pub fn max(v: &[f64]) -> f64 {
    v.iter().copied().fold(f64::NAN, f64::max)
}

/// One workload's pairs, in run order: (baseline, monitored) nanoseconds per operation.
#[derive(Debug, Default, Clone)]
pub struct Pairs {
    pub pairs: Vec<(f64, f64)>,
}

/// What the report shows for one workload.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub n: usize,
    pub baseline_ns: f64,
    pub monitored_ns: f64,
    /// Median, minimum and maximum over pairs of (monitored − baseline).
    pub added_ns: f64,
    pub added_min: f64,
    pub added_max: f64,
    pub ratio: f64,
    pub ratio_min: f64,
    pub ratio_max: f64,
}

impl Pairs {
    /// `rate`: the ratio is of rates (baseline time / monitored time), as for
    /// fork+exec, where the target is a floor; otherwise of times.
    pub fn summary(&self, rate: bool) -> Summary {
        let b: Vec<f64> = self.pairs.iter().map(|p| p.0).collect();
        let m: Vec<f64> = self.pairs.iter().map(|p| p.1).collect();
        let ratios: Vec<f64> = self.pairs.iter().map(|&(b, m)| if rate { b / m } else { m / b }).collect();
        let added: Vec<f64> = self.pairs.iter().map(|&(b, m)| m - b).collect();
        Summary {
            n: self.pairs.len(),
            baseline_ns: median(&b),
            monitored_ns: median(&m),
            added_ns: median(&added),
            added_min: min(&added),
            added_max: max(&added),
            ratio: median(&ratios),
            ratio_min: min(&ratios),
            ratio_max: max(&ratios),
        }
    }
}

/// A design target from issue 7: reported, never asserted.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Target {
    AtMost(f64),
    AtLeast(f64),
}

impl Target {
    pub fn met(self, value: f64) -> bool {
        match self {
            Target::AtMost(t) => value <= t,
            Target::AtLeast(t) => value >= t,
        }
    }

    /// `≤ 1.40×` style, with `unit` after the number.
    pub fn describe(self, unit: &str) -> String {
        match self {
            Target::AtMost(t) => format!("≤ {}{unit}", fmt_num(t)),
            Target::AtLeast(t) => format!("≥ {}{unit}", fmt_num(t)),
        }
    }
}

/// Thousands separated by commas from 10,000 up; two decimals below 10
/// unless `x` is a whole number (a count).
pub fn fmt_num(x: f64) -> String {
    if x.is_nan() {
        return "n/a".into();
    }
    if x.abs() < 10.0 && x.fract() != 0.0 {
        return format!("{x:.2}");
    }
    let int = x.round() as i64;
    let digits = int.unsigned_abs().to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i).is_multiple_of(3) && digits.len() > 4 {
            out.push(',');
        }
        out.push(c);
    }
    if int < 0 {
        out.insert(0, '-');
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(&[3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(&[4.0, 1.0, 2.0, 3.0]), 2.5);
        assert!(median(&[]).is_nan());
    }

    #[test]
    fn ratios_are_per_pair() {
        // A slow pair (both halves doubled) does not move the median ratio.
        let p = Pairs { pairs: vec![(100.0, 110.0), (200.0, 220.0), (100.0, 130.0)] };
        let s = p.summary(false);
        assert_eq!(s.n, 3);
        assert!((s.ratio - 1.1).abs() < 1e-9);
        assert!((s.ratio_min - 1.1).abs() < 1e-9);
        assert!((s.ratio_max - 1.3).abs() < 1e-9);
        assert_eq!((s.added_ns, s.added_min, s.added_max), (20.0, 10.0, 30.0));
        let r = Pairs { pairs: vec![(100.0, 125.0)] }.summary(true);
        assert!((r.ratio - 0.8).abs() < 1e-9);
    }

    #[test]
    fn targets() {
        assert!(Target::AtMost(1.4).met(1.4));
        assert!(!Target::AtMost(1.02).met(1.03));
        assert!(Target::AtLeast(0.95).met(0.97));
        assert_eq!(Target::AtMost(1.4).describe("×"), "≤ 1.40×");
        assert_eq!(Target::AtLeast(1e6).describe(""), "≥ 1,000,000");
    }

    #[test]
    fn numbers() {
        assert_eq!(fmt_num(1234.4), "1234");
        assert_eq!(fmt_num(250000.0), "250,000");
        assert_eq!(fmt_num(1.5), "1.50");
        assert_eq!(fmt_num(0.0), "0");
        assert_eq!(fmt_num(-12345.0), "-12,345");
    }
}
