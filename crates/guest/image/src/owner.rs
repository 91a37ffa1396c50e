//! Owner-side operations, used by the `cocoon` CLI outside any TEE:
//! encrypt an image's layers in the ocicrypt format (JWE recipients and/or
//! a KBS-held key) and push it; sign an image with a cosign-compatible
//! key-based signature.

use crate::keys::PublicKey;
use crate::ocicrypt::{LayerKey, is_encrypted};
use crate::pull::ImagePuller;
use crate::reference::Reference;
use crate::registry::{RegistryClient, RegistryError, sha256_digest};
use crate::signature::{COSIGN_PAYLOAD_TYPE, COSIGN_SIGNATURE_ANNOTATION, cosign_payload};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use oci_spec::image::{Descriptor, ImageManifest};
use p256::ecdsa::signature::Signer;
use serde_json::{Value, json};
use zeroize::Zeroizing;

const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";

/// Why an owner operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OwnerError {
    /// Registry trouble.
    #[error(transparent)]
    Registry(#[from] RegistryError),
    /// Anything about the image or keys.
    #[error("{0}")]
    Invalid(String),
}

/// Which keys wrap the new layer keys.
pub struct EncryptOptions {
    /// JWE recipients.
    pub recipients: Vec<PublicKey>,
    /// KBS-held key-encryption keys: `(kbs:///… id, key)`.
    pub keks: Vec<(String, Zeroizing<[u8; 32]>)>,
}

/// What `encrypt_image` pushed.
#[derive(Debug)]
pub struct EncryptReport {
    /// Digest of the pushed manifest.
    pub digest: String,
    /// Layers encrypted.
    pub layers: usize,
    /// Ciphertext bytes pushed.
    pub bytes: u64,
}

/// The encrypted media type for a plain layer media type (Docker types
/// become their OCI equivalents, as skopeo does).
fn encrypted_media_type(mt: &str) -> Result<String, OwnerError> {
    let oci = match mt {
        "application/vnd.docker.image.rootfs.diff.tar.gzip" => {
            "application/vnd.oci.image.layer.v1.tar+gzip"
        }
        "application/vnd.docker.image.rootfs.diff.tar" => "application/vnd.oci.image.layer.v1.tar",
        m if m.starts_with("application/vnd.oci.image.layer.") => m,
        other => {
            return Err(OwnerError::Invalid(format!(
                "layer media type {other} cannot be encrypted"
            )));
        }
    };
    Ok(format!("{oci}{}", crate::ocicrypt::ENCRYPTED_SUFFIX))
}

/// Encrypts every layer of `src` (its platform manifest) and pushes the
/// result to `dst`.
pub async fn encrypt_image(
    puller: &ImagePuller,
    src: &Reference,
    dst: &Reference,
    opts: &EncryptOptions,
) -> Result<EncryptReport, OwnerError> {
    if opts.recipients.is_empty() && opts.keks.is_empty() {
        return Err(OwnerError::Invalid(
            "give at least one JWE recipient or KBS key".into(),
        ));
    }
    let client = puller.client();
    let (_, manifest, fetched) = puller
        .resolve(src)
        .await
        .map_err(|e| OwnerError::Invalid(e.to_string()))?;
    let src_pinned = src.with_digest(&fetched.digest);
    let config_digest = manifest.config().digest().to_string();
    let config = client.small_blob(&src_pinned, &config_digest).await?;
    let mut layers = Vec::new();
    let mut bytes = 0u64;
    for layer in manifest.layers() {
        let mt = layer.media_type().to_string();
        if is_encrypted(&mt) {
            return Err(OwnerError::Invalid(format!(
                "layer {} is already encrypted",
                layer.digest()
            )));
        }
        let plain = download(client, &src_pinned, layer).await?;
        let key = LayerKey::generate();
        let mut ct = plain;
        let plain_digest = layer.digest().to_string();
        // The blob is encrypted in place; the MAC covers the ciphertext.
        let ct_digest = tokio::task::spawn_blocking(move || {
            let mut cipher = key.cipher();
            let mut mac = key.mac();
            for chunk in ct.chunks_mut(1 << 20) {
                cipher.apply(chunk);
                mac.update(chunk);
            }
            let d = sha256_digest(&ct);
            (key, mac, ct, d)
        })
        .await
        .map_err(|e| OwnerError::Invalid(e.to_string()))?;
        let (key, mac, ct, digest) = ct_digest;
        let annotations = key
            .annotations(mac, &plain_digest, &opts.recipients, &opts.keks)
            .map_err(|e| OwnerError::Invalid(e.to_string()))?;
        let len = ct.len() as u64;
        let body = bytes::Bytes::from(ct);
        client
            .push_blob(dst, &digest, || reqwest::Body::from(body.clone()), len)
            .await?;
        bytes += len;
        let mut d = json!({
            "mediaType": encrypted_media_type(&mt)?,
            "digest": digest,
            "size": len,
        });
        let mut ann: serde_json::Map<String, Value> = layer
            .annotations()
            .clone()
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, Value::String(v)))
            .collect();
        ann.extend(annotations.into_iter().map(|(k, v)| (k, Value::String(v))));
        d["annotations"] = Value::Object(ann);
        layers.push(d);
    }
    let (_, cfg_len) = client.push_bytes(dst, config).await?;
    let mut m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": cfg_len},
        "layers": layers,
    });
    if let Some(a) = manifest.annotations() {
        m["annotations"] = json!(a);
    }
    let digest = client
        .push_manifest(dst, m.to_string().into_bytes(), OCI_MANIFEST)
        .await?;
    Ok(EncryptReport {
        digest,
        layers: layers.len(),
        bytes,
    })
}

