//! The node's TLS identity: a self-signed certificate made on first start and kept.

use std::io::Write;
use std::path::{Path, PathBuf};

use ferry_proto::types::Fingerprint;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};

use crate::NodeError;

/// The certificate and key, with the fingerprint clients pin.
pub(crate) struct NodeCert {
    pub(crate) cert: CertificateDer<'static>,
    pub(crate) key: PrivateKeyDer<'static>,
    pub(crate) fingerprint: Fingerprint,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> NodeError + '_ {
    move |source| NodeError::Io {
        path: path.to_path_buf(),
        source,
    }
}

fn write_private(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    let tmp = path.with_extension("tmp");
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))?;
    std::fs::rename(&tmp, path).map_err(io(path))
}

pub(crate) fn paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    (
        data_dir.join("node-cert.der"),
        data_dir.join("node-key.der"),
    )
}

/// Loads the certificate from the data directory, generating it on first start.
pub(crate) fn load_or_create(data_dir: &Path) -> Result<(NodeCert, bool), NodeError> {
    let (cert_path, key_path) = paths(data_dir);
    match (cert_path.exists(), key_path.exists()) {
        (true, true) => {
            let cert = std::fs::read(&cert_path).map_err(io(&cert_path))?;
            let key = std::fs::read(&key_path).map_err(io(&key_path))?;
            if cert.is_empty() {
                return Err(NodeError::Certificate {
                    path: cert_path,
                    reason: "empty file",
                });
            }
            if key.is_empty() {
                return Err(NodeError::Certificate {
                    path: key_path,
                    reason: "empty file",
                });
            }
            let fingerprint = Fingerprint::of(&cert);
            Ok((
                NodeCert {
                    cert: CertificateDer::from(cert),
                    key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
                    fingerprint,
                },
                false,
            ))
        }
        (false, false) => {
            let certified = rcgen::generate_simple_self_signed(vec![
                "ferry.node".to_string(),
                "localhost".to_string(),
            ])?;
            let key = certified.signing_key.serialize_der();
            let cert = certified.cert.der().to_vec();
            // Key first: a crash in between leaves a key without a certificate, which the
            // next start reports instead of silently making a new identity.
            write_private(&key_path, &key)?;
            write_private(&cert_path, &cert)?;
            let fingerprint = Fingerprint::of(&cert);
            Ok((
                NodeCert {
                    cert: CertificateDer::from(cert),
                    key: PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key)),
                    fingerprint,
                },
                true,
            ))
        }
        (true, false) => Err(NodeError::Certificate {
            path: key_path,
            reason: "the certificate exists but its key is missing; restore the key, or delete \
                     node-cert.der to make a new identity (clients will then refuse the node \
                     until they forget the old fingerprint)",
        }),
        (false, true) => Err(NodeError::Certificate {
            path: cert_path,
            reason: "the key exists but the certificate is missing; restore it, or delete \
                     node-key.der to make a new identity",
        }),
    }
}
