//! The guest pull pipeline: resolve the manifest (platform from an index),
//! check the signature policy, unwrap layer keys, download layers
//! concurrently into a content-addressed cache (digest and ocicrypt HMAC
//! computed while streaming), then apply them in order to a staging rootfs
//! that becomes `BUNDLE/rootfs` only when everything succeeded.
//!
//! Downloading and unpacking overlap: layer N is applied while later
//! layers are still arriving. Nothing decrypted is produced before the
//! layer's HMAC matched; a blob is decoded from the descriptor it was
//! verified through, and each layer's tar stream must match the config's
//! `rootfs.diff_ids`. After any failure the staging rootfs is removed.

use crate::apply::apply_all;
use crate::bundle::runtime_spec;
use crate::ocicrypt::{DecryptConfig, DecryptError, LayerKey, is_encrypted};
use crate::reference::Reference;
use crate::registry::{Fetched, RegistryClient, RegistryConfig, RegistryError};
use crate::signature::{Policy, PolicyError, PolicyVerifier};
use crate::unpack::{Rootfs, UnpackError, UnpackOptions};
use oci_spec::image::{Descriptor, ImageConfiguration, ImageIndex, ImageManifest};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::{Semaphore, oneshot};

/// Why a pull failed. Nothing is left in the bundle afterwards.
#[derive(Debug, thiserror::Error)]
pub enum PullError {
    /// Talking to the registry failed.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// The signature policy refused the image.
    #[error(transparent)]
    Policy(#[from] PolicyError),
    /// A layer key could not be unwrapped.
    #[error(transparent)]
    Decrypt(#[from] DecryptError),
    /// A layer could not be applied.
    #[error("layer {digest}: {source}")]
    Unpack {
        /// Layer digest.
        digest: String,
        /// Why.
        source: UnpackError,
    },
    /// A layer's uncompressed tar stream is not what the image config
    /// (`rootfs.diff_ids`) says: the image is refused.
    #[error(
        "layer {index} ({digest}): the uncompressed layer has digest {actual}, but the image config's rootfs.diff_ids[{index}] is {expected}; the image is refused and nothing of it was kept"
    )]
    DiffIdMismatch {
        /// Index of the layer in the manifest.
        index: usize,
        /// The layer's (compressed) digest.
        digest: String,
        /// `rootfs.diff_ids[index]`.
        expected: String,
        /// SHA-256 of the tar stream.
        actual: String,
    },
    /// The ocicrypt HMAC does not match: the encrypted layer was tampered with.
    #[error(
        "encrypted layer {0}: HMAC mismatch, the ciphertext was tampered with; nothing was unpacked from it"
    )]
    HmacMismatch(String),
    /// The manifest, index or config is not usable.
    #[error("image {image}: {reason}")]
    Manifest {
        /// The image.
        image: String,
        /// Why.
        reason: String,
    },
    /// Local filesystem trouble (cache, bundle).
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The error.
        source: std::io::Error,
    },
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> PullError {
    let what = what.into();
    move |source| PullError::Io { what, source }
}

/// Progress callbacks (the CLI draws bars with them).
pub trait PullProgress: Send + Sync {
    /// The layers about to be fetched: digest, size, encrypted.
    fn layers(&self, _layers: &[(String, u64, bool)]) {}
    /// Bytes of layer `index` arrived (or were found in the cache).
    fn fetched(&self, _index: usize, _bytes: u64) {}
    /// Layer `index` is in the rootfs.
    fn unpacked(&self, _index: usize) {}
}

/// Progress that reports nothing.
pub struct NoProgress;
impl PullProgress for NoProgress {}

/// The pipeline's configuration.
#[derive(Clone)]
pub struct PullConfig {
    /// Registries, credentials, CAs.
    pub registry: RegistryConfig,
    /// Keys for encrypted layers.
    pub decrypt: DecryptConfig,
    /// Signature policy; `None` accepts any image.
    pub policy: Option<Policy>,
    /// Content-addressed blob cache shared between pulls.
    pub cache_dir: PathBuf,
    /// Unpack restrictions.
    pub unpack: UnpackOptions,
    /// Layers downloaded at once.
    pub max_concurrent_downloads: usize,
    /// `os/arch` chosen from image indexes.
    pub platform: (String, String),
}

