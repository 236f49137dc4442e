//! One server link: the task that owns one XMPP client session and follows the publish-subscribe nodes the
//! plugins' grants name.
//!
//! The session (STARTTLS, SASL, resource binding, reconnect with backoff) is `tokio-xmpp`'s. On every
//! (re)connection the link sends its presence, lists the service's nodes (disco#items), subscribes its bare JID to
//! each node that matches a plugin's `xmpp.subscribe` glob, and fetches the newest stored item of the nodes that
//! match `fetch_latest`. The list is taken again every `discover_interval_ms` and whenever the plugins' globs
//! change, so nodes created later are followed too.
//!
//! After a lost session, each node the link had delivered items of is caught up when it is subscribed again: the
//! service's stored items are fetched (`catch_up_items`, oldest first) and those after the last one delivered are
//! handed over, so items published while the hub was away are not lost as long as the node still holds them. The
//! last few item ids of each node are remembered, and an item delivered once is not delivered again (a catch-up
//! and a live event can carry the same item).
//!
//! Each item of a pubsub event from the configured service becomes one `InboundMessage`; handing it over waits
//! for room in the hub's queue, so a slow plugin slows the XMPP session (TCP back-pressure to the server), and
//! nothing is dropped on the hub's side. Events from any other sender are dropped and counted (anyone can send
//! a message to the hub's JID).
//!
//! The event loop never waits for an IQ answer: each request's answer is awaited in a small task that reports
//! back through a channel, so events keep flowing while requests are outstanding.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque},
    sync::{
        Arc, Mutex,
        atomic::{AtomicBool, AtomicU64, Ordering},
    },
};

use futures::StreamExt;
use hub_model::Glob;
use hub_plugin_sdk::abi::{InboundMessage, OutboundMessage, Payload, transport};
use serde::Serialize;
use tokio::sync::{mpsc, watch};
use tokio_util::sync::CancellationToken;
use tokio_xmpp::{
    Client, Event, IqRequest, IqResponse, Stanza,
    jid::{BareJid, Jid},
    minidom::Element,
    parsers::{message::Message, presence::Presence},
};

use crate::{META_ITEM_ID, META_PUBLISHER, META_SERVER, META_SERVICE, config::ServerConfig, now_us};

const NS_DISCO_ITEMS: &str = "http://jabber.org/protocol/disco#items";
const NS_PUBSUB: &str = "http://jabber.org/protocol/pubsub";
const NS_PUBSUB_EVENT: &str = "http://jabber.org/protocol/pubsub#event";
/// The namespace a payload without one is parsed in (a client stream's default).
const NS_CLIENT: &str = "jabber:client";

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

/// An item's id, publisher and payload element, fetched (owned: it travels in an [`Answer`]).
type Item = (Option<String>, Option<String>, Element);
/// The same, borrowed from a received stanza.
type ItemRef<'a> = (Option<&'a str>, Option<&'a str>, &'a Element);

/// How many item ids of each node are remembered to recognise an item delivered twice.
const RECENT_IDS: usize = 32;

/// What a link remembers of a node's items across sessions.
#[derive(Default)]
pub(crate) struct Seen {
    /// The id of the last item delivered.
    last: Option<String>,
    /// The ids of the last items delivered, oldest first.
    recent: VecDeque<String>,
}

/// Why items were fetched.
enum Fetch {
    /// The newest item, on subscribing (`fetch_latest`).
    Latest,
    /// The stored items after the one delivered last (`after`), on subscribing again after a lost session.
    CatchUp { after: String },
}

/// What the event loop learns from a request's answer.
enum Answer {
    Nodes(Result<Vec<String>, String>),
    Subscribed(String, Result<(), String>),
    Items(String, Fetch, Result<Vec<Item>, String>),
    Published(String, Result<(), String>),
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
    /// Per node, the items delivered (kept across sessions, for catching up).
    pub seen: Mutex<HashMap<String, Seen>>,
}

