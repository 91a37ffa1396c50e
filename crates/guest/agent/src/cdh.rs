//! The Confidential Data Hub: fetches KBS resources by `kbs:///` URI and
//! unseals sealed secrets. It runs the KBS protocol itself, with evidence
//! from the Attestation Agent (over its ttrpc socket, as CoCo's CDH does)
//! or from an in-process attester.

use crate::{AgentError, services};
use cocoon_attester::{Attester, AttesterError};
use cocoon_image::registry::HttpClient;
use cocoon_kbs_client::{ClientOptions, KbsClient, RetryPolicy};
use cocoon_types::Tee;
use cocoon_types::resource::ResourceUri;
use cocoon_types::sealed::{SealedError, SealedSecret, SecretContent, envelope_decrypt};
use serde_json::Value;
use std::path::PathBuf;
use std::sync::Arc;
use zeroize::Zeroizing;

/// Where CoCo's CDH looks for sealed-secret verification keys named by file.
pub const DEFAULT_SEALED_KEY_DIR: &str = "/run/confidential-containers/cdh/sealed-secret";

/// Data hub settings.
#[derive(Debug, Clone)]
pub struct CdhConfig {
    /// KBS base URL.
    pub kbs_url: String,
    /// KBS certificate to pin (PEM).
    pub kbs_cert_pem: Option<Vec<u8>>,
    /// Accept a plain `http://` KBS URL (development only).
    pub kbs_insecure_http: bool,
    /// Initdata TOML to send with attestations.
    pub init_data: Option<String>,
    /// Directory of sealed-secret verification keys (JWK files).
    pub sealed_key_dir: PathBuf,
    /// Accept sealed secrets without checking their signature
    /// (CoCo's `SKIP_SEALED_SECRET_VERIFICATION=true`).
    pub skip_sealed_verification: bool,
    /// KBS retry policy.
    pub retry: RetryPolicy,
    /// Image pulls (`cdh.toml` `[image]`).
    pub image: ImageSettings,
}

/// The `[image]` section of `cdh.toml`, with CoCo's key names.
#[derive(Debug, Clone, serde::Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImageSettings {
    /// Signature policy (containers-policy.json) as a `kbs:///` URI or a
    /// guest path; unset accepts any image.
    pub image_security_policy_uri: Option<String>,
    /// Registry logins (auth.json) as a `kbs:///` URI or a guest path.
    pub authenticated_registry_credentials_uri: Option<String>,
    /// Extra PEM CA certificates for registry TLS.
    pub extra_root_certificates: Vec<String>,
    /// Registries reached over plain HTTP (`host:port`).
    pub insecure_registries: Vec<String>,
    /// Layers downloaded at once per image.
    pub max_concurrent_layer_downloads_per_image: usize,
    /// Holds the layer cache.
    pub work_dir: PathBuf,
}

impl Default for ImageSettings {
    fn default() -> Self {
        Self {
            image_security_policy_uri: None,
            authenticated_registry_credentials_uri: None,
            extra_root_certificates: Vec::new(),
            insecure_registries: Vec::new(),
            max_concurrent_layer_downloads_per_image: 3,
            work_dir: "/run/cocoon/image".into(),
        }
    }
}

impl CdhConfig {
    /// Defaults for a KBS at `url`.
    pub fn new(url: &str) -> Self {
        Self {
            kbs_url: url.into(),
            kbs_cert_pem: None,
            kbs_insecure_http: false,
            init_data: None,
            sealed_key_dir: DEFAULT_SEALED_KEY_DIR.into(),
            skip_sealed_verification: std::env::var("SKIP_SEALED_SECRET_VERIFICATION")
                .is_ok_and(|v| v == "true"),
            retry: RetryPolicy::default(),
            image: ImageSettings::default(),
        }
    }
}

/// Evidence from an Attestation Agent over ttrpc: the CDH's attester. It
/// connects per request, so the agent may restart under a running hub.
pub struct AaAttester {
    socket: String,
    tee: Tee,
    handle: tokio::runtime::Handle,
}

