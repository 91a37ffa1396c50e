//! Admin authentication: `Authorization: Bearer <JWT>` signed by an admin's
//! private key (Ed25519 `EdDSA`, as stock `kbs-client` signs, or P-256
//! `ES256`), verified against the public keys the trustee holds.
//!
//! Keys are read in the forms OpenSSL writes, so one key serves `cocoon
//! admin` and CoCo's `kbs-client`: PKCS#8 `PRIVATE KEY` (v1 or v2) for
//! Ed25519 and P-256, SEC1 `EC PRIVATE KEY` (with or without a leading `EC
//! PARAMETERS` block) for P-256, and SPKI `PUBLIC KEY` for public keys.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64URL;
use ed25519_dalek::pkcs8::spki::der::pem::LineEnding;
use ed25519_dalek::pkcs8::{DecodePrivateKey, DecodePublicKey, EncodePrivateKey, EncodePublicKey};
use p256::pkcs8::AssociatedOid;
use rustls::pki_types::pem::{self, PemObject};
use rustls::pki_types::{PrivateKeyDer, SubjectPublicKeyInfoDer};
use serde::Deserialize;
use std::path::Path;
use zeroize::{Zeroize, Zeroizing};

/// Clock skew tolerated between the admin's machine and the trustee, seconds.
pub const CLOCK_SKEW_SECS: i64 = 60;

/// Longest admin token lifetime (`exp - iat`) the trustee accepts, seconds.
/// Two hours: CoCo's `kbs-client` signs `iat = now, exp = now + 7200`.
pub const MAX_TOKEN_LIFETIME_SECS: i64 = 7200;

/// Lifetime of the tokens `cocoon admin` makes (one per request), seconds.
pub const CLI_TOKEN_LIFETIME_SECS: i64 = 300;
const _: () = assert!(CLI_TOKEN_LIFETIME_SECS <= MAX_TOKEN_LIFETIME_SECS);

/// Reading an admin key failed.
#[derive(Debug, thiserror::Error)]
pub enum AdminKeyError {
    /// The file cannot be read.
    #[error("cannot read it: {0}")]
    Io(#[from] std::io::Error),
    /// Not PEM, or a PEM block is damaged.
    #[error("not a readable PEM file: {0}")]
    Pem(String),
    /// A private key where a public key belongs.
    #[error(
        "this is a private key; give the trustee only the public key \
         (`openssl pkey -in KEY.pem -pubout -out KEY.pub.pem`)"
    )]
    PrivateGivenForPublic,
    /// No `PUBLIC KEY` block.
    #[error("no PUBLIC KEY block (SPKI PEM, as `openssl pkey -in KEY.pem -pubout` writes it)")]
    NoPublicKey,
    /// No private key block.
    #[error(
        "no PRIVATE KEY or EC PRIVATE KEY block (make one with \
         `openssl genpkey -algorithm ed25519 -out admin-key.pem`)"
    )]
    NoPrivateKey,
    /// A passphrase-protected key.
    #[error(
        "the key is encrypted; admin keys are read unencrypted (keep the file mode 0600), \
         e.g. `openssl pkey -in KEY.pem -out plain.pem`"
    )]
    Encrypted,
    /// An algorithm or curve other than Ed25519 and P-256.
    #[error("{0}: admin keys are Ed25519 or P-256 (prime256v1)")]
    Unsupported(String),
}

/// One trusted admin key.
#[derive(Clone)]
pub enum AdminKey {
    /// Ed25519 (`alg: EdDSA`).
    Ed25519(ed25519_dalek::VerifyingKey),
    /// P-256 (`alg: ES256`).
    P256(p256::ecdsa::VerifyingKey),
}

impl AdminKey {
    /// Reads a PEM SPKI public key (Ed25519 or P-256); other PEM blocks in
    /// the text are skipped.
    pub fn from_pem(text: &str) -> Result<Self, AdminKeyError> {
        let spki = match SubjectPublicKeyInfoDer::from_pem_slice(text.as_bytes()) {
            Ok(spki) => spki,
            Err(pem::Error::NoItemsFound) if text.contains("PRIVATE KEY-----") => {
                return Err(AdminKeyError::PrivateGivenForPublic);
            }
            Err(pem::Error::NoItemsFound) => return Err(AdminKeyError::NoPublicKey),
            Err(e) => return Err(AdminKeyError::Pem(e.to_string())),
        };
        if let Ok(k) = ed25519_dalek::VerifyingKey::from_public_key_der(&spki) {
            return Ok(AdminKey::Ed25519(k));
        }
        if let Ok(k) = p256::PublicKey::from_public_key_der(&spki) {
            return Ok(AdminKey::P256(k.into()));
        }
        Err(AdminKeyError::Unsupported("the public key".into()))
    }

