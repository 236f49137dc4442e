//! Real peers for the MQTT tests: the Mosquitto command-line clients and private Mosquitto brokers.
//!
//! A missing peer binary fails the test with the command that installs it; nothing is skipped.

#![allow(dead_code)]

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use hub_plugin_sdk::abi::InboundMessage;
use tokio::sync::mpsc;

/// Every wait in these tests ends after this long.
pub const WAIT: Duration = Duration::from_secs(20);

/// The system Mosquitto (shared: never restarted by the tests).
pub const SYSTEM_MOSQUITTO: &str = "127.0.0.1:1883";

/// The full path of `name`, or an error that says how to install it.
pub fn require_binary(name: &str) -> Result<PathBuf> {
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    let mut candidates: Vec<PathBuf> = std::env::split_paths(&dirs).map(|d| d.join(name)).collect();
    candidates.push(Path::new("/usr/sbin").join(name));
    candidates.push(Path::new("/usr/bin").join(name));
    if let Some(found) = candidates.into_iter().find(|p| p.is_file()) {
        return Ok(found);
    }
    let package = if name == "mosquitto" { "mosquitto" } else { "mosquitto-clients" };
    bail!(
        "the MQTT tests need the `{name}` binary, which is not installed; install it with \
         `apt-get update && apt-get install -y {package}` (Debian/Ubuntu) and run the tests again"
    )
}

/// A name no other test or run uses (topics, client ids).
pub fn unique(prefix: &str) -> String {
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    format!("{prefix}-{}-{}-{}", std::process::id(), NEXT.fetch_add(1, Ordering::Relaxed), nanos % 1_000_000_000)
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("no free port")
}

/// Runs `mosquitto_pub` to completion (at most [`WAIT`]).
pub fn mosquitto_pub(addr: SocketAddr, args: &[&str]) -> Result<Output> {
    let bin = require_binary("mosquitto_pub")?;
    let mut command = Command::new(bin);
    command
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-i", &unique("pub")])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    run_with_timeout(command, WAIT)
}

/// Runs `mosquitto_pub` and fails unless it exits 0.
pub fn publish(addr: SocketAddr, topic: &str, payload: &str, qos: u8) -> Result<()> {
    let output = mosquitto_pub(addr, &["-t", topic, "-m", payload, "-q", &qos.to_string()])?;
    if !output.status.success() {
        bail!("mosquitto_pub failed ({}): {}", output.status, String::from_utf8_lossy(&output.stderr));
    }
    Ok(())
}

/// Starts `mosquitto_sub -v` for `count` messages on `topic`, giving up after `WAIT`.
pub fn spawn_sub(addr: SocketAddr, topic: &str, count: usize, extra: &[&str]) -> Result<Child> {
    let bin = require_binary("mosquitto_sub")?;
    Command::new(bin)
        .args(["-h", &addr.ip().to_string(), "-p", &addr.port().to_string(), "-i", &unique("sub")])
        .args(["-t", topic, "-v", "-C", &count.to_string(), "-W", &WAIT.as_secs().to_string()])
        .args(extra)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("spawning mosquitto_sub")
}