impl AaAttester {
    /// Connects to the AA at `socket` (`unix:///…`) and asks its TEE type.
    pub async fn connect(socket: &str) -> Result<Self, AgentError> {
        let client = services::AaClient::connect(socket).await?;
        let name = client.tee().await?;
        let tee = cocoon_types::parse_tee(&name).ok_or_else(|| {
            AgentError::Config(format!(
                "the attestation agent reports unknown TEE '{name}'"
            ))
        })?;
        Ok(Self {
            socket: socket.to_string(),
            tee,
            handle: tokio::runtime::Handle::current(),
        })
    }
}

impl Attester for AaAttester {
    fn tee(&self) -> Tee {
        self.tee
    }

    fn evidence(&self, report_data: &[u8]) -> Result<Value, AttesterError> {
        // Called from a blocking thread (the KBS client moves evidence
        // collection off the reactor), so waiting on the runtime is safe.
        let bytes = self
            .handle
            .block_on(async {
                services::AaClient::connect(&self.socket)
                    .await?
                    .evidence(report_data)
                    .await
            })
            .map_err(|e| AttesterError::Device(format!("attestation agent: {e}")))?;
        serde_json::from_slice(&bytes).map_err(|e| {
            AttesterError::Device(format!("attestation agent evidence is not JSON: {e}"))
        })
    }
}

/// The HTTP client every pull of a data hub with these settings shares:
/// the system roots and the settings' extra ones.
fn registries(image: &ImageSettings) -> Result<HttpClient, AgentError> {
    let extra: Vec<Vec<u8>> = image
        .extra_root_certificates
        .iter()
        .map(|c| c.clone().into_bytes())
        .collect();
    cocoon_image::registry::http_client(&extra)
        .map_err(|e| AgentError::Config(format!("extra_root_certificates: {e}")))
}

/// The Confidential Data Hub.
pub struct DataHub {
    /// None when no KBS is configured: plain images still pull.
    kbs: Option<KbsClient>,
    cfg: CdhConfig,
    /// The connections to registries, shared by every pull: the agent's
    /// resolve and the pull that follows it, and each container's pull,
    /// reuse one connection (in a pod VM a new one is a relay process
    /// started on the host). Made with the data hub, from its extra roots.
    registries: HttpClient,
}

impl DataHub {
    /// A data hub that attests with `attester`.
    pub fn new(cfg: CdhConfig, attester: Arc<dyn Attester>) -> Result<Self, AgentError> {
        let kbs = KbsClient::new(
            &cfg.kbs_url,
            attester,
            ClientOptions {
                retry: cfg.retry,
                kbs_cert_pem: cfg.kbs_cert_pem.clone(),
                init_data: cfg.init_data.clone(),
                key_pair: None,
                insecure_http: cfg.kbs_insecure_http,
            },
        )?;
        Ok(Self {
            kbs: Some(kbs),
            registries: registries(&cfg.image)?,
            cfg,
        })
    }

    /// A data hub with no KBS: images without encrypted layers or
    /// `kbs:///` policies pull; anything needing a resource is refused.
    pub fn without_kbs(image: ImageSettings) -> Result<Self, AgentError> {
        let mut cfg = CdhConfig::new("");
        cfg.image = image;
        Ok(Self {
            kbs: None,
            registries: registries(&cfg.image)?,
            cfg,
        })
    }

    /// The resource at `uri` (`kbs:///repo/type/tag`), decrypted.
    pub async fn get_resource(&self, uri: &str) -> Result<Zeroizing<Vec<u8>>, AgentError> {
        let uri = ResourceUri::parse(uri).map_err(|e| AgentError::BadRequest(e.to_string()))?;
        let kbs = self.kbs.as_ref().ok_or_else(|| {
            AgentError::Config(format!(
                "{} needs a KBS and none is configured (initdata cdh.toml [kbc] url)",
                uri.path
            ))
        })?;
        let t = std::time::Instant::now();
        let r = kbs.get_resource(&uri.path).await?;
        // The first fetch includes attestation (and key enrollment).
        tracing::info!(
            resource = %uri.path,
            ms = t.elapsed().as_millis() as u64,
            "resource released"
        );
        Ok(r)
    }

