//! A real OpenID provider for tests: `oidc-provider` (npm) on a free loopback port, driven by
//! `tests/oidc/provider.mjs`. It issues JWT access tokens (RS256) for one audience through the client credentials
//! grant, to confidential clients whose extra claims go into every token, and publishes its public keys at the
//! `jwks_uri` of its discovery document. With a [`LoginSetup`] it also signs test users in with the
//! authorization code flow (PKCE required) through a login form a [`Browser`] fills in. Its keys can be rotated
//! (a restart on the same port), and it stops when dropped.
//!
//! Needs Node.js and the script's packages: `npm ci --prefix tests/oidc`. HTTP goes through `curl`.

use std::{
    fs,
    io::{BufRead, BufReader},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use serde_json::{Value, json};

use crate::{HubProcess, browser::Browser, free_port, require_program};

/// How long the provider may take to print its ready line.
const READY_WITHIN: Duration = Duration::from_secs(20);

/// A running OpenID provider.
pub struct IdP {
    child: Option<Child>,
    /// The port it listens on (127.0.0.1).
    pub port: u16,
    keys_path: PathBuf,
    dir: tempfile::TempDir,
    audience: String,
    clients: Vec<(String, String, Value)>,
    /// The private JWKs, the signing key first.
    keys: Vec<Value>,
    login: Option<LoginSetup>,
}

/// The authorization-code client the hub signs people in with, and the people who can sign in.
#[derive(Debug, Clone)]
pub struct LoginSetup {
    /// The client id.
    pub client_id: String,
    /// The client secret; `None` makes a public client (PKCE only).
    pub client_secret: Option<String>,
    /// The hub's callback URL, the client's only redirect URI.
    pub redirect_uri: String,
    /// `(login, password, claims)` of each test user; the claims (a JSON object) hold e.g. `roles`.
    pub users: Vec<(String, String, Value)>,
    /// Whether the users' claims go into the ID token (else only into the userinfo answer).
    pub claims_in_id_token: bool,
}

/// Gives `hub` Santander's air and care data, and a policy that opens the air data (and only it) to Fujisawa's
/// officers: `p, officer@fujisawa, santander-air-*, read` beside the default policy.
pub async fn open_air_to_fujisawa_officers(hub: &HubProcess) -> Result<()> {
    let updates = json!({"updates": [
        {"provider": "santander-air-1", "service": "air", "resource": "no2", "value": 41},
        {"provider": "santander-care-7", "service": "health", "resource": "pulse", "value": 70},
    ]});
    let (status, body) = hub.post("/api/v1/ingest", &updates).await?;
    if status >= 300 {
        bail!("ingest answered {status}: {body}");
    }
    let policy = format!("{}p, officer@fujisawa, santander-air-*, read\n", hub_policy::DEFAULT_POLICY);
    let status = hub.put_policy(&policy).await?;
    if status != 204 {
        bail!("PUT /policy answered {status}");
    }
    Ok(())
}

/// The directory of the provider script and its `node_modules`.
fn script_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("oidc")
}

/// `node`, with a check that the script's packages are installed.
fn node() -> Result<PathBuf> {
    let node = require_program("node", "apt-get install -y nodejs npm, then run `npm ci --prefix tests/oidc`");
    if !script_dir().join("node_modules/oidc-provider/package.json").is_file() {
        bail!(
            "the OpenID provider needs the npm package oidc-provider, which is not installed; \
             run `npm ci --prefix tests/oidc`"
        );
    }
    Ok(node)
}

/// A key id nobody else uses: hex of a hash over the process, the time and a counter.
fn fresh_kid() -> String {
    use sha2::Digest;
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let seed = format!("{}:{nanos}:{}", std::process::id(), N.fetch_add(1, Ordering::Relaxed));
    hex::encode(&sha2::Sha256::digest(seed.as_bytes())[..8])
}

