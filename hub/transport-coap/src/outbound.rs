//! Requests plugins send to devices (ACT): the runtime's `coap` transport.

use std::collections::BTreeMap;
use std::sync::Arc;

use async_trait::async_trait;
use coap_lite::{MessageClass, RequestType, ResponseType};
use hub_plugin_sdk::abi::OutboundMessage;
use hub_runtime::{Outbound, TransportError};
use tokio::sync::{Semaphore, mpsc};
use tokio_util::sync::CancellationToken;

use crate::client::{Client, ClientError, request_packet};
use crate::stats::bump;
use crate::wire::{self, Block, DeviceUri, option};
use crate::{META_CONFIRMABLE, META_CONTENT_FORMAT, META_METHOD};

/// The `coap` transport as the plugin runtime sees it.
///
/// The message's address is the device resource, `coap://host[:port]/path[?query]` or `//host[:port]/path[?query]`
/// (the form plugin grants can name, since they must start with `/`). Metadata:
///
/// | key | values | default |
/// |---|---|---|
/// | `method` | `POST`, `PUT`, `GET`, `DELETE` | `POST` |
/// | `content_format` | a Content-Format number | none |
/// | `confirmable` | `true`, `false` | `true` |
///
/// `send` checks the message and queues it (waiting when `client.queue` messages are already waiting); the
/// request itself runs in the background: confirmable ones are retransmitted until the device acknowledges, and
/// a payload larger than one block goes block-wise (Block1, always confirmable). The outcome is counted
/// (`outbound_sent`, `outbound_failed`) and failures are logged; the plugin is not told.
#[derive(Clone)]
pub struct CoapOutbound {
    jobs: mpsc::Sender<Job>,
}

impl std::fmt::Debug for CoapOutbound {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoapOutbound").finish_non_exhaustive()
    }
}

struct Job {
    plugin: String,
    address: String,
    uri: DeviceUri,
    method: RequestType,
    content_format: Option<u16>,
    confirmable: bool,
    payload: Vec<u8>,
}

impl CoapOutbound {
    pub(crate) fn start(
        client: Arc<Client>,
        queue: usize,
        max_pending: usize,
        cancel: CancellationToken,
    ) -> CoapOutbound {
        let (jobs, rx) = mpsc::channel(queue);
        tokio::spawn(work(client, rx, Arc::new(Semaphore::new(max_pending)), cancel));
        CoapOutbound { jobs }
    }
}

/// Reads a message into a job, refusing what cannot be sent.
fn job(plugin_id: &str, message: OutboundMessage) -> Result<Job, TransportError> {
    let uri = DeviceUri::parse(&message.address).map_err(TransportError::Refused)?;
    let metadata: &BTreeMap<String, String> = &message.metadata;
    let method = match metadata.get(META_METHOD).map(|m| m.to_ascii_uppercase()).as_deref() {
        None | Some("POST") => RequestType::Post,
        Some("PUT") => RequestType::Put,
        Some("GET") => RequestType::Get,
        Some("DELETE") => RequestType::Delete,
        Some(other) => {
            return Err(TransportError::Refused(format!(
                "metadata method must be POST, PUT, GET or DELETE, not {other:?}"
            )));
        }
    };
    let content_format = match metadata.get(META_CONTENT_FORMAT) {
        None => None,
        Some(text) => Some(text.parse::<u16>().map_err(|_| {
            TransportError::Refused(format!("metadata content_format must be a number from 0 to 65535, not {text:?}"))
        })?),
    };
    let confirmable = match metadata.get(META_CONFIRMABLE).map(String::as_str) {
        None | Some("true") => true,
        Some("false") => false,
        Some(other) => {
            return Err(TransportError::Refused(format!("metadata confirmable must be true or false, not {other:?}")));
        }
    };
    Ok(Job {
        plugin: plugin_id.to_owned(),
        address: message.address,
        uri,
        method,
        content_format,
        confirmable,
        payload: message.payload.0,
    })
}

#[async_trait]
impl Outbound for CoapOutbound {
    async fn send(&self, plugin_id: &str, message: OutboundMessage) -> Result<(), TransportError> {
        let job = job(plugin_id, message)?;
        self.jobs.send(job).await.map_err(|_| TransportError::Unavailable("the CoAP client is shut down".to_owned()))
    }
}

