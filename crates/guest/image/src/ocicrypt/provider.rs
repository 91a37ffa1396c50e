//! The CoCo key-provider annotation packet: the private layer options
//! wrapped with a key-encryption key (KEK) the KBS holds under `kid`.
//! Version 1 is what `coco_keyprovider` writes; version 2 (the CDH's) adds
//! `version`, `provider`, `provider_settings` and `annotations`.

use aes_gcm::aead::{Aead, KeyInit};
use aes_gcm::{Aes256Gcm, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use rand_core::{OsRng, RngCore};
use serde::{Deserialize, Serialize};
use zeroize::Zeroizing;

/// Why a packet could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PacketError {
    /// Not a packet we understand.
    #[error("malformed key-provider annotation: {0}")]
    Malformed(String),
    /// The KEK does not open the wrapped options.
    #[error("the key from {kid} does not unwrap the layer key (wrong key or tampered annotation)")]
    WrongKey {
        /// The key id.
        kid: String,
    },
}

/// The packet, as JSON in the annotation (after base64).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AnnotationPacket {
    /// Packet version (v2); absent in v1.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// The KEK's resource URI, `kbs:///repo/type/tag`.
    pub kid: String,
    /// b64 of the wrapped private options (GCM tag appended).
    pub wrapped_data: String,
    /// b64 of the IV.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub iv: Option<String>,
    /// `A256GCM` (or the unauthenticated `A256CTR`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wrap_type: Option<String>,
    /// `kbs` (default) or a KMS name (v2).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub provider: Option<String>,
}

impl AnnotationPacket {
    /// Parses one b64 annotation entry.
    pub fn parse(entry: &str) -> Result<Self, PacketError> {
        let json = B64
            .decode(entry.trim())
            .map_err(|_| PacketError::Malformed("not base64".into()))?;
        let p: Self = serde_json::from_slice(&json)
            .map_err(|e| PacketError::Malformed(format!("packet JSON: {e}")))?;
        if let Some(v) = &p.version
            && v != "0.1.0"
        {
            return Err(PacketError::Malformed(format!(
                "packet version {v} (only 0.1.0)"
            )));
        }
        if let Some(pr) = &p.provider
            && pr != "kbs"
        {
            return Err(PacketError::Malformed(format!(
                "provider {pr}: only KBS-held keys are supported"
            )));
        }
        if !p.kid.starts_with("kbs://") {
            return Err(PacketError::Malformed(format!(
                "kid {:?} is not a kbs:/// resource URI",
                p.kid
            )));
        }
        Ok(p)
    }

    /// Unwraps the private options with the KEK fetched for `kid`.
    pub fn unwrap(&self, kek: &[u8]) -> Result<Zeroizing<Vec<u8>>, PacketError> {
        let malformed = |m: &str| PacketError::Malformed(m.to_string());
        let wrong = || PacketError::WrongKey {
            kid: self.kid.clone(),
        };
        if kek.len() != 32 {
            return Err(PacketError::Malformed(format!(
                "the KEK at {} is {} bytes, not 32",
                self.kid,
                kek.len()
            )));
        }
        let data = B64
            .decode(&self.wrapped_data)
            .map_err(|_| malformed("wrapped_data is not base64"))?;
        let iv = B64
            .decode(self.iv.as_deref().ok_or_else(|| malformed("no iv"))?)
            .map_err(|_| malformed("iv is not base64"))?;
        match self.wrap_type.as_deref() {
            Some("A256GCM") => {
                let iv: [u8; 12] = iv
                    .try_into()
                    .map_err(|_| malformed("A256GCM iv must be 12 bytes"))?;
                Aes256Gcm::new_from_slice(kek)
                    .map_err(|_| wrong())?
                    .decrypt(&Nonce::from(iv), data.as_slice())
                    .map(Zeroizing::new)
                    .map_err(|_| wrong())
            }
            Some("A256CTR") => {
                use ctr::cipher::{KeyIvInit, StreamCipher};
                let iv: [u8; 16] = iv
                    .try_into()
                    .map_err(|_| malformed("A256CTR iv must be 16 bytes"))?;
                let mut out = Zeroizing::new(data);
                ctr::Ctr128BE::<aes::Aes256>::new(kek.into(), &iv.into()).apply_keystream(&mut out);
                Ok(out)
            }
            other => Err(PacketError::Malformed(format!(
                "wrap_type {other:?} (A256GCM or A256CTR)"
            ))),
        }
    }

    /// Wraps private options with a KEK (A256GCM, v1 layout as
    /// `coco_keyprovider` writes it) and returns the b64 annotation entry.
    pub fn seal(kid: &str, kek: &[u8; 32], private_options: &[u8]) -> String {
        let mut iv = [0u8; 12];
        OsRng.fill_bytes(&mut iv);
        let wrapped = Aes256Gcm::new(kek.into())
            .encrypt(&Nonce::from(iv), private_options)
            .unwrap_or_default();
        let p = Self {
            version: None,
            kid: kid.to_string(),
            wrapped_data: B64.encode(wrapped),
            iv: Some(B64.encode(iv)),
            wrap_type: Some("A256GCM".into()),
            provider: None,
        };
        B64.encode(serde_json::to_vec(&p).unwrap_or_default())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seal_and_unwrap() {
        let kek = [7u8; 32];
        let entry = AnnotationPacket::seal("kbs:///default/key/k1", &kek, b"{\"symkey\":\"x\"}");
        let p = AnnotationPacket::parse(&entry).unwrap();
        assert_eq!(p.kid, "kbs:///default/key/k1");
        assert_eq!(&*p.unwrap(&kek).unwrap(), b"{\"symkey\":\"x\"}");
        assert!(matches!(
            p.unwrap(&[8u8; 32]),
            Err(PacketError::WrongKey { .. })
        ));
        assert!(p.unwrap(&[7u8; 16]).is_err());
    }

    #[test]
    fn v2_and_bad_packets() {
        let v2 = B64.encode(
            r#"{"version":"0.1.0","provider":"kbs","kid":"kbs:///a/b/c","wrapped_data":"","iv":"","wrap_type":"A256GCM","provider_settings":{},"annotations":{}}"#,
        );
        assert!(AnnotationPacket::parse(&v2).is_ok());
        for bad in [
            r#"{"kid":"/default/image-kek/1","wrapped_data":""}"#,
            r#"{"version":"9","kid":"kbs:///a/b/c","wrapped_data":""}"#,
            r#"{"provider":"aliyun","kid":"kbs:///a/b/c","wrapped_data":""}"#,
            "not json",
        ] {
            assert!(AnnotationPacket::parse(&B64.encode(bad)).is_err(), "{bad}");
        }
    }
}
