//! Which node certificates to trust. Nodes use self-signed certificates; clients pin them.
//!
//! With [`Trust::KnownNodes`], the first connection to a node records its certificate
//! fingerprint in a file (one `node fingerprint` pair per line, like SSH's `known_hosts`), and
//! every later connection must present the same certificate or is refused.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use ferry_proto::types::Fingerprint;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{CertificateError, DigitallySignedStruct, SignatureScheme};

use crate::{ClientError, Identity};

/// How to decide whether a node's certificate is the right one.
#[derive(Clone, Debug)]
pub enum Trust {
    /// Accept exactly this certificate (for example the fingerprint `ferry status` printed on
    /// the node, or one advertised by discovery).
    Pinned(Fingerprint),
    /// Trust on first use, remembering nodes in this file.
    KnownNodes(PathBuf),
}

impl Trust {
    /// `known_nodes` in the Ferry config directory.
    pub fn default_known_nodes() -> PathBuf {
        Identity::config_dir().join("known_nodes")
    }
}

/// The parsed known-nodes file.
#[derive(Debug, Default)]
pub struct KnownNodes {
    entries: Vec<(String, Fingerprint)>,
}

/// Serialises pinning within this process: a pin re-reads the file under it, so concurrent
/// first connections to one node record the node once.
static PIN_LOCK: Mutex<()> = Mutex::new(());

impl KnownNodes {
    pub(crate) fn load(path: &Path) -> Result<Self, ClientError> {
        Self::read(path).map(|(known, _)| known)
    }

    /// The parsed file, and whether it is empty or ends with a newline.
    fn read(path: &Path) -> Result<(Self, bool), ClientError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Self::default(), true));
            }
            Err(source) => {
                return Err(ClientError::Io {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let malformed = |n: usize, reason: String| ClientError::KnownNodes {
            path: path.to_path_buf(),
            reason: format!("line {}: {reason}", n + 1),
        };
        let mut entries = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut parts = line.split_whitespace();
            let (Some(name), Some(fp), None) = (parts.next(), parts.next(), parts.next()) else {
                return Err(malformed(n, "expected `node fingerprint`".into()));
            };
            let fp = fp
                .parse::<Fingerprint>()
                .map_err(|e| malformed(n, e.to_string()))?;
            entries.push((name.to_string(), fp));
        }
        let terminated = text.is_empty() || text.ends_with('\n');
        Ok((Self { entries }, terminated))
    }

    pub(crate) fn get(&self, node: &str) -> Option<Fingerprint> {
        self.entries
            .iter()
            .find(|(n, _)| n == node)
            .map(|(_, fp)| *fp)
    }

    /// Removes `node`'s entry (like `ssh-keygen -R`): the next connection pins what it finds.
    /// Returns the fingerprint that was pinned, if any. The file is rewritten whole (beside
    /// itself, then renamed); its comments and other entries stay.
    pub fn forget(path: &Path, node: &str) -> Result<Option<Fingerprint>, ClientError> {
        let _guard = PIN_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (known, _) = Self::read(path)?;
        let Some(fp) = known.get(node) else {
            return Ok(None);
        };
        let io = |source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        };
        let text = std::fs::read_to_string(path).map_err(io)?;
        let kept: String = text
            .lines()
            .filter(|l| l.split_whitespace().next() != Some(node))
            .map(|l| format!("{l}\n"))
            .collect();
        let tmp = path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        f.write_all(kept.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, path).map_err(io)?;
        Ok(Some(fp))
    }

    /// Records `fp` as `node`'s certificate, unless the file has an entry for `node` by now
    /// (another connection got there first): then that entry is returned and nothing written.
    pub(crate) fn pin(
        path: &Path,
        node: &str,
        fp: &Fingerprint,
    ) -> Result<Option<Fingerprint>, ClientError> {
        let _guard = PIN_LOCK
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let (known, terminated) = Self::read(path)?;
        if let Some(existing) = known.get(node) {
            return Ok(Some(existing));
        }
        let io = |source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(path)
            .map_err(io)?;
        // The whole line in one write: appends by other processes land before or after it,
        // never inside it (`writeln!` on a `File` writes each piece separately).
        let sep = if terminated { "" } else { "\n" };
        f.write_all(format!("{sep}{node} {fp}\n").as_bytes())
            .map_err(io)?;
        f.sync_all().map_err(io)?;
        Ok(None)
    }
}

