//! RSA-OAEP decryption with a guest-held RSA key: content keys of KBS
//! resources sealed to an RSA TEE key (`RSA-OAEP-256`) and of ocicrypt JWE
//! recipients (`RSA-OAEP`, SHA-1). The ciphertext comes from the untrusted
//! side, so the private-key operation must not leak through timing.
//!
//! It runs in AWS-LC (`aws-lc-rs`): blinded, constant-time modular
//! exponentiation and OAEP unpadding, FIPS-validated, and the code rustls
//! ships by default. The `rsa` crate 0.9 is timing-variable
//! (RUSTSEC-2023-0071); 0.10 moved to constant-time arithmetic, but the
//! advisory does not list it as fixed yet, its hardening is still under
//! way, and it pulls in a second generation of the RustCrypto crates. So
//! `rsa` 0.9 stays for public-key work only (encryption, JWK members) and
//! for reading key files; no decryption goes through it.

use crate::jwe::JweError;
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rsa::{
    KeySize, OAEP_SHA1_MGF1SHA1, OAEP_SHA256_MGF1SHA256, OaepPrivateDecryptingKey,
    PrivateDecryptingKey,
};
use rsa::pkcs1::{DecodeRsaPrivateKey, EncodeRsaPrivateKey};
use rsa::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey};
use zeroize::Zeroizing;

/// The OAEP hash (and MGF1 hash, the same one).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OaepHash {
    /// SHA-1: JWE `RSA-OAEP`, what Go ocicrypt writes.
    Sha1,
    /// SHA-256: JWE `RSA-OAEP-256`, what the KBS writes.
    Sha256,
}

/// An RSA private key that only decrypts (RSA-OAEP), in constant time.
#[derive(Clone)]
pub struct RsaDecryptionKey(PrivateDecryptingKey);

impl std::fmt::Debug for RsaDecryptionKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RsaDecryptionKey({} bits)", self.0.key_size_bits())
    }
}

fn invalid(e: impl std::fmt::Display) -> JweError {
    JweError::InvalidKey(e.to_string())
}

impl RsaDecryptionKey {
    /// A fresh key of 2048, 3072, 4096 or 8192 bits.
    pub fn generate(bits: usize) -> Result<Self, JweError> {
        let size = match bits {
            2048 => KeySize::Rsa2048,
            3072 => KeySize::Rsa3072,
            4096 => KeySize::Rsa4096,
            8192 => KeySize::Rsa8192,
            other => {
                return Err(invalid(format!(
                    "{other}-bit RSA keys are not supported (2048, 3072, 4096 or 8192)"
                )));
            }
        };
        PrivateDecryptingKey::generate(size)
            .map(Self)
            .map_err(|_| invalid("RSA key generation failed"))
    }

    /// A key from a PKCS#8 DER document (2048 to 8192 bits).
    pub fn from_pkcs8_der(der: &[u8]) -> Result<Self, JweError> {
        PrivateDecryptingKey::from_pkcs8(der)
            .map(Self)
            .map_err(|e| invalid(format!("RSA key (2048 to 8192 bits): {e}")))
    }

    /// A key from PEM: PKCS#1 (`RSA PRIVATE KEY`) or PKCS#8 (`PRIVATE KEY`).
    /// The `rsa` crate reads the file (a one-time step on the owner's own
    /// key, with no attacker input) and hands AWS-LC a PKCS#8 document.
    pub fn from_pem(pem: &str) -> Result<Self, JweError> {
        let key = rsa::RsaPrivateKey::from_pkcs1_pem(pem)
            .or_else(|_| rsa::RsaPrivateKey::from_pkcs8_pem(pem))
            .map_err(|e| invalid(format!("not an RSA private key: {e}")))?;
        let der = key.to_pkcs8_der().map_err(invalid)?;
        Self::from_pkcs8_der(der.as_bytes())
    }

