//! The cache and decode steps of the pipeline: a blob is decoded from the
//! descriptor it was verified through, and every layer's tar stream must
//! match its diff_id.

use super::*;
use crate::owner::LayerBuilder;
use crate::registry::sha256_digest;
use std::io::Read;

const GOOD: &[u8] = b"verified content\n";
const SWAPPED: &[u8] = b"swapped in later\n";
const GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// A gzip layer holding `etc/greeting`, and its diff_id.
fn layer(content: &[u8]) -> (Vec<u8>, String) {
    let mut l = LayerBuilder::default();
    l.file("etc/greeting", 0o644, content).unwrap();
    l.finish().unwrap()
}

/// The same layer uncompressed (media type `…tar`): it streams.
fn tar_layer(content: &[u8]) -> Vec<u8> {
    let (gz, _) = layer(content);
    let mut raw = Vec::new();
    flate2::read::GzDecoder::new(gz.as_slice())
        .read_to_end(&mut raw)
        .unwrap();
    raw
}

fn descriptor(media: &str, blob: &[u8]) -> Descriptor {
    serde_json::from_value(serde_json::json!({
        "mediaType": media,
        "digest": sha256_digest(blob),
        "size": blob.len(),
    }))
    .unwrap()
}

fn cache(dir: &Path) -> BlobCache {
    BlobCache::open(&dir.join("cache")).unwrap()
}

/// Puts `blob` in the cache under its own digest.
fn store(cache: &BlobCache, blob: &[u8]) -> PathBuf {
    let path = cache.path(&sha256_digest(blob)).unwrap();
    std::fs::create_dir_all(path.parent().unwrap()).unwrap();
    std::fs::write(&path, blob).unwrap();
    path
}

/// Renames a file with `blob` over `path`, as someone who can write the
/// cache directory could.
fn swap(cache: &BlobCache, path: &Path, blob: &[u8]) {
    let tmp = cache.dir.join("swap");
    std::fs::write(&tmp, blob).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

/// Applies one ready layer per descriptor into `root`.
fn apply(
    root: &Path,
    layers: &[Descriptor],
    diff_ids: &[String],
    ready: Vec<Ready>,
) -> Result<crate::apply::ApplyTotals, PullError> {
    let opts = UnpackOptions {
        allow_devices: false,
        preserve_ownership: false,
    };
    let mut rootfs = Rootfs::open(root, opts).unwrap();
    let keys = vec![None; layers.len()];
    let arrivals = ready
        .into_iter()
        .map(|r| {
            let (tx, rx) = oneshot::channel();
            let _ = tx.send((Ok(r), Instant::now()));
            rx
        })
        .collect();
    let (stop, _) = tokio::sync::watch::channel(false);
    apply_all(
        &mut rootfs,
        layers,
        &keys,
        diff_ids,
        arrivals,
        &NoProgress,
        stop,
    )
}

fn client() -> RegistryClient {
    RegistryClient::new(RegistryConfig::default()).unwrap()
}

/// A loopback HTTP registry serving `blob` at any path (a few requests).
fn blob_server(blob: Vec<u8>) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for stream in listener.incoming().take(4).flatten() {
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).map(|n| n > 2).unwrap_or(false) {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                blob.len()
            );
            let _ = (&stream).write_all(head.as_bytes());
            let _ = (&stream).write_all(&blob);
        }
    });
    addr
}

/// A download is hashed on its way into the cache; a file renamed over it
/// afterwards is not what gets unpacked.
#[tokio::test]
async fn a_blob_swapped_after_download_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let (good, diff_id) = layer(GOOD);
    let (bad, _) = layer(SWAPPED);
    let addr = blob_server(good.clone());
    let repo = Reference::parse(&format!("{addr}/app:v1")).unwrap();
    let cache = cache(dir.path());
    let digest = sha256_digest(&good);
    let insecure = RegistryClient::new(RegistryConfig {
        insecure: [addr.clone()].into(),
        ..Default::default()
    })
    .unwrap();
    let ready = fetch_layer(
        &insecure,
        &repo,
        &cache,
        &digest,
        good.len() as u64,
        None,
        0,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert!(!ready.from_cache);
    swap(&cache, &ready.path.clone(), &bad);
    let root = dir.path().join("root");
    let layers = [descriptor(GZIP, &good)];
    apply(&root, &layers, &[diff_id], vec![ready]).unwrap();
    assert_eq!(std::fs::read(root.join("etc/greeting")).unwrap(), GOOD);
}