impl PullConfig {
    /// Defaults: this machine's platform, 3 concurrent downloads, no policy.
    pub fn new(cache_dir: PathBuf) -> Self {
        Self {
            registry: RegistryConfig::default(),
            decrypt: DecryptConfig::default(),
            policy: None,
            cache_dir,
            unpack: UnpackOptions::default(),
            max_concurrent_downloads: 3,
            platform: ("linux".into(), go_arch().into()),
        }
    }
}

/// `GOARCH` spelling of this machine's architecture.
pub fn go_arch() -> &'static str {
    match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "aarch64" => "arm64",
        "powerpc64" => "ppc64le",
        other => other,
    }
}

/// What a pull did.
#[derive(Debug, Clone, Default)]
pub struct PullReport {
    /// Digest of the top-level manifest (what signatures cover).
    pub manifest_digest: String,
    /// Number of layers.
    pub layers: usize,
    /// Encrypted layers among them.
    pub encrypted_layers: usize,
    /// Bytes downloaded.
    pub downloaded_bytes: u64,
    /// Bytes served from the cache.
    pub cached_bytes: u64,
    /// Files, directories and links created.
    pub entries: u64,
    /// Time to the first byte of the layers (manifest, policy, keys).
    pub prepare: Duration,
    /// Wall time from the first layer request until the last layer arrived.
    pub download: Duration,
    /// Time the decoder spent waiting for layers to arrive.
    pub unpack_waiting: Duration,
    /// Time spent checking HMACs of layers found in the cache.
    pub unpack_mac: Duration,
    /// Decoder thread: decrypting and decompressing (overlaps with writing).
    pub unpack_decode: Duration,
    /// Applier thread: parsing tar and writing files.
    pub unpack_apply: Duration,
    /// Everything.
    pub total: Duration,
}

/// The cache: `blobs/sha256/<hex>` holds verified blobs exactly as the
/// registry served them (still encrypted and compressed).
#[derive(Clone)]
struct BlobCache {
    dir: PathBuf,
}

impl BlobCache {
    /// Opens (creating) the cache directory, which must be private: blobs
    /// found there are trusted to be what their names say (after a
    /// re-hash), so others must not be able to plant them.
    fn open(dir: &Path) -> Result<Self, PullError> {
        use std::os::unix::fs::{DirBuilderExt, MetadataExt};
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(io(format!("creating the layer cache {}", dir.display())))?;
        let m =
            std::fs::symlink_metadata(dir).map_err(io(format!("layer cache {}", dir.display())))?;
        if !m.is_dir() || m.uid() != rustix::process::geteuid().as_raw() || m.mode() & 0o022 != 0 {
            return Err(PullError::Io {
                what: format!(
                    "layer cache {} must be a directory owned by this user and not writable by others",
                    dir.display()
                ),
                source: std::io::ErrorKind::PermissionDenied.into(),
            });
        }
        Ok(Self {
            dir: dir.to_path_buf(),
        })
    }

    fn path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        (hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()))
            .then(|| self.dir.join("blobs/sha256").join(hex))
    }
}

/// A layer blob ready to decode. It is held open: everything after its
/// digest check reads this descriptor and never opens the path again, so
/// a file renamed into the cache in between is never used.
pub(crate) struct Ready {
    pub(crate) file: std::fs::File,
    /// Where it is in the cache: for messages, and to drop a cached blob
    /// that fails its re-check.
    pub(crate) path: PathBuf,
    /// A cache hit: the decoder re-hashes it (and checks the HMAC)
    /// before use; a download was checked on the way in.
    pub(crate) from_cache: bool,
    pub(crate) downloaded: u64,
    pub(crate) cached: u64,
}

