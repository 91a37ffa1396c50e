//! The key-encryption key (KEK): AES-256-GCM over values at rest, with the
//! namespace and key as associated data so a sealed value cannot be moved to
//! another key. The key is a file (the default) or lives in a PKCS#11 token
//! ([`crate::pkcs11`]); sealed values have the same format either way.

use crate::pkcs11::{Pkcs11Uri, TokenKek};
use crate::private_file::create_private_file;
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use rand_core::{OsRng, RngCore};
use std::io::Read;
use std::os::unix::fs::PermissionsExt;
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
    /// Group or others have access to the key file.
    #[error(
        "key-encryption key file {path} has mode {mode:04o}: group or others may read it. \
         Run `chmod 600 {path}` (and consider whether the key has leaked)",
        path = path.display()
    )]
    TooOpen {
        /// The file.
        path: PathBuf,
        /// Its permission bits.
        mode: u32,
    },
    /// Decryption failed.
    #[error("sealed value cannot be opened")]
    Open,
    /// The PKCS#11 token or its URI.
    #[error("PKCS#11 key-encryption key: {0}")]
    Token(String),
}

/// The KEK. A file key's expanded AES key schedule is wiped on drop (the
/// `zeroize` feature of `aes`); a token's key never leaves the token.
pub struct Kek {
    inner: Inner,
}

enum Inner {
    // Boxed: the expanded key schedules are about a kilobyte.
    File(Box<Aes256Gcm>),
    Token(TokenKek),
}

impl std::fmt::Debug for Kek {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Kek{..}")
    }
}

impl Kek {
    /// From raw key bytes.
    pub fn from_bytes(bytes: &[u8; 32]) -> Self {
        Self {
            inner: Inner::File(Box::new(Aes256Gcm::new(bytes.into()))),
        }
    }

    /// The key in a PKCS#11 token named by `uri` (RFC 7512), created there
    /// (sensitive, not extractable) when the token has none of that label.
    pub fn from_pkcs11_uri(uri: &str) -> Result<Self, KekError> {
        let uri = Pkcs11Uri::parse(uri)?;
        Ok(Self {
            inner: Inner::Token(TokenKek::open(&uri)?),
        })
    }

    /// Whether the key lives in a token.
    pub fn is_in_token(&self) -> bool {
        matches!(self.inner, Inner::Token(_))
    }