/// A blob, digest-checked, in memory.
async fn download(
    client: &RegistryClient,
    repo: &Reference,
    layer: &Descriptor,
) -> Result<Vec<u8>, OwnerError> {
    let digest = layer.digest().to_string();
    let mut resp = client.blob(repo, &digest).await?;
    // The declared size is untrusted: grow as data arrives.
    let mut out = Vec::with_capacity(layer.size().min(64 << 20) as usize);
    while let Some(c) = resp
        .chunk()
        .await
        .map_err(|e| OwnerError::Invalid(format!("downloading {digest}: {e}")))?
    {
        if out.len() as u64 + c.len() as u64 > layer.size() {
            return Err(OwnerError::Invalid(format!(
                "layer {digest} is larger than its descriptor"
            )));
        }
        out.extend_from_slice(&c);
    }
    let actual = sha256_digest(&out);
    if actual != digest {
        return Err(RegistryError::DigestMismatch {
            what: format!("layer {digest}"),
            expected: digest,
            actual,
        }
        .into());
    }
    Ok(out)
}

/// Loads a cosign signing key: PKCS#8 or SEC1 PEM, P-256.
pub fn signing_key_from_pem(pem: &str) -> Result<p256::ecdsa::SigningKey, OwnerError> {
    use p256::pkcs8::DecodePrivateKey;
    if pem.contains("ENCRYPTED SIGSTORE PRIVATE KEY")
        || pem.contains("ENCRYPTED COSIGN PRIVATE KEY")
    {
        return Err(OwnerError::Invalid(
            "cosign's password-encrypted key format is not supported; use a PEM P-256 key (`cocoon image keygen`)".into(),
        ));
    }
    p256::ecdsa::SigningKey::from_pkcs8_pem(pem)
        .or_else(|_| p256::SecretKey::from_sec1_pem(pem).map(Into::into))
        .map_err(|_| OwnerError::Invalid("signing key is not a PEM P-256 private key".into()))
}

