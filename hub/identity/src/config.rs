//! `[oidc]`: the issuers whose tokens the hub accepts, and `[oidc.login]`, the browser sign-in.

use serde::Deserialize;

/// `[oidc]`
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OidcConfig {
    /// The trusted issuers.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// Sign-in in the browser against one of the issuers (none: no `/auth/login`).
    #[serde(default)]
    pub login: Option<LoginConfig>,
}

/// `[oidc.login]`: browser sign-in with the authorization code flow (PKCE, `state`, `nonce`) against one of the
/// trusted issuers, whose domain the signed-in principal gets.
#[derive(Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoginConfig {
    /// The issuer to sign in with; one of `[[oidc.issuers]]`.
    pub issuer: String,
    /// This hub's client id at the issuer.
    pub client_id: String,
    /// The client secret; none for a public client (PKCE only).
    #[serde(default)]
    pub client_secret: Option<String>,
    /// The hub's callback as registered at the issuer: `https://hub.example/api/v1/auth/callback`.
    pub redirect_url: String,
    /// The scopes asked for; `openid` is always among them.
    #[serde(default = "default_scopes")]
    pub scopes: Vec<String>,
    /// How long a session lasts after sign-in.
    #[serde(default = "default_session_ttl")]
    pub session_ttl_secs: u64,
    /// Whether cookies carry `Secure`; default: yes, unless `redirect_url` is http on loopback.
    #[serde(default)]
    pub secure_cookie: Option<bool>,
}

impl std::fmt::Debug for LoginConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LoginConfig")
            .field("issuer", &self.issuer)
            .field("client_id", &self.client_id)
            .field("client_secret", &self.client_secret.as_ref().map(|_| "(redacted)"))
            .field("redirect_url", &self.redirect_url)
            .field("scopes", &self.scopes)
            .field("session_ttl_secs", &self.session_ttl_secs)
            .field("secure_cookie", &self.secure_cookie)
            .finish()
    }
}

fn default_scopes() -> Vec<String> {
    vec!["openid".to_owned()]
}
fn default_session_ttl() -> u64 {
    8 * 3600
}

impl LoginConfig {
    /// A login with the defaults.
    pub fn new(issuer: &str, client_id: &str, redirect_url: &str) -> LoginConfig {
        LoginConfig {
            issuer: issuer.to_owned(),
            client_id: client_id.to_owned(),
            client_secret: None,
            redirect_url: redirect_url.to_owned(),
            scopes: default_scopes(),
            session_ttl_secs: default_session_ttl(),
            secure_cookie: None,
        }
    }

    /// Whether cookies carry `Secure`: as configured, else unless `redirect_url` is http on loopback.
    pub fn secure_cookie(&self) -> bool {
        self.secure_cookie.unwrap_or_else(|| {
            url::Url::parse(&self.redirect_url).map_or(true, |url| !(url.scheme() == "http" && is_loopback(&url)))
        })
    }

    fn validate(&self, issuers: &[IssuerConfig]) -> Result<(), String> {
        let key = |field: &str| format!("oidc.login.{field}");
        if !issuers.iter().any(|entry| entry.issuer == self.issuer) {
            return Err(format!("{}: {} is not one of [[oidc.issuers]]", key("issuer"), self.issuer));
        }
        if self.client_id.is_empty() {
            return Err(format!("{}: must not be empty", key("client_id")));
        }
        if self.client_secret.as_deref() == Some("") {
            return Err(format!("{}: must not be empty (leave it out for a public client)", key("client_secret")));
        }
        let redirect = web_url(&key("redirect_url"), &self.redirect_url)?;
        if redirect.fragment().is_some() {
            return Err(format!("{}: a redirect URL has no fragment", key("redirect_url")));
        }
        if let Some(i) = self.scopes.iter().position(|s| s.is_empty() || s.contains(char::is_whitespace)) {
            return Err(format!("{}[{i}]: one scope, without spaces", key("scopes")));
        }
        if self.session_ttl_secs == 0 {
            return Err(format!("{}: must be at least 1", key("session_ttl_secs")));
        }
        Ok(())
    }
}

/// Whether a URL's host is the loopback interface.
pub(crate) fn is_loopback(url: &url::Url) -> bool {
    match url.host() {
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        Some(url::Host::Domain(name)) => name == "localhost",
        None => false,
    }
}

/// Parses an https URL (http only on loopback); the error names `key`.
pub(crate) fn web_url(key: &str, text: &str) -> Result<url::Url, String> {
    let url = url::Url::parse(text).map_err(|e| format!("{key}: not a URL: {e}"))?;
    match url.scheme() {
        "https" => Ok(url),
        "http" if is_loopback(&url) => Ok(url),
        _ => Err(format!("{key}: must be an https URL (http only on loopback)")),
    }
}

/// Checks an issuer identifier: an https URL (http only on loopback) without query or fragment.
pub(crate) fn issuer_url(key: &str, text: &str) -> Result<(), String> {
    let url = web_url(key, text)?;
    if url.query().is_some() || url.fragment().is_some() {
        return Err(format!("{key}: an issuer has no query or fragment"));
    }
    Ok(())
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
            issuer_url(&key("issuer"), &entry.issuer)?;
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
        if let Some(login) = &self.login {
            login.validate(&self.issuers)?;
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

    const ISSUER: &str = "[[issuers]]\nissuer = 'https://id.fujisawa.example'\naudience = 'hub'\ndomain = 'fujisawa'\n";

    #[test]
    fn login_defaults_and_cookie_security() {
        let config = parse(&format!(
            "{ISSUER}[login]\nissuer = 'https://id.fujisawa.example'\nclient_id = 'hub'\n\
             redirect_url = 'https://hub.example/api/v1/auth/callback'\n"
        ))
        .unwrap();
        let login = config.login.unwrap();
        assert_eq!(login.scopes, ["openid"]);
        assert_eq!(login.session_ttl_secs, 8 * 3600);
        assert_eq!(login.client_secret, None);
        assert!(login.secure_cookie());
        let mut local = LoginConfig::new("x", "hub", "http://127.0.0.1:8080/api/v1/auth/callback");
        assert!(!local.secure_cookie(), "http on loopback: no Secure by default");
        local.secure_cookie = Some(true);
        assert!(local.secure_cookie());
        local.client_secret = Some("very secret".into());
        assert!(!format!("{local:?}").contains("very secret"), "the secret stays out of logs");
    }

    #[test]
    fn login_errors_name_their_key() {
        let good = "issuer = 'https://id.fujisawa.example'\nclient_id = 'hub'\nredirect_url = 'https://hub.example/cb'";
        assert!(parse(&format!("{ISSUER}[login]\n{good}\n")).is_ok());
        for (bad, key) in [
            (good.replace("id.fujisawa", "id.other"), "oidc.login.issuer"),
            (good.replace("client_id = 'hub'", "client_id = ''"), "oidc.login.client_id"),
            (good.replace("https://hub.example/cb", "http://hub.example/cb"), "oidc.login.redirect_url"),
            (good.replace("https://hub.example/cb", "/cb"), "oidc.login.redirect_url"),
            (format!("{good}\nscopes = ['openid', 'a b']"), "oidc.login.scopes[1]"),
            (format!("{good}\nsession_ttl_secs = 0"), "oidc.login.session_ttl_secs"),
            (format!("{good}\nclient_secret = ''"), "oidc.login.client_secret"),
            (format!("{good}\ncolour = 'blue'"), "colour"),
        ] {
            let error = parse(&format!("{ISSUER}[login]\n{bad}\n")).unwrap_err();
            assert!(error.contains(key), "{bad}: {error}");
        }
    }
}
