//! The `[xmpp]` configuration: which XMPP servers the hub connects to, as whom, and how.
//!
//! Every struct rejects unknown keys, and [`XmppConfig::validate`] names the key of every error
//! (`xmpp.servers[0].jid`, ...).

use std::{net::IpAddr, path::PathBuf, time::Duration};

use serde::{Deserialize, Serialize};
use tokio_xmpp::jid::{BareJid, Jid};

use crate::XmppError;

/// The whole `[xmpp]` table. The transport runs when at least one server is configured.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct XmppConfig {
    /// One client connection per entry (`[[xmpp.servers]]`).
    pub servers: Vec<ServerConfig>,
}

/// How the connection is secured.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// STARTTLS is required; a server that does not offer it is refused (RFC 6120).
    #[default]
    Starttls,
    /// No TLS at all: allowed only when `address` is a loopback address (a server on the same machine).
    None,
}

/// `[[xmpp.servers]]`: one client session on one XMPP server, and the publish-subscribe service it follows.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// The connection's name: inbound messages carry it as `server` metadata, and an outbound message's
    /// `server` metadata selects it.
    pub name: String,
    /// The hub's account, `user@domain` or `user@domain/resource`.
    pub jid: String,
    /// The password, written in the config (prefer `password_env`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password: Option<String>,
    /// The environment variable that holds the password.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub password_env: Option<String>,
    /// `host:port` to connect to; unset means the JID's domain on port 5222.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub address: Option<String>,
    /// The publish-subscribe service (XEP-0060), e.g. `pubsub.example.org`. Events from any other sender are
    /// dropped and counted.
    pub pubsub_service: String,
    /// STARTTLS (default) or none (loopback only).
    #[serde(default)]
    pub tls: TlsMode,
    /// A PEM file of CA certificates to trust; the system roots otherwise.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// How often the service's nodes are listed again (disco#items) to find new ones, in milliseconds.
    #[serde(default = "default_discover_interval")]
    pub discover_interval_ms: u64,
    /// Node globs (`*` wildcard) whose newest stored item is fetched when the hub subscribes, so that what was
    /// published before (a device's description) is known at once. Other nodes deliver new items only.
    #[serde(default = "default_fetch_latest")]
    pub fetch_latest: Vec<String>,
    /// After a lost session, how many stored items of a node are fetched to find those published while the hub
    /// was away (0: no catch-up).
    #[serde(default = "default_catch_up_items")]
    pub catch_up_items: usize,
    /// The largest item payload accepted or published, in bytes; larger items are dropped and counted.
    #[serde(default = "default_max_item_bytes")]
    pub max_item_bytes: usize,
    /// The most nodes followed on this server; further matching nodes are skipped (and logged).
    #[serde(default = "default_max_nodes")]
    pub max_nodes: usize,
    /// How long a request (subscribe, fetch, publish) waits for the server's answer, in milliseconds.
    #[serde(default = "default_request_timeout")]
    pub request_timeout_ms: u64,
    /// How many outbound publishes may wait for the connection; beyond that `send` refuses.
    #[serde(default = "default_outbound_queue")]
    pub outbound_queue: usize,
}

impl std::fmt::Debug for ServerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerConfig")
            .field("name", &self.name)
            .field("jid", &self.jid)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("password_env", &self.password_env)
            .field("address", &self.address)
            .field("pubsub_service", &self.pubsub_service)
            .field("tls", &self.tls)
            .field("ca_file", &self.ca_file)
            .finish_non_exhaustive()
    }
}

fn default_discover_interval() -> u64 {
    30_000
}
fn default_fetch_latest() -> Vec<String> {
    vec!["*_meta".to_owned()]
}
fn default_catch_up_items() -> usize {
    256
}
fn default_max_item_bytes() -> usize {
    64 * 1024
}
fn default_max_nodes() -> usize {
    10_000
}
fn default_request_timeout() -> u64 {
    10_000
}
fn default_outbound_queue() -> usize {
    256
}

/// The port XMPP clients connect to (RFC 6120).
pub const DEFAULT_PORT: u16 = 5222;

