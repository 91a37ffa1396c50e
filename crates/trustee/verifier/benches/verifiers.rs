//! One criterion benchmark per verifier, on the real evidence in
//! `shared/fixtures`, each next to its baseline measured in the same run:
//! one ECDSA P-384 verification for SNP, `dcap-qvl` for TDX and SGX. After
//! the runs the ratios are printed from criterion's own estimates.
//!
//! `cargo bench -p cocoon-verifier --bench verifiers` (or `scripts/bench verifiers`).

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cocoon_verifier::snp::SnpVerifier;
use cocoon_verifier::snp::report::{SIGNED_LEN, SnpReport};
use cocoon_verifier::tdx::collateral::Collateral;
use cocoon_verifier::tdx::quote::{SgxQuote, TdxQuote};
use cocoon_verifier::tdx::{self, TdxCache};
use cocoon_verifier::x509::X509Cert;
use cocoon_verifier::{KeyTrust, TrustedKeys, Verifier, VerifyInput};
use criterion::{Criterion, black_box};
use serde_json::Value;
use std::sync::Arc;

const FIXTURES: cocoon_fixtures::Dir = cocoon_fixtures::Dir("");
/// Inside the DCAP collateral's window.
const DCAP_AT: u64 = 1_750_809_600;
/// Inside the SNP VCEK's validity.
const SNP_AT: u64 = 1_700_000_000;

