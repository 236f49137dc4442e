//! One server link: the task that owns one XMPP stream and follows the publish-subscribe nodes the plugins'
//! grants name.
//!
//! The stream (STARTTLS through [`crate::connector`], SASL, resource binding, reconnection with backoff) is
//! `tokio-xmpp`'s `StanzaStream`; the link owns it whole and is the only task that reads or writes it. It tracks
//! its own IQ requests (an id per request, answered in the order the stream delivers them, or timed out after
//! `request_timeout_ms`), so answers, events and the requests they lead to are handled in one place, in stream
//! order.
//!
//! On every new session the link sends its presence, lists the service's nodes (disco#items), subscribes its bare
//! JID to each node that matches a plugin's `xmpp.subscribe` glob, and fetches the newest stored item of the
//! nodes that match `fetch_latest`. The list is taken again every `discover_interval_ms` and whenever the
//! plugins' globs change, so nodes created later are followed too.
//!
//! Items are not lost between a node's creation and the hub's subscription, nor while a session is down: a node
//! that appeared after the link's first listing, or that the link followed in an earlier session, is caught up
//! when it is subscribed: its stored items (`catch_up_items`, oldest first) after the last one delivered are
//! handed over, up to the first one that arrived live meanwhile. The last few item ids of each node are
//! remembered too, and an item delivered once is not delivered again.
//!
//! Each item of a pubsub event from the configured service becomes one `InboundMessage`; handing it over waits
//! for room in the hub's queue, so a slow plugin slows the XMPP session (TCP back-pressure to the server), and
//! nothing is dropped on the hub's side. Events from any other sender are dropped and counted (anyone can send
//! a message to the hub's JID). IQ requests addressed to the hub are answered (a ping with a result, anything
//! else with `service-unavailable`), as RFC 6120 requires.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
    time::Duration,
};

use futures::StreamExt;
use hub_model::Glob;
use hub_plugin_sdk::abi::{InboundMessage, OutboundMessage, Payload, transport};
use serde::Serialize;
use tokio::{
    sync::{mpsc, watch},
    time::Instant,
};
use tokio_util::sync::CancellationToken;
use tokio_xmpp::{
    Stanza,
    jid::{BareJid, Jid},
    minidom::Element,
    parsers::{
        iq::Iq,
        message::Message,
        presence::Presence,
        stanza_error::{DefinedCondition, ErrorType, StanzaError},
    },
    stanzastream::{Event, StanzaStream, StreamEvent},
};

use crate::{META_ITEM_ID, META_PUBLISHER, META_SERVER, META_SERVICE, config::ServerConfig, now_us};

const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
const NS_PING: &str = "urn:xmpp:ping";
/// The namespace a payload without one is parsed in (a client stream's default).
const NS_CLIENT: &str = "jabber:client";
/// How often unanswered requests are checked against their deadline.
const EXPIRY_CHECK: Duration = Duration::from_millis(250);

/// A link's counters and state, shared with the transport for `GET /api/v1/transports`.
#[derive(Default)]
pub(crate) struct LinkShared {
    pub connected: AtomicBool,
    pub counters: LinkCounters,
    pub last_error: Mutex<Option<String>>,
    /// The nodes followed in the current session (emptied when it ends).
    pub nodes: Mutex<BTreeSet<String>>,
}

impl LinkShared {
    pub fn nodes(&self) -> std::sync::MutexGuard<'_, BTreeSet<String>> {
        self.nodes.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn fail(&self, error: String) {
        tracing::warn!(error = %error, "xmpp");
        *self.last_error.lock().unwrap_or_else(|e| e.into_inner()) = Some(error);
    }
}

/// Monotonic counters of one link (summed over links in [`crate::XmppStats`]).
#[derive(Default)]
pub(crate) struct LinkCounters {
    pub sessions: AtomicU64,
    pub disconnects: AtomicU64,
    pub connect_errors: AtomicU64,
    pub items_in: AtomicU64,
    pub dropped_oversized: AtomicU64,
    pub dropped_foreign: AtomicU64,
    pub subscriptions: AtomicU64,
    pub subscribe_errors: AtomicU64,
    pub published: AtomicU64,
    pub caught_up: AtomicU64,
    pub catch_up_gaps: AtomicU64,
    pub duplicates: AtomicU64,
    pub publish_errors: AtomicU64,
    pub discover_errors: AtomicU64,
}

