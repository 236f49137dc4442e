//! Observations of device resources (RFC 7641): register with `GET` + Observe 0, keep the token, deliver each
//! fresh notification, and register again when the observation lapses (no notification within Max-Age plus a
//! margin), ends (an error code, a reset, a notification without Observe) or cannot be made (with backoff).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use coap_lite::{Packet, RequestType};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, Event, request_packet};
use crate::stats::bump;
use crate::wire::{self, DeviceUri, option};
use crate::{
    Delivery, META_CODE, META_CONTENT_FORMAT, META_OBSERVE, META_PEER, META_PROVIDER, META_URI, TRANSPORT, now_us,
};

/// The Max-Age a notification without the option has (RFC 7252 §5.10.5).
const DEFAULT_MAX_AGE: Duration = Duration::from_secs(60);
/// After this long without a notification, any sequence number counts as fresh (RFC 7641 §3.4).
const FRESHNESS: Duration = Duration::from_secs(128);

/// One configured observation.
#[derive(Debug, Clone)]
pub(crate) struct Target {
    pub(crate) configured: String,
    pub(crate) uri: DeviceUri,
    pub(crate) provider: Option<String>,
    pub(crate) interval: Duration,
}

pub(crate) struct ObserveSettings {
    pub(crate) margin: Duration,
    pub(crate) backoff_min: Duration,
    pub(crate) backoff_max: Duration,
}

/// How one registration ended.
enum Ended {
    /// Register again at once (the observation lapsed, or the resource is polled).
    Again,
    /// Register again after the backoff.
    Failed(String),
    /// The transport is stopping.
    Stop,
}

/// Observes `target` until `cancel`.
pub(crate) async fn run(
    client: Arc<Client>,
    target: Target,
    inbound: mpsc::Sender<Delivery>,
    settings: ObserveSettings,
    cancel: CancellationToken,
) {
    let mut backoff = settings.backoff_min;
    loop {
        let ended = tokio::select! {
            _ = cancel.cancelled() => Ended::Stop,
            ended = observe_once(&client, &target, &inbound, &settings, &cancel) => ended,
        };
        match ended {
            Ended::Stop => return,
            Ended::Again => backoff = settings.backoff_min,
            Ended::Failed(reason) => {
                bump(&client.counters.observe_failures);
                tracing::info!(uri = %target.configured, reason, retry_in = ?backoff, "CoAP observation failed");
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                backoff = (backoff * 2).min(settings.backoff_max);
            }
        }
    }
}

async fn observe_once(
    client: &Arc<Client>,
    target: &Target,
    inbound: &mpsc::Sender<Delivery>,
    settings: &ObserveSettings,
    cancel: &CancellationToken,
) -> Ended {
    let peer = match target.uri.resolve().await {
        Ok(peer) => peer,
        Err(e) => return Ended::Failed(format!("cannot resolve {}: {e}", target.uri.host)),
    };
    let mut route = client.route();
    let mut request = request_packet(RequestType::Get, &target.uri);
    wire::add_uint(&mut request, option::OBSERVE, 0);
    let first = match route.request(peer, request, true).await {
        Ok(response) => response,
        Err(e) => return Ended::Failed(e.to_string()),
    };
    if !wire::is_success(first.header.code) {
        return Ended::Failed(format!("registration answered {}", first.header.code));
    }
    bump(&client.counters.observe_registrations);
    let observing = observe_value(&first);
    if !deliver(client, target, inbound, peer, &first, observing).await {
        return Ended::Stop;
    }
    let Some(mut last_seq) = observing else {
        // Not observable: poll.
        tokio::select! {
            _ = cancel.cancelled() => return Ended::Stop,
            _ = tokio::time::sleep(target.interval) => return Ended::Again,
        }
    };
    tracing::debug!(uri = %target.configured, "CoAP observation registered");
    let mut last_at = Instant::now();
    let mut deadline = tokio::time::Instant::now() + max_age(&first) + settings.margin;
    loop {
        let event = tokio::select! {
            _ = cancel.cancelled() => return Ended::Stop,
            _ = tokio::time::sleep_until(deadline) => {
                bump(&client.counters.observe_lapsed);
                tracing::info!(uri = %target.configured, "CoAP observation lapsed; registering again");
                return Ended::Again;
            }
            event = route.next() => event,
        };
        let notification = match event {
            None => return Ended::Stop,
            Some(Event::Reset(_)) => return Ended::Failed("the device reset the observation".to_owned()),
            Some(Event::Ack(_)) => continue,
            Some(Event::Message(packet, from)) => {
                if from != peer || packet.get_token() != route.token() {
                    continue;
                }
                *packet
            }
        };
        if !wire::is_success(notification.header.code) {
            return Ended::Failed(format!("the device ended the observation with {}", notification.header.code));
        }
        let Some(seq) = observe_value(&notification) else {
            // A final response without Observe: the device ended the observation (RFC 7641 §3.2).
            deliver(client, target, inbound, peer, &notification, None).await;
            return Ended::Failed("the device ended the observation".to_owned());
        };
        if !fresher(last_seq, seq, last_at.elapsed()) {
            bump(&client.counters.notifications_stale);
            continue;
        }
        last_seq = seq;
        last_at = Instant::now();
        deadline = tokio::time::Instant::now() + max_age(&notification) + settings.margin;
        if !deliver(client, target, inbound, peer, &notification, Some(seq)).await {
            return Ended::Stop;
        }
    }
}

