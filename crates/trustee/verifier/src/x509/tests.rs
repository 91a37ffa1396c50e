//! Path validation against AMD's real chains (Intel's are in `tdx`, a
//! swtpm EK's in `tests/ek_chain.rs`), and against a test PKI made here for
//! each way a chain can be wrong: every refusal names its certificate.

use super::*;
use rcgen::{
    BasicConstraints, CertificateParams, CertificateRevocationListParams, CustomExtension, DnType,
    ExtendedKeyUsagePurpose, IsCa, KeyIdMethod, KeyPair, KeyUsagePurpose, RevokedCertParams,
    SerialNumber,
};
use std::sync::atomic::{AtomicU64, Ordering};

const FIXTURES: cocoon_fixtures::Dir = cocoon_fixtures::Dir("");

/// What a test certificate is.
#[derive(Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    /// A CA: basic constraints CA, keyCertSign and cRLSign.
    Ca,
    /// An end-entity certificate: CA:FALSE, digitalSignature.
    Leaf,
    /// A certificate without basic constraints, used as an intermediate.
    NotCa,
    /// A CA whose key usage has cRLSign but not keyCertSign.
    CaWithoutCertSign,
}

/// A test certificate with its key (ECDSA P-256, as Intel's chains).
pub(crate) struct TestPki {
    cert: rcgen::Certificate,
    key: KeyPair,
    /// The certificate as the verifiers parse it.
    pub x509: X509Cert,
}

static SERIAL: AtomicU64 = AtomicU64::new(0x1000);

fn ymd(y: i32, m: u8, d: u8) -> time::OffsetDateTime {
    rcgen::date_time_ymd(y, m, d)
}

impl TestPki {
    /// The pinned verification time: 2025-06-15, inside every window below.
    pub const NOW: u64 = 1_750_000_000;

