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

/// Percent-decoding (issuer chains come URL-encoded in PCCS headers).
pub(crate) fn percent_decode(s: &str) -> Result<String, String> {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'%' {
            let h = s
                .get(i + 1..i + 3)
                .filter(|h| h.bytes().all(|c| c.is_ascii_hexdigit()))
                .and_then(|h| u8::from_str_radix(h, 16).ok())
                .ok_or("bad percent escape")?;
            out.push(h);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).map_err(|_| "percent-decoded text is not UTF-8".into())
}

#[cfg(test)]
mod tests {
    use super::percent_decode;

    #[test]
    fn percent_escapes_are_two_hex_digits() {
        assert_eq!(percent_decode("a%2Fb%20c").unwrap(), "a/b c");
        for bad in ["%+f", "%-1", "%g0", "%2", "%"] {
            assert!(percent_decode(bad).is_err(), "{bad}");
        }
    }
}
