//! `cocoon verify` on real captured evidence.

mod common;

use common::*;

const F: FixtureDir = FixtureDir("snp");

/// `cocoon verify --tee TEE --evidence EVIDENCE EXTRA...`.
fn verify(tee: &str, evidence: &str, extra: &[&str]) -> std::process::Output {
    let mut args = vec!["verify", "--tee", tee, "--evidence", evidence];
    args.extend_from_slice(extra);
    cocoon(&args, &[])
}

#[test]
fn snp_report_offline() {
    let report = format!("{F}/trustee_snp_report.bin");
    let vcek = format!("{F}/trustee_snp_vcek.der");
    let o = verify("snp", &report, &["--collateral", &vcek]);
    let claims: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(claims["product"], "Milan");
    assert_eq!(claims["measurement"].as_str().unwrap().len(), 96);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("report data binding NOT checked") && stderr.contains("TCB status unknown"),
        "{stderr}"
    );
    // The binding, when given, is checked exactly.
    let rd = claims["report_data"].as_str().unwrap().to_string();
    ok(&verify(
        "snp",
        &report,
        &["--collateral", &vcek, "--report-data", &rd],
    ));
    let err = fails(&verify(
        "snp",
        &report,
        &["--collateral", &vcek, "--report-data", "00"],
    ));
    assert!(err.contains("report data does not match"), "{err}");
    let hd = claims["init_data"].as_str().unwrap().to_string();
    ok(&verify(
        "snp",
        &report,
        &["--collateral", &vcek, "--init-data-digest", &hd],
    ));
    let err = fails(&verify(
        "snp",
        &report,
        &[
            "--collateral",
            &vcek,
            "--init-data-digest",
            &"11".repeat(32),
        ],
    ));
    assert!(err.contains("init data digest does not match"), "{err}");
    // Certificates that must be rejected, time outside the window, no VCEK.
    for bad in [
        "trustee_snp_vcek_invalid_legacy.der",
        "trustee_snp_vcek_invalid_new.der",
    ] {
        let err = fails(&verify(
            "snp",
            &report,
            &["--collateral", &format!("{F}/{bad}")],
        ));
        assert!(err.contains("does not verify"), "{bad}: {err}");
    }
    let err = fails(&verify(
        "snp",
        &report,
        &["--collateral", &vcek, "--at", "2031-01-01T00:00:00Z"],
    ));
    assert!(err.contains("expired"), "{err}");
    let err = fails(&verify("snp", &report, &[]));
    assert!(err.contains("--collateral"), "{err}");
    // Output that cannot be written is no panic, and no success either: a
    // reader that went away (`cocoon verify ... | head -1`) goes unsaid,
    // a full disk is reported.
    let (read, write) = std::io::pipe().unwrap();
    drop(read);
    let full = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/full")
        .unwrap();
    for (stdout, said) in [
        (std::process::Stdio::from(write), ""),
        (
            full.into(),
            "error: writing to standard output: No space left on device",
        ),
    ] {
        let o = std::process::Command::new(BIN)
            .args(["verify", "--tee", "snp", "--evidence", &report])
            .args(["--collateral", &vcek])
            .stdout(stdout)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&o.stderr);
        assert_eq!(o.status.code(), Some(1), "{stderr}");
        assert!(!stderr.contains("panicked"), "{stderr}");
        assert_eq!(
            stderr.contains("writing to standard output"),
            !said.is_empty(),
            "{stderr}"
        );
        assert!(stderr.contains(said), "{stderr}");
    }
    let err = fails(&verify("se", &report, &[]));
    assert!(err.contains("not supported yet"), "{err}");
    let err = fails(&verify("sgx", &report, &[]));
    assert!(err.contains("malformed SGX quote"), "{err}");
    // An SNP report is not a TDX quote.
    let err = fails(&verify("tdx", &report, &[]));
    assert!(err.contains("not TDX"), "{err}");
}

const TDX: FixtureDir = FixtureDir("tdx");

