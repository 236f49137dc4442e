//! CoAP messages on the wire: strict parsing, the options this transport understands, Block1/Block2 values,
//! and device URIs. coap-lite encodes and decodes; this module adds the checks RFC 7252 asks for that it leaves
//! out (version, empty messages, a payload marker without payload, reserved classes).

use std::net::SocketAddr;

use coap_lite::{CoapOption, MessageClass, MessageType, Packet, ResponseType};

/// The CoAP version every message must carry.
const VERSION: u8 = 1;

/// Option numbers (RFC 7252 §5.10, RFC 7641, RFC 7959, RFC 7967, RFC 9175).
pub mod option {
    /// If-Match.
    pub const IF_MATCH: u16 = 1;
    /// Uri-Host.
    pub const URI_HOST: u16 = 3;
    /// ETag.
    pub const ETAG: u16 = 4;
    /// If-None-Match.
    pub const IF_NONE_MATCH: u16 = 5;
    /// Observe.
    pub const OBSERVE: u16 = 6;
    /// Uri-Port.
    pub const URI_PORT: u16 = 7;
    /// OSCORE (RFC 8613): critical, and not implemented here, so a request carrying it gets 4.02.
    pub const OSCORE: u16 = 9;
    /// Uri-Path.
    pub const URI_PATH: u16 = 11;
    /// Content-Format.
    pub const CONTENT_FORMAT: u16 = 12;
    /// Max-Age.
    pub const MAX_AGE: u16 = 14;
    /// Uri-Query.
    pub const URI_QUERY: u16 = 15;
    /// Accept.
    pub const ACCEPT: u16 = 17;
    /// Block2.
    pub const BLOCK2: u16 = 23;
    /// Block1.
    pub const BLOCK1: u16 = 27;
    /// Size2.
    pub const SIZE2: u16 = 28;
    /// Proxy-Uri.
    pub const PROXY_URI: u16 = 35;
    /// Proxy-Scheme.
    pub const PROXY_SCHEME: u16 = 39;
    /// Size1.
    pub const SIZE1: u16 = 60;
    /// Echo (RFC 9175).
    pub const ECHO: u16 = 252;
    /// No-Response (RFC 7967).
    pub const NO_RESPONSE: u16 = 258;
    /// Request-Tag (RFC 9175).
    pub const REQUEST_TAG: u16 = 292;
    /// The hub's device token, as an option instead of `?token=` (experimental-use range, elective).
    pub const HUB_TOKEN: u16 = 65000;
}

/// Content-Format numbers this transport knows by name.
pub mod format {
    /// `text/plain; charset=utf-8`.
    pub const TEXT: u16 = 0;
    /// `application/link-format`.
    pub const LINK_FORMAT: u16 = 40;
    /// `application/octet-stream`.
    pub const OCTET_STREAM: u16 = 42;
    /// `application/json`.
    pub const JSON: u16 = 50;
    /// `application/cbor`.
    pub const CBOR: u16 = 60;
    /// `application/senml+json`.
    pub const SENML_JSON: u16 = 110;
    /// `application/senml+cbor`.
    pub const SENML_CBOR: u16 = 112;
}

/// A datagram that is not a well-formed CoAP message. `reject` carries the message id of a confirmable one,
/// which gets a Reset (RFC 7252 §4.2); anything else is silently dropped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FormatError {
    /// The message id to reset, when the datagram was confirmable and long enough to have one.
    pub reject: Option<u16>,
    /// What is wrong, for the log.
    pub reason: &'static str,
}

/// Parses one datagram as a CoAP message, checking what coap-lite does not.
pub fn parse(bytes: &[u8]) -> Result<Packet, FormatError> {
    if bytes.len() < 4 {
        return Err(FormatError { reject: None, reason: "shorter than a CoAP header" });
    }
    let confirmable = (bytes[0] >> 4) & 0x3 == 0;
    let mid = u16::from_be_bytes([bytes[2], bytes[3]]);
    let fail = |reason| FormatError { reject: confirmable.then_some(mid), reason };
    if bytes[0] >> 6 != VERSION {
        // A message of another version is silently ignored (RFC 7252 §3).
        return Err(FormatError { reject: None, reason: "unknown CoAP version" });
    }
    let token_len = usize::from(bytes[0] & 0x0f);
    if token_len > 8 {
        return Err(fail("token length above 8"));
    }
    let code = bytes[1];
    if code == 0 && bytes.len() != 4 {
        return Err(fail("an empty message with a token, options or payload"));
    }
    if matches!(code >> 5, 1 | 6 | 7) {
        return Err(fail("reserved code class"));
    }
    match payload_start(bytes, 4 + token_len) {
        Some((start, true)) if start == bytes.len() => return Err(fail("payload marker without a payload")),
        Some(_) => {}
        None => return Err(fail("malformed options")),
    }
    Packet::from_bytes(bytes).map_err(|_| fail("malformed options"))
}

