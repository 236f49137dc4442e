//! Capabilities: what a plugin asks for in its manifest, what an admin grants (a subset), and the checks the
//! host makes against the grant on every message in and out and every update.

use hub_model::Glob;
use hub_plugin_sdk::abi::transport;
use serde::{Deserialize, Serialize};

/// The transports and bindings a plugin may use, and the providers it may write. In a manifest these are
/// requested; in a grant, allowed. Everything not listed is denied.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Capabilities {
    /// Provider name globs the plugin may write (updates, model documents) and owns for ACT, e.g. `lora-*`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub providers: Vec<String>,
    /// MQTT topic filters.
    #[serde(default, skip_serializing_if = "PubSub::is_empty")]
    pub mqtt: PubSub,
    /// CoAP path globs.
    #[serde(default, skip_serializing_if = "PubSub::is_empty")]
    pub coap: PubSub,
    /// XMPP publish-subscribe node globs.
    #[serde(default, skip_serializing_if = "PubSub::is_empty")]
    pub xmpp: PubSub,
    /// UDP ports.
    #[serde(default, skip_serializing_if = "Udp::is_empty")]
    pub udp: Udp,
}

/// Inbound and outbound bindings of one transport.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PubSub {
    /// What the host delivers to the plugin (MQTT topic filters with `+` and `#`; CoAP paths and XMPP nodes as
    /// globs with `*`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub subscribe: Vec<String>,
    /// Where the plugin may send, in the same syntax.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub publish: Vec<String>,
}

impl PubSub {
    fn is_empty(&self) -> bool {
        self.subscribe.is_empty() && self.publish.is_empty()
    }
}

/// UDP bindings.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Udp {
    /// Local ports whose datagrams the plugin receives and from which it may send.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<u16>,
}

impl Udp {
    fn is_empty(&self) -> bool {
        self.ports.is_empty()
    }
}

/// One inbound binding, as a transport needs it to subscribe on a plugin's behalf.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize)]
pub struct Subscription {
    /// The transport (`mqtt`, `coap`, `xmpp`, `udp`).
    pub transport: &'static str,
    /// The topic filter, path or node glob, or port.
    pub pattern: String,
}

impl Capabilities {
    /// Checks the syntax of every entry; returns `(key, message)` for each problem, keys relative to the
    /// capabilities table.
    pub fn validate(&self) -> Vec<(String, String)> {
        let mut issues = Vec::new();
        for (i, p) in self.providers.iter().enumerate() {
            if p.is_empty() || p.len() > 128 || !p.bytes().all(|b| is_name_byte(b) || b == b'*' || b == b'?') {
                issues.push((
                    format!("providers[{i}]"),
                    "must be a provider name or glob (A-Z a-z 0-9 . - _ and the wildcards * ?)".to_owned(),
                ));
            }
        }
        for (dir, list) in [("subscribe", &self.mqtt.subscribe), ("publish", &self.mqtt.publish)] {
            for (i, f) in list.iter().enumerate() {
                if let Err(reason) = validate_mqtt_filter(f) {
                    issues.push((format!("mqtt.{dir}[{i}]"), reason.to_owned()));
                }
            }
        }
        for (dir, list) in [("subscribe", &self.coap.subscribe), ("publish", &self.coap.publish)] {
            for (i, p) in list.iter().enumerate() {
                if !p.starts_with('/') {
                    issues.push((format!("coap.{dir}[{i}]"), "must be a path starting with /".to_owned()));
                }
            }
        }
        for (dir, list) in [("subscribe", &self.xmpp.subscribe), ("publish", &self.xmpp.publish)] {
            for (i, n) in list.iter().enumerate() {
                if n.is_empty() {
                    issues.push((format!("xmpp.{dir}[{i}]"), "must not be empty".to_owned()));
                }
            }
        }
        for (i, port) in self.udp.ports.iter().enumerate() {
            if *port == 0 {
                issues.push((format!("udp.ports[{i}]"), "must be between 1 and 65535".to_owned()));
            }
        }
        issues
    }

