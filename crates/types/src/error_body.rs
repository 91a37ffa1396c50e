//! The JSON error body every KBS error carries, as the stock KBS shapes it.

use serde::{Deserialize, Serialize};

/// Prefix of the `type` member; the variant name follows it. It is an
/// identifier CoCo clients match on, not a link.
pub const ERROR_TYPE_PREFIX: &str = "https://github.com/confidential-containers/kbs/errors/";

/// `{"type": "...", "detail": "..."}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    /// `ERROR_TYPE_PREFIX` followed by the error variant name.
    #[serde(rename = "type")]
    pub error_type: String,
    /// What went wrong and what to do next.
    pub detail: String,
}

impl ErrorBody {
    /// A body for the given variant name.
    pub fn new(variant: &str, detail: impl Into<String>) -> Self {
        Self {
            error_type: format!("{ERROR_TYPE_PREFIX}{variant}"),
            detail: detail.into(),
        }
    }

    /// The variant name, without the prefix.
    pub fn variant(&self) -> &str {
        self.error_type
            .strip_prefix(ERROR_TYPE_PREFIX)
            .unwrap_or(&self.error_type)
    }
}
