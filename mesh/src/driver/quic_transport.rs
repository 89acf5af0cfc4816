//! Links over plain QUIC (quinn), for the lite build that leaves iroh out.
//!
//! Both ends authenticate with their node key the way iroh does: TLS 1.3 with raw public keys
//! (RFC 7250), the "certificate" being the Ed25519 SubjectPublicKeyInfo, so the node id is the
//! key that signed the handshake. The dialler checks that the server's key is the node it meant
//! to reach; the listener requires a client key and takes it as the peer's node id.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::{Signer as _, SigningKey, Verifier as _};
use ferry_proto::limits::ALPN_MESH;
use ferry_proto::types::NodeId;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls13_signature_with_raw_key};
use rustls::pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, ServerName,
    SignatureVerificationAlgorithm, SubjectPublicKeyInfoDer, UnixTime, alg_id,
};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};

use super::transport::{
    BoxFut, IDLE_TIMEOUT, Incoming, KEEP_ALIVE, Link, Reader, Transport, TransportError, Writer,
};

/// How long a handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// The Ed25519 SPKI of `key`: this is the raw-public-key "certificate".
fn spki(key: &[u8; 32]) -> Vec<u8> {
    rustls::sign::public_key_to_spki(&alg_id::ED25519, key).to_vec()
}

/// The node id a raw-public-key certificate names, if it is an Ed25519 SPKI.
fn node_of_spki(cert: &[u8]) -> Option<NodeId> {
    let prefix_len = cert.len().checked_sub(32)?;
    let key: [u8; 32] = cert.get(prefix_len..)?.try_into().ok()?;
    (spki(&key) == cert).then(|| NodeId::from_array(key))
}

#[derive(Debug)]
struct Ed25519Verify;

impl SignatureVerificationAlgorithm for Ed25519Verify {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        let key: [u8; 32] = public_key.try_into().map_err(|_| InvalidSignature)?;
        let key = ed25519_dalek::VerifyingKey::from_bytes(&key).map_err(|_| InvalidSignature)?;
        let sig = ed25519_dalek::Signature::from_slice(signature).map_err(|_| InvalidSignature)?;
        key.verify(message, &sig).map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ED25519
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::ED25519
    }

    fn fips(&self) -> bool {
        false
    }
}

static ED25519: Ed25519Verify = Ed25519Verify;
static ALGS: WebPkiSupportedAlgorithms = WebPkiSupportedAlgorithms {
    all: &[&ED25519],
    mapping: &[(SignatureScheme::ED25519, &[&ED25519])],
};

fn verify_sig(
    message: &[u8],
    cert: &CertificateDer<'_>,
    dss: &DigitallySignedStruct,
) -> Result<HandshakeSignatureValid, rustls::Error> {
    verify_tls13_signature_with_raw_key(
        message,
        &SubjectPublicKeyInfoDer::from(cert.as_ref()),
        dss,
        &ALGS,
    )
}

/// Accepts exactly the server key of the node being dialled (`Some`), or any node key, to
/// learn who answers at an address (`None`, see [`identify`]).
#[derive(Debug)]
struct ExpectPeer(Option<NodeId>);

impl ServerCertVerifier for ExpectPeer {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let found = node_of_spki(end_entity);
        let ok = match self.0 {
            Some(want) => found == Some(want),
            None => found.is_some(),
        };
        if !intermediates.is_empty() || !ok {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_sig(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ALGS.supported_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// Requires a client key; any Ed25519 key is a node id (which peers are welcome is the mesh
/// core's decision, not the handshake's).
#[derive(Debug)]
struct AnyNode;

impl ClientCertVerifier for AnyNode {
    fn offer_client_auth(&self) -> bool {
        true
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        if !intermediates.is_empty() || node_of_spki(end_entity).is_none() {
            return Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ));
        }
        Ok(ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_sig(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        ALGS.supported_schemes()
    }

    fn requires_raw_public_keys(&self) -> bool {
        true
    }
}

/// The node key as a rustls signing key.
#[derive(Debug)]
struct NodeKey(SigningKey);

impl rustls::sign::SigningKey for NodeKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        offered
            .contains(&SignatureScheme::ED25519)
            .then(|| Box::new(NodeSigner(self.0.clone())) as Box<dyn rustls::sign::Signer>)
    }

    fn algorithm(&self) -> rustls::SignatureAlgorithm {
        rustls::SignatureAlgorithm::ED25519
    }

    fn public_key(&self) -> Option<SubjectPublicKeyInfoDer<'_>> {
        Some(SubjectPublicKeyInfoDer::from(spki(
            self.0.verifying_key().as_bytes(),
        )))
    }
}

