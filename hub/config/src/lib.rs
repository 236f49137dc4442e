//! The hub's configuration: one TOML file, every key documented here, validated in full before start.
//!
//! Unknown keys are errors, and every error names the key it is about (`http.listen: ...`). Without a file the
//! hub runs on embedded defaults: HTTP on 127.0.0.1:8080, SQLite in `./data`, no external service.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use hub_model::Glob;
use serde::{Deserialize, Deserializer};

/// A configuration problem, naming the key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{key}: {message}")]
pub struct ConfigIssue {
    /// The dotted key path (`retention.rules[0].every`), or `(file)` for syntax errors.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Why a configuration was refused: every issue found.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration:\n{}", .0.iter().map(|i| format!("  - {i}")).collect::<Vec<_>>().join("\n"))]
pub struct ConfigError(pub Vec<ConfigIssue>);

/// The whole configuration.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The HTTP API.
    pub http: HttpConfig,
    /// Where state and history live.
    pub storage: StorageConfig,
    /// The event bus that feeds streams.
    pub bus: BusConfig,
    /// History retention.
    pub retention: RetentionConfig,
    /// Logging.
    pub log: LogConfig,
    /// MQTT: `[mqtt.broker]` (the embedded broker) and `[[mqtt.bridges]]` (external brokers). Its schema lives
    /// with the transport (`hub-transport-mqtt`); the binary validates it before start, naming `mqtt.` keys.
    pub mqtt: toml::Table,
    /// CoAP: the endpoint devices send to, the client that observes device resources (`[[coap.observe]]`), and
    /// its limits. Schema in `hub-transport-coap`; validated by the binary, naming `coap.` keys.
    pub coap: toml::Table,
    /// LoRa gateways over the Semtech packet-forwarder protocol (GWMP, UDP). Schema in `hub-transport-gwmp`;
    /// validated by the binary, naming `gwmp.` keys.
    pub gwmp: toml::Table,
    /// XMPP publish-subscribe servers the hub follows (`[[xmpp.servers]]`). Schema in `hub-transport-xmpp`;
    /// validated by the binary, naming `xmpp.` keys.
    pub xmpp: toml::Table,
    /// Plugins.
    pub plugins: PluginsConfig,
    /// Authorisation.
    pub policy: PolicyConfig,
    /// The audit log.
    pub audit: AuditConfig,
    /// `[privacy]`
    pub privacy: PrivacyConfig,
    /// OpenID Connect: the issuers whose JWT access tokens the API accepts (`[[oidc.issuers]]`). Schema in
    /// `hub-identity`; validated by the binary, naming `oidc.` keys.
    pub oidc: toml::Table,
    /// Partner hubs whose providers this hub mirrors (`[[federation.peers]]`). Schema in `hub-federation`;
    /// validated by the binary, naming `federation.` keys.
    pub federation: toml::Table,
}

/// `[policy]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PolicyConfig {
    /// The hub's own domain (its city or organisation, e.g. `santander`): policy names without `@domain` belong
    /// to it, and hub tokens authenticate subjects in it. Default `local`.
    pub domain: String,
}

impl Default for PolicyConfig {
    fn default() -> Self {
        PolicyConfig { domain: "local".to_owned() }
    }
}

/// `[audit]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuditConfig {
    /// The Ed25519 key checkpoints are signed with (64 hex digits), created on first start when missing.
    /// Default `<data_dir>/audit-signing.key`.
    pub signing_key_file: Option<PathBuf>,
    /// Sign a checkpoint after this many entries. Default 1,000.
    pub checkpoint_every: u64,
    /// Sign a checkpoint at least this often while entries arrive. Default `60s`.
    #[serde(deserialize_with = "duration")]
    pub checkpoint_interval: Duration,
}

impl Default for AuditConfig {
    fn default() -> Self {
        AuditConfig { signing_key_file: None, checkpoint_every: 1_000, checkpoint_interval: Duration::from_secs(60) }
    }
}

/// `[privacy]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PrivacyConfig {
    /// Resources whose values identify people (a phone's MAC address seen by an occupancy sensor, the reporter
    /// of a citizen's incident report), as globs over `provider/service/resource`: their values are replaced by
    /// keyed pseudonyms before anything keeps, forwards or streams them. Default: none.
    #[serde(deserialize_with = "globs")]
    pub identifiers: Vec<Glob>,
    /// How long one pseudonym secret is used: the same value gets the same pseudonym within a period, another
    /// one in the next. Default `1d`.
    #[serde(deserialize_with = "duration")]
    pub pseudonym_rotation: Duration,
    /// Where the current period's secret is kept (overwritten at each rotation). Default
    /// `<data_dir>/pseudonym.key`.
    pub pseudonym_key_file: Option<PathBuf>,
}