/// Hands a notification (completed block-wise when needed) to the runtime; false once the channel is closed.
async fn deliver(
    client: &Arc<Client>,
    target: &Target,
    inbound: &mpsc::Sender<Delivery>,
    peer: SocketAddr,
    packet: &Packet,
    seq: Option<u32>,
) -> bool {
    let payload = match client.rest_of_body(peer, &target.uri, packet).await {
        Ok(body) => body,
        Err(e) => {
            if let Some(suppressed) = client.log.allow() {
                tracing::warn!(uri = %target.configured, error = %e, suppressed, "CoAP notification dropped");
            }
            return true;
        }
    };
    let mut metadata = BTreeMap::new();
    if let Some(seq) = seq {
        metadata.insert(META_OBSERVE.to_owned(), seq.to_string());
    }
    if let Some(Some(cf)) = wire::first_uint(packet, option::CONTENT_FORMAT, 2) {
        metadata.insert(META_CONTENT_FORMAT.to_owned(), cf.to_string());
    }
    metadata.insert(META_PEER.to_owned(), peer.to_string());
    metadata.insert(META_CODE.to_owned(), wire::code_text(packet.header.code));
    metadata.insert(META_URI.to_owned(), target.configured.clone());
    if let Some(provider) = &target.provider {
        metadata.insert(META_PROVIDER.to_owned(), provider.clone());
    }
    let message = hub_plugin_sdk::abi::InboundMessage {
        transport: TRANSPORT.to_owned(),
        address: target.uri.address(),
        payload: payload.into(),
        metadata,
        received_us: now_us(),
    };
    if inbound.send(Delivery::new(message, None)).await.is_err() {
        return false;
    }
    bump(&client.counters.notifications);
    true
}

/// The Observe sequence number (3 bytes at most).
fn observe_value(packet: &Packet) -> Option<u32> {
    wire::first_uint(packet, option::OBSERVE, 3).flatten().map(|v| v as u32)
}

fn max_age(packet: &Packet) -> Duration {
    match wire::first_uint(packet, option::MAX_AGE, 4) {
        Some(Some(seconds)) => Duration::from_secs(seconds),
        _ => DEFAULT_MAX_AGE,
    }
}

/// Whether notification `v2` is newer than `v1` (RFC 7641 §3.4), 24-bit sequence numbers.
fn fresher(v1: u32, v2: u32, since_last: Duration) -> bool {
    const HALF: u32 = 1 << 23;
    (v1 < v2 && v2 - v1 < HALF) || (v1 > v2 && v1 - v2 > HALF) || since_last > FRESHNESS
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn freshness_follows_rfc_7641() {
        let soon = Duration::from_secs(1);
        assert!(fresher(1, 2, soon));
        assert!(!fresher(2, 2, soon));
        assert!(!fresher(5, 3, soon));
        assert!(fresher((1 << 24) - 1, 1, soon), "wrap-around");
        assert!(!fresher(1, (1 << 24) - 1, soon));
        assert!(fresher(5, 3, Duration::from_secs(200)), "after 128 s anything goes");
    }
}
