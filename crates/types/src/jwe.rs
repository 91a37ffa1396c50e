//! The resource response: a flattened JWE (RFC 7516) sealed to the TEE key
//! the guest sent in its runtime data.
//!
//! Supported key management: `ECDH-ES+A256KW` on P-256 and `RSA-OAEP-256`;
//! content encryption is always `A256GCM` with the ASCII of the `protected`
//! member as AAD. The protected header is written byte-for-byte as the stock
//! KBS writes it, because stock guests recompute the AAD by re-serializing it.

use crate::rsa_oaep::{OaepHash, RsaDecryptionKey};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use kbs_types::TeePubKey;
use p256::elliptic_curve::sec1::{EncodedPoint, FromEncodedPoint, ToEncodedPoint};
use rand_core::{OsRng, RngCore};
use rsa::traits::PublicKeyParts;
use rsa::{BigUint, Oaep, RsaPublicKey};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::sync::Mutex;
use zeroize::{Zeroize, Zeroizing};

/// Key-management algorithm for EC TEE keys.
pub const ALG_ECDH_ES_A256KW: &str = "ECDH-ES+A256KW";
/// Key-management algorithm for RSA TEE keys.
pub const ALG_RSA_OAEP_256: &str = "RSA-OAEP-256";
/// Content encryption, always.
pub const ENC_A256GCM: &str = "A256GCM";

/// Why sealing or opening a JWE failed.
#[derive(Debug, thiserror::Error)]
pub enum JweError {
    /// The TEE key type, curve or algorithm is not one we seal to.
    #[error("unsupported TEE key: {0}")]
    UnsupportedKey(String),
    /// A key member is not valid base64url or not a valid key.
    #[error("invalid TEE key: {0}")]
    InvalidKey(String),
    /// The JWE is not well formed.
    #[error("malformed JWE: {0}")]
    Malformed(String),
    /// Authentication failed: wrong key or tampered ciphertext.
    #[error("JWE decryption failed: wrong key or tampered data")]
    Decrypt,
}

/// The flattened JSON serialization, every member base64url.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FlattenedJwe {
    /// base64url of the protected header JSON.
    pub protected: String,
    /// The wrapped content-encryption key.
    pub encrypted_key: String,
    /// 12-byte GCM nonce.
    pub iv: String,
    /// The encrypted payload.
    pub ciphertext: String,
    /// 16-byte GCM tag.
    pub tag: String,
}

fn b64d(field: &str, s: &str) -> Result<Vec<u8>, JweError> {
    B64URL
        .decode(s)
        .map_err(|_| JweError::Malformed(format!("member '{field}' is not base64url")))
}

/// The JWK `x`/`y` members of a P-256 key as raw 32-byte coordinates.
fn p256_coordinates(x: &str, y: &str) -> Result<(Vec<u8>, Vec<u8>), JweError> {
    let x = B64URL
        .decode(x)
        .map_err(|_| JweError::InvalidKey("x is not base64url".into()))?;
    let y = B64URL
        .decode(y)
        .map_err(|_| JweError::InvalidKey("y is not base64url".into()))?;
    if x.len() != 32 || y.len() != 32 {
        return Err(JweError::InvalidKey(
            "P-256 coordinates must be 32 bytes each".into(),
        ));
    }
    Ok((x, y))
}

fn ec_point_from_jwk(x: &str, y: &str) -> Result<p256::PublicKey, JweError> {
    let (x, y) = p256_coordinates(x, y)?;
    let point = EncodedPoint::<p256::NistP256>::from_affine_coordinates(
        x.as_slice().into(),
        y.as_slice().into(),
        false,
    );
    Option::from(p256::PublicKey::from_encoded_point(&point))
        .ok_or_else(|| JweError::InvalidKey("the point is not on P-256".into()))
}

/// Concat KDF (NIST SP 800-56A) as JWA defines it for ECDH-ES+A256KW, no apu/apv.
pub fn concat_kdf(z: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut h = Sha256::new();
    h.update(1u32.to_be_bytes());
    h.update(z);
    h.update((ALG_ECDH_ES_A256KW.len() as u32).to_be_bytes());
    h.update(ALG_ECDH_ES_A256KW.as_bytes());
    h.update(0u32.to_be_bytes());
    h.update(0u32.to_be_bytes());
    h.update(256u32.to_be_bytes());
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&h.finalize());
    out
}

