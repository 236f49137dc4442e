//! The `hub` binary: parses the command line and the configuration, sets up logging, wires the crates together,
//! serves until SIGINT/SIGTERM, then shuts down within a deadline and flushes storage. No logic of its own.

use std::{
    fs,
    io::Write,
    net::SocketAddr,
    path::{Path, PathBuf},
    sync::Arc,
    time::Duration,
};

use anyhow::{Context, Result, bail};
use clap::{Parser, Subcommand};
use hub_api::{ApiLimits, AppState, Metrics};
use hub_bus::Bus;
use hub_config::{Config, LogFormat, RetentionAction, SqliteSynchronous};
use hub_model::Timestamp;
use hub_policy::{DEFAULT_POLICY, PolicyEngine, TokenInfo, TokenRegistry};
use hub_store::{Aggregate, Rollup, SqliteOptions, SqliteStore, Store, Synchronous};
use hub_twin::{RetentionPolicy, Twin};
use tokio_util::sync::CancellationToken;
use transports::{HostSide, TransportConfigs};

mod transports;

/// How long shutdown may take before the hub exits anyway.
const SHUTDOWN_DEADLINE: Duration = Duration::from_secs(10);

#[derive(Parser)]
#[command(name = "hub", version, about = "IoT interoperability hub: digital twins of a city's devices")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the hub. Without a config file it runs on embedded defaults (HTTP 127.0.0.1:8080, SQLite in ./data).
    Serve(ServeArgs),
    /// Manage API tokens of a running hub.
    Token {
        #[command(subcommand)]
        command: TokenCommand,
    },
    /// Manage the WASM plugins of a running hub.
    Plugin {
        #[command(subcommand)]
        command: PluginCommand,
    },
    /// Check a hub's audit log offline, or print the key its checkpoints verify with.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Validate a configuration file and exit.
    CheckConfig {
        /// The TOML file.
        config: PathBuf,
    },
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML configuration file.
    #[arg(long, env = "HUB_CONFIG")]
    config: Option<PathBuf>,
    /// HTTP listen address (overrides http.listen).
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Data directory (overrides storage.data_dir).
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Listen address of the embedded MQTT broker (overrides mqtt.broker.listen).
    #[arg(long)]
    mqtt_listen: Option<SocketAddr>,
    /// UDP listen address of the CoAP endpoint (overrides coap.listen).
    #[arg(long)]
    coap_listen: Option<SocketAddr>,
    /// UDP listen address for LoRa gateways speaking GWMP (overrides gwmp.listen).
    #[arg(long)]
    gwmp_listen: Option<SocketAddr>,
}

#[derive(Subcommand)]
enum TokenCommand {
    /// Create a token and print it once.
    Create {
        /// Who the token authenticates.
        #[arg(long)]
        subject: String,
        /// A role the token carries (repeatable).
        #[arg(long = "role")]
        roles: Vec<String>,
        /// A note.
        #[arg(long)]
        description: Option<String>,
        /// Lifetime, e.g. 30d.
        #[arg(long)]
        expires_in: Option<String>,
        #[command(flatten)]
        target: HubTarget,
    },
    /// List tokens (never their secrets).
    List {
        #[command(flatten)]
        target: HubTarget,
    },
    /// Revoke a token by id.
    Revoke {
        /// The token id (as listed).
        id: String,
        #[command(flatten)]
        target: HubTarget,
    },
}