pub(crate) fn add(counter: &AtomicU64, n: u64) {
    counter.fetch_add(n, Ordering::Relaxed);
}

/// What one link reports about itself.
#[derive(Debug, Clone, Serialize)]
pub struct LinkStatus {
    /// The server entry's name.
    pub name: String,
    /// Whether a session is up.
    pub connected: bool,
    /// The nodes followed now.
    pub nodes: usize,
    /// The last error (connection, discovery, subscription or publish), if any.
    pub last_error: Option<String>,
}

/// An item's id, publisher and payload element, borrowed from a received stanza.
type ItemRef<'a> = (Option<&'a str>, Option<&'a str>, &'a Element);

/// How many item ids of each node are remembered to recognise an item delivered twice.
const RECENT_IDS: usize = 32;

/// What a link remembers of a node's items across sessions.
#[derive(Default)]
pub(crate) struct Seen {
    /// The id of the last item delivered.
    last: Option<String>,
    /// The ids of the last items delivered with a digest of their payload, oldest first. An item is a duplicate
    /// when both match: a node may publish again under the same id (XEP-0060: the new item replaces the old), and
    /// that is news.
    recent: VecDeque<(String, u64)>,
}

/// Why items were fetched.
#[derive(Debug)]
enum Fetch {
    /// The newest item, on subscribing (`fetch_latest`).
    Latest,
    /// The stored items after the one delivered last (`after`; all of them when `None`), on subscribing to a node
    /// that is new or that an earlier session followed.
    CatchUp { after: Option<String> },
}

/// A request sent to the service, waiting for its answer.
#[derive(Debug)]
enum Request {
    Nodes,
    Subscribe(String),
    Items(String, Fetch),
    Publish(String),
}

struct PendingIq {
    deadline: Instant,
    request: Request,
}

/// The session-scoped state: reset on each new session (with [`LinkShared::nodes`], the nodes followed).
#[derive(Default)]
struct Session {
    online: bool,
    /// Every node the service listed last time.
    known: Vec<String>,
    /// Subscriptions asked for and not answered yet.
    pending: HashSet<String>,
    /// Whether a node listing is on its way (one at a time).
    listing: bool,
    /// Nodes being caught up, with the first item id delivered live since the catch-up was asked.
    catching_up: HashMap<String, Option<String>>,
    /// Per node, the last item delivered when the session began: where its catch-up starts (live items may
    /// arrive before the subscription is confirmed, and must not move that point).
    resume_after: HashMap<String, Option<String>>,
}

/// Everything one link's task needs.
pub(crate) struct Link {
    pub name: String,
    pub config: ServerConfig,
    pub service: BareJid,
    /// `service` as text (inbound metadata), made once.
    pub service_name: String,
    pub account: BareJid,
    pub shared: Arc<LinkShared>,
    pub inbound: mpsc::Sender<InboundMessage>,
    pub patterns: watch::Receiver<Arc<Vec<Glob>>>,
    pub outbound: mpsc::Receiver<OutboundMessage>,
    pub cancel: CancellationToken,
    /// The state below lives as long as the link, across sessions.
    pub state: LinkState,
}

/// What a link keeps across sessions.
#[derive(Default)]
pub(crate) struct LinkState {
    session: Session,
    /// Requests sent and not answered, by IQ id.
    iqs: HashMap<String, PendingIq>,
    next_id: u64,
    /// Per node, the items delivered.
    seen: HashMap<String, Seen>,
    /// The nodes of the first listing that succeeded: older than the link, so not caught up when first followed.
    initial: Option<HashSet<String>>,
    /// Nodes subscribed in this or an earlier session.
    followed_before: HashSet<String>,
}

