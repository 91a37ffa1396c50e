//! CoCo sealed secrets: `sealed.<header>.<payload>.<signature>`, a compact
//! ES256 JWS with a prefix, whose payload says where the plaintext comes
//! from (`vault`: a KBS resource) or carries it encrypted (`envelope`).
//!
//! Envelope secrets with provider `kbs` (a Cocoon addition; CoCo's
//! envelope providers are cloud KMSes) keep the data key wrapped under a
//! KBS-held 32-byte key: `encrypted_key` = nonce(12) ‖ AES-256-GCM(KEK, DEK) ‖ tag.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::{STANDARD as B64, URL_SAFE_NO_PAD as B64URL};
use p256::ecdsa::signature::{Signer, Verifier};
use p256::ecdsa::{Signature, SigningKey, VerifyingKey};
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use zeroize::Zeroizing;

/// The only payload version CoCo defines.
pub const SEALED_VERSION: &str = "0.1.0";

/// Sealed-secret errors.
#[derive(Debug, thiserror::Error)]
pub enum SealedError {
    /// Not the `sealed.h.p.s` form.
    #[error("not a sealed secret: {0}")]
    Format(String),
    /// The payload is not a valid secret description.
    #[error("sealed secret payload: {0}")]
    Payload(String),
    /// The signature does not verify.
    #[error("sealed secret signature does not verify with key '{0}'")]
    Signature(String),
    /// A key or ciphertext is wrong.
    #[error("sealed secret cannot be decrypted: {0}")]
    Decrypt(String),
    /// A provider or algorithm this implementation does not handle.
    #[error("{0}")]
    Unsupported(String),
}

/// JWS header of a sealed secret.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SealedHeader {
    /// Always `ES256`.
    pub alg: String,
    /// Key id: a `kbs:///` URI of a P-256 public JWK, or a file name.
    pub kid: String,
}

/// What a sealed secret holds.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum SecretContent {
    /// The plaintext is a secret held by a provider (`kbs`: a resource URI).
    Vault {
        /// Version, `0.1.0`.
        version: String,
        /// Secret name (for `kbs`, a `kbs:///` URI).
        name: String,
        /// Provider (`kbs`).
        provider: String,
        /// Provider settings.
        provider_settings: Map<String, Value>,
        /// Annotations.
        annotations: Map<String, Value>,
    },
    /// The plaintext travels encrypted under a data key wrapped by a KMS key.
    Envelope {
        /// Version, `0.1.0`.
        version: String,
        /// KMS provider (`kbs` here).
        provider: String,
        /// Key id of the key-encryption key.
        key_id: String,
        /// Wrapped data key, base64.
        encrypted_key: String,
        /// Encrypted plaintext, base64.
        encrypted_data: String,
        /// `A256GCM` or `A256CTR`.
        wrap_type: String,
        /// IV of the data encryption, base64.
        iv: String,
        /// Provider settings.
        provider_settings: Map<String, Value>,
        /// Annotations.
        annotations: Map<String, Value>,
    },
}

/// A parsed sealed secret.
#[derive(Debug, Clone)]
pub struct SealedSecret {
    /// JWS header.
    pub header: SealedHeader,
    /// Payload.
    pub content: SecretContent,
    signing_input: String,
    signature: Vec<u8>,
}

impl SealedSecret {
    /// Parses `sealed.<h>.<p>.<s>` (checks the form, header and payload
    /// version; the signature is checked by [`SealedSecret::verify`]).
    pub fn parse(text: &str) -> Result<Self, SealedError> {
        let text = text.trim();
        let parts: Vec<&str> = text.split('.').collect();
        let [prefix, h, p, s] = parts.as_slice() else {
            return Err(SealedError::Format(format!(
                "expected 4 dot-separated parts, got {}",
                parts.len()
            )));
        };
        if *prefix != "sealed" {
            return Err(SealedError::Format("missing the 'sealed.' prefix".into()));
        }
        let dec = |what: &str, v: &str| {
            B64URL
                .decode(v)
                .map_err(|_| SealedError::Format(format!("{what} is not base64url")))
        };
        let header: SealedHeader = serde_json::from_slice(&dec("header", h)?)
            .map_err(|e| SealedError::Format(format!("header: {e}")))?;
        let content: SecretContent = serde_json::from_slice(&dec("payload", p)?)
            .map_err(|e| SealedError::Payload(e.to_string()))?;
        let version = match &content {
            SecretContent::Vault { version, .. } | SecretContent::Envelope { version, .. } => {
                version
            }
        };
        if version != SEALED_VERSION {
            return Err(SealedError::Payload(format!(
                "version '{version}' is not {SEALED_VERSION}"
            )));
        }
        Ok(Self {
            header,
            content,
            signing_input: format!("{h}.{p}"),
            signature: dec("signature", s).unwrap_or_default(),
        })
    }

