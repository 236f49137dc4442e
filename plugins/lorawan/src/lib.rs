//! The official LoRaWAN adapter: LoRaWAN 1.0.x network- and application-server duties for the hub's own
//! devices, plus the mapping of uplinks from another network server (ChirpStack v4, The Things Stack v3).
//!
//! Input:
//! - `udp` messages from the GWMP host transport: one LoRaWAN PHYPayload each, with the gateway's radio
//!   details in the metadata (`gateway_eui`, `rssi`, `lsnr`, `tmst`, `freq`, `datr`, `codr`);
//! - `mqtt` messages on ChirpStack (`application/+/device/+/event/up`) and The Things Stack (`v3/+/devices/+/up`)
//!   uplink topics.
//!
//! For its own devices it verifies the MIC with the NwkSKey, reconstructs the 32-bit uplink counter and refuses
//! replays and gaps beyond MAX_FCNT_GAP, decrypts the FRMPayload, recognises copies of a frame heard by several
//! gateways, answers Join-Requests with Join-Accepts (session keys derived and kept in the plugin's state),
//! acknowledges confirmed uplinks and sends the downlinks queued by ACT in the RX1 window after the device's
//! next uplink, through the gateway that heard it best. Payloads go through the device's codec (Cayenne LPP or
//! raw) into resources of provider `lora-<deveui>`.
//!
//! Bad input (garbage, truncated frames, wrong MIC, replayed counters, unknown addresses) is skipped with a
//! warning (at most [`MAX_WARNINGS`] per call, then a count) and never produces a partial update. Keys never
//! appear in updates, logs or errors.

pub mod codec;
pub mod config;
pub mod crypto;
pub mod external;
pub mod frame;
pub mod session;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};

use hub_plugin_sdk::prelude::*;
use serde_json::Map;

use crate::codec::Reading;
use crate::config::{Activation, Config, DeviceConfig};
use crate::crypto::{Dir, Key};
use crate::frame::{DataDown, DataUp, JoinAccept, JoinRequest, Uplink};
use crate::session::{
    CounterBucket, Counters, DeviceState, Fcnt, MAX_DEV_NONCES, QueuedDownlink, Session, counter_bucket, counters_key,
    state_key,
};

/// The most warnings one call logs; the rest are counted in one last line.
pub const MAX_WARNINGS: usize = 8;
/// The most frames remembered for de-duplication (about 3 MiB at most).
const MAX_RECENT: usize = 16_384;
/// The provider name prefix.
pub const PROVIDER_PREFIX: &str = "lora-";
/// EU868 LoRa data rates DR0 to DR6, used to apply the RX1 data-rate offset.
const EU868_DATA_RATES: [&str; 7] =
    ["SF12BW125", "SF11BW125", "SF10BW125", "SF9BW125", "SF8BW125", "SF7BW125", "SF7BW250"];

pub(crate) fn hex_encode(bytes: &[u8]) -> String {
    hex::encode(bytes)
}

pub(crate) fn hex_decode(text: &str) -> Option<Vec<u8>> {
    hex::decode(text).ok()
}

/// The provider of a device.
pub fn provider_of(dev_eui: u64) -> String {
    format!("{PROVIDER_PREFIX}{dev_eui:016x}")
}

fn eui_of_provider(provider: &str) -> Option<u64> {
    config::parse_eui(provider.strip_prefix(PROVIDER_PREFIX)?)
}

/// One gateway's reception of a frame.
#[derive(Debug, Clone, PartialEq)]
struct Reception {
    /// The transport address it arrived on (the UDP port): downlinks leave from there.
    address: String,
    gateway: String,
    rssi: Option<f64>,
    snr: Option<f64>,
    tmst: Option<u32>,
    freq: Option<String>,
    datr: Option<String>,
    codr: Option<String>,
    received_us: i64,
}

impl Reception {
    fn of(message: &InboundMessage) -> Reception {
        let meta = &message.metadata;
        let text = |k: &str| meta.get(k).cloned();
        let number = |k: &str| meta.get(k).and_then(|v| v.parse::<f64>().ok()).filter(|v| v.is_finite());
        Reception {
            address: message.address.clone(),
            gateway: text("gateway_eui").unwrap_or_default(),
            rssi: number("rssi"),
            snr: number("lsnr"),
            tmst: meta.get("tmst").and_then(|v| v.parse().ok()),
            freq: text("freq"),
            datr: text("datr"),
            codr: text("codr"),
            received_us: message.received_us,
        }
    }

