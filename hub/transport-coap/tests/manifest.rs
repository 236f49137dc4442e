//! The official CoAP adapter's manifest passes the runtime's strict parser, and asks for what this transport
//! delivers and sends.

use hub_runtime::{CompiledGrant, Manifest, PluginKind};

#[test]
fn the_coap_adapter_manifest_is_valid_and_matches_the_transport_addresses() {
    let text = include_str!("../../../plugins/coap/plugin.toml");
    let manifest = Manifest::parse(text).unwrap_or_else(|e| panic!("plugins/coap/plugin.toml: {e}"));
    assert_eq!(manifest.id, "coap");
    assert_eq!(manifest.version.to_string(), "0.1.0");
    assert_eq!(manifest.abi, 1);
    assert_eq!(manifest.kind, PluginKind::Adapter);
    assert_eq!(manifest.capabilities.providers, vec!["*"]);

    let grant = CompiledGrant::new(&manifest.capabilities);
    // What the server delivers, and what observations deliver.
    assert!(grant.receives("coap", "/up/meters-7/power/w"));
    assert!(grant.receives("coap", "/up/meters-7"));
    assert!(grant.receives("coap", "/up"), "SenML packs naming whole paths");
    assert!(grant.receives("coap", "//10.0.0.7:5683/sensors/temp"));
    assert!(!grant.receives("coap", "/other/path"));
    assert!(!grant.receives("mqtt", "/up/x"));
    // Where ACT requests go.
    assert!(grant.may_send("coap", "//10.0.0.8:5683/actuators/open"));
    assert!(!grant.may_send("coap", "/up/x"));

    let config = manifest.default_config();
    assert_eq!(config["up_path"], "/up");
}
