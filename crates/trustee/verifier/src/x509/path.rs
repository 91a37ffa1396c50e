//! Certificate path validation by rustls-webpki: path building from a leaf
//! through the intermediates given to a trust anchor, each signature,
//! validity at the verifier's clock (never the system's), basic
//! constraints and path length, extended key usage, unknown critical
//! extensions, and revocation from DER CRLs.
//!
//! Around webpki, this module adds what webpki leaves to its caller:
//! - the trust anchor is a certificate here, not just a name and a key, so
//!   its validity window and CA rights are checked too (webpki ignores
//!   them, RFC 5280 §6.1.1(d));
//! - key usage: an anchor or intermediate whose key usage extension lacks
//!   keyCertSign may not issue certificates (RFC 5280 §6.1.4(n); webpki
//!   reads key usage only for cRLSign);
//! - AMD's RSA-PSS AlgorithmIdentifier, which spells out the default
//!   trailerField (see `AmdRsaPssSha384`);
//! - errors that name the certificate and the check that failed: webpki
//!   says only which check, so on failure the chain is walked again here to
//!   find the certificate (this never turns a refusal into an acceptance).

mod explain;

use super::X509Cert;
use explain::{describe, when};
use rustls_pki_types::{
    AlgorithmIdentifier, CertificateDer, InvalidSignature, SignatureVerificationAlgorithm,
    TrustAnchor, UnixTime, alg_id,
};
use std::cell::RefCell;
use webpki::ring as algs;
use webpki::{ExpirationPolicy, RevocationCheckDepth, UnknownStatusPolicy};

/// `anyExtendedKeyUsage` (2.5.29.37.0), DER arcs.
pub(super) const ANY_EXTENDED_KEY_USAGE: &[u8] = &[0x55, 0x1d, 0x25, 0x00];
/// `tcg-kp-EKCertificate` (2.23.133.8.1), DER arcs.
const TCG_KP_EK_CERTIFICATE: &[u8] = &[0x67, 0x81, 0x05, 0x08, 0x01];

/// What a chain vouches for: which signature algorithms and extended key
/// usage its certificates may have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Purpose {
    /// AMD SEV-SNP (ARK → ASK/ASVK → VCEK/VLEK): RSA-PSS SHA-384. AMD's
    /// certificates carry no extended key usage; one that restricts its
    /// purposes must allow any.
    AmdSev,
    /// Intel SGX/TDX DCAP (SGX Root CA → PCK CA → PCK, and the TCB signing
    /// certificate): ECDSA P-256 SHA-256. As AMD's, Intel's certificates
    /// carry no extended key usage; one that restricts its purposes must
    /// allow any.
    IntelSgx,
    /// A TPM endorsement key certificate, signed with RSA or ECDSA as its
    /// manufacturer chose; an extended key usage, when present, must list
    /// `tcg-kp-EKCertificate` (2.23.133.8.1).
    TpmEndorsementKey,
}

static AMD_ALGORITHMS: [&dyn SignatureVerificationAlgorithm; 2] =
    [&AmdRsaPssSha384, algs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY];
static INTEL_ALGORITHMS: [&dyn SignatureVerificationAlgorithm; 1] = [algs::ECDSA_P256_SHA256];
static TPM_ALGORITHMS: [&dyn SignatureVerificationAlgorithm; 13] = [
    algs::ECDSA_P256_SHA256,
    algs::ECDSA_P384_SHA384,
    algs::ECDSA_P256_SHA384,
    algs::ECDSA_P384_SHA256,
    algs::RSA_PKCS1_2048_8192_SHA256,
    algs::RSA_PKCS1_2048_8192_SHA384,
    algs::RSA_PKCS1_2048_8192_SHA512,
    algs::RSA_PKCS1_2048_8192_SHA256_ABSENT_PARAMS,
    algs::RSA_PKCS1_2048_8192_SHA384_ABSENT_PARAMS,
    algs::RSA_PKCS1_2048_8192_SHA512_ABSENT_PARAMS,
    algs::RSA_PSS_2048_8192_SHA256_LEGACY_KEY,
    algs::RSA_PSS_2048_8192_SHA384_LEGACY_KEY,
    algs::RSA_PSS_2048_8192_SHA512_LEGACY_KEY,
];

