//! Against the real TDX quotes and CCEL in `shared/fixtures/tdx`.

use super::*;

const FIXTURES: cocoon_fixtures::Dir = cocoon_fixtures::Dir("tdx");

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("fixture {name}: {e}"))
}

/// Every claim CoCo's verifier extracts from this quote, field by field
/// (header, body, TD attributes, bindings and the CCEL events).
#[test]
fn trustee_quote_claims_match_field_by_field() {
    let q = TdxQuote::parse(&fixture("trustee_tdx_quote_v4.dat")).unwrap();
    verify_quote_signatures(&q).unwrap();
    let ccel = TcgEventLog::parse(&fixture("trustee_ccel_data.bin")).unwrap();
    let got = claims(&q, Some(&ccel));
    let want: Value = serde_json::from_slice(&fixture("trustee_tdx_quote_v4.claims.json")).unwrap();
    for part in ["header", "body"] {
        let w = want["quote"][part].as_object().unwrap();
        for (k, v) in w {
            assert_eq!(&got["quote"][part][k], v, "quote.{part}.{k}");
        }
    }
    for k in ["report_data", "init_data"] {
        assert_eq!(got[k], want[k], "{k}");
    }
    // CoCo's attributes, plus ours (`migratable`, TD_ATTRIBUTES bit 29).
    for (k, v) in want["td_attributes"].as_object().unwrap() {
        assert_eq!(&got["td_attributes"][k], v, "td_attributes.{k}");
    }
    assert_eq!(got["td_attributes"]["migratable"], false);
    let (g, w) = (
        got["uefi_event_logs"].as_array().unwrap(),
        want["uefi_event_logs"].as_array().unwrap(),
    );
    assert_eq!(g.len(), w.len(), "event count");
    for (i, (g, w)) in g.iter().zip(w).enumerate() {
        for f in [
            "index",
            "type_name",
            "digests",
            "event",
            "digest_matches_event",
        ] {
            assert_eq!(g[f], w[f], "event {i} {f}");
        }
    }
}