/// Where the payload starts (after the 0xff marker) and whether there was a marker; `None` when the options run
/// past the end or use a reserved nibble.
fn payload_start(bytes: &[u8], options_start: usize) -> Option<(usize, bool)> {
    let mut i = options_start;
    if i > bytes.len() {
        return None;
    }
    while i < bytes.len() {
        let byte = bytes[i];
        if byte == 0xff {
            return Some((i + 1, true));
        }
        i += 1;
        for nibble in [byte >> 4, byte & 0x0f] {
            match nibble {
                13 => i += 1,
                14 => i += 2,
                15 => return None,
                _ => {}
            }
        }
        if i > bytes.len() {
            return None;
        }
        // Recompute the length with its extension bytes now that they are known to be there.
        let length = match byte & 0x0f {
            13 => usize::from(bytes[i - 1]) + 13,
            14 => usize::from(u16::from_be_bytes([bytes[i - 2], bytes[i - 1]])) + 269,
            n => usize::from(n),
        };
        i = i.checked_add(length)?;
        if i > bytes.len() {
            return None;
        }
    }
    Some((bytes.len(), false))
}

/// Reads an unsigned option value (RFC 7252 §3.2: big-endian, leading zeros may be omitted).
pub fn uint(bytes: &[u8]) -> Option<u64> {
    if bytes.len() > 8 {
        return None;
    }
    Some(bytes.iter().fold(0u64, |acc, b| (acc << 8) | u64::from(*b)))
}

/// Encodes an unsigned option value in as few bytes as possible.
pub fn encode_uint(value: u64) -> Vec<u8> {
    let bytes = value.to_be_bytes();
    let skip = bytes.iter().take_while(|b| **b == 0).count();
    bytes[skip..].to_vec()
}

/// The first value of option `number`, if present.
pub fn first(packet: &Packet, number: u16) -> Option<&Vec<u8>> {
    packet.get_first_option(CoapOption::from(number))
}

/// The first value of option `number` as an unsigned integer of at most `max_bytes`: `None` when absent,
/// `Some(None)` when present but too long.
pub fn first_uint(packet: &Packet, number: u16, max_bytes: usize) -> Option<Option<u64>> {
    first(packet, number).map(|v| if v.len() > max_bytes { None } else { uint(v) })
}

/// Adds option `number` with `value`.
pub fn add(packet: &mut Packet, number: u16, value: Vec<u8>) {
    packet.add_option(CoapOption::from(number), value);
}

/// Adds option `number` as an unsigned integer.
pub fn add_uint(packet: &mut Packet, number: u16, value: u64) {
    add(packet, number, encode_uint(value));
}

/// A Block1 or Block2 option value (RFC 7959 §2.2): block number, more flag, size exponent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Block {
    /// The block number (20 bits).
    pub num: u32,
    /// Whether more blocks follow.
    pub more: bool,
    /// The size exponent: the block holds `16 << szx` bytes (0..=6; 7 is BERT, for TCP only).
    pub szx: u8,
}

impl Block {
    /// The largest block number a 3-byte option can carry.
    pub const MAX_NUM: u32 = (1 << 20) - 1;

    /// Decodes an option value; `None` for more than three bytes or the reserved size exponent 7.
    pub fn decode(bytes: &[u8]) -> Option<Block> {
        if bytes.len() > 3 {
            return None;
        }
        let value = uint(bytes)? as u32;
        let szx = (value & 0x7) as u8;
        if szx == 7 {
            return None;
        }
        Some(Block { num: value >> 4, more: value & 0x8 != 0, szx })
    }

    /// Encodes the option value.
    pub fn encode(self) -> Vec<u8> {
        encode_uint(u64::from((self.num << 4) | (u32::from(self.more) << 3) | u32::from(self.szx & 0x7)))
    }