/// ECDH-ES with a fresh ephemeral P-256 key (ring's constant-time
/// implementation, which also validates the peer point). Returns the derived
/// key-wrapping key and the ephemeral public coordinates (base64url).
pub fn ecdh_es_p256(x: &str, y: &str) -> Result<([u8; 32], String, String), JweError> {
    use ring::agreement;
    let (x, y) = p256_coordinates(x, y)?;
    let mut peer = Vec::with_capacity(65);
    peer.push(4);
    peer.extend_from_slice(&x);
    peer.extend_from_slice(&y);
    let rng = ring::rand::SystemRandom::new();
    let eph = agreement::EphemeralPrivateKey::generate(&agreement::ECDH_P256, &rng)
        .map_err(|_| JweError::InvalidKey("cannot generate an ephemeral key".into()))?;
    let epk = eph
        .compute_public_key()
        .map_err(|_| JweError::InvalidKey("cannot compute the ephemeral public key".into()))?;
    let epk = epk.as_ref();
    let (ex, ey) = (B64URL.encode(&epk[1..33]), B64URL.encode(&epk[33..65]));
    let kek = agreement::agree_ephemeral(
        eph,
        &agreement::UnparsedPublicKey::new(&agreement::ECDH_P256, &peer),
        |z| *concat_kdf(z),
    )
    .map_err(|_| JweError::InvalidKey("the point is not on P-256".into()))?;
    Ok((kek, ex, ey))
}

fn gcm_seal(
    protected: String,
    encrypted_key: Vec<u8>,
    cek: &[u8; 32],
    plaintext: &[u8],
) -> Result<FlattenedJwe, JweError> {
    let cipher = Aes256Gcm::new(cek.into());
    let mut iv = [0u8; 12];
    OsRng.fill_bytes(&mut iv);
    let mut sealed = cipher
        .encrypt(
            &Nonce::from(iv),
            Payload {
                msg: plaintext,
                aad: protected.as_bytes(),
            },
        )
        .map_err(|_| JweError::Malformed("payload too large".into()))?;
    let tag = sealed.split_off(sealed.len() - 16);
    Ok(FlattenedJwe {
        protected,
        encrypted_key: B64URL.encode(encrypted_key),
        iv: B64URL.encode(iv),
        ciphertext: B64URL.encode(sealed),
        tag: B64URL.encode(tag),
    })
}

/// What the sealer keeps per TEE key. For EC keys the ECDH agreement is done
/// once: the ephemeral public key and the derived key-wrapping key are reused
/// for every resource released in one session, each under a fresh random CEK.
#[derive(Clone, Serialize, Deserialize)]
pub enum SealingKey {
    /// ECDH-ES+A256KW, agreement already done.
    Ec {
        /// The protected header (base64url), carrying the ephemeral key.
        protected: String,
        /// The Concat-KDF output used to wrap each CEK.
        kek: [u8; 32],
    },
    /// RSA-OAEP-256 to the TEE's RSA key.
    Rsa {
        /// Modulus, base64url.
        n: String,
        /// Public exponent, base64url.
        e: String,
    },
}

impl Drop for SealingKey {
    fn drop(&mut self) {
        if let SealingKey::Ec { kek, .. } = self {
            kek.zeroize();
        }
    }
}

impl std::fmt::Debug for SealingKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SealingKey::Ec { .. } => f.write_str("SealingKey::Ec{..}"),
            SealingKey::Rsa { .. } => f.write_str("SealingKey::Rsa{..}"),
        }
    }
}

