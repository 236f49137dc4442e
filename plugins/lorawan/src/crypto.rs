//! LoRaWAN 1.0.x cryptography on AES-128 (RustCrypto `aes`) and AES-CMAC (`cmac`): message integrity codes,
//! FRMPayload encryption, the Join-Accept "encryption", and session key derivation.

use aes::Aes128;
use aes::cipher::{BlockDecrypt, BlockEncrypt, KeyInit, generic_array::GenericArray};
use cmac::{Cmac, Mac};
use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// An AES-128 key. Its `Debug` form never shows the bytes, so a key cannot leak through a log line.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Key(pub [u8; 16]);

impl std::fmt::Debug for Key {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Key(..)")
    }
}

impl Key {
    /// Parses 32 hex digits.
    pub fn from_hex(text: &str) -> Option<Key> {
        let bytes = crate::hex_decode(text)?;
        Some(Key(bytes.try_into().ok()?))
    }
}

// Keys are kept in the plugin's state (hex); never in updates, logs or errors.
impl Serialize for Key {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&crate::hex_encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Key {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        Key::from_hex(&text).ok_or_else(|| serde::de::Error::custom("a key is 32 hex digits"))
    }
}

/// The direction of a data frame, as the B0 and A blocks encode it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dir {
    /// Device to network.
    Up = 0,
    /// Network to device.
    Down = 1,
}

fn cipher(key: &Key) -> Aes128 {
    Aes128::new(GenericArray::from_slice(&key.0))
}

/// AES-128 encryption of one block.
pub fn aes_encrypt(key: &Key, block: [u8; 16]) -> [u8; 16] {
    let mut b = GenericArray::from(block);
    cipher(key).encrypt_block(&mut b);
    b.into()
}

/// AES-128 decryption of one block.
pub fn aes_decrypt(key: &Key, block: [u8; 16]) -> [u8; 16] {
    let mut b = GenericArray::from(block);
    cipher(key).decrypt_block(&mut b);
    b.into()
}

/// The first four bytes of AES-CMAC over the concatenation of `parts`.
pub fn cmac4(key: &Key, parts: &[&[u8]]) -> [u8; 4] {
    // `new_from_slice` only fails for a wrong key length, and a Key is always 16 bytes.
    let Ok(mut mac) = <Cmac<Aes128> as Mac>::new_from_slice(&key.0) else {
        return [0; 4];
    };
    for part in parts {
        mac.update(part);
    }
    let tag = mac.finalize().into_bytes();
    [tag[0], tag[1], tag[2], tag[3]]
}

/// The B0 / Ai block shared by the MIC and the payload cipher: `first | 0^4 | dir | DevAddr | FCnt | 0 | last`.
fn block(first: u8, dir: Dir, dev_addr: u32, fcnt: u32, last: u8) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[0] = first;
    b[5] = dir as u8;
    b[6..10].copy_from_slice(&dev_addr.to_le_bytes());
    b[10..14].copy_from_slice(&fcnt.to_le_bytes());
    b[15] = last;
    b
}

/// The MIC of a data frame: `aes128_cmac(NwkSKey, B0 | msg)[0..4]`, `msg` being MHDR to FRMPayload.
pub fn data_mic(key: &Key, dir: Dir, dev_addr: u32, fcnt: u32, msg: &[u8]) -> [u8; 4] {
    // A PHYPayload is at most 255 bytes, so its length fits B0's one-byte field.
    let b0 = block(0x49, dir, dev_addr, fcnt, msg.len() as u8);
    cmac4(key, &[&b0, msg])
}

/// Encrypts or decrypts (the same operation) an FRMPayload in place with the A-block key stream.
pub fn crypt_frm_payload(key: &Key, dir: Dir, dev_addr: u32, fcnt: u32, payload: &mut [u8]) {
    let aes = cipher(key);
    for (i, chunk) in payload.chunks_mut(16).enumerate() {
        let mut a = GenericArray::from(block(0x01, dir, dev_addr, fcnt, (i + 1) as u8));
        aes.encrypt_block(&mut a);
        for (byte, k) in chunk.iter_mut().zip(a.iter()) {
            *byte ^= k;
        }
    }
}