    /// The block size in bytes.
    pub fn size(self) -> usize {
        16usize << self.szx
    }

    /// Where this block starts in the whole body.
    pub fn offset(self) -> usize {
        (self.num as usize).saturating_mul(self.size())
    }

    /// The size exponent of a block size (a power of two from 16 to 1024).
    pub fn szx_of(size: usize) -> u8 {
        (size.clamp(16, 1024).ilog2() - 4) as u8
    }
}

/// The request path as the hub names it: `/` and the Uri-Path segments joined with `/`. Segments must be UTF-8
/// and must not contain `/` or control characters (they would make two different requests look alike).
pub fn request_path(packet: &Packet) -> Result<String, &'static str> {
    let mut path = String::new();
    if let Some(segments) = packet.get_option(CoapOption::UriPath) {
        for segment in segments {
            let text = std::str::from_utf8(segment).map_err(|_| "a Uri-Path segment is not UTF-8")?;
            if text.contains('/') || text.chars().any(char::is_control) {
                return Err("a Uri-Path segment contains '/' or a control character");
            }
            path.push('/');
            path.push_str(text);
        }
    }
    if path.is_empty() {
        path.push('/');
    }
    Ok(path)
}

/// The Uri-Query values as text.
pub fn queries(packet: &Packet) -> Result<Vec<String>, &'static str> {
    let Some(values) = packet.get_option(CoapOption::UriQuery) else {
        return Ok(Vec::new());
    };
    values.iter().map(|v| String::from_utf8(v.clone()).map_err(|_| "a Uri-Query value is not UTF-8")).collect()
}

/// The numeric code of a message class (`2.04` is 68).
pub fn code_number(class: MessageClass) -> u8 {
    class.into()
}

/// The dotted form of a code (`4.04`).
pub fn code_text(class: MessageClass) -> String {
    class.to_string()
}

/// Whether a response code is a success (2.xx).
pub fn is_success(class: MessageClass) -> bool {
    code_number(class) >> 5 == 2
}

/// A response packet for `code` with no options yet.
pub fn response(code: ResponseType, message_type: MessageType, message_id: u16, token: &[u8]) -> Packet {
    let mut packet = Packet::new();
    packet.header.set_version(VERSION);
    packet.header.set_type(message_type);
    packet.header.message_id = message_id;
    packet.header.code = MessageClass::Response(code);
    packet.set_token(token.to_vec());
    packet
}

/// An empty message (ACK or RST) for `message_id`.
pub fn empty(message_type: MessageType, message_id: u16) -> Vec<u8> {
    let kind: u8 = match message_type {
        MessageType::Confirmable => 0,
        MessageType::NonConfirmable => 1,
        MessageType::Acknowledgement => 2,
        MessageType::Reset => 3,
    };
    let [hi, lo] = message_id.to_be_bytes();
    vec![(VERSION << 6) | (kind << 4), 0, hi, lo]
}

/// Encodes a packet the transport built (its size is bounded by the block size, so no limit applies here).
pub fn encode(packet: &Packet) -> Vec<u8> {
    // Only fails for option values longer than 65804 bytes, which the transport never builds.
    packet.to_bytes_unlimited().unwrap_or_default()
}

/// Where a device resource is: host, port, path segments and queries, from `coap://host[:port]/path[?query]` or
/// the scheme-less `//host[:port]/path[?query]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceUri {
    /// The host name or address (IPv6 without brackets).
    pub host: String,
    /// The port (5683 unless given).
    pub port: u16,
    /// The decoded path segments.
    pub path: Vec<String>,
    /// The decoded query parameters (`k=v` each).
    pub query: Vec<String>,
}

/// The default CoAP port.
pub const DEFAULT_PORT: u16 = 5683;