    /// Ordering by quality: SNR first (it tells how far above the noise the frame was), then RSSI.
    fn quality(&self) -> (f64, f64) {
        (self.snr.unwrap_or(f64::NEG_INFINITY), self.rssi.unwrap_or(f64::NEG_INFINITY))
    }
}

fn best(receptions: &[Reception]) -> Option<&Reception> {
    receptions.iter().max_by(|a, b| a.quality().partial_cmp(&b.quality()).unwrap_or(std::cmp::Ordering::Equal))
}

/// What identifies a frame heard by several gateways.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum FrameKey {
    Data { dev_addr: u32, fcnt16: u16, mic: [u8; 4] },
    Join { dev_eui: u64, dev_nonce: u16, mic: [u8; 4] },
}

/// A frame processed recently, to recognise its copies from other gateways.
#[derive(Debug, Clone)]
struct RecentFrame {
    at_us: i64,
    bytes: Vec<u8>,
    /// The device it was accepted for.
    provider: String,
    gateways: BTreeSet<String>,
    best: (Option<f64>, Option<f64>),
}

/// The radio summary of one uplink.
#[derive(Debug, Clone, Default, PartialEq)]
struct Radio {
    rssi: Option<f64>,
    snr: Option<f64>,
    gateways: BTreeSet<String>,
}

/// Everything one call emits, collected so each frame's updates are added whole or not at all.
struct Effects {
    out: Output,
    /// Model documents per provider: service → resource → declaration.
    models: BTreeMap<String, BTreeMap<String, Map<String, Value>>>,
    warnings: usize,
    /// Devices whose `dev/` state changed.
    dirty: BTreeSet<u64>,
    /// Devices whose counters changed.
    counted: BTreeSet<u64>,
}

impl Effects {
    fn new() -> Effects {
        Effects {
            out: Output::new(),
            models: BTreeMap::new(),
            warnings: 0,
            dirty: BTreeSet::new(),
            counted: BTreeSet::new(),
        }
    }

    fn warn(&mut self, ctx: &mut Context<'_>, message: impl FnOnce() -> String) {
        self.warnings += 1;
        if self.warnings <= MAX_WARNINGS {
            ctx.warn(message());
        }
    }

    fn declare(&mut self, provider: &str, service: &str, resource: &str, doc: Value) {
        self.models
            .entry(provider.to_owned())
            .or_default()
            .entry(service.to_owned())
            .or_default()
            .insert(resource.to_owned(), doc);
    }

    fn finish(mut self, ctx: &mut Context<'_>) -> Output {
        if self.warnings > MAX_WARNINGS {
            ctx.warn(format!("{} more frames were skipped in this batch", self.warnings - MAX_WARNINGS));
        }
        let mut models = Vec::new();
        for (provider, services) in std::mem::take(&mut self.models) {
            let services: Map<String, Value> = services
                .into_iter()
                .map(|(service, resources)| (service, json!({ "resources": Value::Object(resources) })))
                .collect();
            models.push(hub_plugin_sdk::abi::ProviderModel { provider, model: json!({ "services": services }) });
        }
        models.append(&mut self.out.models);
        self.out.models = models;
        self.out
    }
}

struct Device {
    config: DeviceConfig,
    provider: String,
    state: DeviceState,
}

/// The adapter.
pub struct LoRaWan {
    config: Config,
    /// Registry devices by DevEUI.
    devices: BTreeMap<u64, Device>,
    /// DevAddr → the devices whose session uses it (usually one).
    by_addr: HashMap<u32, Vec<u64>>,
    recent: HashMap<FrameKey, RecentFrame>,
    /// The keys of `recent` in the order they were added, to forget the oldest first.
    recent_order: VecDeque<FrameKey>,
    /// `provider/service/resource` declared (unit or action) since start.
    declared: HashSet<String>,
    /// Whether the registry devices' models and names went out (on the first tick).
    announced: bool,
}

impl LoRaWan {
    fn index(&mut self) {
        self.by_addr.clear();
        for (eui, device) in &self.devices {
            if let Some(session) = &device.state.session {
                self.by_addr.entry(session.dev_addr).or_default().push(*eui);
            }
        }
    }

    /// Writes the `dev/` state of the `dirty` devices and the counter buckets of the `counted` ones.
    fn save(&self, ctx: &mut Context<'_>, dirty: &BTreeSet<u64>, counted: &BTreeSet<u64>) {
        for eui in dirty {
            if let Some(device) = self.devices.get(eui) {
                ctx.state_set_json(&state_key(*eui), &device.state);
            }
        }
        let buckets: BTreeSet<u64> = counted.iter().map(|eui| counter_bucket(*eui)).collect();
        for bucket in buckets {
            let counters: CounterBucket = self
                .devices
                .iter()
                .filter(|(eui, _)| counter_bucket(**eui) == bucket)
                .filter_map(|(eui, d)| {
                    let s = d.state.session.as_ref()?;
                    let c = Counters {
                        dev_addr: s.dev_addr,
                        join_nonce: d.state.join_nonce,
                        up: s.fcnt_up,
                        down: s.fcnt_down,
                    };
                    Some((format!("{eui:016x}"), c))
                })
                .collect();
            ctx.state_set_json(&counters_key(bucket), &counters);
        }
    }

