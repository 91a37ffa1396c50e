//! Against the real SEV-SNP report and VCEK in `shared/fixtures/snp`.

use super::*;

const FIXTURES: cocoon_fixtures::Dir = cocoon_fixtures::Dir("");
/// Inside the VCEK's validity window (2023-01-24 to 2030-01-24).
const NOW: u64 = 1_700_000_000;

fn fixture(name: &str) -> Vec<u8> {
    let p = format!("{FIXTURES}/{name}");
    std::fs::read(&p).unwrap_or_else(|e| panic!("fixture {p}: {e}"))
}

fn verifier() -> SnpVerifier {
    SnpVerifier::new().expect("embedded AMD chains verify")
}

#[test]
fn real_report_verifies_with_its_vcek() {
    let claims = verifier()
        .verify_report(
            &fixture("snp/trustee_snp_report.bin"),
            &fixture("snp/trustee_snp_vcek.der"),
            NOW,
        )
        .expect("the fixture verifies");
    assert_eq!(claims.product, "Milan");
    assert_eq!(claims.signing_key, "VCEK");
    let j = claims.to_json();
    assert_eq!(j["measurement"].as_str().unwrap().len(), 96);
    assert_eq!(j["report_data"].as_str().unwrap().len(), 128);
    assert!(claims.report.version >= 2);
}

#[test]
fn every_signed_byte_is_covered() {
    let v = verifier();
    let vcek = fixture("snp/trustee_snp_vcek.der");
    let report = fixture("snp/trustee_snp_report.bin");
    // One bit in each 16-byte stretch of the signed region.
    for at in (0..report::SIGNED_LEN).step_by(16) {
        let mut r = report.clone();
        r[at] ^= 0x01;
        let err = v
            .verify_report(&r, &vcek, NOW)
            .expect_err("flipped bit accepted");
        let msg = err.to_string();
        assert!(
            msg.contains("signature does not verify")
                || msg.contains("SPL")
                || msg.contains("hwID")
                || msg.contains("not supported")
                || msg.contains("signing key")
                || msg.contains("another chip"),
            "offset {at:#x}: {msg}"
        );
    }
    let mut r = report.clone();
    r[report::SIGNED_LEN + 3] ^= 0x01;
    assert!(
        v.verify_report(&r, &vcek, NOW)
            .unwrap_err()
            .to_string()
            .contains("signature does not verify")
    );
}

#[test]
fn invalid_vceks_time_and_lengths_are_refused() {
    let v = verifier();
    let report = fixture("snp/trustee_snp_report.bin");
    for bad in [
        "snp/trustee_snp_vcek_invalid_legacy.der",
        "snp/trustee_snp_vcek_invalid_new.der",
    ] {
        let err = v.verify_report(&report, &fixture(bad), NOW).expect_err(bad);
        assert!(
            matches!(&err, VerifyError::UntrustedKey { detail, .. } if detail.contains("the signature on SEV-VCEK by SEV-Milan does not verify")),
            "{bad}: {err}"
        );
    }
    let vcek = fixture("snp/trustee_snp_vcek.der");
    let after = 1_900_000_000; // 2030-03
    assert!(
        v.verify_report(&report, &vcek, after)
            .unwrap_err()
            .to_string()
            .contains("expired")
    );
    assert!(matches!(
        v.verify_report(&report[..100], &vcek, NOW),
        Err(VerifyError::Malformed { .. })
    ));
    assert!(matches!(
        v.verify_report(&report, b"junk", NOW),
        Err(VerifyError::Malformed { .. })
    ));
    // A certificate from another chain: the Genoa ASK in place of the VCEK.
    let genoa = X509Cert::from_pem_bundle(include_str!("amd/genoa.pem")).unwrap();
    let der = x509_cert::der::Encode::to_der(&genoa[0].cert).unwrap();
    assert!(matches!(
        v.verify_report(&report, &der, NOW),
        Err(VerifyError::UntrustedKey { .. })
    ));
}