    /// Reads a PEM file (errors do not repeat the path).
    pub fn from_file(path: &Path) -> Result<Self, AdminKeyError> {
        Self::from_pem(&std::fs::read_to_string(path)?)
    }

    /// The key as SPKI PEM (`PUBLIC KEY`).
    pub fn to_pem(&self) -> String {
        let pem = match self {
            AdminKey::Ed25519(k) => k.to_public_key_pem(LineEnding::LF),
            AdminKey::P256(k) => p256::PublicKey::from(k).to_public_key_pem(LineEnding::LF),
        };
        // Both encoders only fail on allocation; the key types are fixed.
        pem.unwrap_or_default()
    }
}

/// An admin's private key: signs the bearer tokens `cocoon admin` sends.
pub enum AdminSigningKey {
    /// Ed25519: tokens are `EdDSA`.
    Ed25519(ed25519_dalek::SigningKey),
    /// P-256: tokens are `ES256`.
    P256(p256::ecdsa::SigningKey),
}

impl AdminSigningKey {
    /// A fresh Ed25519 key.
    pub fn generate_ed25519() -> Self {
        AdminSigningKey::Ed25519(ed25519_dalek::SigningKey::generate(&mut rand_core::OsRng))
    }

    /// Reads a PEM private key as OpenSSL or `cocoon` wrote it (see the
    /// module docs); other PEM blocks (`EC PARAMETERS`) are skipped.
    pub fn from_pem(text: &str) -> Result<Self, AdminKeyError> {
        if text.contains("ENCRYPTED PRIVATE KEY") || text.contains("Proc-Type: 4,ENCRYPTED") {
            return Err(AdminKeyError::Encrypted);
        }
        let der = Zeroizing::new(match PrivateKeyDer::from_pem_slice(text.as_bytes()) {
            Ok(der) => der,
            Err(pem::Error::NoItemsFound) => return Err(AdminKeyError::NoPrivateKey),
            Err(e) => return Err(AdminKeyError::Pem(e.to_string())),
        });
        match &*der {
            PrivateKeyDer::Pkcs8(k) => {
                let der = k.secret_pkcs8_der();
                if let Ok(k) = ed25519_dalek::SigningKey::from_pkcs8_der(der) {
                    return Ok(AdminSigningKey::Ed25519(k));
                }
                p256::SecretKey::from_pkcs8_der(der)
                    .map(|k| AdminSigningKey::P256(k.into()))
                    .map_err(|_| AdminKeyError::Unsupported(describe_pkcs8(der)))
            }
            PrivateKeyDer::Sec1(k) => Self::from_sec1_der(k.secret_sec1_der()),
            PrivateKeyDer::Pkcs1(_) => Err(AdminKeyError::Unsupported("an RSA key".into())),
            _ => Err(AdminKeyError::Unsupported("the key".into())),
        }
    }

    /// SEC1 `ECPrivateKey`; its curve, when named, must be P-256 (the
    /// parser would otherwise take any 32-byte scalar as a P-256 key).
    fn from_sec1_der(der: &[u8]) -> Result<Self, AdminKeyError> {
        let bad = |what: &str| AdminKeyError::Unsupported(format!("the EC PRIVATE KEY {what}"));
        let key = sec1::EcPrivateKey::try_from(der).map_err(|_| bad("is not valid SEC1"))?;
        if let Some(params) = key.parameters
            && params.named_curve() != Some(p256::NistP256::OID)
        {
            return Err(bad("is on another curve"));
        }
        p256::SecretKey::try_from(key)
            .map(|k| AdminSigningKey::P256(k.into()))
            .map_err(|_| bad("is not a valid P-256 key"))
    }

    /// Reads a PEM file (errors do not repeat the path).
    pub fn from_file(path: &Path) -> Result<Self, AdminKeyError> {
        Self::from_pem(&Zeroizing::new(std::fs::read_to_string(path)?))
    }

    /// The key as unencrypted PKCS#8 v1 PEM (`PRIVATE KEY`), what `openssl
    /// genpkey` writes. Ed25519 keys are written without the optional public
    /// key (PKCS#8 v2), which OpenSSL 3.0 and Python's `cryptography` refuse.
    pub fn to_pkcs8_pem(&self) -> Zeroizing<String> {
        let pem = match self {
            AdminSigningKey::Ed25519(k) => {
                let mut bytes = ed25519_dalek::pkcs8::KeypairBytes {
                    secret_key: k.to_bytes(),
                    public_key: None,
                };
                let pem = bytes.to_pkcs8_pem(LineEnding::LF);
                bytes.secret_key.zeroize();
                pem
            }
            AdminSigningKey::P256(k) => k.to_pkcs8_pem(LineEnding::LF),
        };
        // The encoders only fail on allocation; the key types are fixed.
        pem.unwrap_or_default()
    }

