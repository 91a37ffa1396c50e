//! KBS errors and the one place they become HTTP responses.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use cocoon_types::error_body::ErrorBody;

/// Every way a KBS request can fail. Variant names in the JSON `type`
/// follow the stock KBS where one exists, so CoCo clients can match on them.
#[derive(Debug, thiserror::Error)]
pub enum KbsError {
    /// The body is not the JSON the endpoint expects.
    #[error("malformed request body: {0}")]
    BadRequest(String),
    /// Body over the limit.
    #[error("request body is larger than {0} bytes")]
    BodyTooLarge(usize),
    /// The body did not arrive in time.
    #[error("the request body did not arrive within {0} s")]
    BodyTimeout(u64),
    /// Protocol version not accepted.
    #[error("protocol version '{0}' is not supported: this KBS speaks {ver}", ver = cocoon_types::KBS_PROTOCOL_VERSION)]
    UnsupportedVersion(String),
    /// Unknown or disabled TEE.
    #[error("{0}")]
    UnsupportedTee(String),
    /// No session cookie where one is needed.
    #[error("no kbs-session-id cookie: call POST /kbs/v0/auth first")]
    MissingSession,
    /// Cookie could not be opened (forged, corrupted, or another trustee's).
    #[error("session cookie is not valid for this trustee: start again with POST /kbs/v0/auth")]
    InvalidSession,
    /// Cookie expired.
    #[error("session expired: start again with POST /kbs/v0/auth")]
    ExpiredSession,
    /// The session has not attested yet.
    #[error(
        "session is not attested: POST /kbs/v0/attest first, or send an attestation token as Bearer"
    )]
    NotAttested,
    /// Evidence refused.
    #[error("attestation failed: {0}")]
    AttestationFailed(String),
    /// Bearer token invalid.
    #[error("attestation token rejected: {0}")]
    TokenInvalid(String),
    /// Resource path invalid.
    #[error("{0}")]
    InvalidPath(String),
    /// No such resource.
    #[error("resource {0} does not exist: the owner can add it with `cocoon admin set-resource`")]
    ResourceNotFound(String),
    /// Resource policy refused.
    #[error(
        "resource policy denied access to {0}; the trustee admin can run `cocoon explain` for the reason"
    )]
    PolicyDeny(String),
    /// Admin authentication failed.
    #[error("admin authentication failed: {0}")]
    AdminAuth(String),
    /// A policy sent by the admin is invalid.
    #[error("{0}")]
    InvalidPolicy(String),
    /// A reference value sent by the admin is invalid.
    #[error("{0}")]
    InvalidReferenceValue(String),
    /// Unknown endpoint.
    #[error("no such endpoint: {0}")]
    NotFound(String),
    /// Wrong method.
    #[error("method not allowed on this endpoint")]
    MethodNotAllowed,
    /// The trustee itself failed.
    #[error("internal error: {0}")]
    Internal(String),
    /// Something the decision needs (storage, reference values) cannot be
    /// read right now; the request may succeed later. The detail goes to
    /// the trustee's log and denial record, not to the guest.
    #[error(
        "the trustee cannot decide this request right now (its storage or reference values are unavailable); retry later"
    )]
    Unavailable {
        /// What failed, for the admin.
        detail: String,
    },
}

