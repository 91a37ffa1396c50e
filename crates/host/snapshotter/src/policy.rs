//! Which images the host must not download or unpack: their layers are
//! pulled, verified and decrypted inside the pod VM instead. An image is
//! pulled in the guest when any of its layers is encrypted (the host has
//! no key and must never see plaintext), or when its reference starts
//! with a prefix the node's configuration lists.
//!
//! containerd's CRI labels each layer's snapshot with the image reference
//! and manifest digest (`disable_snapshot_annotations = false`); the
//! manifest is already in containerd's content store when layers unpack.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::Mutex;

/// The label that makes a Prepare an unpack of a layer: the name the
/// committed layer snapshot will have.
pub const TARGET: &str = "containerd.io/snapshot.ref";
/// CRI's label: the image reference.
pub const IMAGE_REF: &str = "containerd.io/snapshot/cri.image-ref";
/// CRI's label: the image manifest's digest.
pub const MANIFEST: &str = "containerd.io/snapshot/cri.manifest-digest";

/// The decision, per image.
pub struct GuestPull {
    content_root: PathBuf,
    prefixes: Vec<String>,
    cache: Mutex<HashMap<String, bool>>,
}

/// A manifest's layer media types say some layer is encrypted.
pub fn has_encrypted_layers(manifest: &[u8]) -> Result<bool, String> {
    let v: serde_json::Value =
        serde_json::from_slice(manifest).map_err(|e| format!("not a JSON manifest: {e}"))?;
    let layers = v
        .get("layers")
        .and_then(|l| l.as_array())
        .ok_or("the manifest lists no layers")?;
    Ok(layers.iter().any(|l| {
        l.get("mediaType")
            .and_then(|m| m.as_str())
            .is_some_and(|m| m.contains("+encrypted"))
    }))
}

impl GuestPull {
    /// `content_root`: containerd's content store
    /// (`<root>/io.containerd.content.v1.content`).
    pub fn new(content_root: PathBuf, prefixes: Vec<String>) -> Self {
        Self {
            content_root,
            prefixes,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn manifest_path(&self, digest: &str) -> Option<PathBuf> {
        let hex = digest.strip_prefix("sha256:")?;
        (hex.len() == 64
            && hex
                .bytes()
                .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase()))
        .then(|| self.content_root.join("blobs/sha256").join(hex))
    }

    /// Whether the layer a Prepare with `labels` unpacks belongs to an
    /// image pulled in the guest.
    pub fn wants(&self, labels: &BTreeMap<String, String>) -> bool {
        if !labels.contains_key(TARGET) {
            return false;
        }
        if let Some(r) = labels.get(IMAGE_REF)
            && self.prefixes.iter().any(|p| r.starts_with(p.as_str()))
        {
            return true;
        }
        let Some(digest) = labels.get(MANIFEST) else {
            return false;
        };
        if let Some(d) = self
            .cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(digest)
        {
            return *d;
        }
        let decision = match self.manifest_path(digest).map(std::fs::read) {
            Some(Ok(bytes)) => has_encrypted_layers(&bytes).unwrap_or_else(|e| {
                tracing::warn!(%digest, "manifest: {e}");
                false
            }),
            Some(Err(e)) => {
                tracing::warn!(%digest, "manifest not in the content store: {e}");
                false
            }
            None => {
                tracing::warn!(%digest, "not a sha256 digest");
                false
            }
        };
        self.cache
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(digest.clone(), decision);
        decision
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::labels;

    #[test]
    fn images_with_encrypted_layers_stay_off_the_host() {
        let dir = tempfile::tempdir().unwrap();
        let blobs = dir.path().join("blobs/sha256");
        std::fs::create_dir_all(&blobs).unwrap();
        let enc = format!("{:064x}", 1);
        let plain = format!("{:064x}", 2);
        std::fs::write(
            blobs.join(&enc),
            r#"{"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip"},{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip+encrypted"}]}"#,
        )
        .unwrap();
        std::fs::write(
            blobs.join(&plain),
            r#"{"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar+gzip"}]}"#,
        )
        .unwrap();
        let g = GuestPull::new(dir.path().into(), vec!["reg.local/confidential/".into()]);
        let enc_d = format!("sha256:{enc}");
        let plain_d = format!("sha256:{plain}");
        assert!(g.wants(&labels(&[(TARGET, "t"), (MANIFEST, &enc_d)])));
        assert!(!g.wants(&labels(&[(TARGET, "t"), (MANIFEST, &plain_d)])));
        // Not an unpack: never remote.
        assert!(!g.wants(&labels(&[(MANIFEST, &enc_d)])));
        // Listed by prefix.
        assert!(g.wants(&labels(&[
            (TARGET, "t"),
            (IMAGE_REF, "reg.local/confidential/app:1")
        ])));
        // Digests that are not plain sha256 hex never become paths.
        for bad in ["sha256:../../etc/passwd", "sha256:ABC", "md5:00"] {
            assert!(
                !g.wants(&labels(&[(TARGET, "t"), (MANIFEST, bad)])),
                "{bad}"
            );
        }
        assert!(has_encrypted_layers(b"{}").is_err());
        assert!(has_encrypted_layers(b"nope").is_err());
    }
}