    /// The matching public key.
    pub fn public_key(&self) -> AdminKey {
        match self {
            AdminSigningKey::Ed25519(k) => AdminKey::Ed25519(k.verifying_key()),
            AdminSigningKey::P256(k) => AdminKey::P256(*k.verifying_key()),
        }
    }

    /// An admin JWT issued at `now` (`iat`, `nbf`) that expires
    /// `lifetime_secs` later (`exp`).
    pub fn token(&self, now: i64, lifetime_secs: i64) -> String {
        let alg = match self {
            AdminSigningKey::Ed25519(_) => "EdDSA",
            AdminSigningKey::P256(_) => "ES256",
        };
        let h = B64URL.encode(format!(r#"{{"alg":"{alg}","typ":"JWT"}}"#));
        let p = B64URL.encode(format!(
            r#"{{"iat":{now},"nbf":{now},"exp":{}}}"#,
            now.saturating_add(lifetime_secs)
        ));
        let signing_input = format!("{h}.{p}");
        let sig = self.signature(signing_input.as_bytes());
        format!("{signing_input}.{}", B64URL.encode(sig))
    }

    /// The JWS signature over `input`: Ed25519, or P-256 ECDSA over SHA-256
    /// as the fixed 64-byte `r || s`.
    fn signature(&self, input: &[u8]) -> Vec<u8> {
        match self {
            AdminSigningKey::Ed25519(k) => {
                use ed25519_dalek::Signer;
                k.sign(input).to_bytes().to_vec()
            }
            AdminSigningKey::P256(k) => {
                use p256::ecdsa::signature::Signer;
                let sig: p256::ecdsa::Signature = k.sign(input);
                sig.to_bytes().to_vec()
            }
        }
    }
}

/// Names the algorithm of a PKCS#8 key neither Ed25519 nor P-256 read, so
/// the error says what the file holds.
fn describe_pkcs8(der: &[u8]) -> String {
    use p256::pkcs8::der::Decode;
    let Ok(info) = p256::pkcs8::PrivateKeyInfo::from_der(der) else {
        return "the PKCS#8 key is malformed".into();
    };
    let known = |oid: &str| match oid {
        "1.2.840.113549.1.1.1" | "1.2.840.113549.1.1.10" => Some("RSA"),
        "1.3.132.0.34" => Some("P-384"),
        "1.3.132.0.35" => Some("P-521"),
        "1.3.132.0.10" => Some("secp256k1"),
        "1.3.101.110" => Some("X25519"),
        "1.3.101.111" => Some("X448"),
        "1.3.101.113" => Some("Ed448"),
        _ => None,
    };
    let alg = info.algorithm.oid.to_string();
    let curve = info.algorithm.parameters_oid().ok().map(|o| o.to_string());
    if let Some(name) = curve.as_deref().and_then(known) {
        return format!("the key is an EC key on {name}");
    }
    match (known(&alg), curve) {
        (Some(name), _) => format!("the key is of type {name}"),
        (None, Some(curve)) => format!("the key's algorithm is {alg} with parameters {curve}"),
        (None, None) => format!("the key's algorithm is {alg}"),
    }
}

/// Why an admin token was refused (each becomes a 401 with this text).
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum AdminTokenError {
    /// Not three base64url parts.
    #[error("bearer token is not a JWT")]
    NotJwt,
    /// The header is not base64url JSON with `alg`.
    #[error("JWT header is not base64url JSON with an alg")]
    BadHeader,
    /// The signature is not base64url.
    #[error("JWT signature is not base64url")]
    BadSignatureEncoding,
    /// No trusted key verifies the signature.
    #[error("signature ({0}) does not verify with any trusted admin key")]
    NoKeyVerifies(String),
    /// The claims are not JSON with integer times.
    #[error("JWT claims are not base64url JSON with integer iat, exp and nbf (seconds since 1970)")]
    BadClaims,
    /// No `iat`.
    #[error(
        "admin token has no iat (issued-at) claim: the trustee needs it to bound the token's \
         lifetime; make tokens with iat and exp (`cocoon admin` and kbs-client do)"
    )]
    MissingIat,
    /// `iat` lies in the future beyond the skew.
    #[error(
        "admin token was issued {0} s in the future (iat): the admin machine's clock is ahead \
         of the trustee's by more than {CLOCK_SKEW_SECS} s; fix the clock (NTP)"
    )]
    IssuedInFuture(i64),
    /// No `exp`.
    #[error(
        "admin token has no exp claim: admin tokens must expire at most \
         {MAX_TOKEN_LIFETIME_SECS} s after iat"
    )]
    MissingExp,
    /// `exp - iat` is over the bound (or negative).
    #[error(
        "admin token lifetime exp - iat = {0} s is not within 1..={MAX_TOKEN_LIFETIME_SECS} s: \
         make a shorter-lived token"
    )]
    BadLifetime(i128),
    /// `exp` has passed.
    #[error("admin token expired {0} s ago: make a new one (or check the clocks)")]
    Expired(i128),
    /// `nbf` lies in the future beyond the skew.
    #[error("admin token is not valid yet (nbf is {0} s ahead)")]
    NotYetValid(i128),
}

