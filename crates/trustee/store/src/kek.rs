//! The key-encryption key (KEK): AES-256-GCM over values at rest, with the
//! namespace and key as associated data so a sealed value cannot be moved to
//! another key.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand_core::{OsRng, RngCore};
use std::io::Write;
use std::path::{Path, PathBuf};
use zeroize::Zeroizing;

const FORMAT_V1: u8 = 1;

/// Errors loading or using the KEK.
#[derive(Debug, thiserror::Error)]
pub enum KekError {
    /// The key file cannot be read or written.
    #[error("key-encryption key file {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// The key file does not hold 32 bytes.
    #[error("key-encryption key file {0} must hold exactly 32 bytes")]
    BadLength(PathBuf),
    /// Decryption failed.
    #[error("sealed value cannot be opened")]
    Open,
}

/// The KEK. Its bytes are zeroized on drop.
pub struct Kek {
    cipher: Aes256Gcm,
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek{..}")
    }
}

/// Writes `bytes` to `path` atomically (temp file, fsync, rename) with mode 0600.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> std::io::Result<()> {
    use std::os::unix::fs::OpenOptionsExt;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!(
        ".{}.tmp{}",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("key"),
        std::process::id()
    ));
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&tmp)?;
    f.write_all(bytes)?;
    f.sync_all()?;
    std::fs::rename(&tmp, path)?;
    if let Ok(d) = std::fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

impl Kek {
    /// From raw key bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self {
            cipher: Aes256Gcm::new(bytes.into()),
        }
    }

    /// Loads the KEK from `path`, creating a random one (mode 0600) if the
    /// file does not exist. Several replicas sharing a data directory race
    /// safely: the rename is atomic and the loser re-reads the winner's key.
    pub fn load_or_create(path: &Path) -> Result<Self, KekError> {
        let io = |source| KekError::Io {
            path: path.to_path_buf(),
            source,
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        if !path.exists() {
            let mut key = Zeroizing::new([0u8; 32]);
            OsRng.fill_bytes(key.as_mut());
            // Create exclusively so two processes do not both write a key.
            match std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .open(path.with_extension("lock"))
            {
                Ok(_) => {
                    write_private_file(path, key.as_ref()).map_err(io)?;
                    let _ = std::fs::remove_file(path.with_extension("lock"));
                }
                Err(_) => {
                    for _ in 0..50 {
                        if path.exists() {
                            break;
                        }
                        std::thread::sleep(std::time::Duration::from_millis(20));
                    }
                }
            }
        }
        let bytes = Zeroizing::new(std::fs::read(path).map_err(io)?);
        let key: &[u8; 32] = bytes
            .as_slice()
            .try_into()
            .map_err(|_| KekError::BadLength(path.to_path_buf()))?;
        Ok(Self::from_bytes(key))
    }

    /// Seals `value` for storage under `ns`/`key`.
    pub fn seal(&self, ns: &str, key: &str, value: &[u8]) -> Vec<u8> {
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let aad = format!("{ns}/{key}");
        let ct = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: value,
                    aad: aad.as_bytes(),
                },
            )
            .unwrap_or_default();
        let mut out = Vec::with_capacity(1 + 12 + ct.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        out
    }

    /// Opens a value sealed by [`Kek::seal`] under the same `ns`/`key`.
    pub fn open(&self, ns: &str, key: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KekError> {
        if sealed.len() < 1 + 12 + 16 || sealed[0] != FORMAT_V1 {
            return Err(KekError::Open);
        }
        let aad = format!("{ns}/{key}");
        self.cipher
            .decrypt(
                &Nonce::from(<[u8; 12]>::try_from(&sealed[1..13]).map_err(|_| KekError::Open)?),
                Payload {
                    msg: &sealed[13..],
                    aad: aad.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| KekError::Open)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_open_and_binding() {
        let dir = std::env::temp_dir().join(format!("cocoon-kek-{}", std::process::id()));
        let path = dir.join("kek");
        let kek = Kek::load_or_create(&path).unwrap();
        let again = Kek::load_or_create(&path).unwrap();
        let sealed = kek.seal("resources", "a/b/c", b"secret");
        assert!(!sealed.windows(6).any(|w| w == b"secret"));
        assert_eq!(
            &*again.open("resources", "a/b/c", &sealed).unwrap(),
            b"secret"
        );
        assert!(
            kek.open("resources", "a/b/d", &sealed).is_err(),
            "moved value must not open"
        );
        let other = Kek::from_bytes(&[7u8; 32]);
        assert!(other.open("resources", "a/b/c", &sealed).is_err());
        let mut t = sealed.clone();
        let last = t.len() - 1;
        t[last] ^= 1;
        assert!(kek.open("resources", "a/b/c", &t).is_err());
        std::fs::remove_dir_all(dir).ok();
    }
}