    /// Declares the downlink actions and sets the friendly name of a registry device (once per start).
    fn announce(&mut self, eui: u64, fx: &mut Effects) {
        let Some(device) = self.devices.get(&eui) else { return };
        if !self.declared.insert(format!("{}/downlink", device.provider)) {
            return;
        }
        let provider = device.provider.clone();
        if let Some(name) = &device.config.name {
            fx.out.update(&provider, "admin", "friendly_name", name.clone());
        }
        if matches!(device.config.activation, Activation::External) {
            return;
        }
        let action = |data: &str| json!({ "kind": "action", "type": "object", "parameters": { "port": "integer", data: "string" } });
        fx.declare(&provider, "downlink", "hex", action("hex"));
        fx.declare(&provider, "downlink", "base64", action("base64"));
        fx.declare(&provider, "downlink", "clear", json!({ "kind": "action", "type": "object" }));
    }

    /// Adds the updates of one accepted uplink: decoded readings, radio and LoRaWAN details.
    #[allow(clippy::too_many_arguments)]
    fn emit_uplink(
        &mut self,
        ctx: &mut Context<'_>,
        fx: &mut Effects,
        dev_eui: u64,
        at_us: i64,
        fport: Option<u8>,
        payload: &[u8],
        fcnt: Option<u32>,
        radio: &Radio,
    ) {
        let provider = provider_of(dev_eui);
        if self.devices.contains_key(&dev_eui) {
            self.announce(dev_eui, fx);
        }
        let codec = self.devices.get(&dev_eui).map_or(&self.config.default_codec, |d| &d.config.codec);
        let mut values: Vec<(&str, Reading)> = Vec::new();
        if let Some(port) = fport.filter(|p| (1..=223).contains(p)) {
            match codec.decode(payload) {
                Some(Ok(readings)) => values.extend(readings.into_iter().map(|r| ("uplink", r))),
                Some(Err(reason)) => {
                    fx.warn(ctx, || format!("{provider}: payload on port {port} not decoded: {reason}"))
                }
                None => {
                    if let Some(call) = codec.app_call(&provider, dev_eui, port, fcnt, payload, at_us) {
                        fx.out.call_app(call);
                    }
                }
            }
        }
        let mut meta = |service: &'static str, resource: &str, value: Value, unit: Option<&'static str>| {
            values.push((service, Reading { resource: resource.to_owned(), value, unit }));
        };
        if let Some(rssi) = radio.rssi {
            meta("radio", "rssi", json!(rssi), Some("dBm"));
        }
        if let Some(snr) = radio.snr {
            meta("radio", "snr", json!(snr), Some("dB"));
        }
        if !radio.gateways.is_empty() {
            meta("radio", "gateways", json!(radio.gateways), None);
        }
        if let Some(fcnt) = fcnt {
            meta("lorawan", "fcnt", json!(fcnt), None);
        }
        if let Some(port) = fport {
            meta("lorawan", "port", json!(port), None);
        }
        let location = location(&values);
        for (service, reading) in values {
            if let Some(unit) = reading.unit
                && self.declared.insert(format!("{provider}/{service}/{}", reading.resource))
            {
                let doc = json!({ "kind": "sensor", "type": value_type(&reading.value), "unit": unit });
                fx.declare(&provider, service, &reading.resource, doc);
            }
            fx.out.update_at(&provider, service, &reading.resource, reading.value, at_us);
        }
        if let Some(point) = location {
            fx.out.update_at(&provider, "admin", "location", point, at_us);
        }
    }

    fn on_udp(&mut self, ctx: &mut Context<'_>, fx: &mut Effects, bytes: &[u8], receptions: Vec<Reception>) {
        match frame::parse_uplink(bytes) {
            Ok(Uplink::Data(data)) => self.on_data(ctx, fx, bytes, &data, receptions),
            Ok(Uplink::Join(join)) => self.on_join(ctx, fx, bytes, &join, receptions),
            Err(reason) => fx.warn(ctx, || format!("LoRaWAN frame skipped: {reason}")),
        }
    }

