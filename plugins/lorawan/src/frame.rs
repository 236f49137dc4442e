//! The LoRaWAN 1.0.x PHYPayload: parsing uplinks (data frames and Join-Requests) and building downlinks (data
//! frames and Join-Accepts). Parsing never panics: short, unknown or inconsistent frames are errors.
//!
//! ```text
//! PHYPayload  = MHDR(1) | MACPayload | MIC(4)           Join-Request = MHDR | JoinEUI(8) | DevEUI(8) | DevNonce(2) | MIC
//! MACPayload  = FHDR | [FPort(1) | FRMPayload]          Join-Accept  = MHDR | AppNonce(3) | NetID(3) | DevAddr(4)
//! FHDR        = DevAddr(4) | FCtrl(1) | FCnt(2) | FOpts(0..15)        | DLSettings(1) | RxDelay(1) | [CFList(16)] | MIC
//! ```
//!
//! Multi-byte fields are little-endian on the air.

use crate::crypto::{self, Dir, Key};

/// The message types of MHDR bits 7..5.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MType {
    /// 000
    JoinRequest,
    /// 001
    JoinAccept,
    /// 010
    UnconfirmedUp,
    /// 011
    UnconfirmedDown,
    /// 100
    ConfirmedUp,
    /// 101
    ConfirmedDown,
    /// 110 (rejoin in 1.1) and 111 (proprietary)
    Other,
}

impl MType {
    fn of(mhdr: u8) -> MType {
        match mhdr >> 5 {
            0 => MType::JoinRequest,
            1 => MType::JoinAccept,
            2 => MType::UnconfirmedUp,
            3 => MType::UnconfirmedDown,
            4 => MType::ConfirmedUp,
            5 => MType::ConfirmedDown,
            _ => MType::Other,
        }
    }

    fn bits(self) -> u8 {
        match self {
            MType::JoinRequest => 0,
            MType::JoinAccept => 1,
            MType::UnconfirmedUp => 2,
            MType::UnconfirmedDown => 3,
            MType::ConfirmedUp => 4,
            MType::ConfirmedDown => 5,
            MType::Other => 7,
        }
    }
}

/// FCtrl bit: the frame acknowledges the last confirmed frame of the other side.
pub const FCTRL_ACK: u8 = 0x20;
/// FCtrl bit (downlink): the network has more to send.
pub const FCTRL_FPENDING: u8 = 0x10;
/// FCtrl bit (uplink): the device asks for a downlink to confirm its ADR settings.
pub const FCTRL_ADRACKREQ: u8 = 0x40;
/// FCtrl bit: adaptive data rate.
pub const FCTRL_ADR: u8 = 0x80;

/// An uplink data frame, borrowed from the bytes it was parsed from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataUp<'a> {
    /// Confirmed (the device wants an ACK) or not.
    pub confirmed: bool,
    /// The device address.
    pub dev_addr: u32,
    /// FCtrl.
    pub fctrl: u8,
    /// The 16 low bits of the frame counter.
    pub fcnt16: u16,
    /// MAC commands piggybacked in the header.
    pub fopts: &'a [u8],
    /// The port, absent when there is no payload.
    pub fport: Option<u8>,
    /// The encrypted payload.
    pub frm_payload: &'a [u8],
    /// The MIC as received.
    pub mic: [u8; 4],
    /// MHDR to FRMPayload: what the MIC covers.
    pub msg: &'a [u8],
}

/// A Join-Request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinRequest<'a> {
    /// The JoinEUI (AppEUI in 1.0.x), as a number (the usual big-endian text form).
    pub join_eui: u64,
    /// The DevEUI.
    pub dev_eui: u64,
    /// The DevNonce.
    pub dev_nonce: u16,
    /// The MIC as received.
    pub mic: [u8; 4],
    /// MHDR to DevNonce: what the MIC covers.
    pub msg: &'a [u8],
}

