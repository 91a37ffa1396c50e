//! Arbitrary bytes as an Arm CCA token: parse, then the realm checks and
//! the claims.
#![no_main]

use cocoon_verifier::cca::{self, token::CcaToken};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(t) = CcaToken::parse(data) {
        let _ = cca::verify_realm(&t);
        let _ = cca::verify_platform(&t, &cca::Cpaks::default());
        let _ = cca::claims(&t);
    }
});