/// A fresh private RSA JWK (2048 bits, RS256) from `provider.mjs --make-key`.
fn make_key() -> Result<Value> {
    let kid = fresh_kid();
    let output = Command::new(node()?)
        .arg(script_dir().join("provider.mjs"))
        .args(["--make-key", &kid])
        .output()
        .context("running provider.mjs --make-key")?;
    if !output.status.success() {
        bail!("provider.mjs --make-key failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let key: Value = serde_json::from_slice(&output.stdout).context("provider.mjs --make-key printed no JSON")?;
    if key["kid"] != kid.as_str() || key["d"].as_str().is_none() {
        bail!("provider.mjs --make-key printed no private key with kid {kid}");
    }
    Ok(key)
}

/// Runs `curl` with `args`; returns the HTTP status and the body.
fn curl(args: &[&str]) -> Result<(u16, String)> {
    let curl = require_program("curl", "apt-get install curl");
    let output = Command::new(curl)
        .args(["-sS", "--max-time", "30", "-w", "\n%{http_code}"])
        .args(args)
        .output()
        .context("running curl")?;
    if !output.status.success() {
        bail!("curl {args:?} failed: {}", String::from_utf8_lossy(&output.stderr));
    }
    let text = String::from_utf8(output.stdout).context("curl printed no UTF-8")?;
    let (body, status) = text.rsplit_once('\n').context("curl printed no status")?;
    Ok((status.trim().parse().context("curl printed no status")?, body.to_string()))
}

/// GETs a JSON document.
fn get_json(url: &str) -> Result<Value> {
    let (status, body) = curl(&[url])?;
    if status != 200 {
        bail!("GET {url} answered {status}: {body}");
    }
    serde_json::from_str(&body).with_context(|| format!("GET {url} answered no JSON: {body}"))
}

impl IdP {
    /// Starts a provider whose access tokens are for `audience` (an absolute URI, e.g. `https://hub.test/api`),
    /// with the confidential clients `(id, secret, extra claims)` (the claims a JSON object, maybe `{}`), and one
    /// fresh signing key. Waits until it is ready.
    pub fn start(audience: &str, clients: &[(&str, &str, Value)]) -> Result<IdP> {
        IdP::start_with_login(audience, clients, None)
    }

    /// Like [`IdP::start`], with a sign-in client and its users.
    pub fn start_with_login(audience: &str, clients: &[(&str, &str, Value)], login: Option<LoginSetup>) -> Result<IdP> {
        node()?;
        let dir = tempfile::Builder::new().prefix("hub-oidc-").tempdir()?;
        let mut idp = IdP {
            child: None,
            port: free_port(),
            keys_path: dir.path().join("jwks.json"),
            dir,
            audience: audience.to_string(),
            clients: clients
                .iter()
                .map(|(id, secret, claims)| (id.to_string(), secret.to_string(), claims.clone()))
                .collect(),
            keys: vec![make_key()?],
            login,
        };
        idp.launch()?;
        Ok(idp)
    }

    /// Writes the key set and starts the provider on `self.port`; waits for its ready line.
    fn launch(&mut self) -> Result<()> {
        fs::write(&self.keys_path, json!({ "keys": self.keys }).to_string()).context("writing the key set")?;
        let stderr_path = self.dir.path().join("provider.stderr");
        let stderr = fs::File::create(&stderr_path)?;
        let mut command = Command::new(node()?);
        command
            .arg(script_dir().join("provider.mjs"))
            .arg("--port")
            .arg(self.port.to_string())
            .arg("--keys")
            .arg(&self.keys_path)
            .arg("--audience")
            .arg(&self.audience);
        for (id, secret, claims) in &self.clients {
            command.arg("--client").arg(format!("{id}:{secret}:{claims}"));
        }
        if let Some(login) = &self.login {
            let secret = login.client_secret.as_deref().unwrap_or("");
            command.arg("--login-client").arg(format!("{}:{secret}:{}", login.client_id, login.redirect_uri));
            for (user, password, claims) in &login.users {
                command.arg("--user").arg(format!("{user}:{password}:{claims}"));
            }
            if login.claims_in_id_token {
                command.arg("--user-claims-in").arg("id_token");
            }
        }
        let mut child = command
            .current_dir(script_dir())
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .spawn()
            .context("starting node tests/oidc/provider.mjs")?;
        let stdout = child.stdout.take().context("the provider's stdout")?;
        self.child = Some(child);
        // The first line is the ready line; later lines (none are expected) are read and dropped so the
        // provider never blocks on a full pipe.
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut lines = BufReader::new(stdout).lines();
            let _ = tx.send(lines.next());
            for _ in lines {}
        });
        let log = || fs::read_to_string(&stderr_path).unwrap_or_default();
        let line = match rx.recv_timeout(READY_WITHIN) {
            Ok(Some(Ok(line))) => line,
            Ok(_) => bail!("the OpenID provider exited before it was ready:\n{}", log()),
            Err(_) => bail!("the OpenID provider was not ready within {READY_WITHIN:?}:\n{}", log()),
        };
        let ready: Value = serde_json::from_str(&line)
            .with_context(|| format!("the OpenID provider printed {line:?}, not its ready line:\n{}", log()))?;
        if ready["ready"] != true || ready["issuer"] != self.issuer().as_str() {
            bail!("unexpected ready line from the OpenID provider: {line}\n{}", log());
        }
        Ok(())
    }

    /// The issuer identifier, `http://127.0.0.1:PORT` (no trailing slash).
    pub fn issuer(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// The audience of the access tokens.
    pub fn audience(&self) -> &str {
        &self.audience
    }

    /// The discovery document (`/.well-known/openid-configuration`).
    pub fn discovery(&self) -> Result<Value> {
        get_json(&format!("{}/.well-known/openid-configuration", self.issuer()))
    }

    /// The public key set served at the discovery document's `jwks_uri`.
    pub fn jwks(&self) -> Result<Value> {
        let discovery = self.discovery()?;
        let uri = discovery["jwks_uri"].as_str().context("the discovery document has no jwks_uri")?;
        get_json(uri)
    }

    /// An access token (a JWT) for `client_id`, from the client credentials grant at the token endpoint with
    /// `resource` set to the audience and scope `read write`; the client authenticates with HTTP Basic.
    pub fn token(&self, client_id: &str) -> Result<String> {
        let (_, secret, _) = self
            .clients
            .iter()
            .find(|(id, _, _)| id == client_id)
            .with_context(|| format!("no client {client_id} is registered with the OpenID provider"))?;
        let discovery = self.discovery()?;
        let endpoint = discovery["token_endpoint"].as_str().context("the discovery document has no token_endpoint")?;
        let user = format!("{client_id}:{secret}");
        let resource = format!("resource={}", self.audience);
        let (status, body) = curl(&[
            "-u",
            &user,
            "--data-urlencode",
            "grant_type=client_credentials",
            "--data-urlencode",
            &resource,
            "--data-urlencode",
            "scope=read write",
            endpoint,
        ])?;
        if status != 200 {
            bail!("the token endpoint answered {status}: {body}");
        }
        let answer: Value = serde_json::from_str(&body).with_context(|| format!("the token endpoint said {body}"))?;
        let token = answer["access_token"].as_str().with_context(|| format!("no access_token in {answer}"))?;
        if token.split('.').count() != 3 {
            bail!("the access token is not a JWT: {token}");
        }
        Ok(token.to_string())
    }

    /// Walks `browser` through a sign-in that begins at `start` (the hub's `/api/v1/auth/login?...`): the hub's
    /// redirect to the provider, the provider's login form filled in with `user` and `password`, and the
    /// provider's redirects up to the hub's callback. Returns the callback URL (with `code` and `state`) without
    /// visiting it, so that a test can visit it, change it or replay it.
    pub async fn sign_in(&self, browser: &mut Browser, start: &str, user: &str, password: &str) -> Result<String> {
        let callback = &self.login.as_ref().context("the provider was started without a LoginSetup")?.redirect_uri;
        let page = browser.get(start).await?;
        if page.status != 302 {
            bail!("GET {start} answered {} instead of a redirect to the provider: {}", page.status, page.body);
        }
        let mut next = page.location.context("the hub's redirect has no Location")?;
        if !next.starts_with(&format!("{}/auth?", self.issuer())) {
            bail!("the hub sent the browser to {next}, not to the provider's authorization endpoint");
        }
        // The provider's redirects, its login form, and its redirects back to the hub.
        for _ in 0..10 {
            if next.starts_with(callback.as_str()) {
                return Ok(next);
            }
            let page = browser.get(&next).await?;
            let page = if page.status == 200 && page.body.contains("name=\"password\"") {
                let form = format!("{}/login", next.split('?').next().unwrap_or(&next));
                browser.post_form(&form, &[("login", user), ("password", password)]).await?
            } else {
                page
            };
            if !(300..400).contains(&page.status) {
                bail!("the sign-in stopped at {next} with {}: {}", page.status, page.body);
            }
            next = page.location.context("a redirect without Location")?;
        }
        bail!("the sign-in did not come back to {callback}")
    }

    /// Rotates the signing key: a new key (new kid) signs from now on, the old one stays published. The
    /// provider restarts on the same port (its in-memory state, e.g. issued token records, is lost).
    pub fn rotate(&mut self) -> Result<()> {
        let key = make_key()?;
        self.keys.insert(0, key);
        self.stop();
        self.launch()
    }

    /// The current signing key, private parts included (for crafting tokens the provider did not issue).
    pub fn private_jwk(&self) -> Value {
        self.keys[0].clone()
    }

    /// Stops the provider (SIGTERM, then a kill).
    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            for _ in 0..100 {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for IdP {
    fn drop(&mut self) {
        self.stop();
    }
}
