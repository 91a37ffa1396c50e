//! Stateless sessions: everything a session needs travels in the
//! `kbs-session-id` cookie, sealed with AES-256-GCM under a key every replica
//! shares (kept in the store, sealed with the KEK). Any replica can continue
//! any session; a forged, altered or foreign cookie does not open.

use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use cocoon_store::{Kek, Store, StoreError, ns};
use cocoon_types::jwe::SealingKey;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use zeroize::Zeroizing;

const SESSION_KEY_ID: &str = "session-key";
const AAD: &[u8] = b"cocoon-kbs-session-v1";

/// What an attested session carries.
#[derive(Serialize, Deserialize)]
pub struct Attested {
    /// The EAR token issued for this session.
    pub token: String,
    /// Token expiry (Unix seconds).
    pub token_exp: i64,
    /// How resources are sealed to the TEE key.
    pub sealing: SealingKey,
}

/// Session state.
#[derive(Serialize, Deserialize)]
pub struct Session {
    /// The challenge nonce.
    pub nonce: String,
    /// TEE name.
    pub tee: String,
    /// Expiry (Unix seconds); the cookie carries the same time.
    pub exp: i64,
    /// Set once attestation succeeded.
    pub attested: Option<Attested>,
}

/// Seals and opens session cookies.
pub struct SessionSealer {
    cipher: Aes256Gcm,
}

/// Why a cookie did not open.
#[derive(Debug, PartialEq, Eq)]
pub enum OpenError {
    /// Not ours, or altered.
    Invalid,
    /// Ours, but past its expiry.
    Expired,
}

impl SessionSealer {
    /// Loads (or creates, once for all replicas) the session key.
    pub fn load_or_create(store: &Arc<dyn Store>, kek: &Kek) -> Result<Self, StoreError> {
        if store.get(ns::KEYS, SESSION_KEY_ID)?.is_none() {
            let mut k = Zeroizing::new([0u8; 32]);
            OsRng.fill_bytes(k.as_mut());
            store.put_if_absent(
                ns::KEYS,
                SESSION_KEY_ID,
                &kek.seal(ns::KEYS, SESSION_KEY_ID, k.as_ref()),
            )?;
        }
        let sealed = store
            .get(ns::KEYS, SESSION_KEY_ID)?
            .ok_or_else(|| StoreError::Backend("session key vanished".into()))?;
        let key = kek
            .open(ns::KEYS, SESSION_KEY_ID, &sealed)
            .map_err(|_| StoreError::Unseal(format!("{}/{SESSION_KEY_ID}", ns::KEYS)))?;
        let cipher = Aes256Gcm::new_from_slice(&key)
            .map_err(|_| StoreError::Unseal(SESSION_KEY_ID.into()))?;
        Ok(Self { cipher })
    }

    /// Seals a session into a cookie value.
    pub fn seal(&self, s: &Session) -> String {
        let plain = Zeroizing::new(serde_json::to_vec(s).unwrap_or_default());
        let mut nonce = [0u8; 12];
        OsRng.fill_bytes(&mut nonce);
        let ct = self
            .cipher
            .encrypt(
                &Nonce::from(nonce),
                Payload {
                    msg: &plain,
                    aad: AAD,
                },
            )
            .unwrap_or_default();
        let mut raw = Vec::with_capacity(12 + ct.len());
        raw.extend_from_slice(&nonce);
        raw.extend_from_slice(&ct);
        B64URL.encode(raw)
    }

    /// Opens a cookie value, checking its expiry against `now`.
    pub fn open(&self, cookie: &str, now: i64) -> Result<Session, OpenError> {
        let raw = B64URL.decode(cookie).map_err(|_| OpenError::Invalid)?;
        if raw.len() < 12 + 16 {
            return Err(OpenError::Invalid);
        }
        let plain = Zeroizing::new(
            self.cipher
                .decrypt(
                    &Nonce::from(<[u8; 12]>::try_from(&raw[..12]).map_err(|_| OpenError::Invalid)?),
                    Payload {
                        msg: &raw[12..],
                        aad: AAD,
                    },
                )
                .map_err(|_| OpenError::Invalid)?,
        );
        let s: Session = serde_json::from_slice(&plain).map_err(|_| OpenError::Invalid)?;
        if s.exp <= now {
            return Err(OpenError::Expired);
        }
        Ok(s)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_store::SqliteStore;

    #[test]
    fn round_trip_forgery_and_expiry() {
        let dir = tempfile::tempdir().unwrap();
        let store: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir.path().join("db")).unwrap());
        let kek = Kek::from_bytes(&[1; 32]);
        let a = SessionSealer::load_or_create(&store, &kek).unwrap();
        let b = SessionSealer::load_or_create(&store, &kek).unwrap();
        let c = a.seal(&Session {
            nonce: "n".into(),
            tee: "sample".into(),
            exp: 100,
            attested: None,
        });
        assert_eq!(
            b.open(&c, 50).unwrap().nonce,
            "n",
            "a replica sharing the store opens it"
        );
        assert_eq!(b.open(&c, 100).err(), Some(OpenError::Expired));
        let mut raw = B64URL.decode(&c).unwrap();
        raw[20] ^= 1;
        assert_eq!(
            a.open(&B64URL.encode(raw), 50).err(),
            Some(OpenError::Invalid)
        );
        assert_eq!(a.open("not-base64!", 50).err(), Some(OpenError::Invalid));
        let dir2 = tempfile::tempdir().unwrap();
        let other: Arc<dyn Store> = Arc::new(SqliteStore::open(&dir2.path().join("db")).unwrap());
        let foreign = SessionSealer::load_or_create(&other, &kek).unwrap();
        assert_eq!(foreign.open(&c, 50).err(), Some(OpenError::Invalid));
    }
}
