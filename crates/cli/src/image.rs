//! `cocoon image`: the guest pull pipeline as a CLI (for debugging), and
//! the owner tools that encrypt and sign images.

use crate::admin::{Admin, AdminConnection};
use crate::client::Connection;
use crate::guest::{GuestOptions, agent};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use cocoon_image::ResourceFetcher;
use cocoon_image::keys::{PrivateKey, PublicKey};
use cocoon_image::ocicrypt::DecryptConfig;
use cocoon_image::owner::{EncryptOptions, encrypt_image, sign_image, signing_key_from_pem};
use cocoon_image::pull::{ImagePuller, PullConfig, PullProgress, PullReport};
use cocoon_image::reference::Reference;
use cocoon_image::registry::{RegistryConfig, parse_auth_json};
use cocoon_image::signature::Policy;
use cocoon_image::unpack::UnpackOptions;
use cocoon_types::resource::ResourceUri;
use indicatif::{MultiProgress, ProgressBar, ProgressStyle};
use p256::pkcs8::{EncodePrivateKey, EncodePublicKey, LineEnding};
use std::path::PathBuf;
use std::sync::Arc;
use zeroize::Zeroizing;

/// `cocoon image …`.
#[derive(Subcommand, Debug)]
pub enum ImageCommand {
    /// Pull, verify, decrypt and unpack an image into an OCI bundle (rootfs + config.json).
    Pull(PullArgs),
    /// Encrypt an image's layers (ocicrypt) and push it: JWE recipients and/or a KBS-held key.
    Encrypt(EncryptArgs),
    /// Sign an image with a cosign-compatible key-based signature.
    Sign(SignArgs),
    /// Create a P-256 signing key pair for `cocoon image sign` (PEM).
    Keygen {
        /// Private key output (PKCS#8 PEM, mode 0600).
        #[arg(long, default_value = "cosign.key")]
        out: PathBuf,
        /// Public key output (SPKI PEM), for policies' keyPath.
        #[arg(long, default_value = "cosign.pub")]
        pub_out: PathBuf,
    },
}

/// Registry options shared by every image command.
#[derive(Args, Debug, Clone)]
pub struct RegistryArgs {
    /// Registry (HOST:PORT) spoken to over plain HTTP; repeatable.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure: Vec<String>,
    /// Registry logins: auth.json file (Docker/containers format), or a kbs:/// resource holding one.
    #[arg(long)]
    auth: Option<String>,
    /// Extra CA certificate (PEM) trusted for registry TLS; repeatable.
    #[arg(long = "registry-ca", value_name = "FILE")]
    registry_ca: Vec<PathBuf>,
}

impl RegistryArgs {
    async fn config(&self, fetcher: Option<&dyn ResourceFetcher>) -> Result<RegistryConfig> {
        let credentials = match &self.auth {
            None => Default::default(),
            Some(a) => {
                let bytes = read_source(a, fetcher).await?;
                parse_auth_json(&bytes).map_err(anyhow::Error::msg)?
            }
        };
        let mut extra_ca_pem = Vec::new();
        for p in &self.registry_ca {
            extra_ca_pem
                .push(std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?);
        }
        Ok(RegistryConfig {
            insecure: self.insecure.iter().cloned().collect(),
            credentials,
            extra_ca_pem,
        })
    }
}

/// `cocoon image pull`.
#[derive(Args, Debug)]
pub struct PullArgs {
    /// Image reference, e.g. 127.0.0.1:5000/app:v1.
    image: String,
    /// Bundle directory: receives rootfs/ and config.json.
    #[arg(long)]
    dest: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
    /// PEM private key for JWE-wrapped layers; repeatable.
    #[arg(long = "decryption-key", value_name = "FILE")]
    decryption_keys: Vec<PathBuf>,
    /// Signature policy (containers-policy.json) file or kbs:/// resource. Default: accept any image.
    #[arg(long)]
    policy: Option<String>,
    /// KBS URL: attest and fetch KBS-held layer keys, policies and keys from it.
    #[arg(long, value_name = "URL")]
    kbs: Option<String>,
    /// PEM certificate to pin for an https:// KBS.
    #[arg(long)]
    kbs_cert: Option<PathBuf>,
    /// Allow a plain http:// --kbs URL (development only: over plain HTTP the host could forge policies and layer keys).
    #[arg(long)]
    insecure_http_kbs: bool,
    /// TEE to attest as with --kbs: sample, tpm, tdx, snp, az-snp-vtpm, az-tdx-vtpm.
    #[arg(long, default_value = "sample")]
    tee: String,
    /// TPM for --tee tpm.
    #[arg(long = "tpm", env = "COCOON_TPM", default_value = "device:/dev/tpmrm0")]
    tpm: String,
    /// Initdata TOML bound before attesting.
    #[arg(long)]
    init_data: Option<PathBuf>,
    /// Layer cache directory (shared between pulls).
    #[arg(
        long,
        env = "COCOON_IMAGE_CACHE",
        default_value = "/var/lib/cocoon/image-cache"
    )]
    cache: PathBuf,
    /// Layers downloaded at once.
    #[arg(long, default_value_t = 3)]
    concurrency: usize,
    /// Create device nodes found in layers (refused by default).
    #[arg(long)]
    allow_devices: bool,
    /// No progress bars.
    #[arg(long, short)]
    quiet: bool,
}