#[test]
fn report_data_and_host_data_binding() {
    let claims = verifier()
        .verify_report(
            &fixture("snp/trustee_snp_report.bin"),
            &fixture("snp/trustee_snp_vcek.der"),
            NOW,
        )
        .unwrap();
    let rd = claims.report.report_data;
    let used = rd.iter().rposition(|b| *b != 0).map_or(0, |i| i + 1);
    check_report_data(&claims.report, &rd[..used]).unwrap();
    let mut wrong = rd[..used.max(1)].to_vec();
    wrong[0] ^= 1;
    assert!(matches!(
        check_report_data(&claims.report, &wrong),
        Err(VerifyError::ReportDataMismatch { .. })
    ));
    let hd = claims.report.host_data;
    fn with(d: Option<&[u8]>) -> VerifyInput<'_> {
        VerifyInput {
            evidence: &serde_json::Value::Null,
            expected_report_data: &[],
            init_data_digest: d,
        }
    }
    check_host_data(&claims.report, &with(Some(&hd))).unwrap();
    let mut other = hd;
    other[31] ^= 1;
    assert!(matches!(
        check_host_data(&claims.report, &with(Some(&other))),
        Err(VerifyError::InitDataMismatch)
    ));
    // The fixture binds no initdata, so none need be sent; a report whose
    // HOSTDATA binds one cannot be appraised without it.
    check_host_data(&claims.report, &with(None)).unwrap();
    let mut bound = claims.report.clone();
    bound.host_data[0] = 1;
    let e = check_host_data(&bound, &with(None)).unwrap_err();
    assert!(
        matches!(
            e,
            VerifyError::InitDataWithheld {
                field: "HOSTDATA",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("but the guest sent none"), "{e}");
}

/// CoCo's evidence carries the report as the `sev` crate serializes it;
/// re-encoding must give back the signed bytes.
#[test]
fn sev_serde_envelope_round_trips_to_the_signed_bytes() {
    use sev::parser::{ByteParser, Encoder};
    let raw = fixture("snp/trustee_snp_report.bin");
    let report = sev::firmware::guest::AttestationReport::from_bytes(&raw).unwrap();
    let json = serde_json::to_value(report).unwrap();
    let back: sev::firmware::guest::AttestationReport = serde_json::from_value(json).unwrap();
    let mut out = Vec::new();
    back.encode(&mut out, ()).unwrap();
    assert_eq!(out.len(), raw.len());
    assert_eq!(out, raw);
}

/// Through the Verifier trait, with CoCo's evidence JSON: the fixture's
/// report data is not this session's, which is what a replay looks like.
#[test]
fn evidence_json_through_the_verifier_trait() {
    use crate::Verifier;
    use sev::parser::ByteParser;
    let raw = fixture("snp/trustee_snp_report.bin");
    let report = sev::firmware::guest::AttestationReport::from_bytes(&raw).unwrap();
    let vcek = fixture("snp/trustee_snp_vcek.der");
    let evidence =
        json!({"attestation_report": report, "cert_chain": [{"cert_type": "VCEK", "data": vcek}]});
    let v = verifier();
    let parsed = SnpReport::parse(&raw).unwrap();
    let used = parsed
        .report_data
        .iter()
        .rposition(|b| *b != 0)
        .map_or(0, |i| i + 1);
    let ok = v
        .verify(&VerifyInput {
            evidence: &evidence,
            expected_report_data: &parsed.report_data[..used],
            init_data_digest: Some(&parsed.host_data),
        })
        .expect("fixture evidence with its own report data verifies");
    assert_eq!(ok.claims["product"], "Milan");
    assert_eq!(
        ok.init_data.as_deref(),
        Some(hex::encode(parsed.host_data).as_str())
    );
    let err = v
        .verify(&VerifyInput {
            evidence: &evidence,
            expected_report_data: &[7u8; 48],
            init_data_digest: None,
        })
        .unwrap_err();
    assert!(
        matches!(err, VerifyError::ReportDataMismatch { .. }),
        "{err}"
    );
    let no_vcek = json!({"attestation_report": report, "cert_chain": null});
    assert!(matches!(
        v.verify(&VerifyInput {
            evidence: &no_vcek,
            expected_report_data: &[],
            init_data_digest: None
        }),
        Err(VerifyError::Unavailable(_))
    ));
    assert!(matches!(
        v.verify(&VerifyInput {
            evidence: &json!({"attestation_report": 5}),
            expected_report_data: &[],
            init_data_digest: None
        }),
        Err(VerifyError::Malformed { .. })
    ));
}