impl Link {
    pub async fn run(mut self, mut stream: StanzaStream) {
        let fetch_latest: Vec<Glob> = self.config.fetch_latest.iter().map(|g| Glob::new(g)).collect();
        let mut discover = tokio::time::interval(self.config.discover_interval());
        discover.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut expiry = tokio::time::interval(EXPIRY_CHECK);
        expiry.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                event = stream.next() => match event {
                    Some(Event::Stream(StreamEvent::Reset { bound_jid, .. })) => {
                        self.on_session(&stream, &bound_jid).await;
                    }
                    Some(Event::Stream(StreamEvent::Suspended)) => self.on_suspended(),
                    Some(Event::Stream(StreamEvent::Resumed)) => {
                        // Stream management resumed the session: subscriptions and requests are intact.
                        self.shared.connected.store(true, Ordering::Relaxed);
                    }
                    Some(Event::Stanza(Stanza::Message(message))) => self.on_message(message).await,
                    Some(Event::Stanza(Stanza::Iq(iq))) => self.on_iq(&stream, iq, &fetch_latest).await,
                    Some(Event::Stanza(Stanza::Presence(_))) => {}
                    None => break,
                },
                _ = discover.tick(), if self.up() => self.request_nodes(&stream).await,
                // While the stream reconnects, requests wait for it (a resumed session still answers them).
                _ = expiry.tick(), if !self.state.iqs.is_empty() && self.up() => self.expire(&stream, &fetch_latest).await,
                changed = self.patterns.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if self.up() {
                        self.subscribe_matching(&stream).await;
                    }
                }
                Some(message) = self.outbound.recv(), if self.up() => self.publish(&stream, message).await,
            }
        }
        self.shared.connected.store(false, Ordering::Relaxed);
        let _ = tokio::time::timeout(Duration::from_secs(5), stream.close()).await;
    }

    /// Whether requests may be sent: a session is up and not suspended. While the stream reconnects nothing is
    /// sent (it would wait in the stream's queue for a session that may not know the request's context).
    fn up(&self) -> bool {
        self.state.session.online && self.shared.connected.load(Ordering::Relaxed)
    }

    async fn on_session(&mut self, stream: &StanzaStream, bound_jid: &Jid) {
        tracing::info!(server = %self.name, jid = %bound_jid, "xmpp session up");
        add(&self.shared.counters.sessions, 1);
        self.shared.connected.store(true, Ordering::Relaxed);
        // The previous session's requests will not be answered; its subscriptions are gone with it.
        for (_, pending) in self.state.iqs.drain() {
            if let Request::Publish(node) = pending.request {
                add(&self.shared.counters.publish_errors, 1);
                self.shared
                    .fail(format!("{}: publishing to node {node:?}: the session ended before an answer", self.name));
            }
        }
        let resume_after = self.state.seen.iter().map(|(node, seen)| (node.clone(), seen.last.clone())).collect();
        self.state.session = Session { online: true, resume_after, ..Session::default() };
        self.shared.nodes().clear();
        // Presence makes the server route events sent to the bare JID to this session.
        stream.send(Box::new(Presence::available().into())).await;
        self.request_nodes(stream).await;
    }

    fn on_suspended(&mut self) {
        if self.shared.connected.swap(false, Ordering::Relaxed) {
            add(&self.shared.counters.disconnects, 1);
            self.shared.fail(format!("{}: the connection was lost; reconnecting", self.name));
        }
    }

    /// Sends a `get` (`set == false`) or `set` IQ to the service; its answer comes back to [`Link::on_answer`].
    async fn request(&mut self, stream: &StanzaStream, set: bool, payload: Element, request: Request) {
        self.state.next_id += 1;
        let id = format!("hub-{}", self.state.next_id);
        let to = Some(Jid::from(self.service.clone()));
        let iq = if set {
            Iq::Set { from: None, to, id: id.clone(), payload }
        } else {
            Iq::Get { from: None, to, id: id.clone(), payload }
        };
        let deadline = Instant::now() + self.config.request_timeout();
        self.state.iqs.insert(id, PendingIq { deadline, request });
        stream.send(Box::new(iq.into())).await;
    }

    async fn on_iq(&mut self, stream: &StanzaStream, iq: Iq, fetch_latest: &[Glob]) {
        let (from, id, result) = match iq {
            Iq::Result { from, id, payload, .. } => (from, id, Ok(payload)),
            Iq::Error { from, id, error, .. } => (from, id, Err(describe_error(&error))),
            // A request to the hub: a ping is answered, anything else is not offered here.
            Iq::Get { from, id, payload, .. } if payload.is("ping", NS_PING) => {
                stream.send(Box::new(Iq::Result { from: None, to: from, id, payload: None }.into())).await;
                return;
            }
            Iq::Get { from, id, .. } | Iq::Set { from, id, .. } => {
                let error = StanzaError::new(ErrorType::Cancel, DefinedCondition::ServiceUnavailable, "en", "");
                stream.send(Box::new(Iq::Error { from: None, to: from, id, error, payload: None }.into())).await;
                return;
            }
        };
        // Only the service answers the link's requests (an answer from anyone else is not one).
        if from.as_ref().map(Jid::to_bare).as_ref() != Some(&self.service) {
            return;
        }
        if let Some(pending) = self.state.iqs.remove(&id) {
            self.on_answer(stream, pending.request, result, fetch_latest).await;
        }
    }

    /// Fails the requests whose answer is overdue.
    async fn expire(&mut self, stream: &StanzaStream, fetch_latest: &[Glob]) {
        let now = Instant::now();
        let overdue: Vec<String> =
            self.state.iqs.iter().filter(|(_, pending)| pending.deadline <= now).map(|(id, _)| id.clone()).collect();
        let timeout = self.config.request_timeout();
        for id in overdue {
            if let Some(pending) = self.state.iqs.remove(&id) {
                let error = format!("no answer within {timeout:?}");
                self.on_answer(stream, pending.request, Err(error), fetch_latest).await;
            }
        }
    }

    async fn request_nodes(&mut self, stream: &StanzaStream) {
        if self.state.session.listing {
            return;
        }
        self.state.session.listing = true;
        let query = Element::builder("query", NS_DISCO_ITEMS).build();
        self.request(stream, false, query, Request::Nodes).await;
    }

    /// Subscribes to every known node a plugin's glob matches and that is not followed yet.
    async fn subscribe_matching(&mut self, stream: &StanzaStream) {
        let patterns = self.patterns.borrow().clone();
        let session = &self.state.session;
        let (wanted, followed): (Vec<String>, usize) = {
            let followed = self.shared.nodes();
            let wanted = session
                .known
                .iter()
                .filter(|node| !followed.contains(*node) && !session.pending.contains(*node))
                .filter(|node| patterns.iter().any(|glob| glob.matches(node)))
                .cloned()
                .collect();
            (wanted, followed.len())
        };
        let account = escape(&self.account.to_string());
        for node in wanted {
            if followed + self.state.session.pending.len() >= self.config.max_nodes {
                self.shared.fail(format!(
                    "{}: following {} nodes already (max_nodes); node {node:?} and others are not followed",
                    self.name, self.config.max_nodes
                ));
                break;
            }
            let xml =
                format!("<pubsub xmlns='{NS_PUBSUB}'><subscribe node='{}' jid='{}'/></pubsub>", escape(&node), account);
            let Ok(payload) = xml.parse::<Element>() else {
                continue;
            };
            self.state.session.pending.insert(node.clone());
            self.request(stream, true, payload, Request::Subscribe(node)).await;
        }
    }

    async fn on_answer(
        &mut self,
        stream: &StanzaStream,
        request: Request,
        result: Result<Option<Element>, String>,
        fetch_latest: &[Glob],
    ) {
        match (request, result) {
            (Request::Nodes, Ok(payload)) => {
                self.state.session.listing = false;
                let nodes: Vec<String> = payload
                    .iter()
                    .flat_map(|query| query.children())
                    .filter(|item| item.is("item", NS_DISCO_ITEMS))
                    .filter_map(|item| item.attr("node").map(str::to_owned))
                    .collect();
                if self.state.initial.is_none() {
                    self.state.initial = Some(nodes.iter().cloned().collect());
                }
                self.state.session.known = nodes;
                self.subscribe_matching(stream).await;
            }
            (Request::Nodes, Err(e)) => {
                self.state.session.listing = false;
                add(&self.shared.counters.discover_errors, 1);
                self.shared.fail(format!("{}: listing the nodes of {}: {e}", self.name, self.service));
            }
            (Request::Subscribe(node), Ok(_)) => {
                self.state.session.pending.remove(&node);
                add(&self.shared.counters.subscriptions, 1);
                self.shared.nodes().insert(node.clone());
                let state = &mut self.state;
                let again = !state.followed_before.insert(node.clone());
                let new = state.initial.as_ref().is_some_and(|initial| !initial.contains(&node));
                let fetch = if again || new {
                    // Items may have been published since the last one delivered, or since the node was made.
                    let after = match state.session.resume_after.get(&node) {
                        Some(after) => after.clone(),
                        None => state.seen.get(&node).and_then(|seen| seen.last.clone()),
                    };
                    (self.config.catch_up_items > 0).then_some(Fetch::CatchUp { after })
                } else {
                    fetch_latest.iter().any(|glob| glob.matches(&node)).then_some(Fetch::Latest)
                };
                if let Some(fetch) = fetch {
                    self.fetch(stream, node, fetch).await;
                }
            }
            (Request::Subscribe(node), Err(e)) => {
                self.state.session.pending.remove(&node);
                add(&self.shared.counters.subscribe_errors, 1);
                self.shared.fail(format!("{}: subscribing to node {node:?}: {e}", self.name));
            }
            (Request::Items(node, fetch), Ok(payload)) => {
                let caught_up = matches!(fetch, Fetch::CatchUp { .. });
                let items: Vec<ItemRef<'_>> = payload
                    .iter()
                    .flat_map(|pubsub| pubsub.children())
                    .filter(|items| items.name() == "items")
                    .flat_map(|items| items.children())
                    .filter_map(item_parts)
                    .collect();
                let range = match fetch {
                    Fetch::Latest => 0..items.len(),
                    Fetch::CatchUp { after } => {
                        let first_live = self.state.session.catching_up.remove(&node).flatten();
                        self.catch_up_range(&items, after.as_deref(), first_live.as_deref())
                    }
                };
                // Items older than the last one delivered do not move that mark back.
                let last = self.state.seen.get(&node).and_then(|seen| seen.last.as_deref());
                let last_at = last.and_then(|last| items.iter().position(|(id, _, _)| *id == Some(last)));
                for i in range {
                    let (id, publisher, payload) = items[i];
                    let advance = last_at.is_none_or(|at| i > at);
                    self.deliver(&node, id, publisher, payload, caught_up, advance).await;
                }
            }
            (Request::Items(node, _), Err(e)) => {
                self.state.session.catching_up.remove(&node);
                self.shared.fail(format!("{}: fetching stored items of {node:?}: {e}", self.name));
            }
            (Request::Publish(_), Ok(_)) => add(&self.shared.counters.published, 1),
            (Request::Publish(node), Err(e)) => {
                add(&self.shared.counters.publish_errors, 1);
                self.shared.fail(format!("{}: publishing to node {node:?}: {e}", self.name));
            }
        }
    }

    /// Which of a node's stored items (oldest first) a catch-up hands over: those after `after` (all when
    /// `None`), up to the first one that arrived live while the items were fetched (it and the rest were
    /// delivered already).
    fn catch_up_range(
        &self,
        items: &[ItemRef<'_>],
        after: Option<&str>,
        first_live: Option<&str>,
    ) -> std::ops::Range<usize> {
        let position = |wanted: &str| items.iter().position(|(id, _, _)| *id == Some(wanted));
        let start = match after {
            None => 0,
            Some(after) => position(after).map(|i| i + 1).unwrap_or_else(|| {
                // More items than the node keeps, or than `catch_up_items`, went by.
                add(&self.shared.counters.catch_up_gaps, 1);
                0
            }),
        };
        let end = match first_live {
            None => items.len(),
            // Not among the stored ones (not stored yet, retracted, or more went by than the node keeps): hand
            // over everything; what was delivered already is recognised by its id.
            Some(live) => position(live).unwrap_or(items.len()),
        };
        start..end.max(start)
    }

    async fn fetch(&mut self, stream: &StanzaStream, node: String, fetch: Fetch) {
        let max = match fetch {
            Fetch::Latest => 1,
            Fetch::CatchUp { .. } => self.config.catch_up_items,
        };
        let xml = format!("<pubsub xmlns='{NS_PUBSUB}'><items node='{}' max_items='{max}'/></pubsub>", escape(&node));
        let Ok(payload) = xml.parse::<Element>() else {
            return;
        };
        if let Fetch::CatchUp { .. } = fetch {
            self.state.session.catching_up.insert(node.clone(), None);
        }
        self.request(stream, false, payload, Request::Items(node, fetch)).await;
    }

    /// Publishes a plugin's message as an item; the payload must be one XML element.
    async fn publish(&mut self, stream: &StanzaStream, message: OutboundMessage) {
        let node = message.address.clone();
        match publish_request(&node, &message) {
            Ok(item) => self.request(stream, true, item, Request::Publish(node)).await,
            Err(e) => {
                add(&self.shared.counters.publish_errors, 1);
                self.shared.fail(format!("{}: publishing to node {node:?}: {e}", self.name));
            }
        }
    }

    /// Turns a pubsub event into inbound messages, one per item.
    async fn on_message(&mut self, message: Message) {
        let from_service = message.from.as_ref().is_some_and(|from| from.to_bare() == self.service);
        let events = || message.payloads.iter().filter(|p| p.is("event", NS_PUBSUB_EVENT));
        if events().next().is_none() {
            return;
        }
        if !from_service {
            add(&self.shared.counters.dropped_foreign, 1);
            return;
        }
        for event in events() {
            for items in event.children().filter(|c| c.is("items", NS_PUBSUB_EVENT)) {
                let Some(node) = items.attr("node") else {
                    continue;
                };
                for (id, publisher, payload) in items.children().filter_map(item_parts) {
                    if let (Some(id), Some(first @ None)) = (id, self.state.session.catching_up.get_mut(node)) {
                        *first = Some(id.to_owned());
                    }
                    self.deliver(node, id, publisher, payload, false, true).await;
                }
            }
        }
    }

    /// Hands one item to the hub, unless it was delivered already (`caught_up`: it comes from a catch-up;
    /// `advance`: it is newer than the last one delivered).
    async fn deliver(
        &mut self,
        node: &str,
        id: Option<&str>,
        publisher: Option<&str>,
        payload: &Element,
        caught_up: bool,
        advance: bool,
    ) {
        let text = String::from(payload);
        if let Some(id) = id {
            let digest = {
                let mut hasher = std::collections::hash_map::DefaultHasher::new();
                std::hash::Hash::hash(&text, &mut hasher);
                std::hash::Hasher::finish(&hasher)
            };
            if !self.state.seen.contains_key(node) {
                self.state.seen.insert(node.to_owned(), Seen::default());
            }
            let Some(seen) = self.state.seen.get_mut(node) else {
                return; // inserted just above
            };
            if seen.recent.iter().any(|(recent, known)| recent == id && *known == digest) {
                add(&self.shared.counters.duplicates, 1);
                return;
            }
            seen.recent.retain(|(recent, _)| recent != id);
            if seen.recent.len() == RECENT_IDS {
                seen.recent.pop_front();
            }
            seen.recent.push_back((id.to_owned(), digest));
            if advance {
                seen.last = Some(id.to_owned());
            }
        }
        if text.len() > self.config.max_item_bytes {
            add(&self.shared.counters.dropped_oversized, 1);
            return;
        }
        let mut metadata = BTreeMap::new();
        metadata.insert(META_SERVER.to_owned(), self.name.clone());
        metadata.insert(META_SERVICE.to_owned(), self.service_name.clone());
        if let Some(id) = id {
            metadata.insert(META_ITEM_ID.to_owned(), id.to_owned());
        }
        if let Some(publisher) = publisher {
            metadata.insert(META_PUBLISHER.to_owned(), publisher.to_owned());
        }
        let message = InboundMessage {
            transport: transport::XMPP.to_owned(),
            address: node.to_owned(),
            payload: Payload(text.into_bytes()),
            metadata,
            received_us: now_us(),
        };
        add(&self.shared.counters.items_in, 1);
        if caught_up {
            add(&self.shared.counters.caught_up, 1);
        }
        // Waiting here is the back-pressure: the stream is not read while the hub's queue is full.
        let _ = self.inbound.send(message).await;
    }
}