/// Fetches `kbs:///` resources through an attested KBS session.
pub(crate) struct KbsFetcher(cocoon_guest::aa::AttestationAgent);

#[async_trait::async_trait]
impl ResourceFetcher for KbsFetcher {
    async fn fetch(&self, uri: &str) -> std::result::Result<Zeroizing<Vec<u8>>, String> {
        let uri = ResourceUri::parse(uri).map_err(|e| e.to_string())?;
        let kbs = self.0.kbs().ok_or("no KBS configured")?;
        kbs.get_resource(&uri.path).await.map_err(|e| e.to_string())
    }
}

/// A file path, or a `kbs:///` resource when a fetcher is there.
async fn read_source(
    src: &str,
    fetcher: Option<&dyn ResourceFetcher>,
) -> Result<Zeroizing<Vec<u8>>> {
    if src.starts_with("kbs://") {
        let f = fetcher.with_context(|| format!("{src} is a KBS resource: pass --kbs URL"))?;
        return f
            .fetch(src)
            .await
            .map_err(|e| anyhow::anyhow!("fetching {src}: {e}"));
    }
    Ok(Zeroizing::new(
        std::fs::read(src).with_context(|| format!("cannot read {src}"))?,
    ))
}

/// indicatif bars: one per layer (bytes), one for unpacking.
struct Bars {
    multi: MultiProgress,
    layers: std::sync::Mutex<Vec<ProgressBar>>,
    unpack: std::sync::Mutex<Option<ProgressBar>>,
}

impl PullProgress for Bars {
    fn layers(&self, layers: &[(String, u64, bool)]) {
        let style = ProgressStyle::with_template(
            "{prefix:.bold} {bar:30} {bytes:>10}/{total_bytes:10} {bytes_per_sec:>12}",
        )
        .unwrap_or_else(|_| ProgressStyle::default_bar());
        let mut bars = Vec::new();
        for (d, size, enc) in layers {
            let b = self
                .multi
                .add(ProgressBar::new(*size).with_style(style.clone()));
            let short = d.trim_start_matches("sha256:").get(..12).unwrap_or(d);
            b.set_prefix(format!("{short}{}", if *enc { " (encrypted)" } else { "" }));
            bars.push(b);
        }
        let u = self.multi.add(ProgressBar::new(layers.len() as u64));
        u.set_style(
            ProgressStyle::with_template("unpacked     {bar:30} {pos}/{len} layers")
                .unwrap_or_else(|_| ProgressStyle::default_bar()),
        );
        if let Ok(mut l) = self.layers.lock() {
            *l = bars;
        }
        if let Ok(mut x) = self.unpack.lock() {
            *x = Some(u);
        }
    }
    fn fetched(&self, index: usize, bytes: u64) {
        if let Ok(l) = self.layers.lock()
            && let Some(b) = l.get(index)
        {
            b.inc(bytes);
        }
    }
    fn unpacked(&self, index: usize) {
        if let Ok(l) = self.layers.lock()
            && let Some(b) = l.get(index)
        {
            b.finish();
        }
        if let Ok(u) = self.unpack.lock()
            && let Some(u) = u.as_ref()
        {
            u.inc(1);
        }
    }
}

