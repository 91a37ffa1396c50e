//! The JWE key wrapper of ocicrypt: the private layer options sealed to one
//! or more public keys, as go-jose writes it (general JSON serialization
//! with several recipients, flattened with one, every header in `protected`
//! when there is one recipient). Algorithms: `RSA-OAEP` (SHA-1, what Go
//! ocicrypt uses for RSA), `RSA-OAEP-256`, `ECDH-ES+A256KW` on P-256; content
//! encryption `A256GCM`.

use crate::keys::{PrivateKey, PublicKey};
use aes_gcm::aead::{Aead, KeyInit, Payload};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use cocoon_types::rsa_oaep::OaepHash;
use p256::elliptic_curve::sec1::ToEncodedPoint;
use rand_core::{OsRng, RngCore};
use rsa::Oaep;
use serde::Deserialize;
use serde_json::{Map, Value, json};
use zeroize::Zeroizing;

const ALG_RSA_OAEP: &str = "RSA-OAEP";
const ALG_RSA_OAEP_256: &str = "RSA-OAEP-256";
const ALG_ECDH_ES_A256KW: &str = "ECDH-ES+A256KW";

/// Why a JWE could not be opened or written.
#[derive(Debug, thiserror::Error)]
pub enum JweError {
    /// Not a JWE we understand.
    #[error("malformed JWE: {0}")]
    Malformed(String),
    /// No key opened the JWE. One variant and one message whatever the
    /// cause (not a recipient, bad padding or length, key-wrap or GCM
    /// failure), so the answer is no oracle for whoever made the JWE.
    #[error("{}", super::UNWRAP_FAILED)]
    Unwrap,
    /// Sealing failed.
    #[error("cannot wrap the layer key: {0}")]
    Wrap(String),
}

#[derive(Deserialize)]
struct RawJwe {
    protected: String,
    #[serde(default)]
    header: Option<Map<String, Value>>,
    #[serde(default)]
    encrypted_key: Option<String>,
    #[serde(default)]
    recipients: Option<Vec<RawRecipient>>,
    iv: String,
    ciphertext: String,
    tag: String,
    #[serde(default)]
    aad: Option<String>,
}

#[derive(Deserialize)]
struct RawRecipient {
    #[serde(default)]
    header: Option<Map<String, Value>>,
    #[serde(default)]
    encrypted_key: Option<String>,
}

fn b64(field: &str, s: &str) -> Result<Vec<u8>, JweError> {
    B64URL
        .decode(s.trim_end_matches('='))
        .map_err(|_| JweError::Malformed(format!("{field} is not base64url")))
}

fn str_field<'a>(h: &'a Map<String, Value>, k: &str) -> Option<&'a str> {
    h.get(k).and_then(Value::as_str)
}

/// Tries every recipient against every key; returns the payload of the
/// first one that unwraps and authenticates. Past the JWE's public
/// structure, every failure is [`JweError::Unwrap`].
pub fn open(jwe_json: &[u8], keys: &[PrivateKey]) -> Result<Zeroizing<Vec<u8>>, JweError> {
    let raw: RawJwe = serde_json::from_slice(jwe_json)
        .map_err(|e| JweError::Malformed(format!("not a JWE JSON serialization: {e}")))?;
    let protected: Map<String, Value> = serde_json::from_slice(&b64("protected", &raw.protected)?)
        .map_err(|e| JweError::Malformed(format!("protected header: {e}")))?;
    let recipients = match raw.recipients {
        Some(r) if !r.is_empty() => r,
        Some(_) => return Err(JweError::Malformed("empty recipients list".into())),
        None => vec![RawRecipient {
            header: raw.header,
            encrypted_key: raw.encrypted_key,
        }],
    };
    if recipients.len() > 64 {
        return Err(JweError::Malformed("more than 64 recipients".into()));
    }
    let enc = str_field(&protected, "enc").unwrap_or_default();
    if enc != "A256GCM" {
        return Err(JweError::Malformed(format!(
            "content encryption {enc:?} (only A256GCM)"
        )));
    }
    let iv: [u8; 12] = b64("iv", &raw.iv)?
        .try_into()
        .map_err(|_| JweError::Malformed("iv must be 12 bytes".into()))?;
    let mut sealed = b64("ciphertext", &raw.ciphertext)?;
    let tag = b64("tag", &raw.tag)?;
    if tag.len() != 16 {
        return Err(JweError::Malformed("tag must be 16 bytes".into()));
    }
    sealed.extend_from_slice(&tag);
    let aad = match &raw.aad {
        Some(a) => format!("{}.{a}", raw.protected),
        None => raw.protected.clone(),
    };
    for r in &recipients {
        let mut header = protected.clone();
        if let Some(h) = &r.header {
            header.extend(h.clone());
        }
        let wrapped = match &r.encrypted_key {
            Some(k) => b64("encrypted_key", k)?,
            None => continue,
        };
        for key in keys {
            let Some(cek) = unwrap_cek(&header, &wrapped, key) else {
                continue;
            };
            let Ok(cipher) = Aes256Gcm::new_from_slice(&cek) else {
                continue;
            };
            let payload = Payload {
                msg: &sealed,
                aad: aad.as_bytes(),
            };
            if let Ok(plain) = cipher.decrypt(&Nonce::from(iv), payload) {
                return Ok(Zeroizing::new(plain));
            }
        }
    }
    Err(JweError::Unwrap)
}

