//! Arbitrary bytes as a TCG crypto-agile event log (TPM firmware log, CCEL).
#![no_main]

use cocoon_verifier::eventlog::{AlgId, TcgEventLog};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(log) = TcgEventLog::parse(data) {
        let _ = log.replay(AlgId::SHA384);
        let _ = log.to_json();
    }
});
