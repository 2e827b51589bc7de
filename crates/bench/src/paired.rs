//! Paired comparison of two proxies measured round by round.
//!
//! On a noisy machine one table of medians cannot say whether a proxy is ahead of another: the
//! spread between rounds is larger than the difference. Each round measures both a few seconds
//! apart, so the per-round ratio (or difference) cancels what the round shares. Over the rounds
//! we report the median of those pairs with a distribution-free confidence interval (order
//! statistics of the binomial, no assumption about the noise) and the one-sided sign test.

/// The median of `xs` with a confidence interval of at least `confidence` (order statistics:
/// the interval `[x(k), x(n+1-k)]` holds the true median with probability `1 - 2 P(B < k)`,
/// `B ~ Binomial(n, 1/2)`). The returned coverage is the exact one, which is at least
/// `confidence` when `n` allows it; with too few samples the interval is the full range and the
/// coverage says how little that is.
#[derive(Debug, Clone, Copy, PartialEq)]
pub(crate) struct MedianInterval {
    pub(crate) median: f64,
    pub(crate) low: f64,
    pub(crate) high: f64,
    pub(crate) coverage: f64,
}

/// `P(B <= k)` for `B ~ Binomial(n, 1/2)`.
fn binomial_half_cdf(n: usize, k: usize) -> f64 {
    let mut term = 0.5f64.powi(i32::try_from(n).unwrap_or(i32::MAX)); // C(n, 0) / 2^n
    let mut sum = 0.0;
    for i in 0..=k.min(n) {
        sum += term;
        // C(n, i + 1) = C(n, i) (n - i) / (i + 1)
        term *= (n - i) as f64 / (i + 1) as f64;
    }
    sum
}

/// `None` for no samples.
pub(crate) fn median_interval(xs: &[f64], confidence: f64) -> Option<MedianInterval> {
    let mut xs = xs.to_vec();
    xs.sort_by(f64::total_cmp);
    let n = xs.len();
    if n == 0 {
        return None;
    }
    let median = if n % 2 == 1 { xs[n / 2] } else { (xs[n / 2 - 1] + xs[n / 2]) / 2.0 };
    // The largest k (1-based) with 1 - 2 P(B <= k - 1) >= confidence; at least 1 (the range).
    let mut k = 1;
    while k < n.div_ceil(2) && 1.0 - 2.0 * binomial_half_cdf(n, k) >= confidence {
        k += 1;
    }
    let coverage = 1.0 - 2.0 * binomial_half_cdf(n, k - 1);
    Some(MedianInterval { median, low: xs[k - 1], high: xs[n - k], coverage })
}

/// The one-sided sign test: the probability of at least `wins` wins in `n` fair coin flips, that
/// is, of a record this good if neither side were ahead. Callers leave ties out of `n`.
pub(crate) fn sign_test(wins: usize, n: usize) -> f64 {
    if wins == 0 {
        return 1.0;
    }
    1.0 - binomial_half_cdf(n, wins - 1)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn binomial_cdf_matches_hand_counts() {
        // n = 4: 1, 4, 6, 4, 1 out of 16.
        assert!(close(binomial_half_cdf(4, 0), 1.0 / 16.0));
        assert!(close(binomial_half_cdf(4, 1), 5.0 / 16.0));
        assert!(close(binomial_half_cdf(4, 2), 11.0 / 16.0));
        assert!(close(binomial_half_cdf(4, 4), 1.0));
        assert!(close(binomial_half_cdf(4, 9), 1.0));
    }

    #[test]
    fn intervals_use_the_textbook_order_statistics() {
        let xs: Vec<f64> = (1..=15).rev().map(f64::from).collect();
        // n = 15 at 95 %: [x(4), x(12)], coverage 1 - 2 * 0.0176 = 0.9648.
        let m = median_interval(&xs, 0.95).unwrap();
        assert_eq!((m.median, m.low, m.high), (8.0, 4.0, 12.0));
        assert!((m.coverage - 0.96484375).abs() < 1e-8, "{}", m.coverage);
        // n = 7: only the range reaches 95 % (coverage 1 - 2/128).
        let xs: Vec<f64> = [3.0, 1.0, 7.0, 5.0, 2.0, 6.0, 4.0].to_vec();
        let m = median_interval(&xs, 0.95).unwrap();
        assert_eq!((m.median, m.low, m.high), (4.0, 1.0, 7.0));
        assert!(close(m.coverage, 1.0 - 2.0 / 128.0));
        // n = 30: [x(10), x(21)] (P(B <= 9) = 0.0214).
        let xs: Vec<f64> = (1..=30).map(f64::from).collect();
        let m = median_interval(&xs, 0.95).unwrap();
        assert_eq!((m.median, m.low, m.high), (15.5, 10.0, 21.0));
        assert!(m.coverage >= 0.95 && m.coverage < 0.96, "{}", m.coverage);
        assert_eq!(median_interval(&[], 0.95), None);
        let one = median_interval(&[2.5], 0.95).unwrap();
        assert_eq!((one.median, one.low, one.high), (2.5, 2.5, 2.5));
        assert!(close(one.coverage, 0.0));
    }

    #[test]
    fn the_sign_test_is_the_binomial_tail() {
        assert!(close(sign_test(0, 10), 1.0));
        assert!(close(sign_test(10, 10), 1.0 / 1024.0));
        assert!(close(sign_test(9, 10), 11.0 / 1024.0));
        // 12 of 15: P(B >= 12) = (455 + 105 + 15 + 1) / 32768.
        assert!(close(sign_test(12, 15), 576.0 / 32768.0));
    }
}
