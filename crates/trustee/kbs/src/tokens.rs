//! Attestation tokens presented with resource requests, verified before
//! use whichever way they arrive (the session cookie or a Bearer header):
//! a sealed cookie is only as trustworthy as the session key, so its token
//! is checked against the token signer too. A token's signature is
//! verified once; later requests with the same token bytes reuse the
//! result until the token expires.

use cocoon_attestation::token::{TokenError, TokenSigner};
use parking_lot::RwLock;
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::HashMap;
use std::sync::Arc;

/// Tokens remembered at most.
const CAPACITY: usize = 16_384;

/// A verified token: its claims and its identity for caches.
#[derive(Clone)]
pub struct VerifiedToken {
    /// SHA-256 of the whole token text.
    pub digest: [u8; 32],
    /// The token's claims.
    pub claims: Arc<Value>,
    /// `exp`, Unix seconds.
    pub exp: i64,
}

/// Verified tokens by the digest of their text.
#[derive(Default)]
pub struct VerifiedTokens {
    map: RwLock<HashMap<[u8; 32], VerifiedToken>>,
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
    ) -> Result<VerifiedToken, TokenError> {
        let digest: [u8; 32] = Sha256::digest(token.as_bytes()).into();
        if let Some(t) = self.map.read().get(&digest) {
            if t.exp <= now {
                return Err(TokenError::Expired(t.exp));
            }
            return Ok(t.clone());
        }
        let claims = signer.verify(token, now)?;
        let exp = claims.get("exp").and_then(Value::as_i64).unwrap_or(now);
        let t = VerifiedToken {
            digest,
            claims: Arc::new(claims),
            exp,
        };
        let mut map = self.map.write();
        if map.len() >= CAPACITY {
            map.retain(|_, v| v.exp > now);
            if map.len() >= CAPACITY {
                map.clear();
            }
        }
        map.insert(digest, t.clone());
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;
    use ring::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair};
    use serde_json::json;

    fn signer() -> TokenSigner {
        let pk =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new())
                .unwrap();
        TokenSigner::from_pkcs8(pk.as_ref()).unwrap()
    }

    /// A forged payload with a real token's signature is refused even after
    /// the real token was verified and cached; expiry holds on cache hits.
    #[test]
    fn cache_never_vouches_for_other_bytes() {
        let s = signer();
        let cache = VerifiedTokens::default();
        let t = s.sign(&json!({"exp": 200, "a": 1})).unwrap();
        assert_eq!(cache.verify(&s, &t, 100).unwrap().claims["a"], 1);
        assert_eq!(cache.verify(&s, &t, 150).unwrap().claims["a"], 1);
        let parts: Vec<&str> = t.split('.').collect();
        let payload = base64::Engine::encode(
            &base64::engine::general_purpose::URL_SAFE_NO_PAD,
            r#"{"exp":200,"a":2}"#,
        );
        let forged = format!("{}.{payload}.{}", parts[0], parts[2]);
        assert!(matches!(
            cache.verify(&s, &forged, 100),
            Err(TokenError::Signature)
        ));
        assert!(matches!(
            cache.verify(&s, &t, 200),
            Err(TokenError::Expired(200))
        ));
        // Another trustee's token does not verify here.
        assert!(matches!(
            cache.verify(&signer(), &s.sign(&json!({"exp": 300})).unwrap(), 100),
            Err(TokenError::Signature)
        ));
    }
}
