//! Quote verification: the AK signature over TPMS_ATTEST and the PCR digest
//! recomputed from the PCR values the quoter supplied.

use crate::TpmError;
use crate::structs::{ALG_SHA256, Attest, PCR_COUNT, Signature, alg_name};
use sha2::{Digest, Sha256};

/// A public key able to verify quote signatures, parsed from DER SPKI.
pub enum AkPublicKey {
    /// RSA: verified with RSASSA-PKCS1-v1_5.
    Rsa {
        /// Modulus.
        n: Vec<u8>,
        /// Exponent.
        e: Vec<u8>,
    },
    /// P-256: verified with ECDSA; uncompressed SEC1 point.
    P256(Vec<u8>),
}

impl AkPublicKey {
    /// Parses DER SubjectPublicKeyInfo (RSA or P-256).
    pub fn from_spki_der(der: &[u8]) -> Result<Self, TpmError> {
        use p256::pkcs8::DecodePublicKey as _;
        use rsa::traits::PublicKeyParts as _;
        if let Ok(k) = rsa::RsaPublicKey::from_public_key_der(der) {
            return Ok(AkPublicKey::Rsa {
                n: k.n().to_bytes_be(),
                e: k.e().to_bytes_be(),
            });
        }
        if let Ok(k) = p256::PublicKey::from_public_key_der(der) {
            use p256::elliptic_curve::sec1::ToEncodedPoint as _;
            return Ok(AkPublicKey::P256(
                k.to_encoded_point(false).as_bytes().to_vec(),
            ));
        }
        Err(TpmError::Parse {
            what: "AK public key",
            detail: "not a DER SubjectPublicKeyInfo for RSA or P-256".into(),
        })
    }

    /// Verifies `sig` over `msg`.
    pub fn verify(&self, msg: &[u8], sig: &Signature) -> Result<(), TpmError> {
        use ring::signature as rs;
        match (self, sig) {
            (AkPublicKey::Rsa { n, e }, Signature::RsaSsa { hash, sig }) => {
                let params = match *hash {
                    ALG_SHA256 => &rs::RSA_PKCS1_2048_8192_SHA256,
                    crate::structs::ALG_SHA384 => &rs::RSA_PKCS1_2048_8192_SHA384,
                    crate::structs::ALG_SHA512 => &rs::RSA_PKCS1_2048_8192_SHA512,
                    h => return Err(TpmError::UnsupportedAlgorithm(alg_name(h))),
                };
                rs::RsaPublicKeyComponents { n, e }
                    .verify(params, msg, sig)
                    .map_err(|_| TpmError::BadSignature)
            }
            (AkPublicKey::P256(point), Signature::Ecdsa { hash, r, s }) => {
                if *hash != ALG_SHA256 {
                    return Err(TpmError::UnsupportedAlgorithm(alg_name(*hash)));
                }
                if r.len() > 32 || s.len() > 32 {
                    return Err(TpmError::BadSignature);
                }
                let mut fixed = [0u8; 64];
                fixed[32 - r.len()..32].copy_from_slice(r);
                fixed[64 - s.len()..].copy_from_slice(s);
                rs::UnparsedPublicKey::new(&rs::ECDSA_P256_SHA256_FIXED, point)
                    .verify(msg, &fixed)
                    .map_err(|_| TpmError::BadSignature)
            }
            _ => Err(TpmError::KeySignatureMismatch),
        }
    }
}

/// A quote whose signature and PCR digest were checked.
#[derive(Debug, Clone)]
pub struct VerifiedQuote {
    /// The parsed attestation structure.
    pub attest: Attest,
    /// SHA-256 PCR values 0..23, as supplied and matched against the digest.
    pub pcrs: Vec<[u8; 32]>,
}

/// Verifies a quote: `attest` (TPMS_ATTEST) signed by `ak` with `signature`
/// (TPMT_SIGNATURE), quoting exactly the 24 SHA-256 PCRs whose values are
/// `pcrs`.
pub fn verify_quote(
    ak: &AkPublicKey,
    attest: &[u8],
    signature: &[u8],
    pcrs: &[[u8; 32]],
) -> Result<VerifiedQuote, TpmError> {
    verify_quote_signature(ak, attest, &Signature::parse(signature)?, pcrs)
}

/// [`verify_quote`] with the signature already decoded (Azure's vTPM, for
/// one, sends the bare RSASSA signature rather than a TPMT_SIGNATURE).
pub fn verify_quote_signature(
    ak: &AkPublicKey,
    attest: &[u8],
    sig: &Signature,
    pcrs: &[[u8; 32]],
) -> Result<VerifiedQuote, TpmError> {
    // Signature first: nothing in the body is trusted before it holds.
    ak.verify(attest, sig)?;
    let parsed = Attest::parse(attest)?;
    if pcrs.len() != PCR_COUNT {
        return Err(TpmError::PcrSelection(format!(
            "{} PCR values supplied, expected {PCR_COUNT}",
            pcrs.len()
        )));
    }
    let want: Vec<u8> = (0..PCR_COUNT as u8).collect();
    match parsed.pcr_select.as_slice() {
        [sel] if sel.hash == ALG_SHA256 && sel.pcrs == want => {}
        other => {
            return Err(TpmError::PcrSelection(format!(
                "quote covers {:?}, expected SHA-256 PCRs 0-23",
                other
                    .iter()
                    .map(|s| format!("{}:{:?}", alg_name(s.hash), s.pcrs))
                    .collect::<Vec<_>>()
            )));
        }
    }
    let mut h = Sha256::new();
    for p in pcrs {
        h.update(p);
    }
    if h.finalize()[..] != parsed.pcr_digest[..] {
        return Err(TpmError::PcrDigestMismatch);
    }
    Ok(VerifiedQuote {
        attest: parsed,
        pcrs: pcrs.to_vec(),
    })
}

/// `SHA256(old ‖ digest)`: the value of a SHA-256 PCR after one extend.
pub fn extend_sha256(old: &[u8; 32], digest: &[u8; 32]) -> [u8; 32] {
    let mut h = Sha256::new();
    h.update(old);
    h.update(digest);
    h.finalize().into()
}