    /// Verifies the ES256 signature with `jwk` (a P-256 public JWK JSON).
    pub fn verify(&self, jwk: &[u8]) -> Result<(), SealedError> {
        let fail = || SealedError::Signature(self.header.kid.clone());
        if self.header.alg != "ES256" {
            return Err(SealedError::Unsupported(format!(
                "sealed secret algorithm '{}' (only ES256)",
                self.header.alg
            )));
        }
        let text = std::str::from_utf8(jwk).map_err(|_| fail())?;
        let key = p256::PublicKey::from_jwk_str(text).map_err(|_| {
            SealedError::Unsupported(format!(
                "key '{}' is not a P-256 public JWK",
                self.header.kid
            ))
        })?;
        let sig = Signature::from_slice(&self.signature).map_err(|_| fail())?;
        VerifyingKey::from(key)
            .verify(self.signing_input.as_bytes(), &sig)
            .map_err(|_| fail())
    }
}

/// Signs `content` into the `sealed.…` form with `key` under key id `kid`.
pub fn seal(content: &SecretContent, key: &SigningKey, kid: &str) -> Result<String, SealedError> {
    let header = SealedHeader {
        alg: "ES256".into(),
        kid: kid.into(),
    };
    let h = b64url_json(&header)?;
    let p = b64url_json(content)?;
    let input = format!("{h}.{p}");
    let sig: Signature = key.sign(input.as_bytes());
    Ok(format!("sealed.{input}.{}", B64URL.encode(sig.to_bytes())))
}

fn b64url_json<T: Serialize>(v: &T) -> Result<String, SealedError> {
    serde_json::to_vec(v)
        .map(|b| B64URL.encode(b))
        .map_err(|e| SealedError::Payload(e.to_string()))
}

/// Encrypts `plaintext` for an envelope secret under a fresh data key
/// wrapped with `kek` (the KBS resource at `key_id`).
pub fn envelope_encrypt(
    plaintext: &[u8],
    kek: &[u8],
    key_id: &str,
) -> Result<SecretContent, SealedError> {
    let kek_cipher = Aes256Gcm::new_from_slice(kek)
        .map_err(|_| SealedError::Decrypt(format!("key '{key_id}' must be 32 bytes")))?;
    let mut dek = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(dek.as_mut());
    let mut knonce = [0u8; 12];
    OsRng.fill_bytes(&mut knonce);
    let wrapped = kek_cipher
        .encrypt(&Nonce::from(knonce), dek.as_ref())
        .map_err(|_| SealedError::Decrypt("wrapping failed".into()))?;
    let mut encrypted_key = knonce.to_vec();
    encrypted_key.extend_from_slice(&wrapped);
    let mut iv = [0u8; 12];
    OsRng.fill_bytes(&mut iv);
    let data = Aes256Gcm::new_from_slice(dek.as_ref())
        .map_err(|_| SealedError::Decrypt("data key".into()))?
        .encrypt(&Nonce::from(iv), plaintext)
        .map_err(|_| SealedError::Decrypt("encryption failed".into()))?;
    Ok(SecretContent::Envelope {
        version: SEALED_VERSION.into(),
        provider: "kbs".into(),
        key_id: key_id.into(),
        encrypted_key: B64.encode(encrypted_key),
        encrypted_data: B64.encode(data),
        wrap_type: "A256GCM".into(),
        iv: B64.encode(iv),
        provider_settings: Map::new(),
        annotations: Map::new(),
    })
}

fn nonce12(b: &[u8]) -> Result<Nonce<aes_gcm::aead::consts::U12>, SealedError> {
    let a: [u8; 12] = b
        .try_into()
        .map_err(|_| SealedError::Payload("nonce must be 12 bytes".into()))?;
    Ok(Nonce::from(a))
}