/// Waits (at most `timeout`) for a child to exit and collects its output; kills it on timeout.
pub fn wait_child(mut child: Child, timeout: Duration) -> Result<Output> {
    let deadline = Instant::now() + timeout;
    loop {
        if child.try_wait()?.is_some() {
            return child.wait_with_output().context("collecting output");
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let output = child.wait_with_output()?;
            bail!(
                "process still running after {timeout:?}; stdout {:?}, stderr {:?}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether a child has exited, without waiting.
pub fn exited(child: &mut Child) -> bool {
    matches!(child.try_wait(), Ok(Some(_)))
}

fn run_with_timeout(mut command: Command, timeout: Duration) -> Result<Output> {
    let child = command.spawn().context("spawning a peer")?;
    wait_child(child, timeout)
}

/// Receives the next inbound message, failing after `timeout`.
pub async fn recv(rx: &mut mpsc::Receiver<InboundMessage>, timeout: Duration) -> Result<InboundMessage> {
    match tokio::time::timeout(timeout, rx.recv()).await {
        Ok(Some(message)) => Ok(message),
        Ok(None) => bail!("the inbound channel closed"),
        Err(_) => bail!("no inbound message within {timeout:?}"),
    }
}

/// Receives until a message on `topic` with `payload` arrives (other messages are skipped), within [`WAIT`].
pub async fn recv_matching(
    rx: &mut mpsc::Receiver<InboundMessage>,
    topic: &str,
    payload: &str,
) -> Result<InboundMessage> {
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        let message = recv(rx, left).await.with_context(|| format!("waiting for {payload:?} on {topic}"))?;
        if message.address == topic && message.payload.as_bytes() == payload.as_bytes() {
            return Ok(message);
        }
    }
}

/// Publishes probes on `topic` with `mosquitto_pub` until one reaches `rx`: proves the subscription is live.
pub async fn wait_for_flow(addr: SocketAddr, rx: &mut mpsc::Receiver<InboundMessage>, topic: &str) -> Result<()> {
    let deadline = tokio::time::Instant::now() + WAIT;
    let probe = unique("probe");
    while tokio::time::Instant::now() < deadline {
        let _ = tokio::task::spawn_blocking({
            let (topic, probe) = (topic.to_owned(), probe.clone());
            move || publish(addr, &topic, &probe, 0)
        })
        .await?;
        let until = tokio::time::Instant::now() + Duration::from_millis(500);
        while let Ok(Some(message)) = tokio::time::timeout_at(until, rx.recv()).await {
            if message.address == topic && message.payload.as_bytes() == probe.as_bytes() {
                // Let later probes still in flight arrive and be skipped by the caller's matching.
                return Ok(());
            }
        }
    }
    bail!("no probe on {topic} reached the hub within {WAIT:?}")
}

/// Waits until `condition` holds, checking every 20 ms, for at most `timeout`.
pub async fn eventually(timeout: Duration, what: &str, mut condition: impl FnMut() -> bool) -> Result<()> {
    let deadline = tokio::time::Instant::now() + timeout;
    while !condition() {
        if tokio::time::Instant::now() >= deadline {
            bail!("timed out after {timeout:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// A private Mosquitto broker on a loopback port, with persistence in a temporary directory. Killed on drop.
pub struct PrivateMosquitto {
    pub addr: SocketAddr,
    dir: tempfile::TempDir,
    child: Option<Child>,
}

impl PrivateMosquitto {
    /// Starts a broker on a free port.
    pub fn start() -> Result<PrivateMosquitto> {
        let dir = tempfile::tempdir()?;
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port()).parse()?;
        let mut broker = PrivateMosquitto { addr, dir, child: None };
        broker.restart()?;
        Ok(broker)
    }

    /// Starts the broker again on the same port (after [`PrivateMosquitto::kill`]).
    pub fn restart(&mut self) -> Result<()> {
        let bin = require_binary("mosquitto")?;
        let conf = self.dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {} 127.0.0.1\nallow_anonymous true\npersistence true\npersistence_location {}/\n",
                self.addr.port(),
                self.dir.path().display()
            ),
        )?;
        let deadline = Instant::now() + WAIT;
        loop {
            let mut child = Command::new(&bin)
                .arg("-c")
                .arg(&conf)
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .context("spawning mosquitto")?;
            // The port can stay busy for a moment after a kill; retry until the listener is ours.
            loop {
                if let Some(status) = child.try_wait()? {
                    let mut stderr = String::new();
                    if let Some(mut e) = child.stderr.take() {
                        use std::io::Read;
                        let _ = e.read_to_string(&mut stderr);
                    }
                    if Instant::now() >= deadline {
                        bail!("mosquitto exited ({status}): {stderr}");
                    }
                    break;
                }
                if TcpStream::connect_timeout(&self.addr, Duration::from_millis(100)).is_ok() {
                    self.child = Some(child);
                    return Ok(());
                }
                if Instant::now() >= deadline {
                    let _ = child.kill();
                    bail!("mosquitto did not listen on {} within {WAIT:?}", self.addr);
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Kills the broker (like a crash) and waits for it to exit.
    pub fn kill(&mut self) -> Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }
}

impl Drop for PrivateMosquitto {
    fn drop(&mut self) {
        let _ = self.kill();
    }
}
