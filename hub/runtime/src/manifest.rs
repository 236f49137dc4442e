//! `plugin.toml`: what a plugin is, what it asks for, and the limits it runs under. Strict: unknown keys are
//! errors, and every error names its key.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::capability::Capabilities;

/// The ABI versions this host loads. A released version stays in this list.
pub const SUPPORTED_ABI_VERSIONS: &[u32] = &[1];

/// The smallest and largest memory limit a manifest may ask for, in MiB.
pub const MEMORY_MIB_RANGE: (u32, u32) = (1, 1024);
/// The shortest and longest per-call deadline a manifest may ask for, in milliseconds.
pub const TIMEOUT_MS_RANGE: (u64, u64) = (1, 60_000);
/// The shortest tick interval, in milliseconds.
pub const MIN_TICK_MS: u64 = 10;

/// What kind of plugin it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PluginKind {
    /// A protocol adapter: decodes device messages into updates, encodes commands.
    Adapter,
    /// A rule app.
    App,
}

/// The limits one instance runs under.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Limits {
    /// Linear memory, in MiB.
    #[serde(default = "default_memory_mib")]
    pub memory_mib: u32,
    /// Deadline of one call, in milliseconds.
    #[serde(default = "default_timeout_ms")]
    pub timeout_ms: u64,
}

fn default_memory_mib() -> u32 {
    32
}

fn default_timeout_ms() -> u64 {
    1_000
}

impl Default for Limits {
    fn default() -> Self {
        Limits { memory_mib: default_memory_mib(), timeout_ms: default_timeout_ms() }
    }
}

/// A parsed and validated `plugin.toml`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Manifest {
    /// The plugin's id: 1–64 characters `a-z 0-9 - _`, starting with a letter or digit.
    pub id: String,
    /// The plugin's version (semver).
    pub version: semver::Version,
    /// The ABI version it was built for.
    pub abi: u32,
    /// The hub versions it runs on (a semver requirement such as `>=0.1.0, <0.2.0`).
    pub hub: semver::VersionReq,
    /// Adapter or app.
    pub kind: PluginKind,
    /// SHA-256 of the wasm module, lowercase hex.
    pub sha256: String,
    /// One line for people.
    #[serde(default)]
    pub description: Option<String>,
    /// Call `on_tick` this often, in milliseconds; no ticks when absent.
    #[serde(default)]
    pub tick_ms: Option<u64>,
    /// What it asks to be granted.
    #[serde(default)]
    pub capabilities: Capabilities,
    /// The limits it runs under.
    #[serde(default)]
    pub limits: Limits,
    /// The default configuration, handed to `init` as JSON.
    #[serde(default)]
    pub config: toml::Table,
}

/// One problem with a manifest: the key and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestIssue {
    /// The key, dotted (`limits.memory_mib`), or `(file)` for the document itself.
    pub key: String,
    /// What is wrong.
    pub message: String,
}

/// Every problem found in a manifest.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct ManifestError(pub Vec<ManifestIssue>);

impl fmt::Display for ManifestError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, issue) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("; ")?;
            }
            write!(f, "{}: {}", issue.key, issue.message)?;
        }
        Ok(())
    }
}

impl Manifest {
    /// Parses and validates `plugin.toml`. Every semantic issue is reported together.
    pub fn parse(text: &str) -> Result<Manifest, ManifestError> {
        let de = toml::Deserializer::new(text);
        let manifest: Manifest = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." || key.is_empty() { "(file)".to_owned() } else { key };
            ManifestError(vec![ManifestIssue { key, message: e.into_inner().message().trim().to_owned() }])
        })?;
        manifest.validate()?;
        Ok(manifest)
    }

    /// Checks what the types alone cannot.
    pub fn validate(&self) -> Result<(), ManifestError> {
        let mut issues = Vec::new();
        let mut issue = |key: &str, message: String| issues.push(ManifestIssue { key: key.to_owned(), message });
        if let Err(reason) = validate_id(&self.id) {
            issue("id", reason.to_owned());
        }
        if !SUPPORTED_ABI_VERSIONS.contains(&self.abi) {
            issue(
                "abi",
                format!("ABI version {} is not supported; this hub loads {SUPPORTED_ABI_VERSIONS:?}", self.abi),
            );
        }
        if self.sha256.len() != 64 || !self.sha256.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            issue("sha256", "must be 64 lowercase hex digits (the SHA-256 of the wasm module)".to_owned());
        }
        if let Some(tick) = self.tick_ms
            && tick < MIN_TICK_MS
        {
            issue("tick_ms", format!("must be at least {MIN_TICK_MS}"));
        }
        let (lo, hi) = MEMORY_MIB_RANGE;
        if !(lo..=hi).contains(&self.limits.memory_mib) {
            issue("limits.memory_mib", format!("must be between {lo} and {hi}"));
        }
        let (lo, hi) = TIMEOUT_MS_RANGE;
        if !(lo..=hi).contains(&self.limits.timeout_ms) {
            issue("limits.timeout_ms", format!("must be between {lo} and {hi}"));
        }
        for (key, message) in self.capabilities.validate() {
            issue(&format!("capabilities.{key}"), message);
        }
        if issues.is_empty() { Ok(()) } else { Err(ManifestError(issues)) }
    }

    /// Whether this hub version is in the manifest's `hub` range.
    pub fn supports_hub(&self, hub: &semver::Version) -> bool {
        self.hub.matches(hub)
    }

    /// The default configuration as JSON.
    pub fn default_config(&self) -> serde_json::Value {
        serde_json::to_value(&self.config).unwrap_or(serde_json::Value::Null)
    }
}

/// Checks a plugin id: 1–64 characters from `a-z 0-9 - _`, starting with a letter or digit. Ids name
/// directories and policy subjects (`plugin:<id>`), so nothing else is allowed.
pub fn validate_id(id: &str) -> Result<(), &'static str> {
    if id.is_empty() || id.len() > 64 {
        return Err("must be 1 to 64 characters long");
    }
    if !id.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'_') {
        return Err("may only use the characters a-z 0-9 - _");
    }
    if !id.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric()) {
        return Err("must start with a letter or a digit");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids() {
        for ok in ["a", "lora-decoder", "x_1", "7seg"] {
            assert!(validate_id(ok).is_ok(), "{ok}");
        }
        for bad in ["", "-x", "A", "a.b", "a/b", "..", &"a".repeat(65)] {
            assert!(validate_id(bad).is_err(), "{bad}");
        }
    }
}