fn fixture(name: &str) -> Vec<u8> {
    std::fs::read(format!("{FIXTURES}/{name}")).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn dcap_qvl_collateral(c: &Collateral) -> dcap_qvl::QuoteCollateralV3 {
    let h = |s: &str| hex::decode(s).unwrap();
    dcap_qvl::QuoteCollateralV3 {
        pck_crl_issuer_chain: c.pck_crl_issuer_chain.clone(),
        root_ca_crl: h(&c.root_ca_crl),
        pck_crl: h(&c.pck_crl),
        tcb_info_issuer_chain: c.tcb_info_issuer_chain.clone(),
        tcb_info: c.tcb_info.clone(),
        tcb_info_signature: h(&c.tcb_info_signature),
        qe_identity_issuer_chain: c.qe_identity_issuer_chain.clone(),
        qe_identity: c.qe_identity.clone(),
        qe_identity_signature: h(&c.qe_identity_signature),
        pck_certificate_chain: None,
    }
}

fn snp(c: &mut Criterion) {
    let report = fixture("snp/trustee_snp_report.bin");
    let vcek = fixture("snp/trustee_snp_vcek.der");
    let parsed = SnpReport::parse(&report).unwrap();
    let mut sig = [0u8; 96];
    sig[..48].copy_from_slice(&parsed.sig_r);
    sig[48..].copy_from_slice(&parsed.sig_s);
    let cert = X509Cert::from_der(&vcek).unwrap();
    let key = ring::signature::UnparsedPublicKey::new(
        &ring::signature::ECDSA_P384_SHA384_FIXED,
        cert.ec_point().to_vec(),
    );
    let v = SnpVerifier::new().unwrap();
    let mut g = c.benchmark_group("snp");
    g.bench_function("baseline_one_p384_verify", |b| {
        b.iter(|| key.verify(black_box(&report[..SIGNED_LEN]), &sig).unwrap())
    });
    g.bench_function("report_vcek_chain_cached", |b| {
        b.iter(|| v.verify_report(black_box(&report), &vcek, SNP_AT).unwrap())
    });
    // A VCEK not seen before: its RSA-PSS signature by the ASK is checked too.
    g.bench_function("report_vcek_chain_verified", |b| {
        b.iter_batched(
            || SnpVerifier::new().unwrap(),
            |fresh| {
                fresh
                    .verify_report(black_box(&report), &vcek, SNP_AT)
                    .unwrap()
            },
            criterion::BatchSize::SmallInput,
        )
    });
    g.finish();
}

fn dcap(c: &mut Criterion, tee: &str, quote_file: &str, collateral_file: &str) {
    let quote = fixture(quote_file);
    let col: Collateral = serde_json::from_slice(&fixture(collateral_file)).unwrap();
    let dq = dcap_qvl_collateral(&col);
    let cache = TdxCache::default();
    let mut g = c.benchmark_group(tee);
    g.bench_function("baseline_dcap_qvl", |b| {
        b.iter(|| dcap_qvl::verify::verify(black_box(&quote), &dq, DCAP_AT).unwrap())
    });
    let run = |cache: &TdxCache| {
        if tee == "tdx" {
            let q = TdxQuote::parse(black_box(&quote)).unwrap();
            tdx::verify_quote(&q, Some(&col), DCAP_AT, cache).unwrap();
        } else {
            let q = SgxQuote::parse(black_box(&quote)).unwrap();
            cocoon_verifier::sgx::verify_quote(&q, Some(&col), DCAP_AT, cache).unwrap();
        }
    };
    g.bench_function("cold_nothing_cached", |b| {
        b.iter(|| run(&TdxCache::default()))
    });
    g.bench_function("platform_cached", |b| b.iter(|| run(&cache)));
    g.finish();
}

fn tdx_sgx(c: &mut Criterion) {
    dcap(
        c,
        "tdx",
        "tdx/dcapqvl_tdx_quote.bin",
        "tdx/dcapqvl_tdx_quote_collateral.json",
    );
    dcap(
        c,
        "sgx",
        "sgx/dcapqvl_sgx_quote.bin",
        "sgx/dcapqvl_sgx_quote_collateral.json",
    );
}

fn azure(c: &mut Criterion) {
    use cocoon_verifier::az::{AzSnpVtpmVerifier, AzTdxVtpmVerifier};
    let at = 1_748_736_000;
    let snp_ev: Value =
        serde_json::from_slice(&fixture("az-snp-vtpm/trustee_evidence_v1.json")).unwrap();
    let tdx_ev: Value =
        serde_json::from_slice(&fixture("az-tdx-vtpm/trustee_evidence_v1.json")).unwrap();
    let snp = AzSnpVtpmVerifier::new(Arc::new(SnpVerifier::new().unwrap()));
    let tdx = AzTdxVtpmVerifier::default();
    let input = |ev| VerifyInput {
        evidence: ev,
        expected_report_data: b"challenge",
        init_data_digest: None,
    };
    let mut g = c.benchmark_group("azure");
    g.bench_function("az_snp_vtpm", |b| {
        b.iter(|| snp.verify_at(&input(black_box(&snp_ev)), at).unwrap())
    });
    g.bench_function("az_tdx_vtpm_platform_cached", |b| {
        b.iter(|| tdx.verify_at(&input(black_box(&tdx_ev)), at).unwrap())
    });
    g.finish();
}

fn cca(c: &mut Criterion) {
    use cocoon_verifier::cca::{self, token::CcaToken};
    let token = fixture("cca/trustee_cca_example_token.cbor");
    let mut g = c.benchmark_group("cca");
    g.bench_function("parse_realm_signature_and_binding", |b| {
        b.iter(|| {
            let t = CcaToken::parse(black_box(&token)).unwrap();
            cca::verify_realm(&t).unwrap();
        })
    });
    g.finish();
}

struct Trust(Vec<u8>);
impl TrustedKeys for Trust {
    fn trusted_by(&self, spki: &[u8]) -> Result<Option<KeyTrust>, String> {
        Ok((spki == self.0.as_slice()).then(|| KeyTrust {
            by: "bench".into(),
            hardware_backed: true,
        }))
    }
}

fn tpm(c: &mut Criterion) {
    let ev: Value = serde_json::from_slice(&fixture("tpm/trustee_tpm_evidence.json")).unwrap();
    let ak = B64.decode(ev["ak_public"].as_str().unwrap()).unwrap();
    let msg = B64
        .decode(ev["tpm_quote"]["message"].as_str().unwrap())
        .unwrap();
    let nonce = cocoon_tpm::Attest::parse(&msg).unwrap().extra_data;
    let v = cocoon_verifier::tpm::TpmVerifier::new(Arc::new(Trust(ak)));
    let mut g = c.benchmark_group("tpm");
    g.bench_function("quote_rsa2048", |b| {
        b.iter(|| {
            v.verify(&VerifyInput {
                evidence: black_box(&ev),
                expected_report_data: &nonce,
                init_data_digest: None,
            })
            .unwrap()
        })
    });
    g.finish();
}

/// Criterion's median estimate for `group/name`, in microseconds.
fn median_us(group: &str, name: &str) -> Option<f64> {
    let dir = std::env::var("CARGO_TARGET_DIR")
        .unwrap_or_else(|_| concat!(env!("CARGO_MANIFEST_DIR"), "/../../../target").to_string());
    let p = format!("{dir}/criterion/{group}/{name}/new/estimates.json");
    let v: Value = serde_json::from_slice(&std::fs::read(p).ok()?).ok()?;
    v["median"]["point_estimate"].as_f64().map(|ns| ns / 1000.0)
}

fn ratios() {
    println!("\nratios against the baseline measured in this run (criterion medians):");
    let row = |group: &str, name: &str, base: &str, target: &str| {
        if let (Some(t), Some(b)) = (median_us(group, name), median_us(group, base)) {
            println!(
                "  {group:5} {name:34} {t:9.1} us  {:5.2}x {base:26} {b:9.1} us  {target}",
                t / b
            );
        }
    };
    row(
        "snp",
        "report_vcek_chain_cached",
        "baseline_one_p384_verify",
        "(target <= 1.25x)",
    );
    row(
        "snp",
        "report_vcek_chain_verified",
        "baseline_one_p384_verify",
        "",
    );
    for tee in ["tdx", "sgx"] {
        row(
            tee,
            "cold_nothing_cached",
            "baseline_dcap_qvl",
            "(target <= 1.00x)",
        );
        row(
            tee,
            "platform_cached",
            "baseline_dcap_qvl",
            "(target <= 0.33x and <= 250 us)",
        );
    }
    for (g, n) in [
        ("azure", "az_snp_vtpm"),
        ("azure", "az_tdx_vtpm_platform_cached"),
        ("cca", "parse_realm_signature_and_binding"),
        ("tpm", "quote_rsa2048"),
    ] {
        if let Some(t) = median_us(g, n) {
            println!("  {g:5} {n:34} {t:9.1} us");
        }
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    snp(&mut c);
    tdx_sgx(&mut c);
    azure(&mut c);
    cca(&mut c);
    tpm(&mut c);
    c.final_summary();
    ratios();
}