    /// Parameters for `cn` of `kind`, valid 2025-01-01 to 2035-01-01.
    pub fn params(cn: &str, kind: Kind) -> CertificateParams {
        let mut p = CertificateParams::default();
        p.distinguished_name = rcgen::DistinguishedName::new();
        p.distinguished_name.push(DnType::CommonName, cn);
        p.not_before = ymd(2025, 1, 1);
        p.not_after = ymd(2035, 1, 1);
        p.serial_number = Some(SerialNumber::from(SERIAL.fetch_add(1, Ordering::Relaxed)));
        p.use_authority_key_identifier_extension = true;
        (p.is_ca, p.key_usages) = match kind {
            Kind::Ca => (
                IsCa::Ca(BasicConstraints::Unconstrained),
                vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign],
            ),
            Kind::Leaf => (IsCa::ExplicitNoCa, vec![KeyUsagePurpose::DigitalSignature]),
            Kind::NotCa => (IsCa::NoCa, vec![]),
            Kind::CaWithoutCertSign => (
                IsCa::Ca(BasicConstraints::Unconstrained),
                vec![KeyUsagePurpose::CrlSign],
            ),
        };
        p
    }

    fn key() -> KeyPair {
        KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).expect("P-256 key")
    }

    fn wrap(cert: rcgen::Certificate, key: KeyPair) -> Self {
        let x509 = X509Cert::from_der(cert.der()).expect("rcgen makes DER");
        Self { cert, key, x509 }
    }

    /// A self-signed CA.
    pub fn root(cn: &str) -> Self {
        Self::root_with(Self::params(cn, Kind::Ca))
    }

    /// A self-signed certificate with `params`.
    pub fn root_with(params: CertificateParams) -> Self {
        let key = Self::key();
        let cert = params.self_signed(&key).expect("self-signed");
        Self::wrap(cert, key)
    }

    /// A certificate for `cn` of `kind`, issued by this one.
    pub fn issue(&self, cn: &str, kind: Kind) -> Self {
        self.issue_with(Self::params(cn, kind))
    }

    /// A certificate with `params`, issued by this one.
    pub fn issue_with(&self, params: CertificateParams) -> Self {
        let key = Self::key();
        let cert = params
            .signed_by(&key, &self.cert, &self.key)
            .expect("issued");
        Self::wrap(cert, key)
    }

    /// A CRL from this issuer listing `revoked`, from a day before
    /// [`Self::NOW`] to 30 days after.
    pub fn crl(&self, revoked: &[&TestPki]) -> Vec<u8> {
        let at = time::OffsetDateTime::from_unix_timestamp(Self::NOW as i64).unwrap();
        CertificateRevocationListParams {
            this_update: at - time::Duration::days(1),
            next_update: at + time::Duration::days(30),
            crl_number: SerialNumber::from(1u64),
            issuing_distribution_point: None,
            revoked_certs: revoked
                .iter()
                .map(|r| RevokedCertParams {
                    serial_number: SerialNumber::from_slice(
                        r.x509.cert.tbs_certificate.serial_number.as_bytes(),
                    ),
                    revocation_time: at - time::Duration::days(1),
                    reason_code: Some(rcgen::RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        }
        .signed_by(&self.cert, &self.key)
        .expect("CRL")
        .der()
        .to_vec()
    }
}

fn anchors(certs: &[&TestPki]) -> TrustAnchors {
    TrustAnchors::new(certs.iter().map(|c| c.x509.clone()).collect()).unwrap()
}

fn check(
    leaf: &TestPki,
    intermediates: &[&TestPki],
    trusted: &TrustAnchors,
    now: u64,
) -> Result<String, ChainError> {
    let inter: Vec<&X509Cert> = intermediates.iter().map(|c| &c.x509).collect();
    verify_path(&leaf.x509, &inter, trusted, now, Purpose::IntelSgx, &[])
        .map(|p| p.anchor.cn.clone())
}

/// root → CA → leaf, valid at [`TestPki::NOW`].
fn three() -> (TestPki, TestPki, TestPki) {
    let root = TestPki::root("Test Root CA");
    let ca = root.issue("Test Issuing CA", Kind::Ca);
    let leaf = ca.issue("Test Leaf", Kind::Leaf);
    (root, ca, leaf)
}

#[test]
fn a_good_chain_validates_and_reports_its_window() {
    let (root, ca, leaf) = three();
    let trusted = anchors(&[&root]);
    let inter = [&ca.x509];
    let path = verify_path(
        &leaf.x509,
        &inter,
        &trusted,
        TestPki::NOW,
        Purpose::IntelSgx,
        &[],
    )
    .unwrap();
    assert_eq!(path.anchor.cn, "Test Root CA");
    assert_eq!(path.anchor_index, 0);
    assert_eq!(path.intermediates.len(), 1);
    assert_eq!(path.valid_from, ca.x509.not_before());
    assert_eq!(path.valid_until, leaf.x509.not_after());
    // An intermediate that is not needed is not part of the path.
    let stray = TestPki::root("Stray CA");
    let inter = [&stray.x509, &ca.x509];
    let path = verify_path(
        &leaf.x509,
        &inter,
        &trusted,
        TestPki::NOW,
        Purpose::IntelSgx,
        &[],
    )
    .unwrap();
    assert_eq!(path.intermediates.len(), 1);
}

#[test]
fn a_wrong_intermediate_is_refused() {
    let (root, ca, leaf) = three();
    let trusted = anchors(&[&root]);
    // Same name as the leaf's issuer, another key.
    let twin = root.issue("Test Issuing CA", Kind::Ca);
    let e = check(&leaf, &[&twin], &trusted, TestPki::NOW).unwrap_err();
    assert_eq!(
        e,
        ChainError::BadSignature {
            cert: "Test Leaf".into(),
            issuer: "Test Issuing CA".into()
        }
    );
    assert!(e.is_untrusted());
    // Another CA altogether: the leaf's issuer is missing.
    let other = root.issue("Other CA", Kind::Ca);
    let e = check(&leaf, &[&other], &trusted, TestPki::NOW).unwrap_err();
    assert!(
        matches!(&e, ChainError::UnknownIssuer { cert, issuer } if cert == "Test Leaf" && issuer == "Test Issuing CA"),
        "{e}"
    );
    assert!(check(&leaf, &[&ca], &trusted, TestPki::NOW).is_ok());
}

#[test]
fn expired_and_not_yet_valid_certificates_are_refused_at_the_pinned_time() {
    let root = TestPki::root("Test Root CA");
    let mut p = TestPki::params("Old CA", Kind::Ca);
    p.not_after = ymd(2025, 3, 1);
    let old_ca = root.issue_with(p);
    let leaf = old_ca.issue("Test Leaf", Kind::Leaf);
    let trusted = anchors(&[&root]);
    let e = check(&leaf, &[&old_ca], &trusted, TestPki::NOW).unwrap_err();
    assert!(
        matches!(&e, ChainError::Expired { cert, .. } if cert == "Old CA"),
        "{e}"
    );
    assert!(e.to_string().contains("expired on 2025-03-01"), "{e}");
    assert!(!e.is_untrusted());
    // The same chain at a time inside every window validates: the clock is
    // the caller's, not the system's.
    assert!(check(&leaf, &[&old_ca], &trusted, 1_738_000_000).is_ok());
    let (root, ca, leaf) = three();
    let trusted = anchors(&[&root]);
    let e = check(&leaf, &[&ca], &trusted, 1_700_000_000).unwrap_err();
    assert!(
        matches!(&e, ChainError::NotYetValid { cert, .. } if cert == "Test Leaf"),
        "{e}"
    );
    let e = check(&leaf, &[&ca], &trusted, 2_100_000_000).unwrap_err();
    assert!(
        matches!(&e, ChainError::Expired { cert, .. } if cert == "Test Leaf"),
        "{e}"
    );
}

#[test]
fn an_expired_anchor_is_refused_and_a_valid_twin_used() {
    let mut p = TestPki::params("Test Root CA", Kind::Ca);
    p.not_after = ymd(2025, 3, 1);
    let old_root = TestPki::root_with(p);
    let ca = old_root.issue("Test Issuing CA", Kind::Ca);
    let leaf = ca.issue("Test Leaf", Kind::Leaf);
    let e = check(&leaf, &[&ca], &anchors(&[&old_root]), TestPki::NOW).unwrap_err();
    assert!(
        matches!(&e, ChainError::Expired { cert, .. } if cert == "Test Root CA"),
        "{e}"
    );
    // The root re-issued with the same name and key: webpki's path
    // building tries it once the expired one is refused.
    let mut p = TestPki::params("Test Root CA", Kind::Ca);
    p.not_before = ymd(2025, 2, 1);
    let renewed = TestPki::wrap(p.self_signed(&old_root.key).unwrap(), same_key(&old_root));
    let trusted = anchors(&[&old_root, &renewed]);
    let inter = [&ca.x509];
    let path = verify_path(
        &leaf.x509,
        &inter,
        &trusted,
        TestPki::NOW,
        Purpose::IntelSgx,
        &[],
    )
    .unwrap();
    assert_eq!(path.anchor_index, 1);
}

/// A copy of `pki`'s key, for a certificate re-issued with it.
fn same_key(pki: &TestPki) -> KeyPair {
    KeyPair::from_pem(&pki.key.serialize_pem()).unwrap()
}

#[test]
fn a_leaf_signed_by_an_untrusted_root_is_refused() {
    let (root, _, _) = three();
    let rogue = TestPki::root("Rogue Root CA");
    let leaf = rogue.issue("Test Leaf", Kind::Leaf);
    let e = check(&leaf, &[], &anchors(&[&root]), TestPki::NOW).unwrap_err();
    assert_eq!(
        e,
        ChainError::UnknownIssuer {
            cert: "Test Leaf".into(),
            issuer: "Rogue Root CA".into()
        }
    );
    // A rogue root that copies the trusted root's name.
    let impostor = TestPki::root("Test Root CA");
    let leaf = impostor.issue("Test Leaf", Kind::Leaf);
    let e = check(&leaf, &[], &anchors(&[&root]), TestPki::NOW).unwrap_err();
    assert_eq!(
        e,
        ChainError::BadSignature {
            cert: "Test Leaf".into(),
            issuer: "Test Root CA".into()
        }
    );
    // The rogue root sent as an intermediate changes nothing.
    let e = check(&leaf, &[&impostor], &anchors(&[&root]), TestPki::NOW).unwrap_err();
    assert!(e.is_untrusted(), "{e}");
}

#[test]
fn issuers_without_ca_rights_are_refused() {
    let root = TestPki::root("Test Root CA");
    let trusted = anchors(&[&root]);
    for (kind, want) in [
        (
            Kind::NotCa,
            ChainError::NotCa {
                cert: "Plain Cert".into(),
            },
        ),
        (
            Kind::Leaf,
            ChainError::NotCa {
                cert: "Plain Cert".into(),
            },
        ),
        (
            Kind::CaWithoutCertSign,
            ChainError::NoCertSign {
                cert: "Plain Cert".into(),
            },
        ),
    ] {
        let inter = root.issue("Plain Cert", kind);
        let leaf = inter.issue("Test Leaf", Kind::Leaf);
        let e = check(&leaf, &[&inter], &trusted, TestPki::NOW).unwrap_err();
        assert_eq!(e, want);
        assert!(e.is_untrusted());
    }
    // An anchor that is not a CA issues nothing either.
    let plain = TestPki::root_with(TestPki::params("Plain Root", Kind::Leaf));
    let leaf = plain.issue("Test Leaf", Kind::Leaf);
    let e = check(&leaf, &[], &anchors(&[&plain]), TestPki::NOW).unwrap_err();
    assert_eq!(
        e,
        ChainError::NotCa {
            cert: "Plain Root".into()
        }
    );
    // A CA certificate is no leaf.
    let (root, ca, _) = three();
    let e = check(&ca, &[], &anchors(&[&root]), TestPki::NOW).unwrap_err();
    assert_eq!(
        e,
        ChainError::CaAsLeaf {
            cert: "Test Issuing CA".into()
        }
    );
}

#[test]
fn revoked_certificates_are_refused_by_their_crl() {
    let (root, ca, leaf) = three();
    let trusted = anchors(&[&root]);
    let inter = [&ca.x509];
    let run = |root_crl: &[u8], ca_crl: &[u8]| {
        let a = Crl::from_der(root_crl, "root CRL").unwrap();
        let b = Crl::from_der(ca_crl, "issuing CA CRL").unwrap();
        verify_path(
            &leaf.x509,
            &inter,
            &trusted,
            TestPki::NOW,
            Purpose::IntelSgx,
            &[&a, &b],
        )
        .map(|_| ())
    };
    run(&root.crl(&[]), &ca.crl(&[])).unwrap();
    assert_eq!(
        run(&root.crl(&[]), &ca.crl(&[&leaf])).unwrap_err(),
        ChainError::Revoked {
            cert: "Test Leaf".into(),
            crl: "issuing CA CRL".into()
        }
    );
    assert_eq!(
        run(&root.crl(&[&ca]), &ca.crl(&[])).unwrap_err(),
        ChainError::Revoked {
            cert: "Test Issuing CA".into(),
            crl: "root CRL".into()
        }
    );
    // A CRL for every certificate below the anchor is required.
    let root_crl = root.crl(&[]);
    let only_root = Crl::from_der(&root_crl, "root CRL").unwrap();
    let e = verify_path(
        &leaf.x509,
        &inter,
        &trusted,
        TestPki::NOW,
        Purpose::IntelSgx,
        &[&only_root],
    )
    .unwrap_err();
    assert!(
        matches!(&e, ChainError::NoCrl { cert, .. } if cert == "Test Leaf"),
        "{e}"
    );
    assert!(!e.is_untrusted());
}

#[test]
fn malformed_der_is_an_error_not_a_panic() {
    let (root, ca, leaf) = three();
    let der = &leaf.x509.der;
    for cut in [0, 1, 10, der.len() / 2, der.len() - 1] {
        assert!(X509Cert::from_der(&der[..cut]).is_err());
    }
    assert!(X509Cert::from_der(b"not a certificate").is_err());
    for junk in [&b""[..], b"\x30", b"\x30\x03\x02\x01\x01", &der[..]] {
        assert!(Crl::from_der(junk, "CRL").is_err());
    }
    // One flipped bit in the signed part, or in the signature.
    let trusted = anchors(&[&root]);
    for at in [40, der.len() - 10] {
        let mut bad = der.clone();
        bad[at] ^= 0x01;
        let Ok(bad) = X509Cert::from_der(&bad) else {
            continue;
        };
        let inter = [&ca.x509];
        let e =
            verify_path(&bad, &inter, &trusted, TestPki::NOW, Purpose::IntelSgx, &[]).unwrap_err();
        assert!(e.is_untrusted(), "byte {at}: {e}");
    }
}

#[test]
fn unknown_critical_extensions_are_refused_by_name() {
    let (root, ca, _) = three();
    let mut p = TestPki::params("Test Leaf", Kind::Leaf);
    let mut ext =
        CustomExtension::from_oid_content(&[1, 3, 6, 1, 4, 1, 99999, 1], vec![0x05, 0x00]);
    ext.set_criticality(true);
    p.custom_extensions.push(ext);
    let leaf = ca.issue_with(p);
    let e = check(&leaf, &[&ca], &anchors(&[&root]), TestPki::NOW).unwrap_err();
    assert!(
        matches!(&e, ChainError::Unreadable { cert, reason } if cert == "Test Leaf" && reason.contains("1.3.6.1.4.1.99999.1")),
        "{e}"
    );
    // Not critical: ignored, as the PCK's SGX extension is.
    let mut p = TestPki::params("Test Leaf", Kind::Leaf);
    p.custom_extensions.push(CustomExtension::from_oid_content(
        &[1, 2, 840, 113741, 1, 13, 1],
        vec![0x30, 0x00],
    ));
    let leaf = ca.issue_with(p);
    check(&leaf, &[&ca], &anchors(&[&root]), TestPki::NOW).unwrap();
}

/// An EK certificate's subject may be empty (its names are in a critical
/// SubjectAltName): it validates, and messages still say which it is.
#[test]
fn an_empty_subject_validates_and_is_named() {
    let (root, ca, _) = three();
    let mut p = TestPki::params("", Kind::Leaf);
    p.distinguished_name = rcgen::DistinguishedName::new();
    let leaf = ca.issue_with(p);
    assert_eq!(leaf.x509.cn, "(empty subject)");
    check(&leaf, &[&ca], &anchors(&[&root]), TestPki::NOW).unwrap();
    let e = check(&leaf, &[], &anchors(&[&root]), TestPki::NOW).unwrap_err();
    assert!(
        e.to_string()
            .starts_with("(empty subject) chains to no trusted certificate"),
        "{e}"
    );
}

#[test]
fn extended_key_usage_follows_the_purpose() {
    let (root, ca, _) = three();
    let trusted = anchors(&[&root]);
    let inter = [&ca.x509];
    let leaf_with = |eku: Vec<ExtendedKeyUsagePurpose>| {
        let mut p = TestPki::params("Test Leaf", Kind::Leaf);
        p.extended_key_usages = eku;
        ca.issue_with(p)
    };
    let ek = ExtendedKeyUsagePurpose::Other(vec![2, 23, 133, 8, 1]);
    let run = |leaf: &TestPki, purpose| {
        verify_path(&leaf.x509, &inter, &trusted, TestPki::NOW, purpose, &[]).map(|_| ())
    };
    // An EK certificate: tcg-kp-EKCertificate, or no EKU at all.
    run(&leaf_with(vec![ek.clone()]), Purpose::TpmEndorsementKey).unwrap();
    run(&leaf_with(vec![]), Purpose::TpmEndorsementKey).unwrap();
    let e = run(
        &leaf_with(vec![ExtendedKeyUsagePurpose::ServerAuth]),
        Purpose::TpmEndorsementKey,
    )
    .unwrap_err();
    assert!(
        matches!(&e, ChainError::WrongPurpose { cert, present, required } if cert == "Test Leaf" && present == "1.3.6.1.5.5.7.3.1" && required == "2.23.133.8.1"),
        "{e}"
    );
    // A vendor key (AMD, Intel): no EKU, or anyExtendedKeyUsage.
    run(&leaf_with(vec![]), Purpose::IntelSgx).unwrap();
    run(
        &leaf_with(vec![ExtendedKeyUsagePurpose::Any]),
        Purpose::IntelSgx,
    )
    .unwrap();
    let e = run(&leaf_with(vec![ek]), Purpose::IntelSgx).unwrap_err();
    assert!(matches!(e, ChainError::WrongPurpose { .. }), "{e}");
}

/// Each AMD chain from `shared/fixtures/amd-certs` (`ASK, ARK, ASVK`).
fn amd_chain(product: &str) -> Vec<X509Cert> {
    let pem = std::fs::read_to_string(format!("{FIXTURES}/amd-certs/{product}_ask_ark_asvk.pem"))
        .unwrap();
    X509Cert::from_pem_bundle(&pem).unwrap()
}

/// AMD's certificates spell out RSA-PSS's default trailerField, which
/// webpki's own RSA-PSS SHA-384 does not match: the real VCEK is refused
/// with it alone, and validates with AMD's exact AlgorithmIdentifier.
#[test]
fn amd_rsa_pss_encoding_needs_its_own_algorithm_identifier() {
    use x509_cert::der::Encode;
    let vcek =
        X509Cert::from_der(&std::fs::read(format!("{FIXTURES}/snp/trustee_snp_vcek.der")).unwrap())
            .unwrap();
    let mut every = vec![vcek.clone()];
    for product in ["milan", "genoa", "turin"] {
        every.extend(amd_chain(product));
    }
    for c in &every {
        let id = c.cert.signature_algorithm.to_der().unwrap();
        assert_eq!(id[2..], path::AMD_RSA_PSS_SHA384_ID[..], "{}", c.cn);
    }
    let [ask, ark, _asvk] = <[X509Cert; 3]>::try_from(amd_chain("milan")).unwrap();
    let now =
        rustls_pki_types::UnixTime::since_unix_epoch(std::time::Duration::from_secs(1_700_000_000));
    let ark_der = rustls_pki_types::CertificateDer::from(ark.der.as_slice());
    let anchor = [webpki::anchor_from_trusted_cert(&ark_der).unwrap()];
    let leaf_der = rustls_pki_types::CertificateDer::from(vcek.der.as_slice());
    let leaf = webpki::EndEntityCert::try_from(&leaf_der).unwrap();
    let inter = [rustls_pki_types::CertificateDer::from(ask.der.as_slice())];
    let eku = webpki::KeyUsage::required_if_present(path::ANY_EXTENDED_KEY_USAGE);
    let plain = leaf.verify_for_usage(
        &[webpki::ring::RSA_PSS_2048_8192_SHA384_LEGACY_KEY],
        &anchor,
        &inter,
        now,
        eku,
        None,
        None,
    );
    assert!(
        matches!(
            plain,
            Err(webpki::Error::UnsupportedSignatureAlgorithmContext(_))
        ),
        "{:?}",
        plain.err()
    );
    let trusted = TrustAnchors::new(vec![ark]).unwrap();
    let path = verify_path(
        &vcek,
        &[&ask],
        &trusted,
        1_700_000_000,
        Purpose::AmdSev,
        &[],
    )
    .unwrap();
    assert_eq!(path.anchor.cn, "ARK-Milan");
    // The Milan VCEK does not chain through Genoa's ASK.
    let [genoa_ask, _, _] = <[X509Cert; 3]>::try_from(amd_chain("genoa")).unwrap();
    let e = verify_path(
        &vcek,
        &[&genoa_ask],
        &trusted,
        1_700_000_000,
        Purpose::AmdSev,
        &[],
    )
    .unwrap_err();
    assert!(
        matches!(&e, ChainError::UnknownIssuer { cert, issuer } if cert == "SEV-VCEK" && issuer == "SEV-Milan"),
        "{e}"
    );
}
