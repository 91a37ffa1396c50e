//! Against the real Azure evidence in `shared/fixtures/az-*-vtpm`.

use super::*;
use crate::snp::SnpVerifier;
use serde_json::json;

const FIXTURES: cocoon_fixtures::Dir = cocoon_fixtures::Dir("");

fn fixture(name: &str) -> Value {
    let b = std::fs::read(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"));
    serde_json::from_slice(&b).unwrap()
}

/// 2025-06-01: inside the VCEK's and the PCK chain's validity.
const AT: u64 = 1_748_736_000;

fn snp() -> AzSnpVtpmVerifier {
    AzSnpVtpmVerifier::new(Arc::new(SnpVerifier::new().unwrap()))
}

fn nonce(ev: &Value) -> Vec<u8> {
    let m = hex::decode(ev["tpm_quote"]["message"].as_str().unwrap()).unwrap();
    cocoon_tpm::Attest::parse(&m).unwrap().extra_data
}

fn input<'a>(ev: &'a Value, rd: &'a [u8], init: Option<&'a [u8]>) -> VerifyInput<'a> {
    VerifyInput {
        evidence: ev,
        expected_report_data: rd,
        init_data_digest: init,
    }
}

#[test]
fn snp_evidence_v1_and_v2_verify() {
    let v = snp();
    for name in [
        "az-snp-vtpm/trustee_evidence_v1.json",
        "az-snp-vtpm/trustee_evidence_v2.json",
    ] {
        let ev = fixture(name);
        let rd = nonce(&ev);
        let c = v
            .verify_at(&input(&ev, &rd, None), AT)
            .unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(c.report_data, hex::encode(&rd));
        assert_eq!(c.claims["tpm"].as_object().unwrap().len(), 24);
        assert_eq!(c.claims["tpm"]["pcr08"], ev["tpm_quote"]["pcrs"][8]);
        assert_eq!(c.claims["measurement"].as_str().unwrap().len(), 96);
        // PCR 8 as initdata: one extend of the digest from zero.
        let e = v
            .verify_at(&input(&ev, &rd, Some(&[7; 32])), AT)
            .unwrap_err();
        assert!(matches!(e, VerifyError::InitDataMismatch), "{e}");
    }
    assert_eq!(
        nonce(&fixture("az-snp-vtpm/trustee_evidence_v1.json")),
        b"challenge"
    );
}

/// Evidence without a "vcek": the trustee's VCEK source supplies it, as
/// for snp evidence; without one, the error says how to configure it.
#[test]
fn snp_evidence_without_vcek_uses_the_vcek_source() {
    let mut ev = fixture("az-snp-vtpm/trustee_evidence_v1.json");
    let vcek = ev.as_object_mut().unwrap().remove("vcek").unwrap();
    let rd = nonce(&ev);
    let e = snp().verify_at(&input(&ev, &rd, None), AT).unwrap_err();
    assert!(e.to_string().contains("--snp-vcek-dir"), "{e}");
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("vcek.der"),
        b64_any(vcek.as_str().unwrap()).unwrap(),
    )
    .unwrap();
    let mut with_dir = SnpVerifier::new().unwrap();
    with_dir.vcek_source = Some(Arc::new(
        crate::snp::VcekSource::from_dir(dir.path()).unwrap(),
    ));
    let c = AzSnpVtpmVerifier::new(Arc::new(with_dir))
        .verify_at(&input(&ev, &rd, None), AT)
        .unwrap();
    assert_eq!(c.report_data, hex::encode(&rd));
}

#[test]
fn tdx_evidence_verifies() {
    let v = AzTdxVtpmVerifier::default();
    let ev = fixture("az-tdx-vtpm/trustee_evidence_v1.json");
    let c = v.verify_at(&input(&ev, b"challenge", None), AT).unwrap();
    assert_eq!(c.claims["tcb_status"], "unknown");
    assert_eq!(c.claims["quote"]["header"]["tee_type"], "81000000");
    assert_eq!(c.claims["tpm"]["pcr23"], ev["tpm_quote"]["pcrs"][23]);
    // The SNP verifier refuses a TDX HCL report, and the other way round.
    let e = snp()
        .verify_at(&input(&ev, b"challenge", None), AT)
        .unwrap_err();
    assert!(e.to_string().contains("carries a TDX report"), "{e}");
    let s = fixture("az-snp-vtpm/trustee_evidence_v1.json");
    let e = v.verify_at(&input(&s, b"challenge", None), AT).unwrap_err();
    assert!(e.to_string().contains("carries an SNP report"), "{e}");
}

fn flip_hex(ev: &Value, path: &[&str], at: usize) -> Value {
    let mut t = ev.clone();
    let mut slot = &mut t;
    for p in path {
        slot = &mut slot[*p];
    }
    let mut b = hex::decode(slot.as_str().unwrap()).unwrap();
    b[at] ^= 1;
    *slot = Value::String(hex::encode(b));
    t
}

fn flip_hcl(ev: &Value, at: usize) -> Value {
    use base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let mut b = b64_any(ev["hcl_report"].as_str().unwrap()).unwrap();
    b[at] ^= 1;
    let mut t = ev.clone();
    t["hcl_report"] = Value::String(URL_SAFE_NO_PAD.encode(b));
    t
}

