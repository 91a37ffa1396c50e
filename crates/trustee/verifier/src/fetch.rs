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