    /// Handles a copy of a frame processed in an earlier call; `true` when `key` names one.
    fn duplicate(&mut self, fx: &mut Effects, key: FrameKey, bytes: &[u8], receptions: &[Reception]) -> bool {
        let Some(first) = receptions.first() else { return true };
        let window = self.config.dedup_window_us;
        let Some(recent) = self.recent.get_mut(&key) else { return false };
        if recent.bytes != bytes || first.received_us.saturating_sub(recent.at_us) > window {
            return false;
        }
        let before = recent.gateways.len();
        recent.gateways.extend(receptions.iter().map(|r| r.gateway.clone()));
        let at = recent.at_us;
        let provider = recent.provider.clone();
        if recent.gateways.len() > before {
            fx.out.update_at(&provider, "radio", "gateways", json!(recent.gateways), at);
        }
        if let Some(b) = best(receptions)
            && b.quality() > (recent.best.1.unwrap_or(f64::NEG_INFINITY), recent.best.0.unwrap_or(f64::NEG_INFINITY))
        {
            recent.best = (b.rssi, b.snr);
            if let Some(rssi) = b.rssi {
                fx.out.update_at(&provider, "radio", "rssi", rssi, at);
            }
            if let Some(snr) = b.snr {
                fx.out.update_at(&provider, "radio", "snr", snr, at);
            }
        }
        true
    }

    fn remember(&mut self, key: FrameKey, bytes: &[u8], provider: &str, receptions: &[Reception]) {
        let Some(first) = receptions.first() else { return };
        self.forget(first.received_us, MAX_RECENT - 1);
        let b = best(receptions);
        self.recent_order.push_back(key);
        self.recent.insert(
            key,
            RecentFrame {
                at_us: first.received_us,
                bytes: bytes.to_vec(),
                provider: provider.to_owned(),
                gateways: receptions.iter().map(|r| r.gateway.clone()).collect(),
                best: (b.and_then(|r| r.rssi), b.and_then(|r| r.snr)),
            },
        );
    }

    /// Forgets the frames older than the de-duplication window, and the oldest beyond `keep`.
    fn forget(&mut self, now_us: i64, keep: usize) {
        let window = self.config.dedup_window_us;
        while let Some(key) = self.recent_order.front() {
            let expired = self.recent.get(key).is_none_or(|r| now_us.saturating_sub(r.at_us) > window);
            if !expired && self.recent.len() <= keep {
                break;
            }
            if let Some(key) = self.recent_order.pop_front() {
                self.recent.remove(&key);
            }
        }
    }

    fn on_data(
        &mut self,
        ctx: &mut Context<'_>,
        fx: &mut Effects,
        bytes: &[u8],
        data: &DataUp<'_>,
        receptions: Vec<Reception>,
    ) {
        let key = FrameKey::Data { dev_addr: data.dev_addr, fcnt16: data.fcnt16, mic: data.mic };
        if self.duplicate(fx, key, bytes, &receptions) {
            return;
        }
        let Some(candidates) = self.by_addr.get(&data.dev_addr).cloned() else {
            fx.warn(ctx, || format!("uplink from unknown DevAddr {:08x} skipped", data.dev_addr));
            return;
        };
        // The MIC over the full 32-bit counter tells which device and which counter reading sent it.
        let mut verdict: Option<(u64, Fcnt)> = None;
        'devices: for eui in candidates {
            let Some(session) = self.devices.get(&eui).and_then(|d| d.state.session.as_ref()) else { continue };
            for reading in session::readings(session.fcnt_up, data.fcnt16) {
                let mic = crypto::data_mic(&session.nwk_s_key, Dir::Up, data.dev_addr, reading.value(), data.msg);
                if mic == data.mic {
                    verdict = Some((eui, reading));
                    break 'devices;
                }
            }
        }
        let (eui, fcnt) = match verdict {
            Some((eui, Fcnt::Next(fcnt))) => (eui, fcnt),
            Some((eui, Fcnt::Old(fcnt))) => {
                return fx.warn(ctx, || format!("{}: replayed or old frame counter {fcnt} skipped", provider_of(eui)));
            }
            Some((eui, Fcnt::TooFar(fcnt))) => {
                return fx.warn(ctx, || {
                    format!(
                        "{}: frame counter {fcnt} jumps more than {} ahead; skipped",
                        provider_of(eui),
                        session::MAX_FCNT_GAP
                    )
                });
            }
            None => {
                return fx.warn(ctx, || format!("uplink for DevAddr {:08x} skipped: MIC mismatch", data.dev_addr));
            }
        };
        let Some(device) = self.devices.get_mut(&eui) else { return };
        let Some(session) = device.state.session.as_mut() else { return };
        let mut payload = data.frm_payload.to_vec();
        match data.fport {
            Some(0) => {
                crypto::crypt_frm_payload(&session.nwk_s_key, Dir::Up, data.dev_addr, fcnt, &mut payload);
                ctx.debug(format!(
                    "{}: {} bytes of MAC commands on port 0 (not interpreted)",
                    device.provider,
                    payload.len()
                ));
            }
            Some(_) => crypto::crypt_frm_payload(&session.app_s_key, Dir::Up, data.dev_addr, fcnt, &mut payload),
            None => {}
        }
        session.fcnt_up = Some(fcnt);
        fx.counted.insert(eui);
        let provider = device.provider.clone();