#[derive(Debug)]
struct NodeSigner(SigningKey);

impl rustls::sign::Signer for NodeSigner {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        Ok(self.0.sign(message).to_bytes().to_vec())
    }

    fn scheme(&self) -> SignatureScheme {
        SignatureScheme::ED25519
    }
}

/// Presents the node key as a raw public key, as client and as server.
#[derive(Debug)]
struct RawKey(Arc<CertifiedKey>);

impl rustls::client::ResolvesClientCert for RawKey {
    fn resolve(
        &self,
        _root_hint_subjects: &[&[u8]],
        _sigschemes: &[SignatureScheme],
    ) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn only_raw_public_keys(&self) -> bool {
        true
    }

    fn has_certs(&self) -> bool {
        true
    }
}

impl rustls::server::ResolvesServerCert for RawKey {
    fn resolve(&self, _hello: rustls::server::ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(Arc::clone(&self.0))
    }

    fn only_raw_public_keys(&self) -> bool {
        true
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn transport_config() -> Arc<quinn::TransportConfig> {
    let mut t = quinn::TransportConfig::default();
    t.keep_alive_interval(Some(KEEP_ALIVE))
        .max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(4u32.into());
    if let Ok(idle) = quinn::IdleTimeout::try_from(IDLE_TIMEOUT) {
        t.max_idle_timeout(Some(idle));
    }
    Arc::new(t)
}

fn tls_err(e: impl std::fmt::Display) -> TransportError {
    TransportError::Bind(format!("TLS setup: {e}"))
}

/// A quinn endpoint speaking the mesh ALPN with raw-public-key TLS.
#[derive(Debug, Clone)]
pub struct QuicTransport {
    endpoint: quinn::Endpoint,
    me: NodeId,
    key: Arc<RawKey>,
}

impl QuicTransport {
    /// Binds on `addr` with the node's secret key.
    pub fn bind(secret: [u8; 32], addr: SocketAddr) -> Result<Self, TransportError> {
        let socket = std::net::UdpSocket::bind(addr)
            .map_err(|e| TransportError::Bind(format!("{addr}: {e}")))?;
        Self::bind_socket(secret, socket)
    }

    /// Like [`QuicTransport::bind`], on a socket the caller bound (and sized) itself.
    pub fn bind_socket(
        secret: [u8; 32],
        socket: std::net::UdpSocket,
    ) -> Result<Self, TransportError> {
        let addr = socket
            .local_addr()
            .map_err(|e| TransportError::Bind(e.to_string()))?;
        let me = NodeId::from_array(SigningKey::from_bytes(&secret).verifying_key().to_bytes());
        let key = raw_key(&secret);
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])
            .map_err(tls_err)?
            .with_client_cert_verifier(Arc::new(AnyNode))
            .with_cert_resolver(Arc::clone(&key) as Arc<dyn rustls::server::ResolvesServerCert>);
        tls.alpn_protocols = vec![ALPN_MESH.to_vec()];
        let quic = quinn::crypto::rustls::QuicServerConfig::try_from(tls).map_err(tls_err)?;
        let mut server = quinn::ServerConfig::with_crypto(Arc::new(quic));
        server.transport_config(transport_config());
        let endpoint = quinn::Endpoint::new(
            endpoint_config(&secret[..]),
            Some(server),
            socket,
            Arc::new(quinn::TokioRuntime),
        )
        .map_err(|e| TransportError::Bind(format!("{addr}: {e}")))?;
        Ok(Self { endpoint, me, key })
    }

    fn client_config(&self, peer: NodeId) -> Result<quinn::ClientConfig, TransportError> {
        client_config(&self.key, Some(peer))
    }
}

