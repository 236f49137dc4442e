//! What the adapter remembers about SOX devices, all of it bounded.
//!
//! Per device, in plugin state under `dev/<provider>` (so a restart or an upgrade keeps it): the original
//! device name (ACT publishes on `<original>_data`), the `server` connection its items last arrived on, and
//! its actuators (safe resource name → original transducer id). A device with a record has been seen, so its
//! `admin/friendly_name` was set. A record is written only when something in it changes, once per batch at
//! most ([`Devices::flush`]); a batch that learned nothing writes nothing.
//!
//! In memory only: the same records, each transducer's resource name and the type of its first value, the
//! sensor declarations a meta item made that wait for a first value to give them a type, and a fingerprint of
//! the last meta item handled. All of it can be rebuilt, so it is dropped when it grows past its bounds.

use std::collections::{BTreeMap, HashMap};

use hub_plugin_sdk::prelude::*;
use serde::{Deserialize, Serialize};

use crate::names;

/// Past this many devices in memory, the memory is dropped (records reload from state on demand).
pub const MAX_DEVICES: usize = 5_000;
/// The most transducers remembered in memory; later ones are mapped without a memo (no deferred declaration).
pub const MAX_TRANSDUCERS: usize = 40_000;
/// The most `dev/<provider>` state keys written; the host allows 4096 keys per plugin and fails the call
/// beyond, so some are left.
pub const MAX_DEVICE_KEYS: u64 = 4_000;
/// The largest record kept in state, in bytes (the host's limit per value is 64 KiB).
pub const MAX_RECORD_BYTES: usize = 60 * 1024;

/// The state key counting the `dev/<provider>` keys written.
const KEY_COUNT: &str = "dev_keys";
/// The prefix of the state keys holding a device's record.
const KEY_PREFIX: &str = "dev/";

/// A device's record, as plugin state keeps it.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Record {
    /// The device name as the publisher wrote it (`D` of the nodes `D_meta` and `D_data`).
    pub name: String,
    /// The transport connection (`server` metadata) its items last arrived on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// Its actuators: resource name (in `sox-act`) → transducer id as the device wrote it.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub actuators: BTreeMap<String, String>,
}

/// One transducer's memo.
#[derive(Debug)]
pub struct Transducer {
    /// Its resource name (the id made name-safe).
    pub resource: Box<str>,
    /// The type of the first value this instance mapped (`number`, `boolean`, `string`): the type the hub
    /// infers for a new resource from that value.
    pub value_type: Option<&'static str>,
    /// The sensor declaration the latest meta item made, waiting for a first value to give it a type.
    pub pending: Option<serde_json::Map<String, Value>>,
}

/// One device's memo.
#[derive(Debug)]
pub struct Device {
    /// Its provider name.
    pub provider: Box<str>,
    /// Its record.
    pub record: Record,
    /// Whether state holds a key for it.
    persisted: bool,
    /// Whether the record changed since it was last written.
    dirty: bool,
    /// A fingerprint of the last meta item handled.
    pub meta_fingerprint: Option<u64>,
    /// Its transducers, by id as the device wrote it.
    transducers: HashMap<Box<str>, Transducer>,
}

/// A device borrowed from [`Devices`], with what changing it needs.
pub struct DeviceRef<'d> {
    /// The device.
    pub device: &'d mut Device,
    transducers: &'d mut usize,
    dirty: &'d mut usize,
}

impl DeviceRef<'_> {
    /// The device's provider name, and the memo of its transducer `id`, created on first sight (`None` when
    /// memory already holds [`MAX_TRANSDUCERS`]).
    pub fn transducer(&mut self, id: &str) -> (&str, Option<&mut Transducer>) {
        let Device { provider, transducers, .. } = &mut *self.device;
        if !transducers.contains_key(id) && *self.transducers < MAX_TRANSDUCERS {
            *self.transducers += 1;
            let memo = Transducer { resource: names::safe(id).into(), value_type: None, pending: None };
            transducers.insert(id.into(), memo);
        }
        (provider, transducers.get_mut(id))
    }

    /// Replaces the device's actuators; the record is written at the end of the batch when they changed.
    pub fn set_actuators(&mut self, actuators: BTreeMap<String, String>) {
        if self.device.record.actuators != actuators {
            self.device.record.actuators = actuators;
            self.mark_dirty();
        }
    }

    fn mark_dirty(&mut self) {
        if !self.device.dirty {
            self.device.dirty = true;
            *self.dirty += 1;
        }
    }
}