/// An `<item>`'s id, publisher and payload (its first child element); `None` for an item without payload.
fn item_parts(item: &Element) -> Option<ItemRef<'_>> {
    if item.name() != "item" {
        return None;
    }
    Some((item.attr("id"), item.attr("publisher"), item.children().next()?))
}

/// The `<pubsub><publish>` request carrying a plugin's payload.
fn publish_request(node: &str, message: &OutboundMessage) -> Result<Element, String> {
    if node.is_empty() {
        return Err("the node name is empty".to_owned());
    }
    let text = std::str::from_utf8(message.payload.as_bytes()).map_err(|_| "the payload is not UTF-8".to_owned())?;
    // A payload written without a namespace gets the client stream's; it must be exactly one element.
    let wrapped = format!("<wrapper xmlns='{NS_CLIENT}'>{text}</wrapper>");
    let wrapper: Element = wrapped.parse().map_err(|e| format!("the payload is not well-formed XML: {e}"))?;
    let mut children = wrapper.children();
    let (Some(payload), None) = (children.next(), children.next()) else {
        return Err("the payload must be exactly one XML element".to_owned());
    };
    if wrapper.texts().any(|t| !t.trim().is_empty()) {
        return Err("the payload must be exactly one XML element, without text around it".to_owned());
    }
    let item_id = message.metadata.get(META_ITEM_ID).map(|id| format!(" id='{}'", escape(id))).unwrap_or_default();
    let xml =
        format!("<pubsub xmlns='{NS_PUBSUB}'><publish node='{}'><item{item_id}/></publish></pubsub>", escape(node));
    let mut pubsub: Element = xml.parse().map_err(|e| format!("building the request: {e}"))?;
    let item = pubsub
        .get_child_mut("publish", NS_PUBSUB)
        .and_then(|publish| publish.get_child_mut("item", NS_PUBSUB))
        .ok_or("building the request")?;
    item.append_child(payload.clone());
    Ok(pubsub)
}