impl Default for PrivacyConfig {
    fn default() -> Self {
        PrivacyConfig {
            identifiers: Vec::new(),
            pseudonym_rotation: Duration::from_secs(86_400),
            pseudonym_key_file: None,
        }
    }
}

/// `[plugins]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct PluginsConfig {
    /// The official adapters (built into the binary) to install at start when missing, and to upgrade when the
    /// installed module differs from the built-in one. Default `["mqtt", "coap", "lorawan", "xmpp"]`. An adapter dropped from the list is
    /// left as it is (stop or remove it through the API). The binary checks the names.
    pub official: Vec<String>,
}

impl Default for PluginsConfig {
    fn default() -> Self {
        PluginsConfig { official: vec!["mqtt".into(), "coap".into(), "lorawan".into(), "xmpp".into()] }
    }
}

/// `[http]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Address to listen on. Default `127.0.0.1:8080`.
    pub listen: SocketAddr,
    /// Largest accepted request body, in bytes. Default 16 MiB.
    pub max_body_bytes: usize,
    /// Most updates accepted in one `/ingest` request. Default 100,000.
    pub max_batch: usize,
    /// Deadline for one request (streams excluded). Default `30s`.
    #[serde(deserialize_with = "duration")]
    pub request_timeout: Duration,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            max_body_bytes: 16 * 1024 * 1024,
            max_batch: 100_000,
            request_timeout: Duration::from_secs(30),
        }
    }
}

/// `[storage]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// The data directory: SQLite database, admin token. Default `./data`.
    pub data_dir: PathBuf,
    /// A `postgres://` URL selects PostgreSQL; absent means SQLite in `data_dir`.
    pub url: Option<String>,
    /// PostgreSQL schema to use (created if missing). Default `public`.
    pub schema: Option<String>,
    /// SQLite durability: `full` (default; survives power loss) or `normal` (survives a crash of the hub).
    pub sqlite_synchronous: SqliteSynchronous,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            data_dir: PathBuf::from("./data"),
            url: None,
            schema: None,
            sqlite_synchronous: SqliteSynchronous::Full,
        }
    }
}

/// SQLite `synchronous` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SqliteSynchronous {
    /// fsync at every commit.
    Full,
    /// fsync at checkpoints only (WAL): committed data survives a process crash, not a power cut.
    Normal,
}

/// `[bus]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BusConfig {
    /// Events kept for slow subscribers before the oldest are dropped. Default 4096.
    pub capacity: usize,
}

impl Default for BusConfig {
    fn default() -> Self {
        BusConfig { capacity: 4096 }
    }
}

/// `[retention]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// How often retention runs. Default `1h`.
    #[serde(deserialize_with = "duration")]
    pub interval: Duration,
    /// Rules, first match wins per resource.
    pub rules: Vec<RetentionRule>,
}

impl Default for RetentionConfig {
    fn default() -> Self {
        RetentionConfig { interval: Duration::from_secs(3600), rules: Vec::new() }
    }
}

/// `[[retention.rules]]`: keep raw points of matching resources for `keep_raw`, then roll them up or drop them.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionRule {
    /// A glob over `provider/service/resource` (`*` matches any characters, including `/`).
    #[serde(deserialize_with = "glob")]
    pub resources: Glob,
    /// How long raw points are kept (`7d`, `12h`).
    #[serde(deserialize_with = "duration")]
    pub keep_raw: Duration,
    /// What happens to older points: `drop` or `downsample`.
    pub then: RetentionAction,
    /// Bucket width when downsampling (`5m`).
    #[serde(default, deserialize_with = "opt_duration")]
    pub every: Option<Duration>,
    /// Aggregate when downsampling: avg, min, max, sum, count, last. Default avg.
    #[serde(default)]
    pub aggregate: Option<String>,
}

/// What retention does with old points.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RetentionAction {
    /// Delete them.
    Drop,
    /// Replace them with one aggregate per bucket.
    Downsample,
}