/// Prints where the time went.
fn print_report(image: &str, dest: &std::path::Path, r: &PullReport) {
    eprintln!(
        "pulled {image} ({}) into {}: {} layers ({} encrypted), {} entries, {:.1} MB downloaded, {:.1} MB from cache",
        r.manifest_digest,
        dest.display(),
        r.layers,
        r.encrypted_layers,
        r.entries,
        r.downloaded_bytes as f64 / 1e6,
        r.cached_bytes as f64 / 1e6,
    );
    eprintln!(
        "time: total {:.3}s = prepare {:.3}s + layers; download wall {:.3}s; decoder: waiting {:.3}s, cached-layer HMAC {:.3}s, decrypt+decompress {:.3}s; applier: tar+write {:.3}s",
        r.total.as_secs_f64(),
        r.prepare.as_secs_f64(),
        r.download.as_secs_f64(),
        r.unpack_waiting.as_secs_f64(),
        r.unpack_mac.as_secs_f64(),
        r.unpack_decode.as_secs_f64(),
        r.unpack_apply.as_secs_f64(),
    );
}

/// Builds the pipeline configuration from the CLI flags.
pub(crate) async fn pull_config(
    a: &PullArgs,
) -> Result<(PullConfig, Option<Arc<dyn ResourceFetcher>>)> {
    let fetcher: Option<Arc<dyn ResourceFetcher>> = match &a.kbs {
        Some(url) => {
            let g = GuestOptions {
                conn: Connection {
                    url: url.clone(),
                    kbs_cert: a.kbs_cert.clone(),
                },
                tee: a.tee.clone(),
                tpm: a.tpm.clone(),
                ak_handle: "0x81010002".into(),
                init_data: a.init_data.clone(),
                insecure_http_kbs: a.insecure_http_kbs,
            };
            Some(Arc::new(KbsFetcher(agent(&g).await?)))
        }
        None => None,
    };
    let mut private_keys = Vec::new();
    for p in &a.decryption_keys {
        private_keys.push(PrivateKey::from_file(p)?);
    }
    let policy = match &a.policy {
        Some(p) => Some(Policy::parse(&read_source(p, fetcher.as_deref()).await?)?),
        None => None,
    };
    let mut cfg = PullConfig::new(a.cache.clone());
    cfg.registry = a.registry.config(fetcher.as_deref()).await?;
    cfg.decrypt = DecryptConfig {
        private_keys: Arc::new(private_keys),
        fetcher: fetcher.clone(),
    };
    cfg.policy = policy;
    cfg.unpack = UnpackOptions {
        allow_devices: a.allow_devices,
        ..UnpackOptions::default()
    };
    cfg.max_concurrent_downloads = a.concurrency;
    Ok((cfg, fetcher))
}

async fn pull(a: PullArgs) -> Result<()> {
    let image = Reference::parse(&a.image)?;
    let (cfg, _fetcher) = pull_config(&a).await?;
    let puller = ImagePuller::new(cfg)?;
    let progress: Arc<dyn PullProgress> = if a.quiet {
        Arc::new(cocoon_image::pull::NoProgress)
    } else {
        Arc::new(Bars {
            multi: MultiProgress::new(),
            layers: Default::default(),
            unpack: Default::default(),
        })
    };
    let report = puller.pull(&image, &a.dest, progress).await?;
    print_report(&a.image, &a.dest, &report);
    outln!("{}", report.manifest_digest);
    Ok(())
}

/// `cocoon image encrypt`.
#[derive(Args, Debug)]
pub struct EncryptArgs {
    /// Source image (plain).
    src: String,
    /// Destination image (encrypted), pushed.
    dst: String,
    #[command(flatten)]
    registry: RegistryArgs,
    /// JWE recipient: jwe:PUBLIC_KEY.pem (RSA or EC P-256); repeatable.
    #[arg(long = "recipient", value_name = "jwe:FILE")]
    recipients: Vec<String>,
    /// Wrap layer keys with the KBS key at this id (kbs:///repo/type/tag); the key is stored in the trustee.
    #[arg(long = "kbs-key", value_name = "URI")]
    kbs_key: Option<String>,
    /// Use this 32-byte key for --kbs-key instead of generating one (it is stored in the trustee either way).
    #[arg(long = "kek-file")]
    kek_file: Option<PathBuf>,
    /// Do not store the key in the trustee (it is there already).
    #[arg(long, requires = "kek_file")]
    no_store: bool,
    #[command(flatten)]
    admin: AdminConnection,
}

