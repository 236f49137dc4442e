//! Reading the hub's Server-Sent Events in benchmarks: each event's JSON with the time it arrived, and
//! percentiles of the latencies measured from them.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use futures::StreamExt;
use serde_json::Value;

/// Microseconds since the Unix epoch.
pub fn now_us() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as i64).unwrap_or(0)
}

/// Reads `response` (an open `GET /api/v1/events`) and hands `on_event` each event's JSON with its arrival time
/// (µs since the epoch); `on_event` returns a latency in µs for the events it measures. Stops after `total`
/// latencies, or when no event came for `idle`. Returns the latencies, sorted.
pub async fn latencies(
    response: reqwest::Response,
    total: usize,
    idle: Duration,
    mut on_event: impl FnMut(&Value, i64) -> Option<i64>,
) -> Vec<i64> {
    let mut body = response.bytes_stream();
    let (mut buffer, mut out) = (String::new(), Vec::with_capacity(total));
    while out.len() < total {
        let Ok(Some(Ok(chunk))) = tokio::time::timeout(idle, body.next()).await else {
            break;
        };
        let received = now_us();
        buffer.push_str(&String::from_utf8_lossy(&chunk));
        while let Some(end) = buffer.find('\n') {
            let line: String = buffer.drain(..=end).collect();
            if let Some(data) = line.strip_prefix("data:")
                && let Ok(event) = serde_json::from_str::<Value>(data.trim())
                && let Some(latency) = on_event(&event, received)
            {
                out.push(latency);
            }
        }
    }
    out.sort_unstable();
    out
}

/// The `p` quantile (0..=1) of sorted microseconds, in milliseconds; NaN when empty.
pub fn percentile_ms(sorted: &[i64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize] as f64 / 1000.0
}

/// `p50 x ms, p99 y ms, max z ms` of sorted microseconds.
pub fn summary(sorted: &[i64]) -> String {
    format!(
        "p50 {:.2} ms, p99 {:.2} ms, max {:.2} ms",
        percentile_ms(sorted, 0.5),
        percentile_ms(sorted, 0.99),
        sorted.last().map(|&l| l as f64 / 1000.0).unwrap_or(f64::NAN)
    )
}