/// The content key if `key` is this recipient (a wrong key fails to unwrap).
fn unwrap_cek(
    header: &Map<String, Value>,
    wrapped: &[u8],
    key: &PrivateKey,
) -> Option<Zeroizing<Vec<u8>>> {
    let cek = match (str_field(header, "alg")?, key) {
        (ALG_RSA_OAEP, PrivateKey::Rsa(k)) => k.decrypt(OaepHash::Sha1, wrapped)?,
        (ALG_RSA_OAEP_256, PrivateKey::Rsa(k)) => k.decrypt(OaepHash::Sha256, wrapped)?,
        (ALG_ECDH_ES_A256KW, PrivateKey::Ec(k)) => {
            let epk = header.get("epk")?.as_object()?;
            if str_field(epk, "crv")? != "P-256" {
                return None;
            }
            let x = B64URL.decode(str_field(epk, "x")?).ok()?;
            let y = B64URL.decode(str_field(epk, "y")?).ok()?;
            if x.len() != 32 || y.len() != 32 {
                return None;
            }
            let mut sec1 = vec![4u8];
            sec1.extend_from_slice(&x);
            sec1.extend_from_slice(&y);
            let peer = p256::PublicKey::from_sec1_bytes(&sec1).ok()?;
            let shared = p256::ecdh::diffie_hellman(k.to_nonzero_scalar(), peer.as_affine());
            let kek = cocoon_types::jwe::concat_kdf(shared.raw_secret_bytes());
            Zeroizing::new(aes_kw::KekAes256::from(*kek).unwrap_vec(wrapped).ok()?)
        }
        _ => return None,
    };
    (cek.len() == 32).then_some(cek)
}

/// Seals `payload` to every recipient, in the serialization go-jose writes.
pub fn seal(payload: &[u8], recipients: &[PublicKey]) -> Result<String, JweError> {
    if recipients.is_empty() {
        return Err(JweError::Wrap("no recipients".into()));
    }
    let mut cek = Zeroizing::new([0u8; 32]);
    OsRng.fill_bytes(cek.as_mut());
    let mut per_recipient = Vec::with_capacity(recipients.len());
    for r in recipients {
        per_recipient.push(wrap_cek(&cek, r)?);
    }
    let single = per_recipient.len() == 1;
    let protected = if single {
        let mut h = per_recipient[0].0.clone();
        h.insert("enc".into(), json!("A256GCM"));
        Value::Object(h)
    } else {
        json!({"enc": "A256GCM"})
    };
    let protected = B64URL.encode(protected.to_string());
    let mut iv = [0u8; 12];
    OsRng.fill_bytes(&mut iv);
    let mut sealed = Aes256Gcm::new(cek.as_ref().into())
        .encrypt(
            &Nonce::from(iv),
            Payload {
                msg: payload,
                aad: protected.as_bytes(),
            },
        )
        .map_err(|_| JweError::Wrap("payload too large".into()))?;
    let tag = sealed.split_off(sealed.len() - 16);
    let mut out = json!({
        "protected": protected,
        "iv": B64URL.encode(iv),
        "ciphertext": B64URL.encode(&sealed),
        "tag": B64URL.encode(tag),
    });
    if single {
        out["encrypted_key"] = json!(B64URL.encode(&per_recipient[0].1));
    } else {
        out["recipients"] = Value::Array(
            per_recipient
                .into_iter()
                .map(|(h, k)| json!({"header": h, "encrypted_key": B64URL.encode(k)}))
                .collect(),
        );
    }
    Ok(out.to_string())
}

