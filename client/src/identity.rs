//! A user's identity: an Ed25519 signing key (the identity everyone addresses) and a hybrid
//! decryption key (X25519 + ML-KEM-768) for end-to-end encryption.
//!
//! On disk it is a small JSON document holding the three seeds, written with mode 0600 via a
//! temporary file and a rename, so a crash never leaves half a key behind.

use std::io::Write;
use std::path::{Path, PathBuf};

use ed25519_dalek::{Signer, SigningKey};
use ferry_proto::limits::MLKEM768_EK_LEN;
use ferry_proto::types::{Fingerprint, HybridPublicKey, IdentityKey};
use ml_kem::{DecapsulationKey, KeyExport, MlKem768, Seed};
use serde::{Deserialize, Serialize};
use x25519_dalek::{PublicKey as XPublic, StaticSecret};
use zeroize::Zeroizing;

use crate::ClientError;

const FORMAT: &str = "ferry-identity-v1";

/// A user identity with its secret keys.
pub struct Identity {
    signing: SigningKey,
    x25519: StaticSecret,
    mlkem_seed: Zeroizing<[u8; 64]>,
    mlkem: DecapsulationKey<MlKem768>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Identity({})", self.public_key())
    }
}

#[derive(Serialize, Deserialize)]
struct IdentityFile {
    format: String,
    public_key: String,
    ed25519_seed: String,
    x25519_secret: String,
    mlkem768_seed: String,
}

fn hex(b: &[u8]) -> String {
    data_encoding::HEXLOWER.encode(b)
}

fn unhex<const N: usize>(
    s: &str,
    path: &Path,
    what: &str,
) -> Result<Zeroizing<[u8; N]>, ClientError> {
    let bad = || ClientError::Identity {
        path: path.to_path_buf(),
        reason: format!("{what} is not {N} bytes of hex"),
    };
    let v = Zeroizing::new(
        data_encoding::HEXLOWER_PERMISSIVE
            .decode(s.as_bytes())
            .map_err(|_| bad())?,
    );
    let arr: [u8; N] = v.as_slice().try_into().map_err(|_| bad())?;
    Ok(Zeroizing::new(arr))
}

impl Identity {
    /// A new random identity.
    pub fn generate() -> Result<Self, ClientError> {
        let ed = Zeroizing::new(crate::random::<32>()?);
        let x = Zeroizing::new(crate::random::<32>()?);
        let k = Zeroizing::new(crate::random::<64>()?);
        Ok(Self::from_seeds(&ed, &x, &k))
    }

    /// Rebuilds an identity from its seeds.
    pub fn from_seeds(ed25519: &[u8; 32], x25519: &[u8; 32], mlkem768: &[u8; 64]) -> Self {
        let mlkem = DecapsulationKey::<MlKem768>::from_seed(Seed::from(*mlkem768));
        Self {
            signing: SigningKey::from_bytes(ed25519),
            x25519: StaticSecret::from(*x25519),
            mlkem_seed: Zeroizing::new(*mlkem768),
            mlkem,
        }
    }

    /// The public identity key: what others address messages to.
    pub fn public_key(&self) -> IdentityKey {
        IdentityKey::from_array(self.signing.verifying_key().to_bytes())
    }

    /// SHA-256 of the public key.
    pub fn fingerprint(&self) -> Fingerprint {
        self.public_key().fingerprint()
    }

    /// The hybrid public key others encrypt to: X25519 public key then ML-KEM-768 key.
    pub fn hybrid_public_key(&self) -> HybridPublicKey {
        let ek: [u8; MLKEM768_EK_LEN] = self.mlkem.encapsulation_key().to_bytes().into();
        HybridPublicKey::from_parts(XPublic::from(&self.x25519).as_bytes(), &ek)
    }

    /// Signs bytes with the identity key.
    pub fn sign(&self, msg: &[u8]) -> [u8; 64] {
        self.signing.sign(msg).to_bytes()
    }

    pub(crate) fn x25519(&self) -> &StaticSecret {
        &self.x25519
    }

    pub(crate) fn mlkem(&self) -> &DecapsulationKey<MlKem768> {
        &self.mlkem
    }