/// `[log]`
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter (`info`, `hub=debug,tower_http=info`). `RUST_LOG` overrides it. Default
    /// `info,rumqttd=off`: the embedded broker's library reports every ordinary client disconnect as an error.
    pub filter: String,
    /// `text` (default) or `json`.
    pub format: LogFormat,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig { filter: "info,rumqttd=off".into(), format: LogFormat::Text }
    }
}

/// Log line format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

const AGGREGATES: [&str; 6] = ["avg", "min", "max", "sum", "count", "last"];

impl Config {
    /// Parses and validates a TOML document. All semantic issues are reported together.
    pub fn from_toml(text: &str) -> Result<Config, ConfigError> {
        let de = toml::Deserializer::new(text);
        let config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." || key.is_empty() { "(file)".to_string() } else { key };
            ConfigError(vec![ConfigIssue { key, message: e.into_inner().message().trim().to_string() }])
        })?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every semantic constraint; returns every issue found.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut issues = Vec::new();
        let mut issue = |key: String, message: &str| issues.push(ConfigIssue { key, message: message.into() });
        if !(1024..=1 << 30).contains(&self.http.max_body_bytes) {
            issue("http.max_body_bytes".into(), "must be between 1024 and 1073741824");
        }
        if !(1..=1_000_000).contains(&self.http.max_batch) {
            issue("http.max_batch".into(), "must be between 1 and 1000000");
        }
        if self.http.request_timeout.is_zero() {
            issue("http.request_timeout".into(), "must be longer than zero");
        }
        if self.privacy.pseudonym_rotation < Duration::from_secs(1) {
            issue("privacy.pseudonym_rotation".into(), "must be at least 1s");
        }
        if self.audit.checkpoint_every == 0 {
            issue("audit.checkpoint_every".into(), "must be at least 1");
        }
        if self.audit.checkpoint_interval.is_zero() {
            issue("audit.checkpoint_interval".into(), "must be longer than zero");
        }
        if !(16..=1 << 20).contains(&self.bus.capacity) {
            issue("bus.capacity".into(), "must be between 16 and 1048576");
        }
        if let Some(url) = &self.storage.url
            && !(url.starts_with("postgres://") || url.starts_with("postgresql://") || url.starts_with("sqlite://"))
        {
            issue("storage.url".into(), "must start with postgres://, postgresql:// or sqlite://");
        }
        if let Some(schema) = &self.storage.schema
            && (schema.is_empty()
                || schema.len() > 63
                || !schema.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'))
        {
            issue("storage.schema".into(), "must be 1 to 63 characters from a-z, 0-9 and _");
        }
        let domain = &self.policy.domain;
        if domain.is_empty()
            || domain.len() > 64
            || !domain.bytes().all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
        {
            issue("policy.domain".into(), "must be 1 to 64 characters from A-Z, a-z, 0-9, '.', '_' and '-'");
        }
        if self.retention.interval < Duration::from_secs(1) {
            issue("retention.interval".into(), "must be at least 1s");
        }
        for (i, rule) in self.retention.rules.iter().enumerate() {
            let key = |k: &str| format!("retention.rules[{i}].{k}");
            if rule.keep_raw.is_zero() {
                issue(key("keep_raw"), "must be longer than zero");
            }
            match (rule.then, rule.every) {
                (RetentionAction::Downsample, None) => issue(key("every"), "is required when then = \"downsample\""),
                (RetentionAction::Downsample, Some(every)) if every < Duration::from_secs(1) => {
                    issue(key("every"), "must be at least 1s")
                }
                (RetentionAction::Drop, Some(_)) => issue(key("every"), "only applies when then = \"downsample\""),
                _ => {}
            }
            if let Some(agg) = &rule.aggregate {
                if rule.then == RetentionAction::Drop {
                    issue(key("aggregate"), "only applies when then = \"downsample\"");
                } else if !AGGREGATES.contains(&agg.as_str()) {
                    issue(key("aggregate"), "must be one of avg, min, max, sum, count, last");
                }
            }
        }
        if issues.is_empty() { Ok(()) } else { Err(ConfigError(issues)) }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    humantime::parse_duration(&s)
        .map_err(|e| serde::de::Error::custom(format!("{s:?} is not a duration ({e}); use e.g. 30s, 5m, 7d")))
}

fn opt_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    duration(d).map(Some)
}

fn globs<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Glob>, D::Error> {
    let patterns = Vec::<String>::deserialize(d)?;
    if patterns.iter().any(String::is_empty) {
        return Err(serde::de::Error::custom("a pattern cannot be empty"));
    }
    Ok(patterns.iter().map(|p| Glob::new(p)).collect())
}