        // Answer in RX1 when the device asked for an ACK or a downlink waits.
        let via = best(&receptions).cloned();
        let mut answer: Option<(Vec<u8>, u32)> = None;
        let mut no_timestamp = false;
        if data.confirmed || !device.state.queue.is_empty() {
            if via.as_ref().is_some_and(|v| v.tmst.is_some()) {
                let queued = device.state.queue.pop_front();
                if queued.is_some() {
                    fx.dirty.insert(eui);
                }
                let plain = queued.as_ref().and_then(|q| hex_decode(&q.hex).map(|bytes| (q.port, bytes)));
                let fpending = !device.state.queue.is_empty();
                if let Some(session) = device.state.session.as_mut() {
                    let fcnt_down = session.fcnt_down;
                    let phy = frame::build_data_down(
                        &DataDown {
                            confirmed: queued.as_ref().is_some_and(|q| q.confirmed),
                            dev_addr: data.dev_addr,
                            ack: data.confirmed,
                            fpending,
                            fcnt: fcnt_down,
                            port_payload: plain.as_ref().map(|(port, bytes)| (*port, bytes.as_slice())),
                        },
                        &session.nwk_s_key,
                        &session.app_s_key,
                    );
                    session.fcnt_down = fcnt_down.wrapping_add(1);
                    answer = Some((phy, fcnt_down));
                }
            } else {
                no_timestamp = true;
            }
        }
        if no_timestamp {
            fx.warn(ctx, || format!("{provider}: no gateway timestamp to schedule the RX1 downlink"));
        }
        if let (Some((phy, fcnt_down)), Some(via)) = (answer, via.as_ref())
            && let Some(message) = self.downlink(via, u32::from(self.config.rx1_delay_s), phy)
        {
            fx.out.send(message);
            fx.out.update_at(&provider, "lorawan", "fcnt_down", fcnt_down, via.received_us);
        }