#[derive(Deserialize)]
struct Header {
    alg: String,
}

#[derive(Deserialize)]
struct Claims {
    iat: Option<i64>,
    exp: Option<i64>,
    nbf: Option<i64>,
}

fn signature_verifies(keys: &[AdminKey], alg: &str, signed: &[u8], sig: &[u8]) -> bool {
    keys.iter().any(|k| key_verifies(k, alg, signed, sig))
}

fn key_verifies(k: &AdminKey, alg: &str, signed: &[u8], sig: &[u8]) -> bool {
    match (k, alg) {
        (AdminKey::Ed25519(k), "EdDSA") => ed25519_dalek::Signature::from_slice(sig)
            .map(|sig| k.verify_strict(signed, &sig).is_ok())
            .unwrap_or(false),
        (AdminKey::P256(k), "ES256") => {
            use p256::ecdsa::signature::Verifier;
            p256::ecdsa::Signature::from_slice(sig)
                .map(|sig| k.verify(signed, &sig).is_ok())
                .unwrap_or(false)
        }
        _ => false,
    }
}

/// Which of `keys` signed `token` (the signature alone, not its times),
/// so that the audit log can say which admin acted.
pub fn signer_of(token: &str, keys: &[AdminKey]) -> Option<usize> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return None;
    };
    let header: Header = B64URL
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())?;
    let sig = B64URL.decode(s).ok()?;
    let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
    keys.iter()
        .position(|k| key_verifies(k, &header.alg, signed, &sig))
}

/// A public key's fingerprint as the audit log names it: the SHA-256 of
/// its SPKI PEM text.
pub fn fingerprint(k: &AdminKey) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(k.to_pem().as_bytes()))
}

/// The time rules, on claims whose signature verified: `iat` present and
/// not ahead of `now` by more than [`CLOCK_SKEW_SECS`]; `exp` present,
/// after `iat` by at most [`MAX_TOKEN_LIFETIME_SECS`], and not passed (with
/// the same skew); `nbf`, if present, reached.
fn check_times(c: &Claims, now: i64) -> Result<(), AdminTokenError> {
    let iat = c.iat.ok_or(AdminTokenError::MissingIat)?;
    if iat > now.saturating_add(CLOCK_SKEW_SECS) {
        return Err(AdminTokenError::IssuedInFuture(iat.saturating_sub(now)));
    }
    let exp = c.exp.ok_or(AdminTokenError::MissingExp)?;
    // i128: no claim values can overflow these differences.
    let (iat, exp, now) = (i128::from(iat), i128::from(exp), i128::from(now));
    let skew = i128::from(CLOCK_SKEW_SECS);
    let lifetime = exp - iat;
    if lifetime <= 0 || lifetime > i128::from(MAX_TOKEN_LIFETIME_SECS) {
        return Err(AdminTokenError::BadLifetime(lifetime));
    }
    if exp + skew <= now {
        return Err(AdminTokenError::Expired(now - exp));
    }
    if let Some(nbf) = c.nbf.map(i128::from)
        && nbf - skew > now
    {
        return Err(AdminTokenError::NotYetValid(nbf - now));
    }
    Ok(())
}

/// Verifies `token` against `keys` at `now` (seconds since 1970).
pub fn verify_admin_token(token: &str, keys: &[AdminKey], now: i64) -> Result<(), AdminTokenError> {
    let mut parts = token.split('.');
    let (Some(h), Some(p), Some(s), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(AdminTokenError::NotJwt);
    };
    let header: Header = B64URL
        .decode(h)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AdminTokenError::BadHeader)?;
    let sig = B64URL
        .decode(s)
        .map_err(|_| AdminTokenError::BadSignatureEncoding)?;
    let signed = &token.as_bytes()[..h.len() + 1 + p.len()];
    if !signature_verifies(keys, &header.alg, signed, &sig) {
        return Err(AdminTokenError::NoKeyVerifies(header.alg));
    }
    let claims: Claims = B64URL
        .decode(p)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .ok_or(AdminTokenError::BadClaims)?;
    check_times(&claims, now)
}

#[cfg(test)]
mod tests;
