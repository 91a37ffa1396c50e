//! Arbitrary bytes as DCAP collateral: as a CRL for the in-place reader,
//! and as collateral JSON checked against a real TDX quote.
#![no_main]

use cocoon_verifier::tdx::collateral::{self, Collateral};
use cocoon_verifier::tdx::quote::TdxQuote;
use libfuzzer_sys::fuzz_target;

const QUOTE: &[u8] = include_bytes!("../../../shared/fixtures/tdx/dcapqvl_tdx_quote.bin");

fuzz_target!(|data: &[u8]| {
    let _ = collateral::fuzz_crl(data);
    if let Ok(c) = serde_json::from_slice::<Collateral>(data) {
        let q = TdxQuote::parse(QUOTE).expect("fixture quote");
        let _ = collateral::verify(&q, &c, 1_750_809_600);
    }
});