    /// Loads the KEK from `path`, creating a random one (mode 0600) if the
    /// file does not exist. Several replicas starting at once on a shared
    /// data directory agree: exactly one creates the key, the others read it.
    pub fn load_or_create(path: &Path) -> Result<Self, KekError> {
        match Self::load(path) {
            Err(KekError::Io { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {}
            loaded => return loaded,
        }
        let mut key = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(key.as_mut());
        let created = create_private_file(path, key.as_ref()).map_err(|source| KekError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        if created {
            tracing::info!(path = %path.display(), "created a new key-encryption key");
            return Ok(Self::from_bytes(&key));
        }
        // Another process created it between our read and our create.
        Self::load(path)
    }

    /// Loads the KEK from `path`, refusing a file that group or others can
    /// access.
    pub fn load(path: &Path) -> Result<Self, KekError> {
        let io = |source| KekError::Io {
            path: path.to_path_buf(),
            source,
        };
        let mut f = std::fs::File::open(path).map_err(io)?;
        // fstat on the open file: the mode checked is the mode of what is read.
        let mode = f.metadata().map_err(io)?.permissions().mode() & 0o7777;
        if mode & 0o077 != 0 {
            return Err(KekError::TooOpen {
                path: path.to_path_buf(),
                mode,
            });
        }
        // A fixed buffer (one byte more than a key, to detect a longer file)
        // so no reallocation leaves a copy of the key behind.
        let mut buf = Zeroizing::new([0u8; 33]);
        let mut len = 0;
        while len < buf.len() {
            match f.read(&mut buf[len..]) {
                Ok(0) => break,
                Ok(n) => len += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(io(e)),
            }
        }
        let key: &[u8; 32] = buf[..len]
            .try_into()
            .map_err(|_| KekError::BadLength(path.to_path_buf()))?;
        Ok(Self::from_bytes(key))
    }

    /// Seals `value` for storage under `ns`/`key`. Fails only when a token
    /// cannot be reached.
    pub fn seal(&self, ns: &str, key: &str, value: &[u8]) -> Result<Vec<u8>, KekError> {
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let aad = format!("{ns}/{key}");
        let ct = match &self.inner {
            Inner::File(cipher) => cipher
                .encrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: value,
                        aad: aad.as_bytes(),
                    },
                )
                .map_err(|_| KekError::Open)?,
            Inner::Token(t) => {
                let (used, ct) = t.encrypt(&nonce, aad.as_bytes(), value)?;
                nonce = used;
                ct
            }
        };
        let mut out = Vec::with_capacity(1 + 12 + ct.len());
        out.push(FORMAT_V1);
        out.extend_from_slice(&nonce);
        out.extend_from_slice(&ct);
        Ok(out)
    }

    /// Opens a value sealed by [`Kek::seal`] under the same `ns`/`key`.
    pub fn open(&self, ns: &str, key: &str, sealed: &[u8]) -> Result<Zeroizing<Vec<u8>>, KekError> {
        if sealed.len() < 1 + 12 + 16 || sealed[0] != FORMAT_V1 {
            return Err(KekError::Open);
        }
        let aad = format!("{ns}/{key}");
        let nonce = <[u8; 12]>::try_from(&sealed[1..13]).map_err(|_| KekError::Open)?;
        match &self.inner {
            Inner::File(cipher) => cipher
                .decrypt(
                    &Nonce::from(nonce),
                    Payload {
                        msg: &sealed[13..],
                        aad: aad.as_bytes(),
                    },
                )
                .map(Zeroizing::new)
                .map_err(|_| KekError::Open),
            Inner::Token(t) => t.decrypt(&nonce, aad.as_bytes(), &sealed[13..]),
        }
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
        let sealed = kek.seal("resources", "a/b/c", b"secret").unwrap();
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

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn refuses_a_key_file_others_can_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.key");
        let kek = Kek::load_or_create(&path).unwrap();
        assert_eq!(mode(&path), 0o600);
        let sealed = kek.seal("ns", "k", b"v").unwrap();
        for bad in [0o644, 0o640, 0o604, 0o660] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(bad)).unwrap();
            let e = Kek::load_or_create(&path).unwrap_err().to_string();
            assert!(e.contains(&path.display().to_string()), "{e}");
            assert!(e.contains(&format!("{bad:04o}")), "{e}");
            assert!(e.contains(&format!("chmod 600 {}", path.display())), "{e}");
        }
        for good in [0o600, 0o400] {
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(good)).unwrap();
            let again = Kek::load_or_create(&path).unwrap();
            assert_eq!(&*again.open("ns", "k", &sealed).unwrap(), b"v");
        }
    }

    #[test]
    fn refuses_a_key_of_the_wrong_length() {
        let dir = tempfile::tempdir().unwrap();
        for len in [0usize, 31, 33, 64] {
            let path = dir.path().join(format!("kek{len}"));
            crate::private_file::create_private_file(&path, &vec![1u8; len]).unwrap();
            assert!(matches!(
                Kek::load_or_create(&path),
                Err(KekError::BadLength(_))
            ));
        }
    }

    #[test]
    fn a_stale_lock_file_does_not_block_start_up() {
        // A process that died while creating the key must not leave a file
        // that stops every later start.
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("kek.key");
        std::fs::write(path.with_extension("lock"), b"").unwrap();
        Kek::load_or_create(&path).unwrap();
        assert_eq!(std::fs::read(&path).unwrap().len(), 32);
    }

    #[test]
    fn replicas_starting_at_once_share_one_key() {
        for round in 0..20 {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("kek.key");
            let barrier = std::sync::Arc::new(std::sync::Barrier::new(8));
            let keks: Vec<Kek> = (0..8)
                .map(|_| {
                    let (path, barrier) = (path.clone(), barrier.clone());
                    std::thread::spawn(move || {
                        barrier.wait();
                        Kek::load_or_create(&path).unwrap()
                    })
                })
                .collect::<Vec<_>>()
                .into_iter()
                .map(|h| h.join().unwrap())
                .collect();
            let sealed = keks[0].seal("ns", "k", b"v").unwrap();
            for k in &keks {
                assert!(k.open("ns", "k", &sealed).is_ok(), "round {round}");
            }
            assert_eq!(mode(&path), 0o600);
            assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 1);
        }
    }

    #[test]
    fn key_schedules_are_wiped_on_drop() {
        fn zeroized_on_drop<T: zeroize::ZeroizeOnDrop>() {}
        // The AES key schedule inside Aes256Gcm (and in aes-kw and ctr users).
        zeroized_on_drop::<aes::Aes256>();
        zeroized_on_drop::<aes::Aes128>();
        zeroized_on_drop::<aes::Aes256Enc>();
    }
}