    /// Unseals a `sealed.…` secret: checks its signature with the key its
    /// header names, then fetches (vault) or decrypts (envelope) the plaintext.
    pub async fn unseal(&self, secret: &[u8]) -> Result<Zeroizing<Vec<u8>>, AgentError> {
        let text = std::str::from_utf8(secret)
            .map_err(|_| AgentError::Sealed(SealedError::Format("not UTF-8".into())))?;
        let sealed = SealedSecret::parse(text)?;
        if self.cfg.skip_sealed_verification {
            tracing::warn!(kid = %sealed.header.kid, "sealed secret signature NOT checked (skip_sealed_verification)");
        } else {
            let jwk = self.verification_key(&sealed.header.kid).await?;
            sealed.verify(&jwk)?;
        }
        match &sealed.content {
            SecretContent::Vault { name, provider, .. } => {
                if provider != "kbs" {
                    return Err(AgentError::Sealed(SealedError::Unsupported(format!(
                        "vault provider '{provider}' is not supported (supported: kbs)"
                    ))));
                }
                self.get_resource(name).await
            }
            SecretContent::Envelope {
                provider, key_id, ..
            } => {
                if provider != "kbs" {
                    return Err(AgentError::Sealed(SealedError::Unsupported(format!(
                        "envelope provider '{provider}' is not supported (supported: kbs)"
                    ))));
                }
                let kek = self.get_resource(key_id).await?;
                Ok(envelope_decrypt(&sealed.content, &kek)?)
            }
        }
    }

    async fn verification_key(&self, kid: &str) -> Result<Vec<u8>, AgentError> {
        if kid.starts_with("kbs://") {
            return Ok(self.get_resource(kid).await?.to_vec());
        }
        if kid.is_empty() || kid.contains('/') || kid.starts_with('.') {
            return Err(AgentError::Sealed(SealedError::Format(format!(
                "key id '{kid}' is neither a kbs:/// URI nor a file name"
            ))));
        }
        let path = self.cfg.sealed_key_dir.join(kid);
        std::fs::read(&path).map_err(|e| {
            AgentError::Config(format!(
                "sealed-secret key {} cannot be read: {e}",
                path.display()
            ))
        })
    }
}

/// The hub as the pipeline's resource fetcher: layer keys, policies,
/// verification keys and registry logins come from the KBS.
struct HubFetcher(Arc<DataHub>);

#[async_trait::async_trait]
impl cocoon_image::ResourceFetcher for HubFetcher {
    async fn fetch(&self, uri: &str) -> Result<Zeroizing<Vec<u8>>, String> {
        self.0.get_resource(uri).await.map_err(|e| e.to_string())
    }
}

impl DataHub {
    /// Pulls `image` into `bundle` (rootfs + config.json) inside the
    /// guest: signature policy, layer keys and logins from the KBS as
    /// configured. Returns the manifest digest.
    pub async fn pull_image(
        self: &Arc<Self>,
        image: &str,
        bundle: &std::path::Path,
    ) -> Result<String, AgentError> {
        self.pull_image_expecting(image, bundle, None).await
    }

    /// [`Self::pull_image`] of an image that must still resolve to
    /// `expected` (what [`Self::resolve_image`] gave when it was judged):
    /// checked before anything but the manifest is fetched.
    pub async fn pull_image_expecting(
        self: &Arc<Self>,
        image: &str,
        bundle: &std::path::Path,
        expected: Option<&str>,
    ) -> Result<String, AgentError> {
        let reference = cocoon_image::reference::Reference::parse(image)
            .map_err(|e| AgentError::BadRequest(e.to_string()))?;
        if !bundle.is_absolute() {
            return Err(AgentError::BadRequest(format!(
                "bundle path {} must be absolute",
                bundle.display()
            )));
        }
        let puller = self.puller(true).await?;
        let report = puller
            .pull_expecting(
                &reference,
                bundle,
                Arc::new(cocoon_image::pull::NoProgress),
                expected,
            )
            .await?;
        tracing::info!(
            image,
            digest = %report.manifest_digest,
            layers = report.layers,
            encrypted = report.encrypted_layers,
            ms = report.total.as_millis() as u64,
            prepare_ms = report.prepare.as_millis() as u64,
            download_ms = report.download.as_millis() as u64,
            decode_ms = report.unpack_decode.as_millis() as u64,
            apply_ms = report.unpack_apply.as_millis() as u64,
            "image pulled"
        );
        Ok(report.manifest_digest)
    }