/// Decrypts an envelope secret's data given the KEK (provider `kbs`).
pub fn envelope_decrypt(
    content: &SecretContent,
    kek: &[u8],
) -> Result<Zeroizing<Vec<u8>>, SealedError> {
    let SecretContent::Envelope {
        key_id,
        encrypted_key,
        encrypted_data,
        wrap_type,
        iv,
        ..
    } = content
    else {
        return Err(SealedError::Payload("not an envelope secret".into()));
    };
    let b64 = |what: &str, v: &str| {
        B64.decode(v)
            .map_err(|_| SealedError::Payload(format!("{what} is not base64")))
    };
    let ek = b64("encrypted_key", encrypted_key)?;
    if ek.len() < 12 + 16 {
        return Err(SealedError::Payload("encrypted_key is too short".into()));
    }
    let dek = Zeroizing::new(
        Aes256Gcm::new_from_slice(kek)
            .map_err(|_| SealedError::Decrypt(format!("key '{key_id}' is not 32 bytes")))?
            .decrypt(&nonce12(&ek[..12])?, &ek[12..])
            .map_err(|_| {
                SealedError::Decrypt(format!("data key does not unwrap with key '{key_id}'"))
            })?,
    );
    let data = b64("encrypted_data", encrypted_data)?;
    let iv = b64("iv", iv)?;
    match wrap_type.as_str() {
        "A256GCM" => {
            if iv.len() != 12 {
                return Err(SealedError::Payload("A256GCM needs a 12-byte iv".into()));
            }
            Aes256Gcm::new_from_slice(&dek)
                .map_err(|_| SealedError::Decrypt("data key is not 32 bytes".into()))?
                .decrypt(&nonce12(&iv)?, data.as_ref())
                .map(Zeroizing::new)
                .map_err(|_| SealedError::Decrypt("data fails authentication".into()))
        }
        other => Err(SealedError::Unsupported(format!(
            "envelope wrap_type '{other}' (supported: A256GCM)"
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key() -> (SigningKey, String) {
        let sk = SigningKey::random(&mut OsRng);
        let jwk = p256::PublicKey::from(sk.verifying_key()).to_jwk_string();
        (sk, jwk)
    }

    #[test]
    fn vault_round_trip_and_signature() {
        let (sk, jwk) = key();
        let c = SecretContent::Vault {
            version: SEALED_VERSION.into(),
            name: "kbs:///default/secret/db".into(),
            provider: "kbs".into(),
            provider_settings: Map::new(),
            annotations: Map::new(),
        };
        let s = seal(&c, &sk, "kbs:///default/sealed-secret/pub").unwrap();
        let p = SealedSecret::parse(&s).unwrap();
        assert_eq!(p.content, c);
        p.verify(jwk.as_bytes()).unwrap();
        let (_, other) = key();
        assert!(matches!(
            p.verify(other.as_bytes()),
            Err(SealedError::Signature(_))
        ));
        // A changed payload breaks the signature.
        let parts: Vec<&str> = s.split('.').collect();
        let forged_payload = B64URL.encode(
            br#"{"version":"0.1.0","type":"vault","name":"kbs:///default/secret/other","provider":"kbs","provider_settings":{},"annotations":{}}"#,
        );
        let forged = format!("sealed.{}.{}.{}", parts[1], forged_payload, parts[3]);
        let p = SealedSecret::parse(&forged).unwrap();
        assert!(p.verify(jwk.as_bytes()).is_err());
    }

    #[test]
    fn envelope_round_trip_and_wrong_key() {
        let kek = [7u8; 32];
        let c = envelope_encrypt(b"hunter2", &kek, "kbs:///default/key/kek").unwrap();
        assert_eq!(envelope_decrypt(&c, &kek).unwrap().as_slice(), b"hunter2");
        assert!(matches!(
            envelope_decrypt(&c, &[8u8; 32]),
            Err(SealedError::Decrypt(_))
        ));
    }

    #[test]
    fn coco_payload_shape_parses_and_bad_forms_are_refused() {
        let payload = B64URL.encode(
            br#"{"version":"0.1.0","type":"envelope","provider":"aliyun","key_id":"k","encrypted_key":"AA==","encrypted_data":"AA==","wrap_type":"A256GCM","iv":"AA==","provider_settings":{},"annotations":{}}"#,
        );
        let header = B64URL.encode(br#"{"alg":"ES256","kid":"k"}"#);
        let p = SealedSecret::parse(&format!("sealed.{header}.{payload}.AAAA")).unwrap();
        assert!(matches!(p.content, SecretContent::Envelope { .. }));
        for bad in [
            "".to_string(),
            "sealed.a.b".to_string(),
            format!("unsealed.{header}.{payload}.AA"),
            format!("sealed.{header}.!!.AA"),
            format!("sealed.{header}.{}.AA", B64URL.encode(br#"{"version":"0.2.0","type":"vault","name":"n","provider":"kbs","provider_settings":{},"annotations":{}}"#)),
            format!("sealed.{header}.{}.AA", B64URL.encode(br#"{"version":"0.1.0","type":"vault","name":"n","provider":"kbs"}"#)),
        ] {
            assert!(SealedSecret::parse(&bad).is_err(), "{bad}");
        }
    }
}