    /// `$XDG_CONFIG_HOME/ferry`, or `~/.config/ferry`, or `./.ferry` without a home.
    pub fn config_dir() -> PathBuf {
        if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(x).join("ferry");
        }
        if let Some(h) = std::env::var_os("HOME").filter(|v| !v.is_empty()) {
            return PathBuf::from(h).join(".config").join("ferry");
        }
        PathBuf::from(".ferry")
    }

    /// Where `ferry id new` writes by default.
    pub fn default_path() -> PathBuf {
        Self::config_dir().join("identity.json")
    }

    /// Writes the identity with mode 0600, atomically. Refuses to overwrite an existing file.
    pub fn save(&self, path: &Path) -> Result<(), ClientError> {
        let io = |source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        };
        let exists = || ClientError::Identity {
            path: path.to_path_buf(),
            reason: "already exists; refusing to overwrite an identity".into(),
        };
        if path.exists() {
            return Err(exists());
        }
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let file = IdentityFile {
            format: FORMAT.into(),
            public_key: self.public_key().to_hex(),
            ed25519_seed: hex(self.signing.as_bytes()),
            x25519_secret: hex(self.x25519.as_bytes()),
            mlkem768_seed: hex(self.mlkem_seed.as_slice()),
        };
        let json = Zeroizing::new(serde_json::to_vec_pretty(&file).map_err(|e| {
            ClientError::Identity {
                path: path.to_path_buf(),
                reason: e.to_string(),
            }
        })?);
        let tmp = path.with_extension("tmp");
        {
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create_new(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let mut f = opts.open(&tmp).map_err(io)?;
            f.write_all(&json).map_err(io)?;
            f.sync_all().map_err(io)?;
        }
        // Publish without replacing: a link fails if another save got there first, where the
        // `exists()` check above leaves a window in which two saves both pass it and the
        // second rename would silently replace an identity already handed out.
        let published = match std::fs::hard_link(&tmp, path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Err(exists()),
            // A filesystem without hard links: rename, guarded by the check above only.
            Err(_) => std::fs::rename(&tmp, path).map_err(io),
        };
        // Gone already after a rename.
        let _ = std::fs::remove_file(&tmp);
        published
    }

    /// Reads an identity file and checks it is consistent.
    pub fn load(path: &Path) -> Result<Self, ClientError> {
        let bytes = Zeroizing::new(std::fs::read(path).map_err(|source| ClientError::Io {
            path: path.to_path_buf(),
            source,
        })?);
        let f: IdentityFile =
            serde_json::from_slice(&bytes).map_err(|e| ClientError::Identity {
                path: path.to_path_buf(),
                reason: format!("not an identity file: {e}"),
            })?;
        if f.format != FORMAT {
            return Err(ClientError::Identity {
                path: path.to_path_buf(),
                reason: format!("unknown format {:?}", f.format),
            });
        }
        let ed = unhex::<32>(&f.ed25519_seed, path, "ed25519_seed")?;
        let x = unhex::<32>(&f.x25519_secret, path, "x25519_secret")?;
        let k = unhex::<64>(&f.mlkem768_seed, path, "mlkem768_seed")?;
        let id = Self::from_seeds(&ed, &x, &k);
        if id.public_key().to_hex() != f.public_key.to_ascii_lowercase() {
            return Err(ClientError::Identity {
                path: path.to_path_buf(),
                reason: "public_key does not match the secret key (file damaged?)".into(),
            });
        }
        Ok(id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn save_load_roundtrip_with_private_mode() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub").join("id.json");
        let id = Identity::generate().unwrap();
        id.save(&path).unwrap();
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        let back = Identity::load(&path).unwrap();
        assert_eq!(back.public_key(), id.public_key());
        assert_eq!(back.hybrid_public_key(), id.hybrid_public_key());
        assert!(matches!(id.save(&path), Err(ClientError::Identity { .. })));
    }

    /// Two programs creating the default identity at once: one wins, the other is refused,
    /// and the file holds the winner's key (never replaced under it).
    #[test]
    fn concurrent_saves_never_replace_an_identity() {
        let dir = tempfile::tempdir().unwrap();
        for round in 0..20 {
            let path = dir.path().join(format!("id-{round}.json"));
            let start = std::sync::Barrier::new(4);
            let saved: Vec<_> = std::thread::scope(|s| {
                let handles: Vec<_> = (0..4)
                    .map(|_| {
                        let (path, start) = (&path, &start);
                        s.spawn(move || {
                            let id = Identity::generate().unwrap();
                            start.wait();
                            id.save(path).ok().map(|()| id.public_key())
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .filter_map(|h| h.join().unwrap())
                    .collect()
            });
            assert_eq!(
                saved.len(),
                1,
                "round {round}: {} saves succeeded",
                saved.len()
            );
            assert_eq!(Identity::load(&path).unwrap().public_key(), saved[0]);
            assert!(!path.with_extension("tmp").exists());
        }
    }

    #[test]
    fn damaged_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("id.json");
        let id = Identity::generate().unwrap();
        id.save(&path).unwrap();
        let text = std::fs::read_to_string(&path).unwrap();
        let other = Identity::generate().unwrap().public_key().to_hex();
        let swapped = text.replace(&id.public_key().to_hex(), &other);
        std::fs::write(&path, swapped).unwrap();
        assert!(
            Identity::load(&path)
                .unwrap_err()
                .to_string()
                .contains("does not match")
        );
        std::fs::write(&path, "{}").unwrap();
        assert!(Identity::load(&path).is_err());
        std::fs::write(&path, b"\xff\xfe").unwrap();
        assert!(Identity::load(&path).is_err());
    }
}