/// Each tampering is refused by the check that covers it.
#[test]
fn tampered_snp_evidence_is_refused() {
    let v = snp();
    let ev = fixture("az-snp-vtpm/trustee_evidence_v2.json");
    let rd = nonce(&ev);
    let err = |t: &Value, rd: &[u8]| {
        v.verify_at(&input(t, rd, None), AT)
            .unwrap_err()
            .to_string()
    };
    // Wrong nonce.
    let mut wrong = rd.clone();
    wrong[0] ^= 1;
    assert!(err(&ev, &wrong).contains("report data does not match"));
    // The quote, its signature, a PCR value.
    let e = err(&flip_hex(&ev, &["tpm_quote", "message"], 30), &rd);
    assert!(e.contains("vTPM quote") && e.contains("signature"), "{e}");
    let e = err(&flip_hex(&ev, &["tpm_quote", "signature"], 5), &rd);
    assert!(e.contains("vTPM quote"), "{e}");
    let mut t = ev.clone();
    t["tpm_quote"]["pcrs"][3] = Value::String("00".repeat(32));
    let e = err(&t, &rd);
    assert!(e.contains("PCR digest"), "{e}");
    // The SNP report (measurement byte), and the variable data holding the AK.
    let e = err(&flip_hcl(&ev, 32 + 0x90), &rd);
    assert!(
        e.contains("az-snp-vtpm evidence rejected") && e.contains("signature"),
        "{e}"
    );
    let e = err(&flip_hcl(&ev, 32 + 1184 + 20 + 100), &rd);
    assert!(e.contains("does not bind the HCL variable data"), "{e}");
    // A VCEK from another chip.
    let mut t = ev.clone();
    t["vcek"] = Value::String(
        base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(format!("{FIXTURES}/snp/trustee_snp_vcek.der")).unwrap()),
    );
    let e = err(&t, &rd);
    assert!(
        e.contains("az-snp-vtpm evidence rejected: the VCEK is for"),
        "{e}"
    );
    // The version field is not signed: v2 evidence marked v1 skips the
    // HCL user-data comparison and still verifies, because the nonce is
    // bound by the vTPM quote's extraData either way.
    let mut t = ev.clone();
    t["version"] = json!(1);
    v.verify_at(&input(&t, &rd, None), AT).unwrap();
    // Malformed.
    let mut t = ev.clone();
    t["hcl_report"] = json!("AAAA");
    assert!(err(&t, &rd).contains("malformed HCL report"));
    assert!(err(&json!({"svn": 1}), &rd).contains("malformed az-snp-vtpm evidence"));
}

#[test]
fn tampered_tdx_evidence_is_refused() {
    let v = AzTdxVtpmVerifier::default();
    let ev = fixture("az-tdx-vtpm/trustee_evidence_v1.json");
    let err = |t: &Value| {
        v.verify_at(&input(t, b"challenge", None), AT)
            .unwrap_err()
            .to_string()
    };
    // Another TD's quote (a real one, validly signed) is not this HCL's.
    let mut t = ev.clone();
    t["td_quote"] = Value::String(
        base64::engine::general_purpose::STANDARD
            .encode(std::fs::read(format!("{FIXTURES}/tdx/dcapqvl_tdx_quote.bin")).unwrap()),
    );
    let e = err(&t);
    assert!(e.contains("not for the HCL report's TDREPORT"), "{e}");
    // A flipped bit in the TD quote body.
    let mut q = b64_any(ev["td_quote"].as_str().unwrap()).unwrap();
    q[48 + 200] ^= 1;
    let mut t = ev.clone();
    t["td_quote"] = Value::String(base64::engine::general_purpose::STANDARD.encode(q));
    let e = err(&t);
    assert!(
        e.contains("az-tdx-vtpm evidence rejected: the quote signature"),
        "{e}"
    );
    // The variable data (the AK) changed.
    let e = err(&flip_hcl(&ev, 32 + 1184 + 20 + 100));
    assert!(e.contains("does not bind the HCL variable data"), "{e}");
    let e = err(&flip_hex(&ev, &["tpm_quote", "message"], 40));
    assert!(e.contains("vTPM quote"), "{e}");
    assert!(
        v.verify_at(&input(&ev, b"challengE", None), AT)
            .unwrap_err()
            .to_string()
            .contains("report data does not match")
    );
}

#[test]
fn hcl_parser_refuses_malformed_reports() {
    let ev = fixture("az-snp-vtpm/trustee_evidence_v1.json");
    let raw = b64_any(ev["hcl_report"].as_str().unwrap()).unwrap();
    let r = HclReport::parse(&raw).unwrap();
    assert_eq!(r.report_type, HwReportType::Snp);
    assert_eq!(r.runtime.keys.len(), 2);
    for cut in [0, 31, 1200, 32 + 1184 + 19, 32 + 1184 + 100] {
        assert!(HclReport::parse(&raw[..cut]).is_err(), "cut {cut}");
    }
    let mut m = raw.clone();
    m[0] = b'X';
    assert!(
        HclReport::parse(&m)
            .unwrap_err()
            .to_string()
            .contains("HCLA")
    );
    let mut m = raw.clone();
    m[32 + 1184 + 16] = 0xff; // variable data size
    assert!(HclReport::parse(&m).is_err());
    let mut m = raw.clone();
    m[32 + 1184 + 8] = 3;
    assert!(
        HclReport::parse(&m)
            .unwrap_err()
            .to_string()
            .contains("report type 3")
    );
    let mut m = raw.clone();
    *m.last_mut().unwrap() = 1;
    assert!(
        HclReport::parse(&m)
            .unwrap_err()
            .to_string()
            .contains("trailing")
    );
}
