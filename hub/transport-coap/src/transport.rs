//! [`CoapTransport`]: the server, the client, the observations and the outbound path, started together from a
//! [`CoapConfig`] and sharing one set of counters.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::net::UdpSocket;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientSettings};
use crate::observe::{self, ObserveSettings, Target};
use crate::server::{CoapServer, bind_listen};
use crate::stats::Counters;
use crate::wire::DeviceUri;
use crate::{CoapConfig, CoapError, CoapOutbound, CoapStats, Delivery, DeviceAuth};

/// The whole CoAP side of the hub.
pub struct CoapTransport {
    server: Option<CoapServer>,
    client_addr: Option<SocketAddr>,
    outbound: Arc<CoapOutbound>,
    counters: Arc<Counters>,
    cancel: CancellationToken,
}

impl std::fmt::Debug for CoapTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoapTransport").field("server", &self.server).field("client_addr", &self.client_addr).finish()
    }
}

impl CoapTransport {
    /// Validates `config`, starts the server (when `enabled`) on `listen`, the client on `client.bind`, and one
    /// observation per `[[coap.observe]]` entry. Everything received goes to `inbound`. Must be called inside a
    /// tokio runtime.
    pub async fn start(
        config: &CoapConfig,
        auth: Arc<dyn DeviceAuth>,
        inbound: mpsc::Sender<Delivery>,
    ) -> Result<CoapTransport, CoapError> {
        config.validate()?;
        tokio::runtime::Handle::try_current().map_err(|_| CoapError::NoRuntime)?;
        let counters = Arc::new(Counters::default());
        let cancel = CancellationToken::new();
        let server = if config.enabled {
            let socket = bind_listen(config.listen).await?;
            Some(CoapServer::spawn(
                Arc::new(socket),
                config,
                auth,
                inbound.clone(),
                counters.clone(),
                cancel.child_token(),
            )?)
        } else {
            None
        };
        let bind = config.client.bind;
        let socket = UdpSocket::bind(bind).await.map_err(|source| CoapError::Bind {
            key: "coap.client.bind",
            addr: bind,
            source,
        })?;
        let client = Client::start(
            Arc::new(socket),
            ClientSettings::new(&config.client, config.block_szx()),
            counters.clone(),
            cancel.child_token(),
        );
        let client_addr = client.local_addr();
        let outbound = Arc::new(CoapOutbound::start(
            client.clone(),
            config.client.queue,
            config.client.max_pending,
            cancel.child_token(),
        ));
        let (backoff_min, backoff_max) = config.client.backoff();
        for entry in &config.observe {
            let uri = DeviceUri::parse(&entry.uri).map_err(|reason| CoapError::invalid("coap.observe.uri", reason))?;
            let target = Target {
                configured: entry.uri.clone(),
                uri,
                provider: entry.provider.clone(),
                interval: Duration::from_secs(entry.interval_s),
            };
            let settings = ObserveSettings {
                margin: Duration::from_millis(config.client.observe_margin_ms),
                backoff_min,
                backoff_max,
            };
            tokio::spawn(observe::run(client.clone(), target, inbound.clone(), settings, cancel.child_token()));
        }
        tracing::info!(client = ?client_addr, observations = config.observe.len(), "CoAP client ready");
        Ok(CoapTransport { server, client_addr, outbound, counters, cancel })
    }

    /// The server endpoint's address, when it runs.
    pub fn local_addr(&self) -> Option<SocketAddr> {
        self.server.as_ref().map(CoapServer::local_addr)
    }

    /// The client socket's address (observations and outbound requests come from here).
    pub fn client_addr(&self) -> Option<SocketAddr> {
        self.client_addr
    }

    /// The server endpoint, when it runs.
    pub fn server(&self) -> Option<&CoapServer> {
        self.server.as_ref()
    }

    /// Whether the server accepts requests without a token.
    pub fn anonymous_allowed(&self) -> bool {
        self.server.as_ref().is_some_and(CoapServer::anonymous_allowed)
    }

    /// Sets what `GET /.well-known/core` lists (see [`CoapServer::set_links`]).
    pub fn set_links(&self, patterns: Vec<String>) {
        if let Some(server) = &self.server {
            server.set_links(patterns);
        }
    }

    /// The runtime's `coap` transport: register it with `Transports::register("coap", ...)`.
    pub fn outbound(&self) -> Arc<CoapOutbound> {
        self.outbound.clone()
    }

    /// The counters of the server and the client.
    pub fn stats(&self) -> CoapStats {
        self.counters.snapshot()
    }

    /// Stops the server, the client, the observations and outbound requests in flight.
    pub fn shutdown(&self) {
        self.cancel.cancel();
    }
}

impl Drop for CoapTransport {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