impl SealingKey {
    /// Prepares sealing to the TEE public key (does the ECDH for EC keys).
    pub fn new(key: &TeePubKey) -> Result<Self, JweError> {
        match key {
            TeePubKey::EC { crv, alg, x, y } => {
                if crv != "P-256" {
                    return Err(JweError::UnsupportedKey(format!("curve {crv}: use P-256")));
                }
                if alg != ALG_ECDH_ES_A256KW {
                    return Err(JweError::UnsupportedKey(format!(
                        "EC alg {alg}: use {ALG_ECDH_ES_A256KW}"
                    )));
                }
                let (kek, ex, ey) = ecdh_es_p256(x, y)?;
                // Compact JSON, members in the order the stock KBS emits.
                let header = format!(
                    r#"{{"alg":"{ALG_ECDH_ES_A256KW}","enc":"{ENC_A256GCM}","epk":{{"crv":"P-256","kty":"EC","x":"{ex}","y":"{ey}"}}}}"#
                );
                Ok(SealingKey::Ec {
                    protected: B64URL.encode(header),
                    kek,
                })
            }
            TeePubKey::RSA { alg, k_mod, k_exp } => {
                if alg != ALG_RSA_OAEP_256 {
                    return Err(JweError::UnsupportedKey(format!(
                        "RSA alg {alg}: use {ALG_RSA_OAEP_256}"
                    )));
                }
                let k = SealingKey::Rsa {
                    n: k_mod.clone(),
                    e: k_exp.clone(),
                };
                k.rsa_public()?;
                Ok(k)
            }
            TeePubKey::AKP { alg, .. } => Err(JweError::UnsupportedKey(format!(
                "AKP key ({alg}): post-quantum keys are not supported"
            ))),
        }
    }

    fn rsa_public(&self) -> Result<RsaPublicKey, JweError> {
        let SealingKey::Rsa { n, e } = self else {
            return Err(JweError::UnsupportedKey("not an RSA key".into()));
        };
        let n = B64URL
            .decode(n)
            .map_err(|_| JweError::InvalidKey("n is not base64url".into()))?;
        let e = B64URL
            .decode(e)
            .map_err(|_| JweError::InvalidKey("e is not base64url".into()))?;
        if n.len() < 256 {
            return Err(JweError::InvalidKey(
                "RSA modulus must be at least 2048 bits".into(),
            ));
        }
        RsaPublicKey::new(BigUint::from_bytes_be(&n), BigUint::from_bytes_be(&e))
            .map_err(|e| JweError::InvalidKey(e.to_string()))
    }

    /// Encrypts `plaintext` under a fresh CEK and wraps the CEK for the TEE.
    pub fn seal(&self, plaintext: &[u8]) -> Result<FlattenedJwe, JweError> {
        let mut cek = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(cek.as_mut());
        match self {
            SealingKey::Ec { protected, kek } => {
                let wrapped = aes_kw::KekAes256::from(*kek)
                    .wrap_vec(cek.as_ref())
                    .map_err(|_| JweError::Malformed("key wrap failed".into()))?;
                gcm_seal(protected.clone(), wrapped, &cek, plaintext)
            }
            SealingKey::Rsa { .. } => {
                let public = self.rsa_public()?;
                let wrapped = public
                    .encrypt(&mut OsRng, Oaep::new::<Sha256>(), cek.as_ref())
                    .map_err(|e| JweError::InvalidKey(e.to_string()))?;
                let header = format!(r#"{{"alg":"{ALG_RSA_OAEP_256}","enc":"{ENC_A256GCM}"}}"#);
                gcm_seal(B64URL.encode(header), wrapped, &cek, plaintext)
            }
        }
    }
}

/// The guest's ephemeral TEE key pair, whose public half goes into the
/// runtime data and to which the KBS seals resources.
pub struct TeeKeyPair {
    secret: TeeSecret,
    public: TeePubKey,
    /// Last (protected header, unwrapping key) seen, so a session's repeated
    /// ECDH-ES epk costs one agreement.
    ec_cache: Mutex<Option<(String, Zeroizing<[u8; 32]>)>>,
}

enum TeeSecret {
    Ec(p256::SecretKey),
    /// Decrypts in constant time (see [`crate::rsa_oaep`]).
    Rsa(Box<RsaDecryptionKey>),
}

#[derive(Deserialize)]
struct ProtectedHeader {
    alg: String,
    enc: String,
    #[serde(default)]
    epk: Option<EpkJwk>,
}

#[derive(Deserialize)]
struct EpkJwk {
    kty: String,
    crv: String,
    x: String,
    y: String,
}

impl TeeKeyPair {
    /// A fresh P-256 key pair (the CoCo default).
    pub fn generate_ec() -> Self {
        let k = p256::SecretKey::random(&mut OsRng);
        let p = k.public_key().to_encoded_point(false);
        let public = TeePubKey::EC {
            crv: "P-256".into(),
            alg: ALG_ECDH_ES_A256KW.into(),
            x: B64URL.encode(p.x().map(|x| x.to_vec()).unwrap_or_default()),
            y: B64URL.encode(p.y().map(|y| y.to_vec()).unwrap_or_default()),
        };
        Self::from_secret(TeeSecret::Ec(k), public)
    }