impl Purpose {
    fn algorithms(self) -> &'static [&'static dyn SignatureVerificationAlgorithm] {
        match self {
            Self::AmdSev => &AMD_ALGORITHMS,
            Self::IntelSgx => &INTEL_ALGORITHMS,
            Self::TpmEndorsementKey => &TPM_ALGORITHMS,
        }
    }

    fn extended_key_usage(self) -> webpki::KeyUsage {
        match self {
            Self::AmdSev | Self::IntelSgx => {
                webpki::KeyUsage::required_if_present(ANY_EXTENDED_KEY_USAGE)
            }
            Self::TpmEndorsementKey => webpki::KeyUsage::required_if_present(TCG_KP_EK_CERTIFICATE),
        }
    }
}

/// AlgorithmIdentifier content of AMD's signatures: RSASSA-PSS with
/// SHA-384, MGF1 SHA-384, salt length 48 and an explicit trailerField 1.
pub(super) const AMD_RSA_PSS_SHA384_ID: [u8; 70] = [
    0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x0a, // rsassa-pss
    0x30, 0x39, // RSASSA-PSS-params
    0xa0, 0x0f, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, // [0] hashAlgorithm sha384
    0xa1, 0x1c, 0x30, 0x1a, 0x06, 0x09, 0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x08, 0x30,
    0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x02, 0x05,
    0x00, // [1] maskGenAlgorithm mgf1 sha384
    0xa2, 0x03, 0x02, 0x01, 0x30, // [2] saltLength 48
    0xa3, 0x03, 0x02, 0x01, 0x01, // [3] trailerField 1
];

/// RSASSA-PSS SHA-384 under AMD's AlgorithmIdentifier. AMD's ARK, ASK,
/// ASVK, VCEK and VLEK certificates encode trailerField 1, a DEFAULT value
/// DER says to omit; webpki matches AlgorithmIdentifiers byte for byte and
/// so refuses them with its own RSA-PSS SHA-384. This is the same ring
/// verification (PSS, MGF1 SHA-384, 48-byte salt) under AMD's bytes.
#[derive(Debug)]
pub(super) struct AmdRsaPssSha384;

impl SignatureVerificationAlgorithm for AmdRsaPssSha384 {
    fn verify_signature(
        &self,
        public_key: &[u8],
        message: &[u8],
        signature: &[u8],
    ) -> Result<(), InvalidSignature> {
        ring::signature::UnparsedPublicKey::new(
            &ring::signature::RSA_PSS_2048_8192_SHA384,
            public_key,
        )
        .verify(message, signature)
        .map_err(|_| InvalidSignature)
    }

    fn public_key_alg_id(&self) -> AlgorithmIdentifier {
        alg_id::RSA_ENCRYPTION
    }

    fn signature_alg_id(&self) -> AlgorithmIdentifier {
        AlgorithmIdentifier::from_slice(&AMD_RSA_PSS_SHA384_ID)
    }
}