#[test]
fn both_captured_quotes_verify_their_own_signatures() {
    for name in ["trustee_tdx_quote_v4.dat", "dcapqvl_tdx_quote.bin"] {
        let q = TdxQuote::parse(&fixture(name)).unwrap_or_else(|e| panic!("{name}: {e}"));
        assert_eq!(q.header.version, 4);
        verify_quote_signatures(&q).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
}

/// One flipped bit anywhere in the signed header and body, in the QE
/// report or in the QE auth data is refused.
#[test]
fn flipped_bits_are_refused() {
    let raw = fixture("trustee_tdx_quote_v4.dat");
    let q = TdxQuote::parse(&raw).unwrap();
    let signed = q.signed.len();
    for at in (0..signed).step_by(7) {
        let mut m = raw.clone();
        m[at] ^= 0x01;
        // A flip in the header may already fail parsing; otherwise the signature fails.
        if let Ok(q) = TdxQuote::parse(&m) {
            let e = verify_quote_signatures(&q)
                .expect_err("flipped signed bit accepted")
                .to_string();
            assert!(
                e.contains("quote signature does not verify"),
                "offset {at}: {e}"
            );
        }
    }
    let qe_report_at = signed + 4 + 64 + 64 + 6;
    for (at, expect) in [
        (qe_report_at + 10, "QE report signature"),
        (qe_report_at + 320, "does not bind"),
        (qe_report_at + 384 + 64 + 2 + 3, "does not bind"),
        (signed + 4 + 5, "quote signature"),
    ] {
        let mut m = raw.clone();
        m[at] ^= 0x01;
        let e = verify_quote_signatures(&TdxQuote::parse(&m).unwrap())
            .unwrap_err()
            .to_string();
        assert!(e.contains(expect), "offset {at}: {e}");
    }
}

/// The captured CCEL and quote come from different boots, so the CCEL
/// does not replay to that quote's RTMRs (refused); against RTMRs that
/// hold its replay it passes, and one changed digest is caught.
#[test]
fn ccel_replays_to_the_rtmrs_and_tampering_is_caught() {
    let mut q = TdxQuote::parse(&fixture("trustee_tdx_quote_v4.dat")).unwrap();
    let ccel = TcgEventLog::parse(&fixture("trustee_ccel_data.bin")).unwrap();
    assert!(
        check_ccel(&ccel, &q)
            .unwrap_err()
            .to_string()
            .contains("RTMR0")
    );
    let regs = ccel.replay(AlgId::SHA384);
    for (index, value) in &regs {
        q.body.rtmr[*index as usize - 1].copy_from_slice(value);
    }
    check_ccel(&ccel, &q).unwrap();
    let mut bad = ccel.clone();
    let e = bad.events.iter_mut().find(|e| e.index == 2).unwrap();
    e.digests[0].1[0] ^= 1;
    assert!(
        check_ccel(&bad, &q)
            .unwrap_err()
            .to_string()
            .contains("RTMR1")
    );
    // Every event of one register dropped: still compared (to zero).
    let last = *regs.keys().max().unwrap();
    let mut dropped = ccel.clone();
    dropped.events.retain(|e| e.index != last);
    let err = check_ccel(&dropped, &q).unwrap_err().to_string();
    assert!(err.contains(&format!("RTMR{}", last - 1)), "{err}");
    // An event at an index no RTMR measures.
    let mut stray = ccel.clone();
    let e = stray.events.iter_mut().find(|e| e.event_type != 3).unwrap();
    e.index = 5;
    assert!(
        check_ccel(&stray, &q)
            .unwrap_err()
            .to_string()
            .contains("index 5")
    );
}

#[test]
fn malformed_quotes_are_errors_not_panics() {
    let raw = fixture("trustee_tdx_quote_v4.dat");
    for cut in [0, 10, 47, 48, 300, 632, 700, 1200, raw.len() - 1] {
        assert!(TdxQuote::parse(&raw[..cut]).is_err(), "cut {cut}");
    }
    let mut padded = raw.clone();
    padded.extend_from_slice(&[0; 70]);
    assert!(TdxQuote::parse(&padded).is_ok(), "zero padding is accepted");
    padded.push(1);
    assert!(
        TdxQuote::parse(&padded)
            .unwrap_err()
            .to_string()
            .contains("trailing bytes")
    );
    let mut sgx = raw.clone();
    sgx[4] = 0;
    assert!(
        TdxQuote::parse(&sgx)
            .unwrap_err()
            .to_string()
            .contains("not TDX")
    );
    let mut x = 0x9e37_79b9_u32;
    for _ in 0..20_000 {
        let mut m = raw.clone();
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        let at = x as usize % m.len();
        m[at] = (x >> 8) as u8;
        if let Ok(q) = TdxQuote::parse(&m) {
            let _ = verify_quote_signatures(&q);
        }
    }
}

/// Both captured quotes chain to the embedded Intel root; a chain that
/// does not end in Intel's root, and a time outside the PCK's validity, are refused.
#[test]
fn pck_chains_to_the_intel_root() {
    let now = 1_750_000_000; // 2025-06
    for name in ["trustee_tdx_quote_v4.dat", "dcapqvl_tdx_quote.bin"] {
        let q = TdxQuote::parse(&fixture(name)).unwrap();
        verify_pck_chain(&q, now).unwrap_or_else(|e| panic!("{name}: {e}"));
    }
    let q = TdxQuote::parse(&fixture("trustee_tdx_quote_v4.dat")).unwrap();
    assert!(
        verify_pck_chain(&q, 4_000_000_000)
            .unwrap_err()
            .to_string()
            .contains("expired")
    );
    // Replace the chain's root with the AMD Milan ARK: not Intel's.
    let pem = String::from_utf8(q.qe.pck_chain_pem.clone()).unwrap();
    let cut = pem.rfind("-----BEGIN CERTIFICATE-----").unwrap();
    let amd = include_str!("../snp/amd/milan.pem");
    let mut other = q.clone();
    other.qe.pck_chain_pem = format!(
        "{}{}",
        &pem[..cut],
        &amd[..amd.find("-----END CERTIFICATE-----").unwrap() + 25]
    )
    .into_bytes();
    let e = verify_pck_chain(&other, now).unwrap_err();
    assert!(matches!(e, VerifyError::UntrustedKey { .. }), "{e}");
    // A chain of two certificates is refused.
    let mut short = q.clone();
    short.qe.pck_chain_pem = pem.as_bytes()[..cut].to_vec();
    assert!(
        verify_pck_chain(&short, now)
            .unwrap_err()
            .to_string()
            .contains("expected 3")
    );
}

fn collateral() -> collateral::Collateral {
    serde_json::from_slice(&fixture("dcapqvl_tdx_quote_collateral.json")).unwrap()
}

/// 2025-06-25: inside the captured collateral's window (06-19 .. 07-19).
const IN_WINDOW: u64 = 1_750_809_600;

#[test]
fn collateral_verifies_for_its_quote() {
    let q = TdxQuote::parse(&fixture("dcapqvl_tdx_quote.bin")).unwrap();
    let r = collateral::verify(&q, &collateral(), IN_WINDOW).unwrap();
    assert_eq!(r.fmspc, "B0C06F000000");
    assert_eq!(r.qe_tcb_status, "UpToDate");
}

#[test]
fn tampered_expired_and_foreign_collateral_is_refused() {
    let q = TdxQuote::parse(&fixture("dcapqvl_tdx_quote.bin")).unwrap();
    // Expired: past nextUpdate.
    let e = collateral::verify(&q, &collateral(), IN_WINDOW + 40 * 86_400)
        .unwrap_err()
        .to_string();
    assert!(e.contains("expired"), "{e}");
    // A changed TCB info or QE identity fails its signature.
    let mut c = collateral();
    c.tcb_info = c.tcb_info.replacen("UpToDate", "UpToDatE", 1);
    assert!(
        collateral::verify(&q, &c, IN_WINDOW)
            .unwrap_err()
            .to_string()
            .contains("TCB info signature")
    );
    let mut c = collateral();
    c.qe_identity = c
        .qe_identity
        .replacen("\"isvprodid\":2", "\"isvprodid\":3", 1);
    assert!(
        collateral::verify(&q, &c, IN_WINDOW)
            .unwrap_err()
            .to_string()
            .contains("QE identity signature")
    );
    // A CRL changed by one bit fails its signature.
    let mut c = collateral();
    let crl = hex::decode(&c.pck_crl).unwrap();
    for at in [40, crl.len() - 80] {
        let mut m = crl.clone();
        m[at] ^= 1;
        c.pck_crl = hex::encode(m);
        let e = collateral::verify(&q, &c, IN_WINDOW)
            .unwrap_err()
            .to_string();
        assert!(e.contains("CRL"), "byte {at}: {e}");
    }
    // Signed by another Intel certificate than the TCB signer (a CA's,
    // which signs no documents): refused.
    let mut c = collateral();
    c.tcb_info_issuer_chain = c.pck_crl_issuer_chain.clone();
    let e = collateral::verify(&q, &c, IN_WINDOW)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("TCB info signing certificate")
            && e.contains("Intel SGX PCK Platform CA is a CA certificate"),
        "{e}"
    );
}