async fn work(client: Arc<Client>, mut jobs: mpsc::Receiver<Job>, slots: Arc<Semaphore>, cancel: CancellationToken) {
    loop {
        let job = tokio::select! {
            _ = cancel.cancelled() => return,
            job = jobs.recv() => match job {
                Some(job) => job,
                None => return,
            },
        };
        let Ok(slot) = slots.clone().acquire_owned().await else { return };
        let client = client.clone();
        let cancel = cancel.clone();
        tokio::spawn(async move {
            let outcome = tokio::select! {
                _ = cancel.cancelled() => return,
                outcome = run(&client, &job) => outcome,
            };
            match outcome {
                Ok(()) => bump(&client.counters.outbound_sent),
                Err(reason) => {
                    bump(&client.counters.outbound_failed);
                    if let Some(suppressed) = client.log.allow() {
                        tracing::warn!(plugin = %job.plugin, address = %job.address, reason, suppressed, "CoAP request to a device failed");
                    }
                }
            }
            drop(slot);
        });
    }
}

async fn run(client: &Arc<Client>, job: &Job) -> Result<(), String> {
    let peer = job.uri.resolve().await.map_err(|e| format!("cannot resolve {}: {e}", job.uri.host))?;
    let szx = client.settings.szx;
    let block_size = 16usize << szx;
    let build = || {
        let mut packet = request_packet(job.method, &job.uri);
        if let Some(cf) = job.content_format {
            wire::add_uint(&mut packet, option::CONTENT_FORMAT, u64::from(cf));
        }
        packet
    };
    if job.payload.len() <= block_size {
        let mut packet = build();
        packet.payload = job.payload.clone();
        if !job.confirmable {
            return if client.send_non(peer, packet).await { Ok(()) } else { Err("send failed".to_owned()) };
        }
        let response = client.route().request(peer, packet, true).await.map_err(|e| e.to_string())?;
        return success(response.header.code);
    }
    // Block1 (RFC 7959 §2.5): one confirmable request per block; the device may ask for smaller blocks.
    let mut offset = 0;
    let mut szx = szx;
    let request_tag: [u8; 4] = rand::random();
    while offset < job.payload.len() {
        let size = 16usize << szx;
        let end = (offset + size).min(job.payload.len());
        let block = Block { num: (offset / size) as u32, more: end < job.payload.len(), szx };
        let mut packet = build();
        wire::add(&mut packet, option::BLOCK1, block.encode());
        wire::add(&mut packet, option::REQUEST_TAG, request_tag.to_vec());
        if block.num == 0 {
            wire::add_uint(&mut packet, option::SIZE1, job.payload.len() as u64);
        }
        packet.payload = job.payload[offset..end].to_vec();
        let response = client.route().request(peer, packet, true).await.map_err(|e: ClientError| e.to_string())?;
        if !block.more {
            return success(response.header.code);
        }
        if response.header.code != MessageClass::Response(ResponseType::Continue) {
            return Err(format!("block {} answered {}", block.num, response.header.code));
        }
        offset = end;
        if let Some(echo) = wire::first(&response, option::BLOCK1).and_then(|v| Block::decode(v))
            && echo.szx < szx
        {
            szx = echo.szx;
        }
    }
    Ok(())
}

fn success(code: MessageClass) -> Result<(), String> {
    if wire::is_success(code) { Ok(()) } else { Err(format!("the device answered {code}")) }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(address: &str, meta: &[(&str, &str)]) -> OutboundMessage {
        let mut m = OutboundMessage::new("coap", address, "x");
        for (k, v) in meta {
            m.metadata.insert((*k).to_owned(), (*v).to_owned());
        }
        m
    }

    #[test]
    fn jobs_check_address_and_metadata() {
        let j = job("p", message("coap://10.0.0.1/a/b", &[])).unwrap();
        assert_eq!((j.method, j.confirmable, j.content_format), (RequestType::Post, true, None));
        let j = job(
            "p",
            message("//10.0.0.1:6000/a", &[("method", "put"), ("content_format", "50"), ("confirmable", "false")]),
        )
        .unwrap();
        assert_eq!((j.method, j.confirmable, j.content_format, j.uri.port), (RequestType::Put, false, Some(50), 6000));
        for (address, meta) in [
            ("/a/b", vec![]),
            ("coaps://h/a", vec![]),
            ("coap://h/a", vec![("method", "PATCH")]),
            ("coap://h/a", vec![("content_format", "json")]),
            ("coap://h/a", vec![("confirmable", "yes")]),
        ] {
            assert!(matches!(job("p", message(address, &meta)), Err(TransportError::Refused(_))), "{address} {meta:?}");
        }
    }
}