    /// A fresh RSA key pair of `bits` bits (CoCo uses 2048; 2048, 3072,
    /// 4096 and 8192 are supported).
    pub fn generate_rsa(bits: usize) -> Result<Self, JweError> {
        let k = RsaDecryptionKey::generate(bits)?;
        let p = k.public_key()?;
        let public = TeePubKey::RSA {
            alg: ALG_RSA_OAEP_256.into(),
            k_mod: B64URL.encode(p.n().to_bytes_be()),
            k_exp: B64URL.encode(p.e().to_bytes_be()),
        };
        Ok(Self::from_secret(TeeSecret::Rsa(Box::new(k)), public))
    }

    fn from_secret(secret: TeeSecret, public: TeePubKey) -> Self {
        Self {
            secret,
            public,
            ec_cache: Mutex::new(None),
        }
    }

    /// The public key as the JWK the runtime data carries.
    pub fn public_jwk(&self) -> TeePubKey {
        self.public.clone()
    }

    fn ec_unwrap_key(
        &self,
        k: &p256::SecretKey,
        protected: &str,
        epk: &EpkJwk,
    ) -> Result<Zeroizing<[u8; 32]>, JweError> {
        if let Ok(cache) = self.ec_cache.lock()
            && let Some((p, kek)) = cache.as_ref()
            && p == protected
        {
            return Ok(kek.clone());
        }
        let peer = ec_point_from_jwk(&epk.x, &epk.y)?;
        let shared = p256::ecdh::diffie_hellman(k.to_nonzero_scalar(), peer.as_affine());
        let kek = concat_kdf(shared.raw_secret_bytes());
        if let Ok(mut cache) = self.ec_cache.lock() {
            *cache = Some((protected.to_string(), kek.clone()));
        }
        Ok(kek)
    }