/// Every device the instance remembers.
#[derive(Debug, Default)]
pub struct Devices {
    by_name: HashMap<Box<str>, Device>,
    /// Provider name → device name, for ACT.
    by_provider: HashMap<Box<str>, Box<str>>,
    /// Transducer memos held, over every device.
    transducers: usize,
    /// Devices whose record changed since the last flush.
    dirty: usize,
    /// `dev/<provider>` keys written (by every instance so far).
    keys: u64,
    /// Whether the key limit was already reported.
    keys_full_reported: bool,
    /// Warnings of a flush made outside [`Devices::flush`]'s caller (when memory was dropped), for the next one.
    warnings: Vec<String>,
}

impl Devices {
    /// Memory for a new instance; reads how many device keys earlier instances wrote.
    pub fn load(ctx: &mut Context<'_>) -> Devices {
        Devices { keys: ctx.state_get_json(KEY_COUNT).unwrap_or(0), ..Devices::default() }
    }

    /// The device called `name` (memory, else its record in state, else new), noting the `server` its item
    /// arrived on. The flag is `true` on the device's first sight ever: no record anywhere.
    pub fn touch(&mut self, ctx: &mut Context<'_>, name: &str, server: Option<&str>) -> (DeviceRef<'_>, bool) {
        let mut first_sight = false;
        if !self.by_name.contains_key(name) {
            if self.by_name.len() >= MAX_DEVICES {
                let warnings = self.flush(ctx);
                self.warnings = warnings;
                self.by_name.clear();
                self.by_provider.clear();
                self.transducers = 0;
            }
            let provider: Box<str> = names::safe(name).into();
            let stored: Option<Record> = ctx.state_get_json(&state_key(&provider));
            let persisted = stored.is_some();
            first_sight = !persisted;
            let mut record = stored.unwrap_or_default();
            // A record of another name under the same provider (two names made the same): the latest one wins.
            let dirty = record.name != name;
            if dirty {
                record.name = name.to_owned();
            }
            self.dirty += usize::from(dirty);
            self.by_provider.insert(provider.clone(), name.into());
            let device =
                Device { provider, record, persisted, dirty, meta_fingerprint: None, transducers: HashMap::new() };
            self.by_name.insert(name.into(), device);
        }
        let Devices { by_name, transducers, dirty, .. } = self;
        let device = by_name.get_mut(name).unwrap_or_else(|| unreachable!("inserted above"));
        let mut handle = DeviceRef { device, transducers, dirty };
        if let Some(server) = server
            && handle.device.record.server.as_deref() != Some(server)
        {
            handle.device.record.server = Some(server.to_owned());
            handle.mark_dirty();
        }
        (handle, first_sight)
    }

    /// Writes the records that changed since the last flush; returns warnings about those that cannot be kept.
    pub fn flush(&mut self, ctx: &mut Context<'_>) -> Vec<String> {
        let mut warnings = std::mem::take(&mut self.warnings);
        if self.dirty == 0 {
            return warnings;
        }
        self.dirty = 0;
        let keys_before = self.keys;
        for device in self.by_name.values_mut().filter(|d| d.dirty) {
            device.dirty = false;
            let bytes = serde_json::to_vec(&device.record).unwrap_or_default();
            if bytes.len() > MAX_RECORD_BYTES {
                warnings.push(format!(
                    "the record of {} takes {} bytes (at most {MAX_RECORD_BYTES}): kept in memory only, so ACT on it \
                     fails after a restart until its meta arrives again",
                    device.provider,
                    bytes.len()
                ));
                continue;
            }
            if !device.persisted {
                if self.keys >= MAX_DEVICE_KEYS {
                    if !std::mem::replace(&mut self.keys_full_reported, true) {
                        warnings.push(format!(
                            "records of more than {MAX_DEVICE_KEYS} devices: {} and later new devices are kept in \
                             memory only",
                            device.provider
                        ));
                    }
                    continue;
                }
                self.keys += 1;
                device.persisted = true;
            }
            ctx.state_set(&state_key(&device.provider), &bytes);
        }
        // Written once per flush, and only when a new key was.
        if self.keys != keys_before {
            ctx.state_set_json(KEY_COUNT, &self.keys);
        }
        warnings
    }

