//! UDP sockets for QUIC endpoints, with a receive buffer sized for bursts.
//!
//! Linux gives a UDP socket a 212,992-byte receive buffer unless asked otherwise. A node with
//! 50 busy clients overflows it: on loopback the node's socket dropped about one datagram in
//! sixteen, and each drop cost QUIC a retransmission, a congestion-window cut and, for the
//! last packet of a burst, a probe timeout of tens of milliseconds (docs/benchmarks.md,
//! "The UDP receive buffer"). Every QUIC endpoint Ferry opens asks for more with [`bind_udp`].

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::sync::Arc;

/// The receive buffer a QUIC endpoint asks for unless configured otherwise: 2 MiB. Only
/// datagrams waiting to be read take it (none on an idle node).
pub const DEFAULT_RECV_BUFFER: usize = 2 * 1024 * 1024;

/// A bound UDP socket and the receive buffer it got.
#[derive(Debug)]
pub struct BoundUdp {
    /// The socket.
    pub socket: UdpSocket,
    /// Bytes of receive buffer the socket got, in the units it was asked in (Linux reports
    /// twice as much, its bookkeeping included; this is half of that there).
    pub recv_buffer: usize,
}

impl BoundUdp {
    /// Whether the socket got less receive buffer than `asked` for (Linux caps what an
    /// unprivileged process gets at `net.core.rmem_max`).
    pub fn capped(&self, asked: usize) -> bool {
        self.recv_buffer < asked
    }

    /// A quinn endpoint on this socket, with the tokio runtime: a server if `server` is
    /// given, otherwise a client-only endpoint.
    pub fn endpoint(
        self,
        config: quinn::EndpointConfig,
        server: Option<quinn::ServerConfig>,
    ) -> io::Result<quinn::Endpoint> {
        quinn::Endpoint::new(config, server, self.socket, Arc::new(quinn::TokioRuntime))
    }
}

/// Binds `addr` and asks for a receive buffer of `bytes` (0 keeps the system default).
///
/// Where the system caps the buffer below that (Linux: `net.core.rmem_max`), a process with
/// `CAP_NET_ADMIN` (root, as procd runs the node on OpenWrt) still gets it through
/// `SO_RCVBUFFORCE`; any other keeps what the cap allows ([`BoundUdp::capped`] tells). A
/// smaller buffer is not an error: bursts just lose more datagrams to retransmit.
pub fn bind_udp(addr: SocketAddr, bytes: usize) -> io::Result<BoundUdp> {
    let socket = UdpSocket::bind(addr)?;
    let sock = socket2::SockRef::from(&socket);
    if bytes > 0 {
        // Best effort, see above: what the socket got is read back below.
        let _ = sock.set_recv_buffer_size(bytes);
        #[cfg(any(target_os = "linux", target_os = "android"))]
        if granted(sock.recv_buffer_size()?) < bytes {
            let _ = rustix::net::sockopt::set_socket_recv_buffer_size_force(&socket, bytes);
        }
    }
    let recv_buffer = granted(sock.recv_buffer_size()?);
    Ok(BoundUdp {
        socket,
        recv_buffer,
    })
}

/// The usable bytes of a reported receive buffer size.
fn granted(reported: usize) -> usize {
    if cfg!(any(target_os = "linux", target_os = "android")) {
        reported / 2
    } else {
        reported
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn loopback() -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], 0))
    }

    /// What the kernel lets an unprivileged socket have here.
    fn rmem_max() -> Option<usize> {
        std::fs::read_to_string("/proc/sys/net/core/rmem_max")
            .ok()?
            .trim()
            .parse()
            .ok()
    }

    #[test]
    fn a_socket_gets_the_buffer_it_asks_for() {
        // 200,000 bytes is under Linux's default cap (212,992), so any process gets it, and
        // over what a socket has by default (212,992 reported, 106,496 usable).
        let asked = 200_000;
        let default = bind_udp(loopback(), 0).unwrap();
        let b = bind_udp(loopback(), asked).unwrap();
        assert!(b.recv_buffer >= asked, "{} < {asked}", b.recv_buffer);
        assert!(!b.capped(asked));
        assert!(default.recv_buffer < asked, "{}", default.recv_buffer);
    }

    #[test]
    fn above_the_cap_a_socket_gets_it_forced_or_reports_the_cap() {
        let asked = 64 * 1024 * 1024;
        let b = bind_udp(loopback(), asked).unwrap();
        match rmem_max() {
            // Root (this test as CI runs it) forces past the cap; others get the cap.
            Some(max) if max < asked => assert!(
                b.recv_buffer >= asked || b.recv_buffer == max,
                "{} (rmem_max {max})",
                b.recv_buffer
            ),
            _ => assert!(b.recv_buffer >= asked),
        }
        assert_eq!(b.capped(asked), b.recv_buffer < asked);
    }

    #[tokio::test]
    async fn the_endpoint_works_on_the_socket() {
        let b = bind_udp(loopback(), DEFAULT_RECV_BUFFER).unwrap();
        let addr = b.socket.local_addr().unwrap();
        let e = b.endpoint(quinn::EndpointConfig::default(), None).unwrap();
        assert_eq!(e.local_addr().unwrap(), addr);
    }
}
