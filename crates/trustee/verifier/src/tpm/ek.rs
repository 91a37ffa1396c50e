//! AK trust through the TPM's endorsement key: the EK certificate chains to
//! a TPM manufacturer CA the trustee was given, and credential activation
//! proves the AK lives in that same TPM. The trustee then registers the AK
//! as it would one an admin added.
//!
//! 1. The guest sends its EK certificate and its AK's TPMT_PUBLIC.
//! 2. [`EkTrust::challenge`] checks the certificate chain and the AK's
//!    attributes (a restricted signing key fixed to the TPM), and encrypts a
//!    fresh secret to the EK, bound to the AK's name.
//! 3. The guest's TPM recovers the secret (TPM2_ActivateCredential); only
//!    the TPM holding both keys can.
//! 4. [`Pending::finish`] compares the secret and yields the AK's SPKI.

use crate::x509::{Purpose, TrustAnchors, X509Cert, verify_path};
use cocoon_tpm::credential::{Credential, make_credential, name_sha256};
use cocoon_tpm::structs::ALG_SHA256;
use cocoon_tpm::{AkPublicKey, Public};

/// TPMA_OBJECT bits an AK must have: fixedTPM, fixedParent,
/// sensitiveDataOrigin, restricted, sign.
const AK_REQUIRED: u32 = (1 << 1) | (1 << 4) | (1 << 5) | (1 << 16) | (1 << 18);
/// TPMA_OBJECT decrypt: an AK must not have it.
const DECRYPT: u32 = 1 << 17;

/// TPM manufacturer CAs (roots and intermediates) the trustee trusts.
#[derive(Debug, Clone, Default)]
pub struct EkTrust {
    cas: TrustAnchors,
    /// Whether these are CAs of hardware TPM makers (the admin's word):
    /// AKs they enroll then count as hardware-backed.
    hardware_backed: bool,
}

/// A challenge waiting for the TPM's answer. Its secret is zeroized when
/// dropped and left out of `Debug`.
pub struct Pending {
    secret: zeroize::Zeroizing<[u8; 32]>,
    /// The AK as DER SPKI (what gets registered).
    pub ak_spki: Vec<u8>,
    /// Who issued the EK certificate, for the log.
    pub ek_issuer: String,
    /// SHA-256 of the EK certificate (to bound challenges per TPM).
    pub ek_digest: [u8; 32],
    /// Whether the EK's CA was given as a hardware TPM maker's.
    pub ek_ca_hardware_backed: bool,
}

impl std::fmt::Debug for Pending {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pending")
            .field("ek_issuer", &self.ek_issuer)
            .field("ek_digest", &hex::encode(self.ek_digest))
            .finish_non_exhaustive()
    }
}

/// Intermediate certificates a guest may send.
pub const MAX_EK_CHAIN: usize = 4;

impl Pending {
    /// The AK's SPKI when `answer` is the secret.
    pub fn finish(&self, answer: &[u8]) -> Result<Vec<u8>, String> {
        // Every byte is compared, whatever differs.
        let diff = answer
            .iter()
            .zip(self.secret.iter())
            .fold(0u8, |acc, (a, b)| acc | (a ^ b));
        if answer.len() == self.secret.len() && std::hint::black_box(diff) == 0 {
            Ok(self.ak_spki.clone())
        } else {
            Err(
                "the answer is not the activated secret: the AK is not in the TPM of this EK"
                    .into(),
            )
        }
    }
}

impl EkTrust {
    /// Loads PEM CA certificates from a file or every `*.pem`/`*.crt` in a directory.
    pub fn load(path: &std::path::Path) -> Result<Self, String> {
        let mut cas = Vec::new();
        for (f, bytes) in crate::read_file_or_dir(path, &["pem", "crt"])? {
            let text =
                String::from_utf8(bytes).map_err(|_| format!("{} is not PEM", f.display()))?;
            cas.extend(
                X509Cert::from_pem_bundle(&text).map_err(|e| format!("{}: {e}", f.display()))?,
            );
        }
        if cas.is_empty() {
            return Err(format!("no CA certificate in {}", path.display()));
        }
        let cas = TrustAnchors::new(cas).map_err(|e| format!("{}: {e}", path.display()))?;
        Ok(Self {
            cas,
            hardware_backed: false,
        })
    }

    /// Marks these CAs as hardware TPM makers' (or not).
    pub fn with_hardware_backed(mut self, yes: bool) -> Self {
        self.hardware_backed = yes;
        self
    }

    /// Whether these CAs are hardware TPM makers'.
    pub fn hardware_backed(&self) -> bool {
        self.hardware_backed
    }

    /// How many CAs are trusted.
    pub fn len(&self) -> usize {
        self.cas.certs().len()
    }

    /// Whether none is.
    pub fn is_empty(&self) -> bool {
        self.cas.certs().is_empty()
    }