#[test]
fn tdx_quote_offline() {
    let quote = format!("{TDX}/trustee_tdx_quote_v4.dat");
    let at = ["--at", "2025-06-01T00:00:00Z"];
    let tdx = |extra: &[&str]| verify("tdx", &quote, &[&at[..], extra].concat());
    let o = tdx(&[]);
    let claims: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    let want: serde_json::Value = serde_json::from_slice(
        &std::fs::read(format!("{TDX}/trustee_tdx_quote_v4.claims.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["quote"]["body"]["mr_td"],
        want["quote"]["body"]["mr_td"]
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("TCB status unknown") && stderr.contains("NOT checked"),
        "{stderr}"
    );
    let rd = claims["report_data"].as_str().unwrap().to_string();
    ok(&tdx(&["--report-data", &rd]));
    assert!(fails(&tdx(&["--report-data", "00"])).contains("report data does not match"));
    ok(&tdx(&["--init-data-digest", &"00".repeat(32)]));
    assert!(fails(&tdx(&["--init-data-digest", &"11".repeat(32)])).contains("MRCONFIGID"));
    // The JSON form, with a CCEL from another boot: refused by the replay.
    use base64::Engine;
    let b64 = base64::engine::general_purpose::STANDARD;
    let dir = tempfile::tempdir().unwrap();
    let ev = serde_json::json!({
        "quote": b64.encode(std::fs::read(&quote).unwrap()),
        "cc_eventlog": b64.encode(std::fs::read(format!("{TDX}/trustee_ccel_data.bin")).unwrap()),
    });
    let evf = write(dir.path(), "ev.json", ev.to_string().as_bytes());
    let err = fails(&verify("tdx", evf.to_str().unwrap(), &at));
    assert!(err.contains("does not replay to RTMR0"), "{err}");
    // A flipped body bit; the other captured quote verifies too.
    let mut m = std::fs::read(&quote).unwrap();
    m[200] ^= 1;
    let mf = write(dir.path(), "m.dat", &m);
    let err = fails(&verify("tdx", mf.to_str().unwrap(), &at));
    assert!(err.contains("quote signature does not verify"), "{err}");
    ok(&verify("tdx", &format!("{TDX}/dcapqvl_tdx_quote.bin"), &at));
    // With its collateral, inside and outside the collateral's window.
    let dq = format!("{TDX}/dcapqvl_tdx_quote.bin");
    let col = format!("{TDX}/dcapqvl_tdx_quote_collateral.json");
    let o = verify(
        "tdx",
        &dq,
        &["--collateral", &col, "--at", "2025-06-25T00:00:00Z"],
    );
    ok(&o);
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr
            .contains("TCB status UpToDate (platform UpToDate, TDX module UpToDate, QE UpToDate)"),
        "{stderr}"
    );
    let err = fails(&verify(
        "tdx",
        &dq,
        &["--collateral", &col, "--at", "2025-09-01T00:00:00Z"],
    ));
    assert!(err.contains("expired"), "{err}");
}

const SGX: FixtureDir = FixtureDir("sgx");

/// dcap-qvl's verdict on a quote and its collateral at `at`.
fn dcap_qvl_status(quote: &[u8], collateral: &str, at: u64) -> String {
    let c: serde_json::Value = serde_json::from_slice(&std::fs::read(collateral).unwrap()).unwrap();
    let s = |k: &str| c[k].as_str().unwrap().to_string();
    let h = |k: &str| hex::decode(c[k].as_str().unwrap()).unwrap();
    let col = dcap_qvl::QuoteCollateralV3 {
        pck_crl_issuer_chain: s("pck_crl_issuer_chain"),
        root_ca_crl: h("root_ca_crl"),
        pck_crl: h("pck_crl"),
        tcb_info_issuer_chain: s("tcb_info_issuer_chain"),
        tcb_info: s("tcb_info"),
        tcb_info_signature: h("tcb_info_signature"),
        qe_identity_issuer_chain: s("qe_identity_issuer_chain"),
        qe_identity: s("qe_identity"),
        qe_identity_signature: h("qe_identity_signature"),
        pck_certificate_chain: None,
    };
    dcap_qvl::verify::verify(quote, &col, at).unwrap().status
}

#[test]
fn sgx_quote_offline_agrees_with_dcap_qvl() {
    let quote = format!("{SGX}/dcapqvl_sgx_quote.bin");
    let col = format!("{SGX}/dcapqvl_sgx_quote_collateral.json");
    let run = |extra: &[&str]| {
        verify(
            "sgx",
            &quote,
            &[&["--at", "2025-06-25T00:00:00Z"], extra].concat(),
        )
    };
    let o = run(&[]);
    let claims: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(claims["tcb_status"], "unknown");
    let q = std::fs::read(&quote).unwrap();
    assert_eq!(
        claims["body"]["mr_enclave"],
        hex::encode(&q[48 + 64..48 + 96])
    );
    assert_eq!(
        claims["body"]["mr_signer"],
        hex::encode(&q[48 + 128..48 + 160])
    );
    let o = run(&["--collateral", &col]);
    let claims: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    let want = dcap_qvl_status(&q, &col, 1_750_809_600);
    assert_eq!(claims["tcb_status"], want.as_str(), "dcap-qvl says {want}");
    let rd = claims["report_data"].as_str().unwrap().to_string();
    ok(&run(&["--report-data", &rd]));
    assert!(fails(&run(&["--report-data", "ff"])).contains("report data does not match"));
    assert!(fails(&run(&["--init-data-digest", "11"])).contains("CONFIGID"));
    // The TDX collateral does not judge an SGX quote.
    let err = fails(&run(&[
        "--collateral",
        &format!("{TDX}/dcapqvl_tdx_quote_collateral.json"),
    ]));
    assert!(
        err.contains("no collateral in --collateral is for this quote's platform (SGX"),
        "{err}"
    );
    // A TDX quote is not an SGX quote, and the Occlum quote verifies too.
    let err = fails(&verify("sgx", &format!("{TDX}/dcapqvl_tdx_quote.bin"), &[]));
    assert!(err.contains("is not SGX"), "{err}");
    ok(&verify(
        "sgx",
        &format!("{SGX}/trustee_occlum_quote.dat"),
        &["--report-data", "74657374", "--at", "2023-06-01T00:00:00Z"],
    ));
}

/// A collateral directory serves both TEEs, each by its FMSPC.
#[test]
fn collateral_directory_serves_tdx_and_sgx() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::copy(
        format!("{SGX}/dcapqvl_sgx_quote_collateral.json"),
        dir.path().join("sgx.json"),
    )
    .unwrap();
    std::fs::copy(
        format!("{TDX}/dcapqvl_tdx_quote_collateral.json"),
        dir.path().join("tdx.json"),
    )
    .unwrap();
    let d = dir.path().to_str().unwrap();
    for (tee, quote) in [
        ("sgx", format!("{SGX}/dcapqvl_sgx_quote.bin")),
        ("tdx", format!("{TDX}/dcapqvl_tdx_quote.bin")),
    ] {
        let o = verify(
            tee,
            &quote,
            &["--collateral", d, "--at", "2025-06-25T00:00:00Z"],
        );
        let claims: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
        assert_ne!(claims["tcb_status"], "unknown", "{tee}");
    }
    std::fs::write(dir.path().join("bad.json"), b"{}").unwrap();
    let err = fails(&verify(
        "sgx",
        &format!("{SGX}/dcapqvl_sgx_quote.bin"),
        &["--collateral", d],
    ));
    assert!(
        err.contains("bad.json is not DCAP collateral JSON"),
        "{err}"
    );
}

