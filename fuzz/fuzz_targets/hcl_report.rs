//! Arbitrary bytes as an Azure HCL report: parse, then the AK and the
//! hardware report data.
#![no_main]

use cocoon_verifier::az::hcl::HclReport;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(r) = HclReport::parse(data) {
        let _ = r.ak_pub();
        let _ = r.hw_report_data();
    }
});
