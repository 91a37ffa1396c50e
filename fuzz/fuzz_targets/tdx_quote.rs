//! Arbitrary bytes as a TDX DCAP quote: parse, then every signature check.
#![no_main]

use cocoon_verifier::tdx::{self, quote::TdxQuote};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = TdxQuote::parse(data) {
        let _ = tdx::verify_quote_signatures(&q);
        let _ = tdx::verify_pck_chain(&q, 1_750_000_000);
        let _ = tdx::claims(&q, None);
    }
});
