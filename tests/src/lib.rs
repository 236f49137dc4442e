//! Test support for end-to-end tests: builds the `hub` binary once, runs it as a child process on a free
//! loopback port with its own data directory, and offers a small HTTP client for it.

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::OnceLock,
    time::{Duration, Instant},
};

pub mod browser;
pub mod oidc;
pub mod prosody;
pub mod stream;

use anyhow::{Context, Result, bail};
use serde_json::Value;

/// The path of the `hub` binary, built with the same cargo as the tests (once per process): a debug build for
/// tests, a release build for benchmarks.
pub fn hub_binary() -> &'static Path {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut args = vec!["build", "-p", "hub-cli", "--bin", "hub", "--message-format", "json"];
        if !cfg!(debug_assertions) {
            args.push("--release");
        }
        let out = Command::new(cargo)
            .args(&args)
            .stderr(Stdio::inherit())
            .output()
            .expect("running cargo build for the hub binary");
        assert!(out.status.success(), "building the hub binary failed");
        let stdout = String::from_utf8_lossy(&out.stdout);
        stdout
            .lines()
            .filter_map(|l| serde_json::from_str::<Value>(l).ok())
            .filter_map(|v| v["executable"].as_str().map(PathBuf::from))
            .find(|p| p.file_name().is_some_and(|n| n == "hub"))
            .expect("cargo reported no hub executable")
    })
}

/// A free TCP port on 127.0.0.1 (bound and released; good enough for tests that start at once).
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port")
}

/// A free UDP port on 127.0.0.1 (bound and released).
pub fn free_udp_port() -> u16 {
    std::net::UdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("no free UDP port")
}

/// A running hub process.
pub struct HubProcess {
    /// The child.
    pub child: Child,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The admin token.
    pub admin: String,
    /// The data directory.
    pub data_dir: PathBuf,
    /// The listen port.
    pub port: u16,
    /// The embedded MQTT broker's port.
    pub mqtt_port: u16,
    /// The CoAP endpoint's UDP port.
    pub coap_port: u16,
    /// The UDP port LoRa gateways send to (GWMP).
    pub gwmp_port: u16,
}

/// How to start a hub.
pub struct Launch<'a> {
    /// Data directory.
    pub data_dir: &'a Path,
    /// Port to listen on.
    pub port: u16,
    /// Extra arguments to `hub serve`.
    pub args: Vec<String>,
    /// Admin token to set through `HUB_ADMIN_TOKEN`.
    pub admin: Option<&'a str>,
    /// Extra environment variables (`RUST_LOG` among them replaces the tests' log filter).
    pub env: Vec<(String, String)>,
    /// Where the hub's log (stderr) goes; `None`: the test's own stderr.
    pub log_file: Option<PathBuf>,
}

impl<'a> Launch<'a> {
    /// Defaults: no extra arguments, the test admin token.
    pub fn new(data_dir: &'a Path) -> Self {
        Launch { data_dir, port: free_port(), args: Vec::new(), admin: None, env: Vec::new(), log_file: None }
    }
}

/// The PostgreSQL URL tests use (`HUB_TEST_POSTGRES_URL` overrides it).
pub fn postgres_url() -> String {
    std::env::var("HUB_TEST_POSTGRES_URL").unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/test".into())
}

/// A schema name unique to this process and call.
pub fn unique_schema(prefix: &str) -> String {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos =
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    format!("{prefix}_{}_{}_{}", std::process::id(), nanos, N.fetch_add(1, Ordering::Relaxed))
}

/// Writes a config file that selects PostgreSQL in a fresh schema; returns its path and the schema.
pub fn postgres_config(dir: &Path) -> (PathBuf, String) {
    let schema = unique_schema("hube2e");
    let path = dir.join("pg.toml");
    let text = format!("[storage]\nurl = \"{}\"\nschema = \"{schema}\"\n", postgres_url());
    std::fs::write(&path, text).expect("writing the PostgreSQL config");
    (path, schema)
}

