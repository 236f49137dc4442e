//! What one instance remembers between calls, all of it bounded: which model documents it already emitted,
//! and per provider the topic captures ACT templates need (kept in plugin state too, so they survive a
//! restart) and the bridge its messages came through.

use std::{
    collections::{BTreeMap, HashMap, HashSet, hash_map::DefaultHasher},
    hash::{BuildHasherDefault, Hash, Hasher},
};

use hub_plugin_sdk::prelude::*;

use crate::config::ActTemplate;

/// Past this many entries the set of emitted declarations is cleared (re-declaring is harmless).
pub const MAX_DECLARED: usize = 100_000;
/// Past this many entries the per-provider memory is cleared (captures are reloaded from state on demand).
pub const MAX_PROVIDERS: usize = 20_000;
/// The most `seg/<provider>` state keys written; the host allows 4096 keys per plugin and fails the call
/// beyond, so some are left for everything else.
pub const MAX_CAPTURE_KEYS: u64 = 3_000;
/// The largest captures record kept in state, in bytes.
pub const MAX_CAPTURE_BYTES: usize = 2_048;

/// The state key counting the `seg/<provider>` keys written.
const CAPTURE_KEYS_KEY: &str = "seg_keys";
/// The prefix of the state keys holding a provider's captures.
const CAPTURE_KEY_PREFIX: &str = "seg/";
/// The connection name of the hub's embedded broker.
const EMBEDDED_BROKER: &str = "embedded";

/// Captures by name.
pub type Captures = BTreeMap<Box<str>, Box<str>>;

/// Hashes [`fingerprint`]s, already well mixed, by taking their value (the set holds only `u64`s).
#[derive(Default)]
pub struct FingerprintHasher(u64);

impl Hasher for FingerprintHasher {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = self.0.rotate_left(8) ^ u64::from(b);
        }
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A 64-bit fingerprint of a declaration (what was declared, for whom); collisions are negligible at the
/// sizes kept, and would only skip one redundant declaration.
pub fn fingerprint(what: impl Hash) -> u64 {
    let mut h = DefaultHasher::new();
    what.hash(&mut h);
    h.finish()
}

#[derive(Debug, Default)]
struct ProviderMemo {
    /// Whether an ACT template that uses captures matches this provider.
    wants_captures: bool,
    /// The captures as state holds them; `None` until read.
    captures: Option<Captures>,
    /// Whether state has a key for this provider.
    persisted: bool,
    /// The bridge the provider's latest message came through (`None`: the embedded broker).
    broker: Option<Box<str>>,
}

/// The instance's memory.
#[derive(Debug, Default)]
pub struct Memory {
    declared: HashSet<u64, BuildHasherDefault<FingerprintHasher>>,
    providers: Providers,
    capture_keys: u64,
    capture_keys_full: bool,
}

impl Memory {
    /// Memory for a new instance; reads how many capture keys earlier instances wrote.
    pub fn load(ctx: &mut Context<'_>) -> Memory {
        Memory { capture_keys: ctx.state_get_json(CAPTURE_KEYS_KEY).unwrap_or(0), ..Memory::default() }
    }

    /// Records that the declaration `fingerprint` is being emitted; `false` when it already was.
    pub fn first_declaration(&mut self, fingerprint: u64) -> bool {
        if self.declared.contains(&fingerprint) {
            return false;
        }
        if self.declared.len() >= MAX_DECLARED {
            self.declared.clear();
        }
        self.declared.insert(fingerprint)
    }