    /// The digest a pull of `image` would report, from its manifest alone
    /// (registry logins as for a pull; no layer is fetched).
    pub async fn resolve_image(self: &Arc<Self>, image: &str) -> Result<String, AgentError> {
        let reference = cocoon_image::reference::Reference::parse(image)
            .map_err(|e| AgentError::BadRequest(e.to_string()))?;
        let (digest, _, _) = self.puller(false).await?.resolve(&reference).await?;
        Ok(digest)
    }

    /// A puller as configured: registry logins, insecure registries, extra
    /// roots and, with `signatures`, the signature policy.
    async fn puller(
        self: &Arc<Self>,
        signatures: bool,
    ) -> Result<cocoon_image::pull::ImagePuller, AgentError> {
        use cocoon_image::ResourceFetcher;
        let settings = &self.cfg.image;
        let fetcher: Arc<dyn ResourceFetcher> = Arc::new(HubFetcher(self.clone()));
        let read = |src: &str| {
            let src = src.to_string();
            let fetcher = fetcher.clone();
            async move {
                if src.starts_with("kbs://") {
                    fetcher.fetch(&src).await.map_err(AgentError::Remote)
                } else {
                    std::fs::read(&src)
                        .map(Zeroizing::new)
                        .map_err(|e| AgentError::Config(format!("cannot read {src}: {e}")))
                }
            }
        };
        let mut cfg = cocoon_image::pull::PullConfig::new(settings.work_dir.join("layers"));
        if let Some(p) = settings
            .image_security_policy_uri
            .as_ref()
            .filter(|_| signatures)
        {
            cfg.policy = Some(
                cocoon_image::signature::Policy::parse(&read(p).await?)
                    .map_err(|e| AgentError::Config(format!("{p}: {e}")))?,
            );
        }
        if let Some(a) = &settings.authenticated_registry_credentials_uri {
            cfg.registry.credentials = cocoon_image::registry::parse_auth_json(&read(a).await?)
                .map_err(|e| AgentError::Config(format!("{a}: {e}")))?;
        }
        cfg.registry.insecure = settings.insecure_registries.iter().cloned().collect();
        cfg.max_concurrent_downloads = settings.max_concurrent_layer_downloads_per_image;
        cfg.decrypt.fetcher = Some(fetcher);
        Ok(cocoon_image::pull::ImagePuller::with_http(
            cfg,
            self.registries.clone(),
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// A loopback registry serving one image manifest on every request,
    /// keeping connections open; counts the connections.
    fn manifest_registry() -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let body = format!(
            r#"{{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:{}","size":2}},"layers":[]}}"#,
            "0".repeat(64)
        );
        cocoon_image::testing::keep_alive_server(move |_| {
            format!(
                "HTTP/1.1 200 OK\r\nContent-Type: application/vnd.oci.image.manifest.v1+json\r\nContent-Length: {}\r\n\r\n{body}",
                body.len()
            )
        })
    }

    /// Every resolve and pull of one data hub goes over its one HTTP
    /// client: the second resolve reuses the first's connection. Another
    /// data hub has its own.
    #[tokio::test]
    async fn a_data_hub_keeps_one_registry_connection() {
        let (addr, conns) = manifest_registry();
        let settings = || ImageSettings {
            insecure_registries: vec![addr.to_string()],
            ..Default::default()
        };
        let image = format!("{addr}/r/app:v1");
        let hub = Arc::new(DataHub::without_kbs(settings()).unwrap());
        let first = hub.resolve_image(&image).await.unwrap();
        assert!(first.starts_with("sha256:"), "{first}");
        assert_eq!(hub.resolve_image(&image).await.unwrap(), first);
        assert_eq!(conns.load(Ordering::SeqCst), 1, "one hub, one connection");
        let other = Arc::new(DataHub::without_kbs(settings()).unwrap());
        other.resolve_image(&image).await.unwrap();
        assert_eq!(conns.load(Ordering::SeqCst), 2, "another hub, its own");
    }

    /// Extra roots that are not PEM fail the data hub's start, naming the
    /// setting, rather than its first pull.
    #[test]
    fn bad_extra_roots_fail_at_start() {
        let e = DataHub::without_kbs(ImageSettings {
            extra_root_certificates: vec![
                "-----BEGIN CERTIFICATE-----\nnot base64!\n-----END CERTIFICATE-----\n".into(),
            ],
            ..Default::default()
        })
        .err()
        .expect("a bad CA is refused");
        assert!(e.to_string().contains("extra_root_certificates"), "{e}");
    }
}