/// Connection ids and stateless-reset tokens keyed by a secret the node keeps (its node key;
/// for the client listener, its certificate key), so they survive a restart: when a node is
/// killed and comes back, the first packet a peer or client sends on its old connection is
/// recognised as one of ours and answered with a reset the other side accepts, and it
/// reconnects at once instead of waiting out the idle timeout. (With quinn's per-process
/// random keys the new process drops such packets as carrying an invalid connection id.)
pub fn endpoint_config(secret: &[u8]) -> quinn::EndpointConfig {
    let derive = |label: &[u8]| {
        let mut ctx = ring::digest::Context::new(&ring::digest::SHA256);
        ctx.update(label);
        ctx.update(secret);
        ctx.finish()
    };
    let reset = derive(b"ferry quic stateless reset key v1");
    let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, reset.as_ref());
    let cid = derive(b"ferry quic connection id key v1");
    let cid_key = cid
        .as_ref()
        .first_chunk::<8>()
        .map(|b| u64::from_le_bytes(*b))
        .unwrap_or_default();
    let mut cfg = quinn::EndpointConfig::new(Arc::new(key));
    cfg.cid_generator(move || {
        Box::new(quinn_proto::HashedConnectionIdGenerator::from_key(cid_key))
            as Box<dyn quinn::ConnectionIdGenerator>
    });
    cfg
}

fn raw_key(secret: &[u8; 32]) -> Arc<RawKey> {
    let signing = SigningKey::from_bytes(secret);
    let public = signing.verifying_key().to_bytes();
    let certified = CertifiedKey::new(
        vec![CertificateDer::from(spki(&public))],
        Arc::new(NodeKey(signing)),
    );
    Arc::new(RawKey(Arc::new(certified)))
}

fn client_config(
    key: &Arc<RawKey>,
    peer: Option<NodeId>,
) -> Result<quinn::ClientConfig, TransportError> {
    let mut tls = rustls::ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(tls_err)?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(ExpectPeer(peer)))
        .with_client_cert_resolver(Arc::clone(key) as Arc<dyn rustls::client::ResolvesClientCert>);
    tls.alpn_protocols = vec![ALPN_MESH.to_vec()];
    let quic = quinn::crypto::rustls::QuicClientConfig::try_from(tls).map_err(tls_err)?;
    let mut c = quinn::ClientConfig::new(Arc::new(quic));
    c.transport_config(transport_config());
    Ok(c)
}

/// Learns the node id of whatever mesh node answers at `addr` (a static peer configured as
/// plain `host:port`): a handshake that accepts any node key, then a polite close. Works
/// against iroh nodes too. The answer is trusted on first use, like the operator's config.
pub async fn identify(secret: [u8; 32], addr: SocketAddr) -> Result<NodeId, TransportError> {
    let err = |reason: String| TransportError::Link(format!("identifying {addr}: {reason}"));
    let bind: SocketAddr = if addr.is_ipv4() {
        SocketAddr::from(([0, 0, 0, 0], 0))
    } else {
        SocketAddr::from(([0u16; 8], 0))
    };
    let endpoint = quinn::Endpoint::client(bind).map_err(|e| err(e.to_string()))?;
    let cfg = client_config(&raw_key(&secret), None)?;
    let connecting = endpoint
        .connect_with(cfg, addr, "ferry")
        .map_err(|e| err(e.to_string()))?;
    let result = match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
        Ok(Ok(conn)) => {
            let peer = peer_of(&conn);
            conn.close(0u32.into(), b"identified");
            peer.ok_or_else(|| err("no node key".into()))
        }
        Ok(Err(e)) => Err(err(e.to_string())),
        Err(_) => Err(err("handshake timed out".into())),
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), endpoint.wait_idle()).await;
    result
}

struct QuicLink {
    conn: quinn::Connection,
    peer: NodeId,
}

/// The node id the handshake authenticated.
fn peer_of(conn: &quinn::Connection) -> Option<NodeId> {
    let any = conn.peer_identity()?;
    let certs = any.downcast::<Vec<CertificateDer<'static>>>().ok()?;
    node_of_spki(certs.first()?)
}