#[derive(Subcommand)]
enum PluginCommand {
    /// Install a plugin: its manifest, its module, and the capabilities you grant it.
    Install {
        /// The plugin.toml.
        #[arg(long)]
        manifest: PathBuf,
        /// The .wasm module.
        #[arg(long)]
        wasm: PathBuf,
        /// Grant every capability the manifest requests (review them first: `[capabilities]` in the manifest).
        #[arg(long, conflicts_with = "grant")]
        grant_requested: bool,
        /// The capabilities to grant, as JSON (same shape as the manifest's [capabilities]).
        #[arg(long)]
        grant: Option<String>,
        #[command(flatten)]
        target: HubTarget,
    },
    /// List installed plugins with their state and counters.
    List {
        #[command(flatten)]
        target: HubTarget,
    },
    /// Remove a plugin.
    Remove {
        /// The plugin id.
        id: String,
        #[command(flatten)]
        target: HubTarget,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Verify the chain and the signed checkpoints; exits with status 1 naming the first altered, missing,
    /// reordered or removed entry. Works on a running hub's store too; it opens the store as the hub does (its
    /// schema is created if missing), so give it a copy when the original must stay untouched.
    Verify {
        /// The hub's data directory (its SQLite store, `hub.db`).
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// The store instead, when it is not SQLite in the data directory (`postgres://...`, `sqlite://PATH`).
        #[arg(long)]
        store_url: Option<String>,
        /// The PostgreSQL schema the hub uses (storage.schema).
        #[arg(long, requires = "store_url")]
        schema: Option<String>,
        /// The public key you trust (64 hex digits, from `hub audit public-key` or `GET /api/v1/audit/key`,
        /// taken when the log was known to be sound).
        #[arg(long)]
        public_key: String,
        /// A checkpoint document kept outside the hub (repeatable).
        #[arg(long = "checkpoint")]
        checkpoints: Vec<PathBuf>,
    },
    /// Print the public key of the hub's audit signing key.
    PublicKey {
        /// The hub's data directory.
        #[arg(long, default_value = "./data")]
        data_dir: PathBuf,
        /// The key file, when not `<data-dir>/audit-signing.key`.
        #[arg(long)]
        signing_key_file: Option<PathBuf>,
    },
}

#[derive(clap::Args)]
struct HubTarget {
    /// Base URL of the running hub.
    #[arg(long, env = "HUB_URL", default_value = "http://127.0.0.1:8080")]
    hub: String,
    /// An admin token; defaults to HUB_ADMIN_TOKEN, then <data-dir>/admin.token.
    #[arg(long, env = "HUB_TOKEN")]
    token: Option<String>,
    /// Where to find admin.token when no token is given.
    #[arg(long, default_value = "./data")]
    data_dir: PathBuf,
}

fn main() -> std::process::ExitCode {
    match run(Cli::parse()) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            // The whole chain of causes, on one line each; no backtrace for operators.
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Serve(args) => {
            let config = load_config(&args)?;
            init_tracing(&config);
            let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
            runtime.block_on(serve(config))
        }
        Command::Token { command } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(token_command(command))
        }
        Command::Plugin { command } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(plugin_command(command))
        }
        Command::Audit { command } => {
            let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
            runtime.block_on(audit_command(command))
        }
        Command::CheckConfig { config } => {
            let text = fs::read_to_string(&config).with_context(|| format!("reading {}", config.display()))?;
            let parsed = Config::from_toml(&text)?;
            TransportConfigs::of(&parsed)?;
            oidc_config(&parsed)?;
            federation_config(&parsed)?;
            official_adapters(&parsed)?;
            println!("{}: valid", config.display());
            Ok(())
        }
    }
}

fn load_config(args: &ServeArgs) -> Result<Config> {
    let mut config = match &args.config {
        Some(path) => {
            let text = fs::read_to_string(path).with_context(|| format!("reading config {}", path.display()))?;
            Config::from_toml(&text).with_context(|| format!("in {}", path.display()))?
        }
        None => Config::default(),
    };
    if let Some(listen) = args.listen {
        config.http.listen = listen;
    }
    if let Some(dir) = &args.data_dir {
        config.storage.data_dir = dir.clone();
    }
    config.validate()?;
    oidc_config(&config)?;
    federation_config(&config)?;
    let mut transports = TransportConfigs::of(&config)?;
    if let Some(listen) = args.mqtt_listen {
        transports.mqtt.broker.listen = listen;
    }
    if let Some(listen) = args.coap_listen {
        transports.coap.listen = listen;
    }
    if let Some(listen) = args.gwmp_listen {
        transports.gwmp.listen = listen;
    }
    transports.validate()?;
    // Keep the effective settings (with the flags applied) in the config the hub runs with.
    transports.store_into(&mut config)?;
    Ok(config)
}