#[test]
fn tdx_tcb_status_agrees_with_dcap_qvl() {
    let quote = format!("{TDX}/dcapqvl_tdx_quote.bin");
    let col = format!("{TDX}/dcapqvl_tdx_quote_collateral.json");
    let o = verify(
        "tdx",
        &quote,
        &["--collateral", &col, "--at", "2025-06-25T00:00:00Z"],
    );
    let claims: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    let want = dcap_qvl_status(&std::fs::read(&quote).unwrap(), &col, 1_750_809_600);
    assert_eq!(claims["tcb_status"], want.as_str());
}

const FIX: FixtureDir = FixtureDir("");

#[test]
fn azure_vtpm_evidence_offline() {
    for (tee, file) in [
        ("az-snp-vtpm", "az-snp-vtpm/trustee_evidence_v1.json"),
        ("az-tdx-vtpm", "az-tdx-vtpm/trustee_evidence_v1.json"),
    ] {
        let ev = format!("{FIX}/{file}");
        let run = |extra: &[&str]| {
            verify(
                tee,
                &ev,
                &[&["--at", "2025-06-01T00:00:00Z"], extra].concat(),
            )
        };
        let o = run(&[]);
        let claims: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
        assert_eq!(claims["tpm"].as_object().unwrap().len(), 24, "{tee}");
        assert!(String::from_utf8_lossy(&o.stderr).contains("NOT checked"));
        // "challenge", the nonce these were captured with.
        ok(&run(&["--report-data", &hex::encode("challenge")]));
        let err = fails(&run(&["--report-data", &hex::encode("challengE")]));
        assert!(err.contains("report data does not match"), "{tee}: {err}");
        let err = fails(&run(&["--init-data-digest", &"11".repeat(32)]));
        assert!(err.contains("init data"), "{tee}: {err}");
    }
    let err = fails(&verify(
        "az-snp-vtpm",
        &format!("{FIX}/az-tdx-vtpm/trustee_evidence_v1.json"),
        &[],
    ));
    assert!(err.contains("carries a TDX report"), "{err}");
}

