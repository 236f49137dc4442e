//! Real peers for the CoAP tests: libcoap's `coap-client-notls` and `coap-server-notls`, and aiocoap; a fake
//! runtime pump; a tiny raw client for exact codes.
//!
//! A missing peer fails the test with the command that installs it; nothing is skipped.

#![allow(dead_code)]

use std::net::{SocketAddr, UdpSocket as StdUdpSocket};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use coap_lite::{MessageClass, MessageType, Packet, RequestType};
use hub_plugin_sdk::abi::InboundMessage;
use hub_runtime::DispatchOutcome;
use hub_transport_coap::{CoapConfig, CoapTransport, Delivery, DeviceAuth, StaticDeviceAuth, wire};
use tokio::net::UdpSocket;
use tokio::sync::mpsc;

/// Every wait in these tests ends after this long.
pub const WAIT: Duration = Duration::from_secs(20);

/// The full path of `name`, or an error that says how to install it.
pub fn require_binary(name: &str) -> Result<PathBuf> {
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    let mut candidates: Vec<PathBuf> = std::env::split_paths(&dirs).map(|d| d.join(name)).collect();
    candidates.push(Path::new("/usr/bin").join(name));
    candidates.push(Path::new("/usr/local/bin").join(name));
    if let Some(found) = candidates.into_iter().find(|p| p.is_file()) {
        return Ok(found);
    }
    bail!(
        "the CoAP tests need `{name}`, which is not installed; install it with \
         `apt-get update && apt-get install -y libcoap3-bin` (Debian/Ubuntu) and run the tests again"
    )
}

/// `python3` with aiocoap importable, or an error that says how to install it.
pub fn require_aiocoap() -> Result<PathBuf> {
    let python = require_python()?;
    let ok = Command::new(&python).args(["-c", "import aiocoap"]).output().map(|o| o.status.success()).unwrap_or(false);
    if !ok {
        bail!(
            "the CoAP tests need the Python package aiocoap; install it with `pip install aiocoap` (add \
             `--break-system-packages` on a system Python that refuses) and run the tests again"
        );
    }
    Ok(python)
}

fn require_python() -> Result<PathBuf> {
    let dirs = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&dirs)
        .map(|d| d.join("python3"))
        .find(|p| p.is_file())
        .context("the CoAP tests need python3; install it with `apt-get install -y python3` and run the tests again")
}

/// A loopback UDP port that was free a moment ago.
pub fn free_udp_port() -> u16 {
    StdUdpSocket::bind("127.0.0.1:0").and_then(|s| s.local_addr()).map(|a| a.port()).expect("no free port")
}

/// A config for a loopback endpoint on a free port, with a loopback client.
pub fn loopback_config() -> CoapConfig {
    let mut config = CoapConfig { listen: "127.0.0.1:0".parse().unwrap(), ..CoapConfig::default() };
    config.client.bind = "127.0.0.1:0".parse().unwrap();
    config
}

/// The running transport and what it hands the "runtime".
pub struct Hub {
    pub transport: CoapTransport,
    pub addr: SocketAddr,
    pub messages: mpsc::Receiver<InboundMessage>,
}

/// How the fake runtime dispatches: how many plugins get a message.
pub type Dispatch = Arc<dyn Fn(&InboundMessage) -> DispatchOutcome + Send + Sync>;

/// Delivers everything under `/up/` and every notification (`//...`); nothing else has a plugin.
pub fn up_only() -> Dispatch {
    Arc::new(|m: &InboundMessage| {
        let delivered = usize::from(m.address.starts_with("/up/") || m.address.starts_with("//"));
        DispatchOutcome { delivered, dropped: 0 }
    })
}

pub fn devices() -> Arc<StaticDeviceAuth> {
    Arc::new(StaticDeviceAuth::new().with_token("s3cret", "device-7", &["/up/meters-7/"]))
}

/// Starts the transport with a fake pump that answers with `dispatch` and forwards each message a "plugin" got.
pub async fn start(config: CoapConfig, auth: Arc<dyn DeviceAuth>, dispatch: Dispatch) -> Result<Hub> {
    let (tx, mut rx) = mpsc::channel::<Delivery>(64);
    let transport = CoapTransport::start(&config, auth, tx).await?;
    let addr = transport.local_addr().unwrap_or(config.listen);
    let (seen_tx, seen_rx) = mpsc::channel(1024);
    tokio::spawn(async move {
        while let Some(delivery) = rx.recv().await {
            let (message, reply) = delivery.into_parts();
            let outcome = dispatch(&message);
            reply.send(outcome);
            if outcome.delivered > 0 {
                let _ = seen_tx.send(message).await;
            }
        }
    });
    Ok(Hub { transport, addr, messages: seen_rx })
}

/// The next message the runtime got, within [`WAIT`].
pub async fn next_message(rx: &mut mpsc::Receiver<InboundMessage>) -> Result<InboundMessage> {
    tokio::time::timeout(WAIT, rx.recv()).await.context("no message reached the runtime in time")?.context("closed")
}

/// Asserts nothing more reaches the runtime for `quiet`.
pub async fn assert_quiet(rx: &mut mpsc::Receiver<InboundMessage>, quiet: Duration) -> Result<()> {
    if let Ok(Some(m)) = tokio::time::timeout(quiet, rx.recv()).await {
        bail!("unexpected message at {}: {:?}", m.address, m.payload.as_str());
    }
    Ok(())
}

