//! The HTTP client verifiers use to fetch collateral (Intel PCCS, AMD KDS):
//! rustls with the system's roots, bounded time and size. Each GET runs on
//! a private runtime in its own thread, so verifiers may call it from any
//! context; fetches are rare (their results are cached until they expire).

use cocoon_verifier::fetch::{HttpGet, HttpResponse};
use std::sync::Arc;
use std::time::Duration;

/// Largest collateral response accepted.
const MAX_BODY: usize = 4 * 1024 * 1024;

/// reqwest behind [`HttpGet`].
pub struct Fetcher {
    http: reqwest::Client,
}

impl Fetcher {
    /// A client trusting the system's CA roots.
    pub fn new() -> Result<Self, String> {
        let mut roots = rustls::RootCertStore::empty();
        for c in rustls_native_certs::load_native_certs().certs {
            let _ = roots.add(c);
        }
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_root_certificates(roots)
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .use_preconfigured_tls(tls)
            .user_agent(concat!("cocoon-trustee/", env!("CARGO_PKG_VERSION")))
            .connect_timeout(Duration::from_secs(10))
            .timeout(Duration::from_secs(30))
            // Connections belong to the per-request runtime.
            .pool_max_idle_per_host(0)
            .build()
            .map_err(|e| e.to_string())?;
        Ok(Self { http })
    }

    async fn fetch(&self, url: &str) -> Result<HttpResponse, String> {
        let mut r = self.http.get(url).send().await.map_err(|e| e.to_string())?;
        let status = r.status().as_u16();
        let headers = r
            .headers()
            .iter()
            .filter_map(|(k, v)| Some((k.as_str().to_string(), v.to_str().ok()?.to_string())))
            .collect();
        let mut body = Vec::new();
        while let Some(chunk) = r.chunk().await.map_err(|e| e.to_string())? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(format!("response larger than {MAX_BODY} bytes"));
            }
            body.extend_from_slice(&chunk);
        }
        Ok(HttpResponse {
            status,
            headers,
            body,
        })
    }
}

impl HttpGet for Fetcher {
    fn get(&self, url: &str) -> Result<HttpResponse, String> {
        std::thread::scope(|s| {
            s.spawn(|| {
                tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .map_err(|e| e.to_string())?
                    .block_on(self.fetch(url))
            })
            .join()
            .map_err(|_| "the fetch thread panicked".to_string())?
        })
    }
}