impl Link for QuicLink {
    fn peer(&self) -> NodeId {
        self.peer
    }

    fn remote_addr(&self) -> Option<SocketAddr> {
        Some(self.conn.remote_address())
    }

    fn open_uni(&self) -> BoxFut<'_, Result<Writer, TransportError>> {
        Box::pin(async move {
            let s = self
                .conn
                .open_uni()
                .await
                .map_err(|e| TransportError::Link(e.to_string()))?;
            Ok(Box::new(s) as Writer)
        })
    }

    fn accept_uni(&self) -> BoxFut<'_, Result<Reader, TransportError>> {
        Box::pin(async move {
            let s = self
                .conn
                .accept_uni()
                .await
                .map_err(|e| TransportError::Link(e.to_string()))?;
            Ok(Box::new(s) as Reader)
        })
    }

    fn rtt(&self) -> Duration {
        self.conn.rtt()
    }

    fn heard(&self) -> u64 {
        self.conn.stats().udp_rx.datagrams
    }

    fn close(&self, reason: &str) {
        self.conn.close(0u32.into(), reason.as_bytes());
    }

    fn closed(&self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            let _ = self.conn.closed().await;
        })
    }
}

impl Transport for QuicTransport {
    fn node_id(&self) -> NodeId {
        self.me
    }

    fn local_addrs(&self) -> Vec<SocketAddr> {
        self.endpoint.local_addr().into_iter().collect()
    }

    fn connect(
        &self,
        peer: NodeId,
        addrs: Vec<SocketAddr>,
    ) -> BoxFut<'_, Result<Box<dyn Link>, TransportError>> {
        Box::pin(async move {
            let err = |reason: String| TransportError::Connect { peer, reason };
            let cfg = self.client_config(peer)?;
            let mut last = "no address".to_string();
            // Addresses of the family the endpoint cannot reach are skipped by the dial error.
            for addr in addrs {
                let connecting = match self.endpoint.connect_with(cfg.clone(), addr, "ferry") {
                    Ok(c) => c,
                    Err(e) => {
                        last = format!("{addr}: {e}");
                        continue;
                    }
                };
                match tokio::time::timeout(HANDSHAKE_TIMEOUT, connecting).await {
                    Ok(Ok(conn)) => {
                        return Ok(Box::new(QuicLink { conn, peer }) as Box<dyn Link>);
                    }
                    Ok(Err(e)) => last = format!("{addr}: {e}"),
                    Err(_) => last = format!("{addr}: handshake timed out"),
                }
            }
            Err(err(last))
        })
    }

    fn accept(&self) -> BoxFut<'_, Option<Incoming>> {
        Box::pin(async move {
            let incoming = self.endpoint.accept().await?;
            let handshake: Incoming = Box::pin(async move {
                let conn = match tokio::time::timeout(HANDSHAKE_TIMEOUT, incoming).await {
                    Ok(Ok(c)) => c,
                    Ok(Err(e)) => return Err(TransportError::Link(e.to_string())),
                    Err(_) => return Err(TransportError::Link("handshake timed out".into())),
                };
                let Some(peer) = peer_of(&conn) else {
                    conn.close(0u32.into(), b"no node key");
                    return Err(TransportError::Link("peer presented no node key".into()));
                };
                Ok(Box::new(QuicLink { conn, peer }) as Box<dyn Link>)
            });
            Some(handshake)
        })
    }

    fn close(&self) -> BoxFut<'_, ()> {
        Box::pin(async move {
            self.endpoint.close(0u32.into(), b"node shutting down");
            let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spki_roundtrip_and_refusals() {
        let key = [7u8; 32];
        let s = spki(&key);
        assert_eq!(s.len(), 44);
        assert_eq!(node_of_spki(&s), Some(NodeId::from_array(key)));
        assert_eq!(node_of_spki(&s[1..]), None);
        let mut bad = s.clone();
        bad[3] ^= 1;
        assert_eq!(node_of_spki(&bad), None);
        assert_eq!(node_of_spki(&[]), None);
    }
}
