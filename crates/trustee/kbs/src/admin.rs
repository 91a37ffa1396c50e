//! Admin authentication: `Authorization: Bearer <JWT>` signed by an admin's
//! private key (Ed25519 `EdDSA`, as stock `kbs-client` signs, or P-256
//! `ES256`), verified against the public keys the trustee holds.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ed25519_dalek::pkcs8::DecodePublicKey;
use serde::Deserialize;
use std::path::Path;

/// One trusted admin key.
#[derive(Clone)]
pub enum AdminKey {
    /// Ed25519 (`alg: EdDSA`).
    Ed25519(ed25519_dalek::VerifyingKey),
    /// P-256 (`alg: ES256`).
    P256(p256::ecdsa::VerifyingKey),
}

impl AdminKey {
    /// Reads a PEM SPKI public key (Ed25519 or P-256).
    pub fn from_pem(pem: &str) -> Result<Self, String> {
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_pem(pem) {
            return Ok(AdminKey::Ed25519(k));
        }
        if let Ok(k) = p256::PublicKey::from_public_key_pem(pem) {
            return Ok(AdminKey::P256(k.into()));
        }
        Err("not an Ed25519 or P-256 public key in PEM (SPKI) form".into())
    }

    /// Reads a PEM file.
    pub fn from_file(path: &Path) -> Result<Self, String> {
        let pem = std::fs::read_to_string(path).map_err(|e| format!("{}: {e}", path.display()))?;
        Self::from_pem(&pem).map_err(|e| format!("{}: {e}", path.display()))
    }
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    exp: Option<i64>,
    nbf: Option<i64>,
}

/// Leeway for clock skew between the admin's machine and the trustee.
const LEEWAY_SECS: i64 = 60;

/// Verifies `token` against `keys` at `now`.
pub fn verify_admin_token(token: &str, keys: &[AdminKey], now: i64) -> Result<(), String> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err("bearer token is not a JWT".into());
    };
    let header: Header = B64URL
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("JWT header is not base64url JSON")?;
    let sig = B64URL
        .decode(s)
        .map_err(|_| "JWT signature is not base64url")?;
    let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
    let ok = keys.iter().any(|k| match (k, header.alg.as_str()) {
        (AdminKey::Ed25519(k), "EdDSA") => ed25519_dalek::Signature::from_slice(&sig)
            .map(|sig| k.verify_strict(signed, &sig).is_ok())
            .unwrap_or(false),
        (AdminKey::P256(k), "ES256") => {
            use p256::ecdsa::signature::Verifier;
            p256::ecdsa::Signature::from_slice(&sig)
                .map(|sig| k.verify(signed, &sig).is_ok())
                .unwrap_or(false)
        }
        _ => false,
    });
    if !ok {
        return Err(format!(
            "signature ({}) does not verify with any trusted admin key",
            header.alg
        ));
    }
    let claims: Claims = B64URL
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or("JWT claims are not base64url JSON")?;
    let exp = claims.exp.ok_or("JWT has no exp claim")?;
    if exp + LEEWAY_SECS <= now {
        return Err("admin token expired: make a new one".into());
    }
    if let Some(nbf) = claims.nbf
        && nbf - LEEWAY_SECS > now
    {
        return Err("admin token is not valid yet (nbf)".into());
    }
    Ok(())
}

/// Makes an admin JWT (EdDSA) valid for `lifetime_secs`: what `cocoon admin` sends.
pub fn make_admin_token(key: &ed25519_dalek::SigningKey, now: i64, lifetime_secs: i64) -> String {
    use ed25519_dalek::Signer;
    let h = B64URL.encode(r#"{"alg":"EdDSA","typ":"JWT"}"#);
    let p = B64URL.encode(format!(
        r#"{{"iat":{now},"nbf":{now},"exp":{}}}"#,
        now + lifetime_secs
    ));
    let signing_input = format!("{h}.{p}");
    let sig = key.sign(signing_input.as_bytes());
    format!("{signing_input}.{}", B64URL.encode(sig.to_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand_core::OsRng;

    #[test]
    fn accepts_valid_and_rejects_forged_expired_and_foreign() {
        let k = ed25519_dalek::SigningKey::generate(&mut OsRng);
        let keys = [AdminKey::Ed25519(k.verifying_key())];
        let t = make_admin_token(&k, 1000, 300);
        assert!(verify_admin_token(&t, &keys, 1000).is_ok());
        assert!(
            verify_admin_token(&t, &keys, 1400)
                .unwrap_err()
                .contains("expired")
        );
        let other = ed25519_dalek::SigningKey::generate(&mut OsRng);
        assert!(verify_admin_token(&make_admin_token(&other, 1000, 300), &keys, 1000).is_err());
        let mut parts: Vec<String> = t.split('.').map(String::from).collect();
        parts[1] = B64URL.encode(r#"{"exp":99999999}"#);
        assert!(verify_admin_token(&parts.join("."), &keys, 1000).is_err());
        assert!(verify_admin_token("garbage", &keys, 1000).is_err());
        // alg confusion: an ES256 header over an Ed25519 key never verifies
        parts = t.split('.').map(String::from).collect();
        parts[0] = B64URL.encode(r#"{"alg":"ES256"}"#);
        assert!(verify_admin_token(&parts.join("."), &keys, 1000).is_err());
    }
}
