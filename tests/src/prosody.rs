//! A real XMPP server for tests: Prosody (Debian `prosody`) on a free loopback port, with its own data directory,
//! a TLS certificate from a throwaway CA, a publish-subscribe component `pubsub.localhost`, and accounts made with
//! `prosodyctl`. It runs as the `prosody` user (Prosody refuses to run as root), and stops when dropped.
//!
//! Devices are `slixmpp` clients (PyPI) driven by `tests/xmpp/sox_device.py`.

use std::{
    fs,
    net::TcpStream,
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{free_port, require_program};

/// The XMPP domain of the test server.
pub const DOMAIN: &str = "localhost";
/// Its publish-subscribe service.
pub const PUBSUB: &str = "pubsub.localhost";
/// The account devices publish with; an admin, because only admins may create nodes (the hub's account is one
/// too, so that it may publish commands on the devices' nodes).
pub const DEVICE_USER: &str = "sox";
/// The hub's account.
pub const HUB_USER: &str = "hub";
/// The password of every test account.
pub const PASSWORD: &str = "test-password-1";

/// A running Prosody.
pub struct Prosody {
    child: Option<Child>,
    dir: tempfile::TempDir,
    /// The client-to-server port.
    pub port: u16,
    config: PathBuf,
}

/// How a wrapper command runs a program as the `prosody` user.
fn as_prosody(program: &Path) -> Command {
    let setpriv = require_program("setpriv", "apt-get install util-linux");
    let mut command = Command::new(setpriv);
    command.args(["--reuid=prosody", "--regid=prosody", "--init-groups"]).arg(program);
    command
}

impl Prosody {
    /// Starts a server with the two test accounts (`sox@localhost` an admin, `hub@localhost`); c2s needs TLS
    /// unless `require_tls` is false. Publish-subscribe nodes and items live in memory (fast; gone on restart).
    pub fn start(require_tls: bool) -> Result<Prosody> {
        Prosody::start_with(require_tls, false)
    }

    /// [`Prosody::start`] with publish-subscribe nodes and items stored on disk, so they survive a restart.
    pub fn start_persistent(require_tls: bool) -> Result<Prosody> {
        Prosody::start_with(require_tls, true)
    }

    fn start_with(require_tls: bool, persistent: bool) -> Result<Prosody> {
        let prosody = require_program("prosody", "apt-get install prosody");
        require_program("openssl", "apt-get install openssl");
        let dir = tempfile::Builder::new().prefix("hub-prosody-").tempdir()?;
        let root = dir.path();
        fs::create_dir_all(root.join("data"))?;
        make_certificates(root)?;
        let port = free_port();
        let config = root.join("prosody.cfg.lua");
        fs::write(&config, config_text(root, port, require_tls, persistent))?;
        // Prosody drops to its own user: its directory must be its own.
        fs::set_permissions(root, fs::Permissions::from_mode(0o755))?;
        let status = Command::new("chown").args(["-R", "prosody:prosody"]).arg(root).status()?;
        if !status.success() {
            bail!("chown of the Prosody directory failed (the tests run as root)");
        }
        let prosodyctl = require_program("prosodyctl", "apt-get install prosody");
        for user in [DEVICE_USER, HUB_USER] {
            let output = as_prosody(&prosodyctl)
                .arg("--config")
                .arg(&config)
                .args(["register", user, DOMAIN, PASSWORD])
                .output()?;
            if !output.status.success() {
                bail!("prosodyctl register {user} failed: {}", String::from_utf8_lossy(&output.stderr));
            }
        }
        let child = as_prosody(&prosody)
            .arg("--config")
            .arg(&config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("starting prosody")?;
        let mut server = Prosody { child: Some(child), dir, port, config };
        server.wait_listening()?;
        Ok(server)
    }

    fn wait_listening(&mut self) -> Result<()> {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(status) = self.child.as_mut().and_then(|c| c.try_wait().ok().flatten()) {
                bail!("prosody exited ({status}):\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        bail!("prosody did not listen on {} within 20 s:\n{}", self.port, self.log())
    }

    /// The CA certificate (PEM) that signed the server's certificate.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// `127.0.0.1:PORT`.
    pub fn address(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// The server's log so far (for failure messages).
    pub fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("prosody.log")).unwrap_or_default()
    }

    /// Stops the server (a graceful SIGTERM, then a kill).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill").arg(child.id().to_string()).status();
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if child.try_wait().ok().flatten().is_some() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    /// Starts the server again on the same port and data (after [`Prosody::stop`]).
    pub fn restart(&mut self) -> Result<()> {
        self.stop();
        let prosody = require_program("prosody", "apt-get install prosody");
        let child = as_prosody(&prosody)
            .arg("--config")
            .arg(&self.config)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .context("restarting prosody")?;
        self.child = Some(child);
        self.wait_listening()
    }
}

impl Drop for Prosody {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `[[xmpp.servers]]` entry of a hub that connects to `server` as `hub@localhost`.
pub fn hub_server_entry(server: &Prosody, name: &str, discover_interval_ms: u64) -> String {
    format!(
        "[[xmpp.servers]]\nname = \"{name}\"\njid = \"{HUB_USER}@{DOMAIN}/hub\"\npassword = \"{PASSWORD}\"\n\
         address = \"{}\"\npubsub_service = \"{PUBSUB}\"\nca_file = \"{}\"\ndiscover_interval_ms = {discover_interval_ms}\n",
        server.address(),
        server.ca_file().display()
    )
}

/// The SOX device driver script (`tests/xmpp/sox_device.py`), with a check that slixmpp is installed.
pub fn sox_device_script() -> PathBuf {
    let python = require_program("python3", "apt-get install python3");
    let ok = Command::new(python).args(["-c", "import slixmpp"]).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "this test needs the Python package slixmpp; install it with `python3 -m pip install slixmpp`");
    Path::new(env!("CARGO_MANIFEST_DIR")).join("xmpp/sox_device.py")
}

/// Runs the device script against `server` with `args` (after the connection arguments) and returns its
/// standard output.
pub fn run_sox_device(server: &Prosody, args: &[&str]) -> Result<String> {
    run_sox_device_at(&server.address(), &server.ca_file(), args)
}

/// [`run_sox_device`] for a server known by its address and CA file (e.g. from another thread).
pub fn run_sox_device_at(address: &str, ca: &Path, args: &[&str]) -> Result<String> {
    let output = Command::new("python3")
        .arg(sox_device_script())
        .args(["--address", address, "--ca", &ca.display().to_string()])
        .args(["--jid", &format!("{DEVICE_USER}@{DOMAIN}"), "--password", PASSWORD, "--service", PUBSUB])
        .args(args)
        .output()?;
    if !output.status.success() {
        bail!(
            "sox_device.py {args:?} failed ({}):\n{}\n{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&output.stdout).into_owned())
}

/// A CA and a server certificate for `localhost` and `pubsub.localhost`, signed by it.
fn make_certificates(dir: &Path) -> Result<()> {
    let run = |args: &[&str]| -> Result<()> {
        let output = Command::new("openssl").args(args).current_dir(dir).output()?;
        if !output.status.success() {
            bail!("openssl {args:?}: {}", String::from_utf8_lossy(&output.stderr));
        }
        Ok(())
    };
    let ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"];
    run(&[
        &["req", "-x509"][..],
        &ec,
        &["-keyout", "ca.key", "-out", "ca.pem", "-days", "2", "-subj", "/CN=hub test CA"],
    ]
    .concat())?;
    run(
        &[&["req"][..], &ec, &["-keyout", "localhost.key", "-out", "localhost.csr", "-subj", "/CN=localhost"]].concat()
    )?;
    fs::write(
        dir.join("ext.cnf"),
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature\nextendedKeyUsage=serverAuth\n\
         subjectAltName=DNS:localhost,DNS:pubsub.localhost\n",
    )?;
    run(&[
        "x509",
        "-req",
        "-in",
        "localhost.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-CAcreateserial",
        "-out",
        "localhost.crt",
        "-days",
        "2",
        "-extfile",
        "ext.cnf",
    ])?;
    Ok(())
}

fn config_text(root: &Path, port: u16, require_tls: bool, persistent: bool) -> String {
    let root = root.display();
    let storage = if persistent {
        r#"storage = "internal""#
    } else {
        r#"storage = { pubsub_nodes = "memory"; pubsub_data = "memory" }"#
    };
    format!(
        r#"-- Written by the hub's tests.
daemonize = false
pidfile = "{root}/prosody.pid"
data_path = "{root}/data"
admins = {{ "{DEVICE_USER}@{DOMAIN}"; "{HUB_USER}@{DOMAIN}" }}
modules_enabled = {{ "disco"; "saslauth"; "tls"; "ping"; "roster" }}
modules_disabled = {{ "s2s"; "http"; "posix" }}
c2s_ports = {{ {port} }}
c2s_interfaces = {{ "127.0.0.1" }}
s2s_ports = {{ }}
c2s_require_encryption = {require_tls}
allow_unencrypted_plain_auth = {plain}
authentication = "internal_hashed"
{storage}
log = {{ info = "{root}/prosody.log"; error = "{root}/prosody.err" }}
ssl = {{ certificate = "{root}/localhost.crt"; key = "{root}/localhost.key" }}
VirtualHost "{DOMAIN}"
Component "{PUBSUB}" "pubsub"
"#,
        plain = !require_tls
    )
}
