//! Against the real SGX quotes in `shared/fixtures/sgx`.

use super::*;
use crate::Verifier;
use crate::tdx::quote::TdxQuote;

const FIXTURES: cocoon_fixtures::Dir = cocoon_fixtures::Dir("");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

fn collateral(name: &str) -> Collateral {
    serde_json::from_slice(&fixture(name)).unwrap()
}

/// 2025-06-25: inside the captured SGX collateral's window (06-19 .. 07-19)
/// and inside both quotes' PCK chains.
const IN_WINDOW: u64 = 1_750_809_600;

const QUOTES: [&str; 2] = ["sgx/dcapqvl_sgx_quote.bin", "sgx/trustee_occlum_quote.dat"];

/// The claims CoCo's SGX verifier extracts from the Occlum quote.
#[test]
fn occlum_quote_claims_match_cocos() {
    let q = SgxQuote::parse(&fixture("sgx/trustee_occlum_quote.dat")).unwrap();
    let c = claims(&q);
    let header = json!({
        "version": "0300", "att_key_type": "0200", "att_key_data_0": "00000000",
        "qe_svn": "0800", "pce_svn": "0d00",
        "vendor_id": "939a7233f79c4ca9940a0db3957f0607",
        "user_data": "dccde9b31ce8860548173bb4a2a57a1600000000"
    });
    assert_eq!(c["header"], header);
    let zeros = |n: usize| "0".repeat(2 * n);
    let rd = format!("74657374{}", zeros(60));
    let body = json!({
        "cpu_svn": "06060c0cffff00000000000000000000",
        "misc_select": "01000000",
        "reserved1": zeros(12),
        "isv_ext_prod_id": zeros(16),
        "attributes.flags": "0700000000000000",
        "attributes.xfrm": "e700000000000000",
        "mr_enclave": "8f173e4613ff05c52aaf04162d234edae8c9977eae47eb2299ae16a553011c68",
        "reserved2": zeros(32),
        "mr_signer": "83d719e77deaca1470f6baf62a4d774303c899db69020f9c70ee1dfc08c7ce9e",
        "reserved3": zeros(32),
        "config_id": zeros(64),
        "isv_prod_id": "0000", "isv_svn": "0000", "config_svn": "0000",
        "reserved4": zeros(42),
        "isv_family_id": zeros(16),
        "report_data": rd,
    });
    for (k, v) in body.as_object().unwrap() {
        assert_eq!(&c["body"][k], v, "body.{k}");
    }
    assert_eq!(c["body"].as_object().unwrap().len(), 17);
    assert_eq!(c["report_data"], json!(rd));
    assert_eq!(c["init_data"], json!(zeros(64)));
}

#[test]
fn both_quotes_verify_signatures_and_chain() {
    let cache = TdxCache::default();
    for name in QUOTES {
        let q = SgxQuote::parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(q.header.version, 3);
        let r = verify_quote(&q, None, IN_WINDOW, &cache).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert!(r.is_none(), "no collateral, no TCB result");
    }
}

#[test]
fn collateral_gives_the_tcb_status() {
    let q = SgxQuote::parse(&fixture("sgx/dcapqvl_sgx_quote.bin")).unwrap();
    let c = collateral("sgx/dcapqvl_sgx_quote_collateral.json");
    let r = collateral::verify(&q, &c, IN_WINDOW).unwrap();
    assert_eq!(r.fmspc, "00A067110000");
    assert_eq!(r.qe_tcb_status, "UpToDate");
    assert!(r.module_tcb_status.is_none());
    assert_eq!(r.tcb_status(), r.platform_tcb_status);
    // Expired collateral is refused.
    let e = collateral::verify(&q, &c, IN_WINDOW + 40 * 86_400)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expired"), "{e}");
    // TDX collateral (validly signed by Intel) does not judge an SGX quote,
    // nor SGX collateral a TDX quote.
    let tdx = collateral("tdx/dcapqvl_tdx_quote_collateral.json");
    let e = collateral::verify(&q, &tdx, IN_WINDOW)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("QE identity is for TD_QE, a SGX quote needs QE"),
        "{e}"
    );
    let mut mixed = c.clone();
    mixed.tcb_info = tdx.tcb_info.clone();
    mixed.tcb_info_signature = tdx.tcb_info_signature.clone();
    mixed.tcb_info_issuer_chain = tdx.tcb_info_issuer_chain.clone();
    let e = collateral::verify(&q, &mixed, IN_WINDOW)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("TCB info is for TDX, a SGX quote needs SGX"),
        "{e}"
    );
    let tq = TdxQuote::parse(&fixture("tdx/dcapqvl_tdx_quote.bin")).unwrap();
    let mut mixed = tdx.clone();
    mixed.qe_identity = c.qe_identity.clone();
    mixed.qe_identity_signature = c.qe_identity_signature.clone();
    mixed.qe_identity_issuer_chain = c.qe_identity_issuer_chain.clone();
    let e = collateral::verify(&tq, &mixed, IN_WINDOW)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("QE identity is for QE, a TDX quote needs TD_QE"),
        "{e}"
    );
}