impl DeviceUri {
    /// Parses a device URI. `coaps://` is refused: DTLS is not implemented (see the crate documentation).
    pub fn parse(text: &str) -> Result<DeviceUri, String> {
        let full = if text.starts_with("//") { format!("coap:{text}") } else { text.to_owned() };
        let url = url::Url::parse(&full).map_err(|e| format!("{text:?} is not a URI: {e}"))?;
        match url.scheme() {
            "coap" => {}
            "coaps" => return Err(format!("{text:?}: coaps:// (DTLS) is not supported yet; use coap://")),
            other => return Err(format!("{text:?}: scheme {other:?} is not supported (use coap://)")),
        }
        if !url.username().is_empty() || url.password().is_some() {
            return Err(format!("{text:?}: a CoAP URI has no user information"));
        }
        if url.fragment().is_some() {
            return Err(format!("{text:?}: a CoAP URI has no fragment"));
        }
        let host = match url.host() {
            Some(url::Host::Ipv6(addr)) => addr.to_string(),
            Some(host) => host.to_string(),
            None => return Err(format!("{text:?} has no host")),
        };
        if host.is_empty() {
            return Err(format!("{text:?} has no host"));
        }
        let decode = |s: &str| -> Result<String, String> {
            percent_encoding::percent_decode_str(s)
                .decode_utf8()
                .map(|c| c.into_owned())
                .map_err(|_| format!("{text:?}: a path or query part is not UTF-8 once decoded"))
        };
        let mut path = Vec::new();
        if let Some(segments) = url.path_segments() {
            for segment in segments {
                if !segment.is_empty() || path.is_empty() {
                    path.push(decode(segment)?);
                }
            }
        }
        // `coap://h/` and `coap://h` both address the root: no Uri-Path option at all.
        if path.len() == 1 && path[0].is_empty() {
            path.clear();
        }
        let query = match url.query() {
            Some(q) if !q.is_empty() => q.split('&').map(decode).collect::<Result<Vec<_>, _>>()?,
            _ => Vec::new(),
        };
        Ok(DeviceUri { host, port: url.port().unwrap_or(DEFAULT_PORT), path, query })
    }

    /// The URI without its scheme, as an address plugins subscribe to and send to: `//host:port/path?query`.
    pub fn address(&self) -> String {
        let host = if self.host.contains(':') { format!("[{}]", self.host) } else { self.host.clone() };
        let mut out = format!("//{host}:{}", self.port);
        if self.path.is_empty() {
            out.push('/');
        }
        for segment in &self.path {
            out.push('/');
            out.extend(percent_encoding::utf8_percent_encode(segment, SEGMENT));
        }
        if !self.query.is_empty() {
            out.push('?');
            let parts: Vec<String> =
                self.query.iter().map(|q| percent_encoding::utf8_percent_encode(q, QUERY).to_string()).collect();
            out.push_str(&parts.join("&"));
        }
        out
    }

    /// Adds Uri-Path and Uri-Query options to `packet`.
    pub fn add_to(&self, packet: &mut Packet) {
        for segment in &self.path {
            add(packet, option::URI_PATH, segment.as_bytes().to_vec());
        }
        for q in &self.query {
            add(packet, option::URI_QUERY, q.as_bytes().to_vec());
        }
    }

    /// Resolves the host to a socket address (a DNS lookup for names).
    pub async fn resolve(&self) -> std::io::Result<SocketAddr> {
        if let Ok(ip) = self.host.parse::<std::net::IpAddr>() {
            return Ok(SocketAddr::new(ip, self.port));
        }
        tokio::net::lookup_host((self.host.as_str(), self.port))
            .await?
            .next()
            .ok_or_else(|| std::io::Error::new(std::io::ErrorKind::NotFound, format!("{} has no address", self.host)))
    }
}

/// Characters escaped in a path segment of an address.
const SEGMENT: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'/').add(b'?').add(b'<').add(b'>');
/// Characters escaped in a query parameter of an address.
const QUERY: &percent_encoding::AsciiSet =
    &percent_encoding::CONTROLS.add(b' ').add(b'"').add(b'#').add(b'%').add(b'&').add(b'<').add(b'>');

#[cfg(test)]
mod tests {
    use super::*;
    use coap_lite::RequestType;

    fn request(kind: MessageType) -> Packet {
        let mut p = Packet::new();
        p.header.set_version(1);
        p.header.set_type(kind);
        p.header.message_id = 0x1234;
        p.header.code = MessageClass::Request(RequestType::Post);
        p.set_token(vec![1, 2]);
        add(&mut p, option::URI_PATH, b"up".to_vec());
        add(&mut p, option::URI_PATH, b"a".to_vec());
        p.payload = b"21.5".to_vec();
        p
    }

