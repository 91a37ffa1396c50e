//! `cocoon bench verify`: verifier cost on real evidence against the cost
//! of the one signature each report needs, measured in the same run.

use anyhow::{Context, Result};
use clap::Args;
use cocoon_verifier::snp::SnpVerifier;
use cocoon_verifier::snp::report::{SIGNED_LEN, SnpReport};
use std::path::PathBuf;
use std::time::Instant;

/// `cocoon bench verify`.
#[derive(Args, Debug)]
pub struct VerifyBenchArgs {
    /// Directory of captured evidence (the repository's shared fixtures).
    #[arg(long, default_value = "../shared/fixtures")]
    fixtures: PathBuf,
    /// Timed iterations per case.
    #[arg(long, default_value_t = 2000)]
    iterations: usize,
}

/// Median time of `f` in microseconds over `n` runs (after a warm-up).
fn median_us(n: usize, mut f: impl FnMut() -> Instant) -> f64 {
    for _ in 0..n.min(50) {
        f();
    }
    let mut v: Vec<f64> = (0..n)
        .map(|_| {
            let start = f();
            start.elapsed().as_secs_f64() * 1e6
        })
        .collect();
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// Runs the benchmark.
pub fn run(a: VerifyBenchArgs) -> Result<()> {
    let read = |name: &str| {
        let p = a.fixtures.join(name);
        std::fs::read(&p)
            .with_context(|| format!("cannot read {} (pass --fixtures DIR)", p.display()))
    };
    let report = read("snp/trustee_snp_report.bin")?;
    let vcek = read("snp/trustee_snp_vcek.der")?;
    let now = 1_700_000_000;
    let parsed = SnpReport::parse(&report)?;
    let mut sig = [0u8; 96];
    sig[..48].copy_from_slice(&parsed.sig_r);
    sig[48..].copy_from_slice(&parsed.sig_s);
    let cert = x509_point(&vcek)?;
    let key =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P384_SHA384_FIXED, cert);
    let p384 = median_us(a.iterations, || {
        let t = Instant::now();
        key.verify(&report[..SIGNED_LEN], &sig)
            .expect("P-384 signature");
        t
    });
    let verifier = SnpVerifier::new().map_err(anyhow::Error::msg)?;
    let cached = median_us(a.iterations, || {
        let t = Instant::now();
        verifier
            .verify_report(&report, &vcek, now)
            .expect("report verifies");
        t
    });
    let cold = median_us(a.iterations.min(300), || {
        let fresh = SnpVerifier::new().expect("AMD chains");
        let t = Instant::now();
        fresh
            .verify_report(&report, &vcek, now)
            .expect("report verifies");
        t
    });
    println!(
        "SEV-SNP report verification (real Milan report + VCEK), median of {} runs:",
        a.iterations
    );
    println!("  one ECDSA P-384 verification (ring), baseline   {p384:8.1} us   1.00x");
    println!(
        "  report, VCEK chain cached                       {cached:8.1} us   {:.2}x   (target <= 1.25x)",
        cached / p384
    );
    println!(
        "  report, VCEK chain verified (RSA-PSS ASK->VCEK) {cold:8.1} us   {:.2}x",
        cold / p384
    );
    println!(
        "  (every run also checks validity dates, CA constraints, the VCEK's TCB and hwID extensions against the report)"
    );

    // TDX: the dcap-qvl sample quote with its collateral, at a time inside
    // the collateral's window.
    use cocoon_verifier::tdx::{self, collateral::Collateral, quote::TdxQuote};
    let quote = read("tdx/dcapqvl_tdx_quote.bin")?;
    let collateral: Collateral =
        serde_json::from_slice(&read("tdx/dcapqvl_tdx_quote_collateral.json")?)?;
    let at = 1_750_809_600;
    let q = TdxQuote::parse(&quote)?;
    let mut ak = vec![4u8];
    ak.extend_from_slice(&q.attestation_key);
    let p256 =
        ring::signature::UnparsedPublicKey::new(&ring::signature::ECDSA_P256_SHA256_FIXED, ak);
    let base = median_us(a.iterations, || {
        let t = Instant::now();
        p256.verify(&q.signed, &q.signature)
            .expect("quote signature");
        t
    });
    let quote_only = median_us(a.iterations, || {
        let t = Instant::now();
        let q = TdxQuote::parse(&quote).expect("quote");
        tdx::verify_quote_signatures(&q).expect("signatures");
        tdx::verify_pck_chain(&q, at).expect("PCK chain");
        t
    });
    // A miss: what the trustee does the first time it sees a platform.
    let full = median_us(a.iterations.min(500), || {
        let fresh = tdx::TdxCache::default();
        let t = Instant::now();
        let q = TdxQuote::parse(&quote).expect("quote");
        tdx::verify_quote(&q, Some(&collateral), at, &fresh).expect("quote verifies");
        t
    });
    let cache = tdx::TdxCache::default();
    let cached = median_us(a.iterations, || {
        let t = Instant::now();
        let q = TdxQuote::parse(&quote).expect("quote");
        tdx::verify_quote(&q, Some(&collateral), at, &cache).expect("quote verifies");
        t
    });
    let hex = |h: &str| hex::decode(h).expect("collateral hex");
    let dcap_collateral = dcap_qvl::QuoteCollateralV3 {
        pck_crl_issuer_chain: collateral.pck_crl_issuer_chain.clone(),
        root_ca_crl: hex(&collateral.root_ca_crl),
        pck_crl: hex(&collateral.pck_crl),
        tcb_info_issuer_chain: collateral.tcb_info_issuer_chain.clone(),
        tcb_info: collateral.tcb_info.clone(),
        tcb_info_signature: hex(&collateral.tcb_info_signature),
        qe_identity_issuer_chain: collateral.qe_identity_issuer_chain.clone(),
        qe_identity: collateral.qe_identity.clone(),
        qe_identity_signature: hex(&collateral.qe_identity_signature),
        pck_certificate_chain: None,
    };
    let dcap = match dcap_qvl::verify::verify(&quote, &dcap_collateral, at) {
        Ok(r) => {
            let d = median_us(a.iterations.min(500), || {
                let t = Instant::now();
                dcap_qvl::verify::verify(&quote, &dcap_collateral, at).expect("dcap-qvl");
                t
            });
            println!(
                "\nTDX quote verification (dcap-qvl's sample quote + collateral); dcap-qvl says {}:",
                r.status
            );
            Some(d)
        }
        Err(e) => {
            println!(
                "\nTDX quote verification (dcap-qvl's sample quote + collateral); dcap-qvl refused it: {e:?}"
            );
            None
        }
    };
    println!("  one ECDSA P-256 verification (ring)             {base:8.1} us");
    if let Some(d) = dcap {
        println!("  dcap-qvl verify (baseline, nothing cached)      {d:8.1} us   1.00x");
        println!(
            "  ours, nothing cached                            {full:8.1} us   {:.2}x   (target <= 1.00x)",
            full / d
        );
        println!(
            "  ours, PCK chain and collateral cached           {cached:8.1} us   {:.2}x   (target <= 250 us, >= 3x faster)",
            cached / d
        );
    } else {
        println!("  ours, nothing cached                            {full:8.1} us");
        println!("  ours, PCK chain and collateral cached           {cached:8.1} us");
    }
    println!("  (quote + QE + PCK chain only, nothing cached:   {quote_only:8.1} us)");
    Ok(())
}

/// The EC point of a VCEK (its SubjectPublicKeyInfo's key bits).
fn x509_point(der: &[u8]) -> Result<Vec<u8>> {
    let c = cocoon_verifier::snp::cert::X509Cert::from_der(der).map_err(anyhow::Error::msg)?;
    Ok(c.ec_point().to_vec())
}
