//! Arbitrary bytes as an SGX DCAP quote (v3/v4): parse, then every
//! signature check and the claims.
#![no_main]

use cocoon_verifier::sgx;
use cocoon_verifier::tdx::{TdxCache, quote::SgxQuote};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(q) = SgxQuote::parse(data) {
        let _ = sgx::verify_quote(&q, None, 1_750_000_000, &TdxCache::default());
        let _ = sgx::claims(&q);
    }
});
