//! `[oidc]`: the issuers whose tokens the hub accepts.

use serde::Deserialize;

/// `[oidc]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The trusted issuers.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
}

/// `[[oidc.issuers]]`: one trusted OpenID provider.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// The issuer identifier, exactly as tokens carry it in `iss` (`https://id.fujisawa.example`).
    pub issuer: String,
    /// The audience this hub is known by at the issuer; a token's `aud` must include it.
    pub audience: String,
    /// The domain (city, organisation) the issuer's subjects belong to: `fujisawa`. Appended to subjects and
    /// roles (`alice@fujisawa`, `officer@fujisawa`).
    pub domain: String,
    /// The claim that lists the subject's roles (an array of strings, or one space-separated string).
    #[serde(default = "default_roles_claim")]
    pub roles_claim: String,
    /// The claim that lists the subject's departments (an array of strings, or one space-separated string).
    /// Unset: the issuer's department claims are not trusted (the policy's `s` lines can still give some).
    #[serde(default)]
    pub department_claim: Option<String>,
    /// The claim that carries the subject's clearance level (a number or a numeric string, 0–255). Unset: not
    /// trusted.
    #[serde(default)]
    pub clearance_claim: Option<String>,
    /// Seconds of clock skew tolerated on `exp` and `nbf`.
    #[serde(default = "default_leeway")]
    pub leeway_secs: u64,
    /// The key set is fetched again when it is older than this.
    #[serde(default = "default_refresh")]
    pub jwks_refresh_secs: u64,
    /// A token with an unknown key id fetches the key set at once, but not more often than this.
    #[serde(default = "default_min_refresh")]
    pub min_refresh_secs: u64,
    /// Seconds to wait for the discovery document or the key set.
    #[serde(default = "default_timeout")]
    pub timeout_secs: u64,
}

fn default_roles_claim() -> String {
    "roles".to_owned()
}
fn default_leeway() -> u64 {
    30
}
fn default_refresh() -> u64 {
    3600
}
fn default_min_refresh() -> u64 {
    10
}
fn default_timeout() -> u64 {
    10
}

impl IssuerConfig {
    /// An entry with the defaults.
    pub fn new(issuer: &str, audience: &str, domain: &str) -> IssuerConfig {
        IssuerConfig {
            issuer: issuer.to_owned(),
            audience: audience.to_owned(),
            domain: domain.to_owned(),
            roles_claim: default_roles_claim(),
            department_claim: None,
            clearance_claim: None,
            leeway_secs: default_leeway(),
            jwks_refresh_secs: default_refresh(),
            min_refresh_secs: default_min_refresh(),
            timeout_secs: default_timeout(),
        }
    }
}

impl OidcConfig {
    /// Reads `[oidc]` from its TOML table.
    pub fn from_table(table: &toml::Table) -> Result<OidcConfig, String> {
        let config: OidcConfig = toml::Value::Table(table.clone()).try_into().map_err(|e| format!("oidc: {e}"))?;
        config.validate()?;
        Ok(config)
    }

    /// Checks every entry; the error names the key (`oidc.issuers[1].issuer`).
    pub fn validate(&self) -> Result<(), String> {
        for (i, entry) in self.issuers.iter().enumerate() {
            let key = |field: &str| format!("oidc.issuers[{i}].{field}");
            let url = url::Url::parse(&entry.issuer).map_err(|e| format!("{}: not a URL: {e}", key("issuer")))?;
            let loopback = match url.host() {
                Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
                Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
                Some(url::Host::Domain(name)) => name == "localhost",
                None => false,
            };
            match url.scheme() {
                "https" => {}
                "http" if loopback => {}
                _ => return Err(format!("{}: must be an https URL (http only on loopback)", key("issuer"))),
            }
            if url.query().is_some() || url.fragment().is_some() {
                return Err(format!("{}: an issuer has no query or fragment", key("issuer")));
            }
            if entry.audience.is_empty() {
                return Err(format!("{}: must not be empty", key("audience")));
            }
            hub_policy::validate_name("domain", &entry.domain).map_err(|e| format!("{}: {e}", key("domain")))?;
            if entry.domain.contains('@') {
                return Err(format!("{}: must not contain '@'", key("domain")));
            }
            if entry.min_refresh_secs == 0 {
                return Err(format!("{}: must be at least 1", key("min_refresh_secs")));
            }
            if entry.roles_claim.is_empty() {
                return Err(format!("{}: must not be empty", key("roles_claim")));
            }
            if self.issuers[..i].iter().any(|other| other.issuer == entry.issuer) {
                return Err(format!("{}: {} is listed twice", key("issuer"), entry.issuer));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<OidcConfig, String> {
        OidcConfig::from_table(&text.parse::<toml::Table>().unwrap())
    }

    #[test]
    fn entries_are_checked_and_named() {
        let ok = parse("[[issuers]]\nissuer = 'https://id.fujisawa.example'\naudience = 'hub'\ndomain = 'fujisawa'\n")
            .unwrap();
        assert_eq!(ok.issuers[0].roles_claim, "roles");
        assert!(parse("[[issuers]]\nissuer = 'http://127.0.0.1:4000'\naudience = 'a'\ndomain = 'd'\n").is_ok());
        for (bad, key) in [
            ("issuer = 'http://id.example'\naudience = 'a'\ndomain = 'd'", "issuers[0].issuer"),
            ("issuer = 'https://id.example'\naudience = ''\ndomain = 'd'", "issuers[0].audience"),
            ("issuer = 'https://id.example'\naudience = 'a'\ndomain = 'a b'", "issuers[0].domain"),
            ("issuer = 'https://id.example'\naudience = 'a'\ndomain = 'a@b'", "issuers[0].domain"),
            ("issuer = 'https://id.example'\naudience = 'a'\ndomain = 'd'\nsurprise = 1", "surprise"),
            ("issuer = 'https://id.example'\naudience = 'a'\ndomain = 'd'\nmin_refresh_secs = 0", "min_refresh_secs"),
        ] {
            let error = parse(&format!("[[issuers]]\n{bad}\n")).unwrap_err();
            assert!(error.contains(key), "{bad}: {error}");
        }
    }
}