/// Pulls images into OCI bundles.
pub struct ImagePuller {
    client: RegistryClient,
    cfg: PullConfig,
}

impl ImagePuller {
    /// A puller with this configuration.
    pub fn new(cfg: PullConfig) -> Result<Self, PullError> {
        let client =
            RegistryClient::new(cfg.registry.clone()).map_err(|reason| PullError::Manifest {
                image: String::new(),
                reason,
            })?;
        Ok(Self { client, cfg })
    }

    /// A puller with this configuration over `http`'s connections (see
    /// [`RegistryClient::with_http`]).
    pub fn with_http(cfg: PullConfig, http: crate::registry::HttpClient) -> Self {
        let client = RegistryClient::with_http(http, cfg.registry.clone());
        Self { client, cfg }
    }

    /// The registry client this puller uses.
    pub fn client(&self) -> &RegistryClient {
        &self.client
    }

    /// Resolves a reference to its image manifest: the top-level digest
    /// (what signatures cover) and, through an index, the platform's manifest.
    pub async fn resolve(
        &self,
        image: &Reference,
    ) -> Result<(String, ImageManifest, Fetched), PullError> {
        let bad = |reason: String| PullError::Manifest {
            image: image.to_string(),
            reason,
        };
        let top = self.client.manifest(image).await?;
        let value: serde_json::Value = serde_json::from_slice(&top.bytes)
            .map_err(|e| bad(format!("manifest is not JSON: {e}")))?;
        let fetched = if value.get("manifests").is_some() {
            let index: ImageIndex =
                serde_json::from_slice(&top.bytes).map_err(|e| bad(format!("image index: {e}")))?;
            let (os, arch) = &self.cfg.platform;
            let chosen = index
                .manifests()
                .iter()
                .find(|m| {
                    m.platform().as_ref().is_some_and(|p| {
                        p.os().to_string() == *os && p.architecture().to_string() == *arch
                    })
                })
                .ok_or_else(|| bad(format!("the index has no {os}/{arch} manifest")))?;
            self.client
                .manifest(&image.with_digest(chosen.digest().as_ref()))
                .await?
        } else {
            top.clone()
        };
        let manifest: ImageManifest = serde_json::from_slice(&fetched.bytes)
            .map_err(|e| bad(format!("image manifest: {e}")))?;
        Ok((top.digest, manifest, fetched))
    }

    /// Pulls `image` into `bundle` (`rootfs/` and `config.json`).
    pub async fn pull(
        &self,
        image: &Reference,
        bundle: &Path,
        progress: Arc<dyn PullProgress>,
    ) -> Result<PullReport, PullError> {
        self.pull_expecting(image, bundle, progress, None).await
    }

    /// [`Self::pull`] of an image that must resolve to `expected` (the
    /// top-level digest [`Self::resolve`] gave when the image was judged):
    /// checked before anything but the manifest is fetched. The reference
    /// keeps its tag, so the signature policy judges the same name.
    pub async fn pull_expecting(
        &self,
        image: &Reference,
        bundle: &Path,
        progress: Arc<dyn PullProgress>,
        expected: Option<&str>,
    ) -> Result<PullReport, PullError> {
        let start = Instant::now();
        let final_rootfs = bundle.join("rootfs");
        if final_rootfs.exists() {
            return Err(PullError::Io {
                what: format!(
                    "{} already exists; choose an empty bundle directory",
                    final_rootfs.display()
                ),
                source: std::io::ErrorKind::AlreadyExists.into(),
            });
        }
        std::fs::create_dir_all(bundle).map_err(io(format!("creating {}", bundle.display())))?;
        // A private staging directory per pull, removed on any failure or
        // cancellation (drop); it becomes BUNDLE/rootfs only at the end.
        let staging = tempfile::Builder::new()
            .prefix(".rootfs.partial-")
            .tempdir_in(bundle)
            .map_err(io(format!(
                "creating a staging directory in {}",
                bundle.display()
            )))?;
        let (mut report, spec) = self
            .pull_into(image, staging.path(), progress, start, expected)
            .await?;
        let mut config =
            tempfile::NamedTempFile::new_in(bundle).map_err(io("writing config.json"))?;
        serde_json::to_writer_pretty(config.as_file_mut(), &spec).map_err(|e| PullError::Io {
            what: "writing config.json".into(),
            source: std::io::Error::other(e.to_string()),
        })?;
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(staging.path(), std::fs::Permissions::from_mode(0o755))
            .map_err(io("setting the rootfs mode"))?;
        // rename(2) refuses a non-empty target: a concurrent pull into the
        // same bundle that finished first wins, and this one fails cleanly.
        std::fs::rename(staging.path(), &final_rootfs).map_err(io(format!(
            "moving the rootfs to {} (another pull into this bundle?)",
            final_rootfs.display()
        )))?;
        if let Err(e) = config.persist(bundle.join("config.json")) {
            let _ = std::fs::remove_dir_all(&final_rootfs);
            return Err(PullError::Io {
                what: "writing config.json".into(),
                source: e.error,
            });
        }
        report.total = start.elapsed();
        Ok(report)
    }