/// Accepts a certificate by fingerprint (or any, when capturing for trust on first use), and
/// still checks the TLS 1.3 handshake signature, so only the holder of the key gets in.
#[derive(Debug)]
pub(crate) struct PinVerifier {
    expected: Option<Fingerprint>,
    seen: Mutex<Option<Fingerprint>>,
    provider: Arc<CryptoProvider>,
}

impl PinVerifier {
    pub(crate) fn new(expected: Option<Fingerprint>, provider: Arc<CryptoProvider>) -> Self {
        Self {
            expected,
            seen: Mutex::new(None),
            provider,
        }
    }

    pub(crate) fn seen(&self) -> Option<Fingerprint> {
        self.seen.lock().ok().and_then(|g| *g)
    }
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let fp = Fingerprint::of(end_entity.as_ref());
        if let Ok(mut seen) = self.seen.lock() {
            *seen = Some(fp);
        }
        match self.expected {
            Some(e) if e != fp => Err(rustls::Error::InvalidCertificate(
                CertificateError::ApplicationVerificationFailure,
            )),
            _ => Ok(ServerCertVerified::assertion()),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls13RequiredForQuic,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_nodes_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("k");
        assert!(KnownNodes::load(&path).unwrap().get("a:1").is_none());
        let fp = Fingerprint::of(b"cert");
        assert_eq!(KnownNodes::pin(&path, "a:1", &fp).unwrap(), None);
        let other = Fingerprint::of(b"other");
        assert_eq!(KnownNodes::pin(&path, "b:2", &other).unwrap(), None);
        // A node is pinned once: a second pin returns what the file holds.
        assert_eq!(KnownNodes::pin(&path, "a:1", &other).unwrap(), Some(fp));
        let k = KnownNodes::load(&path).unwrap();
        assert_eq!(k.get("a:1"), Some(fp));
        assert_eq!(k.get("b:2"), Some(other));
        // A file edited by hand without a final newline gets one before the next entry.
        std::fs::write(&path, format!("a:1 {fp}")).unwrap();
        KnownNodes::pin(&path, "c:3", &other).unwrap();
        let k = KnownNodes::load(&path).unwrap();
        assert_eq!((k.get("a:1"), k.get("c:3")), (Some(fp), Some(other)));
        std::fs::write(&path, "# comment\n\na:1 nonsense\n").unwrap();
        let err = KnownNodes::load(&path).unwrap_err().to_string();
        assert!(
            err.contains("known-nodes file") && err.contains("line 3"),
            "{err}"
        );
    }

    /// Many first connections at once (a client opening several connections to a new node)
    /// each pin the node while the others read the file: every read parses.
    #[test]
    fn concurrent_first_connections_keep_the_file_readable() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("known_nodes");
        let fp = Fingerprint::of(b"cert");
        std::thread::scope(|s| {
            for i in 0..16 {
                let path = &path;
                s.spawn(move || {
                    for j in 0..50 {
                        let node = format!("node-{}.example:{}", i % 4, 7000 + j % 5);
                        let known = KnownNodes::load(path).unwrap();
                        if known.get(&node).is_none() {
                            KnownNodes::pin(path, &node, &fp).unwrap();
                        }
                    }
                });
            }
        });
        let known = KnownNodes::load(&path).unwrap();
        // Each node once, even though many threads found it missing at the same time.
        assert_eq!(known.entries.len(), 20);
        for i in 0..4 {
            for j in 0..5 {
                assert_eq!(
                    known.get(&format!("node-{i}.example:{}", 7000 + j)),
                    Some(fp)
                );
            }
        }
    }
}
