//! `cocoon verify` on real captured evidence.

mod common;

use common::*;

const F: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../../shared/fixtures/snp");

fn verify(args: &[&str]) -> std::process::Output {
    let mut all = vec!["verify", "--tee", "snp"];
    all.extend_from_slice(args);
    cocoon(&all, &[])
}

#[test]
fn snp_report_offline() {
    let report = format!("{F}/trustee_snp_report.bin");
    let vcek = format!("{F}/trustee_snp_vcek.der");
    let o = verify(&["--evidence", &report, "--collateral", &vcek]);
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
    ok(&verify(&[
        "--evidence",
        &report,
        "--collateral",
        &vcek,
        "--report-data",
        &rd,
    ]));
    let err = fails(&verify(&[
        "--evidence",
        &report,
        "--collateral",
        &vcek,
        "--report-data",
        "00",
    ]));
    assert!(err.contains("report data does not match"), "{err}");
    let hd = claims["init_data"].as_str().unwrap().to_string();
    ok(&verify(&[
        "--evidence",
        &report,
        "--collateral",
        &vcek,
        "--init-data-digest",
        &hd,
    ]));
    let err = fails(&verify(&[
        "--evidence",
        &report,
        "--collateral",
        &vcek,
        "--init-data-digest",
        &"11".repeat(32),
    ]));
    assert!(err.contains("init data digest does not match"), "{err}");
    // Certificates that must be rejected, time outside the window, no VCEK.
    for bad in [
        "trustee_snp_vcek_invalid_legacy.der",
        "trustee_snp_vcek_invalid_new.der",
    ] {
        let err = fails(&verify(&[
            "--evidence",
            &report,
            "--collateral",
            &format!("{F}/{bad}"),
        ]));
        assert!(err.contains("does not verify"), "{bad}: {err}");
    }
    let err = fails(&verify(&[
        "--evidence",
        &report,
        "--collateral",
        &vcek,
        "--at",
        "2031-01-01T00:00:00Z",
    ]));
    assert!(err.contains("expired"), "{err}");
    let err = fails(&verify(&["--evidence", &report]));
    assert!(err.contains("--collateral"), "{err}");
    let err = fails(&cocoon(
        &["verify", "--tee", "tdx", "--evidence", &report],
        &[],
    ));
    assert!(err.contains("not supported yet"), "{err}");
}