impl ServerConfig {
    /// A server entry with default settings.
    pub fn new(name: &str, jid: &str, pubsub_service: &str) -> Self {
        ServerConfig {
            name: name.to_owned(),
            jid: jid.to_owned(),
            password: None,
            password_env: None,
            address: None,
            pubsub_service: pubsub_service.to_owned(),
            tls: TlsMode::default(),
            ca_file: None,
            discover_interval_ms: default_discover_interval(),
            fetch_latest: default_fetch_latest(),
            catch_up_items: default_catch_up_items(),
            max_item_bytes: default_max_item_bytes(),
            max_nodes: default_max_nodes(),
            request_timeout_ms: default_request_timeout(),
            outbound_queue: default_outbound_queue(),
        }
    }

    fn key(&self, index: usize, field: &str) -> String {
        format!("xmpp.servers[{index}].{field}")
    }

    /// The account JID, parsed.
    pub fn account(&self) -> Result<Jid, String> {
        let jid = Jid::new(&self.jid).map_err(|e| format!("{:?} is not a JID: {e}", self.jid))?;
        if jid.node().is_none() {
            return Err(format!("{:?} has no user part (user@domain)", self.jid));
        }
        Ok(jid)
    }

    /// The publish-subscribe service, parsed.
    pub fn service(&self) -> Result<BareJid, String> {
        BareJid::new(&self.pubsub_service).map_err(|e| format!("{:?} is not a bare JID: {e}", self.pubsub_service))
    }

    /// `host` and `port` to connect to.
    pub fn endpoint(&self) -> Result<(String, u16), String> {
        match &self.address {
            None => Ok((self.account()?.domain().to_string(), DEFAULT_PORT)),
            Some(address) => {
                let (host, port) = address.rsplit_once(':').ok_or_else(|| format!("{address:?} is not host:port"))?;
                let port: u16 = port.parse().map_err(|_| format!("{address:?}: the port is not a number"))?;
                let host = host.trim_start_matches('[').trim_end_matches(']');
                if host.is_empty() || port == 0 {
                    return Err(format!("{address:?} is not host:port"));
                }
                Ok((host.to_owned(), port))
            }
        }
    }

    /// Whether the endpoint is on this machine.
    fn endpoint_is_loopback(&self) -> bool {
        match self.endpoint() {
            Ok((host, _)) => host == "localhost" || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback()),
            Err(_) => false,
        }
    }

    /// The password from `password` or from the variable `password_env` names.
    pub fn resolved_password(&self, index: usize) -> Result<String, XmppError> {
        match (&self.password, &self.password_env) {
            (Some(p), None) => Ok(p.clone()),
            (None, Some(var)) => std::env::var(var).map_err(|_| {
                XmppError::invalid(
                    self.key(index, "password_env"),
                    format!("environment variable {var:?} is not set (or not UTF-8)"),
                )
            }),
            (None, None) => Err(XmppError::invalid(self.key(index, "password"), "set password or password_env")),
            (Some(_), Some(_)) => {
                Err(XmppError::invalid(self.key(index, "password"), "set either password or password_env, not both"))
            }
        }
    }

    /// How often the nodes are listed again.
    pub fn discover_interval(&self) -> Duration {
        Duration::from_millis(self.discover_interval_ms)
    }

    /// How long a request waits for its answer.
    pub fn request_timeout(&self) -> Duration {
        Duration::from_millis(self.request_timeout_ms)
    }

    fn validate(&self, index: usize) -> Result<(), XmppError> {
        let key = |field: &str| self.key(index, field);
        if self.name.is_empty() || !self.name.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)) {
            return Err(XmppError::invalid(key("name"), "must be non-empty: letters, digits, - _ ."));
        }
        self.account().map_err(|reason| XmppError::invalid(key("jid"), reason))?;
        self.service().map_err(|reason| XmppError::invalid(key("pubsub_service"), reason))?;
        self.endpoint().map_err(|reason| XmppError::invalid(key("address"), reason))?;
        if self.password.is_some() && self.password_env.is_some() {
            return Err(XmppError::invalid(key("password"), "set either password or password_env, not both"));
        }
        if self.password.is_none() && self.password_env.is_none() {
            return Err(XmppError::invalid(key("password"), "set password or password_env"));
        }
        if self.tls == TlsMode::None && !self.endpoint_is_loopback() {
            return Err(XmppError::invalid(
                key("tls"),
                "\"none\" is allowed only for a server on a loopback address; use \"starttls\"",
            ));
        }
        if self.tls == TlsMode::None && self.ca_file.is_some() {
            return Err(XmppError::invalid(key("ca_file"), "only applies with tls = \"starttls\""));
        }
        for (i, glob) in self.fetch_latest.iter().enumerate() {
            if glob.is_empty() {
                return Err(XmppError::invalid(format!("{}[{i}]", key("fetch_latest")), "must not be empty"));
            }
        }
        let positive = [
            ("discover_interval_ms", self.discover_interval_ms),
            ("max_item_bytes", self.max_item_bytes as u64),
            ("max_nodes", self.max_nodes as u64),
            ("request_timeout_ms", self.request_timeout_ms),
            ("outbound_queue", self.outbound_queue as u64),
        ];
        for (name, value) in positive {
            if value == 0 {
                return Err(XmppError::invalid(key(name), "must be greater than 0"));
            }
        }
        Ok(())
    }
}