/// A cache hit is opened once, re-hashed through that descriptor and
/// decoded from it: a rename over the path in between changes nothing.
#[tokio::test]
async fn a_blob_swapped_in_the_cache_is_not_used() {
    let dir = tempfile::tempdir().unwrap();
    let (good, diff_id) = layer(GOOD);
    let (bad, _) = layer(SWAPPED);
    let cache = cache(dir.path());
    let path = store(&cache, &good);
    let repo = Reference::parse("127.0.0.1:1/app:v1").unwrap();
    let ready = fetch_layer(
        &client(),
        &repo,
        &cache,
        &sha256_digest(&good),
        good.len() as u64,
        None,
        0,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert!(ready.from_cache, "served from the cache, no registry asked");
    swap(&cache, &path, &bad);
    let root = dir.path().join("root");
    let layers = [descriptor(GZIP, &good)];
    apply(&root, &layers, &[diff_id], vec![ready]).unwrap();
    assert_eq!(std::fs::read(root.join("etc/greeting")).unwrap(), GOOD);
}

/// Reads a cached blob as the pipeline does (cache hit).
async fn cached(cache: &BlobCache, blob: &[u8]) -> Ready {
    store(cache, blob);
    let repo = Reference::parse("127.0.0.1:1/app:v1").unwrap();
    let ready = fetch_layer(
        &client(),
        &repo,
        cache,
        &sha256_digest(blob),
        blob.len() as u64,
        None,
        0,
        Arc::new(NoProgress),
    )
    .await
    .unwrap();
    assert!(ready.from_cache);
    ready
}

/// A layer whose tar stream does not hash to its diff_id is refused, with
/// the index and both digests, whether it was decoded whole (small gzip)
/// or streamed (plain tar); the layer before it is fine.
#[tokio::test]
async fn a_wrong_diff_id_is_refused_whole_and_streamed() {
    let dir = tempfile::tempdir().unwrap();
    let cache = cache(dir.path());
    let (first, first_id) = layer(b"first\n");
    let (gz, gz_id) = layer(GOOD);
    let tar = tar_layer(SWAPPED);
    let tar_id = sha256_digest(&tar);
    assert_ne!(gz_id, tar_id);
    for (n, (media, blob, right)) in [(GZIP, &gz, &gz_id), (TAR, &tar, &tar_id)]
        .into_iter()
        .enumerate()
    {
        let layers = [descriptor(GZIP, &first), descriptor(media, blob)];
        // The right diff_ids apply.
        let root = dir.path().join(format!("ok-{n}"));
        let ready = vec![cached(&cache, &first).await, cached(&cache, blob).await];
        apply(&root, &layers, &[first_id.clone(), right.clone()], ready).unwrap();
        assert!(root.join("etc/greeting").exists());
        // Another layer's diff_id is refused.
        let wrong = if right == &gz_id { &tar_id } else { &gz_id };
        let root = dir.path().join(format!("bad-{n}"));
        let ready = vec![cached(&cache, &first).await, cached(&cache, blob).await];
        let err = apply(&root, &layers, &[first_id.clone(), wrong.clone()], ready).unwrap_err();
        match &err {
            PullError::DiffIdMismatch {
                index,
                digest,
                expected,
                actual,
            } => {
                assert_eq!(*index, 1);
                assert_eq!(digest, &sha256_digest(blob));
                assert_eq!(expected, wrong);
                assert_eq!(actual, right);
            }
            other => panic!("{media}: {other}"),
        }
        let msg = err.to_string();
        assert!(msg.contains("layer 1") && msg.contains(wrong) && msg.contains(right.as_str()));
    }
}

/// Configs whose diff_ids do not line up with the layers are refused
/// before anything is fetched.
#[test]
fn diff_ids_must_match_the_layers() {
    let config = |ids: serde_json::Value| -> ImageConfiguration {
        serde_json::from_value(serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "rootfs": {"type": "layers", "diff_ids": ids},
        }))
        .unwrap()
    };
    let id = format!("sha256:{}", "ab".repeat(32));
    assert_eq!(
        diff_ids(&config(serde_json::json!([id])), 1).unwrap(),
        vec![id.clone()]
    );
    assert!(diff_ids(&config(serde_json::json!([id])), 2).is_err());
    assert!(diff_ids(&config(serde_json::json!(["sha256:zz"])), 1).is_err());
    assert!(
        diff_ids(
            &config(serde_json::json!([format!("sha512:{}", "ab".repeat(64))])),
            1
        )
        .is_err()
    );
}
