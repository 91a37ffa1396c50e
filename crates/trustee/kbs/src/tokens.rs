//! Attestation tokens presented with resource requests, verified before
//! use whichever way they arrive (the session cookie or a Bearer header):
//! a sealed cookie is only as trustworthy as the session key, so its token
//! is checked against the token signer too. Resources are sealed to the
//! TEE key the verified token names, never to one the cookie carries, so
//! a forged cookie cannot redirect a release to a key of its own.
//!
//! A token's signature is verified, and the key agreement with its TEE key
//! done, once per replica; later requests with the same token bytes reuse
//! them until the token expires. Likewise a session cookie is opened once:
//! later requests with the same cookie bytes find its token by digest, as
//! long as the key that sealed the cookie still opens cookies.

use cocoon_attestation::tee_pubkey_from_claims;
use cocoon_attestation::token::{TokenError, TokenSigner};
use cocoon_types::jwe::SealingKey;
use parking_lot::RwLock;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// Tokens remembered at most.
const CAPACITY: usize = 16_384;
/// Token text remembered at most, in bytes (tokens are bounded, but a
/// replica should not hold more than this whatever they hold).
const CAPACITY_BYTES: usize = 64 << 20;

/// Why a presented token is not used.
#[derive(Debug, thiserror::Error)]
pub enum TokenRefused {
    /// Not this trustee's, altered, malformed or expired.
    #[error(transparent)]
    Invalid(#[from] TokenError),
    /// It names no TEE key resources could be sealed to.
    #[error("the token names no usable TEE key: {0}")]
    NoTeeKey(String),
}

/// A verified token: its claims, its identity for caches, and the key
/// resources released under it are sealed to.
#[derive(Clone)]
pub struct VerifiedToken {
    /// SHA-256 of the whole token text.
    pub digest: [u8; 32],
    /// The token's claims.
    pub claims: Arc<Value>,
    /// `exp`, Unix seconds.
    pub exp: i64,
    /// Sealing to the TEE key in the claims (agreement done).
    pub sealing: Arc<SealingKey>,
    /// Length of the token text, for the cache's bound.
    len: usize,
}

/// Verified tokens by the digest of their text.
#[derive(Default)]
pub struct VerifiedTokens {
    map: RwLock<(HashMap<[u8; 32], VerifiedToken>, usize)>,
}

impl VerifiedTokens {
    /// Verifies `token` with `signer` at `now`, or finds it verified before.
    /// The key is the digest of the *whole* token, so claims that differ
    /// from the ones whose signature was checked never hit the cache.
    pub fn verify(
        &self,
        signer: &TokenSigner,
        token: &str,
        now: i64,
    ) -> Result<VerifiedToken, TokenRefused> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(t) = self.map.read().0.get(&digest) {
            if t.exp <= now {
                return Err(TokenError::Expired(t.exp).into());
            }
            return Ok(t.clone());
        }
        let claims = signer.verify(token, now)?;
        let key = tee_pubkey_from_claims(&claims)
            .ok_or_else(|| TokenRefused::NoTeeKey("no tee-pubkey".into()))?;
        let sealing = SealingKey::new(&key).map_err(|e| TokenRefused::NoTeeKey(e.to_string()))?;
        Ok(self.insert(digest, token.len(), claims, sealing, now))
    }

    /// The token with this digest, if verified before and not expired.
    pub fn get(&self, digest: &[u8; 32], now: i64) -> Option<VerifiedToken> {
        self.map
            .read()
            .0
            .get(digest)
            .filter(|t| t.exp > now)
            .cloned()
    }

    /// Remembers a token this trustee just signed, with the sealing it
    /// already agreed (so the session's first fetch costs no verification).
    pub fn remember(
        &self,
        token: &str,
        claims: Value,
        sealing: SealingKey,
        now: i64,
    ) -> VerifiedToken {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        self.insert(digest, token.len(), claims, sealing, now)
    }

    fn insert(
        &self,
        digest: [u8; 32],
        len: usize,
        claims: Value,
        sealing: SealingKey,
        now: i64,
    ) -> VerifiedToken {
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(now);
        let t = VerifiedToken {
            digest,
            claims: Arc::new(claims),
            exp,
            sealing: Arc::new(sealing),
            len,
        };
        // What is evicted is freed after the lock is released: dropping
        // thousands of claim trees must not hold up the readers.
        let mut evicted: Vec<VerifiedToken> = Vec::new();
        let mut guard = self.map.write();
        let (map, bytes) = &mut *guard;
        if map.len() >= CAPACITY || *bytes + len > CAPACITY_BYTES {
            evicted.extend(map.extract_if(|_, v| v.exp <= now).map(|(_, v)| v));
            *bytes = map.values().map(|v| v.len).sum();
            if map.len() >= CAPACITY || *bytes + len > CAPACITY_BYTES {
                evicted.extend(map.drain().map(|(_, v)| v));
                *bytes = 0;
            }
        }
        if let Some(old) = map.insert(digest, t.clone()) {
            *bytes -= old.len;
            evicted.push(old);
        }
        *bytes += len;
        drop(guard);
        drop(evicted);
        t
    }
}