impl HubProcess {
    /// Starts `hub serve` and waits until it answers `/healthz`.
    pub async fn start(launch: Launch<'_>) -> Result<HubProcess> {
        let admin = launch.admin.unwrap_or("hub_e2e-admin-token-0123456789abcdefghijklmnop").to_string();
        // Port 1883 usually belongs to a system broker on development machines, and tests run in parallel:
        // every test hub gets its own ports.
        let (mqtt_port, coap_port, gwmp_port) = (free_port(), free_udp_port(), free_udp_port());
        let mut cmd = Command::new(hub_binary());
        cmd.arg("serve")
            .arg("--mqtt-listen")
            .arg(format!("127.0.0.1:{mqtt_port}"))
            .arg("--coap-listen")
            .arg(format!("127.0.0.1:{coap_port}"))
            .arg("--gwmp-listen")
            .arg(format!("127.0.0.1:{gwmp_port}"))
            .arg("--listen")
            .arg(format!("127.0.0.1:{}", launch.port))
            .arg("--data-dir")
            .arg(launch.data_dir)
            .args(&launch.args)
            .env("HUB_ADMIN_TOKEN", &admin)
            // `HUB_TEST_LOG` overrides the hubs' log filter when a test needs diagnosing.
            .env("RUST_LOG", std::env::var("HUB_TEST_LOG").unwrap_or_else(|_| "warn,rumqttd=off".into()))
            .envs(launch.env.iter().map(|(k, v)| (k, v)))
            .stdout(Stdio::null())
            .stderr(match &launch.log_file {
                Some(path) => Stdio::from(std::fs::File::create(path).context("creating the hub's log file")?),
                None => Stdio::inherit(),
            });
        let child = cmd.spawn().context("spawning hub")?;
        let mut hub = HubProcess {
            child,
            base: format!("http://127.0.0.1:{}", launch.port),
            admin,
            data_dir: launch.data_dir.to_path_buf(),
            port: launch.port,
            mqtt_port,
            coap_port,
            gwmp_port,
        };
        hub.wait_ready(Duration::from_secs(60)).await?;
        Ok(hub)
    }

