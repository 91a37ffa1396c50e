//! Fetching collateral over HTTP (Intel PCCS/PCS, AMD KDS). The verifier
//! only defines what it needs; the trustee plugs in its HTTP client.

/// An HTTP response.
#[derive(Debug, Clone, Default)]
pub struct HttpResponse {
    /// Status code.
    pub status: u16,
    /// Headers, names in lower case.
    pub headers: Vec<(String, String)>,
    /// Body.
    pub body: Vec<u8>,
}

impl HttpResponse {
    /// The first header called `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// A blocking HTTP GET. Verifiers call it from blocking threads.
pub trait HttpGet: Send + Sync {
    /// GETs `url`.
    fn get(&self, url: &str) -> Result<HttpResponse, String>;
}

/// GETs `url` and wants a 200.
pub(crate) fn get_ok(http: &dyn HttpGet, url: &str) -> Result<HttpResponse, String> {
    let r = http.get(url).map_err(|e| format!("GET {url}: {e}"))?;
    if r.status != 200 {
        return Err(format!("GET {url}: HTTP {}", r.status));
    }
    Ok(r)
}

/// Whether a fetch may start here: not inside
/// [`cocoon_types::inline::without_blocking`], which notes the wish.
/// Verifiers ask before anything they would remember about the fetch's
/// outcome.
pub(crate) fn may_fetch() -> bool {
    cocoon_types::inline::may_block()
}

/// The error a verifier gives for a deferred fetch (never seen by a
/// guest: the caller runs the verification again).
pub(crate) fn deferred() -> crate::VerifyError {
    crate::VerifyError::Unavailable(format!(
        "collateral fetch {}",
        cocoon_types::inline::DEFERRED
    ))
}
