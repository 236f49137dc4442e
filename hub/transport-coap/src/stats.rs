//! Counters of the CoAP transport, and a limiter that keeps bad input from flooding the log.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use serde::Serialize;

/// What the CoAP transport has done since it started, for status and metrics. Every field counts events.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct CoapStats {
    /// Datagrams received by the server endpoint.
    pub datagrams_in: u64,
    /// Requests handed to the runtime.
    pub requests_in: u64,
    /// 2.04 Changed: delivered to at least one plugin.
    pub changed: u64,
    /// 2.31 Continue: a Block1 block accepted, more expected.
    pub block1_continue: u64,
    /// Block1 uploads reassembled completely.
    pub block1_completed: u64,
    /// 2.05 answers to `GET /.well-known/core` (each block counts).
    pub discovery: u64,
    /// 4.00 Bad Request: payload not well-formed for its content format, or bad path, query or Block option.
    pub bad_request: u64,
    /// 4.01 Unauthorized: token missing or invalid.
    pub unauthorized: u64,
    /// 4.02 Bad Option: an unknown critical option (OSCORE included) or a repeated one.
    pub bad_option: u64,
    /// 4.03 Forbidden: a valid token not allowed on the path.
    pub forbidden: u64,
    /// 4.04 Not Found: no plugin subscribes to the path.
    pub not_found: u64,
    /// 4.05 Method Not Allowed.
    pub method_not_allowed: u64,
    /// 4.08 Request Entity Incomplete: a Block1 block out of order or without its start.
    pub incomplete: u64,
    /// 4.13 Request Entity Too Large.
    pub too_large: u64,
    /// 4.15 Unsupported Content-Format.
    pub unsupported_format: u64,
    /// 5.03 Service Unavailable: the plugins' queues were full, the runtime did not answer in time, or too many
    /// Block1 uploads were open.
    pub unavailable: u64,
    /// 5.05 Proxying Not Supported.
    pub proxying_refused: u64,
    /// Retransmitted requests answered from the de-duplication cache (or dropped while the first copy was still
    /// being handled), never delivered twice.
    pub duplicates: u64,
    /// Datagrams that were not well-formed CoAP (reset when confirmable, dropped otherwise).
    pub malformed: u64,
    /// Empty confirmable messages (CoAP ping) answered with a reset.
    pub pings: u64,
    /// Messages of a kind the endpoint does not expect (a response at the server, a request at the client).
    pub unexpected: u64,
    /// Observation registrations that succeeded (first and re-registrations).
    pub observe_registrations: u64,
    /// Observations re-registered because no notification came within Max-Age plus the margin.
    pub observe_lapsed: u64,
    /// Observation registrations that failed (error code, timeout, reset); retried with backoff.
    pub observe_failures: u64,
    /// Notifications (and poll answers) delivered to the runtime.
    pub notifications: u64,
    /// Notifications dropped as older than one already delivered (RFC 7641 §3.4).
    pub notifications_stale: u64,
    /// Responses or notifications that matched no exchange and got a reset.
    pub unmatched: u64,
    /// Outbound requests for plugins that a device acknowledged with a success code (or sent, when
    /// non-confirmable).
    pub outbound_sent: u64,
    /// Outbound requests that failed: error code, reset, timeout, unresolvable host.
    pub outbound_failed: u64,
    /// Confirmable messages sent again after ACK_TIMEOUT.
    pub retransmissions: u64,
}

macro_rules! counters {
    ($($field:ident),* $(,)?) => {
        /// The live counters behind [`CoapStats`].
        #[derive(Debug, Default)]
        pub(crate) struct Counters {
            $(pub(crate) $field: AtomicU64,)*
        }

        impl Counters {
            pub(crate) fn snapshot(&self) -> CoapStats {
                CoapStats { $($field: self.$field.load(Ordering::Relaxed),)* }
            }
        }
    };
}

counters!(
    datagrams_in,
    requests_in,
    changed,
    block1_continue,
    block1_completed,
    discovery,
    bad_request,
    unauthorized,
    bad_option,
    forbidden,
    not_found,
    method_not_allowed,
    incomplete,
    too_large,
    unsupported_format,
    unavailable,
    proxying_refused,
    duplicates,
    malformed,
    pings,
    unexpected,
    observe_registrations,
    observe_lapsed,
    observe_failures,
    notifications,
    notifications_stale,
    unmatched,
    outbound_sent,
    outbound_failed,
    retransmissions,
);

/// Adds one to a counter.
pub(crate) fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

/// Lets one log line through per interval and counts the rest, so a flood of garbage costs a line a second.
#[derive(Debug)]
pub(crate) struct LogLimiter {
    start: Instant,
    interval_ms: u64,
    next_ms: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub(crate) fn new(interval_ms: u64) -> Self {
        LogLimiter { start: Instant::now(), interval_ms, next_ms: AtomicU64::new(0), suppressed: AtomicU64::new(0) }
    }

    /// `Some(lines suppressed since the last one)` when a line may be written now.
    pub(crate) fn allow(&self) -> Option<u64> {
        let now = self.start.elapsed().as_millis() as u64;
        let next = self.next_ms.load(Ordering::Relaxed);
        if now >= next
            && self.next_ms.compare_exchange(next, now + self.interval_ms, Ordering::Relaxed, Ordering::Relaxed).is_ok()
        {
            return Some(self.suppressed.swap(0, Ordering::Relaxed));
        }
        self.suppressed.fetch_add(1, Ordering::Relaxed);
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limiter_lets_one_line_through_per_interval() {
        let limiter = LogLimiter::new(60_000);
        assert_eq!(limiter.allow(), Some(0));
        assert_eq!(limiter.allow(), None);
        assert_eq!(limiter.allow(), None);
        let fast = LogLimiter::new(0);
        assert_eq!(fast.allow(), Some(0));
        assert!(fast.allow().is_some());
    }
}
