//! Arm CCA: the CCA attestation token (platform and realm tokens, each a
//! COSE_Sign1). Checks, in order:
//!
//! 1. the token parses (`token.rs`);
//! 2. the realm token is signed by the RAK it carries (ES384);
//! 3. the platform token's challenge is the hash of that RAK, which binds
//!    the realm token to the platform;
//! 4. the platform token is signed by a platform attestation key (CPAK)
//!    the trustee trusts (`--cca-cpak`);
//! 5. the realm challenge is the session's report data (zero-padded to 64
//!    bytes), and with initdata the realm personalization value (RPV)
//!    equals its digest exactly (64 bytes: SHA-512).
//!
//! Claims are CoCo's: `platform.cca-platform-*`, `realm.cca-realm-*`
//! (byte strings in base64), `report_data` and `init_data` in hex.

pub mod token;

use crate::{TeeClaims, TeeClass, VerifyError, VerifyInput};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cocoon_types::Tee;
use serde_json::{Value, json};
use std::sync::Arc;
use token::CcaToken;

const TEE: &str = "cca";

fn invalid(reason: impl Into<String>) -> VerifyError {
    VerifyError::Invalid {
        tee: TEE,
        reason: reason.into(),
    }
}

/// Trusted platform attestation keys: uncompressed SEC1 points (P-256 or
/// P-384), read from PEM public keys or EC JWKs.
#[derive(Debug, Clone, Default)]
pub struct Cpaks(pub Vec<Vec<u8>>);

impl Cpaks {
    /// Loads a file (PEM public keys and/or a JWK or JWK set) or every
    /// `*.pem`/`*.json`/`*.jwk` file in a directory.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let mut keys = Vec::new();
        for (f, bytes) in crate::read_file_or_dir(path, &["pem", "json", "jwk"])? {
            let text =
                String::from_utf8(bytes).map_err(|_| format!("{} is not text", f.display()))?;
            keys.extend(parse_keys(&text).map_err(|e| format!("{}: {e}", f.display()))?);
        }
        if keys.is_empty() {
            return Err(format!("no CPAK public key in {}", path.display()));
        }
        Ok(Self(keys))
    }
}

/// EC public keys from PEM SubjectPublicKeyInfo blocks or JWKs.
pub fn parse_keys(text: &str) -> Result<Vec<Vec<u8>>, String> {
    use x509_cert::der::DecodePem;
    let mut keys = Vec::new();
    if text.contains("-----BEGIN PUBLIC KEY-----") {
        for block in text.split_inclusive("-----END PUBLIC KEY-----") {
            let Some(start) = block.find("-----BEGIN PUBLIC KEY-----") else {
                continue;
            };
            let spki = x509_cert::spki::SubjectPublicKeyInfoOwned::from_pem(&block[start..])
                .map_err(|e| format!("public key PEM: {e}"))?;
            keys.push(spki.subject_public_key.raw_bytes().to_vec());
        }
        return Ok(keys);
    }
    let v: Value =
        serde_json::from_str(text).map_err(|_| "neither PEM public keys nor JWK JSON")?;
    let list = match v.get("keys").and_then(|k| k.as_array()) {
        Some(l) => l.clone(),
        None => vec![v],
    };
    let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    for k in list {
        let coord = |name: &str| {
            k[name]
                .as_str()
                .and_then(|s| b64u.decode(s.trim_end_matches('=')).ok())
                .ok_or_else(|| format!("JWK without base64url {name}"))
        };
        if k["kty"] != "EC" {
            return Err("a CPAK JWK must be kty EC".into());
        }
        let mut point = vec![4u8];
        point.extend(coord("x")?);
        point.extend(coord("y")?);
        keys.push(point);
    }
    Ok(keys)
}

/// The token from evidence: `{"token": b64 | [bytes]}`, or raw CBOR bytes.
pub fn token_from_evidence(ev: &Value) -> Result<Vec<u8>, VerifyError> {
    let malformed = |detail: &str| VerifyError::Malformed {
        tee: TEE,
        detail: detail.into(),
    };
    match &ev["token"] {
        Value::String(s) => B64.decode(s).map_err(|_| malformed("token is not base64")),
        Value::Array(a) => a
            .iter()
            .map(|x| x.as_u64().and_then(|b| u8::try_from(b).ok()))
            .collect::<Option<Vec<u8>>>()
            .ok_or_else(|| malformed("token is not a byte array")),
        _ => Err(malformed("no \"token\"")),
    }
}

/// Steps 2-3: the realm token's signature by its RAK, and the platform
/// challenge's binding of that RAK.
pub fn verify_realm(t: &CcaToken) -> Result<(), VerifyError> {
    let rak = &t.realm.public_key;
    if rak.len() != 97 || rak[0] != 4 {
        return Err(invalid(format!(
            "the RAK is {} bytes; an uncompressed P-384 point (97 bytes) is expected",
            rak.len()
        )));
    }
    if t.realm_cose.alg != -35 {
        return Err(invalid(format!(
            "the realm token uses COSE algorithm {}, a P-384 RAK signs with ES384 (-35)",
            t.realm_cose.alg
        )));
    }
    t.realm_cose
        .verify(rak)
        .map_err(|e| invalid(format!("realm token: {e} with its RAK")))?;
    // The platform challenge holds H(RAK); the hash is the one (platform or
    // RAK hash algorithm) whose size the challenge has.
    let hash = |name: &str| -> Option<ring::digest::Digest> {
        let alg = match name {
            "sha-256" => &ring::digest::SHA256,
            "sha-384" => &ring::digest::SHA384,
            "sha-512" => &ring::digest::SHA512,
            _ => return None,
        };
        Some(ring::digest::digest(alg, rak))
    };
    let challenge = &t.platform.challenge;
    let bound = [&t.platform.hash_algo_id, &t.realm.public_key_hash_algo_id]
        .into_iter()
        .filter_map(|a| hash(a))
        .any(|d| d.as_ref() == challenge.as_slice());
    if !bound {
        return Err(invalid(
            "the platform token's challenge is not the hash of the realm's RAK: the realm token is not this platform's",
        ));
    }
    Ok(())
}