/// `[oidc]`, parsed and checked (errors name the `oidc.` key).
fn oidc_config(config: &Config) -> Result<hub_identity::OidcConfig> {
    hub_identity::OidcConfig::from_table(&config.oidc).map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
}

/// `[federation]`, parsed and checked (errors name the `federation.` key).
fn federation_config(config: &Config) -> Result<hub_federation::FederationConfig> {
    hub_federation::FederationConfig::from_table(&config.federation)
        .map_err(|e| anyhow::anyhow!("invalid configuration: {e}"))
}

fn init_tracing(config: &Config) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(&config.log.filter));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match config.log.format {
        LogFormat::Json => builder.json().init(),
        LogFormat::Text => builder.init(),
    }
}

async fn open_store(config: &Config) -> Result<Arc<dyn Store>> {
    match config.storage.url.as_deref() {
        Some(url) if url.starts_with("postgres://") || url.starts_with("postgresql://") => {
            let store = hub_store::PostgresStore::connect(url, config.storage.schema.as_deref())
                .await
                .context("storage.url: cannot open PostgreSQL")?;
            Ok(Arc::new(store))
        }
        other => {
            let path = match other.and_then(|u| u.strip_prefix("sqlite://")) {
                Some(p) => PathBuf::from(p),
                None => config.storage.data_dir.join("hub.db"),
            };
            let options = SqliteOptions {
                synchronous: match config.storage.sqlite_synchronous {
                    SqliteSynchronous::Full => Synchronous::Full,
                    SqliteSynchronous::Normal => Synchronous::Normal,
                },
                ..SqliteOptions::default()
            };
            let store = SqliteStore::open_with(&path, options)
                .with_context(|| format!("storage: cannot open SQLite at {}", path.display()))?;
            Ok(Arc::new(store))
        }
    }
}

async fn audit_command(command: AuditCommand) -> Result<()> {
    match command {
        AuditCommand::PublicKey { data_dir, signing_key_file } => {
            let path = signing_key_file.unwrap_or_else(|| data_dir.join("audit-signing.key"));
            if !path.exists() {
                bail!("{} does not exist: the hub creates it on its first start", path.display());
            }
            let key = hub_audit::load_or_create_key(&path)?;
            println!("{}", hub_audit::public_key_hex(&key.verifying_key()));
            Ok(())
        }
        AuditCommand::Verify { data_dir, store_url, schema, public_key, checkpoints } => {
            let key = hub_audit::parse_public_key(&public_key).context("--public-key")?;
            let published = checkpoints
                .iter()
                .map(|path| {
                    let text = fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
                    hub_audit::Checkpoint::from_json(&text).with_context(|| format!("in {}", path.display()))
                })
                .collect::<Result<Vec<_>>>()?;
            let store: Arc<dyn Store> = match (&store_url, &schema) {
                (Some(url), Some(schema)) => Arc::new(
                    hub_store::PostgresStore::connect(url, Some(schema)).await.context("--store-url: cannot open")?,
                ),
                (Some(url), None) => hub_store::open_url(url).await.context("--store-url: cannot open")?,
                (None, _) => {
                    let path = data_dir.join("hub.db");
                    if !path.exists() {
                        bail!("{} does not exist: is --data-dir the hub's data directory?", path.display());
                    }
                    hub_store::open_url(&path.display().to_string()).await.context("cannot open the store")?
                }
            };
            let report = hub_audit::verify(&*store, &key, &published).await;
            store.close().await?;
            let report = report?;
            println!("{}", serde_json::to_string_pretty(&report)?);
            match report.problem {
                None => Ok(()),
                Some(problem) => bail!("the audit log is not intact: {}", problem.message),
            }
        }
    }
}