fn describe_error(error: &tokio_xmpp::parsers::stanza_error::StanzaError) -> String {
    let text = error.texts.values().next().map(|t| format!(": {t}")).unwrap_or_default();
    format!("{:?} ({:?}){text}", error.defined_condition, error.type_)
}

/// Escapes text for an XML attribute value in single or double quotes.
fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '\'' => out.push_str("&apos;"),
            '"' => out.push_str("&quot;"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outbound(node: &str, payload: &str) -> OutboundMessage {
        OutboundMessage::new(transport::XMPP, node, payload.as_bytes().to_vec())
    }

    #[test]
    fn a_publish_carries_one_element_and_escapes_the_node() {
        let message = outbound("truck 'A'_data", "<data><transducerSetValue id='x' typedValue='1'/></data>")
            .with_metadata(META_ITEM_ID, "i&1");
        let request = publish_request("truck 'A'_data", &message).unwrap();
        let publish = request.get_child("publish", NS_PUBSUB).unwrap();
        assert_eq!(publish.attr("node"), Some("truck 'A'_data"));
        let item = publish.get_child("item", NS_PUBSUB).unwrap();
        assert_eq!(item.attr("id"), Some("i&1"));
        let data = item.children().next().unwrap();
        assert_eq!(data.name(), "data");
        assert_eq!(data.children().next().unwrap().attr("typedValue"), Some("1"));
    }

    #[test]
    fn a_publish_keeps_the_payload_namespace() {
        let request = publish_request("n", &outbound("n", "<json xmlns='urn:xmpp:json:0'>{}</json>")).unwrap();
        let item = request.get_child("publish", NS_PUBSUB).unwrap().get_child("item", NS_PUBSUB).unwrap();
        assert!(item.children().next().unwrap().is("json", "urn:xmpp:json:0"));
    }

    #[test]
    fn malformed_payloads_are_refused() {
        for bad in ["", "text", "<a>", "<a/><b/>", "x<a/>", "<a/>x", "<a></b>"] {
            assert!(publish_request("n", &outbound("n", bad)).is_err(), "{bad:?}");
        }
        assert!(publish_request("", &outbound("", "<a/>")).is_err());
        let not_utf8 = OutboundMessage::new(transport::XMPP, "n", vec![0xff, 0xfe]);
        assert!(publish_request("n", &not_utf8).is_err());
    }

    #[test]
    fn items_without_payload_are_skipped() {
        let items: Element =
            "<items xmlns='http://jabber.org/protocol/pubsub#event' node='n'><item id='1'/><item id='2' publisher='a@b'><x xmlns='y'/></item></items>"
                .parse()
                .unwrap();
        let parts: Vec<_> = items.children().filter_map(item_parts).collect();
        assert_eq!(parts.len(), 1);
        assert_eq!(parts[0].0, Some("2"));
        assert_eq!(parts[0].1, Some("a@b"));
        assert!(parts[0].2.is("x", "y"));
    }
}