fn wrap_cek(cek: &[u8; 32], key: &PublicKey) -> Result<(Map<String, Value>, Vec<u8>), JweError> {
    let mut header = Map::new();
    let wrapped = match key {
        PublicKey::Rsa(k) => {
            header.insert("alg".into(), json!(ALG_RSA_OAEP));
            k.encrypt(&mut OsRng, Oaep::new::<sha1::Sha1>(), cek)
                .map_err(|e| JweError::Wrap(e.to_string()))?
        }
        PublicKey::Ec(k) => {
            let point = k.to_encoded_point(false);
            let (x, y) = (
                B64URL.encode(point.x().ok_or_else(|| JweError::Wrap("EC point".into()))?),
                B64URL.encode(point.y().ok_or_else(|| JweError::Wrap("EC point".into()))?),
            );
            let (kek, ex, ey) = cocoon_types::jwe::ecdh_es_p256(&x, &y)
                .map_err(|e| JweError::Wrap(e.to_string()))?;
            let kek = Zeroizing::new(kek);
            header.insert("alg".into(), json!(ALG_ECDH_ES_A256KW));
            header.insert(
                "epk".into(),
                json!({"kty": "EC", "crv": "P-256", "x": ex, "y": ey}),
            );
            aes_kw::KekAes256::from(*kek)
                .wrap_vec(cek)
                .map_err(|e| JweError::Wrap(e.to_string()))?
        }
    };
    Ok((header, wrapped))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys() -> (PrivateKey, PublicKey, PrivateKey, PublicKey) {
        let ec = p256::SecretKey::random(&mut OsRng);
        let ec_pub = PublicKey::Ec(ec.public_key());
        let rsa = cocoon_types::rsa_oaep::RsaDecryptionKey::generate(2048).unwrap();
        let rsa_pub = PublicKey::Rsa(Box::new(rsa.public_key().unwrap()));
        (
            PrivateKey::Ec(ec),
            ec_pub,
            PrivateKey::Rsa(Box::new(rsa)),
            rsa_pub,
        )
    }

    #[test]
    fn round_trips_single_and_multi_recipient() {
        let (ec, ec_pub, rsa, rsa_pub) = keys();
        let one = seal(b"opts", std::slice::from_ref(&ec_pub)).unwrap();
        assert!(!one.contains("recipients"), "one recipient is flattened");
        assert_eq!(&*open(one.as_bytes(), &[ec]).unwrap(), b"opts");
        let two = seal(b"opts", &[ec_pub, rsa_pub]).unwrap();
        assert!(two.contains("recipients"));
        assert_eq!(&*open(two.as_bytes(), &[rsa]).unwrap(), b"opts");
    }

    #[test]
    fn wrong_key_and_tampering_are_refused() {
        let (ec, ec_pub, rsa, _rsa_pub) = keys();
        let other = PrivateKey::Ec(p256::SecretKey::random(&mut OsRng));
        let jwe = seal(b"opts", &[ec_pub]).unwrap();
        assert!(matches!(
            open(jwe.as_bytes(), &[rsa, other]),
            Err(JweError::Unwrap)
        ));
        let mut v: Value = serde_json::from_str(&jwe).unwrap();
        let ct = v["ciphertext"].as_str().unwrap().to_string();
        let flipped = if ct.starts_with('A') { "B" } else { "A" };
        v["ciphertext"] = json!(format!("{flipped}{}", &ct[1..]));
        assert!(matches!(
            open(v.to_string().as_bytes(), &[ec]),
            Err(JweError::Unwrap)
        ));
        assert!(open(b"{}", &[]).is_err());
    }
}
