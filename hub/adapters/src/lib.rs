//! The official protocol adapters, embedded in the hub binary.
//!
//! The build script compiles each adapter in `plugins/` for `wasm32-unknown-unknown` and embeds its module and
//! manifest, so `hub serve` can install them with no step of its own. They are ordinary sandboxed plugins: the
//! runtime checks them, limits them and counts them like any other. What an adapter may do by default is
//! [`Official::default_grant`]; an admin narrows or widens it (within the manifest) with
//! `PUT /api/v1/plugins/{id}/grant`.

use hub_runtime::{Capabilities, PubSub};

/// One official adapter.
#[derive(Debug)]
pub struct Official {
    /// The plugin id (`mqtt`, ...).
    pub id: &'static str,
    /// Its manifest, with the module's sha256 filled in.
    pub manifest: &'static str,
    /// The WebAssembly module.
    pub wasm: &'static [u8],
    /// The module's SHA-256, lowercase hex.
    pub sha256: &'static str,
}

include!(concat!(env!("OUT_DIR"), "/official.rs"));

impl Official {
    /// The adapter called `id`, if it is an official one.
    pub fn get(id: &str) -> Option<&'static Official> {
        OFFICIAL.iter().find(|o| o.id == id)
    }

    /// The ids of every official adapter.
    pub fn ids() -> impl Iterator<Item = &'static str> {
        OFFICIAL.iter().map(|o| o.id)
    }

    /// What the hub grants the adapter when it installs it: the documented default topic scheme, nothing more.
    pub fn default_grant(&self) -> Capabilities {
        let strings = |v: &[&str]| v.iter().map(|s| (*s).to_owned()).collect::<Vec<_>>();
        match self.id {
            "mqtt" => Capabilities {
                providers: strings(&["*"]),
                mqtt: PubSub {
                    subscribe: strings(&["hub/up/#", "hub/senml/+", "hub/model/+"]),
                    publish: strings(&["hub/down/#"]),
                },
                ..Capabilities::default()
            },
            _ => Capabilities::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_official_adapter_parses_and_its_default_grant_is_within_its_request() {
        assert!(OFFICIAL.iter().any(|o| o.id == "mqtt"));
        for official in OFFICIAL {
            let manifest = hub_runtime::Manifest::parse(official.manifest).unwrap();
            assert_eq!(manifest.id, official.id);
            assert_eq!(manifest.sha256, official.sha256);
            let grant = official.default_grant();
            assert!(grant.validate().is_empty(), "{}", official.id);
            assert_eq!(grant.check_subset_of(&manifest.capabilities), vec![], "{}", official.id);
            assert!(official.wasm.starts_with(b"\0asm"), "{} is not a wasm module", official.id);
        }
        assert!(Official::get("nope").is_none());
    }
}
