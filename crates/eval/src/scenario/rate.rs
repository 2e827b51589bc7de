//! A request rate as a function of time, and the arrivals of a Poisson process that follows it.
//!
//! Both `ikukantai bench` (the emulator's load generators) and `ikukantai sim` draw their
//! arrivals from [`RateCurve::gap`], so a scenario means the same load to both.

/// One stretch of a curve: the rate goes linearly from `from` to `to` (requests per second)
/// between `start` and `end` (seconds since the level began).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Piece {
    start: f64,
    end: f64,
    from: f64,
    to: f64,
}

impl Piece {
    fn rate(&self, t: f64) -> f64 {
        if self.from == self.to || !self.end.is_finite() {
            return self.from;
        }
        self.from + (self.to - self.from) * (t - self.start) / (self.end - self.start)
    }
}

/// A rate over a level's time: piecewise linear, the last value holding for ever.
#[derive(Debug, Clone, PartialEq)]
pub struct RateCurve {
    /// In time order, contiguous from 0; the last one ends at infinity and is constant.
    pieces: Vec<Piece>,
}

impl RateCurve {
    /// `rate` requests per second throughout.
    pub fn constant(rate: f64) -> Self {
        Self { pieces: vec![Piece { start: 0.0, end: f64::INFINITY, from: rate, to: rate }] }
    }

    /// Stretches one after another from time 0: each `(seconds, from, to)` ramps linearly (or
    /// holds, when `from == to`); after the last, its final rate holds.
    pub fn stretches(stretches: impl IntoIterator<Item = (f64, f64, f64)>) -> Self {
        let mut pieces = Vec::new();
        let mut t = 0.0;
        for (seconds, from, to) in stretches {
            if seconds > 0.0 {
                pieces.push(Piece { start: t, end: t + seconds, from, to });
                t += seconds;
            }
        }
        let last = pieces.last().map_or(0.0, |p| p.to);
        pieces.push(Piece { start: t, end: f64::INFINITY, from: last, to: last });
        Self { pieces }
    }

    /// The rate at `t` seconds (requests per second). At a boundary, the later stretch's.
    pub fn at(&self, t: f64) -> f64 {
        self.pieces.iter().find(|p| t < p.end).unwrap_or(&self.pieces[self.pieces.len() - 1]).rate(t)
    }

    /// Whether the rate is zero everywhere (no request would ever be sent).
    pub fn is_zero(&self) -> bool {
        self.pieces.iter().all(|p| p.from == 0.0 && p.to == 0.0)
    }

    /// Requests expected between `from` and `to` seconds: the rate's integral.
    pub fn expected(&self, from: f64, to: f64) -> f64 {
        self.pieces
            .iter()
            .map(|p| {
                let (a, b) = (from.max(p.start), to.min(p.end));
                if b <= a { 0.0 } else { (p.rate(a) + p.rate(b)) / 2.0 * (b - a) }
            })
            .sum()
    }