/// Why a certificate chain was refused: which certificate, which check.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChainError {
    /// The validator cannot read a certificate.
    #[error("{cert} cannot be validated: {reason}")]
    Unreadable {
        /// Which certificate.
        cert: String,
        /// Why.
        reason: String,
    },
    /// A certificate's validity starts after the verification time.
    #[error("{cert} is not valid yet (from {not_before}, checked at {at})")]
    NotYetValid {
        /// Which certificate.
        cert: String,
        /// Its notBefore.
        not_before: String,
        /// The verification time.
        at: String,
    },
    /// A certificate's validity ended before the verification time.
    #[error("{cert} expired on {not_after} (checked at {at})")]
    Expired {
        /// Which certificate.
        cert: String,
        /// Its notAfter.
        not_after: String,
        /// The verification time.
        at: String,
    },
    /// Nothing trusted issued a certificate.
    #[error(
        "{cert} chains to no trusted certificate: its issuer '{issuer}' is neither trusted nor among the intermediates"
    )]
    UnknownIssuer {
        /// Which certificate.
        cert: String,
        /// Its issuer's name.
        issuer: String,
    },
    /// A signature does not verify with its issuer's key.
    #[error("the signature on {cert} by {issuer} does not verify")]
    BadSignature {
        /// The signed certificate.
        cert: String,
        /// Its issuer.
        issuer: String,
    },
    /// A certificate is signed with an algorithm this chain does not use.
    #[error("{cert} is signed with {algorithm}, which this chain does not use")]
    UnsupportedAlgorithm {
        /// Which certificate.
        cert: String,
        /// The signature algorithm's OID (and parameters, for RSA-PSS).
        algorithm: String,
    },
    /// An issuer is not a CA certificate.
    #[error("{cert} is not a CA certificate (basic constraints), so it may not issue certificates")]
    NotCa {
        /// Which certificate.
        cert: String,
    },
    /// An issuer's key usage does not allow signing certificates.
    #[error("{cert} may not sign certificates (its key usage lacks keyCertSign)")]
    NoCertSign {
        /// Which certificate.
        cert: String,
    },
    /// The leaf is a CA certificate.
    #[error("{cert} is a CA certificate, not an end-entity certificate")]
    CaAsLeaf {
        /// Which certificate.
        cert: String,
    },
    /// A CA's path length constraint is exceeded.
    #[error("the chain is longer than {cert}'s path length constraint allows")]
    PathLength {
        /// Which certificate.
        cert: String,
    },
    /// An extended key usage does not allow this use.
    #[error("{cert} is not for this use: its extended key usage ({present}) lacks {required}")]
    WrongPurpose {
        /// Which certificate.
        cert: String,
        /// The OIDs it lists.
        present: String,
        /// The OID needed.
        required: String,
    },
    /// A CRL lists a certificate of the chain.
    #[error("{cert} is revoked ({crl})")]
    Revoked {
        /// Which certificate.
        cert: String,
        /// Which CRL.
        crl: String,
    },
    /// No CRL given covers a certificate of the chain.
    #[error("no CRL covers {cert} (issued by {issuer}): its revocation status is unknown")]
    NoCrl {
        /// Which certificate.
        cert: String,
        /// Its issuer.
        issuer: String,
    },
    /// A CRL is past its nextUpdate.
    #[error("the {crl} expired (nextUpdate {next_update}); fetch a fresh one")]
    CrlExpired {
        /// Which CRL.
        crl: String,
        /// Its nextUpdate.
        next_update: String,
    },
    /// A CRL's signature does not verify with its issuer's key.
    #[error("the {crl} signature does not verify with its issuer's key")]
    CrlSignature {
        /// Which CRL.
        crl: String,
    },
    /// A CRL cannot be used.
    #[error("the {crl} cannot be used: {reason}")]
    CrlUnusable {
        /// Which CRL.
        crl: String,
        /// Why.
        reason: String,
    },
    /// Anything else webpki refused.
    #[error("the certificate chain does not validate: {0}")]
    Other(String),
}

impl ChainError {
    /// Whether a CRL is at fault (unusable, expired, badly signed, or none
    /// covers a certificate), rather than a certificate of the chain.
    pub fn concerns_a_crl(&self) -> bool {
        matches!(
            self,
            Self::NoCrl { .. }
                | Self::CrlExpired { .. }
                | Self::CrlSignature { .. }
                | Self::CrlUnusable { .. }
        )
    }

    /// Whether the chain does not lead to a trusted key at all (rather than
    /// being out of its time window or revoked).
    pub fn is_untrusted(&self) -> bool {
        matches!(
            self,
            Self::Unreadable { .. }
                | Self::UnknownIssuer { .. }
                | Self::BadSignature { .. }
                | Self::UnsupportedAlgorithm { .. }
                | Self::NotCa { .. }
                | Self::NoCertSign { .. }
                | Self::CaAsLeaf { .. }
                | Self::PathLength { .. }
                | Self::WrongPurpose { .. }
                | Self::Other(_)
        )
    }
}

/// Trusted certificates: the roots (or intermediates) a path may end in.
#[derive(Debug, Clone, Default)]
pub struct TrustAnchors {
    certs: Vec<X509Cert>,
    anchors: Vec<TrustAnchor<'static>>,
}

