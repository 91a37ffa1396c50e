//! The development `sample` TEE: unsigned JSON, proves nothing.

use crate::{Attester, AttesterError};
use base64::Engine;
use cocoon_types::Tee;
use serde_json::{Value, json};

/// The development `sample` TEE: unsigned JSON with the report data in base64.
pub struct SampleAttester;

impl Attester for SampleAttester {
    fn tee(&self) -> Tee {
        Tee::Sample
    }

    fn may_block(&self) -> bool {
        false
    }

    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError> {
        if report_data.len() > 64 {
            return Err(AttesterError::ReportDataTooLong(report_data.len()));
        }
        Ok(json!({
            "svn": "1",
            "report_data": base64::engine::general_purpose::STANDARD.encode(report_data),
        }))
    }
}