/// The audit log in the store, signed with the key `[audit] signing_key_file` names (created when missing).
async fn open_audit(config: &Config, store: &Arc<dyn Store>) -> Result<hub_audit::AuditLog> {
    let key_file = audit_key_file(config);
    let key = hub_audit::load_or_create_key(&key_file).context("audit.signing_key_file")?;
    let options = hub_audit::AuditOptions {
        checkpoint_every: config.audit.checkpoint_every,
        checkpoint_interval: config.audit.checkpoint_interval,
        ..hub_audit::AuditOptions::default()
    };
    let log = hub_audit::AuditLog::open(store.clone(), key, options).await.context("opening the audit log")?;
    tracing::info!(
        entries = log.head(),
        public_key = %hub_audit::public_key_hex(&log.public_key()),
        "audit log open; checkpoints verify with this public key"
    );
    Ok(log)
}

fn audit_key_file(config: &Config) -> PathBuf {
    config.audit.signing_key_file.clone().unwrap_or_else(|| config.storage.data_dir.join("audit-signing.key"))
}

/// Replaces the pseudonym secret at every period boundary, so an ended period's secret is gone even when no
/// identifying value arrived since.
async fn rotate_pseudonyms(pseudonyms: Arc<hub_twin::Pseudonymiser>) {
    loop {
        tokio::time::sleep(pseudonyms.until_next_period(Timestamp::now())).await;
        if let Err(e) = pseudonyms.rotate(Timestamp::now()) {
            tracing::error!(
                "the pseudonym secret could not be rotated (identifying values are refused until it is): {e}"
            );
            tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        }
    }
}

