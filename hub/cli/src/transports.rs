//! Starts the host transports (MQTT, CoAP, LoRa gateways over GWMP, XMPP publish-subscribe), registers their outbound side with the
//! plugin runtime, and pumps what they receive into `PluginHost::dispatch`. Wiring only: each transport's
//! behaviour lives in its crate.

use std::{collections::BTreeMap, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Result;
use hub_api::{HostTransport, counters_of};
use hub_config::Config;
use hub_model::Timestamp;
use hub_plugin_sdk::abi::{InboundMessage, transport};
use hub_policy::{Action, PolicyEngine, TokenRegistry};
use hub_runtime::{PluginHost, Transports};
use serde::de::DeserializeOwned;
use tokio::{sync::mpsc, task::JoinHandle};
use tokio_util::sync::CancellationToken;

/// Most messages a transport may have waiting for the plugin runtime; a full queue slows its socket down.
const INBOUND_QUEUE: usize = 1024;
/// How often the CoAP endpoint's `/.well-known/core` and the XMPP nodes followed are refreshed from the plugins'
/// grants.
const LINKS_REFRESH: Duration = Duration::from_secs(5);

/// A transport's table of the config (`[mqtt]`, `[coap]`, `[gwmp]`), parsed with the transport's own schema;
/// errors name the full key (`coap.listen`).
pub fn section<T: DeserializeOwned>(name: &str, table: &toml::Table) -> Result<T> {
    serde_path_to_error::deserialize(toml::Value::Table(table.clone())).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        anyhow::anyhow!("invalid configuration:\n  - {name}.{path}: {inner}")
    })
}

/// The effective settings of a transport, written back into its config table (after flags are applied).
pub fn to_table(name: &str, value: &impl serde::Serialize) -> Result<toml::Table> {
    toml::Value::try_from(value)
        .ok()
        .and_then(|v| v.as_table().cloned())
        .ok_or_else(|| anyhow::anyhow!("{name}: cannot represent the effective configuration"))
}

/// Every transport's section, parsed and validated.
pub struct TransportConfigs {
    pub mqtt: hub_transport_mqtt::MqttConfig,
    pub coap: hub_transport_coap::CoapConfig,
    pub gwmp: hub_transport_gwmp::GwmpConfig,
    pub xmpp: hub_transport_xmpp::XmppConfig,
}

impl TransportConfigs {
    /// Parses and validates `[mqtt]`, `[coap]` and `[gwmp]`.
    pub fn of(config: &Config) -> Result<TransportConfigs> {
        let configs = TransportConfigs {
            mqtt: section("mqtt", &config.mqtt)?,
            coap: section("coap", &config.coap)?,
            gwmp: section("gwmp", &config.gwmp)?,
            xmpp: section("xmpp", &config.xmpp)?,
        };
        configs.validate()?;
        Ok(configs)
    }

    /// Checks every value, naming the key of the first one that is wrong.
    pub fn validate(&self) -> Result<()> {
        self.mqtt.validate()?;
        self.coap.validate()?;
        self.gwmp.validate()?;
        self.xmpp.validate()?;
        Ok(())
    }

    /// Writes the effective settings back into `config`.
    pub fn store_into(&self, config: &mut Config) -> Result<()> {
        config.mqtt = to_table("mqtt", &self.mqtt)?;
        config.coap = to_table("coap", &self.coap)?;
        config.gwmp = to_table("gwmp", &self.gwmp)?;
        config.xmpp = to_table("xmpp", &self.xmpp)?;
        Ok(())
    }
}

/// The running host transports.
pub struct HostSide {
    mqtt_broker: Option<Arc<hub_transport_mqtt::EmbeddedBroker>>,
    mqtt_bridges: Vec<Arc<hub_transport_mqtt::Bridge>>,
    coap: Option<Arc<hub_transport_coap::CoapTransport>>,
    gwmp: Option<Arc<hub_transport_gwmp::GwmpTransport>>,
    xmpp: Option<Arc<hub_transport_xmpp::XmppTransport>>,
    tasks: Vec<JoinHandle<()>>,
    cancel: CancellationToken,
}

