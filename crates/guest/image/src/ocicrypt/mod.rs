//! ocicrypt layer encryption: `+encrypted` media types, the
//! `AES_256_CTR_HMAC_SHA256` block cipher, and the key wrappers (JWE
//! recipients, the CoCo key-provider packet for KBS-held keys).
//!
//! The HMAC covers the whole ciphertext and is checked before a single
//! decrypted byte is used: the pipeline computes it while the blob streams
//! into the cache, and decrypts only after it matched.

pub mod jwe;
pub mod provider;

use crate::ResourceFetcher;
use crate::keys::{PrivateKey, PublicKey};
use aes::Aes256;
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use ctr::cipher::{KeyIvInit, StreamCipher};
use provider::AnnotationPacket;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use zeroize::{Zeroize, Zeroizing};

/// Media-type suffix of an encrypted layer.
pub const ENCRYPTED_SUFFIX: &str = "+encrypted";
/// JWE-wrapped keys (comma-separated b64 entries).
pub const ANNOTATION_JWE: &str = "org.opencontainers.image.enc.keys.jwe";
/// Key-provider-wrapped keys: this prefix plus the provider name.
pub const ANNOTATION_PROVIDER_PREFIX: &str = "org.opencontainers.image.enc.keys.provider.";
/// The provider name CoCo uses for KBS-held keys.
pub const PROVIDER_NAME: &str = "attestation-agent";
/// Public options (cipher, HMAC).
pub const ANNOTATION_PUBOPTS: &str = "org.opencontainers.image.enc.pubopts";
/// The only block cipher ocicrypt defines.
pub const CIPHER: &str = "AES_256_CTR_HMAC_SHA256";
/// What any failure to get the layer key out of a wrapped copy reads: the
/// same words for a wrong key, bad padding, a bad length, a key-wrap, GCM
/// or private-options failure, so the error is no oracle for whoever
/// crafted the annotations (the host controls them).
pub const UNWRAP_FAILED: &str = "cannot unwrap the layer key with any configured key";

/// Why a layer key could not be obtained.
#[derive(Debug, thiserror::Error)]
pub enum DecryptError {
    /// The layer's annotations are malformed.
    #[error("encrypted layer {digest}: {reason}")]
    Malformed {
        /// Layer digest.
        digest: String,
        /// What is wrong.
        reason: String,
    },
    /// Nothing we have can unwrap the key.
    #[error("encrypted layer {digest}: no key to decrypt it: {tried}")]
    NoKey {
        /// Layer digest.
        digest: String,
        /// What was tried, and what the layer is wrapped for.
        tried: String,
    },
}

#[derive(Serialize, Deserialize)]
struct PublicOptions {
    cipher: String,
    hmac: String,
    #[serde(default)]
    cipheroptions: BTreeMap<String, String>,
}

#[derive(Serialize, Deserialize)]
struct PrivateOptions {
    symkey: String,
    #[serde(default)]
    cipheroptions: BTreeMap<String, String>,
    #[serde(default)]
    digest: String,
}

impl Drop for PrivateOptions {
    fn drop(&mut self) {
        self.symkey.zeroize();
        self.cipheroptions.values_mut().for_each(Zeroize::zeroize);
    }
}

/// Everything needed to check and decrypt one layer.
pub struct LayerKey {
    symkey: Zeroizing<[u8; 32]>,
    nonce: [u8; 16],
    hmac: [u8; 32],
}

impl std::fmt::Debug for LayerKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LayerKey(..)")
    }
}

/// Where layer keys may come from.
#[derive(Default, Clone)]
pub struct DecryptConfig {
    /// JWE recipient private keys.
    pub private_keys: std::sync::Arc<Vec<PrivateKey>>,
    /// Fetches KEKs named by key-provider packets (`kbs:///…`).
    pub fetcher: Option<std::sync::Arc<dyn ResourceFetcher>>,
}

/// Whether a layer media type is ocicrypt-encrypted.
pub fn is_encrypted(media_type: &str) -> bool {
    media_type.ends_with(ENCRYPTED_SUFFIX)
}

fn entries(v: &str) -> impl Iterator<Item = &str> {
    v.split(',').map(str::trim).filter(|e| !e.is_empty())
}

