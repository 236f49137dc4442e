//! `[federation]`: the partner hubs this hub mirrors providers from.

use hub_identity::ClientCredentialsConfig;
use hub_model::Name;
use serde::Deserialize;

/// `[federation]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FederationConfig {
    /// The peers, one link each.
    #[serde(default)]
    pub peers: Vec<PeerConfig>,
}

/// `[[federation.peers]]`: one partner hub and what to import from it.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeerConfig {
    /// The peer's name here (`fujisawa`): names the link, and the default prefix of what it imports.
    pub name: String,
    /// The peer's base URL (`https://hub.fujisawa.example`); its API is under `/api/v1`.
    pub url: String,
    /// The peer's domain, recorded in the origin of what it imports. Default: the name.
    #[serde(default)]
    pub domain: Option<String>,
    /// Globs over the peer's provider names: which providers to import. Default: everything the peer lets this
    /// hub read.
    #[serde(default = "everything")]
    pub import: Vec<String>,
    /// Prepended to each imported provider's name. Default `{name}.` (`fujisawa.truck-12`).
    #[serde(default)]
    pub prefix: Option<String>,
    /// How this hub gets its access tokens for the peer: the client credentials grant at an issuer the peer
    /// trusts (normally this hub's own identity provider).
    #[serde(default)]
    pub client_credentials: Option<CredentialsConfig>,
    /// Or: the environment variable holding a fixed token the peer accepts (one of the peer's hub tokens).
    #[serde(default)]
    pub token_env: Option<String>,
    /// Seconds to wait for the peer's answers (not for the stream, which stays open).
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
    /// The longest wait between two connection attempts, in seconds; the wait starts at half a second and
    /// doubles.
    #[serde(default = "default_reconnect")]
    pub reconnect_max_secs: u64,
}

/// `[federation.peers.client_credentials]`
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CredentialsConfig {
    /// The issuer that grants the tokens.
    pub issuer: String,
    /// This hub's client id there.
    pub client_id: String,
    /// The client secret, written in the file.
    #[serde(default)]
    pub client_secret: Option<String>,
    /// Or: the environment variable that holds it.
    #[serde(default)]
    pub client_secret_env: Option<String>,
    /// The resource indicator (RFC 8707) of the peer: the audience the peer's issuer entry expects.
    #[serde(default)]
    pub resource: Option<String>,
    /// Scopes to ask for, space-separated.
    #[serde(default)]
    pub scope: Option<String>,
}

impl std::fmt::Debug for CredentialsConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CredentialsConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "(redacted)"))
            .field("client_secret_env", &self.client_secret_env)
            .field("resource", &self.resource)
            .field("scope", &self.scope)
            .finish()
    }
}

fn everything() -> Vec<String> {
    vec!["*".to_owned()]
}
fn default_timeout() -> u64 {
    10
}
fn default_reconnect() -> u64 {
    10
}

/// How a link authenticates, resolved from the configuration and the environment.
#[derive(Debug, Clone)]
pub enum PeerAuth {
    /// Client credentials at an issuer.
    Credentials(ClientCredentialsConfig),
    /// A fixed token.
    Token(String),
}

impl PeerConfig {
    /// The prefix of imported providers' names.
    pub fn prefix(&self) -> String {
        self.prefix.clone().unwrap_or_else(|| format!("{}.", self.name))
    }

    /// The peer's domain.
    pub fn domain(&self) -> &str {
        self.domain.as_deref().unwrap_or(&self.name)
    }

    /// The credentials, with secrets read from the environment.
    pub fn auth(&self) -> Result<PeerAuth, String> {
        let env = |var: &str| std::env::var(var).map_err(|_| format!("the environment variable {var} is not set"));
        match (&self.client_credentials, &self.token_env) {
            (Some(c), None) => {
                let secret = match (&c.client_secret, &c.client_secret_env) {
                    (Some(secret), None) => secret.clone(),
                    (None, Some(var)) => env(var).map_err(|e| format!("client_credentials.client_secret_env: {e}"))?,
                    _ => return Err("client_credentials: set exactly one of client_secret, client_secret_env".into()),
                };
                let mut config = ClientCredentialsConfig::new(&c.issuer, &c.client_id, &secret);
                config.resource = c.resource.clone();
                config.scope = c.scope.clone();
                config.timeout_secs = self.timeout_secs;
                config.validate().map_err(|e| format!("client_credentials.{e}"))?;
                Ok(PeerAuth::Credentials(config))
            }
            (None, Some(var)) => Ok(PeerAuth::Token(env(var).map_err(|e| format!("token_env: {e}"))?)),
            _ => Err("set exactly one of client_credentials, token_env".into()),
        }
    }
}