/// An uplink.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Uplink<'a> {
    /// A data frame.
    Data(DataUp<'a>),
    /// A Join-Request.
    Join(JoinRequest<'a>),
}

/// Parses an uplink PHYPayload.
pub fn parse_uplink(bytes: &[u8]) -> Result<Uplink<'_>, &'static str> {
    let (&mhdr, _) = bytes.split_first().ok_or("empty frame")?;
    if mhdr & 0x03 != 0 {
        return Err("not LoRaWAN R1 (MHDR major version)");
    }
    let (msg, mic) = bytes.split_last_chunk::<4>().ok_or("shorter than its MIC")?;
    let mic = *mic;
    match MType::of(mhdr) {
        MType::JoinRequest => {
            if bytes.len() != 23 {
                return Err("a Join-Request is 23 bytes");
            }
            let eui = |at: usize| msg.get(at..at + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes);
            let (Some(join_eui), Some(dev_eui), Some(nonce)) = (eui(1), eui(9), msg.get(17..19)) else {
                return Err("a Join-Request is 23 bytes");
            };
            let dev_nonce = u16::from_le_bytes([nonce[0], nonce[1]]);
            Ok(Uplink::Join(JoinRequest { join_eui, dev_eui, dev_nonce, mic, msg }))
        }
        mtype @ (MType::UnconfirmedUp | MType::ConfirmedUp) => {
            // MHDR(1) DevAddr(4) FCtrl(1) FCnt(2)
            let Some(&[_, a0, a1, a2, a3, fctrl, c0, c1]) = msg.first_chunk::<8>() else {
                return Err("shorter than a frame header");
            };
            let fopts_len = usize::from(fctrl & 0x0F);
            let fopts = msg.get(8..8 + fopts_len).ok_or("FOpts longer than the frame")?;
            let rest = msg.get(8 + fopts_len..).unwrap_or_default();
            let (fport, frm_payload) = match rest.split_first() {
                Some((&port, payload)) => (Some(port), payload),
                None => (None, rest),
            };
            if fport == Some(0) && fopts_len > 0 {
                return Err("MAC commands in both FOpts and FPort 0");
            }
            Ok(Uplink::Data(DataUp {
                confirmed: mtype == MType::ConfirmedUp,
                dev_addr: u32::from_le_bytes([a0, a1, a2, a3]),
                fctrl,
                fcnt16: u16::from_le_bytes([c0, c1]),
                fopts,
                fport,
                frm_payload,
                mic,
                msg,
            }))
        }
        MType::JoinAccept | MType::UnconfirmedDown | MType::ConfirmedDown => Err("a downlink frame"),
        MType::Other => Err("a proprietary or unsupported frame type"),
    }
}

/// What a downlink data frame carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DataDown<'a> {
    /// Confirmed (the device must ACK) or not.
    pub confirmed: bool,
    /// The device address.
    pub dev_addr: u32,
    /// Acknowledges the device's last confirmed uplink.
    pub ack: bool,
    /// More downlinks are queued.
    pub fpending: bool,
    /// The full 32-bit downlink counter (its 16 low bits go on the air).
    pub fcnt: u32,
    /// Port and plain payload; `None` for an empty frame (a bare ACK).
    pub port_payload: Option<(u8, &'a [u8])>,
}

/// Builds a downlink data frame: encrypts the payload (AppSKey for ports 1 to 223, NwkSKey for 0) and appends the
/// MIC (NwkSKey).
pub fn build_data_down(frame: &DataDown<'_>, nwk_s_key: &Key, app_s_key: &Key) -> Vec<u8> {
    let mtype = if frame.confirmed { MType::ConfirmedDown } else { MType::UnconfirmedDown };
    let mut out = Vec::with_capacity(13 + frame.port_payload.map_or(0, |(_, p)| p.len() + 1));
    out.push(mtype.bits() << 5);
    out.extend_from_slice(&frame.dev_addr.to_le_bytes());
    let mut fctrl = 0;
    if frame.ack {
        fctrl |= FCTRL_ACK;
    }
    if frame.fpending {
        fctrl |= FCTRL_FPENDING;
    }
    out.push(fctrl);
    out.extend_from_slice(&(frame.fcnt as u16).to_le_bytes());
    if let Some((port, payload)) = frame.port_payload {
        out.push(port);
        let start = out.len();
        out.extend_from_slice(payload);
        let key = if port == 0 { nwk_s_key } else { app_s_key };
        if let Some(body) = out.get_mut(start..) {
            crypto::crypt_frm_payload(key, Dir::Down, frame.dev_addr, frame.fcnt, body);
        }
    }
    let mic = crypto::data_mic(nwk_s_key, Dir::Down, frame.dev_addr, frame.fcnt, &out);
    out.extend_from_slice(&mic);
    out
}

/// Builds an uplink data frame as a device would (for simulators, tests and benchmarks): encrypts the payload
/// and appends the MIC over the full 32-bit counter.
pub fn build_data_up(
    confirmed: bool,
    dev_addr: u32,
    fcnt: u32,
    port_payload: Option<(u8, &[u8])>,
    nwk_s_key: &Key,
    app_s_key: &Key,
) -> Vec<u8> {
    let mtype = if confirmed { MType::ConfirmedUp } else { MType::UnconfirmedUp };
    let mut out = Vec::with_capacity(13 + port_payload.map_or(0, |(_, p)| p.len() + 1));
    out.push(mtype.bits() << 5);
    out.extend_from_slice(&dev_addr.to_le_bytes());
    out.push(0);
    out.extend_from_slice(&(fcnt as u16).to_le_bytes());
    if let Some((port, payload)) = port_payload {
        out.push(port);
        let start = out.len();
        out.extend_from_slice(payload);
        let key = if port == 0 { nwk_s_key } else { app_s_key };
        if let Some(body) = out.get_mut(start..) {
            crypto::crypt_frm_payload(key, Dir::Up, dev_addr, fcnt, body);
        }
    }
    let mic = crypto::data_mic(nwk_s_key, Dir::Up, dev_addr, fcnt, &out);
    out.extend_from_slice(&mic);
    out
}

/// What a Join-Accept carries.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JoinAccept {
    /// AppNonce (JoinNonce), 24 bits.
    pub app_nonce: [u8; 3],
    /// NetID, 24 bits, little-endian as on the air.
    pub net_id: [u8; 3],
    /// The device address assigned.
    pub dev_addr: u32,
    /// RX1DROffset (bits 6..4) and RX2DataRate (bits 3..0).
    pub dl_settings: u8,
    /// RX1 delay in seconds (0 means 1).
    pub rx_delay: u8,
    /// Optional channel list (16 bytes).
    pub cf_list: Option<[u8; 16]>,
}