    /// Decrypts a resource JWE sealed to this key. The public members are
    /// parsed first; from the first use of the private key on, every
    /// failure is [`JweError::Decrypt`], so the error tells a sender nothing
    /// about why (a padding or key-wrap oracle).
    pub fn decrypt(&self, jwe: &FlattenedJwe) -> Result<Zeroizing<Vec<u8>>, JweError> {
        let header_bytes = b64d("protected", &jwe.protected)?;
        let header: ProtectedHeader = serde_json::from_slice(&header_bytes)
            .map_err(|e| JweError::Malformed(format!("protected header: {e}")))?;
        if header.enc != ENC_A256GCM {
            return Err(JweError::UnsupportedKey(format!("enc {}", header.enc)));
        }
        let wrapped = b64d("encrypted_key", &jwe.encrypted_key)?;
        let iv: [u8; 12] = b64d("iv", &jwe.iv)?
            .try_into()
            .map_err(|_| JweError::Malformed("iv must be 12 bytes".into()))?;
        let mut msg = b64d("ciphertext", &jwe.ciphertext)?;
        let tag = b64d("tag", &jwe.tag)?;
        if tag.len() != 16 {
            return Err(JweError::Malformed("tag must be 16 bytes".into()));
        }
        msg.extend_from_slice(&tag);
        let cek: Option<Zeroizing<Vec<u8>>> = match (&self.secret, header.alg.as_str()) {
            (TeeSecret::Ec(k), ALG_ECDH_ES_A256KW) => {
                let epk = header
                    .epk
                    .as_ref()
                    .ok_or_else(|| JweError::Malformed("ECDH-ES header without epk".into()))?;
                if epk.kty != "EC" || epk.crv != "P-256" {
                    return Err(JweError::UnsupportedKey(format!(
                        "epk {} {}",
                        epk.kty, epk.crv
                    )));
                }
                self.ec_unwrap_key(k, &jwe.protected, epk)
                    .ok()
                    .and_then(|kek| aes_kw::KekAes256::from(*kek).unwrap_vec(&wrapped).ok())
                    .map(Zeroizing::new)
            }
            (TeeSecret::Rsa(k), ALG_RSA_OAEP_256) => k.decrypt(OaepHash::Sha256, &wrapped),
            (_, alg) => {
                return Err(JweError::UnsupportedKey(format!(
                    "alg {alg} does not match this TEE key"
                )));
            }
        };
        let cek = cek.filter(|c| c.len() == 32).ok_or(JweError::Decrypt)?;
        let cipher = Aes256Gcm::new_from_slice(&cek).map_err(|_| JweError::Decrypt)?;
        cipher
            .decrypt(
                &Nonce::from(iv),
                Payload {
                    msg: &msg,
                    aad: jwe.protected.as_bytes(),
                },
            )
            .map(Zeroizing::new)
            .map_err(|_| JweError::Decrypt)
    }