/// The session-scoped state: reset on each (re)connection (with [`LinkShared::nodes`], the nodes followed).
#[derive(Default)]
struct Session {
    online: bool,
    /// Every node the service listed last time.
    known: Vec<String>,
    /// Subscriptions asked for and not answered yet.
    pending: HashSet<String>,
}

impl Link {
    pub async fn run(mut self, mut client: Client) {
        let (answers_tx, mut answers) = mpsc::unbounded_channel::<Answer>();
        let fetch_latest: Vec<Glob> = self.config.fetch_latest.iter().map(|g| Glob::new(g)).collect();
        let mut session = Session::default();
        let mut discover = tokio::time::interval(self.config.discover_interval());
        discover.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = self.cancel.cancelled() => break,
                event = client.next() => match event {
                    Some(Event::Online { bound_jid, .. }) => {
                        tracing::info!(server = %self.name, jid = %bound_jid, "xmpp session up");
                        add(&self.shared.counters.sessions, 1);
                        self.shared.connected.store(true, Ordering::Relaxed);
                        session = Session { online: true, ..Session::default() };
                        self.shared.nodes().clear();
                        // Presence makes the server route events sent to the bare JID to this session.
                        if let Err(e) = client.send_stanza(Presence::available().into()).await {
                            self.shared.fail(format!("{}: sending presence: {e}", self.name));
                        }
                        self.request_nodes(&mut client, &answers_tx).await;
                    }
                    Some(Event::Disconnected(e)) => {
                        // The stream ended for good (a lost connection is retried by the library, and seen by
                        // the connector's next attempt).
                        if self.shared.connected.swap(false, Ordering::Relaxed) {
                            add(&self.shared.counters.disconnects, 1);
                        }
                        self.shared.fail(format!("{}: disconnected: {e}", self.name));
                        session = Session::default();
                        self.shared.nodes().clear();
                    }
                    Some(Event::Stanza(Stanza::Message(message))) => self.on_message(message).await,
                    Some(Event::Stanza(_)) => {}
                    None => break,
                },
                _ = discover.tick(), if self.up(&session) => self.request_nodes(&mut client, &answers_tx).await,
                changed = self.patterns.changed() => {
                    if changed.is_err() {
                        break;
                    }
                    if self.up(&session) {
                        self.subscribe_matching(&mut client, &mut session, &answers_tx).await;
                    }
                }
                Some(answer) = answers.recv() => {
                    self.on_answer(answer, &mut client, &mut session, &fetch_latest, &answers_tx).await;
                }
                Some(message) = self.outbound.recv(), if self.up(&session) => {
                    self.publish(&mut client, message, &answers_tx).await;
                }
            }
        }
        self.shared.connected.store(false, Ordering::Relaxed);
        let _ = client.send_end().await;
    }

    /// Whether requests may be sent: the session is up and no reconnection has begun since. While the library
    /// reconnects, nothing is queued (its queue is bounded, and a full one would stall this loop and with it the
    /// events that tell of the new session).
    fn up(&self, session: &Session) -> bool {
        session.online && self.shared.connected.load(Ordering::Relaxed)
    }

    /// Sends `payload` as an IQ to the service; its answer comes back as `make(result)`.
    async fn request(
        &self,
        client: &mut Client,
        request: IqRequest,
        answers: &mpsc::UnboundedSender<Answer>,
        make: impl FnOnce(Result<Option<Element>, String>) -> Answer + Send + 'static,
    ) {
        let token = client.send_iq(Some(Jid::from(self.service.clone())), request).await;
        let timeout = self.config.request_timeout();
        let answers = answers.clone();
        tokio::spawn(async move {
            let result = match tokio::time::timeout(timeout, token).await {
                Err(_) => Err(format!("no answer within {timeout:?}")),
                Ok(Err(e)) => Err(e.to_string()),
                Ok(Ok(IqResponse::Result(payload))) => Ok(payload),
                Ok(Ok(IqResponse::Error(error))) => Err(describe_error(&error)),
            };
            let _ = answers.send(make(result));
        });
    }

    async fn request_nodes(&self, client: &mut Client, answers: &mpsc::UnboundedSender<Answer>) {
        let query = Element::builder("query", NS_DISCO_ITEMS).build();
        self.request(client, IqRequest::Get(query), answers, |result| {
            Answer::Nodes(result.map(|payload| {
                payload
                    .iter()
                    .flat_map(|query| query.children())
                    .filter(|item| item.is("item", NS_DISCO_ITEMS))
                    .filter_map(|item| item.attr("node").map(str::to_owned))
                    .collect()
            }))
        })
        .await;
    }

    /// Subscribes to every known node a plugin's glob matches and that is not followed yet.
    async fn subscribe_matching(
        &self,
        client: &mut Client,
        session: &mut Session,
        answers: &mpsc::UnboundedSender<Answer>,
    ) {
        let patterns = self.patterns.borrow().clone();
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
            if followed + session.pending.len() >= self.config.max_nodes {
                self.shared.fail(format!(
                    "{}: following {} nodes already (max_nodes); node {node:?} and others are not followed",
                    self.name, self.config.max_nodes
                ));
                break;
            }
            session.pending.insert(node.clone());
            let xml =
                format!("<pubsub xmlns='{NS_PUBSUB}'><subscribe node='{}' jid='{}'/></pubsub>", escape(&node), account);
            let Ok(payload) = xml.parse::<Element>() else {
                continue;
            };
            self.request(client, IqRequest::Set(payload), answers, move |result| {
                Answer::Subscribed(node, result.map(|_| ()))
            })
            .await;
        }
    }

    async fn on_answer(
        &self,
        answer: Answer,
        client: &mut Client,
        session: &mut Session,
        fetch_latest: &[Glob],
        answers: &mpsc::UnboundedSender<Answer>,
    ) {
        match answer {
            Answer::Nodes(Ok(nodes)) => {
                if self.up(session) {
                    session.known = nodes;
                    self.subscribe_matching(client, session, answers).await;
                }
            }
            Answer::Nodes(Err(e)) => {
                add(&self.shared.counters.discover_errors, 1);
                self.shared.fail(format!("{}: listing the nodes of {}: {e}", self.name, self.service));
            }
            Answer::Subscribed(node, result) => {
                session.pending.remove(&node);
                match result {
                    Ok(()) if self.up(session) => {
                        add(&self.shared.counters.subscriptions, 1);
                        self.shared.nodes().insert(node.clone());
                        let after = self.seen().get(&node).and_then(|seen| seen.last.clone());
                        if fetch_latest.iter().any(|glob| glob.matches(&node)) {
                            self.fetch(client, node, Fetch::Latest, answers).await;
                        } else if let Some(after) = after.filter(|_| self.config.catch_up_items > 0) {
                            self.fetch(client, node, Fetch::CatchUp { after }, answers).await;
                        }
                    }
                    Ok(()) => {}
                    Err(e) => {
                        add(&self.shared.counters.subscribe_errors, 1);
                        self.shared.fail(format!("{}: subscribing to node {node:?}: {e}", self.name));
                    }
                }
            }
            Answer::Items(node, Fetch::Latest, Ok(items)) => {
                for (id, publisher, payload) in items {
                    self.deliver(&node, id.as_deref(), publisher.as_deref(), &payload).await;
                }
            }
            Answer::Items(node, Fetch::CatchUp { after }, Ok(items)) => {
                // Oldest first: what follows the last item delivered was published while the hub was away.
                let start = match items.iter().position(|(id, _, _)| id.as_deref() == Some(after.as_str())) {
                    Some(i) => i + 1,
                    None => {
                        // More items than the node keeps, or than `catch_up_items`, went by (or the node is new).
                        add(&self.shared.counters.catch_up_gaps, 1);
                        0
                    }
                };
                for (id, publisher, payload) in items.into_iter().skip(start) {
                    if self.deliver(&node, id.as_deref(), publisher.as_deref(), &payload).await {
                        add(&self.shared.counters.caught_up, 1);
                    }
                }
            }
            Answer::Items(node, _, Err(e)) => {
                self.shared.fail(format!("{}: fetching stored items of {node:?}: {e}", self.name));
            }
            Answer::Published(_, Ok(())) => add(&self.shared.counters.published, 1),
            Answer::Published(node, Err(e)) => {
                add(&self.shared.counters.publish_errors, 1);
                self.shared.fail(format!("{}: publishing to node {node:?}: {e}", self.name));
            }
        }
    }

    fn seen(&self) -> std::sync::MutexGuard<'_, HashMap<String, Seen>> {
        self.seen.lock().unwrap_or_else(|e| e.into_inner())
    }

    async fn fetch(&self, client: &mut Client, node: String, why: Fetch, answers: &mpsc::UnboundedSender<Answer>) {
        let max = match why {
            Fetch::Latest => 1,
            Fetch::CatchUp { .. } => self.config.catch_up_items,
        };
        let xml = format!("<pubsub xmlns='{NS_PUBSUB}'><items node='{}' max_items='{max}'/></pubsub>", escape(&node));
        let Ok(payload) = xml.parse::<Element>() else {
            return;
        };
        self.request(client, IqRequest::Get(payload), answers, move |result| {
            let items = result.map(|payload| {
                payload
                    .iter()
                    .flat_map(|pubsub| pubsub.children())
                    .filter(|items| items.name() == "items")
                    .flat_map(|items| items.children())
                    .filter_map(item_parts)
                    .map(|(id, publisher, payload)| {
                        (id.map(str::to_owned), publisher.map(str::to_owned), payload.clone())
                    })
                    .collect()
            });
            Answer::Items(node, why, items)
        })
        .await;
    }

    /// Publishes a plugin's message as an item; the payload must be one XML element.
    async fn publish(&self, client: &mut Client, message: OutboundMessage, answers: &mpsc::UnboundedSender<Answer>) {
        let node = message.address.clone();
        let item = match publish_request(&node, &message) {
            Ok(item) => item,
            Err(e) => {
                add(&self.shared.counters.publish_errors, 1);
                self.shared.fail(format!("{}: publishing to node {node:?}: {e}", self.name));
                return;
            }
        };
        self.request(client, IqRequest::Set(item), answers, move |result| Answer::Published(node, result.map(|_| ())))
            .await;
    }

    /// Turns a pubsub event into inbound messages, one per item.
    async fn on_message(&self, message: Message) {
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
                    self.deliver(node, id, publisher, payload).await;
                }
            }
        }
    }

    /// Hands one item to the hub, unless it was delivered already; returns whether it was handed over.
    async fn deliver(&self, node: &str, id: Option<&str>, publisher: Option<&str>, payload: &Element) -> bool {
        if let Some(id) = id {
            let mut seen = self.seen();
            if !seen.contains_key(node) {
                seen.insert(node.to_owned(), Seen::default());
            }
            let Some(seen) = seen.get_mut(node) else {
                return false; // inserted just above
            };
            if seen.recent.iter().any(|recent| recent == id) {
                add(&self.shared.counters.duplicates, 1);
                return false;
            }
            if seen.recent.len() == RECENT_IDS {
                seen.recent.pop_front();
            }
            seen.recent.push_back(id.to_owned());
            seen.last = Some(id.to_owned());
        }
        let text = String::from(payload);
        if text.len() > self.config.max_item_bytes {
            add(&self.shared.counters.dropped_oversized, 1);
            return false;
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
        // Waiting here is the back-pressure: the session is not read while the hub's queue is full.
        self.inbound.send(message).await.is_ok()
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
