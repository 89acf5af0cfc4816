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

/// Where `path` is written before it is renamed into place.
fn staged(path: &Path) -> PathBuf {
    path.with_extension("tmp")
}

/// Writes `bytes` (mode 0600) to the staging file of `path`, durably; [`install`] puts it in
/// place.
fn stage_private(path: &Path, bytes: &[u8]) -> Result<(), NodeError> {
    let tmp = staged(path);
    let mut opts = std::fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
    let mut f = opts.open(&tmp).map_err(io(&tmp))?;
    f.write_all(bytes).map_err(io(&tmp))?;
    f.sync_all().map_err(io(&tmp))
}

/// Renames the staged file of `path` into place.
fn install(path: &Path) -> Result<(), NodeError> {
    std::fs::rename(staged(path), path).map_err(io(path))
}

/// Makes the directory's entries (renames) durable.
fn sync_dir(dir: &Path) -> Result<(), NodeError> {
    #[cfg(unix)]
    std::fs::File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io(dir))?;
    Ok(())
}

pub(crate) fn paths(data_dir: &Path) -> (PathBuf, PathBuf) {
    (
        data_dir.join("node-cert.der"),
        data_dir.join("node-key.der"),
    )
}

/// Loads the certificate from the data directory, generating it on first start.
///
/// A first start that is killed part way never leaves a directory that refuses to start: the
/// key and the certificate are both written and synced beside their final names first, then
/// renamed, key first; a start that finds the key in place and the certificate still staged
/// finishes the rename (the staged certificate was complete before the key was renamed).
pub(crate) fn load_or_create(data_dir: &Path) -> Result<(NodeCert, bool), NodeError> {
    let (cert_path, key_path) = paths(data_dir);
    if !cert_path.exists() && key_path.exists() && staged(&cert_path).exists() {
        tracing::info!(dir = %data_dir.display(), "finishing the certificate of a first start that was interrupted");
        install(&cert_path)?;
        sync_dir(data_dir)?;
    }
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
            // Both staged (and synced) before either is in place; the key goes in first. A
            // crash in between leaves the key and the staged certificate, which the next
            // start puts in place (above).
            stage_private(&key_path, &key)?;
            stage_private(&cert_path, &cert)?;
            install(&key_path)?;
            install(&cert_path)?;
            sync_dir(data_dir)?;
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_interrupted_first_start_is_finished_or_started_over() {
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = paths(dir.path());
        // Killed after both were staged and the key was renamed.
        stage_private(&key_path, b"key").unwrap();
        stage_private(&cert_path, b"cert").unwrap();
        install(&key_path).unwrap();
        let (c, created) = load_or_create(dir.path()).unwrap();
        assert!(!created);
        assert_eq!(c.cert.as_ref(), b"cert");
        assert!(!staged(&cert_path).exists());
        // Killed with only staged files: made anew.
        let dir = tempfile::tempdir().unwrap();
        let (cert_path, key_path) = paths(dir.path());
        stage_private(&key_path, b"half").unwrap();
        let (_, created) = load_or_create(dir.path()).unwrap();
        assert!(created);
        assert!(cert_path.exists() && key_path.exists());
        // A key without a certificate, staged or not, is damage: reported, not replaced.
        std::fs::remove_file(&cert_path).unwrap();
        let e = load_or_create(dir.path()).err().unwrap().to_string();
        assert!(
            e.contains("the key exists but the certificate is missing"),
            "{e}"
        );
    }
}