impl KbsError {
    /// HTTP status and error variant name.
    pub fn status_and_variant(&self) -> (StatusCode, &'static str) {
        use KbsError::*;
        match self {
            BadRequest(_) => (StatusCode::BAD_REQUEST, "SerdeError"),
            BodyTooLarge(_) => (StatusCode::PAYLOAD_TOO_LARGE, "PayloadTooLarge"),
            BodyTimeout(_) => (StatusCode::REQUEST_TIMEOUT, "HTTPFailed"),
            UnsupportedVersion(_) => (StatusCode::BAD_REQUEST, "AttestationError"),
            UnsupportedTee(_) => (StatusCode::BAD_REQUEST, "AttestationError"),
            MissingSession | InvalidSession | ExpiredSession | NotAttested => {
                (StatusCode::UNAUTHORIZED, "TokenNotFound")
            }
            AttestationFailed(_) => (StatusCode::UNAUTHORIZED, "AttestationError"),
            TokenInvalid(_) => (StatusCode::UNAUTHORIZED, "TokenVerifierError"),
            InvalidPath(_) => (StatusCode::BAD_REQUEST, "InvalidRequestPath"),
            ResourceNotFound(_) => (StatusCode::NOT_FOUND, "PluginInternalError"),
            PolicyDeny(_) => (StatusCode::FORBIDDEN, "PolicyDeny"),
            AdminAuth(_) => (StatusCode::UNAUTHORIZED, "AdminAuthAccess"),
            InvalidPolicy(_) => (StatusCode::BAD_REQUEST, "ParsePolicyError"),
            InvalidReferenceValue(_) => (StatusCode::BAD_REQUEST, "RvpsError"),
            NotFound(_) => (StatusCode::NOT_FOUND, "InvalidRequestPath"),
            MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "InvalidRequestPath"),
            Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "HTTPFailed"),
            Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "RvpsError"),
        }
    }
}

/// At most one log line a second for [`KbsError::Unavailable`].
static UNAVAILABLE_LOG: LogLimiter = LogLimiter::new();

/// Lets one event a second through, counting the others.
pub(crate) struct LogLimiter {
    /// The second (Unix time) of the last event let through.
    last: std::sync::atomic::AtomicI64,
    /// Events not let through since.
    held: std::sync::atomic::AtomicU64,
}

impl LogLimiter {
    pub(crate) const fn new() -> Self {
        Self {
            last: std::sync::atomic::AtomicI64::new(i64::MIN),
            held: std::sync::atomic::AtomicU64::new(0),
        }
    }

    /// `Some(events held back since the last one let through)` when this
    /// one may be logged.
    pub(crate) fn admit(&self) -> Option<u64> {
        self.admit_at(crate::api::now())
    }

    fn admit_at(&self, now: i64) -> Option<u64> {
        use std::sync::atomic::Ordering::Relaxed;
        let last = self.last.load(Relaxed);
        if now != last
            && self
                .last
                .compare_exchange(last, now, Relaxed, Relaxed)
                .is_ok()
        {
            Some(self.held.swap(0, Relaxed))
        } else {
            self.held.fetch_add(1, Relaxed);
            None
        }
    }
}

impl IntoResponse for KbsError {
    fn into_response(self) -> Response {
        let (status, variant) = self.status_and_variant();
        if let KbsError::Unavailable { detail } = &self {
            // An outage fails every request: one line a second says so,
            // with how many were not logged since the last.
            if let Some(unlogged) = UNAVAILABLE_LOG.admit() {
                tracing::error!(error = %detail, unlogged, "request cannot be decided: storage or reference values unavailable");
            }
        } else if status.is_server_error() {
            tracing::error!(error = %self, "request failed inside the trustee");
        }
        (
            status,
            axum::Json(ErrorBody::new(variant, self.to_string())),
        )
            .into_response()
    }
}

impl From<cocoon_store::StoreError> for KbsError {
    fn from(e: cocoon_store::StoreError) -> Self {
        match e {
            cocoon_store::StoreError::Unavailable(_) => KbsError::Unavailable {
                detail: e.to_string(),
            },
            _ => KbsError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_unavailable_line_a_second_with_the_count_held_back() {
        let l = LogLimiter::new();
        assert_eq!(l.admit_at(100), Some(0));
        assert_eq!(l.admit_at(100), None);
        assert_eq!(l.admit_at(100), None);
        assert_eq!(l.admit_at(101), Some(2));
        assert_eq!(l.admit_at(101), None);
        assert_eq!(l.admit_at(105), Some(1));
    }
}