impl XmppConfig {
    /// Checks every value, naming the key of the first one that is wrong.
    pub fn validate(&self) -> Result<(), XmppError> {
        for (i, server) in self.servers.iter().enumerate() {
            server.validate(i)?;
            if self.servers[..i].iter().any(|other| other.name == server.name) {
                return Err(XmppError::invalid(format!("xmpp.servers[{i}].name"), "is used by another server"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn server() -> ServerConfig {
        let mut s = ServerConfig::new("sox", "hub@localhost/hub", "pubsub.localhost");
        s.password = Some("secret".to_owned());
        s
    }

    fn error_key(config: &XmppConfig) -> String {
        match config.validate() {
            Err(XmppError::InvalidConfig { key, .. }) => key,
            other => panic!("expected an invalid config, got {other:?}"),
        }
    }

    #[test]
    fn a_plain_entry_is_valid_and_defaults_are_sensible() {
        let config = XmppConfig { servers: vec![server()] };
        config.validate().unwrap();
        assert_eq!(server().endpoint().unwrap(), ("localhost".to_owned(), 5222));
        assert_eq!(server().fetch_latest, vec!["*_meta"]);
        assert!(!format!("{:?}", server()).contains("secret"), "the password never appears in Debug output");
    }

    #[test]
    fn each_error_names_its_key() {
        type Change = fn(&mut ServerConfig);
        let cases: Vec<(Change, &str)> = vec![
            (|s| s.name = "a b".into(), "xmpp.servers[0].name"),
            (|s| s.jid = "localhost".into(), "xmpp.servers[0].jid"),
            (|s| s.pubsub_service = "".into(), "xmpp.servers[0].pubsub_service"),
            (|s| s.address = Some("nohost".into()), "xmpp.servers[0].address"),
            (|s| s.password = None, "xmpp.servers[0].password"),
            (|s| s.password_env = Some("X".into()), "xmpp.servers[0].password"),
            (
                |s| {
                    s.tls = TlsMode::None;
                    s.address = Some("10.1.2.3:5222".into())
                },
                "xmpp.servers[0].tls",
            ),
            (|s| s.max_nodes = 0, "xmpp.servers[0].max_nodes"),
            (|s| s.fetch_latest = vec!["".into()], "xmpp.servers[0].fetch_latest[0]"),
        ];
        for (change, key) in cases {
            let mut s = server();
            change(&mut s);
            assert_eq!(error_key(&XmppConfig { servers: vec![s] }), key);
        }
        assert_eq!(error_key(&XmppConfig { servers: vec![server(), server()] }), "xmpp.servers[1].name");
    }

    #[test]
    fn plaintext_is_for_loopback_only() {
        let mut s = server();
        s.tls = TlsMode::None;
        s.address = Some("127.0.0.1:15222".into());
        XmppConfig { servers: vec![s.clone()] }.validate().unwrap();
        s.address = Some("[::1]:15222".into());
        XmppConfig { servers: vec![s] }.validate().unwrap();
    }

    #[test]
    fn unknown_keys_are_refused() {
        let text = "[[servers]]\nname = \"a\"\njid = \"h@l\"\npassword = \"p\"\npubsub_service = \"p.l\"\nbogus = 1\n";
        let err = toml::from_str::<XmppConfig>(text).unwrap_err().to_string();
        assert!(err.contains("bogus"), "{err}");
    }
}