    /// Remembers the captures that built `provider`, when an ACT template needs them; writes state only when
    /// a value changed. Returns a warning when they cannot be kept in state.
    pub fn remember_captures(
        &mut self,
        ctx: &mut Context<'_>,
        acts: &[ActTemplate],
        provider: &str,
        names: &[Box<str>],
        values: &[&str],
    ) -> Option<String> {
        let memo = memo(&mut self.providers, provider, acts)?;
        if !memo.wants_captures {
            return None;
        }
        if memo.captures.is_none() {
            let stored: Option<BTreeMap<String, String>> = ctx.state_get_json(&capture_key(provider));
            memo.persisted = stored.is_some();
            memo.captures = Some(stored.unwrap_or_default().into_iter().map(|(k, v)| (k.into(), v.into())).collect());
        }
        let captures = memo.captures.get_or_insert_default();
        let changed = names.iter().zip(values).any(|(name, value)| captures.get(name).map(|v| &**v) != Some(*value));
        if !changed {
            return None;
        }
        for (name, value) in names.iter().zip(values) {
            captures.insert(name.clone(), (*value).into());
        }
        let bytes = serde_json::to_vec(captures).unwrap_or_default();
        if bytes.len() > MAX_CAPTURE_BYTES {
            return Some(format!(
                "the captures of {provider} take more than {MAX_CAPTURE_BYTES} bytes: kept in memory only, so ACT \
                 templates lose them on restart"
            ));
        }
        if !memo.persisted {
            if self.capture_keys >= MAX_CAPTURE_KEYS {
                let first = !std::mem::replace(&mut self.capture_keys_full, true);
                return first.then(|| {
                    format!(
                        "captures of more than {MAX_CAPTURE_KEYS} providers: those of {provider} and later new \
                         providers are kept in memory only"
                    )
                });
            }
            self.capture_keys += 1;
            ctx.state_set_json(CAPTURE_KEYS_KEY, &self.capture_keys);
            memo.persisted = true;
        }
        ctx.state_set(&capture_key(provider), &bytes);
        None
    }

    /// The captures known for `provider`: in memory, else in state.
    pub fn captures(&mut self, ctx: &mut Context<'_>, provider: &str) -> Option<Captures> {
        if let Some(captures) = self.providers.get(provider).and_then(|m| m.captures.as_ref()) {
            return Some(captures.clone());
        }
        let stored: BTreeMap<String, String> = ctx.state_get_json(&capture_key(provider))?;
        Some(stored.into_iter().map(|(k, v)| (k.into(), v.into())).collect())
    }

    /// Notes the connection (`broker` metadata) a message of `provider` came through.
    pub fn note_broker(&mut self, acts: &[ActTemplate], provider: &str, broker: Option<&str>) {
        match broker.filter(|b| *b != EMBEDDED_BROKER) {
            Some(bridge) => {
                if let Some(memo) = memo(&mut self.providers, provider, acts)
                    && memo.broker.as_deref() != Some(bridge)
                {
                    memo.broker = Some(bridge.into());
                }
            }
            None if self.providers.is_empty() => {}
            None => {
                if let Some(memo) = self.providers.get_mut(provider) {
                    memo.broker = None;
                }
            }
        }
    }

    /// The bridge `provider`'s latest message came through, if not the embedded broker.
    pub fn broker(&self, provider: &str) -> Option<&str> {
        self.providers.get(provider).and_then(|m| m.broker.as_deref())
    }
}

type Providers = HashMap<Box<str>, ProviderMemo, BuildHasherDefault<DefaultHasher>>;

/// The memo of `provider`, created on first sight (clearing the map when it is full).
fn memo<'m>(providers: &'m mut Providers, provider: &str, acts: &[ActTemplate]) -> Option<&'m mut ProviderMemo> {
    if !providers.contains_key(provider) {
        if providers.len() >= MAX_PROVIDERS {
            providers.clear();
        }
        let wants_captures = acts.iter().any(|a| a.uses_captures && a.provider.matches(provider));
        providers.insert(provider.into(), ProviderMemo { wants_captures, ..ProviderMemo::default() });
    }
    providers.get_mut(provider)
}