        let radio = Radio {
            rssi: via.as_ref().and_then(|r| r.rssi),
            snr: via.as_ref().and_then(|r| r.snr),
            gateways: receptions.iter().map(|r| r.gateway.clone()).collect(),
        };
        let at = receptions.first().map_or(ctx.now_us(), |r| r.received_us);
        self.emit_uplink(ctx, fx, eui, at, data.fport, &payload, Some(fcnt), &radio);
        self.remember(key, bytes, &provider, &receptions);
    }

    fn on_join(
        &mut self,
        ctx: &mut Context<'_>,
        fx: &mut Effects,
        bytes: &[u8],
        join: &JoinRequest<'_>,
        receptions: Vec<Reception>,
    ) {
        let key = FrameKey::Join { dev_eui: join.dev_eui, dev_nonce: join.dev_nonce, mic: join.mic };
        if self.duplicate(fx, key, bytes, &receptions) {
            return;
        }
        let provider = provider_of(join.dev_eui);
        let Some(device) = self.devices.get(&join.dev_eui) else {
            return fx.warn(ctx, || format!("Join-Request from unknown DevEUI {:016x} skipped", join.dev_eui));
        };
        let Activation::Otaa { join_eui, app_key } = device.config.activation else {
            return fx.warn(ctx, || format!("{provider}: Join-Request from a device that is not OTAA skipped"));
        };
        if join_eui.is_some_and(|j| j != join.join_eui) {
            return fx.warn(ctx, || format!("{provider}: Join-Request with JoinEUI {:016x} skipped", join.join_eui));
        }
        if crypto::join_mic(&app_key, join.msg) != join.mic {
            return fx.warn(ctx, || format!("{provider}: Join-Request skipped: MIC mismatch"));
        }
        if device.state.dev_nonces.contains(&join.dev_nonce) {
            return fx
                .warn(ctx, || format!("{provider}: Join-Request with a reused DevNonce {} skipped", join.dev_nonce));
        }
        let Some(via) = best(&receptions).filter(|r| r.tmst.is_some()).cloned() else {
            return fx.warn(ctx, || format!("{provider}: no gateway timestamp to schedule the Join-Accept"));
        };

        let join_nonce = device.state.join_nonce.wrapping_add(1) & 0x00FF_FFFF;
        let nonce = join_nonce.to_le_bytes();
        let app_nonce = [nonce[0], nonce[1], nonce[2]];
        let net = self.config.net_id.to_le_bytes();
        let net_id = [net[0], net[1], net[2]];
        let dev_addr = self.allocate_dev_addr(&app_key, join, join_nonce);
        let (nwk_s_key, app_s_key) = crypto::derive_session_keys(&app_key, app_nonce, net_id, join.dev_nonce);
        let accept = frame::build_join_accept(
            &JoinAccept {
                app_nonce,
                net_id,
                dev_addr,
                dl_settings: (self.config.rx1_dr_offset & 0x07) << 4 | (self.config.rx2_dr & 0x0F),
                rx_delay: self.config.rx1_delay_s,
                cf_list: self.config.cf_list_bytes(),
            },
            &app_key,
        );
        let Some(message) = self.downlink(&via, u32::from(self.config.join_accept_delay_s), accept) else { return };
        fx.out.send(message);

        let Some(device) = self.devices.get_mut(&join.dev_eui) else { return };
        device.state.session = Some(Session::new(dev_addr, nwk_s_key, app_s_key));
        device.state.join_nonce = join_nonce;
        device.state.dev_nonces.push(join.dev_nonce);
        if device.state.dev_nonces.len() > MAX_DEV_NONCES {
            let excess = device.state.dev_nonces.len() - MAX_DEV_NONCES;
            device.state.dev_nonces.drain(..excess);
        }
        fx.dirty.insert(join.dev_eui);
        fx.counted.insert(join.dev_eui);
        self.index();
        ctx.info(format!("{provider} joined with DevAddr {dev_addr:08x}"));
        self.announce(join.dev_eui, fx);
        let at = via.received_us;
        fx.out.update_at(&provider, "lorawan", "dev_addr", format!("{dev_addr:08x}"), at);
        let radio =
            Radio { rssi: via.rssi, snr: via.snr, gateways: receptions.iter().map(|r| r.gateway.clone()).collect() };
        self.emit_uplink(ctx, fx, join.dev_eui, at, None, &[], None, &radio);
        self.remember(key, bytes, &provider, &receptions);
    }

    /// A DevAddr for a joining device: NwkID from the NetID, NwkAddr from AES(AppKey, DevEUI | DevNonce |
    /// JoinNonce), moved on while another device's session uses it.
    fn allocate_dev_addr(&self, app_key: &Key, join: &JoinRequest<'_>, join_nonce: u32) -> u32 {
        let mut block = [0u8; 16];
        block[..8].copy_from_slice(&join.dev_eui.to_le_bytes());
        block[8..10].copy_from_slice(&join.dev_nonce.to_le_bytes());
        block[10..14].copy_from_slice(&join_nonce.to_le_bytes());
        let seed = crypto::aes_encrypt(app_key, block);
        let mut nwk_addr = u32::from_le_bytes([seed[0], seed[1], seed[2], seed[3]]) & 0x01FF_FFFF;
        let nwk_id = (self.config.net_id & 0x3F) << 25;
        for _ in 0..64 {
            let addr = nwk_id | nwk_addr;
            let taken = self.by_addr.get(&addr).is_some_and(|euis| euis.iter().any(|e| *e != join.dev_eui));
            if !taken {
                return addr;
            }
            nwk_addr = (nwk_addr + 1) & 0x01FF_FFFF;
        }
        nwk_id | nwk_addr
    }

    /// The outbound message that makes `via`'s gateway send `phy` `delay_s` after it heard the uplink, on the
    /// uplink's frequency with the RX1 data rate.
    fn downlink(&self, via: &Reception, delay_s: u32, phy: Vec<u8>) -> Option<OutboundMessage> {
        let tmst = via.tmst?.wrapping_add(delay_s.saturating_mul(1_000_000));
        let datr = via.datr.as_deref().map(|d| rx1_data_rate(d, self.config.rx1_dr_offset)).unwrap_or("SF12BW125");
        Some(
            OutboundMessage::new(transport::UDP, &via.address, phy)
                .with_metadata("gateway_eui", &via.gateway)
                .with_metadata("tmst", &tmst.to_string())
                .with_metadata("freq", via.freq.as_deref().unwrap_or("869.525"))
                .with_metadata("rfch", "0")
                .with_metadata("powe", &self.config.tx_power_dbm.to_string())
                .with_metadata("modu", "LORA")
                .with_metadata("datr", datr)
                .with_metadata("codr", via.codr.as_deref().unwrap_or("4/5"))
                .with_metadata("ipol", "true"),
        )
    }

    fn on_mqtt(&mut self, ctx: &mut Context<'_>, fx: &mut Effects, message: &InboundMessage) {
        let Some(source) = external::Source::of_topic(&message.address) else {
            return fx.warn(ctx, || format!("MQTT topic {} is not an uplink topic this adapter maps", message.address));
        };
        let up = match external::parse(source, message.payload.as_bytes()) {
            Ok(up) => up,
            Err(reason) => return fx.warn(ctx, || format!("{}: {reason}", message.address)),
        };
        let b = up
            .receptions
            .iter()
            .max_by(|a, b| {
                let q = |r: &(String, Option<f64>, Option<f64>)| {
                    (r.2.unwrap_or(f64::NEG_INFINITY), r.1.unwrap_or(f64::NEG_INFINITY))
                };
                q(a).partial_cmp(&q(b)).unwrap_or(std::cmp::Ordering::Equal)
            })
            .cloned();
        let radio = Radio {
            rssi: b.as_ref().and_then(|r| r.1),
            snr: b.as_ref().and_then(|r| r.2),
            gateways: up.receptions.iter().map(|r| r.0.clone()).filter(|g| !g.is_empty()).collect(),
        };
        let at = up.time_us.unwrap_or(message.received_us);
        self.emit_uplink(ctx, fx, up.dev_eui, at, up.fport, &up.payload, up.fcnt, &radio);
    }
}