    #[test]
    fn parse_accepts_a_request_and_rejects_format_errors() {
        let bytes = encode(&request(MessageType::Confirmable));
        let p = parse(&bytes).unwrap();
        assert_eq!(request_path(&p).unwrap(), "/up/a");
        assert_eq!(p.payload, b"21.5");

        let table: &[(&[u8], Option<u16>)] = &[
            (&[], None),
            (&[0x40, 0x01], None),
            (&[0x80, 0x01, 0, 1], None),                      // version 2: ignored
            (&[0x49, 0x01, 0, 1], Some(1)),                   // token length 9
            (&[0x44, 0x01, 0, 1, 1, 2], Some(1)),             // token runs past the end
            (&[0x40, 0x00, 0, 1, 0xff, 1], Some(1)),          // empty message with payload
            (&[0x40, 0x21, 0, 1], Some(1)),                   // class 1 is reserved
            (&[0x40, 0x02, 0, 1, 0xff], Some(1)),             // payload marker, no payload
            (&[0x40, 0x02, 0, 1, 0xf1, 0], Some(1)),          // delta nibble 15
            (&[0x40, 0x02, 0, 1, 0xb5, b'u', b'p'], Some(1)), // option length past the end
            (&[0x50, 0x02, 0, 1, 0xd1], None),                // NON, truncated extended delta: dropped silently
        ];
        for (bytes, reject) in table {
            let err = parse(bytes).unwrap_err();
            assert_eq!(err.reject, *reject, "{bytes:02x?}: {}", err.reason);
        }
        // An option value that ends in 0xff is not a payload marker.
        let mut p = request(MessageType::NonConfirmable);
        p.payload.clear();
        add(&mut p, option::ETAG, vec![0xff]);
        assert!(parse(&encode(&p)).is_ok());
    }

    #[test]
    fn parse_never_panics_on_random_bytes() {
        let mut seed = 0x2545_f491_4f6c_dd1du64;
        for len in 0..2000usize {
            let mut bytes = Vec::with_capacity(len % 64);
            for _ in 0..(len % 64) {
                seed ^= seed << 13;
                seed ^= seed >> 7;
                seed ^= seed << 17;
                bytes.push(seed as u8);
            }
            if let Some(b) = bytes.first_mut() {
                *b = 0x40 | (*b & 0x3f);
            }
            let _ = parse(&bytes);
        }
    }

    #[test]
    fn block_values_round_trip() {
        for block in [
            Block { num: 0, more: true, szx: 6 },
            Block { num: 5, more: false, szx: 2 },
            Block { num: Block::MAX_NUM, more: true, szx: 0 },
        ] {
            assert_eq!(Block::decode(&block.encode()), Some(block));
        }
        assert_eq!(Block::decode(&[]), Some(Block { num: 0, more: false, szx: 0 }));
        assert_eq!(Block::decode(&[0x0f]), None, "szx 7 (BERT) is for TCP");
        assert_eq!(Block::decode(&[1, 2, 3, 4]), None);
        assert_eq!(Block { num: 2, more: true, szx: 2 }.offset(), 128);
        assert_eq!(Block::szx_of(1024), 6);
        assert_eq!(Block::szx_of(16), 0);
    }

    #[test]
    fn device_uris() {
        let uri = DeviceUri::parse("coap://10.0.0.7:5684/sensors/t%20x?a=1&b=2").unwrap();
        assert_eq!(uri.host, "10.0.0.7");
        assert_eq!(uri.port, 5684);
        assert_eq!(uri.path, vec!["sensors", "t x"]);
        assert_eq!(uri.query, vec!["a=1", "b=2"]);
        assert_eq!(uri.address(), "//10.0.0.7:5684/sensors/t%20x?a=1&b=2");
        assert_eq!(DeviceUri::parse(&uri.address()).unwrap(), uri);
        let v6 = DeviceUri::parse("coap://[::1]/time").unwrap();
        assert_eq!((v6.host.as_str(), v6.port), ("::1", 5683));
        assert_eq!(v6.address(), "//[::1]:5683/time");
        assert!(DeviceUri::parse("coap://h").unwrap().path.is_empty());
        assert!(DeviceUri::parse("coap://h/").unwrap().path.is_empty());
        for bad in ["coaps://h/x", "http://h/x", "coap:///x", "coap://u@h/x", "coap://h/x#f", "x"] {
            assert!(DeviceUri::parse(bad).is_err(), "{bad}");
        }
    }
}
