//! The transport: one [`Link`] task per configured server, the node globs they follow, and the runtime's
//! `Outbound` side.

use std::sync::{Arc, Mutex, atomic::Ordering};

use async_trait::async_trait;
use hub_model::Glob;
use hub_plugin_sdk::abi::{InboundMessage, OutboundMessage};
use hub_runtime::{Outbound, TransportError};
use serde::Serialize;
use tokio::{
    sync::{mpsc, watch},
    task::JoinHandle,
};
use tokio_util::sync::CancellationToken;
use tokio_xmpp::{stanzastream::StanzaStream, xmlstream::Timeouts};

use crate::{
    META_SERVER, XmppConfig, XmppError,
    connector::Connector,
    link::{Link, LinkShared, LinkStatus},
};

/// The counters of every link together (`GET /api/v1/transports`, `hub_transport_events_total`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct XmppStats {
    /// Server entries configured.
    pub servers: u64,
    /// Server entries with a session up now.
    pub connected: u64,
    /// Sessions established (the first and every reconnection).
    pub sessions: u64,
    /// Sessions lost.
    pub disconnects: u64,
    /// Connection attempts that failed (TCP, STARTTLS, certificate); retried with backoff.
    pub connect_errors: u64,
    /// Nodes followed now.
    pub nodes: u64,
    /// Items handed to the hub.
    pub items_in: u64,
    /// Items dropped: larger than `max_item_bytes`.
    pub dropped_oversized: u64,
    /// Event messages dropped: not sent by the configured publish-subscribe service.
    pub dropped_foreign: u64,
    /// Subscriptions the service confirmed.
    pub subscriptions: u64,
    /// Subscriptions the service refused or did not answer.
    pub subscribe_errors: u64,
    /// Items published for plugins.
    pub published: u64,
    /// Publishes that failed (refused by the service, unanswered, malformed payload).
    pub publish_errors: u64,
    /// Items handed over by catching up after a lost session (published while the hub was away).
    pub caught_up: u64,
    /// Catch-ups that did not find the last item delivered among the stored ones: items may have been missed.
    pub catch_up_gaps: u64,
    /// Items not handed over again because they already were (a catch-up and a live event both carried them).
    pub duplicates: u64,
    /// Node listings that failed.
    pub discover_errors: u64,
}

/// Stanzas the stream buffers each way between the socket and the link.
const STREAM_QUEUE: usize = 64;

struct LinkHandle {
    name: String,
    shared: Arc<LinkShared>,
    outbound: mpsc::Sender<OutboundMessage>,
}

/// The XMPP transport: a client session per configured server.
pub struct XmppTransport {
    links: Vec<LinkHandle>,
    patterns: watch::Sender<Arc<Vec<Glob>>>,
    cancel: CancellationToken,
    tasks: Mutex<Vec<JoinHandle<()>>>,
}

impl XmppTransport {
    /// Starts a session per server entry (connecting in the background, retrying with backoff) and hands every
    /// item of a followed node to `inbound`. Fails only on configuration errors (including an unreadable
    /// `ca_file` or an unset `password_env`); a server that cannot be reached is retried and reported in
    /// [`XmppTransport::links`].
    pub fn start(config: &XmppConfig, inbound: mpsc::Sender<InboundMessage>) -> Result<XmppTransport, XmppError> {
        config.validate()?;
        tokio::runtime::Handle::try_current().map_err(|_| XmppError::NoRuntime)?;
        let (patterns, _) = watch::channel(Arc::new(Vec::new()));
        let cancel = CancellationToken::new();
        let mut links = Vec::new();
        let mut tasks = Vec::new();
        for (index, server) in config.servers.iter().enumerate() {
            let key = |field: &str| format!("xmpp.servers[{index}].{field}");
            let shared = Arc::new(LinkShared::default());
            let connector = Connector::new(server, index, shared.clone())?;
            let password = server.resolved_password(index)?;
            let account = server.account().map_err(|reason| XmppError::invalid(key("jid"), reason))?;
            let service = server.service().map_err(|reason| XmppError::invalid(key("pubsub_service"), reason))?;
            let (outbound_tx, outbound_rx) = mpsc::channel(server.outbound_queue);
            let stream = StanzaStream::new_c2s(connector, account.clone(), password, Timeouts::default(), STREAM_QUEUE);
            let link = Link {
                name: server.name.clone(),
                config: server.clone(),
                service_name: service.to_string(),
                service,
                account: account.to_bare(),
                shared: shared.clone(),
                inbound: inbound.clone(),
                patterns: patterns.subscribe(),
                outbound: outbound_rx,
                cancel: cancel.child_token(),
                state: Default::default(),
            };
            tasks.push(tokio::spawn(link.run(stream)));
            links.push(LinkHandle { name: server.name.clone(), shared, outbound: outbound_tx });
        }
        Ok(XmppTransport { links, patterns, cancel, tasks: Mutex::new(tasks) })
    }