/// The RX1 data rate: the uplink's EU868 data rate lowered by `offset` (unknown rates are kept).
fn rx1_data_rate(uplink: &str, offset: u8) -> &str {
    match EU868_DATA_RATES.iter().position(|d| *d == uplink) {
        Some(dr) => EU868_DATA_RATES[dr.saturating_sub(usize::from(offset))],
        None => uplink,
    }
}

/// The model type name of a value (a declaration needs one).
fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Bool(_) => "boolean",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) | Value::Null => "object",
    }
}

/// A GeoJSON point from the first complete GPS reading, for `admin/location`.
fn location(values: &[(&str, Reading)]) -> Option<Value> {
    let find = |name: &str| {
        values
            .iter()
            .find(|(_, r)| r.resource.starts_with("gps_") && r.resource.ends_with(name))
            .and_then(|(_, r)| r.value.as_f64())
    };
    let (lat, lon) = (find("_latitude")?, find("_longitude")?);
    if !(-90.0..=90.0).contains(&lat) || !(-180.0..=180.0).contains(&lon) {
        return None;
    }
    let mut coordinates = vec![json!(lon), json!(lat)];
    coordinates.extend(find("_altitude").map(|alt| json!(alt)));
    Some(json!({ "type": "Point", "coordinates": coordinates }))
}

impl Adapter for LoRaWan {
    fn init(ctx: &mut Context<'_>, config: Value) -> Result<Self, String> {
        let config = Config::parse(config)?;
        let mut devices = BTreeMap::new();
        let mut changed = BTreeSet::new();
        let buckets: Vec<CounterBucket> =
            (0..session::COUNTER_BUCKETS).map(|b| ctx.state_get_json(&counters_key(b)).unwrap_or_default()).collect();
        for device in &config.devices {
            let eui = device.dev_eui;
            let mut state: DeviceState = ctx.state_get_json(&state_key(eui)).unwrap_or_default();
            let counters = buckets.get(counter_bucket(eui) as usize).and_then(|b| b.get(&format!("{eui:016x}")));
            if let (Some(session), Some(c)) = (state.session.as_mut(), counters)
                && c.dev_addr == session.dev_addr
                && c.join_nonce == state.join_nonce
            {
                session.fcnt_up = c.up;
                session.fcnt_down = c.down;
            }
            if let Activation::Abp { dev_addr, nwk_s_key, app_s_key } = device.activation {
                let same = state
                    .session
                    .as_ref()
                    .is_some_and(|s| s.dev_addr == dev_addr && s.nwk_s_key == nwk_s_key && s.app_s_key == app_s_key);
                if !same {
                    state.session = Some(Session::new(dev_addr, nwk_s_key, app_s_key));
                    changed.insert(eui);
                }
            }
            devices.insert(eui, Device { config: device.clone(), provider: provider_of(eui), state });
        }
        let count = devices.len();
        let mut adapter = LoRaWan {
            config,
            devices,
            by_addr: HashMap::new(),
            recent: HashMap::new(),
            recent_order: VecDeque::new(),
            declared: HashSet::new(),
            announced: false,
        };
        adapter.index();
        adapter.save(ctx, &changed, &changed);
        ctx.info(format!("LoRaWAN adapter serving {count} registered devices"));
        Ok(adapter)
    }