/// Runs a command to completion, killing it after `limit`.
pub fn run_with_timeout(mut command: Command, limit: Duration) -> Result<Output> {
    let mut child = command.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().context("spawning a peer")?;
    let started = Instant::now();
    loop {
        if child.try_wait()?.is_some() {
            return Ok(child.wait_with_output()?);
        }
        if started.elapsed() > limit {
            let _ = child.kill();
            let output = child.wait_with_output()?;
            bail!(
                "{command:?} did not finish within {limit:?}; stdout: {} stderr: {}",
                String::from_utf8_lossy(&output.stdout),
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Runs `coap-client-notls` with `args` (at most [`WAIT`]); returns stdout and stderr together.
pub async fn coap_client(args: Vec<String>) -> Result<String> {
    let bin = require_binary("coap-client-notls")?;
    tokio::task::spawn_blocking(move || {
        let mut command = Command::new(bin);
        command.args(["-B", "10"]).args(&args);
        let output = run_with_timeout(command, WAIT)?;
        Ok(format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr)))
    })
    .await?
}

/// A child process killed when dropped.
pub struct Peer(pub Child);

impl Drop for Peer {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `coap-server-notls` on a free loopback port; waits until it answers.
pub async fn coap_server() -> Result<(Peer, u16)> {
    let port = free_udp_port();
    let peer = coap_server_on(port).await?;
    Ok((peer, port))
}

/// Starts `coap-server-notls` on `port`; waits until it answers.
pub async fn coap_server_on(port: u16) -> Result<Peer> {
    let bin = require_binary("coap-server-notls")?;
    let child = Command::new(bin)
        .args(["-A", "127.0.0.1", "-p", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .context("starting coap-server-notls")?;
    let peer = Peer(child);
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse()?;
    let deadline = Instant::now() + WAIT;
    loop {
        if let Ok(Ok(response)) =
            tokio::time::timeout(Duration::from_millis(300), raw_request(addr, get("/time"))).await
            && wire::is_success(response.header.code)
        {
            return Ok(peer);
        }
        if Instant::now() > deadline {
            bail!("coap-server-notls did not answer on {addr}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A confirmable request packet for `path` (with `?query` split into Uri-Query options).
pub fn request(method: RequestType, target: &str, payload: &[u8]) -> Packet {
    let mut packet = Packet::new();
    packet.header.set_version(1);
    packet.header.set_type(MessageType::Confirmable);
    packet.header.code = MessageClass::Request(method);
    packet.header.message_id = rand::random();
    packet.set_token(rand::random::<[u8; 4]>().to_vec());
    let (path, query) = target.split_once('?').unwrap_or((target, ""));
    for segment in path.split('/').filter(|s| !s.is_empty()) {
        wire::add(&mut packet, wire::option::URI_PATH, segment.as_bytes().to_vec());
    }
    for q in query.split('&').filter(|q| !q.is_empty()) {
        wire::add(&mut packet, wire::option::URI_QUERY, q.as_bytes().to_vec());
    }
    packet.payload = payload.to_vec();
    packet
}

pub fn get(target: &str) -> Packet {
    request(RequestType::Get, target, b"")
}

pub fn post(target: &str, content_format: Option<u16>, payload: &[u8]) -> Packet {
    let mut packet = request(RequestType::Post, target, payload);
    if let Some(cf) = content_format {
        wire::add_uint(&mut packet, wire::option::CONTENT_FORMAT, u64::from(cf));
    }
    packet
}

/// Sends one datagram from a fresh socket and returns the first answer (within 5 s).
pub async fn raw_request(addr: SocketAddr, packet: Packet) -> Result<Packet> {
    let socket = UdpSocket::bind("127.0.0.1:0").await?;
    let bytes = wire::encode(&packet);
    socket.send_to(&bytes, addr).await?;
    recv_packet(&socket).await
}

/// The next CoAP message on `socket`, within 5 s.
pub async fn recv_packet(socket: &UdpSocket) -> Result<Packet> {
    let mut buf = vec![0u8; 65_536];
    let (len, _) = tokio::time::timeout(Duration::from_secs(5), socket.recv_from(&mut buf))
        .await
        .context("no answer within 5 s")??;
    wire::parse(&buf[..len]).map_err(|e| anyhow::anyhow!("answer is not CoAP: {}", e.reason))
}

/// The dotted code of a packet (`2.04`).
pub fn code(packet: &Packet) -> String {
    wire::code_text(packet.header.code)
}

/// The aiocoap device of `tests/peers/aiocoap_device.py` on `port`, and the lines it prints.
pub struct Device {
    pub peer: Peer,
    pub lines: std::sync::mpsc::Receiver<String>,
}

/// Starts the aiocoap device on a free loopback port, with `/big` about `pad` bytes; waits for READY.
pub async fn aiocoap_device(pad: usize) -> Result<(Device, u16)> {
    use std::io::BufRead;
    let python = require_aiocoap()?;
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/peers/aiocoap_device.py");
    let port = free_udp_port();
    let mut child = Command::new(python)
        .arg(script)
        .args([port.to_string(), pad.to_string()])
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .context("starting the aiocoap device")?;
    let stdout = child.stdout.take().context("no stdout")?;
    let (tx, lines) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                return;
            }
        }
    });
    let device = Device { peer: Peer(child), lines };
    let line = next_line(&device, "READY").await?;
    anyhow::ensure!(line == "READY", "unexpected first line {line:?}");
    Ok((device, port))
}

/// The next line the device prints that starts with `prefix`, within [`WAIT`].
pub async fn next_line(device: &Device, prefix: &str) -> Result<String> {
    let deadline = Instant::now() + WAIT;
    loop {
        match device.lines.try_recv() {
            Ok(line) if line.starts_with(prefix) => return Ok(line),
            Ok(_) => continue,
            Err(std::sync::mpsc::TryRecvError::Disconnected) => bail!("the device exited"),
            Err(std::sync::mpsc::TryRecvError::Empty) => {}
        }
        if Instant::now() > deadline {
            bail!("the device printed no {prefix:?} line in time");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}