impl HostSide {
    /// Starts every enabled transport, registers each one's outbound side, and starts the pumps into `plugins`.
    pub async fn start(
        configs: &TransportConfigs,
        tokens: &Arc<TokenRegistry>,
        policy: &Arc<PolicyEngine>,
        transports: &Arc<Transports>,
        plugins: &PluginHost,
    ) -> Result<HostSide> {
        let mut side = HostSide {
            mqtt_broker: None,
            mqtt_bridges: Vec::new(),
            coap: None,
            gwmp: None,
            xmpp: None,
            tasks: Vec::new(),
            cancel: CancellationToken::new(),
        };
        side.start_mqtt(&configs.mqtt, tokens, transports, plugins).await?;
        if configs.coap.enabled {
            side.start_coap(&configs.coap, tokens, policy, transports, plugins).await?;
        }
        if configs.gwmp.enabled {
            side.start_gwmp(&configs.gwmp, transports, plugins)?;
        }
        if !configs.xmpp.servers.is_empty() {
            side.start_xmpp(&configs.xmpp, transports, plugins)?;
        }
        // What the CoAP endpoint lists and which XMPP nodes are followed come from the plugins' grants, which
        // change as plugins are installed: refreshed now and periodically.
        let (followers, subscribed, cancel) = (side.followers(), plugins.clone(), side.cancel.clone());
        followers.refresh(plugins);
        side.tasks.push(tokio::spawn(async move {
            let mut ticker = tokio::time::interval(LINKS_REFRESH);
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = ticker.tick() => followers.refresh(&subscribed),
                }
            }
        }));
        Ok(side)
    }

    async fn start_mqtt(
        &mut self,
        config: &hub_transport_mqtt::MqttConfig,
        tokens: &Arc<TokenRegistry>,
        transports: &Transports,
        plugins: &PluginHost,
    ) -> Result<()> {
        let (tx, rx) = mpsc::channel::<InboundMessage>(INBOUND_QUEUE);
        let mut outbound = hub_transport_mqtt::MqttOutbound::new();
        if config.broker.enabled {
            let broker = hub_transport_mqtt::EmbeddedBroker::start(
                &config.broker,
                Arc::new(TokenDeviceAuth(tokens.clone())),
                tx.clone(),
            )
            .await?;
            tracing::info!(listen = %broker.local_addr(), anonymous = broker.anonymous_allowed(), "embedded MQTT broker");
            let broker = Arc::new(broker);
            outbound = outbound.with_embedded(broker.clone());
            self.mqtt_broker = Some(broker);
        }
        for bridge_config in &config.bridges {
            let bridge = Arc::new(hub_transport_mqtt::Bridge::start(bridge_config, tx.clone())?);
            outbound = outbound.with_bridge(bridge.clone());
            self.mqtt_bridges.push(bridge);
        }
        transports.register(transport::MQTT, Arc::new(outbound));
        self.tasks.push(pump(rx, plugins.clone()));
        Ok(())
    }

    async fn start_coap(
        &mut self,
        config: &hub_transport_coap::CoapConfig,
        tokens: &Arc<TokenRegistry>,
        policy: &Arc<PolicyEngine>,
        transports: &Transports,
        plugins: &PluginHost,
    ) -> Result<()> {
        let (tx, mut rx) = mpsc::channel::<hub_transport_coap::Delivery>(INBOUND_QUEUE);
        let auth = Arc::new(CoapDeviceAuth { tokens: tokens.clone(), policy: policy.clone() });
        let coap = Arc::new(hub_transport_coap::CoapTransport::start(config, auth, tx).await?);
        tracing::info!(listen = ?coap.local_addr(), anonymous = coap.anonymous_allowed(), "CoAP endpoint");
        transports.register(transport::COAP, coap.outbound());
        let dispatcher = plugins.clone();
        // The endpoint answers each request with what dispatch says (2.04, 4.04, 5.03), so it waits for it.
        self.tasks.push(tokio::spawn(async move {
            while let Some(delivery) = rx.recv().await {
                let (message, reply) = delivery.into_parts();
                reply.send(dispatcher.dispatch(message).await);
            }
        }));
        self.coap = Some(coap);
        Ok(())
    }

    fn start_gwmp(
        &mut self,
        config: &hub_transport_gwmp::GwmpConfig,
        transports: &Transports,
        plugins: &PluginHost,
    ) -> Result<()> {
        let (tx, rx) = mpsc::channel::<InboundMessage>(INBOUND_QUEUE);
        let gwmp = Arc::new(hub_transport_gwmp::GwmpTransport::start(config, tx)?);
        transports.register(transport::UDP, gwmp.clone());
        self.tasks.push(pump(rx, plugins.clone()));
        self.gwmp = Some(gwmp);
        Ok(())
    }

    fn start_xmpp(
        &mut self,
        config: &hub_transport_xmpp::XmppConfig,
        transports: &Transports,
        plugins: &PluginHost,
    ) -> Result<()> {
        let (tx, rx) = mpsc::channel::<InboundMessage>(INBOUND_QUEUE);
        let xmpp = Arc::new(hub_transport_xmpp::XmppTransport::start(config, tx)?);
        transports.register(transport::XMPP, xmpp.clone());
        self.tasks.push(pump(rx, plugins.clone()));
        tracing::info!(servers = config.servers.len(), "XMPP transport");
        self.xmpp = Some(xmpp);
        Ok(())
    }

    /// The ports some official adapters' grants name.
    pub fn ports(&self) -> hub_adapters::HostPorts {
        hub_adapters::HostPorts { gwmp: self.gwmp.as_ref().map(|g| g.local_addr().port()) }
    }

    /// Refreshes what the CoAP endpoint's `/.well-known/core` lists and which XMPP nodes are followed (after
    /// plugins were installed).
    pub fn refresh_links(&self, plugins: &PluginHost) {
        self.followers().refresh(plugins);
    }

    fn followers(&self) -> Followers {
        Followers { coap: self.coap.clone(), xmpp: self.xmpp.clone() }
    }

    /// The transports as the API shows them.
    pub fn status(&self) -> hub_api::HostTransports {
        let mut list: Vec<Arc<dyn HostTransport>> = Vec::new();
        if let Some(coap) = &self.coap {
            list.push(Arc::new(CoapStatus(coap.clone())));
        }
        if let Some(gwmp) = &self.gwmp {
            list.push(Arc::new(GwmpStatus(gwmp.clone())));
        }
        if let Some(xmpp) = &self.xmpp {
            list.push(Arc::new(XmppStatus(xmpp.clone())));
        }
        Arc::new(list)
    }

    /// Stops every transport and its pump.
    pub async fn shutdown(self) {
        self.cancel.cancel();
        for bridge in &self.mqtt_bridges {
            bridge.shutdown().await;
        }
        if let Some(broker) = &self.mqtt_broker {
            broker.shutdown();
        }
        if let Some(coap) = &self.coap {
            coap.shutdown();
        }
        if let Some(gwmp) = &self.gwmp {
            gwmp.shutdown().await;
        }
        if let Some(xmpp) = &self.xmpp {
            xmpp.shutdown().await;
        }
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Hands each received message to the runtime. Awaiting dispatch is what carries back-pressure from slow
/// plugins to the sockets.
fn pump(mut rx: mpsc::Receiver<InboundMessage>, plugins: PluginHost) -> JoinHandle<()> {
    tokio::spawn(async move {
        while let Some(message) = rx.recv().await {
            plugins.dispatch(message).await;
        }
    })
}

/// The transports whose bindings follow the plugins' grants.
struct Followers {
    coap: Option<Arc<hub_transport_coap::CoapTransport>>,
    xmpp: Option<Arc<hub_transport_xmpp::XmppTransport>>,
}

impl Followers {
    fn refresh(&self, plugins: &PluginHost) {
        if let Some(coap) = &self.coap {
            coap.set_links(subscribed(plugins, transport::COAP));
        }
        if let Some(xmpp) = &self.xmpp {
            xmpp.set_subscriptions(&subscribed(plugins, transport::XMPP));
        }
    }
}

/// The patterns plugins subscribe to on `transport`.
fn subscribed(plugins: &PluginHost, name: &str) -> Vec<String> {
    plugins.subscriptions().into_iter().filter(|(_, s)| s.transport == name).map(|(_, s)| s.pattern).collect()
}

/// Devices authenticate to the embedded broker with an API token as the password (any username).
struct TokenDeviceAuth(Arc<TokenRegistry>);

impl hub_transport_mqtt::DeviceAuth for TokenDeviceAuth {
    fn check(&self, _username: &str, password: &str) -> Option<String> {
        self.0.authenticate(password, Timestamp::now().as_micros()).ok().map(|p| p.subject)
    }
}

/// CoAP devices authenticate with an API token (the `token` query parameter or option), and the token's
/// subject needs `write` on what the path names: `/up/{p}/{s}/{r}` the resource, `/up/{p}/{s}` every resource
/// of the service (`{p}/{s}/*`), `/up/{p}` the provider, and a bare `/up` (SenML packs naming whole paths)
/// everything (`*`). Discovery needs only a valid token.
struct CoapDeviceAuth {
    tokens: Arc<TokenRegistry>,
    policy: Arc<PolicyEngine>,
}

impl hub_transport_coap::DeviceAuth for CoapDeviceAuth {
    fn authorize(&self, token: Option<&str>, path: &str) -> Result<Option<String>, hub_transport_coap::Denied> {
        use hub_transport_coap::Denied;
        let Some(token) = token else {
            return Ok(None);
        };
        let principal =
            self.tokens.authenticate(token, Timestamp::now().as_micros()).map_err(|_| Denied::Unauthenticated)?;
        if path == "/.well-known/core" {
            return Ok(Some(principal.subject));
        }
        let object = coap_write_object(path).ok_or(Denied::Forbidden)?;
        if self.policy.check(&principal, &object, Action::Write) {
            Ok(Some(principal.subject))
        } else {
            Err(Denied::Forbidden)
        }
    }
}

/// The policy object a device writes through a CoAP path, if the path is one devices write to.
fn coap_write_object(path: &str) -> Option<String> {
    let rest = path.strip_prefix("/up")?;
    if rest.is_empty() || rest == "/" {
        return Some("*".to_owned());
    }
    let parts: Vec<&str> = rest.strip_prefix('/')?.split('/').collect();
    if parts.iter().any(|p| p.is_empty()) {
        return None;
    }
    match parts.as_slice() {
        [provider] => Some((*provider).to_owned()),
        [provider, service] => Some(hub_policy::objects::resource(provider, service, "*")),
        [provider, service, resource] => Some(hub_policy::objects::resource(provider, service, resource)),
        _ => None,
    }
}

struct CoapStatus(Arc<hub_transport_coap::CoapTransport>);

impl HostTransport for CoapStatus {
    fn name(&self) -> &str {
        transport::COAP
    }
    fn listen(&self) -> Option<SocketAddr> {
        self.0.local_addr()
    }
    fn counters(&self) -> BTreeMap<String, u64> {
        counters_of(&self.0.stats())
    }
}

struct GwmpStatus(Arc<hub_transport_gwmp::GwmpTransport>);

impl HostTransport for GwmpStatus {
    fn name(&self) -> &str {
        transport::UDP
    }
    fn listen(&self) -> Option<SocketAddr> {
        Some(self.0.local_addr())
    }
    fn counters(&self) -> BTreeMap<String, u64> {
        counters_of(&self.0.stats())
    }
    fn gateways(&self) -> Option<Vec<serde_json::Value>> {
        Some(self.0.gateways().iter().filter_map(|g| serde_json::to_value(g).ok()).collect())
    }
}

struct XmppStatus(Arc<hub_transport_xmpp::XmppTransport>);

impl HostTransport for XmppStatus {
    fn name(&self) -> &str {
        transport::XMPP
    }
    fn listen(&self) -> Option<SocketAddr> {
        None
    }
    fn counters(&self) -> BTreeMap<String, u64> {
        counters_of(&self.0.stats())
    }
    fn links(&self) -> Option<Vec<serde_json::Value>> {
        Some(self.0.links().iter().filter_map(|l| serde_json::to_value(l).ok()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::coap_write_object;

    #[test]
    fn coap_paths_name_the_object_a_device_writes() {
        assert_eq!(coap_write_object("/up").as_deref(), Some("*"));
        assert_eq!(coap_write_object("/up/noise-1").as_deref(), Some("noise-1"));
        assert_eq!(coap_write_object("/up/noise-1/env").as_deref(), Some("noise-1/env/*"));
        assert_eq!(coap_write_object("/up/noise-1/env/level").as_deref(), Some("noise-1/env/level"));
        for refused in ["/down/x", "/upx", "/up/a/b/c/d", "/up//b/c", "/up/a/b/", ""] {
            assert_eq!(coap_write_object(refused), None, "{refused}");
        }
    }
}
