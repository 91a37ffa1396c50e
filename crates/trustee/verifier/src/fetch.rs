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

thread_local! {
    /// While set (by [`without_fetching`]): no fetch starts on this thread,
    /// and whether one was wanted.
    static DEFERRING: std::cell::Cell<Option<bool>> = const { std::cell::Cell::new(None) };
}

/// Runs `f` with collateral fetches deferred: a verifier that needs
/// collateral it has not kept fails instead of fetching it. Returns `None`
/// when that happened, so that the caller runs `f` again where blocking on
/// the network is allowed; everything else (parsing, signatures, chains
/// with kept collateral, policies) is CPU work on data in hand, cheaper
/// than handing it to another thread.
pub fn without_fetching<T>(f: impl FnOnce() -> T) -> Option<T> {
    struct Restore(Option<bool>);
    impl Drop for Restore {
        fn drop(&mut self) {
            DEFERRING.with(|d| d.set(self.0));
        }
    }
    let _restore = Restore(DEFERRING.with(|d| d.replace(Some(false))));
    let out = f();
    let wanted = DEFERRING.with(|d| d.get() == Some(true));
    (!wanted).then_some(out)
}

/// Whether a fetch may start here; inside [`without_fetching`] it may not,
/// and the wish is noted. Verifiers ask before anything they would
/// remember about the fetch's outcome.
pub(crate) fn may_fetch() -> bool {
    DEFERRING.with(|d| match d.get() {
        Some(_) => {
            d.set(Some(true));
            false
        }
        None => true,
    })
}

/// The error a verifier gives for a fetch deferred by [`without_fetching`]
/// (never seen by a guest: the caller runs the verification again).
pub(crate) fn deferred() -> crate::VerifyError {
    crate::VerifyError::Unavailable("collateral fetch deferred to a blocking thread".into())
}