    async fn wait_ready(&mut self, within: Duration) -> Result<()> {
        let deadline = Instant::now() + within;
        let client = client();
        loop {
            if let Some(status) = self.child.try_wait()? {
                bail!("the hub exited during start-up with {status}");
            }
            let ok = client
                .get(format!("{}/api/v1/healthz", self.base))
                .bearer_auth(&self.admin)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            if ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("the hub did not become healthy within {within:?}");
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// GET a path under the base URL as admin; returns status and JSON.
    pub async fn get(&self, path: &str) -> Result<(u16, Value)> {
        let res = client().get(format!("{}{path}", self.base)).bearer_auth(&self.admin).send().await?;
        let status = res.status().as_u16();
        Ok((status, res.json().await.unwrap_or(Value::Null)))
    }

    /// POST JSON to a path under the base URL as admin; returns status and JSON.
    pub async fn post(&self, path: &str, body: &Value) -> Result<(u16, Value)> {
        let res = client().post(format!("{}{path}", self.base)).bearer_auth(&self.admin).json(body).send().await?;
        let status = res.status().as_u16();
        Ok((status, res.json().await.unwrap_or(Value::Null)))
    }

    /// Polls `GET /api/v1/providers/{path}` (a resource path) until the resource exists with `value`; returns
    /// the resource. Panics after 15 s.
    pub async fn wait_for_value(&self, path: &str, value: &Value) -> Value {
        let mut last = Value::Null;
        for _ in 0..150 {
            let (status, body) = self.get(&format!("/api/v1/providers/{path}")).await.unwrap_or((0, Value::Null));
            if status == 200 && body["value"] == *value {
                return body;
            }
            last = body;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("{path} never became {value}; last seen: {last}");
    }

    /// Every point of a resource's history (`provider/service/resource`), oldest first, following the pages;
    /// empty when the resource does not exist (yet).
    pub async fn history(&self, path: &str) -> Vec<Value> {
        let mut points = Vec::new();
        let mut cursor: Option<String> = None;
        let (provider, rest) = path.split_once('/').expect("provider/service/resource");
        let (service, resource) = rest.split_once('/').expect("provider/service/resource");
        loop {
            let mut uri =
                format!("/api/v1/providers/{provider}/services/{service}/resources/{resource}/history?limit=10000");
            if let Some(c) = &cursor {
                uri.push_str(&format!("&cursor={c}"));
            }
            let (status, page) = self.get(&uri).await.expect("GET history");
            if status == 404 {
                return points;
            }
            assert_eq!(status, 200, "{page}");
            points.extend(page["points"].as_array().expect("points").iter().cloned());
            match page["next"].as_str() {
                Some(next) => cursor = Some(next.to_owned()),
                None => return points,
            }
        }
    }

    /// A plugin's counter from `GET /api/v1/plugins/{id}` (`updates`, `calls`, ...).
    pub async fn plugin_stat(&self, id: &str, stat: &str) -> Result<u64> {
        let (status, info) = self.get(&format!("/api/v1/plugins/{id}")).await?;
        if status != 200 {
            bail!("GET /plugins/{id} answered {status}: {info}");
        }
        info["stats"][stat].as_u64().with_context(|| format!("no {stat} counter: {info}"))
    }

    /// Waits until plugin `id` applied `want` more updates than `before`, or nothing moved for `idle` (what was
    /// lost is lost); returns how many it applied and when the last one came.
    pub async fn wait_applied(&self, id: &str, before: u64, want: u64, idle: Duration) -> Result<(u64, Instant)> {
        let (mut applied, mut last_change) = (before, Instant::now());
        while applied - before < want && last_change.elapsed() < idle {
            tokio::time::sleep(Duration::from_millis(20)).await;
            let now = self.plugin_stat(id, "updates").await?;
            if now != applied {
                applied = now;
                last_change = Instant::now();
            }
        }
        Ok((applied - before, last_change))
    }

    /// Prints a plugin's counters and call latency on one line.
    pub async fn print_plugin(&self, id: &str) -> Result<()> {
        let (_, info) = self.get(&format!("/api/v1/plugins/{id}")).await?;
        let s = &info["stats"];
        println!(
            "{id}: adapter calls {}, updates {}, errors {}, dropped {}, rejects {}, call p50 {} µs, p99 {} µs",
            s["calls"], s["updates"], s["errors"], s["dropped"], s["rejects"], s["latency_p50_us"], s["latency_p99_us"]
        );
        Ok(())
    }

    /// `GET /api/v1/metrics` as admin: the OpenMetrics text.
    pub async fn metrics(&self) -> String {
        let res = client().get(format!("{}/api/v1/metrics", self.base)).bearer_auth(&self.admin).send().await;
        res.expect("GET /metrics").text().await.expect("the metrics text")
    }

    /// Opens `GET /api/v1/events` with `query` (e.g. `provider=noise-1`) as admin.
    pub async fn events(&self, query: &str) -> reqwest::Response {
        let res = reqwest::Client::new()
            .get(format!("{}/api/v1/events?{query}", self.base))
            .bearer_auth(&self.admin)
            .send()
            .await
            .expect("opening the event stream");
        assert_eq!(res.status(), 200, "opening the event stream");
        res
    }

    /// Replaces the policy (CSV text) as admin; returns the status.
    pub async fn put_policy(&self, text: &str) -> Result<u16> {
        let res = client()
            .put(format!("{}/api/v1/policy", self.base))
            .bearer_auth(&self.admin)
            .header("content-type", "text/csv")
            .body(text.to_string())
            .send()
            .await?;
        Ok(res.status().as_u16())
    }

    /// SIGTERM, then wait for a clean exit.
    pub fn stop(mut self) -> Result<std::process::ExitStatus> {
        let pid = self.child.id().to_string();
        Command::new("kill").args(["-TERM", &pid]).status()?;
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(status) = self.child.try_wait()? {
                return Ok(status);
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                bail!("the hub did not exit within 20 s of SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGKILL: no chance to flush anything.
    pub fn kill9(mut self) -> Result<()> {
        self.child.kill()?;
        self.child.wait()?;
        Ok(())
    }
}

impl Drop for HubProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The full path of the program `name`, or a panic that says how to install it (a missing peer fails the test,
/// it never skips it).
pub fn require_program(name: &str, install: &str) -> PathBuf {
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&dirs)
        .chain([PathBuf::from("/usr/bin"), PathBuf::from("/usr/local/bin")])
        .map(|d| d.join(name))
        .find(|p| p.is_file())
        .unwrap_or_else(|| panic!("this test needs `{name}`, which is not installed; install it with `{install}`"))
}

/// Reads a Server-Sent Events response until `needle` appears, or 15 s pass (then panics).
pub async fn sse_until(response: reqwest::Response, needle: &str) -> String {
    use futures::StreamExt;
    let mut body = response.bytes_stream();
    tokio::time::timeout(Duration::from_secs(15), async {
        let mut text = String::new();
        while let Some(Ok(chunk)) = body.next().await {
            text.push_str(&String::from_utf8_lossy(&chunk));
            if text.contains(needle) {
                break;
            }
        }
        text
    })
    .await
    .unwrap_or_else(|_| panic!("no SSE event with {needle} in time"))
}

/// Runs lora-packet (npm; an independent LoRaWAN implementation, through the GWMP tests' `lora.js`) on a batch
/// of requests (see that script for the operations); one answer per request. Panics with the install command
/// when it is missing.
pub fn lora_packet(requests: &Value) -> Vec<Value> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../hub/transport-gwmp/tests/lora-packet");
    assert!(
        dir.join("node_modules/lora-packet/package.json").is_file(),
        "this needs the npm package lora-packet; run `npm ci --prefix hub/transport-gwmp/tests/lora-packet` \
         (with Node.js: `apt-get install -y nodejs npm`)"
    );
    let mut child = Command::new("node")
        .arg("lora.js")
        .current_dir(&dir)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting node (apt-get install -y nodejs)");
    {
        use std::io::Write as _;
        let mut stdin = child.stdin.take().expect("node's stdin");
        stdin.write_all(requests.to_string().as_bytes()).expect("writing to lora.js");
    }
    let out = child.wait_with_output().expect("lora.js output");
    assert!(out.status.success(), "lora.js failed");
    serde_json::from_slice(&out.stdout).expect("lora.js answers JSON")
}

/// An HTTP client with a timeout on every request.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder().timeout(Duration::from_secs(30)).build().expect("building an HTTP client")
}

/// Builds the plugin in `plugins/<dir>` (cargo package `package`) for `wasm32-unknown-unknown` (release) and returns its manifest,
/// with the module's real SHA-256 filled in, and the module's bytes (read once, so the checksum always
/// describes the bytes returned).
pub fn build_plugin(dir: &str, package: &str) -> Result<(String, Vec<u8>)> {
    use sha2::Digest;
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let target_dir =
        std::env::var("CARGO_TARGET_DIR").map(PathBuf::from).unwrap_or_else(|_| repo.join("target")).join("wasm");
    let status = Command::new(cargo)
        .args(["build", "--release", "--target", "wasm32-unknown-unknown", "-p", package, "--manifest-path"])
        .arg(repo.join("plugins/Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target_dir)
        .status()
        .context("running cargo build for a plugin")?;
    if !status.success() {
        bail!("building plugin {package} failed; is the target installed? `rustup target add wasm32-unknown-unknown`");
    }
    let wasm = target_dir.join("wasm32-unknown-unknown/release").join(format!("{}.wasm", package.replace('-', "_")));
    let bytes = std::fs::read(&wasm).with_context(|| format!("reading {}", wasm.display()))?;
    let sha = hex::encode(sha2::Sha256::digest(&bytes));
    let dir = repo.join("plugins").join(dir);
    let manifest = std::fs::read_to_string(dir.join("plugin.toml")).context("reading the plugin manifest")?;
    let manifest = manifest
        .lines()
        .map(|l| if l.starts_with("sha256") { format!("sha256 = \"{sha}\"") } else { l.to_string() })
        .collect::<Vec<_>>()
        .join("\n");
    Ok((manifest, bytes))
}