impl LayerKey {
    /// Unwraps the key of a layer from its descriptor annotations: JWE
    /// recipients first (local keys), then KBS-held KEKs.
    pub async fn unwrap(
        digest: &str,
        annotations: &HashMap<String, String>,
        cfg: &DecryptConfig,
    ) -> Result<Self, DecryptError> {
        let malformed = |reason: String| DecryptError::Malformed {
            digest: digest.to_string(),
            reason,
        };
        let pubopts = annotations
            .get(ANNOTATION_PUBOPTS)
            .ok_or_else(|| malformed(format!("no {ANNOTATION_PUBOPTS} annotation")))?;
        let pubopts: PublicOptions = B64
            .decode(pubopts.trim())
            .ok()
            .and_then(|j| serde_json::from_slice(&j).ok())
            .ok_or_else(|| malformed("pubopts is not b64 JSON".into()))?;
        if pubopts.cipher != CIPHER {
            return Err(malformed(format!(
                "cipher {} (only {CIPHER})",
                pubopts.cipher
            )));
        }
        let hmac: [u8; 32] = B64
            .decode(&pubopts.hmac)
            .ok()
            .and_then(|h| h.try_into().ok())
            .ok_or_else(|| malformed("pubopts hmac is not 32 bytes of b64".into()))?;

        let mut tried = Vec::new();
        let mut note = |what: String| {
            if !tried.contains(&what) {
                tried.push(what);
            }
        };
        if let Some(v) = annotations.get(ANNOTATION_JWE) {
            for entry in entries(v) {
                let jwe = B64
                    .decode(entry)
                    .map_err(|_| malformed("JWE entry is not base64".into()))?;
                match jwe::open(&jwe, &cfg.private_keys) {
                    Ok(private) => match Secrets::from_private_options(&private) {
                        Some(s) => return Ok(s.with_hmac(hmac)),
                        None => note(format!("JWE: {UNWRAP_FAILED}")),
                    },
                    Err(e) => note(format!("JWE: {e}")),
                }
            }
        }
        for (name, v) in annotations {
            if !name.starts_with(ANNOTATION_PROVIDER_PREFIX) {
                continue;
            }
            for entry in entries(v) {
                let packet =
                    AnnotationPacket::parse(entry).map_err(|e| malformed(e.to_string()))?;
                let Some(fetcher) = &cfg.fetcher else {
                    note(format!(
                        "KBS key {}: no KBS configured (use --kbs)",
                        packet.kid
                    ));
                    continue;
                };
                let kek = fetcher
                    .fetch(&packet.kid)
                    .await
                    .map_err(|e| DecryptError::NoKey {
                        digest: digest.to_string(),
                        tried: format!("fetching the KEK {}: {e}", packet.kid),
                    })?;
                // The packet's own error says which step failed: not passed on.
                let secrets = packet
                    .unwrap(&kek)
                    .ok()
                    .and_then(|private| Secrets::from_private_options(&private));
                match secrets {
                    Some(s) => return Ok(s.with_hmac(hmac)),
                    None => note(format!("KBS key {}: {UNWRAP_FAILED}", packet.kid)),
                }
            }
        }
        if tried.is_empty() {
            tried.push("the layer carries no wrapped key this pipeline supports".into());
        }
        Err(DecryptError::NoKey {
            digest: digest.to_string(),
            tried: tried.join("; "),
        })
    }

    /// A fresh random key for encrypting a layer.
    pub fn generate() -> Self {
        let mut symkey = Zeroizing::new([0u8; 32]);
        OsRng.fill_bytes(symkey.as_mut());
        let mut nonce = [0u8; 16];
        OsRng.fill_bytes(&mut nonce);
        Self {
            symkey,
            nonce,
            hmac: [0; 32],
        }
    }

    /// The keystream for this layer, from the start.
    pub fn cipher(&self) -> LayerCipher {
        LayerCipher(ctr::Ctr128BE::<Aes256>::new(
            self.symkey.as_ref().into(),
            &self.nonce.into(),
        ))
    }