/// The MIC of a Join-Request or Join-Accept: `aes128_cmac(AppKey, msg)[0..4]`.
pub fn join_mic(app_key: &Key, msg: &[u8]) -> [u8; 4] {
    cmac4(app_key, &[msg])
}

/// "Encrypts" a Join-Accept body (everything after MHDR, MIC included; 16 or 32 bytes) with AES *decryption*,
/// so the device only needs AES encryption to read it.
pub fn encrypt_join_accept(app_key: &Key, body: &mut [u8]) {
    let aes = cipher(app_key);
    for chunk in body.chunks_exact_mut(16) {
        aes.decrypt_block(GenericArray::from_mut_slice(chunk));
    }
}

/// The session keys of a 1.0.x join: `aes128_encrypt(AppKey, 0x01|0x02 | AppNonce | NetID | DevNonce | pad16)`.
pub fn derive_session_keys(app_key: &Key, app_nonce: [u8; 3], net_id: [u8; 3], dev_nonce: u16) -> (Key, Key) {
    let input = |kind: u8| {
        let mut b = [0u8; 16];
        b[0] = kind;
        b[1..4].copy_from_slice(&app_nonce);
        b[4..7].copy_from_slice(&net_id);
        b[7..9].copy_from_slice(&dev_nonce.to_le_bytes());
        b
    };
    (Key(aes_encrypt(app_key, input(0x01))), Key(aes_encrypt(app_key, input(0x02))))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(hex: &str) -> Key {
        Key::from_hex(hex).unwrap()
    }

    #[test]
    fn aes_and_cmac_match_the_published_vectors() {
        // FIPS-197 appendix C.1.
        let k = key("000102030405060708090a0b0c0d0e0f");
        let plain: [u8; 16] = crate::hex_decode("00112233445566778899aabbccddeeff").unwrap().try_into().unwrap();
        let cipher = aes_encrypt(&k, plain);
        assert_eq!(crate::hex_encode(&cipher), "69c4e0d86a7b0430d8cdb78070b4c55a");
        assert_eq!(aes_decrypt(&k, cipher), plain);
        // RFC 4493 examples 1 and 2.
        let k = key("2b7e151628aed2a6abf7158809cf4f3c");
        assert_eq!(cmac4(&k, &[]), [0xbb, 0x1d, 0x69, 0x29]);
        let m = crate::hex_decode("6bc1bee22e409f96e93d7e117393172a").unwrap();
        assert_eq!(cmac4(&k, &[&m]), [0x07, 0x0a, 0x16, 0xb4]);
        assert_eq!(cmac4(&k, &[&m[..5], &m[5..]]), [0x07, 0x0a, 0x16, 0xb4], "parts are concatenated");
    }

    #[test]
    fn keys_never_print() {
        let k = key("2b7e151628aed2a6abf7158809cf4f3c");
        assert_eq!(format!("{k:?}"), "Key(..)");
        assert!(Key::from_hex("2b7e").is_none());
        assert!(Key::from_hex("zz7e151628aed2a6abf7158809cf4f3c").is_none());
    }

    #[test]
    fn payload_cipher_is_its_own_inverse() {
        let k = key("ec925802ae430ca77fd3dd73cb2cc588");
        let mut data = *b"a payload longer than one AES block";
        crypt_frm_payload(&k, Dir::Up, 0x49be7df1, 2, &mut data);
        assert_ne!(&data, b"a payload longer than one AES block");
        crypt_frm_payload(&k, Dir::Up, 0x49be7df1, 2, &mut data);
        assert_eq!(&data, b"a payload longer than one AES block");
    }
}