/// Signs the manifest `image` resolves to, cosign-style: the payload goes
/// into the `sha256-<hex>.sig` tag (appended to signatures already there).
/// Returns the signed digest and the signature tag.
pub async fn sign_image(
    client: &RegistryClient,
    image: &Reference,
    key: &p256::ecdsa::SigningKey,
) -> Result<(String, String), OwnerError> {
    let digest = client.manifest(image).await?.digest;
    let payload = cosign_payload(image, &digest);
    let sig: p256::ecdsa::Signature = key.sign(&payload);
    let sig_b64 = B64.encode(sig.to_der().as_bytes());
    let tag = format!("sha256-{}.sig", digest.trim_start_matches("sha256:"));
    let sig_ref = image.with_tag(&tag);
    let mut layers: Vec<Value> = match client.manifest(&sig_ref).await {
        Ok(existing) => {
            let m: ImageManifest = serde_json::from_slice(&existing.bytes)
                .map_err(|e| OwnerError::Invalid(format!("existing signature manifest: {e}")))?;
            m.layers().iter().map(|l| json!(l)).collect()
        }
        Err(RegistryError::NotFound { .. }) => Vec::new(),
        Err(e) => return Err(e.into()),
    };
    let (payload_digest, plen) = client.push_bytes(&sig_ref, payload).await?;
    layers.push(json!({
        "mediaType": COSIGN_PAYLOAD_TYPE,
        "digest": payload_digest,
        "size": plen,
        "annotations": {COSIGN_SIGNATURE_ANNOTATION: sig_b64},
    }));
    let diff_ids: Vec<Value> = layers.iter().map(|l| l["digest"].clone()).collect();
    let config = json!({
        "architecture": "", "os": "", "config": {},
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    })
    .to_string()
    .into_bytes();
    let (cdigest, clen) = client.push_bytes(&sig_ref, config).await?;
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cdigest, "size": clen},
        "layers": layers,
    });
    client
        .push_manifest(&sig_ref, m.to_string().into_bytes(), OCI_MANIFEST)
        .await?;
    Ok((digest, tag))
}

/// Builds a gzip-compressed layer tarball (for owners assembling small
/// images, tests and benchmarks).
pub struct LayerBuilder {
    tar: tar::Builder<flate2::write::GzEncoder<Vec<u8>>>,
}

impl Default for LayerBuilder {
    fn default() -> Self {
        Self::new(flate2::Compression::fast())
    }
}

impl LayerBuilder {
    /// An empty layer compressed at `level`.
    pub fn new(level: flate2::Compression) -> Self {
        let mut tar = tar::Builder::new(flate2::write::GzEncoder::new(Vec::new(), level));
        tar.mode(tar::HeaderMode::Deterministic);
        Self { tar }
    }

    fn header(kind: tar::EntryType, mode: u32, size: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_size(size);
        h.set_mtime(1_700_000_000);
        h
    }

    /// Adds a regular file.
    pub fn file(&mut self, path: &str, mode: u32, data: &[u8]) -> std::io::Result<&mut Self> {
        let mut h = Self::header(tar::EntryType::Regular, mode, data.len() as u64);
        self.tar.append_data(&mut h, path, data)?;
        Ok(self)
    }

    /// Adds a directory.
    pub fn dir(&mut self, path: &str) -> std::io::Result<&mut Self> {
        let mut h = Self::header(tar::EntryType::Directory, 0o755, 0);
        self.tar.append_data(&mut h, path, std::io::empty())?;
        Ok(self)
    }

    /// Adds a symlink.
    pub fn symlink(&mut self, path: &str, target: &str) -> std::io::Result<&mut Self> {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0);
        self.tar.append_link(&mut h, path, target)?;
        Ok(self)
    }

    /// The compressed layer and its diff id (digest of the uncompressed tar).
    pub fn finish(self) -> std::io::Result<(Vec<u8>, String)> {
        let gz = self.tar.into_inner()?.finish()?;
        let mut raw = Vec::new();
        std::io::Read::read_to_end(&mut flate2::read::GzDecoder::new(gz.as_slice()), &mut raw)?;
        Ok((gz, sha256_digest(&raw)))
    }
}

/// Pushes an image made of gzip layers `(blob, diff_id)` whose config runs
/// `cmd`; returns the manifest digest.
pub async fn push_image(
    client: &RegistryClient,
    dst: &Reference,
    layers: &[(Vec<u8>, String)],
    cmd: &[&str],
) -> Result<String, OwnerError> {
    let mut descs = Vec::new();
    for (blob, _) in layers {
        let (digest, size) = client.push_bytes(dst, blob.clone()).await?;
        descs.push(json!({
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": digest,
            "size": size,
        }));
    }
    let config = json!({
        "architecture": crate::pull::go_arch(),
        "os": "linux",
        "config": {"Cmd": cmd, "Env": ["PATH=/bin:/usr/bin"], "WorkingDir": "/"},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|(_, d)| d.clone()).collect::<Vec<_>>()},
    })
    .to_string()
    .into_bytes();
    let (cdigest, clen) = client.push_bytes(dst, config).await?;
    let m = json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": cdigest, "size": clen},
        "layers": descs,
    });
    Ok(client
        .push_manifest(dst, m.to_string().into_bytes(), OCI_MANIFEST)
        .await?)
}
