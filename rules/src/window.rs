//! Sliding windows with O(1) amortised updates.
//!
//! A window keeps its samples in a deque (they are needed to know what leaves the window) plus running sums
//! for `avg`, `sum` and `stddev`, and monotonic deques for `min` and `max`: each sample enters and leaves
//! each deque at most once. Sums are kept relative to a shift (the first sample of a non-empty run) to keep
//! `stddev` precise, and recomputed from the samples after as many removals as the window holds, which keeps
//! floating-point drift bounded at O(1) amortised cost.

use std::collections::VecDeque;

use crate::{
    ast::{AggFunc, Micros, Window},
    value::Val,
};

#[derive(Debug, Clone)]
pub(crate) struct SlidingWindow {
    window: Window,
    /// At most this many samples, whatever the window says (the oldest are dropped first).
    cap: usize,
    /// Whether samples that are not numbers are dropped (all aggregates but `count`).
    numeric: bool,
    track_min: bool,
    track_max: bool,
    /// (time, value) in arrival order; value is 0 for non-numeric samples of a `count` window.
    samples: VecDeque<(Micros, f64)>,
    /// The sequence number the next sample gets; the front sample's is `next_seq - samples.len()`.
    next_seq: u64,
    shift: f64,
    sum: f64,
    sum_sq: f64,
    /// Increasing values (front = minimum), with their sequence numbers.
    mins: VecDeque<(u64, f64)>,
    /// Decreasing values (front = maximum).
    maxs: VecDeque<(u64, f64)>,
    removed_since_recompute: usize,
}

impl SlidingWindow {
    pub(crate) fn new(window: Window, func: AggFunc, max_samples: usize) -> SlidingWindow {
        let cap = match window {
            Window::Count(n) => (n as usize).min(max_samples),
            Window::Time(_) => max_samples,
        }
        .max(1);
        SlidingWindow {
            window,
            cap,
            numeric: func.is_numeric(),
            track_min: func == AggFunc::Min,
            track_max: func == AggFunc::Max,
            samples: VecDeque::new(),
            next_seq: 0,
            shift: 0.0,
            sum: 0.0,
            sum_sq: 0.0,
            mins: VecDeque::new(),
            maxs: VecDeque::new(),
            removed_since_recompute: 0,
        }
    }

    /// Adds a sample taken at `t` (never earlier than the previous sample's time).
    pub(crate) fn push(&mut self, t: Micros, v: &Val) {
        let x = match v {
            Val::Num(x) => *x,
            Val::Unknown => return,
            _ if self.numeric => return,
            _ => 0.0,
        };
        if self.samples.len() >= self.cap {
            self.pop_front();
        }
        if self.samples.is_empty() {
            self.shift = x;
            self.sum = 0.0;
            self.sum_sq = 0.0;
        }
        let seq = self.next_seq;
        self.next_seq += 1;
        self.samples.push_back((t, x));
        let d = x - self.shift;
        self.sum += d;
        self.sum_sq += d * d;
        if self.track_min {
            while self.mins.back().is_some_and(|&(_, m)| m >= x) {
                self.mins.pop_back();
            }
            self.mins.push_back((seq, x));
        }
        if self.track_max {
            while self.maxs.back().is_some_and(|&(_, m)| m <= x) {
                self.maxs.pop_back();
            }
            self.maxs.push_back((seq, x));
        }
    }

    fn pop_front(&mut self) {
        let front_seq = self.next_seq - self.samples.len() as u64;
        let Some((_, x)) = self.samples.pop_front() else { return };
        if self.mins.front().is_some_and(|&(s, _)| s == front_seq) {
            self.mins.pop_front();
        }
        if self.maxs.front().is_some_and(|&(s, _)| s == front_seq) {
            self.maxs.pop_front();
        }
        if self.samples.is_empty() {
            self.sum = 0.0;
            self.sum_sq = 0.0;
            self.removed_since_recompute = 0;
            return;
        }
        let d = x - self.shift;
        self.sum -= d;
        self.sum_sq -= d * d;
        self.removed_since_recompute += 1;
        if self.removed_since_recompute >= self.samples.len().max(1024) {
            self.recompute();
        }
    }

    fn recompute(&mut self) {
        self.shift = self.samples.front().map_or(0.0, |s| s.1);
        let (mut sum, mut sum_sq) = (0.0, 0.0);
        for &(_, x) in &self.samples {
            let d = x - self.shift;
            sum += d;
            sum_sq += d * d;
        }
        self.sum = sum;
        self.sum_sq = sum_sq;
        self.removed_since_recompute = 0;
    }

    /// Drops the samples that fell out of a time window: the window at `now` is `(now - span, now]`.
    pub(crate) fn evict(&mut self, now: Micros) {
        if let Window::Time(span) = self.window {
            let horizon = now.saturating_sub(span);
            while self.samples.front().is_some_and(|&(t, _)| t <= horizon) {
                self.pop_front();
            }
        }
    }

    /// When the oldest sample leaves a time window (the value may change then without any update).
    pub(crate) fn expiry(&self) -> Option<Micros> {
        match self.window {
            Window::Time(span) => self.samples.front().map(|&(t, _)| t.saturating_add(span)),
            Window::Count(_) => None,
        }
    }

