//! Arbitrary bytes as TPMS_ATTEST, TPMT_SIGNATURE and TPMT_PUBLIC.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = cocoon_tpm::Attest::parse(data);
    let _ = cocoon_tpm::Signature::parse(data);
    let _ = cocoon_tpm::Public::parse(data);
});