impl TrustAnchors {
    /// Trusts `certs`.
    pub fn new(certs: Vec<X509Cert>) -> Result<Self, ChainError> {
        let anchors = certs
            .iter()
            .map(|c| {
                let der = CertificateDer::from(c.der.as_slice());
                webpki::anchor_from_trusted_cert(&der)
                    .map(|a| a.to_owned())
                    .map_err(|e| ChainError::Unreadable {
                        cert: c.cn.clone(),
                        reason: describe(&e, c),
                    })
            })
            .collect::<Result<_, _>>()?;
        Ok(Self { certs, anchors })
    }

    /// The trusted certificates.
    pub fn certs(&self) -> &[X509Cert] {
        &self.certs
    }
}

/// A DER CRL, named for messages (`root CA CRL`, `PCK CRL`).
pub struct Crl<'a> {
    label: String,
    list: webpki::CertRevocationList<'a>,
}

impl<'a> Crl<'a> {
    /// Reads `der` (entries are read when looked up, not all up front).
    pub fn from_der(der: &'a [u8], label: &str) -> Result<Self, ChainError> {
        webpki::BorrowedCertRevocationList::from_der(der)
            .map(|list| Self {
                label: label.to_string(),
                list: list.into(),
            })
            .map_err(|e| ChainError::CrlUnusable {
                crl: label.to_string(),
                reason: format!("it is not a DER CRL this validator accepts ({e:?})"),
            })
    }

    /// Whether the CRL lists `serial` (DER INTEGER content), whoever the
    /// certificate's issuer is.
    pub fn lists_serial(&self, serial: &[u8]) -> bool {
        matches!(self.list.find_serial(serial), Ok(Some(_)))
    }
}

/// A validated path.
#[derive(Debug)]
pub struct ValidPath<'c> {
    /// The trust anchor it ends in.
    pub anchor: &'c X509Cert,
    /// That anchor's place in the [`TrustAnchors`].
    pub anchor_index: usize,
    /// The intermediates, from the leaf's issuer up.
    pub intermediates: Vec<&'c X509Cert>,
    /// When every certificate of the path, anchor included, is valid
    /// (Unix seconds): from …
    pub valid_from: u64,
    /// … until.
    pub valid_until: u64,
}

/// Validates `leaf` at `now` (Unix seconds): a path through some of
/// `intermediates` to one of `anchors`, for `purpose`. With `crls`, every
/// certificate below the anchor must be covered by one of them and not be
/// listed, and the CRLs must verify and not be past their nextUpdate.
pub fn verify_path<'c>(
    leaf: &X509Cert,
    intermediates: &[&'c X509Cert],
    anchors: &'c TrustAnchors,
    now: u64,
    purpose: Purpose,
    crls: &[&Crl<'_>],
) -> Result<ValidPath<'c>, ChainError> {
    let check = Check {
        leaf,
        intermediates,
        anchors,
        now,
        purpose,
    };
    check
        .webpki(crls, UnknownStatusPolicy::Deny)
        .map_err(|refusal| match *refusal {
            // A path webpki accepted and the anchor or key usage policy
            // refused says more than webpki's error for the other paths.
            (_, Some(why)) => why,
            (err, None) => check.explain(&err, crls),
        })
}

/// One validation's inputs.
struct Check<'c, 'l> {
    leaf: &'l X509Cert,
    intermediates: &'l [&'c X509Cert],
    anchors: &'c TrustAnchors,
    now: u64,
    purpose: Purpose,
}

/// webpki's error, and the policy's reason when it refused a path.
type Refusal = Box<(webpki::Error, Option<ChainError>)>;