async fn serve(config: Config) -> Result<()> {
    let data_dir = &config.storage.data_dir;
    fs::create_dir_all(data_dir).with_context(|| format!("storage.data_dir: cannot create {}", data_dir.display()))?;
    let listener = tokio::net::TcpListener::bind(config.http.listen)
        .await
        .with_context(|| format!("http.listen (--listen): cannot listen on {}", config.http.listen))?;
    let store = open_store(&config).await?;
    let twin = Arc::new(Twin::open(store.clone(), Bus::new(config.bus.capacity)).await?);
    if !config.privacy.identifiers.is_empty() {
        let key_file =
            config.privacy.pseudonym_key_file.clone().unwrap_or_else(|| config.storage.data_dir.join("pseudonym.key"));
        let identifiers = config.privacy.identifiers.clone();
        let pseudonyms = hub_twin::Pseudonymiser::open(identifiers, config.privacy.pseudonym_rotation, &key_file)
            .with_context(|| format!("privacy.pseudonym_key_file: {}", key_file.display()))?;
        tracing::info!(?pseudonyms, "identifying values are pseudonymised");
        let pseudonyms = Arc::new(pseudonyms);
        twin.set_pseudonymiser(pseudonyms.clone());
        tokio::spawn(rotate_pseudonyms(pseudonyms));
    }

    let policy_text = match store.policy().await? {
        Some(text) => text,
        None => {
            store.save_policy(DEFAULT_POLICY).await?;
            DEFAULT_POLICY.to_string()
        }
    };
    let policy = Arc::new(
        PolicyEngine::with_domain(&policy_text, &config.policy.domain, hub_policy::DEFAULT_CACHE_CAPACITY)
            .context("the stored policy is invalid")?,
    );
    policy.set_label_source(Arc::new(hub_api::TwinLabels(twin.clone())));
    let audit = open_audit(&config, &store).await?;
    let tokens = Arc::new(TokenRegistry::new());
    let records = store.tokens().await?;
    tokens.replace_all(records.iter().map(hub_api::token_info).collect())?;
    bootstrap_admin(&store, &tokens, data_dir).await?;
    let oidc_issuers = oidc_config(&config)?;
    let oidc = if oidc_issuers.issuers.is_empty() {
        None
    } else {
        let issuers: Vec<&str> = oidc_issuers.issuers.iter().map(|i| i.issuer.as_str()).collect();
        tracing::info!(?issuers, "accepting OpenID Connect access tokens");
        Some(Arc::new(hub_identity::OidcVerifier::new(&oidc_issuers).map_err(anyhow::Error::msg)?))
    };
    let login = hub_identity::Login::from_config(&oidc_issuers)?.map(Arc::new);
    if let Some(login) = &oidc_issuers.login {
        tracing::info!(issuer = %login.issuer, redirect_url = %login.redirect_url, "browser sign-in enabled");
    }

    let transports = Arc::new(hub_runtime::Transports::new());
    let plugins = hub_runtime::PluginHost::new(
        hub_runtime::HostConfig::new(data_dir, semver::Version::parse(env!("CARGO_PKG_VERSION"))?),
        twin.clone(),
        policy.clone(),
        transports.clone(),
    );
    let host = HostSide::start(&TransportConfigs::of(&config)?, &tokens, &policy, &transports, &plugins).await?;
    for (id, outcome) in plugins.load_installed().await {
        match outcome {
            Ok(info) => tracing::info!(plugin = %id, state = %info.state, "plugin loaded"),
            Err(e) => tracing::error!(plugin = %id, "plugin not loaded: {e}"),
        }
    }
    install_official(&plugins, official_adapters(&config)?, host.ports()).await;
    host.refresh_links(&plugins);

    let cancel = CancellationToken::new();
    let automation = hub_automation::Automation::start(twin.clone(), policy.clone(), cancel.clone()).await?;
    let federation_peers = federation_config(&config)?;
    let federation = if federation_peers.peers.is_empty() {
        None
    } else {
        let names: Vec<&str> = federation_peers.peers.iter().map(|p| p.name.as_str()).collect();
        tracing::info!(peers = ?names, "federation links starting");
        let federation = hub_federation::Federation::start(&federation_peers, twin.clone(), cancel.clone())
            .map_err(anyhow::Error::msg)?;
        Some(Arc::new(federation))
    };
    automation.set_apps(Arc::new(RuleApps(plugins.clone())));
    let consents = hub_api::ConsentBook::open(store.clone(), policy.clone(), audit.clone(), cancel.clone()).await?;
    tracing::info!(consents = policy.grant_count(), "consents loaded");
    let state = AppState {
        consents,
        automation,
        twin: twin.clone(),
        policy,
        tokens,
        oidc,
        federation,
        login,
        audit: audit.clone(),
        metrics: Arc::new(Metrics::new()),
        limits: ApiLimits {
            max_body_bytes: config.http.max_body_bytes,
            max_batch: config.http.max_batch,
            request_timeout: config.http.request_timeout,
        },
        plugins: plugins.clone(),
        transports: host.status(),
        shutdown: cancel.clone(),
    };
    let retention = tokio::spawn(retention_loop(
        twin.clone(),
        retention_policies(&config),
        config.retention.interval,
        cancel.clone(),
    ));

    let (providers, resources) = twin.counts();
    tracing::info!(listen = %config.http.listen, data_dir = %data_dir.display(), providers, resources, "hub serving");
    let app = hub_api::router(state);
    // Streams write many small events: without TCP_NODELAY, Nagle's algorithm holds each one back until the
    // client acknowledges the previous, which its delayed ACK can put off for up to 40 ms.
    let listener = axum::serve::ListenerExt::tap_io(listener, |tcp| {
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!("TCP_NODELAY not set on a connection: {e}");
        }
    });
    let shutdown = shutdown_signal();
    let server_cancel = cancel.clone();
    let mut server = tokio::spawn(async move {
        axum::serve(listener, app).with_graceful_shutdown(server_cancel.cancelled_owned()).await
    });
    tokio::select! {
        _ = shutdown => {}
        result = &mut server => {
            return Err(anyhow::anyhow!("the HTTP server stopped unexpectedly: {result:?}"));
        }
    }
    tracing::info!("shutting down: ending streams, draining requests, flushing storage");
    cancel.cancel();
    match tokio::time::timeout(SHUTDOWN_DEADLINE, &mut server).await {
        Ok(Ok(Ok(()))) => {}
        Ok(Ok(Err(e))) => tracing::warn!("HTTP server error during shutdown: {e}"),
        Ok(Err(e)) => tracing::warn!("HTTP server task failed: {e}"),
        Err(_) => {
            tracing::warn!("requests still open after {SHUTDOWN_DEADLINE:?}; closing them");
            server.abort();
        }
    }
    cancel.cancel();
    let finish = async {
        let _ = retention.await;
        host.shutdown().await;
        plugins.shutdown(Duration::from_secs(5)).await;
        audit.close().await;
        store.close().await
    };
    match tokio::time::timeout(SHUTDOWN_DEADLINE, finish).await {
        Ok(Ok(())) => tracing::info!("storage flushed; bye"),
        Ok(Err(e)) => bail!("flushing storage failed: {e}"),
        Err(_) => bail!("shutdown exceeded {SHUTDOWN_DEADLINE:?}"),
    }
    Ok(())
}