    async fn pull_into(
        &self,
        image: &Reference,
        staging: &Path,
        progress: Arc<dyn PullProgress>,
        start: Instant,
        expected: Option<&str>,
    ) -> Result<(PullReport, oci_spec::runtime::Spec), PullError> {
        let (top_digest, manifest, fetched) = self.resolve(image).await?;
        if let Some(e) = expected.filter(|e| *e != top_digest) {
            return Err(PullError::Manifest {
                image: image.to_string(),
                reason: format!("it now resolves to {top_digest}, not the {e} it was judged as"),
            });
        }
        let policy = self
            .cfg
            .policy
            .clone()
            .unwrap_or_else(Policy::accept_anything);
        PolicyVerifier::new(
            policy,
            self.client.clone(),
            self.cfg.decrypt.fetcher.clone(),
        )
        .check(image, &top_digest)
        .await?;
        let repo = image.with_digest(&fetched.digest);
        let config_bytes = self
            .client
            .small_blob(&repo, manifest.config().digest().as_ref())
            .await?;
        let config: ImageConfiguration =
            serde_json::from_slice(&config_bytes).map_err(|e| PullError::Manifest {
                image: image.to_string(),
                reason: format!("image config: {e}"),
            })?;
        let layers: Vec<Descriptor> = manifest.layers().clone();
        if layers.is_empty() || layers.len() > 1000 {
            return Err(PullError::Manifest {
                image: image.to_string(),
                reason: format!("{} layers (1 to 1000 supported)", layers.len()),
            });
        }
        let diff_ids = diff_ids(&config, layers.len()).map_err(|reason| PullError::Manifest {
            image: image.to_string(),
            reason,
        })?;
        // Keys first: a wrong key fails before any download.
        let mut keys: Vec<Option<Arc<LayerKey>>> = Vec::with_capacity(layers.len());
        for l in &layers {
            keys.push(if is_encrypted(l.media_type().as_ref()) {
                let ann = l.annotations().clone().unwrap_or_default();
                Some(Arc::new(
                    LayerKey::unwrap(l.digest().as_ref(), &ann, &self.cfg.decrypt).await?,
                ))
            } else {
                None
            });
        }
        progress.layers(
            &layers
                .iter()
                .map(|l| {
                    (
                        l.digest().to_string(),
                        l.size(),
                        is_encrypted(l.media_type().as_ref()),
                    )
                })
                .collect::<Vec<_>>(),
        );
        let mut report = PullReport {
            manifest_digest: top_digest,
            layers: layers.len(),
            encrypted_layers: keys.iter().filter(|k| k.is_some()).count(),
            prepare: start.elapsed(),
            ..Default::default()
        };
        let cache = BlobCache::open(&self.cfg.cache_dir)?;
        let sem = Arc::new(Semaphore::new(self.cfg.max_concurrent_downloads.max(1)));
        let mut tasks = tokio::task::JoinSet::new();
        let mut receivers = Vec::with_capacity(layers.len());
        let download_start = Instant::now();
        // Set when unpacking stops (done or failed): downloads still running
        // are dropped instead of holding the pull open.
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        for (i, (layer, key)) in layers.iter().zip(&keys).enumerate() {
            let (tx, rx) = oneshot::channel();
            receivers.push(rx);
            let mut stop = stop_rx.clone();
            let (client, repo, cache, sem, key, progress) = (
                self.client.clone(),
                repo.clone(),
                cache.clone(),
                sem.clone(),
                key.clone(),
                progress.clone(),
            );
            let (digest, size) = (layer.digest().to_string(), layer.size());
            tasks.spawn(async move {
                let fetch = async {
                    let _permit = sem.acquire().await;
                    fetch_layer(
                        &client,
                        &repo,
                        &cache,
                        &digest,
                        size,
                        key.as_deref(),
                        i,
                        progress,
                    )
                    .await
                };
                let r = tokio::select! {
                    r = fetch => r,
                    _ = stop.wait_for(|stopped| *stopped) => Err(PullError::Io {
                        what: format!("downloading layer {digest}"),
                        source: std::io::Error::other("the pull stopped"),
                    }),
                };
                let _ = tx.send((r, Instant::now()));
            });
        }
        let unpack_opts = self.cfg.unpack.clone();
        let staging_owned = staging.to_path_buf();
        let applier = tokio::task::spawn_blocking(move || {
            let mut rootfs =
                Rootfs::open(&staging_owned, unpack_opts).map_err(|source| PullError::Unpack {
                    digest: String::new(),
                    source,
                })?;
            let totals = apply_all(
                &mut rootfs,
                &layers,
                &keys,
                &diff_ids,
                receivers,
                progress.as_ref(),
                stop_tx,
            )?;
            let spec = runtime_spec(&config, &rootfs).map_err(|e| PullError::Manifest {
                image: String::new(),
                reason: e.to_string(),
            })?;
            Ok::<_, PullError>((totals, spec))
        });
        let applied = applier.await.map_err(|e| PullError::Io {
            what: "unpacking".into(),
            source: std::io::Error::other(e.to_string()),
        });
        tasks.abort_all();
        let (totals, spec) = applied??;
        report.downloaded_bytes = totals.downloaded;
        report.cached_bytes = totals.cached;
        report.entries = totals.entries;
        report.download = totals
            .last_arrival
            .map(|t| t.saturating_duration_since(download_start))
            .unwrap_or_default();
        report.unpack_waiting = totals.waiting;
        report.unpack_mac = totals.mac;
        report.unpack_decode = totals.decode;
        report.unpack_apply = totals.apply;
        Ok((report, spec))
    }
}