    /// Seconds from `t` to the next arrival, given `e` drawn from the unit exponential: where the
    /// rate's integral from `t` reaches `e` (a non-homogeneous Poisson process by inversion).
    /// `None` when the rate is zero from `t` on. On a constant stretch this is `e / rate`,
    /// computed as `e × (1 / rate)` like `rand_distr::Exp`, so a constant load gives the very
    /// arrivals it gave before curves existed.
    pub fn gap(&self, t: f64, e: f64) -> Option<f64> {
        let mut need = e.max(0.0);
        // Seconds already passed over, kept apart from `t` so that the first stretch's answer
        // is not rounded through `t`.
        let mut passed = 0.0;
        for p in self.pieces.iter().filter(|p| t < p.end) {
            let at = t + passed;
            let a = p.rate(at);
            if !p.end.is_finite() {
                return (a > 0.0).then(|| passed + need * (1.0 / a));
            }
            if p.from == p.to {
                let mass = a * (p.end - at);
                if a > 0.0 && need <= mass {
                    return Some(passed + need * (1.0 / a));
                }
                need -= mass;
            } else {
                let mass = (a + p.rate(p.end)) / 2.0 * (p.end - at);
                if need <= mass && mass > 0.0 {
                    // Solve a·d + slope·d²/2 = need for the smaller root, in the form that
                    // stays exact when the slope is tiny.
                    let slope = (p.to - p.from) / (p.end - p.start);
                    let root = (a * a + 2.0 * slope * need).max(0.0).sqrt();
                    return Some(passed + (2.0 * need / (a + root)).min(p.end - at));
                }
                need -= mass;
            }
            passed = p.end - t;
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use rand::SeedableRng;
    use rand::rngs::SmallRng;
    use rand_distr::{Distribution, Exp, Exp1};

    use super::*;

    /// Idle 10 s, a step to 4/s for 5 s, a ramp 4 → 0 over 8 s, then 2/s.
    fn curve() -> RateCurve {
        RateCurve::stretches([(10.0, 0.0, 0.0), (5.0, 4.0, 4.0), (8.0, 4.0, 0.0), (1.0, 2.0, 2.0)])
    }

    #[test]
    fn the_rate_is_piecewise_with_the_later_stretch_at_a_boundary() {
        let c = curve();
        assert_eq!([c.at(0.0), c.at(9.999), c.at(10.0), c.at(14.999)], [0.0, 0.0, 4.0, 4.0]);
        assert_eq!([c.at(15.0), c.at(19.0), c.at(21.0)], [4.0, 2.0, 1.0]);
        assert_eq!([c.at(23.0), c.at(24.0), c.at(1e6)], [2.0, 2.0, 2.0]);
        assert_eq!(RateCurve::constant(3.0).at(1e9), 3.0);
        assert!(RateCurve::stretches([(5.0, 0.0, 0.0)]).is_zero() && !c.is_zero());
    }

    #[test]
    fn expected_requests_are_the_integral() {
        let c = curve();
        assert_eq!(c.expected(0.0, 10.0), 0.0);
        assert_eq!(c.expected(0.0, 15.0), 20.0);
        assert_eq!(c.expected(15.0, 23.0), 16.0, "a ramp 4 → 0 over 8 s");
        assert_eq!(c.expected(19.0, 25.0), 4.0 + 4.0, "half a ramp, then 2 s at 2/s");
    }

    #[test]
    fn a_gap_skips_idle_time_and_lands_where_the_integral_reaches_e() {
        let c = curve();
        assert_eq!(c.gap(0.0, 2.0), Some(10.5), "idle until 10 s, then 2 at 4/s");
        assert_eq!(c.gap(14.0, 4.0), Some(1.0), "exactly the rest of the step");
        // Into the ramp: 4 in the step's last second, then 3.75 of the ramp's 16: the rate is
        // 4 − d/2 at 15 + d s, ∫ = 4d − d²/4 = 3.75 → d = 1.
        let g = c.gap(14.0, 7.75).unwrap();
        assert!((g - 2.0).abs() < 1e-12, "{g}");
        // Past the ramp's 16, on to the final 2/s.
        let g = c.gap(15.0, 17.0).unwrap();
        assert!((g - 8.5).abs() < 1e-12, "{g}");
        assert_eq!(RateCurve::stretches([(5.0, 1.0, 1.0), (1.0, 0.0, 0.0)]).gap(4.0, 2.0), None);
    }

    #[test]
    fn a_constant_curve_draws_what_rand_distr_exp_draws() {
        let (mut a, mut b) = (SmallRng::seed_from_u64(5), SmallRng::seed_from_u64(5));
        let exp = Exp::new(7.3).unwrap();
        let c = RateCurve::constant(7.3);
        for _ in 0..1000 {
            let e: f64 = Exp1.sample(&mut b);
            assert_eq!(Some(exp.sample(&mut a)), c.gap(3.0, e));
        }
    }

    #[test]
    fn arrivals_follow_the_curve() {
        let c = curve();
        let mut rng = SmallRng::seed_from_u64(1);
        let mut counts = [0usize; 4];
        for _ in 0..200 {
            let mut t = 0.0;
            while let Some(g) = c.gap(t, Exp1.sample(&mut rng)) {
                t += g;
                if t >= 24.0 {
                    break;
                }
                counts[[10.0, 15.0, 23.0, 24.0].iter().position(|&end| t < end).unwrap()] += 1;
            }
        }
        assert_eq!(counts[0], 0, "nothing while idle");
        // 200 × 20, 200 × 16 and 200 × 2 expected; five standard deviations.
        for (got, want) in counts[1..].iter().zip([4000.0, 3200.0, 400.0]) {
            assert!((*got as f64 - want).abs() < 5.0 * f64::sqrt(want), "{counts:?}");
        }
    }
}