/// The official adapters `plugins.official` names; an unknown name is a configuration error.
fn official_adapters(config: &Config) -> Result<Vec<&'static hub_adapters::Official>> {
    config
        .plugins
        .official
        .iter()
        .enumerate()
        .map(|(i, id)| {
            hub_adapters::Official::get(id).ok_or_else(|| {
                let known = hub_adapters::Official::ids().collect::<Vec<_>>().join(", ");
                anyhow::anyhow!(
                    "invalid configuration:\n  - plugins.official[{i}]: no official adapter {id:?} (known: {known})"
                )
            })
        })
        .collect()
}

/// Installs each official adapter that is missing (with its default grant), and upgrades each whose installed
/// module differs from the built-in one or whose requested UDP ports are not this hub's GWMP port (keeping its
/// grant, moved to the new port, its configuration and state). A failure is logged and leaves the hub running:
/// the other plugins and the API do not depend on it.
async fn install_official(
    plugins: &hub_runtime::PluginHost,
    adapters: Vec<&'static hub_adapters::Official>,
    ports: hub_adapters::HostPorts,
) {
    for adapter in adapters {
        let outcome = match official_manifest(adapter, ports) {
            Err(e) => Err(e),
            Ok((manifest, requested)) => match plugins.get(adapter.id) {
                None => plugins
                    .install(&manifest, adapter.wasm.to_vec(), adapter.default_grant(ports), None)
                    .await
                    .map_err(anyhow::Error::from),
                Some(info) if info.sha256 != adapter.sha256 || info.requested != requested => {
                    let grant = adapter.regrant(&info.granted, ports);
                    plugins.upgrade(adapter.id, &manifest, adapter.wasm.to_vec(), Some(grant)).await.map_err(Into::into)
                }
                Some(_) => continue,
            },
        };
        match outcome {
            Ok(info) => tracing::info!(plugin = adapter.id, version = %info.version, "official adapter installed"),
            Err(e) => tracing::error!(plugin = adapter.id, "official adapter not installed: {e:#}"),
        }
    }
}

/// An official adapter's manifest for this hub, and the capabilities it requests.
fn official_manifest(
    adapter: &hub_adapters::Official,
    ports: hub_adapters::HostPorts,
) -> Result<(String, hub_runtime::Capabilities)> {
    let text = adapter.manifest_for(ports).map_err(anyhow::Error::msg)?;
    let requested = hub_runtime::Manifest::parse(&text)?.capabilities;
    Ok((text, requested))
}

/// Rule apps are plugins of kind `app`, run by the plugin runtime.
struct RuleApps(hub_runtime::PluginHost);

#[async_trait::async_trait]
impl hub_automation::AppRunner for RuleApps {
    async fn call(
        &self,
        app: &str,
        request: hub_plugin_sdk::abi::CallRequest,
    ) -> Result<serde_json::Value, hub_twin::ActError> {
        self.0.call_app(app, request).await
    }