#[test]
fn cca_token_offline() {
    let token = format!("{FIX}/cca/trustee_cca_example_token.cbor");
    let o = verify("cca", &token, &[]);
    let claims: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(
        claims["platform"]["cca-platform-profile"],
        "http://arm.com/CCA-SSD/1.0.0"
    );
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(
        stderr.contains("platform token signature NOT checked"),
        "{stderr}"
    );
    let rd = claims["report_data"].as_str().unwrap().to_string();
    ok(&verify("cca", &token, &["--report-data", &rd]));
    let err = fails(&verify("cca", &token, &["--report-data", "00"]));
    assert!(err.contains("report data does not match"), "{err}");
    // A CPAK that is not this platform's.
    let dir = tempfile::tempdir().unwrap();
    let rng = ring::rand::SystemRandom::new();
    let pk = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        &rng,
    )
    .unwrap();
    let kp = ring::signature::EcdsaKeyPair::from_pkcs8(
        &ring::signature::ECDSA_P384_SHA384_FIXED_SIGNING,
        pk.as_ref(),
        &rng,
    )
    .unwrap();
    use ring::signature::KeyPair;
    let point = kp.public_key().as_ref();
    use base64::Engine;
    let b64u = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let jwk = serde_json::json!({"kty": "EC", "crv": "P-384", "x": b64u.encode(&point[1..49]), "y": b64u.encode(&point[49..])});
    let f = write(dir.path(), "cpak.jwk", jwk.to_string().as_bytes());
    let err = fails(&verify(
        "cca",
        &token,
        &["--collateral", f.to_str().unwrap()],
    ));
    assert!(
        err.contains("not signed by any of the 1 trusted CPAKs"),
        "{err}"
    );
    // One flipped bit in the realm token's signed claims.
    let mut m = std::fs::read(&token).unwrap();
    let at = m.len() - 200;
    m[at] ^= 1;
    let mf = write(dir.path(), "m.cbor", &m);
    let err = fails(&verify("cca", mf.to_str().unwrap(), &[]));
    assert!(err.contains("cca evidence"), "{err}");
}

#[test]
fn tpm_quote_offline() {
    let ev = format!("{FIX}/tpm/trustee_tpm_evidence.json");
    let o = verify("tpm", &ev, &[]);
    let claims: serde_json::Value = serde_json::from_str(&ok(&o)).unwrap();
    assert_eq!(claims["pcr23"].as_str().unwrap().len(), 64);
    assert_eq!(claims["ak_trusted_by"], "not checked");
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(stderr.contains("AK trust NOT checked"), "{stderr}");
    // Requiring another AK: refused.
    let dir = tempfile::tempdir().unwrap();
    let (_sk, pk) = {
        use p256::pkcs8::EncodePublicKey;
        let sk = p256::SecretKey::random(&mut rand_core::OsRng);
        let pem = sk
            .public_key()
            .to_public_key_pem(p256::pkcs8::LineEnding::LF)
            .unwrap();
        (sk, pem)
    };
    let f = write(dir.path(), "ak.pem", pk.as_bytes());
    let err = fails(&verify("tpm", &ev, &["--collateral", f.to_str().unwrap()]));
    assert!(err.contains("not registered"), "{err}");
    let err = fails(&verify("tpm", &ev, &["--report-data", "00"]));
    assert!(err.contains("report data does not match"), "{err}");
}