/// Step 4: the platform token's signature by one of `cpaks`.
pub fn verify_platform(t: &CcaToken, cpaks: &Cpaks) -> Result<(), VerifyError> {
    if t.platform_cose
        .verify_any(cpaks.0.iter().map(Vec::as_slice))
        .is_ok()
    {
        return Ok(());
    }
    Err(VerifyError::UntrustedKey {
        tee: TEE,
        detail: format!(
            "the platform token (implementation id {}, instance id {}) is not signed by any of the {} trusted CPAKs: it was changed, or its platform's CPAK is not registered (start the trustee with --cca-cpak FILE|DIR holding it)",
            hex::encode(&t.platform.implementation_id),
            hex::encode(&t.platform.instance_id),
            cpaks.0.len()
        ),
    })
}

/// Step 5: report data and initdata.
pub fn check_bindings(t: &CcaToken, input: &VerifyInput<'_>) -> Result<(), VerifyError> {
    if !crate::tdx::padded_equal(&t.realm.challenge, input.expected_report_data) {
        return Err(VerifyError::ReportDataMismatch {
            expected: crate::hex_short(input.expected_report_data),
            found: crate::hex_short(&t.realm.challenge),
        });
    }
    // The personalization value is compared without padding (PROTOCOLS.md §7).
    crate::check_init_data_field(
        TEE,
        "personalization value",
        &t.realm.personalization_value,
        input,
        false,
    )
}

/// Claims in CoCo's CCA shape.
pub fn claims(t: &CcaToken) -> Value {
    let p = &t.platform;
    let r = &t.realm;
    let sw: Vec<Value> = p
        .sw_components
        .iter()
        .map(|c| {
            let mut o = json!({
                "measurement-value": B64.encode(&c.measurement_value),
                "signer-id": B64.encode(&c.signer_id),
            });
            if let Some(t) = &c.measurement_type {
                o["measurement-type"] = json!(t);
            }
            if let Some(v) = &c.version {
                o["version"] = json!(v);
            }
            if let Some(h) = &c.hash_algo_id {
                o["hash-algo-id"] = json!(h);
            }
            o
        })
        .collect();
    let mut platform = json!({
        "cca-platform-profile": p.profile,
        "cca-platform-implementation-id": B64.encode(&p.implementation_id),
        "cca-platform-instance-id": B64.encode(&p.instance_id),
        "cca-platform-challenge": B64.encode(&p.challenge),
        "cca-platform-config": B64.encode(&p.config),
        "cca-platform-lifecycle": p.lifecycle,
        "cca-platform-sw-components": sw,
        "cca-platform-hash-algo-id": p.hash_algo_id,
    });
    if let Some(s) = &p.verification_service {
        platform["cca-platform-service-indicator"] = json!(s);
    }
    let mut realm = json!({
        "cca-realm-challenge": B64.encode(&r.challenge),
        "cca-realm-personalization-value": B64.encode(&r.personalization_value),
        "cca-realm-initial-measurement": B64.encode(&r.initial_measurement),
        "cca-realm-extensible-measurements":
            r.extensible_measurements.iter().map(|m| B64.encode(m)).collect::<Vec<_>>(),
        "cca-realm-hash-algo-id": r.hash_algo_id,
        "cca-realm-public-key": B64.encode(&r.public_key),
        "cca-realm-public-key-hash-algo-id": r.public_key_hash_algo_id,
    });
    if let Some(pr) = &r.profile {
        realm["cca-realm-profile"] = json!(pr);
    }
    json!({
        "platform": platform,
        "realm": realm,
        "init_data": hex::encode(&r.personalization_value),
        "report_data": hex::encode(&r.challenge),
    })
}

/// The CCA verifier the trustee registers.
#[derive(Default)]
pub struct CcaVerifier {
    /// Trusted CPAKs; without any, every token is refused with the reason.
    pub cpaks: Arc<Cpaks>,
}

impl crate::Verifier for CcaVerifier {
    fn tee(&self) -> Tee {
        Tee::Cca
    }

    fn verify(&self, input: &VerifyInput<'_>) -> Result<TeeClaims, VerifyError> {
        let raw = token_from_evidence(input.evidence)?;
        let t = CcaToken::parse(&raw).map_err(|e| VerifyError::Malformed {
            tee: TEE,
            detail: e.to_string(),
        })?;
        verify_realm(&t)?;
        verify_platform(&t, &self.cpaks)?;
        check_bindings(&t, input)?;
        Ok(TeeClaims {
            class: TeeClass::Cpu,
            claims: claims(&t),
            report_data: hex::encode(&t.realm.challenge),
            init_data: input.init_data_digest.map(hex::encode),
        })
    }
}

#[cfg(test)]
mod tests;