/// The PCK's SGX extension and the TCB levels: the captured quote's
/// platform meets the newest level, and its TDX module (TDX_01, SVN 6)
/// meets the newest module level.
#[test]
fn platform_tcb_level_from_pck_and_tcb_info() {
    let q = TdxQuote::parse(&fixture("dcapqvl_tdx_quote.bin")).unwrap();
    let pck = collateral::PckTcb::from_pck(&pck_chain(&q).unwrap()[0]).unwrap();
    assert_eq!(pck.fmspc, "B0C06F000000");
    let (platform, module) = collateral::platform_tcb_status(&q, &collateral()).unwrap();
    assert_eq!(platform, "UpToDate");
    assert_eq!(module.as_deref(), Some("UpToDate"));
    // A TD whose TEE_TCB_SVN is below every level is out of date.
    let mut old = q.clone();
    old.body.tcb_svn[2] = 0;
    assert_eq!(
        collateral::platform_tcb_status(&old, &collateral())
            .unwrap()
            .0,
        "OutOfDate"
    );
    // A TDX module Intel did not sign (MRSIGNERSEAM), or with SEAM
    // attributes its identity does not allow.
    for field in ["mrsigner", "attributes"] {
        let mut m = q.clone();
        if field == "mrsigner" {
            m.body.mrsigner_seam[0] = 1;
        } else {
            m.body.seam_attributes[0] = 1;
        }
        let e = collateral::platform_tcb_status(&m, &collateral())
            .unwrap_err()
            .to_string();
        assert!(e.contains("MRSIGNERSEAM/SEAMATTRIBUTES"), "{field}: {e}");
    }
    // TCB info for another FMSPC does not apply.
    let mut c = collateral();
    c.tcb_info = c.tcb_info.replacen("B0C06F000000", "00906ED50000", 1);
    assert!(
        collateral::platform_tcb_status(&q, &c)
            .unwrap_err()
            .to_string()
            .contains("FMSPC")
    );
}