/// One flipped bit in the signed header and body, the QE report or the QE
/// auth data is refused with the check that caught it.
#[test]
fn flipped_bits_are_refused() {
    let raw = fixture("sgx/dcapqvl_sgx_quote.bin");
    let q = SgxQuote::parse(&raw).unwrap();
    let qe_start = 48 + 384 + 4 + 128;
    for (at, want) in [
        (0x0a, "quote signature"),
        (48 + 64, "quote signature"),
        (48 + 320, "quote signature"),
        (48 + 384 + 4 + 70, "quote signature"),
        (qe_start + 10, "QE report"),
        (qe_start + 384 + 10, "QE report"),
        (
            qe_start + 384 + 64 + 2 + 5,
            "does not bind the attestation key",
        ),
    ] {
        let mut m = raw.clone();
        m[at] ^= 0x10;
        let e = match SgxQuote::parse(&m) {
            Ok(mq) => verify_quote(&mq, None, IN_WINDOW, &TdxCache::default())
                .unwrap_err()
                .to_string(),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(want), "byte {at}: {e}");
        assert!(e.starts_with("sgx evidence"), "byte {at}: {e}");
    }
    assert_eq!(q.qe.qe_auth_data.len(), 32);
}

#[test]
fn wrong_tee_and_malformed_quotes_are_errors() {
    let raw = fixture("sgx/dcapqvl_sgx_quote.bin");
    let e = TdxQuote::parse(&raw).unwrap_err().to_string();
    assert!(e.contains("TEE type 0x0 (SGX) is not TDX"), "{e}");
    let e = SgxQuote::parse(&fixture("tdx/dcapqvl_tdx_quote.bin"))
        .unwrap_err()
        .to_string();
    assert!(e.contains("TEE type 0x81 (TDX) is not SGX"), "{e}");
    for cut in [0, 47, 48 + 383, 48 + 384 + 3, raw.len() - 1] {
        assert!(SgxQuote::parse(&raw[..cut]).is_err(), "cut {cut}");
    }
    let mut junk = raw.clone();
    junk.push(1);
    assert!(
        SgxQuote::parse(&junk)
            .unwrap_err()
            .to_string()
            .contains("trailing")
    );
    let mut v2 = raw.clone();
    v2[0] = 2;
    assert!(
        SgxQuote::parse(&v2)
            .unwrap_err()
            .to_string()
            .contains("SGX quote version 2")
    );
}

fn evidence(name: &str, with_collateral: bool) -> Value {
    use base64::Engine;
    let mut ev = json!({
        "quote": base64::engine::general_purpose::STANDARD.encode(fixture(name)),
    });
    if with_collateral {
        ev["collateral"] =
            serde_json::from_slice(&fixture("sgx/dcapqvl_sgx_quote_collateral.json")).unwrap();
    }
    ev
}

/// Through the verifier: report data and CONFIGID bindings, and the
/// `tcb_status` claim (`unknown` without collateral).
#[test]
fn verifier_checks_the_bindings() {
    let v = SgxVerifier::default();
    let ev = evidence("sgx/trustee_occlum_quote.dat", false);
    let q = SgxQuote::parse(&fixture("sgx/trustee_occlum_quote.dat")).unwrap();
    let input = |rd: &'static [u8], init: Option<&'static [u8]>, ev: &'static Value| VerifyInput {
        evidence: ev,
        expected_report_data: rd,
        init_data_digest: init,
    };
    let ev: &'static Value = Box::leak(Box::new(ev));
    // Its report data is "test"; 2023-06-01 is inside its PCK chain's validity.
    let at = 1_685_577_600;
    let c = v.verify_at(&input(b"test", None, ev), at).unwrap();
    assert_eq!(c.claims["tcb_status"], "unknown");
    assert_eq!(
        c.claims["body"]["mr_enclave"],
        hex::encode(q.body.mr_enclave)
    );
    let e = v.verify_at(&input(b"tesT", None, ev), at).unwrap_err();
    assert!(matches!(e, VerifyError::ReportDataMismatch { .. }), "{e}");
    let e = check_bindings(&q, &input(b"test", Some(&[1; 32]), ev)).unwrap_err();
    assert!(matches!(e, VerifyError::InitDataMismatch), "{e}");
    check_bindings(&q, &input(b"test", Some(&[0; 64]), ev)).unwrap();
    let e = v
        .verify(&input(
            b"test",
            None,
            Box::leak(Box::new(json!({"quote": "%%"}))),
        ))
        .unwrap_err();
    assert!(e.to_string().contains("malformed sgx evidence"), "{e}");
}
