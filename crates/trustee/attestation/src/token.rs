//! Attestation tokens: EAR claim sets carried in an ES256 JWT, signed with a
//! P-256 key the trustee creates on first start and keeps in its store
//! (sealed with the key-encryption key).

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use cocoon_store::{Kek, Store, StoreError, ns};
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};
use std::sync::Arc;

const SIGNING_KEY_ID: &str = "token-signing-key";

/// Token errors.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    /// The token is not a well-formed JWT.
    #[error("token is malformed: {0}")]
    Malformed(&'static str),
    /// The signature does not verify with this trustee's key.
    #[error("token signature is not valid for this trustee")]
    Signature,
    /// The token has expired.
    #[error("token expired at {0}: attest again")]
    Expired(i64),
    /// Key material could not be loaded or created.
    #[error("token signing key: {0}")]
    Key(String),
    /// Storage failed.
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Signs and verifies tokens with the trustee's ES256 key.
pub struct TokenSigner {
    key: EcdsaKeyPair,
    header_b64: String,
    jwk: Value,
    rng: SystemRandom,
}

impl TokenSigner {
    /// Loads the signing key from the store or creates it (race-safe across replicas).
    pub fn load_or_create(store: &Arc<dyn Store>, kek: &Kek) -> Result<Self, TokenError> {
        let rng = SystemRandom::new();
        if store.get(ns::KEYS, SIGNING_KEY_ID)?.is_none() {
            let pkcs8 =
                EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
                    .map_err(|_| TokenError::Key("cannot generate P-256 key".into()))?;
            store.put_if_absent(
                ns::KEYS,
                SIGNING_KEY_ID,
                &kek.seal(ns::KEYS, SIGNING_KEY_ID, pkcs8.as_ref())
                    .map_err(|e| TokenError::Key(format!("cannot seal the signing key: {e}")))?,
            )?;
        }
        let sealed = store
            .get(ns::KEYS, SIGNING_KEY_ID)?
            .ok_or_else(|| TokenError::Key("signing key vanished from the store".into()))?;
        let pkcs8 = kek.open(ns::KEYS, SIGNING_KEY_ID, &sealed).map_err(|_| {
            TokenError::Key(
                "cannot unseal the signing key: wrong key-encryption key for this store".into(),
            )
        })?;
        Self::from_pkcs8(&pkcs8)
    }

    /// From a PKCS#8 P-256 private key.
    pub fn from_pkcs8(pkcs8: &[u8]) -> Result<Self, TokenError> {
        let rng = SystemRandom::new();
        let key =
            EcdsaKeyPair::from_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8, &rng)
                .map_err(|e| TokenError::Key(e.to_string()))?;
        let public = key.public_key().as_ref();
        let x = B64URL.encode(&public[1..33]);
        let y = B64URL.encode(&public[33..65]);
        let thumb = format!(r#"{{"crv":"P-256","kty":"EC","x":"{x}","y":"{y}"}}"#);
        let kid = B64URL.encode(Sha256::digest(thumb.as_bytes()));
        let jwk = json!({"kty": "EC", "crv": "P-256", "x": x, "y": y, "alg": "ES256", "kid": kid, "use": "sig"});
        let header = json!({"typ": "JWT", "alg": "ES256", "jwk": {"kty": "EC", "crv": "P-256", "x": x, "y": y, "alg": "ES256"}, "kid": kid});
        Ok(Self {
            key,
            header_b64: B64URL.encode(header.to_string()),
            jwk,
            rng,
        })
    }

    /// The JWKS document publishing the verification key.
    pub fn jwks(&self) -> Value {
        json!({ "keys": [self.jwk] })
    }

    /// Signs `claims` as a compact JWT.
    pub fn sign(&self, claims: &Value) -> Result<String, TokenError> {
        let mut out = String::with_capacity(2048);
        out.push_str(&self.header_b64);
        out.push('.');
        let json = serde_json::to_vec(claims)
            .map_err(|e| TokenError::Key(format!("claims not serializable: {e}")))?;
        B64URL.encode_string(&json, &mut out);
        let sig = self
            .key
            .sign(&self.rng, out.as_bytes())
            .map_err(|_| TokenError::Key("signing failed".into()))?;
        out.push('.');
        B64URL.encode_string(sig.as_ref(), &mut out);
        Ok(out)
    }

    /// Verifies a token's signature and expiry at `now`; returns its claims.
    pub fn verify(&self, token: &str, now: i64) -> Result<Value, TokenError> {
        let mut parts = token.split('.');
        let (Some(h), Some(p), Some(s), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(TokenError::Malformed("expected three dot-separated parts"));
        };
        let header: Value = B64URL
            .decode(h)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed("header is not base64url JSON"))?;
        if header.get("alg").and_then(Value::as_str) != Some("ES256") {
            return Err(TokenError::Malformed("alg must be ES256"));
        }
        let sig = B64URL
            .decode(s)
            .map_err(|_| TokenError::Malformed("signature is not base64url"))?;
        let signed_len = h.len() + 1 + p.len();
        signature::UnparsedPublicKey::new(
            &signature::ECDSA_P256_SHA256_FIXED,
            self.key.public_key().as_ref(),
        )
        .verify(&token.as_bytes()[..signed_len], &sig)
        .map_err(|_| TokenError::Signature)?;
        let claims: Value = B64URL
            .decode(p)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .ok_or(TokenError::Malformed("payload is not base64url JSON"))?;
        let exp = claims
            .get("exp")
            .and_then(Value::as_i64)
            .ok_or(TokenError::Malformed("no exp claim"))?;
        if exp <= now {
            return Err(TokenError::Expired(exp));
        }
        Ok(claims)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sign_verify_and_rejections() {
        let rng = SystemRandom::new();
        let pk = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let s = TokenSigner::from_pkcs8(pk.as_ref()).unwrap();
        let t = s.sign(&json!({"exp": 200, "a": 1})).unwrap();
        assert_eq!(s.verify(&t, 100).unwrap()["a"], 1);
        assert!(matches!(s.verify(&t, 200), Err(TokenError::Expired(200))));
        let mut forged: Vec<&str> = t.split('.').collect();
        let other = B64URL.encode(r#"{"exp":200,"a":2}"#);
        forged[1] = &other;
        assert!(matches!(
            s.verify(&forged.join("."), 100),
            Err(TokenError::Signature)
        ));
        let pk2 = EcdsaKeyPair::generate_pkcs8(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
            .unwrap();
        let s2 = TokenSigner::from_pkcs8(pk2.as_ref()).unwrap();
        assert!(matches!(s2.verify(&t, 100), Err(TokenError::Signature)));
        assert!(matches!(
            s.verify("a.b", 100),
            Err(TokenError::Malformed(_))
        ));
        assert_eq!(s.jwks()["keys"][0]["alg"], "ES256");
    }
}