    fn is_app(&self, app: &str) -> bool {
        self.0.get(app).is_some_and(|p| p.kind == hub_runtime::PluginKind::App)
    }
}

/// On first start (no token at all) creates an admin token, prints it once and writes it to
/// `<data-dir>/admin.token` (mode 600). `HUB_ADMIN_TOKEN` sets the admin token instead.
async fn bootstrap_admin(store: &Arc<dyn Store>, tokens: &TokenRegistry, data_dir: &Path) -> Result<()> {
    let from_env = std::env::var("HUB_ADMIN_TOKEN").ok().filter(|t| !t.is_empty());
    let secret = match from_env {
        Some(secret) => {
            if tokens.get(&TokenRegistry::hash(&secret)).is_some() {
                return Ok(());
            }
            secret
        }
        None if tokens.list().is_empty() => {
            let (secret, _) = TokenRegistry::generate()?;
            let path = data_dir.join("admin.token");
            write_secret(&path, &secret).with_context(|| format!("writing {}", path.display()))?;
            println!("Admin token (shown once; also in {}):\n{secret}", path.display());
            secret
        }
        None => return Ok(()),
    };
    let info = TokenInfo {
        hash: TokenRegistry::hash(&secret),
        subject: "admin".into(),
        roles: vec!["admin".into()],
        description: Some("bootstrap admin token".into()),
        created_micros: Timestamp::now().as_micros(),
        expires_micros: None,
    };
    store.put_token(hub_api::token_record(&info)).await?;
    tokens.insert(info)?;
    Ok(())
}

fn write_secret(path: &Path, secret: &str) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path)?;
    writeln!(f, "{secret}")?;
    f.sync_all()
}

fn retention_policies(config: &Config) -> Vec<RetentionPolicy> {
    config
        .retention
        .rules
        .iter()
        .map(|r| RetentionPolicy {
            resources: r.resources.clone(),
            keep_raw_micros: i64::try_from(r.keep_raw.as_micros()).unwrap_or(i64::MAX),
            rollup: match r.then {
                RetentionAction::Drop => Rollup::Drop,
                RetentionAction::Downsample => Rollup::Downsample {
                    every_micros: r
                        .every
                        .map(|d| i64::try_from(d.as_micros()).unwrap_or(i64::MAX))
                        .unwrap_or(60_000_000),
                    aggregate: match r.aggregate.as_deref() {
                        Some("min") => Aggregate::Min,
                        Some("max") => Aggregate::Max,
                        Some("sum") => Aggregate::Sum,
                        Some("count") => Aggregate::Count,
                        Some("last") => Aggregate::Last,
                        _ => Aggregate::Avg,
                    },
                },
            },
        })
        .collect()
}

async fn retention_loop(twin: Arc<Twin>, rules: Vec<RetentionPolicy>, every: Duration, cancel: CancellationToken) {
    if rules.is_empty() {
        return;
    }
    let mut ticker = tokio::time::interval(every);
    loop {
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = ticker.tick() => {
                match hub_twin::apply_retention(&twin, &rules, Timestamp::now()).await {
                    Ok(o) => tracing::info!(removed = o.removed, written = o.written, "retention pass"),
                    Err(e) => tracing::warn!("retention pass failed: {e}"),
                }
            }
        }
    }
}

/// Registers the handlers of SIGINT and SIGTERM now and returns what waits for either. Registering before the
/// server answers anything matters: a signal that comes before registration gets the default action (the
/// process dies at once, nothing flushed), and a supervisor may well send one as soon as the hub answers.
fn shutdown_signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{Signal, SignalKind, signal};
    let interrupt = signal(SignalKind::interrupt()).ok();
    let terminate = signal(SignalKind::terminate()).ok();
    async fn wait(signal: Option<Signal>) {
        match signal {
            Some(mut s) => {
                s.recv().await;
            }
            None => std::future::pending::<()>().await,
        }
    }
    async move {
        tokio::select! {
            _ = wait(interrupt) => {},
            _ = wait(terminate) => {},
        }
    }
}