/// Builds an encrypted Join-Accept PHYPayload (MIC with AppKey, then the body "encrypted" with AES decryption).
pub fn build_join_accept(accept: &JoinAccept, app_key: &Key) -> Vec<u8> {
    let mut out = Vec::with_capacity(33);
    out.push(MType::JoinAccept.bits() << 5);
    out.extend_from_slice(&accept.app_nonce);
    out.extend_from_slice(&accept.net_id);
    out.extend_from_slice(&accept.dev_addr.to_le_bytes());
    out.push(accept.dl_settings);
    out.push(accept.rx_delay);
    if let Some(cf_list) = &accept.cf_list {
        out.extend_from_slice(cf_list);
    }
    let mic = crypto::join_mic(app_key, &out);
    out.extend_from_slice(&mic);
    if let Some(body) = out.get_mut(1..) {
        crypto::encrypt_join_accept(app_key, body);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_a_data_uplink() {
        let bytes = crate::hex_decode("40f17dbe4900020001954378762b11ff0d").unwrap();
        let Uplink::Data(frame) = parse_uplink(&bytes).unwrap() else { panic!("not data") };
        assert!(!frame.confirmed);
        assert_eq!(frame.dev_addr, 0x49be7df1);
        assert_eq!(frame.fcnt16, 2);
        assert_eq!(frame.fport, Some(1));
        assert_eq!(frame.frm_payload.len(), 4);
        assert_eq!(frame.mic, [0x2b, 0x11, 0xff, 0x0d]);
    }

    #[test]
    fn rejects_what_is_not_an_uplink() {
        for bad in [
            "",
            "40",
            "40f17dbe49",
            "41f17dbe4900020001954378762b11ff0d",
            "60f17dbe4900020001954378762b11ff0d",
            "e0f17dbe4900020001954378762b11ff0d",
            "0001",
            "4af17dbe4900020001954378762b11ff0d",
            "41f17dbe4901020001954378762b11ff0d",
        ] {
            let bytes = crate::hex_decode(bad).unwrap();
            assert!(parse_uplink(&bytes).is_err(), "{bad}");
        }
        // FOpts claims 15 bytes in a short frame.
        assert!(parse_uplink(&crate::hex_decode("40f17dbe490f020001954378762b11ff0d").unwrap()).is_err());
        // FOpts and FPort 0 together.
        assert!(parse_uplink(&crate::hex_decode("40f17dbe4901020002000102030405").unwrap()).is_err());
    }

    #[test]
    fn every_prefix_of_a_frame_parses_or_fails_cleanly() {
        let bytes = crate::hex_decode("80f17dbe4903020006060601954378762b11ff0d").unwrap();
        for n in 0..=bytes.len() {
            let _ = parse_uplink(&bytes[..n]);
        }
    }
}