impl<'c> Check<'c, '_> {
    fn webpki(
        &self,
        crls: &[&Crl<'_>],
        unknown: UnknownStatusPolicy,
    ) -> Result<ValidPath<'c>, Refusal> {
        let leaf_der = CertificateDer::from(self.leaf.der.as_slice());
        let leaf = webpki::EndEntityCert::try_from(&leaf_der).map_err(|e| Box::new((e, None)))?;
        let intermediates: Vec<CertificateDer<'_>> = self
            .intermediates
            .iter()
            .map(|c| CertificateDer::from(c.der.as_slice()))
            .collect();
        let lists: Vec<&webpki::CertRevocationList<'_>> = crls.iter().map(|c| &c.list).collect();
        let revocation = webpki::RevocationOptionsBuilder::new(&lists).ok().map(|b| {
            b.with_depth(RevocationCheckDepth::Chain)
                .with_status_policy(unknown)
                .with_expiration_policy(ExpirationPolicy::Enforce)
                .build()
        });
        let rejected = RefCell::new(None);
        let policy = |path: &webpki::VerifiedPath<'_>| {
            self.policy(path).map_err(|why| {
                *rejected.borrow_mut() = Some(why);
                webpki::Error::UnknownIssuer
            })
        };
        let time = UnixTime::since_unix_epoch(std::time::Duration::from_secs(self.now));
        let result = leaf.verify_for_usage(
            self.purpose.algorithms(),
            &self.anchors.anchors,
            &intermediates,
            time,
            self.purpose.extended_key_usage(),
            revocation,
            Some(&policy),
        );
        match result {
            Ok(path) => self
                .valid_path(&path)
                .ok_or_else(|| Box::new((webpki::Error::UnknownIssuer, None))),
            Err(e) => Err(Box::new((e, rejected.into_inner()))),
        }
    }

    /// Our certificates for webpki's path.
    fn parts(&self, path: &webpki::VerifiedPath<'_>) -> Option<(usize, Vec<&'c X509Cert>)> {
        let index = self
            .anchors
            .anchors
            .iter()
            .position(|a| std::ptr::eq(a, path.anchor()))?;
        let intermediates = path
            .intermediate_certificates()
            .map(|c| {
                let der = c.der();
                self.intermediates
                    .iter()
                    .copied()
                    .find(|i| i.der.as_slice() == der.as_ref())
            })
            .collect::<Option<Vec<_>>>()?;
        Some((index, intermediates))
    }

    fn valid_path(&self, path: &webpki::VerifiedPath<'_>) -> Option<ValidPath<'c>> {
        let (anchor_index, intermediates) = self.parts(path)?;
        let anchor = &self.anchors.certs[anchor_index];
        let all = || {
            [self.leaf, anchor]
                .into_iter()
                .chain(intermediates.iter().copied())
        };
        Some(ValidPath {
            anchor,
            anchor_index,
            valid_from: all().map(X509Cert::not_before).max().unwrap_or(0),
            valid_until: all().map(X509Cert::not_after).min().unwrap_or(0),
            intermediates,
        })
    }

    /// What webpki leaves to the caller, on a path it accepted.
    fn policy(&self, path: &webpki::VerifiedPath<'_>) -> Result<(), ChainError> {
        let (index, intermediates) = self
            .parts(path)
            .ok_or_else(|| ChainError::Other("a path through unknown certificates".into()))?;
        let anchor = &self.anchors.certs[index];
        self.check_time(anchor)?;
        fn unreadable(cert: &X509Cert) -> impl FnOnce(String) -> ChainError + '_ {
            move |reason| ChainError::Unreadable {
                cert: cert.cn.clone(),
                reason,
            }
        }
        if !anchor.is_ca().map_err(unreadable(anchor))? {
            return Err(ChainError::NotCa {
                cert: anchor.cn.clone(),
            });
        }
        for issuer in std::iter::once(anchor).chain(intermediates) {
            if !issuer.may_sign_certificates().map_err(unreadable(issuer))? {
                return Err(ChainError::NoCertSign {
                    cert: issuer.cn.clone(),
                });
            }
        }
        Ok(())
    }

    fn check_time(&self, cert: &X509Cert) -> Result<(), ChainError> {
        if self.now < cert.not_before() {
            return Err(ChainError::NotYetValid {
                cert: cert.cn.clone(),
                not_before: when(cert.not_before()),
                at: when(self.now),
            });
        }
        if self.now > cert.not_after() {
            return Err(ChainError::Expired {
                cert: cert.cn.clone(),
                not_after: when(cert.not_after()),
                at: when(self.now),
            });
        }
        Ok(())
    }
}