    /// Checks that every entry of `self` (a grant) stays within what `requested` (the manifest) asked for;
    /// returns `(key, message)` for each entry that does not. A granted entry may be narrower than a requested
    /// one: `lora-0a*` within `lora-*`, `sensors/+/env` within `#`.
    pub fn check_subset_of(&self, requested: &Capabilities) -> Vec<(String, String)> {
        fn check<T: std::fmt::Debug>(
            key: &str,
            granted: &[T],
            requested: &[T],
            within: impl Fn(&T, &T) -> bool,
            out: &mut Vec<(String, String)>,
        ) {
            for (i, g) in granted.iter().enumerate() {
                if !requested.iter().any(|r| within(g, r)) {
                    out.push((format!("{key}[{i}]"), format!("{g:?} is not within what the manifest requests")));
                }
            }
        }
        let glob = |g: &String, r: &String| Glob::new(r).covers(&Glob::new(g));
        let filter = |g: &String, r: &String| mqtt_filter_covers(r, g);
        let mut out = Vec::new();
        check("providers", &self.providers, &requested.providers, glob, &mut out);
        check("mqtt.subscribe", &self.mqtt.subscribe, &requested.mqtt.subscribe, filter, &mut out);
        check("mqtt.publish", &self.mqtt.publish, &requested.mqtt.publish, filter, &mut out);
        check("coap.subscribe", &self.coap.subscribe, &requested.coap.subscribe, glob, &mut out);
        check("coap.publish", &self.coap.publish, &requested.coap.publish, glob, &mut out);
        check("xmpp.subscribe", &self.xmpp.subscribe, &requested.xmpp.subscribe, glob, &mut out);
        check("xmpp.publish", &self.xmpp.publish, &requested.xmpp.publish, glob, &mut out);
        check("udp.ports", &self.udp.ports, &requested.udp.ports, |g, r| g == r, &mut out);
        out
    }

    /// Every inbound binding, for the transports to subscribe on the plugin's behalf.
    pub fn subscriptions(&self) -> Vec<Subscription> {
        let mut out = Vec::new();
        let mut add = |transport, patterns: &[String]| {
            out.extend(patterns.iter().map(|p| Subscription { transport, pattern: p.clone() }));
        };
        add(transport::MQTT, &self.mqtt.subscribe);
        add(transport::COAP, &self.coap.subscribe);
        add(transport::XMPP, &self.xmpp.subscribe);
        out.extend(self.udp.ports.iter().map(|p| Subscription { transport: transport::UDP, pattern: p.to_string() }));
        out
    }
}

/// A grant prepared for the hot path: globs built once.
#[derive(Debug, Clone)]
pub struct CompiledGrant {
    providers: Vec<Glob>,
    coap_in: Vec<Glob>,
    coap_out: Vec<Glob>,
    xmpp_in: Vec<Glob>,
    xmpp_out: Vec<Glob>,
    grant: Capabilities,
}

impl CompiledGrant {
    /// Prepares a grant.
    pub fn new(grant: &Capabilities) -> Self {
        let globs = |v: &[String]| v.iter().map(|p| Glob::new(p)).collect::<Vec<_>>();
        CompiledGrant {
            providers: globs(&grant.providers),
            coap_in: globs(&grant.coap.subscribe),
            coap_out: globs(&grant.coap.publish),
            xmpp_in: globs(&grant.xmpp.subscribe),
            xmpp_out: globs(&grant.xmpp.publish),
            grant: grant.clone(),
        }
    }

    /// The grant itself.
    pub fn capabilities(&self) -> &Capabilities {
        &self.grant
    }

    /// The provider globs, for ACT registration.
    pub fn provider_globs(&self) -> &[Glob] {
        &self.providers
    }

    /// Whether the plugin may write `provider`.
    pub fn may_write(&self, provider: &str) -> bool {
        self.providers.iter().any(|g| g.matches(provider))
    }

    /// Whether a message that arrived on `transport` at `address` is for this plugin.
    pub fn receives(&self, transport_name: &str, address: &str) -> bool {
        match transport_name {
            transport::MQTT => self.grant.mqtt.subscribe.iter().any(|f| mqtt_matches(f, address)),
            transport::COAP => self.coap_in.iter().any(|g| g.matches(address)),
            transport::XMPP => self.xmpp_in.iter().any(|g| g.matches(address)),
            transport::UDP => address.parse::<u16>().is_ok_and(|p| self.grant.udp.ports.contains(&p)),
            _ => false,
        }
    }

    /// Whether the plugin may send on `transport` to `address`.
    pub fn may_send(&self, transport_name: &str, address: &str) -> bool {
        match transport_name {
            transport::MQTT => {
                !address.contains(['+', '#']) && self.grant.mqtt.publish.iter().any(|f| mqtt_matches(f, address))
            }
            transport::COAP => self.coap_out.iter().any(|g| g.matches(address)),
            transport::XMPP => self.xmpp_out.iter().any(|g| g.matches(address)),
            transport::UDP => address.parse::<u16>().is_ok_and(|p| self.grant.udp.ports.contains(&p)),
            _ => false,
        }
    }
}

fn is_name_byte(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_')
}

/// Checks an MQTT topic filter: not empty, `+` only as a whole level, `#` only as the whole last level.
pub fn validate_mqtt_filter(filter: &str) -> Result<(), &'static str> {
    if filter.is_empty() {
        return Err("must not be empty");
    }
    let levels: Vec<&str> = filter.split('/').collect();
    let last = levels.len().saturating_sub(1);
    for (i, level) in levels.iter().enumerate() {
        if level.contains('#') && (*level != "#" || i != last) {
            return Err("`#` may only be the whole last level of a topic filter");
        }
        if level.contains('+') && *level != "+" {
            return Err("`+` may only be a whole level of a topic filter");
        }
    }
    Ok(())
}

