//! The datagram layer under the CoAP endpoint: the seam where DTLS (or another secure channel) goes.
//!
//! The server and the client speak CoAP over a [`DatagramSocket`]; today that is a plain tokio UDP socket. A
//! DTLS 1.2/1.3 implementation (RFC 7252 §9, "coaps") would implement this trait: it would run the handshakes
//! per peer, hand up decrypted CoAP messages from `recv_from` and encrypt in `send_to`. The peer identity the
//! handshake proves (a PSK identity or a certificate) would then become the device's credential instead of the
//! `token` query, through [`crate::DeviceAuth`].

use std::io;
use std::net::SocketAddr;

use async_trait::async_trait;

/// A socket that carries one CoAP message per datagram.
#[async_trait]
pub trait DatagramSocket: Send + Sync + 'static {
    /// Receives one message into `buf`; returns its length and sender. Must be cancel-safe (the endpoints call it
    /// inside `select!`).
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)>;
    /// Sends one message to `peer`.
    async fn send_to(&self, buf: &[u8], peer: SocketAddr) -> io::Result<usize>;
    /// The local address.
    fn local_addr(&self) -> io::Result<SocketAddr>;
}

#[async_trait]
impl DatagramSocket for tokio::net::UdpSocket {
    async fn recv_from(&self, buf: &mut [u8]) -> io::Result<(usize, SocketAddr)> {
        tokio::net::UdpSocket::recv_from(self, buf).await
    }

    async fn send_to(&self, buf: &[u8], peer: SocketAddr) -> io::Result<usize> {
        tokio::net::UdpSocket::send_to(self, buf, peer).await
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        tokio::net::UdpSocket::local_addr(self)
    }
}
