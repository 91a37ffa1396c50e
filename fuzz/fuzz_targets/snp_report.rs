//! Arbitrary bytes as an SEV-SNP report (and as a VCEK certificate).
#![no_main]

use cocoon_verifier::snp::SnpVerifier;
use cocoon_verifier::snp::report::SnpReport;
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

fn verifier() -> &'static SnpVerifier {
    static V: OnceLock<SnpVerifier> = OnceLock::new();
    V.get_or_init(|| SnpVerifier::new().expect("AMD chains"))
}

fuzz_target!(|data: &[u8]| {
    let _ = SnpReport::parse(data);
    // Split the input into a report and a certificate.
    let (report, cert) = data.split_at(data.len().min(cocoon_verifier::snp::report::REPORT_LEN));
    let _ = verifier().verify_report(report, cert, 1_700_000_000);
});