fn glob<'de, D: Deserializer<'de>>(d: D) -> Result<Glob, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Err(serde::de::Error::custom("a pattern cannot be empty"));
    }
    Ok(Glob::new(&s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_file_is_the_embedded_defaults() {
        assert_eq!(Config::from_toml("").unwrap(), Config::default());
    }

    #[test]
    fn full_example_parses() {
        let c = Config::from_toml(
            r#"
            [http]
            listen = "0.0.0.0:9000"
            max_body_bytes = 1048576
            request_timeout = "10s"
            [storage]
            data_dir = "/var/lib/hub"
            url = "postgres://hub@db/hub"
            schema = "city"
            [bus]
            capacity = 1024
            [retention]
            interval = "10m"
            [[retention.rules]]
            resources = "noise-*"
            keep_raw = "7d"
            then = "downsample"
            every = "5m"
            aggregate = "max"
            [[retention.rules]]
            resources = "*"
            keep_raw = "90d"
            then = "drop"
            [log]
            filter = "debug"
            format = "json"
            "#,
        )
        .unwrap();
        assert_eq!(c.http.listen.port(), 9000);
        assert_eq!(c.retention.rules[0].every, Some(Duration::from_secs(300)));
        assert!(c.retention.rules[0].resources.matches("noise-1/sound/level"));
        assert_eq!(c.log.format, LogFormat::Json);
    }

    #[test]
    fn the_shipped_examples_parse() {
        for name in ["hub.toml", "santander.toml"] {
            let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/").to_owned() + name;
            let text = std::fs::read_to_string(&path).unwrap();
            let config = Config::from_toml(&text).unwrap_or_else(|e| panic!("{path}: {e}"));
            if name == "hub.toml" {
                assert_eq!(config.privacy.pseudonym_rotation, Duration::from_secs(86_400));
            }
        }
        let c = Config::from_toml("[privacy]\nidentifiers = [\"*/wifi/mac\"]\npseudonym_rotation = \"1h\"").unwrap();
        assert!(c.privacy.identifiers[0].matches("occ-1/wifi/mac"));
        assert_eq!(c.privacy.pseudonym_rotation, Duration::from_secs(3600));
    }

    fn issues(text: &str) -> Vec<String> {
        Config::from_toml(text).unwrap_err().0.into_iter().map(|i| i.to_string()).collect()
    }

    #[test]
    fn errors_name_their_key() {
        let golden: &[(&str, &str)] = &[
            ("[http]\nlisten = \"nowhere\"", "http.listen: invalid socket address syntax"),
            ("[http]\nlistne = \"127.0.0.1:1\"", "http.listne: unknown field `listne`"),
            ("[nope]\n", "nope: unknown field `nope`"),
            ("[http]\nrequest_timeout = \"soon\"", "http.request_timeout: \"soon\" is not a duration"),
            ("[storage]\nurl = \"mysql://x\"", "storage.url: must start with postgres://"),
            ("[storage]\nsqlite_synchronous = \"off\"", "storage.sqlite_synchronous: unknown variant `off`"),
            ("[bus]\ncapacity = 1", "bus.capacity: must be between 16"),
            (
                "[[retention.rules]]\nresources = \"*\"\nkeep_raw = \"1d\"\nthen = \"downsample\"",
                "retention.rules[0].every: is required",
            ),
            (
                "[[retention.rules]]\nresources = \"*\"\nkeep_raw = \"1d\"\nthen = \"downsample\"\nevery = \"1m\"\naggregate = \"median\"",
                "retention.rules[0].aggregate: must be one of",
            ),
            ("[http\n", "(file)"),
            ("[privacy]\nidentifiers = [\"\"]", "privacy.identifiers: a pattern cannot be empty"),
            ("[privacy]\npseudonym_rotation = \"0s\"", "privacy.pseudonym_rotation: must be at least 1s"),
            ("[privacy]\nidentifier = []", "privacy.identifier: unknown field"),
        ];
        for (text, want) in golden {
            let got = issues(text);
            assert!(got.iter().any(|g| g.starts_with(want)), "{text:?}: got {got:?}, want {want:?}");
        }
    }

    #[test]
    fn every_semantic_issue_is_reported_at_once() {
        let got = issues("[http]\nmax_body_bytes = 1\nmax_batch = 0\n[bus]\ncapacity = 0");
        assert_eq!(got.len(), 3, "{got:?}");
    }
}