impl FederationConfig {
    /// Reads `[federation]` from its TOML table and checks it; errors name the key (`federation.peers[0].url`).
    pub fn from_table(table: &toml::Table) -> Result<FederationConfig, String> {
        let config: FederationConfig =
            toml::Value::Table(table.clone()).try_into().map_err(|e| format!("federation: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    fn validate(&self) -> Result<(), String> {
        let mut prefixes: Vec<(String, &str)> = Vec::new();
        for (i, peer) in self.peers.iter().enumerate() {
            let key = |k: &str| format!("federation.peers[{i}].{k}");
            let name_ok = Name::new(&peer.name).is_ok() && !peer.name.contains('.');
            if !name_ok {
                return Err(format!("{}: {:?} is not a name (A-Z a-z 0-9 - _, no dots)", key("name"), peer.name));
            }
            if self.peers[..i].iter().any(|p| p.name == peer.name) {
                return Err(format!("{}: the peer {:?} is listed twice", key("name"), peer.name));
            }
            let url = url::Url::parse(&peer.url).map_err(|e| format!("{}: {e}", key("url")))?;
            if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
                return Err(format!("{}: an http or https URL is needed", key("url")));
            }
            if peer.import.is_empty() || peer.import.iter().any(|g| g.is_empty()) {
                return Err(format!("{}: list at least one non-empty glob", key("import")));
            }
            let prefix = peer.prefix();
            // The prefix must itself start a valid name, and must not be a prefix of another peer's.
            if Name::new(&format!("{prefix}x")).is_err() || prefix.is_empty() {
                return Err(format!("{}: {prefix:?} cannot start a provider name", key("prefix")));
            }
            if let Some((other, _)) = prefixes.iter().find(|(p, _)| p.starts_with(&prefix) || prefix.starts_with(p)) {
                return Err(format!("{}: {prefix:?} overlaps the prefix {other:?} of another peer", key("prefix")));
            }
            prefixes.push((prefix, &peer.name));
            if peer.timeout_secs == 0 || peer.reconnect_max_secs == 0 {
                return Err(format!("{}: timeouts are at least 1 second", key("timeout_secs")));
            }
            match (&peer.client_credentials, &peer.token_env) {
                (Some(_), None) | (None, Some(_)) => {}
                _ => return Err(format!("{}: set exactly one of client_credentials, token_env", key("auth"))),
            }
            if let Some(c) = &peer.client_credentials
                && c.client_secret.is_some() == c.client_secret_env.is_some()
            {
                return Err(format!(
                    "{}: set exactly one of client_secret, client_secret_env",
                    key("client_credentials")
                ));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FederationConfig, String> {
        FederationConfig::from_table(&text.parse::<toml::Table>().unwrap())
    }

    #[test]
    fn peers_are_checked_and_named() {
        let ok = parse(
            r#"
            [[peers]]
            name = "fujisawa"
            url = "https://hub.fujisawa.example"
            import = ["env-*"]
            [peers.client_credentials]
            issuer = "https://id.santander.example"
            client_id = "hub-santander"
            client_secret_env = "SECRET"
            resource = "https://hub.fujisawa.example"
        "#,
        )
        .unwrap();
        assert_eq!(ok.peers[0].prefix(), "fujisawa.");
        assert_eq!(ok.peers[0].domain(), "fujisawa");
        let bad = [
            (
                r#"[[peers]]
               name = "a.b"
               url = "http://x"
               token_env = "T""#,
                "peers[0].name",
            ),
            (
                r#"[[peers]]
               name = "a"
               url = "ftp://x"
               token_env = "T""#,
                "peers[0].url",
            ),
            (
                r#"[[peers]]
               name = "a"
               url = "http://x""#,
                "exactly one of client_credentials, token_env",
            ),
            (
                r#"[[peers]]
               name = "a"
               url = "http://x"
               token_env = "T"
               import = []"#,
                "peers[0].import",
            ),
            (
                r#"[[peers]]
               name = "a"
               url = "http://x"
               token_env = "T"
               [[peers]]
               name = "b"
               url = "http://y"
               prefix = "a.x"
               token_env = "T""#,
                "overlaps",
            ),
            (
                r#"[[peers]]
               name = "a"
               url = "http://x"
               token_env = "T"
               colour = "red""#,
                "unknown field",
            ),
        ];
        for (text, wanted) in bad {
            let error = parse(text).unwrap_err();
            assert!(error.contains(wanted), "{error} (wanted {wanted})");
        }
    }
}