    /// Checks the EK certificate at `now`: it chains, through the
    /// `intermediates` the guest sent (untrusted until they chain), to one of
    /// the configured CAs. Returns the anchor's name.
    pub fn verify_ek_cert(
        &self,
        ek: &X509Cert,
        intermediates: &[X509Cert],
        now: u64,
    ) -> Result<String, String> {
        let intermediates: Vec<&X509Cert> = intermediates.iter().collect();
        let path = verify_path(
            ek,
            &intermediates,
            &self.cas,
            now,
            Purpose::TpmEndorsementKey,
            &[],
        )
        .map_err(|e| {
            if e.is_untrusted() {
                format!(
                    "the EK certificate does not chain to a trusted TPM manufacturer CA ({} configured): {e}",
                    self.len()
                )
            } else {
                format!("the EK certificate chain: {e}")
            }
        })?;
        Ok(path.anchor.cn.clone())
    }

    /// Step 2: checks the EK certificate (with the guest's `intermediates`,
    /// DER) and the AK, and makes the credential the TPM must activate.
    pub fn challenge(
        &self,
        ek_cert_der: &[u8],
        intermediates: &[Vec<u8>],
        ak_public: &[u8],
        now: u64,
    ) -> Result<(Credential, Pending), String> {
        if intermediates.len() > MAX_EK_CHAIN {
            return Err(format!(
                "{} intermediate certificates, at most {MAX_EK_CHAIN}",
                intermediates.len()
            ));
        }
        let ek = X509Cert::from_der(ek_cert_der).map_err(|e| format!("EK certificate: {e}"))?;
        let chain = intermediates
            .iter()
            .map(|d| X509Cert::from_der(d))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| format!("EK intermediate: {e}"))?;
        let ek_issuer = self.verify_ek_cert(&ek, &chain, now)?;
        let (n, e) = match AkPublicKey::from_spki_der(&ek.spki_der())
            .map_err(|e| format!("EK certificate key: {e}"))?
        {
            AkPublicKey::Rsa { n, e } => (n, e),
            AkPublicKey::P256(_) => {
                return Err("the EK is an ECC key; credential activation supports the RSA 2048 EK (TCG template L-1)".into());
            }
        };
        let e = e.iter().skip_while(|b| **b == 0).collect::<Vec<_>>();
        if e.len() > 4 {
            return Err("EK exponent too large".into());
        }
        let e = e.iter().fold(0u32, |acc, b| (acc << 8) | u32::from(**b));
        if ak_public.len() < 4 || u16::from_be_bytes([ak_public[2], ak_public[3]]) != ALG_SHA256 {
            return Err("the AK's name algorithm is not SHA-256".into());
        }
        let ak = Public::parse(ak_public).map_err(|e| format!("AK public area: {e}"))?;
        let attrs = match &ak {
            Public::Rsa { attributes, .. } | Public::EccP256 { attributes, .. } => *attributes,
        };
        if attrs & AK_REQUIRED != AK_REQUIRED || attrs & DECRYPT != 0 {
            return Err(format!(
                "the AK's attributes 0x{attrs:08x} are not a restricted signing key fixed to its TPM (fixedTPM, fixedParent, sensitiveDataOrigin, restricted, sign; not decrypt)"
            ));
        }
        let ak_spki = ak.to_spki_der().map_err(|e| e.to_string())?;
        let mut secret = zeroize::Zeroizing::new([0u8; 32]);
        ring::rand::SecureRandom::fill(&ring::rand::SystemRandom::new(), &mut secret[..])
            .map_err(|_| "no randomness".to_string())?;
        let credential = make_credential(&n, e, &name_sha256(ak_public), &secret[..])
            .map_err(|e| e.to_string())?;
        Ok((
            credential,
            Pending {
                secret,
                ak_spki,
                ek_issuer,
                ek_digest: <sha2::Sha256 as sha2::Digest>::digest(ek_cert_der).into(),
                ek_ca_hardware_backed: self.hardware_backed,
            },
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_the_exact_secret_finishes() {
        let p = Pending {
            secret: [1; 32].into(),
            ak_spki: vec![9],
            ek_issuer: "CA".into(),
            ek_digest: [0; 32],
            ek_ca_hardware_backed: false,
        };
        assert_eq!(p.finish(&[1; 32]).unwrap(), vec![9]);
        for wrong in [&[2u8; 32][..], &[1; 31], &[1; 33], &[]] {
            assert!(p.finish(wrong).is_err());
        }
    }

    #[test]
    fn bad_inputs_are_refused_before_any_work() {
        let t = EkTrust::default();
        let e = t.challenge(&[0x30], &vec![vec![0]; 5], &[], 0).unwrap_err();
        assert!(e.contains("at most 4"), "{e}");
        let e = t.challenge(b"not a cert", &[], &[], 0).unwrap_err();
        assert!(e.contains("EK certificate"), "{e}");
    }
}