    /// Sets the node globs to follow (the plugins' granted `xmpp.subscribe` entries). New matches are
    /// subscribed at once on every connected server; nodes no longer matched stay subscribed until the next
    /// session but are no longer delivered by the runtime.
    pub fn set_subscriptions(&self, globs: &[String]) {
        let mut globs: Vec<String> = globs.to_vec();
        globs.sort();
        globs.dedup();
        self.patterns.send_if_modified(|current| {
            let same = current.len() == globs.len() && current.iter().zip(&globs).all(|(g, text)| g.as_str() == text);
            if !same {
                *current = Arc::new(globs.iter().map(|g| Glob::new(g)).collect());
            }
            !same
        });
    }

    /// Each server link's state.
    pub fn links(&self) -> Vec<LinkStatus> {
        self.links
            .iter()
            .map(|link| LinkStatus {
                name: link.name.clone(),
                connected: link.shared.connected.load(Ordering::Relaxed),
                nodes: link.shared.nodes.lock().unwrap_or_else(|e| e.into_inner()).len(),
                last_error: link.shared.last_error.lock().unwrap_or_else(|e| e.into_inner()).clone(),
            })
            .collect()
    }

    /// The counters of all links together.
    pub fn stats(&self) -> XmppStats {
        let mut stats = XmppStats { servers: self.links.len() as u64, ..XmppStats::default() };
        for link in &self.links {
            let c = &link.shared.counters;
            let get = |counter: &std::sync::atomic::AtomicU64| counter.load(Ordering::Relaxed);
            stats.connected += u64::from(link.shared.connected.load(Ordering::Relaxed));
            stats.nodes += link.shared.nodes.lock().unwrap_or_else(|e| e.into_inner()).len() as u64;
            stats.sessions += get(&c.sessions);
            stats.disconnects += get(&c.disconnects);
            stats.connect_errors += get(&c.connect_errors);
            stats.items_in += get(&c.items_in);
            stats.dropped_oversized += get(&c.dropped_oversized);
            stats.dropped_foreign += get(&c.dropped_foreign);
            stats.subscriptions += get(&c.subscriptions);
            stats.subscribe_errors += get(&c.subscribe_errors);
            stats.published += get(&c.published);
            stats.publish_errors += get(&c.publish_errors);
            stats.caught_up += get(&c.caught_up);
            stats.catch_up_gaps += get(&c.catch_up_gaps);
            stats.duplicates += get(&c.duplicates);
            stats.discover_errors += get(&c.discover_errors);
        }
        stats
    }

    /// Ends every session (politely, with a stream close) and stops the links.
    pub async fn shutdown(&self) {
        self.cancel.cancel();
        let tasks = std::mem::take(&mut *self.tasks.lock().unwrap_or_else(|e| e.into_inner()));
        for task in tasks {
            let abort = task.abort_handle();
            if tokio::time::timeout(std::time::Duration::from_secs(5), task).await.is_err() {
                abort.abort();
            }
        }
    }

    /// The link an outbound message goes to: its `server` metadata, else a link following the node, else the
    /// first.
    fn link_for(&self, message: &OutboundMessage) -> Result<&LinkHandle, TransportError> {
        if let Some(name) = message.metadata.get(META_SERVER) {
            return self
                .links
                .iter()
                .find(|link| &link.name == name)
                .ok_or_else(|| TransportError::Refused(format!("no XMPP server entry is named {name:?}")));
        }
        self.links
            .iter()
            .find(|link| link.shared.nodes.lock().unwrap_or_else(|e| e.into_inner()).contains(&message.address))
            .or_else(|| self.links.first())
            .ok_or_else(|| TransportError::Unavailable("no XMPP server is configured".to_owned()))
    }
}

impl Drop for XmppTransport {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}

#[async_trait]
impl Outbound for XmppTransport {
    /// Queues a publish; it waits for the session while the server is away, up to `outbound_queue` messages.
    async fn send(&self, _plugin_id: &str, message: OutboundMessage) -> Result<(), TransportError> {
        let link = self.link_for(&message)?;
        link.outbound.try_send(message).map_err(|e| match e {
            mpsc::error::TrySendError::Full(_) => TransportError::Unavailable(format!(
                "XMPP server {:?}: the outbound queue is full (the server is away or slow)",
                link.name
            )),
            mpsc::error::TrySendError::Closed(_) => {
                TransportError::Unavailable(format!("XMPP server {:?}: the transport has stopped", link.name))
            }
        })
    }
}
