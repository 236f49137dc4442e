//! The `[mqtt]` configuration: valid and invalid inputs with the keys their errors name.

use hub_transport_mqtt::{BridgeConfig, Endpoint, MqttConfig, check_filter};

fn parse(text: &str) -> Result<MqttConfig, String> {
    let config: MqttConfig = toml::from_str(text).map_err(|e| e.to_string())?;
    config.validate().map_err(|e| e.to_string())?;
    Ok(config)
}

#[test]
fn a_full_config_parses() {
    let config = parse(
        r#"
        [broker]
        listen = "0.0.0.0:1884"
        allow_anonymous = false
        max_payload_bytes = 65536
        subscribe = ["hub/up/#", "tele/+/SENSOR"]

        [[bridges]]
        name = "ttn"
        url = "mqtts://eu1.cloud.thethings.network"
        client_id = "hub-lyon"
        username = "app@ttn"
        password_env = "TTN_KEY"
        qos = 1
        clean_session = false
        subscribe = ["v3/+/devices/+/up"]
        keep_alive_secs = 60

        [[bridges]]
        name = "local"
        url = "mqtt://127.0.0.1"
        client_id = "hub-2"
        "#,
    )
    .unwrap();
    assert!(!config.broker.anonymous_allowed());
    assert_eq!(config.bridges.len(), 2);
    assert_eq!(
        config.bridges[0].endpoint().unwrap(),
        Endpoint { host: "eu1.cloud.thethings.network".to_owned(), port: 8883, tls: true }
    );
    assert_eq!(config.bridges[1].endpoint().unwrap().port, 1883);
    assert!(config.bridges[1].clean_session);
    assert_eq!(config.bridges[1].qos, 1);
}

#[test]
fn an_empty_config_is_the_default_loopback_broker() {
    let config = parse("").unwrap();
    assert!(config.broker.enabled);
    assert_eq!(config.broker.listen.to_string(), "127.0.0.1:1883");
    assert!(config.broker.anonymous_allowed());
    assert!(config.bridges.is_empty());
}

#[test]
fn invalid_configs_name_their_key() {
    let cases: &[(&str, &str)] = &[
        ("[broker]\nlisten = \"nowhere\"", "listen"),
        ("[broker]\nlisen = \"127.0.0.1:1\"", "unknown field `lisen`"),
        ("[broker]\nmax_payload_bytes = 0", "mqtt.broker.max_payload_bytes"),
        ("[broker]\nsubscribe = [\"a/#/b\"]", "mqtt.broker.subscribe[0]"),
        ("[broker]\nsubscribe = []", "mqtt.broker.subscribe"),
        ("[[bridges]]\nname = \"x\"\nurl = \"http://h\"\nclient_id = \"c\"", "mqtt.bridges[0].url"),
        ("[[bridges]]\nname = \"x\"\nurl = \"mqtt://u:p@h\"\nclient_id = \"c\"", "mqtt.bridges[0].url"),
        ("[[bridges]]\nname = \"x\"\nurl = \"mqtt://h\"\nclient_id = \"\"", "mqtt.bridges[0].client_id"),
        ("[[bridges]]\nname = \"x\"\nurl = \"mqtt://h\"\nclient_id = \"c\"\nqos = 2", "mqtt.bridges[0].qos"),
        (
            "[[bridges]]\nname = \"x\"\nurl = \"mqtt://h\"\nclient_id = \"c\"\npassword = \"p\"",
            "mqtt.bridges[0].username",
        ),
        (
            "[[bridges]]\nname = \"x\"\nurl = \"mqtt://h\"\nclient_id = \"c\"\nca_file = \"/ca.pem\"",
            "mqtt.bridges[0].ca_file",
        ),
        (
            "[[bridges]]\nname = \"x\"\nurl = \"mqtt://h\"\nclient_id = \"c\"\nsubscribe = [\"a+\"]",
            "mqtt.bridges[0].subscribe[0]",
        ),
        (
            "[[bridges]]\nname = \"x\"\nurl = \"mqtt://h\"\nclient_id = \"c\"\nkeep_alive_secs = 1",
            "mqtt.bridges[0].keep_alive_secs",
        ),
        (
            "[[bridges]]\nname = \"x\"\nurl = \"mqtt://h\"\nclient_id = \"c\"\nreconnect_max_ms = 1",
            "mqtt.bridges[0].reconnect_max_ms",
        ),
        ("[[bridges]]\nname = \"embedded\"\nurl = \"mqtt://h\"\nclient_id = \"c\"", "mqtt.bridges[0].name"),
        (
            "[[bridges]]\nname = \"x\"\nurl = \"mqtt://h\"\nclient_id = \"c\"\n[[bridges]]\nname = \"x\"\nurl = \"mqtt://h\"\nclient_id = \"d\"",
            "mqtt.bridges[1].name",
        ),
        ("[[bridges]]\nname = \"x\"\nurl = \"mqtt://h\"\nclient_id = \"c\"\nretries = 3", "unknown field `retries`"),
    ];
    for (text, key) in cases {
        let error = parse(text).expect_err(text);
        assert!(error.contains(key), "{text:?}: {error:?} should name {key}");
    }
}

#[test]
fn password_env_is_read_from_the_environment() {
    let mut config = BridgeConfig::new("x", "mqtt://h", "c");
    config.username = Some("u".to_owned());
    config.password_env = Some("HUB_MQTT_TEST_SURELY_UNSET_VARIABLE".to_owned());
    let error = config.resolved_password().expect_err("unset variable").to_string();
    assert!(error.contains("mqtt.bridges.x.password_env"), "{error}");
    config.password_env = Some("PATH".to_owned());
    assert!(config.resolved_password().unwrap().is_some());
}

#[test]
fn topic_filters() {
    for good in ["#", "a/#", "+/b/+", "a/b", "$SYS/#", "+"] {
        assert!(check_filter(good).is_ok(), "{good}");
    }
    for bad in ["", "a#", "a/#/b", "a+/b", "a/b+", "#/a", "a\0b"] {
        assert!(check_filter(bad).is_err(), "{bad:?}");
    }
}

#[test]
fn endpoints() {
    assert_eq!(
        Endpoint::parse("mqtt://[::1]:1884").unwrap(),
        Endpoint { host: "::1".to_owned(), port: 1884, tls: false }
    );
    assert_eq!(Endpoint::parse("mqtts://broker.example:8884").unwrap().port, 8884);
    assert!(Endpoint::parse("mqtt://h/path").is_err());
    assert!(Endpoint::parse("ws://h").is_err());
    assert!(Endpoint::parse("not a url").is_err());
}