/// The cache: the same quote verifies from it, a changed quote signature
/// is still caught (checked every time), changed collateral is a new entry,
/// and an entry past its validity is checked again (and refused).
#[test]
fn verification_cache() {
    let raw = fixture("dcapqvl_tdx_quote.bin");
    let q = TdxQuote::parse(&raw).unwrap();
    let c = collateral();
    let cache = TdxCache::default();
    let first = verify_quote(&q, Some(&c), IN_WINDOW, &cache)
        .unwrap()
        .unwrap();
    assert_eq!(first.tcb_status(), "UpToDate");
    assert!(
        first.valid_until > IN_WINDOW && first.valid_until <= 1_752_920_187,
        "{}",
        first.valid_until
    );
    let again = verify_quote(&q, Some(&c), IN_WINDOW + 1, &cache)
        .unwrap()
        .unwrap();
    assert_eq!(again.platform_tcb_status, first.platform_tcb_status);
    let mut forged = q.clone();
    forged.signature[5] ^= 1;
    assert!(
        verify_quote(&forged, Some(&c), IN_WINDOW, &cache)
            .unwrap_err()
            .to_string()
            .contains("quote signature")
    );
    let mut other = collateral();
    other.tcb_info = other.tcb_info.replacen("UpToDate", "UpToDatE", 1);
    assert!(verify_quote(&q, Some(&other), IN_WINDOW, &cache).is_err());
    assert!(
        verify_quote(&q, Some(&c), first.valid_until + 1, &cache)
            .unwrap_err()
            .to_string()
            .contains("expired")
    );
    assert!(verify_quote(&q, None, IN_WINDOW, &cache).unwrap().is_none());
}

/// A cached result is found only by a quote whose every platform-checked
/// field is the same: the TDX module and the QE vendor are part of the key.
#[test]
fn cache_key_covers_every_cached_check() {
    let q = TdxQuote::parse(&fixture("dcapqvl_tdx_quote.bin")).unwrap();
    let c = collateral();
    let key = cache_key(&q, Some(&c), false);
    assert_eq!(key, cache_key(&q.clone(), Some(&c), false));
    let mut changed: Vec<TdxQuote> = Vec::new();
    let mut m = q.clone();
    m.body.mrsigner_seam[0] ^= 1;
    changed.push(m);
    let mut m = q.clone();
    m.body.seam_attributes[0] ^= 1;
    changed.push(m);
    let mut m = q.clone();
    m.header.vendor_id[0] ^= 1;
    changed.push(m);
    let mut m = q.clone();
    m.body.tcb_svn[0] ^= 1;
    changed.push(m);
    let mut m = q.clone();
    m.qe.qe_report[0] ^= 1;
    changed.push(m);
    for (i, m) in changed.iter().enumerate() {
        assert_ne!(key, cache_key(m, Some(&c), false), "change {i}");
    }
    assert_ne!(key, cache_key(&q, None, false));
    assert_ne!(key, cache_key(&q, Some(&c), true));
}

/// The QE behind the attestation key must be Intel's TD QE, collateral or
/// not: another signer, another product, a debug QE or another vendor is
/// refused (checked after the PCK's signature over the QE report).
#[test]
fn only_intels_quoting_enclave_is_accepted() {
    let q = TdxQuote::parse(&fixture("dcapqvl_tdx_quote.bin")).unwrap();
    check_intel_qe(&q).unwrap();
    for (what, at, want) in [
        ("MRSIGNER", 130usize, "MRSIGNER is not Intel's"),
        ("ISVPRODID", 256, "ISVPRODID 3"),
        ("DEBUG", 48, "debug enclave"),
    ] {
        let mut m = q.clone();
        m.qe.qe_report[at] ^= if what == "ISVPRODID" { 1 } else { 0x02 };
        let e = check_intel_qe(&m).unwrap_err().to_string();
        assert!(e.contains(want), "{what}: {e}");
    }
    let mut m = q.clone();
    m.header.vendor_id[0] ^= 1;
    assert!(
        check_intel_qe(&m)
            .unwrap_err()
            .to_string()
            .contains("vendor")
    );
    // An SGX quote's QE (QE3) is not a TD QE.
    let sgx = crate::tdx::quote::SgxQuote::parse(
        &std::fs::read(format!("{FIXTURES}/../sgx/dcapqvl_sgx_quote.bin")).unwrap(),
    )
    .unwrap();
    check_intel_qe(&sgx).unwrap();
    let mut td_like = q.clone();
    td_like.qe.qe_report = sgx.qe.qe_report.clone();
    assert!(check_intel_qe(&td_like).is_err());
}