/// Gets a verified blob into the cache; for encrypted layers also checks
/// the HMAC on the way in.
#[allow(clippy::too_many_arguments)]
async fn fetch_layer(
    client: &RegistryClient,
    repo: &Reference,
    cache: &BlobCache,
    digest: &str,
    size: u64,
    key: Option<&LayerKey>,
    index: usize,
    progress: Arc<dyn PullProgress>,
) -> Result<Ready, PullError> {
    let path = cache.path(digest).ok_or_else(|| PullError::Manifest {
        image: repo.to_string(),
        reason: format!("layer digest {digest:?} is not sha256"),
    })?;
    if let Some(file) = open_cached(&path, size) {
        progress.fetched(index, size);
        return Ok(Ready {
            file,
            path,
            from_cache: true,
            downloaded: 0,
            cached: size,
        });
    }
    let tmp_dir = cache.dir.join("tmp");
    std::fs::create_dir_all(&tmp_dir).map_err(io(format!("creating {}", tmp_dir.display())))?;
    std::fs::create_dir_all(path.parent().unwrap_or(&cache.dir))
        .map_err(io("creating the blob cache"))?;
    let mut resp = client.blob(repo, digest).await?;
    let tmp = tempfile::NamedTempFile::new_in(&tmp_dir).map_err(io("creating a cache file"))?;
    // Hashing and writing run on a blocking thread fed by the network task.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<bytes::Bytes>(64);
    let mut mac = key.map(LayerKey::mac);
    let writer = tokio::task::spawn_blocking(move || -> std::io::Result<_> {
        let mut tmp = tmp;
        let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
        let mut out = std::io::BufWriter::with_capacity(1 << 20, tmp.as_file_mut());
        while let Some(chunk) = rx.blocking_recv() {
            sha.update(&chunk);
            if let Some(m) = mac.as_mut() {
                m.update(&chunk);
            }
            out.write_all(&chunk)?;
        }
        out.flush()?;
        drop(out);
        Ok((tmp, sha.finish(), mac))
    });
    let mut received = 0u64;
    let mut failure = None;
    loop {
        match resp.chunk().await {
            Ok(Some(chunk)) => {
                received += chunk.len() as u64;
                if received > size {
                    failure = Some(PullError::Registry(RegistryError::DigestMismatch {
                        what: format!("layer {digest}"),
                        expected: format!("{size} bytes"),
                        actual: "more bytes than the manifest declares".into(),
                    }));
                    break;
                }
                progress.fetched(index, chunk.len() as u64);
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Ok(None) => break,
            Err(e) => {
                failure = Some(PullError::Registry(RegistryError::Unreachable {
                    registry: repo.registry.clone(),
                    reason: format!("downloading {digest}: {e}"),
                }));
                break;
            }
        }
    }
    drop(tx);
    let (tmp, sha, mac) = writer
        .await
        .map_err(|e| PullError::Io {
            what: "cache writer".into(),
            source: std::io::Error::other(e.to_string()),
        })?
        .map_err(io(format!("writing layer {digest} to the cache")))?;
    if let Some(f) = failure {
        return Err(f);
    }
    let actual = format!("sha256:{}", hex::encode(sha.as_ref()));
    if actual != digest || received != size {
        return Err(PullError::Registry(RegistryError::DigestMismatch {
            what: format!("layer {digest} ({received} of {size} bytes)"),
            expected: digest.to_string(),
            actual,
        }));
    }
    if let (Some(key), Some(mac)) = (key, mac)
        && !key.mac_matches(mac)
    {
        return Err(PullError::HmacMismatch(digest.to_string()));
    }
    // The descriptor written (and hashed) above is the one decoded later.
    let file = tmp.persist(&path).map_err(|e| PullError::Io {
        what: format!("storing layer {digest} in the cache"),
        source: e.error,
    })?;
    Ok(Ready {
        file,
        path,
        from_cache: false,
        downloaded: received,
        cached: 0,
    })
}

/// A cached blob of the expected size, opened without following a symlink
/// (and without blocking on a FIFO); `None` means "download it".
fn open_cached(path: &Path, size: u64) -> Option<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
        .ok()?;
    let m = file.metadata().ok()?;
    (m.is_file() && m.len() == size).then_some(file)
}

/// The config's `rootfs.diff_ids`: one `sha256:<hex>` per layer.
fn diff_ids(config: &ImageConfiguration, layers: usize) -> Result<Vec<String>, String> {
    let ids = config.rootfs().diff_ids();
    if ids.len() != layers {
        return Err(format!(
            "the image config lists {} rootfs.diff_ids for {layers} layers",
            ids.len()
        ));
    }
    for (i, id) in ids.iter().enumerate() {
        let hex = id.strip_prefix("sha256:").unwrap_or_default();
        if hex.len() != 64 || !hex.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            return Err(format!(
                "rootfs.diff_ids[{i}] {id:?} is not a sha256:<64 lowercase hex> digest"
            ));
        }
    }
    Ok(ids.clone())
}

#[cfg(test)]
#[path = "pull_tests.rs"]
mod tests;
