//! PEM key files for JWE layer-key wrapping, in the forms `openssl` and
//! `skopeo` users have: PKCS#8, PKCS#1 (RSA) and SEC1 (EC) private keys,
//! SPKI and PKCS#1 public keys.

use cocoon_types::rsa_oaep::RsaDecryptionKey;
use p256::pkcs8::{DecodePrivateKey, DecodePublicKey};
use rsa::pkcs1::DecodeRsaPublicKey;
use zeroize::Zeroizing;

/// Why a key file could not be used.
#[derive(Debug, thiserror::Error)]
#[error("{what}: {reason}")]
pub struct KeyError {
    what: String,
    reason: String,
}

impl KeyError {
    fn new(what: &str, reason: impl Into<String>) -> Self {
        Self {
            what: what.to_string(),
            reason: reason.into(),
        }
    }
}

/// A private key that can unwrap JWE layer keys.
pub enum PrivateKey {
    /// RSA (RSA-OAEP / RSA-OAEP-256), decrypting in constant time.
    Rsa(Box<RsaDecryptionKey>),
    /// P-256 (ECDH-ES+A256KW).
    Ec(p256::SecretKey),
}

impl std::fmt::Debug for PrivateKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Self::Rsa(_) => "PrivateKey::Rsa(..)",
            Self::Ec(_) => "PrivateKey::Ec(..)",
        })
    }
}

/// A public key layer keys are wrapped for.
#[derive(Debug, Clone)]
pub enum PublicKey {
    /// RSA, wrapped with RSA-OAEP (SHA-1) as Go ocicrypt does.
    Rsa(Box<rsa::RsaPublicKey>),
    /// P-256, wrapped with ECDH-ES+A256KW.
    Ec(p256::PublicKey),
}

fn pem_label(pem: &str) -> Option<&str> {
    let start = pem.find("-----BEGIN ")? + "-----BEGIN ".len();
    let end = pem[start..].find("-----")?;
    Some(&pem[start..start + end])
}

impl PrivateKey {
    /// Parses a PEM private key; `what` names the source in errors.
    pub fn from_pem(pem: &str, what: &str) -> Result<Self, KeyError> {
        match pem_label(pem) {
            Some("RSA PRIVATE KEY") => RsaDecryptionKey::from_pem(pem)
                .map(|k| Self::Rsa(Box::new(k)))
                .map_err(|e| KeyError::new(what, e.to_string())),
            Some("EC PRIVATE KEY") => p256::SecretKey::from_sec1_pem(pem)
                .map(Self::Ec)
                .map_err(|e| KeyError::new(what, format!("EC key (P-256 only): {e}"))),
            Some("PRIVATE KEY") => {
                if let Ok(k) = p256::SecretKey::from_pkcs8_pem(pem) {
                    return Ok(Self::Ec(k));
                }
                RsaDecryptionKey::from_pem(pem)
                    .map(|k| Self::Rsa(Box::new(k)))
                    .map_err(|e| {
                        KeyError::new(what, format!("PKCS#8 key is neither EC P-256 nor RSA: {e}"))
                    })
            }
            Some("ENCRYPTED PRIVATE KEY") => Err(KeyError::new(
                what,
                "password-protected keys are not supported; decrypt it with `openssl pkey`",
            )),
            Some(other) => Err(KeyError::new(
                what,
                format!("PEM block {other:?} is not a private key"),
            )),
            None => Err(KeyError::new(what, "not a PEM file")),
        }
    }

    /// Reads and parses a PEM private key file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, KeyError> {
        let what = path.display().to_string();
        let pem = Zeroizing::new(
            std::fs::read_to_string(path).map_err(|e| KeyError::new(&what, e.to_string()))?,
        );
        Self::from_pem(&pem, &what)
    }
}

impl PublicKey {
    /// Parses a PEM public key; `what` names the source in errors.
    pub fn from_pem(pem: &str, what: &str) -> Result<Self, KeyError> {
        match pem_label(pem) {
            Some("RSA PUBLIC KEY") => rsa::RsaPublicKey::from_pkcs1_pem(pem)
                .map(|k| Self::Rsa(Box::new(k)))
                .map_err(|e| KeyError::new(what, format!("RSA key: {e}"))),
            Some("PUBLIC KEY") => {
                if let Ok(k) = p256::PublicKey::from_public_key_pem(pem) {
                    return Ok(Self::Ec(k));
                }
                rsa::RsaPublicKey::from_public_key_pem(pem)
                    .map(|k| Self::Rsa(Box::new(k)))
                    .map_err(|_| KeyError::new(what, "public key is neither RSA nor EC P-256"))
            }
            Some(other) => Err(KeyError::new(
                what,
                format!("PEM block {other:?} is not a public key"),
            )),
            None => Err(KeyError::new(what, "not a PEM file")),
        }
    }

    /// Reads and parses a PEM public key file.
    pub fn from_file(path: &std::path::Path) -> Result<Self, KeyError> {
        let what = path.display().to_string();
        let pem = std::fs::read_to_string(path).map_err(|e| KeyError::new(&what, e.to_string()))?;
        Self::from_pem(&pem, &what)
    }
}
