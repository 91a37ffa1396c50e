//! Connection options shared by every command that talks to a trustee.

use anyhow::{Context, Result};
use clap::Args;
use std::path::PathBuf;

/// Where the trustee is and how to trust it.
#[derive(Args, Clone, Debug)]
pub struct Connection {
    /// Trustee base URL.
    #[arg(long, env = "COCOON_URL", default_value = "https://127.0.0.1:8080")]
    pub url: String,
    /// PEM certificate to pin for https:// (default: the local trustee's
    /// self-signed certificate in the default data directory, if present).
    #[arg(long, env = "COCOON_KBS_CERT")]
    pub kbs_cert: Option<PathBuf>,
}

impl Connection {
    /// The pinned certificate bytes, if any applies.
    pub fn cert_pem(&self) -> Result<Option<Vec<u8>>> {
        if !self.url.starts_with("https://") {
            return Ok(None);
        }
        let path = match &self.kbs_cert {
            Some(p) => p.clone(),
            None => {
                let p =
                    cocoon_kbs::server::DataPaths::new(&cocoon_kbs::default_data_dir()).tls_cert;
                if !p.exists() {
                    anyhow::bail!(
                        "{} is https: pass --kbs-cert <trustee certificate PEM> (a local trustee prints its path at start-up)",
                        self.url
                    );
                }
                p
            }
        };
        std::fs::read(&path)
            .map(Some)
            .with_context(|| format!("cannot read KBS certificate {}", path.display()))
    }

    /// An HTTP client that trusts the pinned certificate.
    pub fn http(&self) -> Result<reqwest::Client> {
        cocoon_kbs_client::install_crypto_provider();
        let mut b = reqwest::Client::builder().timeout(std::time::Duration::from_secs(30));
        if let Some(pem) = self.cert_pem()? {
            let cfg = cocoon_kbs_client::pinned_client_config(&pem).map_err(anyhow::Error::msg)?;
            b = b.use_preconfigured_tls(cfg);
        }
        Ok(b.build()?)
    }

    /// `<url>/kbs/v0<path>`.
    pub fn kbs(&self, path: &str) -> String {
        format!(
            "{}{}{path}",
            self.url.trim_end_matches('/'),
            cocoon_types::KBS_PREFIX
        )
    }
}

/// Turns a non-success response into an error carrying the KBS's detail.
pub async fn check(resp: reqwest::Response, what: &str) -> Result<reqwest::Response> {
    if resp.status().is_success() {
        return Ok(resp);
    }
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let detail = serde_json::from_str::<cocoon_types::error_body::ErrorBody>(&text)
        .map(|b| b.detail)
        .unwrap_or(text);
    anyhow::bail!("{what} failed ({status}): {detail}")
}
