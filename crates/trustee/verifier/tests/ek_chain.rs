//! EK certificates as a TPM manufacturer issues them (here swtpm_localca,
//! the issuer swtpm_setup uses: a critical SubjectAltName holding a
//! directoryName, Subject Directory Attributes and the
//! tcg-kp-EKCertificate extended key usage) validate to the
//! vendor's CAs through the shared path validation; another vendor's EK,
//! a missing intermediate and a time outside the window are refused.

use cocoon_tpm::swtpm::{self, Swtpm};
use cocoon_tpm::{DEFAULT_AK_HANDLE, KeyAlgorithm, Tpm};
use cocoon_verifier::tpm::ek::EkTrust;
use cocoon_verifier::x509::X509Cert;
use std::path::{Path, PathBuf};

/// A TPM manufactured with an EK certificate: the certificate (DER, as
/// read from its NV index), its AK's public area, and the vendor's CA
/// directory.
fn manufactured(dir: &Path) -> (Vec<u8>, Vec<u8>, PathBuf) {
    let state = dir.join("tpm");
    std::fs::create_dir_all(&state).unwrap();
    let ca = dir.join("vendor-ca");
    swtpm::manufacture_with_ek_cert(&state, &ca)
        .expect("swtpm_setup (swtpm-tools, installed by scripts/test)");
    let sw = Swtpm::start(&state).expect("swtpm (scripts/test installs it)");
    let mut tpm = Tpm::open(&sw.tcti()).unwrap();
    let ek = tpm.nv_read(swtpm::EK_CERT_NV_INDEX).unwrap();
    tpm.ensure_ak(DEFAULT_AK_HANDLE, KeyAlgorithm::EccP256)
        .unwrap();
    let ak = tpm.read_public_bytes(DEFAULT_AK_HANDLE).unwrap().unwrap();
    (ek, ak, ca)
}

/// A trust directory with the vendor's `files` (root, issuer).
fn trust(dir: &Path, ca: &Path, files: &[&str]) -> EkTrust {
    let out = dir.join(format!("trust-{}", files.join("-")));
    std::fs::create_dir_all(&out).unwrap();
    for f in files {
        std::fs::copy(ca.join(f), out.join(f)).unwrap();
    }
    EkTrust::load(&out).unwrap()
}

const ROOT: &str = "swtpm-localca-rootca-cert.pem";
const ISSUER: &str = "issuercert.pem";

#[test]
fn swtpm_ek_certificates_validate_to_their_vendor_only() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let (ek_der, ak, ca) = manufactured(d);
    let ek = X509Cert::from_der(&ek_der).unwrap();
    // What real EK certificates carry, and webpki must accept.
    let san = ek
        .cert
        .tbs_certificate
        .extensions
        .as_deref()
        .unwrap()
        .iter()
        .find(|e| e.extn_id.to_string() == "2.5.29.17")
        .expect("a SubjectAltName");
    assert!(san.critical, "the EK's SubjectAltName is critical");
    assert!(
        ek.extension("2.5.29.9").is_some(),
        "Subject Directory Attributes"
    );
    let eku = ek.extension("2.5.29.37").expect("an extended key usage");
    assert!(eku.windows(5).any(|w| w == [0x67, 0x81, 0x05, 0x08, 0x01]));

    let now = ek.not_before() + 60;
    let both = trust(d, &ca, &[ROOT, ISSUER]);
    assert_eq!(both.verify_ek_cert(&ek, &[], now).unwrap(), "swtpm-localca");
    let (_credential, pending) = both.challenge(&ek_der, &[], &ak, now).unwrap();
    assert_eq!(pending.ek_issuer, "swtpm-localca");

    // Only the root: the guest must send the intermediate.
    let root_only = trust(d, &ca, &[ROOT]);
    let e = root_only.verify_ek_cert(&ek, &[], now).unwrap_err();
    assert!(
        e.contains("does not chain to a trusted TPM manufacturer CA")
            && e.contains("its issuer 'swtpm-localca'"),
        "{e}"
    );
    let issuer =
        X509Cert::from_pem_bundle(&std::fs::read_to_string(ca.join(ISSUER)).unwrap()).unwrap();
    assert_eq!(
        root_only.verify_ek_cert(&ek, &issuer, now).unwrap(),
        "swtpm-localca-rootca"
    );

    // Before the vendor's CAs were made: not valid yet, whoever trusts them.
    let e = both.verify_ek_cert(&ek, &[], 1_000_000_000).unwrap_err();
    assert!(
        e.contains("not valid yet") && !e.contains("does not chain"),
        "{e}"
    );

    // Another vendor with the same CA names: its signatures do not verify.
    let other = tempfile::tempdir().unwrap();
    let (other_ek, _, _) = manufactured(other.path());
    let other_ek = X509Cert::from_der(&other_ek).unwrap();
    let later = other_ek.not_before() + 60;
    let e = both.verify_ek_cert(&other_ek, &[], later).unwrap_err();
    assert!(
        e.contains("does not chain to a trusted TPM manufacturer CA")
            && e.contains("the signature on unknown by swtpm-localca does not verify"),
        "{e}"
    );
}