    /// The private key as PKCS#8 PEM (EC) or PKCS#1 PEM (RSA), as the AA's
    /// `GetToken` returns it.
    pub fn private_pem(&self) -> Result<Zeroizing<String>, JweError> {
        use p256::pkcs8::EncodePrivateKey;
        match &self.secret {
            TeeSecret::Ec(k) => k
                .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
                .map_err(|e| JweError::InvalidKey(e.to_string())),
            TeeSecret::Rsa(k) => k.to_pkcs1_pem(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ec_round_trip_and_header_bytes() {
        let kp = TeeKeyPair::generate_ec();
        let sk = SealingKey::new(&kp.public_jwk()).unwrap();
        let jwe = sk.seal(b"top secret").unwrap();
        let header = String::from_utf8(B64URL.decode(&jwe.protected).unwrap()).unwrap();
        assert!(header.starts_with(
            r#"{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":"P-256","kty":"EC","x":""#
        ));
        assert_eq!(B64URL.decode(&jwe.encrypted_key).unwrap().len(), 40);
        assert_eq!(&*kp.decrypt(&jwe).unwrap(), b"top secret");
        // a second message reuses the agreement but not the CEK
        let jwe2 = sk.seal(b"top secret").unwrap();
        assert_ne!(jwe.encrypted_key, jwe2.encrypted_key);
        assert_eq!(&*kp.decrypt(&jwe2).unwrap(), b"top secret");
    }

    #[test]
    fn header_matches_the_published_aad_form() {
        let header = r#"{"alg":"ECDH-ES+A256KW","enc":"A256GCM","epk":{"crv":"P-256","kty":"EC","x":"X","y":"Y"}}"#;
        assert_eq!(
            B64URL.encode(header),
            "eyJhbGciOiJFQ0RILUVTK0EyNTZLVyIsImVuYyI6IkEyNTZHQ00iLCJlcGsiOnsiY3J2IjoiUC0yNTYiLCJrdHkiOiJFQyIsIngiOiJYIiwieSI6IlkifX0"
        );
    }

    #[test]
    fn rsa_round_trip() {
        let kp = TeeKeyPair::generate_rsa(2048).unwrap();
        let sk = SealingKey::new(&kp.public_jwk()).unwrap();
        let jwe = sk.seal(b"rsa secret").unwrap();
        assert_eq!(&*kp.decrypt(&jwe).unwrap(), b"rsa secret");
    }

    #[test]
    fn tampering_and_wrong_keys_are_rejected() {
        let kp = TeeKeyPair::generate_ec();
        let other = TeeKeyPair::generate_ec();
        let jwe = SealingKey::new(&kp.public_jwk())
            .unwrap()
            .seal(b"s")
            .unwrap();
        assert!(matches!(other.decrypt(&jwe), Err(JweError::Decrypt)));
        let mut t = jwe.clone();
        let mut ct = B64URL.decode(&t.ciphertext).unwrap();
        ct[0] ^= 1;
        t.ciphertext = B64URL.encode(ct);
        assert!(matches!(kp.decrypt(&t), Err(JweError::Decrypt)));
        let mut t = jwe.clone();
        t.iv = "!!".into();
        assert!(matches!(kp.decrypt(&t), Err(JweError::Malformed(_))));
    }

    /// Whatever goes wrong once the private key is involved (wrong key,
    /// corrupted or truncated wrapped key, corrupted payload), the error is
    /// one and the same; and a defect in a public member is reported the
    /// same way whichever key tries it, since the private key is used only
    /// after every public member parsed.
    #[test]
    fn every_unwrap_failure_reads_the_same() {
        let pairs = [
            (
                TeeKeyPair::generate_rsa(2048).unwrap(),
                TeeKeyPair::generate_rsa(2048).unwrap(),
            ),
            (TeeKeyPair::generate_ec(), TeeKeyPair::generate_ec()),
        ];
        let generic = JweError::Decrypt.to_string();
        for (kp, other) in &pairs {
            let jwe = SealingKey::new(&kp.public_jwk())
                .unwrap()
                .seal(b"resource")
                .unwrap();
            assert_eq!(&*kp.decrypt(&jwe).unwrap(), b"resource");
            let edit = |f: &dyn Fn(&mut Vec<u8>), field: fn(&mut FlattenedJwe) -> &mut String| {
                let mut t = jwe.clone();
                let m = field(&mut t);
                let mut raw = B64URL.decode(&*m).unwrap();
                f(&mut raw);
                *m = B64URL.encode(raw);
                t
            };
            let flip = |b: &mut Vec<u8>| {
                let mid = b.len() / 2;
                b[mid] ^= 0x40;
            };
            let cut = |b: &mut Vec<u8>| {
                b.pop();
            };
            let cases = [
                ("wrong key", other.decrypt(&jwe)),
                (
                    "corrupted wrapped key",
                    kp.decrypt(&edit(&flip, |j| &mut j.encrypted_key)),
                ),
                (
                    "truncated wrapped key",
                    kp.decrypt(&edit(&cut, |j| &mut j.encrypted_key)),
                ),
                (
                    "corrupted payload",
                    kp.decrypt(&edit(&flip, |j| &mut j.ciphertext)),
                ),
            ];
            for (what, r) in cases {
                assert_eq!(r.unwrap_err().to_string(), generic, "{what}");
            }
            let mut bad_iv = jwe.clone();
            bad_iv.iv = B64URL.encode([0u8; 13]);
            assert_eq!(
                kp.decrypt(&bad_iv).unwrap_err().to_string(),
                other.decrypt(&bad_iv).unwrap_err().to_string()
            );
        }
    }

    #[test]
    fn bad_keys_are_refused_before_sealing() {
        let bad = TeePubKey::EC {
            crv: "P-256".into(),
            alg: ALG_ECDH_ES_A256KW.into(),
            x: B64URL.encode([1u8; 32]),
            y: B64URL.encode([2u8; 32]),
        };
        assert!(matches!(
            SealingKey::new(&bad),
            Err(JweError::InvalidKey(_))
        ));
        let bad = TeePubKey::EC {
            crv: "P-384".into(),
            alg: ALG_ECDH_ES_A256KW.into(),
            x: "x".into(),
            y: "y".into(),
        };
        assert!(matches!(
            SealingKey::new(&bad),
            Err(JweError::UnsupportedKey(_))
        ));
        let bad = TeePubKey::RSA {
            alg: "RSA1_5".into(),
            k_mod: "AQAB".into(),
            k_exp: "AQAB".into(),
        };
        assert!(matches!(
            SealingKey::new(&bad),
            Err(JweError::UnsupportedKey(_))
        ));
    }
}