async fn encrypt(a: EncryptArgs) -> Result<()> {
    let src = Reference::parse(&a.src)?;
    let dst = Reference::parse(&a.dst)?;
    let mut recipients = Vec::new();
    for r in &a.recipients {
        let path = r
            .strip_prefix("jwe:")
            .with_context(|| format!("recipient {r:?}: only jwe:FILE recipients are supported"))?;
        recipients.push(PublicKey::from_file(std::path::Path::new(path))?);
    }
    let mut keks = Vec::new();
    if let Some(kid) = &a.kbs_key {
        let uri = ResourceUri::parse(kid)?;
        let kek: Zeroizing<[u8; 32]> = match &a.kek_file {
            Some(p) => {
                let raw = Zeroizing::new(
                    std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?,
                );
                let arr: [u8; 32] = raw
                    .as_slice()
                    .try_into()
                    .map_err(|_| anyhow::anyhow!("{} must hold exactly 32 bytes", p.display()))?;
                Zeroizing::new(arr)
            }
            None => {
                let mut k = Zeroizing::new([0u8; 32]);
                rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, k.as_mut());
                k
            }
        };
        if !a.no_store {
            let ad = Admin::new(&a.admin)?;
            ad.send(
                ad.http
                    .post(ad.conn.kbs(&format!("/resource/{}", uri.path)))
                    .header("content-type", "application/octet-stream")
                    .body(kek.to_vec()),
                "storing the layer key in the trustee",
            )
            .await?;
            eprintln!("stored the key-encryption key as {kid} in {}", ad.conn.url);
        }
        keks.push((format!("kbs:///{}", uri.path), kek));
    }
    if recipients.is_empty() && keks.is_empty() {
        bail!("give --recipient jwe:FILE and/or --kbs-key kbs:///…");
    }
    let mut cfg = PullConfig::new(std::env::temp_dir());
    cfg.registry = a.registry.config(None).await?;
    let puller = ImagePuller::new(cfg)?;
    let report = encrypt_image(&puller, &src, &dst, &EncryptOptions { recipients, keks }).await?;
    eprintln!(
        "pushed {dst} ({} layers encrypted, {:.1} MB)",
        report.layers,
        report.bytes as f64 / 1e6
    );
    outln!("{}", report.digest);
    Ok(())
}

/// `cocoon image sign`.
#[derive(Args, Debug)]
pub struct SignArgs {
    /// Image to sign (its current manifest digest is signed).
    image: String,
    /// P-256 private key (PEM) from `cocoon image keygen`.
    #[arg(long)]
    key: PathBuf,
    #[command(flatten)]
    registry: RegistryArgs,
}

async fn sign(a: SignArgs) -> Result<()> {
    let image = Reference::parse(&a.image)?;
    let pem = Zeroizing::new(
        std::fs::read_to_string(&a.key)
            .with_context(|| format!("cannot read {}", a.key.display()))?,
    );
    let key = signing_key_from_pem(&pem)?;
    let client = cocoon_image::registry::RegistryClient::new(a.registry.config(None).await?)
        .map_err(anyhow::Error::msg)?;
    let (digest, tag) = sign_image(&client, &image, &key).await?;
    eprintln!(
        "signed {digest}; signature pushed as {}:{tag}",
        image.name()
    );
    outln!("{digest}");
    Ok(())
}

/// Runs an image command.
pub async fn run(c: ImageCommand) -> Result<()> {
    cocoon_kbs_client::install_crypto_provider();
    match c {
        ImageCommand::Pull(a) => pull(a).await,
        ImageCommand::Encrypt(a) => encrypt(a).await,
        ImageCommand::Sign(a) => sign(a).await,
        ImageCommand::Keygen { out, pub_out } => {
            let sk = p256::ecdsa::SigningKey::random(&mut rand_core::OsRng);
            let pem = sk.to_pkcs8_pem(LineEnding::LF)?;
            cocoon_store::write_private_file(&out, pem.as_bytes())
                .with_context(|| format!("cannot write {}", out.display()))?;
            let public = sk.verifying_key().to_public_key_pem(LineEnding::LF)?;
            std::fs::write(&pub_out, public)
                .with_context(|| format!("cannot write {}", pub_out.display()))?;
            eprintln!(
                "signing key {} and public key {}",
                out.display(),
                pub_out.display()
            );
            Ok(())
        }
    }
}