    /// The public key (for the JWK members and tests that encrypt to it).
    pub fn public_key(&self) -> Result<rsa::RsaPublicKey, JweError> {
        let spki = self
            .0
            .public_key()
            .as_der()
            .map_err(|_| invalid("cannot encode the RSA public key"))?;
        rsa::RsaPublicKey::from_public_key_der(spki.as_ref()).map_err(invalid)
    }

    /// The private key as PKCS#1 PEM (what CoCo's `GetToken` returns).
    pub fn to_pkcs1_pem(&self) -> Result<Zeroizing<String>, JweError> {
        let der = self
            .0
            .as_der()
            .map_err(|_| invalid("cannot encode the RSA private key"))?;
        let key = rsa::RsaPrivateKey::from_pkcs8_der(der.as_ref()).map_err(invalid)?;
        key.to_pkcs1_pem(rsa::pkcs1::LineEnding::LF)
            .map_err(invalid)
    }

    /// RSA-OAEP decryption. Every failure (wrong key, bad padding, wrong
    /// length) is the same `None`, so callers cannot tell them apart.
    pub fn decrypt(&self, hash: OaepHash, ciphertext: &[u8]) -> Option<Zeroizing<Vec<u8>>> {
        let alg = match hash {
            OaepHash::Sha1 => &OAEP_SHA1_MGF1SHA1,
            OaepHash::Sha256 => &OAEP_SHA256_MGF1SHA256,
        };
        let key = OaepPrivateDecryptingKey::new(self.0.clone()).ok()?;
        let mut out = Zeroizing::new(vec![0u8; key.min_output_size()]);
        let n = key.decrypt(alg, ciphertext, &mut out, None).ok()?.len();
        out.truncate(n);
        Some(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;
    use rsa::Oaep;

    #[test]
    fn decrypts_what_the_rsa_crate_encrypts_and_nothing_else() {
        let key = RsaDecryptionKey::generate(2048).unwrap();
        let public = key.public_key().unwrap();
        let ct1 = public
            .encrypt(&mut OsRng, Oaep::new::<sha1::Sha1>(), b"layer key")
            .unwrap();
        let ct256 = public
            .encrypt(&mut OsRng, Oaep::new::<sha2::Sha256>(), b"resource key")
            .unwrap();
        assert_eq!(&*key.decrypt(OaepHash::Sha1, &ct1).unwrap(), b"layer key");
        assert_eq!(
            &*key.decrypt(OaepHash::Sha256, &ct256).unwrap(),
            b"resource key"
        );
        // The other hash, a flipped bit, a short ciphertext: all just None.
        assert!(key.decrypt(OaepHash::Sha256, &ct1).is_none());
        let mut bad = ct256.clone();
        bad[100] ^= 1;
        assert!(key.decrypt(OaepHash::Sha256, &bad).is_none());
        assert!(key.decrypt(OaepHash::Sha256, &ct256[1..]).is_none());
        assert!(RsaDecryptionKey::generate(1024).is_err());
    }

    #[test]
    fn pem_round_trip_pkcs1_and_pkcs8() {
        let key = RsaDecryptionKey::generate(2048).unwrap();
        let pkcs1 = key.to_pkcs1_pem().unwrap();
        assert!(pkcs1.starts_with("-----BEGIN RSA PRIVATE KEY-----"));
        let again = RsaDecryptionKey::from_pem(&pkcs1).unwrap();
        assert_eq!(again.public_key().unwrap(), key.public_key().unwrap());
        let pkcs8 = rsa::RsaPrivateKey::from_pkcs1_pem(&pkcs1)
            .unwrap()
            .to_pkcs8_pem(rsa::pkcs8::LineEnding::LF)
            .unwrap();
        let from8 = RsaDecryptionKey::from_pem(&pkcs8).unwrap();
        assert_eq!(from8.public_key().unwrap(), key.public_key().unwrap());
        assert!(RsaDecryptionKey::from_pem("not a key").is_err());
    }
}