fn capture_key(provider: &str) -> String {
    format!("{CAPTURE_KEY_PREFIX}{provider}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;
    use hub_plugin_sdk::testkit::MemoryState;
    use serde_json::json;

    /// A state store that counts writes.
    #[derive(Default)]
    struct Counting {
        inner: MemoryState,
        writes: usize,
    }

    impl StateStore for Counting {
        fn get(&mut self, key: &str) -> Option<Vec<u8>> {
            self.inner.get(key)
        }
        fn set(&mut self, key: &str, value: &[u8]) {
            self.writes += 1;
            self.inner.set(key, value);
        }
        fn delete(&mut self, key: &str) {
            self.inner.delete(key);
        }
    }

    fn acts() -> Vec<ActTemplate> {
        let config = Config::parse(json!({
            "mappings": [{"topic": "b/{floor}/{room}", "provider": "r-{floor}-{room}", "service": "s",
                          "resources": [{"name": "v"}]}],
            "acts": [{"provider": "r-*", "service": "s", "resource": "a", "topic": "b/{floor}/{room}/cmd"}]
        }))
        .unwrap();
        config.acts
    }

    #[test]
    fn captures_are_written_only_when_they_change() {
        let acts = acts();
        let names: Vec<Box<str>> = vec!["floor".into(), "room".into()];
        let mut store = Counting::default();
        let mut memory = Memory::default();
        let mut ctx = Context::new("mqtt", 0, &mut store);
        for _ in 0..3 {
            assert_eq!(memory.remember_captures(&mut ctx, &acts, "r-1-2", &names, &["1", "2"]), None);
        }
        assert_eq!(memory.remember_captures(&mut ctx, &acts, "other", &names, &["1", "2"]), None);
        drop(ctx);
        assert_eq!(store.writes, 2, "the captures and the key count, once");
        assert_eq!(store.inner.entries["seg/r-1-2"], br#"{"floor":"1","room":"2"}"#);
        assert!(!store.inner.entries.contains_key("seg/other"), "no template matches: nothing kept");

        let mut ctx = Context::new("mqtt", 0, &mut store);
        memory.remember_captures(&mut ctx, &acts, "r-1-2", &names, &["1", "3"]);
        let mut fresh = Memory::load(&mut ctx);
        assert_eq!(fresh.capture_keys, 1);
        fresh.remember_captures(&mut ctx, &acts, "r-1-2", &names, &["1", "3"]);
        drop(ctx);
        assert_eq!(store.writes, 3, "a changed value is written; a new instance reads before writing");
    }

    #[test]
    fn capture_keys_are_bounded() {
        let acts = acts();
        let names: Vec<Box<str>> = vec!["floor".into()];
        let mut store = Counting::default();
        let mut memory = Memory { capture_keys: MAX_CAPTURE_KEYS - 1, ..Memory::default() };
        let mut ctx = Context::new("mqtt", 0, &mut store);
        assert_eq!(memory.remember_captures(&mut ctx, &acts, "r-a", &names, &["a"]), None);
        let warning = memory.remember_captures(&mut ctx, &acts, "r-b", &names, &["b"]);
        assert!(warning.is_some_and(|w| w.contains("kept in memory only")));
        assert_eq!(memory.remember_captures(&mut ctx, &acts, "r-c", &names, &["c"]), None, "warned once");
        assert_eq!(memory.captures(&mut ctx, "r-c").map(|c| c.len()), Some(1), "still usable until a restart");
        drop(ctx);
        assert!(!store.inner.entries.contains_key("seg/r-b"));
    }

    #[test]
    fn memory_is_bounded() {
        let mut memory = Memory::default();
        for i in 0..MAX_DECLARED as u64 {
            assert!(memory.first_declaration(i));
        }
        assert!(!memory.first_declaration(7));
        assert!(memory.first_declaration(u64::MAX), "full: cleared, then recorded");
        assert!(memory.first_declaration(7), "forgotten after the clear");
        assert_eq!(memory.declared.len(), 2);

        let acts = acts();
        for i in 0..=MAX_PROVIDERS {
            memory.note_broker(&acts, &format!("p{i}"), Some("bridge"));
        }
        assert_eq!(memory.providers.len(), 1);
        assert_eq!(memory.broker(&format!("p{MAX_PROVIDERS}")), Some("bridge"));
    }
}