/// The trustee's collateral for a platform wins over what the evidence
/// sends; sent collateral is used only when the trustee has none.
#[test]
fn configured_collateral_wins_over_sent() {
    let q = TdxQuote::parse(&fixture("dcapqvl_tdx_quote.bin")).unwrap();
    let mut set = collateral::CollateralSet::default();
    set.insert(collateral()).unwrap();
    let mut sent = collateral();
    sent.tcb_info = sent.tcb_info.replacen("UpToDate", "UpToDatE", 1);
    verify_quote_with(&q, Some(&sent), Some(&set), IN_WINDOW, &TdxCache::default())
        .unwrap()
        .unwrap();
    let e = verify_quote_with(&q, Some(&sent), None, IN_WINDOW, &TdxCache::default())
        .unwrap_err()
        .to_string();
    assert!(e.contains("TCB info signature"), "{e}");
    // A set without this platform: the sent collateral is what is checked.
    let empty = collateral::CollateralSet::default();
    assert!(
        verify_quote_with(
            &q,
            Some(&sent),
            Some(&empty),
            IN_WINDOW,
            &TdxCache::default()
        )
        .is_err()
    );
}

/// The CCEL's digests per RTMR, whatever each event is labelled: every
/// measured event of the captured logs, in order, and a relabelled event
/// (its type or tag changed, which the registers do not vouch for) keeps
/// its digest in the claims.
#[test]
fn ccel_digests_per_rtmr() {
    let read = |name: &str| {
        std::fs::read(format!("{FIXTURES}/../eventlog/{name}"))
            .unwrap_or_else(|e| panic!("fixture {name}: {e}"))
    };
    for name in ["trustee_ccel_ovmf", "trustee_ccel_grub"] {
        let log = TcgEventLog::parse(&read(&format!("{name}.bin"))).unwrap();
        let c = ccel_claims(&log);
        let expected: Value =
            serde_json::from_slice(&read(&format!("{name}.expected.json"))).unwrap();
        for (reg, index) in [("rtmr0", 1), ("rtmr1", 2), ("rtmr2", 3)] {
            let want: Vec<Value> = expected["uefi_event_logs"]
                .as_array()
                .unwrap()
                .iter()
                .filter(|e| e["index"] == index && e["type_name"] != "EV_NO_ACTION")
                .map(|e| e["digests"][0]["digest"].clone())
                .collect();
            assert!(!want.is_empty(), "{name} {reg}");
            assert_eq!(c[reg], json!(want), "{name} {reg}");
        }
        // Relabel every event: the digests stay.
        let mut relabelled = log.clone();
        for e in &mut relabelled.events {
            if e.event_type != crate::eventlog::EV_NO_ACTION {
                e.event_type = 0x8000_0007;
                e.data = b"relabelled".to_vec();
            }
        }
        assert_eq!(ccel_claims(&relabelled), c, "{name}");
    }
}

/// A quote whose MRCONFIGID binds initdata is refused when the guest sends
/// none; a zero MRCONFIGID needs none.
#[test]
fn mrconfigid_without_initdata_is_refused() {
    let q = TdxQuote::parse(&fixture("trustee_tdx_quote_v4.dat")).unwrap();
    let input = |init: Option<&'static [u8]>, rd: &'static [u8]| VerifyInput {
        evidence: &Value::Null,
        expected_report_data: rd,
        init_data_digest: init,
    };
    let rd: &'static [u8] = Box::leak(q.body.report_data.to_vec().into_boxed_slice());
    check_bindings(
        TEE,
        &q.body.report_data,
        ("MRCONFIGID", &q.body.mr_config_id),
        &input(None, rd),
    )
    .unwrap();
    let mut bound = q.body.mr_config_id;
    bound[..4].copy_from_slice(&[1, 2, 3, 4]);
    let e = check_bindings(
        TEE,
        &q.body.report_data,
        ("MRCONFIGID", &bound),
        &input(None, rd),
    )
    .unwrap_err();
    assert!(
        matches!(
            e,
            VerifyError::InitDataWithheld {
                tee: "tdx",
                field: "MRCONFIGID",
                ..
            }
        ),
        "{e}"
    );
    assert!(e.to_string().contains("01020304"), "{e}");
    let e = check_bindings(
        TEE,
        &q.body.report_data,
        ("MRCONFIGID", &bound),
        &input(Some(&[9; 48]), rd),
    )
    .unwrap_err();
    assert!(matches!(e, VerifyError::InitDataMismatch), "{e}");
}
