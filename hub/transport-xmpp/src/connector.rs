//! Opens the byte stream of one XMPP session: TCP to the configured endpoint, then STARTTLS with the hub's own
//! rustls configuration (the system roots or the server entry's `ca_file`), or plain TCP to a loopback server.
//! SASL, resource binding and reconnection are `tokio-xmpp`'s; this is the seam where the hub decides how the
//! stream is secured.

use std::{borrow::Cow, fmt, io, sync::Arc};

use futures::{SinkExt, StreamExt};
use rustls::pki_types::{CertificateDer, ServerName, pem::PemObject};
use sasl::common::ChannelBinding;
use tokio::{io::BufStream, net::TcpStream};
use tokio_rustls::{TlsConnector, client::TlsStream};
use tokio_util::either::Either;
use tokio_xmpp::{
    connect::ServerConnector,
    jid::Jid,
    parsers::starttls,
    xmlstream::{
        FallibleStreamElement, PendingFeaturesRecv, ReadError, StreamHeader, Timeouts, XmppStreamElement,
        initiate_stream,
    },
};

use crate::{
    XmppError,
    config::ServerConfig,
    link::{LinkShared, add},
};

/// The stream a session runs on: plain TCP (loopback only) or TLS over TCP.
pub(crate) type SessionStream = BufStream<Either<TcpStream, TlsStream<TcpStream>>>;

/// Connects one configured server.
#[derive(Clone)]
pub(crate) struct Connector {
    host: String,
    port: u16,
    /// `None` for a plaintext (loopback) server.
    tls: Option<Arc<rustls::ClientConfig>>,
    /// Where a failed attempt is reported (the session library retries it with backoff on its own).
    shared: Arc<LinkShared>,
    name: String,
}

impl fmt::Debug for Connector {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connector").field("host", &self.host).field("port", &self.port).finish_non_exhaustive()
    }
}

impl Connector {
    /// The connector of server entry `index`; reads `ca_file` now, so a bad file stops the start.
    pub fn new(config: &ServerConfig, index: usize, shared: Arc<LinkShared>) -> Result<Connector, XmppError> {
        let (host, port) =
            config.endpoint().map_err(|reason| XmppError::invalid(format!("xmpp.servers[{index}].address"), reason))?;
        let tls = match config.tls {
            crate::TlsMode::None => None,
            crate::TlsMode::Starttls => Some(Arc::new(tls_config(config, index)?)),
        };
        Ok(Connector { host, port, tls, shared, name: config.name.clone() })
    }

    async fn tcp(&self) -> Result<TcpStream, tokio_xmpp::Error> {
        let stream = TcpStream::connect((self.host.as_str(), self.port)).await?;
        stream.set_nodelay(true)?;
        Ok(stream)
    }
}

fn header(jid: &Jid) -> StreamHeader<'_> {
    StreamHeader { to: Some(Cow::Borrowed(jid.domain().as_str())), from: None, id: None }
}

impl ServerConnector for Connector {
    type Stream = SessionStream;

    async fn connect(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> Result<(PendingFeaturesRecv<Self::Stream>, ChannelBinding), tokio_xmpp::Error> {
        let result = self.open(jid, ns, timeouts).await;
        if let Err(e) = &result {
            add(&self.shared.counters.connect_errors, 1);
            self.shared.fail(format!("{}: connecting to {}:{}: {e}", self.name, self.host, self.port));
        }
        result
    }
}

impl Connector {
    async fn open(
        &self,
        jid: &Jid,
        ns: &'static str,
        timeouts: Timeouts,
    ) -> Result<(PendingFeaturesRecv<SessionStream>, ChannelBinding), tokio_xmpp::Error> {
        let tcp = self.tcp().await?;
        let Some(tls) = &self.tls else {
            let stream = initiate_stream(BufStream::new(Either::Left(tcp)), ns, header(jid), timeouts).await?;
            return Ok((stream, ChannelBinding::None));
        };

        // STARTTLS (RFC 6120 §5): open the stream in the clear, require the feature, ask, wait for <proceed/>.
        let plain = initiate_stream(BufStream::new(tcp), ns, header(jid), timeouts).await?;
        let (features, mut plain) = plain.recv_features().await?;
        if !features.can_starttls() {
            return Err(tokio_xmpp::Error::Protocol(tokio_xmpp::error::ProtocolError::NoTls));
        }
        plain.send(&XmppStreamElement::Starttls(starttls::Nonza::Request(starttls::Request))).await?;
        loop {
            let next: Option<Result<XmppStreamElement, ReadError>> =
                plain.next().await.map(|item| item.and_then(FallibleStreamElement::into_read_error));
            match next {
                Some(Ok(XmppStreamElement::Starttls(starttls::Nonza::Proceed(_)))) => break,
                Some(Ok(_)) | Some(Err(ReadError::SoftTimeout)) => {}
                Some(Err(ReadError::HardError(e))) => return Err(e.into()),
                Some(Err(ReadError::ParseError(e))) => {
                    return Err(io::Error::new(io::ErrorKind::InvalidData, e).into());
                }
                None | Some(Err(ReadError::StreamFooterReceived)) => return Err(tokio_xmpp::Error::Disconnected),
            }
        }
        let tcp = plain.into_inner().into_inner();
        let name = ServerName::try_from(jid.domain().as_str().to_owned())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let tls_stream = TlsConnector::from(tls.clone()).connect(name, tcp).await?;
        let binding = channel_binding(&tls_stream);
        let stream = initiate_stream(BufStream::new(Either::Right(tls_stream)), ns, header(jid), timeouts).await?;
        Ok((stream, binding))
    }
}

/// `tls-exporter` channel binding (RFC 9266) on TLS 1.3; none on older versions.
fn channel_binding(stream: &TlsStream<TcpStream>) -> ChannelBinding {
    let (_, connection) = stream.get_ref();
    if connection.protocol_version() != Some(rustls::ProtocolVersion::TLSv1_3) {
        return ChannelBinding::None;
    }
    match connection.export_keying_material(vec![0u8; 32], b"EXPORTER-Channel-Binding", None) {
        Ok(material) => ChannelBinding::TlsExporter(material),
        Err(_) => ChannelBinding::None,
    }
}

/// The rustls client configuration of a STARTTLS server (ring provider, no process-wide default needed).
fn tls_config(config: &ServerConfig, index: usize) -> Result<rustls::ClientConfig, XmppError> {
    let key = format!("xmpp.servers[{index}].ca_file");
    let mut roots = rustls::RootCertStore::empty();
    match &config.ca_file {
        Some(path) => {
            let certs = CertificateDer::pem_file_iter(path)
                .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
                .map_err(|e| XmppError::invalid(&key, format!("{}: {e}", path.display())))?;
            let (added, _) = roots.add_parsable_certificates(certs);
            if added == 0 {
                return Err(XmppError::invalid(&key, format!("{} holds no usable certificate", path.display())));
            }
        }
        None => {
            roots.add_parsable_certificates(rustls_native_certs::load_native_certs().certs);
            if roots.is_empty() {
                return Err(XmppError::invalid(&key, "no system CA certificates found; set ca_file"));
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| XmppError::invalid(&key, e.to_string()))?
        .with_root_certificates(roots)
        .with_no_client_auth())
}