/// What an opened, attested session cookie gave.
#[derive(Clone)]
struct OpenedCookie {
    /// Session expiry.
    exp: i64,
    /// The TEE the session attested as.
    tee: Arc<str>,
    /// Digest of the session's token, for [`VerifiedTokens::get`].
    token: [u8; 32],
}

/// Attested session cookies opened before, by the digest of their text.
/// Entries are small (the token lives in [`VerifiedTokens`]); the map is
/// bounded by count.
#[derive(Default)]
pub struct OpenedCookies {
    map: RwLock<HashMap<[u8; 32], OpenedCookie>>,
}

impl OpenedCookies {
    /// Digest a cookie is remembered under.
    pub fn digest(cookie: &str) -> [u8; 32] {
        Sha256::digest(cookie.as_bytes()).into()
    }

    /// The session TEE and the token digest of a cookie opened before, if
    /// neither the session nor its token has expired at `now`.
    pub fn get(&self, digest: &[u8; 32], now: i64) -> Option<(Arc<str>, [u8; 32])> {
        let map = self.map.read();
        let c = map.get(digest).filter(|c| c.exp > now)?;
        Some((c.tee.clone(), c.token))
    }

    /// Remembers an opened cookie whose token verified.
    pub fn insert(&self, digest: [u8; 32], exp: i64, tee: &str, token: [u8; 32], now: i64) {
        let mut map = self.map.write();
        if map.len() >= CAPACITY {
            map.retain(|_, c| c.exp > now);
            if map.len() >= CAPACITY {
                map.clear();
            }
        }
        map.insert(
            digest,
            OpenedCookie {
                exp,
                tee: tee.into(),
                token,
            },
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cocoon_types::jwe::TeeKeyPair;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    use serde_json::json;

    fn signer() -> TokenSigner {
        let pk =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        TokenSigner::from_pkcs8(pk.as_ref()).unwrap()
    }

    fn claims(exp: i64, a: i64, key: &TeeKeyPair) -> Value {
        json!({"exp": exp, "a": a, "submods": {"cpu0": {"ear.veraison.annotated-evidence":
            {"runtime_data_claims": {"tee-pubkey": key.public_jwk()}}}}})
    }

    /// A forged payload with a real token's signature is refused even after
    /// the real token was verified and cached; expiry holds on cache hits.
    #[test]
    fn cache_never_vouches_for_other_bytes() {
        let s = signer();
        let cache = VerifiedTokens::default();
        let key = TeeKeyPair::generate_ec();
        let t = s.sign(&claims(200, 1, &key)).unwrap();
        assert_eq!(cache.verify(&s, &t, 100).unwrap().claims["a"], 1);
        assert_eq!(cache.verify(&s, &t, 150).unwrap().claims["a"], 1);
        let parts: Vec<&str> = t.split('.').collect();
        let payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            claims(200, 2, &key).to_string(),
        );
        let forged = format!("{}.{payload}.{}", parts[0], parts[2]);
        assert!(matches!(
            cache.verify(&s, &forged, 100),
            Err(TokenRefused::Invalid(TokenError::Signature))
        ));
        assert!(matches!(
            cache.verify(&s, &t, 200),
            Err(TokenRefused::Invalid(TokenError::Expired(200)))
        ));
        // Another trustee's token does not verify here.
        assert!(matches!(
            cache.verify(&signer(), &s.sign(&claims(300, 3, &key)).unwrap(), 100),
            Err(TokenRefused::Invalid(TokenError::Signature))
        ));
        // A token without a TEE key is no use for a release.
        let bare = s.sign(&json!({"exp": 300})).unwrap();
        assert!(matches!(
            cache.verify(&s, &bare, 100),
            Err(TokenRefused::NoTeeKey(_))
        ));
    }

    /// The cache's memory is bounded by bytes as well as by count.
    #[test]
    fn cache_is_bounded() {
        let s = signer();
        let cache = VerifiedTokens::default();
        let key = TeeKeyPair::generate_ec();
        let big = "x".repeat(CAPACITY_BYTES / 8);
        for i in 0..20 {
            let mut c = claims(1000, i, &key);
            c["pad"] = json!(big);
            cache.verify(&s, &s.sign(&c).unwrap(), 10).unwrap();
            assert!(cache.map.read().1 <= CAPACITY_BYTES);
        }
        let (map, bytes) = &*cache.map.read();
        assert_eq!(*bytes, map.values().map(|v| v.len).sum::<usize>());
    }

    /// An opened cookie is remembered only until it or its token expires,
    /// and the map stays bounded.
    #[test]
    fn opened_cookies_expire_and_are_bounded() {
        let c = OpenedCookies::default();
        let d = OpenedCookies::digest("2.00000000.abc");
        assert_ne!(d, OpenedCookies::digest("2.00000000.abd"));
        c.insert(d, 100, "sample", [7; 32], 10);
        assert_eq!(c.get(&d, 99).unwrap().1, [7; 32]);
        assert_eq!(&*c.get(&d, 99).unwrap().0, "sample");
        assert!(c.get(&d, 100).is_none());
        assert!(c.get(&OpenedCookies::digest("other"), 10).is_none());
        for i in 0..CAPACITY + 10 {
            c.insert(OpenedCookies::digest(&i.to_string()), 100, "s", [0; 32], 10);
        }
        assert!(c.map.read().len() <= CAPACITY);
    }
}
