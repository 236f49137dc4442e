//! Per-plugin counters and call latency.

use std::{
    collections::VecDeque,
    sync::{
        Mutex, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
};

use serde::Serialize;

/// How many recent call latencies the percentiles are computed over.
pub const LATENCY_WINDOW: usize = 1024;

/// Live counters of one plugin. Updated by its driver (one writer), read by anyone.
#[derive(Debug, Default)]
pub struct Counters {
    pub(crate) messages_in: AtomicU64,
    pub(crate) messages_out: AtomicU64,
    pub(crate) updates: AtomicU64,
    pub(crate) rejects: AtomicU64,
    pub(crate) errors: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) restarts: AtomicU64,
    pub(crate) calls: AtomicU64,
    last_error: Mutex<Option<String>>,
    // Written once per call (not per message) by the plugin's driver alone, so the lock is uncontended.
    latencies_us: Mutex<VecDeque<u64>>,
}

/// A snapshot of a plugin's counters.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct PluginStats {
    /// Inbound messages handed to the plugin.
    pub messages_in: u64,
    /// Outbound messages the plugin sent (after the grant check).
    pub messages_out: u64,
    /// Resource updates the twin accepted from the plugin.
    pub updates: u64,
    /// Updates, model documents and outbound messages refused (outside the grant, denied by policy, invalid).
    pub rejects: u64,
    /// Failed calls (trap, panic, deadline, memory, garbage output) and failed starts.
    pub errors: u64,
    /// Inbound messages dropped (queue full, or queued when the plugin stopped or was quarantined).
    pub dropped: u64,
    /// Instances created after a failure.
    pub restarts: u64,
    /// Calls made.
    pub calls: u64,
    /// The last error, if any.
    pub last_error: Option<String>,
    /// Median call latency over the recent window, in microseconds.
    pub latency_p50_us: u64,
    /// 99th-percentile call latency over the recent window, in microseconds.
    pub latency_p99_us: u64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Ordering::Relaxed);
    }

    pub(crate) fn set_last_error(&self, message: String) {
        *self.last_error.lock().unwrap_or_else(PoisonError::into_inner) = Some(message);
    }

    pub(crate) fn record_latency(&self, micros: u64) {
        let mut window = self.latencies_us.lock().unwrap_or_else(PoisonError::into_inner);
        if window.len() == LATENCY_WINDOW {
            window.pop_front();
        }
        window.push_back(micros);
    }

    /// A snapshot.
    pub fn snapshot(&self) -> PluginStats {
        let mut sorted: Vec<u64> =
            self.latencies_us.lock().unwrap_or_else(PoisonError::into_inner).iter().copied().collect();
        sorted.sort_unstable();
        let pct = |p: usize| {
            if sorted.is_empty() { 0 } else { sorted.get((sorted.len() - 1) * p / 100).copied().unwrap_or(0) }
        };
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        PluginStats {
            messages_in: get(&self.messages_in),
            messages_out: get(&self.messages_out),
            updates: get(&self.updates),
            rejects: get(&self.rejects),
            errors: get(&self.errors),
            dropped: get(&self.dropped),
            restarts: get(&self.restarts),
            calls: get(&self.calls),
            last_error: self.last_error.lock().unwrap_or_else(PoisonError::into_inner).clone(),
            latency_p50_us: pct(50),
            latency_p99_us: pct(99),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_over_the_window() {
        let c = Counters::default();
        assert_eq!(c.snapshot().latency_p99_us, 0);
        for us in 1..=100 {
            c.record_latency(us);
        }
        let s = c.snapshot();
        assert_eq!((s.latency_p50_us, s.latency_p99_us), (50, 99));
        for _ in 0..LATENCY_WINDOW {
            c.record_latency(7);
        }
        assert_eq!(c.snapshot().latency_p99_us, 7);
    }
}