fn admin_token(target: &HubTarget) -> Result<String> {
    if let Some(t) = &target.token {
        return Ok(t.clone());
    }
    if let Ok(t) = std::env::var("HUB_ADMIN_TOKEN")
        && !t.is_empty()
    {
        return Ok(t);
    }
    let path = target.data_dir.join("admin.token");
    let text =
        fs::read_to_string(&path).with_context(|| format!("no --token given and {} is unreadable", path.display()))?;
    Ok(text.trim().to_string())
}

async fn plugin_command(command: PluginCommand) -> Result<()> {
    use base64::Engine as _;
    let client = reqwest::Client::builder().timeout(Duration::from_secs(120)).build()?;
    let (request, target) = match &command {
        PluginCommand::Install { manifest, wasm, grant_requested, grant, target } => {
            let manifest_text =
                fs::read_to_string(manifest).with_context(|| format!("reading {}", manifest.display()))?;
            let module = fs::read(wasm).with_context(|| format!("reading {}", wasm.display()))?;
            let parsed = hub_runtime::Manifest::parse(&manifest_text)
                .with_context(|| format!("{} is not a valid plugin manifest", manifest.display()))?;
            let grant: serde_json::Value = match (grant_requested, grant) {
                (true, _) => serde_json::to_value(&parsed.capabilities)?,
                (false, Some(json)) => serde_json::from_str(json).context("--grant is not JSON")?,
                (false, None) => serde_json::json!({}),
            };
            let body = serde_json::json!({
                "manifest": manifest_text,
                "wasm": base64::engine::general_purpose::STANDARD.encode(module),
                "grant": grant,
            });
            (client.post(format!("{}/api/v1/plugins", target.hub)).json(&body), target)
        }
        PluginCommand::List { target } => (client.get(format!("{}/api/v1/plugins", target.hub)), target),
        PluginCommand::Remove { id, target } => (client.delete(format!("{}/api/v1/plugins/{id}", target.hub)), target),
    };
    let text = send_as_admin(request, target).await?;
    match command {
        PluginCommand::Remove { id, .. } => eprintln!("removed {id}"),
        _ => println!("{text}"),
    }
    Ok(())
}

/// Sends an admin request to a running hub; returns the body of a successful answer.
async fn send_as_admin(request: reqwest::RequestBuilder, target: &HubTarget) -> Result<String> {
    let res = request
        .bearer_auth(admin_token(target)?)
        .send()
        .await
        .with_context(|| format!("cannot reach the hub at {}", target.hub))?;
    let status = res.status();
    let text = res.text().await?;
    if !status.is_success() {
        bail!("the hub answered {status}: {text}");
    }
    Ok(text)
}

async fn token_command(command: TokenCommand) -> Result<()> {
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build()?;
    let (request, target) = match &command {
        TokenCommand::Create { subject, roles, description, expires_in, target } => {
            let body = serde_json::json!({
                "subject": subject, "roles": roles, "description": description, "expires_in": expires_in,
            });
            (client.post(format!("{}/api/v1/tokens", target.hub)).json(&body), target)
        }
        TokenCommand::List { target } => (client.get(format!("{}/api/v1/tokens", target.hub)), target),
        TokenCommand::Revoke { id, target } => (client.delete(format!("{}/api/v1/tokens/{id}", target.hub)), target),
    };
    let text = send_as_admin(request, target).await?;
    match command {
        TokenCommand::Create { .. } => {
            let v: serde_json::Value = serde_json::from_str(&text)?;
            println!("{}", v["token"].as_str().unwrap_or_default());
            eprintln!(
                "token id {} (the token is shown once; only its hash is stored)",
                v["id"].as_str().unwrap_or_default()
            );
        }
        TokenCommand::List { .. } => println!("{text}"),
        TokenCommand::Revoke { id, .. } => eprintln!("revoked {id}"),
    }
    Ok(())
}