    /// A running HMAC over the ciphertext.
    pub fn mac(&self) -> LayerMac {
        LayerMac(ring::hmac::Context::with_key(&ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            self.symkey.as_ref(),
        )))
    }

    /// Whether a finished MAC equals the one in the layer's public options
    /// (constant time).
    pub fn mac_matches(&self, mac: LayerMac) -> bool {
        let got = mac.0.sign();
        let diff = got
            .as_ref()
            .iter()
            .zip(self.hmac.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        got.as_ref().len() == 32 && diff == 0
    }

    /// The descriptor annotations for a layer encrypted with this key:
    /// `mac` over the ciphertext, `plain_digest` of the plaintext blob,
    /// wrapped for each JWE recipient and each `(kid, KEK)` pair.
    pub fn annotations(
        &self,
        mac: LayerMac,
        plain_digest: &str,
        recipients: &[PublicKey],
        keks: &[(String, Zeroizing<[u8; 32]>)],
    ) -> Result<BTreeMap<String, String>, jwe::JweError> {
        let opts = PrivateOptions {
            symkey: B64.encode(self.symkey.as_ref()),
            cipheroptions: BTreeMap::from([("nonce".to_string(), B64.encode(self.nonce))]),
            digest: plain_digest.to_string(),
        };
        let private = Zeroizing::new(serde_json::to_vec(&opts).unwrap_or_default());
        drop(opts);
        let pubopts = PublicOptions {
            cipher: CIPHER.into(),
            hmac: B64.encode(mac.0.sign().as_ref()),
            cipheroptions: BTreeMap::new(),
        };
        let mut out = BTreeMap::new();
        out.insert(
            ANNOTATION_PUBOPTS.to_string(),
            B64.encode(serde_json::to_vec(&pubopts).unwrap_or_default()),
        );
        if !recipients.is_empty() {
            out.insert(
                ANNOTATION_JWE.to_string(),
                B64.encode(jwe::seal(&private, recipients)?),
            );
        }
        if !keks.is_empty() {
            let packets: Vec<String> = keks
                .iter()
                .map(|(kid, kek)| AnnotationPacket::seal(kid, kek, &private))
                .collect();
            out.insert(
                format!("{ANNOTATION_PROVIDER_PREFIX}{PROVIDER_NAME}"),
                packets.join(","),
            );
        }
        Ok(out)
    }
}

/// The layer key and nonce from unwrapped private options.
struct Secrets {
    symkey: Zeroizing<[u8; 32]>,
    nonce: [u8; 16],
}

impl Secrets {
    /// `None` for anything unusable: the caller reports it as
    /// [`UNWRAP_FAILED`], since an unauthenticated wrap (`A256CTR`) lets the
    /// sender flip plaintext bits and watch which parse error comes back.
    fn from_private_options(private: &[u8]) -> Option<Self> {
        let opts: PrivateOptions = serde_json::from_slice(private).ok()?;
        let raw = Zeroizing::new(B64.decode(&opts.symkey).ok()?);
        let mut symkey = Zeroizing::new([0u8; 32]);
        if raw.len() != 32 {
            return None;
        }
        symkey.copy_from_slice(&raw);
        // The private options only, as ocicrypt reads it: the public ones
        // are not authenticated, and the MAC covers only the ciphertext.
        let nonce = opts
            .cipheroptions
            .get("nonce")
            .and_then(|n| B64.decode(n).ok())
            .and_then(|n| <[u8; 16]>::try_from(n).ok())?;
        Some(Self { symkey, nonce })
    }

    fn with_hmac(self, hmac: [u8; 32]) -> LayerKey {
        LayerKey {
            symkey: self.symkey,
            nonce: self.nonce,
            hmac,
        }
    }
}

/// AES-256-CTR keystream of a layer.
pub struct LayerCipher(ctr::Ctr128BE<Aes256>);

impl LayerCipher {
    /// Encrypts or decrypts the next bytes in place.
    pub fn apply(&mut self, buf: &mut [u8]) {
        self.0.apply_keystream(buf);
    }
}

/// HMAC-SHA256 of a layer's ciphertext, fed as it streams.
pub struct LayerMac(ring::hmac::Context);

impl LayerMac {
    /// Feeds ciphertext.
    pub fn update(&mut self, data: &[u8]) {
        self.0.update(data);
    }
}

/// A reader that decrypts as it reads (use only after the MAC matched).
pub struct DecryptingReader<R> {
    inner: R,
    cipher: LayerCipher,
}

impl<R: std::io::Read> DecryptingReader<R> {
    /// Wraps a ciphertext reader.
    pub fn new(inner: R, key: &LayerKey) -> Self {
        Self {
            inner,
            cipher: key.cipher(),
        }
    }
}