    fn on_messages(&mut self, ctx: &mut Context<'_>, batch: &[InboundMessage]) -> Output {
        let mut fx = Effects::new();
        // Copies of one frame from several gateways in this batch become one frame with several receptions.
        let mut frames: Vec<(&[u8], Vec<Reception>)> = Vec::new();
        let mut index: HashMap<&[u8], usize> = HashMap::new();
        for message in batch {
            match message.transport.as_str() {
                transport::UDP => {
                    let bytes = message.payload.as_bytes();
                    let reception = Reception::of(message);
                    match index.get(bytes) {
                        Some(&i) => {
                            if let Some((_, receptions)) = frames.get_mut(i) {
                                receptions.push(reception);
                            }
                        }
                        None => {
                            index.insert(bytes, frames.len());
                            frames.push((bytes, vec![reception]));
                        }
                    }
                }
                transport::MQTT => self.on_mqtt(ctx, &mut fx, message),
                other => fx.warn(ctx, || format!("message on transport {other} ignored")),
            }
        }
        for (bytes, receptions) in frames {
            self.on_udp(ctx, &mut fx, bytes, receptions);
        }
        let (dirty, counted) = (std::mem::take(&mut fx.dirty), std::mem::take(&mut fx.counted));
        self.save(ctx, &dirty, &counted);
        fx.finish(ctx)
    }

    fn on_act(&mut self, ctx: &mut Context<'_>, request: &ActRequest, _out: &mut Output) -> Result<Value, String> {
        let eui = eui_of_provider(&request.provider).ok_or("not a LoRaWAN device of this adapter")?;
        let max_bytes = self.config.max_downlink_bytes;
        let queue_max = self.config.downlink_queue;
        let device =
            self.devices.get_mut(&eui).ok_or_else(|| format!("{} is not in the registry", request.provider))?;
        if matches!(device.config.activation, Activation::External) {
            return Err(format!("{} is served by another network server", request.provider));
        }
        if request.service != "downlink" {
            return Err(format!("unknown action {}/{}", request.service, request.resource));
        }
        let params = &request.params;
        let bytes = match request.resource.as_str() {
            "clear" => {
                let dropped = device.state.queue.len();
                device.state.queue.clear();
                ctx.state_set_json(&state_key(eui), &device.state);
                return Ok(json!({ "cleared": dropped }));
            }
            "hex" => {
                let text = params.get("hex").and_then(Value::as_str).ok_or("parameter `hex` must be a string")?;
                hex_decode(text).ok_or("parameter `hex` must be hex digits")?
            }
            "base64" => {
                use base64::Engine as _;
                let text = params.get("base64").and_then(Value::as_str).ok_or("parameter `base64` must be a string")?;
                base64::engine::general_purpose::STANDARD
                    .decode(text)
                    .map_err(|_| "parameter `base64` must be base64")?
            }
            other => return Err(format!("unknown action downlink/{other}")),
        };
        let port = params
            .get("port")
            .and_then(Value::as_u64)
            .filter(|p| (1..=223).contains(p))
            .ok_or("parameter `port` must be an integer from 1 to 223")? as u8;
        if bytes.is_empty() || bytes.len() > max_bytes {
            return Err(format!("the payload must be 1 to {max_bytes} bytes"));
        }
        if device.state.queue.len() >= queue_max {
            return Err(format!("{} already has {queue_max} downlinks queued", request.provider));
        }
        let confirmed = params.get("confirmed").and_then(Value::as_bool).unwrap_or(false);
        device.state.queue.push_back(QueuedDownlink { port, hex: hex_encode(&bytes), confirmed });
        let queued = device.state.queue.len();
        ctx.state_set_json(&state_key(eui), &device.state);
        Ok(json!({ "queued": queued, "port": port, "bytes": bytes.len() }))
    }

    fn on_tick(&mut self, ctx: &mut Context<'_>) -> Output {
        self.forget(ctx.now_us(), MAX_RECENT);
        let mut fx = Effects::new();
        if !self.announced {
            self.announced = true;
            let euis: Vec<u64> = self.devices.keys().copied().collect();
            for eui in euis {
                self.announce(eui, &mut fx);
            }
        }
        fx.finish(ctx)
    }
}

export_adapter!(LoRaWan);