/// Whether every topic `inner` (a topic filter) matches is also matched by the filter `outer`.
pub fn mqtt_filter_covers(outer: &str, inner: &str) -> bool {
    let mut o = outer.split('/');
    let mut i = inner.split('/');
    loop {
        match (o.next(), i.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(l)) if l != "#" => {}
            (Some(ol), Some(il)) if ol == il && ol != "+" => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Whether an MQTT topic matches a topic filter (`+` one level, `#` the rest, including none). Topics starting
/// with `$` match only filters that name their first level.
pub fn mqtt_matches(filter: &str, topic: &str) -> bool {
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(fl), Some(tl)) if fl == tl => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mqtt_matching() {
        let table: &[(&str, &str, bool)] = &[
            ("a/b", "a/b", true),
            ("a/+", "a/b", true),
            ("a/+", "a/b/c", false),
            ("a/#", "a", true),
            ("a/#", "a/b/c", true),
            ("#", "x/y", true),
            ("+/+", "a/b", true),
            ("+/b", "a/c", false),
            ("#", "$SYS/x", false),
            ("$SYS/#", "$SYS/x", true),
            ("a/b", "a/b/c", false),
            ("a//b", "a//b", true),
        ];
        for (f, t, want) in table {
            assert_eq!(mqtt_matches(f, t), *want, "{f} vs {t}");
        }
        assert!(validate_mqtt_filter("a/#").is_ok());
        assert!(validate_mqtt_filter("a/#/b").is_err());
        assert!(validate_mqtt_filter("a/b+").is_err());
        assert!(validate_mqtt_filter("").is_err());
    }

    #[test]
    fn grants_must_be_requested() {
        let requested = Capabilities {
            providers: vec!["lora-*".into()],
            mqtt: PubSub { subscribe: vec!["up/#".into()], publish: vec!["down/+".into()] },
            ..Capabilities::default()
        };
        let mut grant = requested.clone();
        assert!(grant.check_subset_of(&requested).is_empty());
        grant.mqtt.publish.push("#".into());
        grant.udp.ports.push(1700);
        let issues = grant.check_subset_of(&requested);
        assert_eq!(issues.len(), 2);
        assert_eq!(issues[0].0, "mqtt.publish[1]");
        assert_eq!(issues[1].0, "udp.ports[0]");

        let narrower = Capabilities {
            providers: vec!["lora-0a*".into(), "lora-1".into()],
            mqtt: PubSub { subscribe: vec!["up/+/env".into(), "up".into()], publish: vec!["down/x".into()] },
            ..Capabilities::default()
        };
        assert!(narrower.check_subset_of(&requested).is_empty());
        let wider = Capabilities {
            providers: vec!["lor*".into()],
            mqtt: PubSub { subscribe: vec!["#".into()], publish: vec!["down/#".into()] },
            ..Capabilities::default()
        };
        let keys: Vec<String> = wider.check_subset_of(&requested).into_iter().map(|(k, _)| k).collect();
        assert_eq!(keys, ["providers[0]", "mqtt.subscribe[0]", "mqtt.publish[0]"]);
    }

    #[test]
    fn filter_cover_table() {
        let table: &[(&str, &str, bool)] = &[
            ("#", "a/b", true),
            ("#", "#", true),
            ("a/#", "a/+/c", true),
            ("a/#", "a", true),
            ("a/#", "b/#", false),
            ("+/b", "a/b", true),
            ("+/b", "+/b", true),
            ("+/b", "#", false),
            ("a/+", "a/#", false),
            ("a/b", "a/+", false),
            ("a/b", "a/b", true),
            ("a/b", "a/b/c", false),
        ];
        for (outer, inner, want) in table {
            assert_eq!(mqtt_filter_covers(outer, inner), *want, "{outer} covers {inner}");
        }
    }

    #[test]
    fn compiled_grant_checks() {
        let grant = CompiledGrant::new(&Capabilities {
            providers: vec!["lora-*".into()],
            mqtt: PubSub { subscribe: vec!["up/#".into()], publish: vec!["down/+".into()] },
            coap: PubSub { subscribe: vec!["/s/*".into()], publish: vec![] },
            udp: Udp { ports: vec![1700] },
            ..Capabilities::default()
        });
        assert!(grant.may_write("lora-7"));
        assert!(!grant.may_write("noise-7"));
        assert!(grant.receives("mqtt", "up/a/b"));
        assert!(!grant.receives("mqtt", "down/a"));
        assert!(grant.receives("coap", "/s/7"));
        assert!(grant.receives("udp", "1700"));
        assert!(!grant.receives("udp", "1701"));
        assert!(grant.may_send("mqtt", "down/x"));
        assert!(!grant.may_send("mqtt", "down/+"));
        assert!(!grant.may_send("mqtt", "up/x"));
        assert!(!grant.may_send("coap", "/s/7"));
        assert!(!grant.may_send("smtp", "x"));
    }
}
