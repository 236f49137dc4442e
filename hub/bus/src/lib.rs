//! Fan-out of committed changes to every subscriber (SSE and WebSocket streams, and later rules, federation).
//!
//! The bus carries [`Event`]s, each a batch of updates or a model change, numbered with a gap-free sequence.
//! It is bounded: every subscriber reads from one shared ring of `capacity` events. A subscriber that falls
//! more than `capacity` events behind loses the oldest ones (telemetry fan-out is drop-oldest, never
//! back-pressure on ingest) and is told how many it lost; the bus counts every such drop in
//! [`BusStats::dropped`]. Publishing never blocks and never waits for a subscriber.

use std::sync::{
    Arc, Mutex,
    atomic::{AtomicU64, Ordering},
};

use hub_model::{Name, Update};
use tokio::sync::broadcast;

/// What happened.
#[derive(Debug, Clone, PartialEq)]
pub enum Change {
    /// New values, already durable and applied to the twin.
    Updates(Arc<[Update]>),
    /// A provider's model changed (resources declared or re-declared).
    ModelChanged(Name),
    /// A provider was deleted with its history.
    ProviderDeleted(Name),
    /// An event published by a rule (or, later, an app): not a resource value, just news for subscribers.
    Published {
        /// Who published it (`rule:<id>`).
        source: String,
        /// The event's topic.
        topic: String,
        /// The event's payload.
        payload: serde_json::Value,
    },
}

/// One numbered change on the bus.
#[derive(Debug, Clone, PartialEq)]
pub struct Event {
    /// Position in the bus's sequence: 1, 2, 3, ... with no gaps, in publishing order.
    pub seq: u64,
    /// The change.
    pub change: Change,
}

/// Counters of a bus.
#[derive(Debug, Default)]
pub struct BusStats {
    /// Events published.
    pub published: AtomicU64,
    /// Events a lagging subscriber lost (summed over subscribers).
    pub dropped: AtomicU64,
}

/// The bus. Cheap to clone; clones share the ring.
#[derive(Clone)]
pub struct Bus {
    tx: broadcast::Sender<Arc<Event>>,
    // The sequence number and the send happen under one lock so that sequence order is delivery order.
    // It is held for one ring insert per batch, never across an await.
    seq: Arc<Mutex<u64>>,
    stats: Arc<BusStats>,
}

impl Bus {
    /// A bus whose ring holds `capacity` events (at least 1).
    pub fn new(capacity: usize) -> Bus {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Bus { tx, seq: Arc::new(Mutex::new(0)), stats: Arc::new(BusStats::default()) }
    }

    /// Publishes a change; returns its sequence number. Never blocks on subscribers.
    pub fn publish(&self, change: Change) -> u64 {
        let mut seq = self.seq.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        *seq += 1;
        let event = Arc::new(Event { seq: *seq, change });
        // An error only means that nobody is subscribed right now, which is fine.
        let _ = self.tx.send(event);
        self.stats.published.fetch_add(1, Ordering::Relaxed);
        *seq
    }

    /// A new subscription that sees every event published from now on.
    pub fn subscribe(&self) -> Subscription {
        Subscription { rx: self.tx.subscribe(), stats: self.stats.clone() }
    }

    /// The sequence number of the last published event (0 before the first).
    pub fn last_seq(&self) -> u64 {
        *self.seq.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The bus counters.
    pub fn stats(&self) -> &BusStats {
        &self.stats
    }

    /// How many subscriptions are open.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }
}

/// What a subscriber receives.
#[derive(Debug, Clone, PartialEq)]
pub enum Received {
    /// The next event.
    Event(Arc<Event>),
    /// The subscriber fell behind and this many events were dropped before the next one.
    Lagged(u64),
    /// The bus is gone (the hub is shutting down).
    Closed,
}

/// One subscriber's view of the bus.
pub struct Subscription {
    rx: broadcast::Receiver<Arc<Event>>,
    stats: Arc<BusStats>,
}

impl Subscription {
    /// Waits for the next event.
    pub async fn recv(&mut self) -> Received {
        match self.rx.recv().await {
            Ok(event) => Received::Event(event),
            Err(broadcast::error::RecvError::Lagged(n)) => {
                self.stats.dropped.fetch_add(n, Ordering::Relaxed);
                Received::Lagged(n)
            }
            Err(broadcast::error::RecvError::Closed) => Received::Closed,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> Name {
        Name::new(s).unwrap()
    }

    #[tokio::test]
    async fn delivers_in_order_with_gap_free_sequence() {
        let bus = Bus::new(16);
        let mut sub = bus.subscribe();
        for i in 0..5 {
            bus.publish(Change::ModelChanged(name(&format!("p{i}"))));
        }
        for want in 1..=5 {
            match sub.recv().await {
                Received::Event(e) => assert_eq!(e.seq, want),
                other => panic!("unexpected {other:?}"),
            }
        }
        assert_eq!(bus.last_seq(), 5);
    }

    #[tokio::test]
    async fn a_slow_subscriber_loses_the_oldest_and_is_told() {
        let bus = Bus::new(4);
        let mut slow = bus.subscribe();
        for i in 0..10 {
            bus.publish(Change::ProviderDeleted(name(&format!("p{i}"))));
        }
        assert_eq!(slow.recv().await, Received::Lagged(6));
        match slow.recv().await {
            Received::Event(e) => assert_eq!(e.seq, 7),
            other => panic!("unexpected {other:?}"),
        }
        assert_eq!(bus.stats().dropped.load(Ordering::Relaxed), 6);
        assert_eq!(bus.stats().published.load(Ordering::Relaxed), 10);
    }

    #[tokio::test]
    async fn closed_when_the_bus_is_dropped() {
        let bus = Bus::new(4);
        let mut sub = bus.subscribe();
        drop(bus);
        assert_eq!(sub.recv().await, Received::Closed);
    }
}