    /// The fingerprint of the last meta item handled for the device called `name`, if it is in memory.
    pub fn meta_fingerprint(&self, name: &str) -> Option<u64> {
        self.by_name.get(name).and_then(|d| d.meta_fingerprint)
    }

    /// The record of the device whose provider name is `provider`: memory, else state.
    pub fn record(&mut self, ctx: &mut Context<'_>, provider: &str) -> Option<Record> {
        if let Some(device) = self.by_provider.get(provider).and_then(|name| self.by_name.get(name)) {
            return Some(device.record.clone());
        }
        ctx.state_get_json(&state_key(provider))
    }
}

fn state_key(provider: &str) -> String {
    format!("{KEY_PREFIX}{provider}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use hub_plugin_sdk::testkit::MemoryState;

    #[test]
    fn records_are_written_only_when_they_change() {
        let mut state = MemoryState::default();
        let mut ctx = Context::new("xmpp", 0, &mut state);
        let mut devices = Devices::load(&mut ctx);
        let (_, first) = devices.touch(&mut ctx, "藤沢 1", Some("fujisawa"));
        assert!(first);
        assert!(devices.flush(&mut ctx).is_empty());
        let provider = names::safe("藤沢 1").into_owned();
        let key = state_key(&provider);
        assert_eq!(ctx.state_get_json::<u64>(KEY_COUNT), Some(1));
        let record: Record = ctx.state_get_json(&key).unwrap();
        assert_eq!((record.name.as_str(), record.server.as_deref()), ("藤沢 1", Some("fujisawa")));
        ctx.state_delete(&key);
        let (_, first) = devices.touch(&mut ctx, "藤沢 1", Some("fujisawa"));
        assert!(!first);
        devices.flush(&mut ctx);
        assert!(ctx.state_get(&key).is_none(), "nothing changed, nothing written");
        devices.touch(&mut ctx, "藤沢 1", Some("other"));
        devices.flush(&mut ctx);
        assert_eq!(ctx.state_get_json::<Record>(&key).unwrap().server.as_deref(), Some("other"));
        assert_eq!(devices.record(&mut ctx, &provider).unwrap().name, "藤沢 1");
        assert_eq!(devices.record(&mut ctx, "nobody"), None);
    }

    #[test]
    fn memory_and_keys_stay_bounded() {
        let mut state = MemoryState::default();
        let mut ctx = Context::new("xmpp", 0, &mut state);
        let mut devices = Devices::load(&mut ctx);
        let mut warnings = Vec::new();
        for i in 0..(MAX_DEVICES + 10) {
            let (mut device, _) = devices.touch(&mut ctx, &format!("d{i}"), None);
            for t in 0..12 {
                device.transducer(&format!("t{t}"));
            }
            warnings.extend(devices.flush(&mut ctx));
        }
        assert!(devices.by_name.len() <= MAX_DEVICES);
        assert!(devices.transducers <= MAX_TRANSDUCERS);
        assert_eq!(warnings.len(), 1, "{warnings:?}");
        assert_eq!(ctx.state_get_json::<u64>(KEY_COUNT), Some(MAX_DEVICE_KEYS));
        // A device known only in memory is still found for ACT.
        let last = format!("d{}", MAX_DEVICES + 9);
        assert!(devices.record(&mut ctx, &last).is_some());
    }
}