impl<R: std::io::Read> std::io::Read for DecryptingReader<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.cipher.apply(&mut buf[..n]);
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    /// Encrypts `plain` for `recipients`, as the owner tool does.
    fn encrypt(plain: &[u8], recipients: &[PublicKey]) -> (Vec<u8>, HashMap<String, String>) {
        let key = LayerKey::generate();
        let mut ct = plain.to_vec();
        key.cipher().apply(&mut ct);
        let mut mac = key.mac();
        mac.update(&ct);
        let ann = key.annotations(mac, "sha256:00", recipients, &[]).unwrap();
        (ct, ann.into_iter().collect())
    }

    #[tokio::test]
    async fn jwe_layer_round_trip_and_hmac() {
        let sk = p256::SecretKey::random(&mut OsRng);
        let pk = PublicKey::Ec(sk.public_key());
        let plain: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let (ct, ann) = encrypt(&plain, &[pk]);
        assert_ne!(ct, plain);
        let cfg = DecryptConfig {
            private_keys: std::sync::Arc::new(vec![PrivateKey::Ec(sk)]),
            fetcher: None,
        };
        let key = LayerKey::unwrap("sha256:l", &ann, &cfg).await.unwrap();
        // The MAC in chunks equals the one in pubopts.
        let mut mac = key.mac();
        for c in ct.chunks(4096) {
            mac.update(c);
        }
        assert!(key.mac_matches(mac));
        let mut out = Vec::new();
        DecryptingReader::new(ct.as_slice(), &key)
            .read_to_end(&mut out)
            .unwrap();
        assert_eq!(out, plain);
        // One flipped ciphertext bit fails the MAC.
        let mut bad = ct.clone();
        bad[50_000] ^= 1;
        let mut mac = key.mac();
        mac.update(&bad);
        assert!(!key.mac_matches(mac));
    }

    /// A wrong key, a corrupted or truncated RSA ciphertext and a
    /// corrupted JWE payload all give the same error text, for RSA and EC
    /// recipients alike.
    #[tokio::test]
    async fn every_unwrap_failure_reads_the_same() {
        use cocoon_types::rsa_oaep::RsaDecryptionKey;
        let rsa = RsaDecryptionKey::generate(2048).unwrap();
        let rsa_pub = PublicKey::Rsa(Box::new(rsa.public_key().unwrap()));
        let other_rsa = RsaDecryptionKey::generate(2048).unwrap();
        let ec = p256::SecretKey::random(&mut OsRng);
        let ec_pub = PublicKey::Ec(ec.public_key());
        let other_ec = p256::SecretKey::random(&mut OsRng);
        let cases = [
            (
                rsa_pub,
                PrivateKey::Rsa(Box::new(rsa)),
                PrivateKey::Rsa(Box::new(other_rsa)),
            ),
            (ec_pub, PrivateKey::Ec(ec), PrivateKey::Ec(other_ec)),
        ];
        let expected =
            format!("encrypted layer sha256:l: no key to decrypt it: JWE: {UNWRAP_FAILED}");
        for (public, right, wrong) in cases {
            let (_, ann) = encrypt(b"layer", std::slice::from_ref(&public));
            let right = DecryptConfig {
                private_keys: std::sync::Arc::new(vec![right]),
                fetcher: None,
            };
            let wrong = DecryptConfig {
                private_keys: std::sync::Arc::new(vec![wrong]),
                fetcher: None,
            };
            assert!(LayerKey::unwrap("sha256:l", &ann, &right).await.is_ok());
            // Rewrites one base64url member of the (flattened) JWE.
            let edit = |member: &str, f: &dyn Fn(&mut Vec<u8>)| {
                let jwe = B64.decode(&ann[ANNOTATION_JWE]).unwrap();
                let mut v: serde_json::Value = serde_json::from_slice(&jwe).unwrap();
                let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
                let mut raw = b64u.decode(v[member].as_str().unwrap()).unwrap();
                f(&mut raw);
                v[member] = serde_json::Value::String(b64u.encode(raw));
                let mut a = ann.clone();
                a.insert(ANNOTATION_JWE.into(), B64.encode(v.to_string()));
                a
            };
            let flip = |b: &mut Vec<u8>| {
                let mid = b.len() / 2;
                b[mid] ^= 0x40;
            };
            let cut = |b: &mut Vec<u8>| {
                b.pop();
            };
            let errors = [
                (
                    "wrong key",
                    LayerKey::unwrap("sha256:l", &ann, &wrong).await,
                ),
                (
                    "corrupted wrapped key",
                    LayerKey::unwrap("sha256:l", &edit("encrypted_key", &flip), &right).await,
                ),
                (
                    "truncated wrapped key",
                    LayerKey::unwrap("sha256:l", &edit("encrypted_key", &cut), &right).await,
                ),
                (
                    "corrupted payload",
                    LayerKey::unwrap("sha256:l", &edit("ciphertext", &flip), &right).await,
                ),
            ];
            for (what, r) in errors {
                assert_eq!(r.unwrap_err().to_string(), expected, "{what}");
            }
        }
    }

    #[tokio::test]
    async fn missing_keys_are_explained() {
        let sk = p256::SecretKey::random(&mut OsRng);
        let (_, ann) = encrypt(b"x", &[PublicKey::Ec(sk.public_key())]);
        let err = LayerKey::unwrap("sha256:l", &ann, &DecryptConfig::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("no key to decrypt"), "{err}");
        let mut ann2 = ann.clone();
        ann2.remove(ANNOTATION_PUBOPTS);
        let err = LayerKey::unwrap("sha256:l", &ann2, &DecryptConfig::default())
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains("pubopts"), "{err}");
    }
}
