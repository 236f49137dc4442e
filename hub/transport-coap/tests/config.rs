//! The `[coap]` configuration: valid and invalid inputs with the keys their errors name.

use hub_transport_coap::CoapConfig;

fn parse(text: &str) -> Result<CoapConfig, String> {
    let config: CoapConfig = toml::from_str(text).map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

#[test]
fn an_empty_config_is_the_default_loopback_endpoint() {
    let config = parse("").unwrap();
    assert!(config.enabled);
    assert_eq!(config.listen.to_string(), "127.0.0.1:5683");
    assert!(config.anonymous_allowed());
    assert_eq!(config.max_payload_bytes, 65_536);
    assert_eq!(config.content_formats, vec![0, 42, 50, 60, 110, 112]);
    assert!(config.observe.is_empty());
}

#[test]
fn a_full_config_parses() {
    let config = parse(
        r#"
        listen = "0.0.0.0:5683"
        max_payload_bytes = 131072
        block_size = 512
        content_formats = [50, 110]

        [client]
        bind = "0.0.0.0:0"
        ack_timeout_ms = 1500
        max_retransmit = 3
        observe_margin_ms = 2000

        [[observe]]
        uri = "coap://10.0.0.7/sensors/temp"
        provider = "greenhouse-7"

        [[observe]]
        uri = "coap://[fd00::7]:5684/power"
        interval_s = 30
        "#,
    )
    .unwrap();
    assert!(!config.anonymous_allowed(), "off loopback, tokens are required unless allow_anonymous says otherwise");
    assert_eq!(config.block_szx(), 5);
    assert_eq!(config.observe[0].interval_s, 60);
    assert_eq!(config.observe[1].provider, None);
    assert_eq!(config.client.max_retransmit, 3);
}

#[test]
fn invalid_configs_name_their_key() {
    let table: &[(&str, &str)] = &[
        ("listen = \"nowhere\"", "listen"),
        ("colour = 1", "unknown field `colour`"),
        ("max_payload_bytes = 0", "coap.max_payload_bytes: must be greater than 0"),
        ("max_payload_bytes = 999999999", "coap.max_payload_bytes: must be at most"),
        ("block_size = 100", "coap.block_size: must be a power of two from 16 to 1024"),
        ("block_size = 2048", "coap.block_size"),
        ("max_inflight = 0", "coap.max_inflight"),
        ("dedup_capacity = 0", "coap.dedup_capacity"),
        ("[client]\nack_timeout_ms = 0", "coap.client.ack_timeout_ms: must be greater than 0"),
        ("[client]\nmax_retransmit = 99", "coap.client.max_retransmit: must be at most 20"),
        ("[client]\nreregister_min_ms = 500\nreregister_max_ms = 100", "coap.client.reregister_max_ms"),
        ("[client]\ncolour = 1", "unknown field `colour`"),
        (
            "[[observe]]\nuri = \"coaps://h/x\"",
            "coap.observe[0].uri: \"coaps://h/x\": coaps:// (DTLS) is not supported yet",
        ),
        ("[[observe]]\nuri = \"http://h/x\"", "coap.observe[0].uri"),
        ("[[observe]]\nuri = \"coap://h/x\"\nprovider = \"bad name!\"", "coap.observe[0].provider"),
        ("[[observe]]\nuri = \"coap://h/x\"\ninterval_s = 0", "coap.observe[0].interval_s"),
        (
            "[[observe]]\nuri = \"coap://h/x\"\n[[observe]]\nuri = \"coap://h/x\"",
            "coap.observe[1].uri: \"coap://h/x\" is observed twice",
        ),
        ("[[observe]]\nprovider = \"p\"", "missing field `uri`"),
    ];
    for (text, expected) in table {
        let error = parse(text).unwrap_err();
        assert!(error.contains(expected), "{text:?}: expected {expected:?} in {error:?}");
    }
}

#[test]
fn the_effective_config_round_trips() {
    let config = parse("listen = \"127.0.0.1:15683\"\nallow_anonymous = false").unwrap();
    let text = toml::to_string(&config).unwrap();
    let back: CoapConfig = toml::from_str(&text).unwrap();
    assert_eq!(back, config);
}