    /// The aggregate over the window at `now`.
    pub(crate) fn value(&mut self, func: AggFunc, now: Micros) -> Val {
        self.evict(now);
        let n = self.samples.len();
        if n == 0 {
            return if func == AggFunc::Count { Val::Num(0.0) } else { Val::Unknown };
        }
        let count = n as f64;
        let first = self.samples.front().copied();
        let last = self.samples.back().copied();
        match func {
            AggFunc::Count => Val::Num(count),
            AggFunc::Avg => Val::Num(self.shift + self.sum / count),
            AggFunc::Sum => Val::Num(self.shift * count + self.sum),
            AggFunc::Min => self.mins.front().map_or(Val::Unknown, |&(_, m)| Val::Num(m)),
            AggFunc::Max => self.maxs.front().map_or(Val::Unknown, |&(_, m)| Val::Num(m)),
            AggFunc::Stddev => {
                let mean = self.sum / count;
                Val::Num((self.sum_sq / count - mean * mean).max(0.0).sqrt())
            }
            AggFunc::Delta => match (first, last) {
                (Some(a), Some(b)) if n >= 2 => Val::Num(b.1 - a.1),
                _ => Val::Unknown,
            },
            AggFunc::Rate => match (first, last) {
                (Some(a), Some(b)) if n >= 2 && b.0 > a.0 => Val::Num((b.1 - a.1) / ((b.0 - a.0) as f64 / 1e6)),
                _ => Val::Unknown,
            },
        }
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.samples.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: Micros = 1_000_000;

    fn num(v: Val) -> f64 {
        v.as_f64().unwrap()
    }

    /// The same aggregates computed naively, for comparison.
    fn naive(samples: &[(Micros, f64)], func: AggFunc) -> Option<f64> {
        let xs: Vec<f64> = samples.iter().map(|s| s.1).collect();
        let n = xs.len() as f64;
        if xs.is_empty() {
            return (func == AggFunc::Count).then_some(0.0);
        }
        let mean = xs.iter().sum::<f64>() / n;
        Some(match func {
            AggFunc::Avg => mean,
            AggFunc::Sum => xs.iter().sum(),
            AggFunc::Min => xs.iter().copied().fold(f64::INFINITY, f64::min),
            AggFunc::Max => xs.iter().copied().fold(f64::NEG_INFINITY, f64::max),
            AggFunc::Count => n,
            AggFunc::Stddev => (xs.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / n).sqrt(),
            AggFunc::Delta => return (xs.len() >= 2).then(|| xs[xs.len() - 1] - xs[0]),
            AggFunc::Rate => {
                let (a, b) = (samples[0], samples[samples.len() - 1]);
                return (xs.len() >= 2 && b.0 > a.0).then(|| (b.1 - a.1) / ((b.0 - a.0) as f64 / 1e6));
            }
        })
    }

    #[test]
    fn time_windows_match_a_naive_computation() {
        let mut seed: u64 = 7;
        for func in AggFunc::ALL {
            let mut w = SlidingWindow::new(Window::Time(10 * S), func, 100_000);
            let mut all: Vec<(Micros, f64)> = Vec::new();
            let mut t = 0;
            for _ in 0..5_000 {
                seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                t += ((seed >> 33) % 3) as i64 * S / 2;
                let x = ((seed >> 40) % 1000) as f64 / 10.0 + 1e6;
                w.push(t, &Val::Num(x));
                all.push((t, x));
                let inside: Vec<(Micros, f64)> = all.iter().copied().filter(|s| s.0 > t - 10 * S).collect();
                let got = w.value(func, t).as_f64();
                match (got, naive(&inside, func)) {
                    (Some(g), Some(want)) => {
                        assert!((g - want).abs() < 1e-6 * want.abs().max(1.0), "{func:?} {g} {want}")
                    }
                    (g, want) => assert_eq!(g, want, "{func:?}"),
                }
            }
        }
    }

    #[test]
    fn count_windows_keep_the_last_n() {
        let mut w = SlidingWindow::new(Window::Count(3), AggFunc::Max, 100);
        for (i, x) in [5.0, 1.0, 2.0, 3.0].into_iter().enumerate() {
            w.push(i as i64, &Val::Num(x));
        }
        assert_eq!(w.len(), 3);
        assert_eq!(num(w.value(AggFunc::Max, 10)), 3.0);
        let mut c = SlidingWindow::new(Window::Count(2), AggFunc::Count, 100);
        c.push(0, &Val::Str("a".into()));
        c.push(1, &Val::Bool(true));
        c.push(2, &Val::Unknown);
        assert_eq!(num(c.value(AggFunc::Count, 5)), 2.0);
    }

    #[test]
    fn empty_windows_are_unknown_and_expire() {
        let mut w = SlidingWindow::new(Window::Time(5 * S), AggFunc::Avg, 100);
        assert!(w.value(AggFunc::Avg, 0).is_unknown());
        w.push(S, &Val::Num(4.0));
        assert_eq!(w.expiry(), Some(6 * S));
        assert_eq!(num(w.value(AggFunc::Avg, 5 * S)), 4.0);
        assert!(w.value(AggFunc::Avg, 6 * S).is_unknown());
        assert!(w.value(AggFunc::Avg, 6 * S).is_unknown());
        w.push(7 * S, &Val::Str("x".into()));
        assert_eq!(w.len(), 0);
    }
}
