//! `cocoon bench image`: the image pipeline against a local registry.
//!
//! Builds a deterministic multi-layer image (mixed text-like and binary
//! content, gzip level 6 as `docker build` writes it), pushes it plain and
//! JWE-encrypted, then measures in alternating runs with a cold layer cache:
//! our pull+decrypt+unpack of the encrypted image, the same of the plain
//! image (baseline), and `skopeo copy --decryption-key` of the encrypted
//! image to an OCI layout (which decrypts but does not unpack). Then the
//! single-core cost of each stage over the same bytes, and raw layer
//! decryption (AES-256-CTR + HMAC-SHA256) against one SHA-256 pass, this
//! machine's floor.

use anyhow::{Context, Result, bail};
use clap::Args;
use cocoon_image::keys::{PrivateKey, PublicKey};
use cocoon_image::ocicrypt::{DecryptConfig, LayerKey};
use cocoon_image::owner::{EncryptOptions, LayerBuilder, encrypt_image, push_image};
use cocoon_image::pull::{ImagePuller, NoProgress, PullConfig, PullReport};
use cocoon_image::reference::Reference;
use cocoon_image::registry::{RegistryClient, RegistryConfig};
use cocoon_image::unpack::{Rootfs, UnpackOptions};
use p256::pkcs8::{EncodePrivateKey, LineEnding};
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// `cocoon bench image`.
#[derive(Args, Debug)]
pub struct ImageBenchArgs {
    /// Registry (HOST:PORT, plain HTTP) to push the test image to.
    #[arg(long)]
    registry: String,
    /// Uncompressed image size in MiB.
    #[arg(long, default_value_t = 512)]
    size_mib: usize,
    /// Number of layers.
    #[arg(long, default_value_t = 8)]
    layers: usize,
    /// Timed runs of each pull.
    #[arg(long, default_value_t = 3)]
    runs: usize,
    /// Layers downloaded at once by our pipeline.
    #[arg(long, default_value_t = 3)]
    concurrency: usize,
    /// Scratch directory for bundles, caches and keys. Default: a fresh
    /// directory in /dev/shm, because a guest unpacks into its own memory
    /// (its disk belongs to the host); elsewhere a temporary directory.
    #[arg(long)]
    work: Option<PathBuf>,
}

/// xorshift64*: deterministic content, fast to generate.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
}

const WORDS: &[&str] = &[
    "the",
    "container",
    "image",
    "layer",
    "config",
    "return",
    "static",
    "const",
    "void",
    "int",
    "struct",
    "import",
    "function",
    "error",
    "value",
    "string",
    "buffer",
    "index",
    "length",
    "default",
    "module",
    "package",
    "version",
    "license",
    "copyright",
    "include",
    "define",
    "public",
    "private",
    "self",
    "true",
    "false",
    "null",
    "while",
    "for",
    "usr",
    "lib",
    "share",
    "bin",
    "etc",
    "locale",
    "python3",
    "site",
    "debian",
    "x86_64",
    "linux",
    "gnu",
    "so",
    "data",
];

/// File content: text-like (source, docs, configs), binary-like
/// (executables: random with zero runs) or random (already compressed).
fn content(rng: &mut Rng, len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 16);
    match rng.next() % 20 {
        0..=10 => {
            while out.len() < len {
                let r = rng.next();
                out.extend_from_slice(WORDS[(r % WORDS.len() as u64) as usize].as_bytes());
                out.push(if r >> 60 == 0 { b'\n' } else { b' ' });
            }
        }
        11..=16 => {
            while out.len() < len {
                let r = rng.next();
                if r.is_multiple_of(3) {
                    out.extend(std::iter::repeat_n(0u8, (r >> 8) as usize % 64));
                } else {
                    out.extend_from_slice(&r.to_le_bytes());
                    out.extend_from_slice(&(r >> 7).to_le_bytes()[..(r >> 40) as usize % 8]);
                }
            }
        }
        _ => {
            while out.len() < len {
                out.extend_from_slice(&rng.next().to_le_bytes());
            }
        }
    }
    out.truncate(len);
    out
}

/// One layer of about `bytes` uncompressed: many small files and some big ones.
fn make_layer(index: usize, bytes: usize) -> Result<(Vec<u8>, String)> {
    let mut rng =
        Rng(0x9E37_79B9_7F4A_7C15 ^ (index as u64 + 1).wrapping_mul(0xD1B5_4A32_D192_ED03));
    let mut b = LayerBuilder::new(flate2::Compression::default());
    b.dir(&format!("data/l{index}"))?;
    let mut written = 0;
    let mut n = 0;
    while written < bytes {
        let len = if n % 20 == 19 {
            (2 << 20).min(bytes - written)
        } else {
            (4096 + (rng.next() % (60 << 10)) as usize).min(bytes - written)
        };
        b.file(
            &format!("data/l{index}/f{n:05}"),
            0o644,
            &content(&mut rng, len),
        )?;
        written += len;
        n += 1;
    }
    Ok(b.finish()?)
}

/// Writes to `bytes` of fresh memory and frees it. A virtual machine
/// whose guest hands freed memory back to its hypervisor (free page
/// reporting, as on the development machine, a Firecracker VM) pays a
/// fault in the host on the first touch of memory given back: a pull
/// that came after a pause (the previous one's files removed, then
/// skopeo's run) took 0.3-0.7 s longer than the same pull right after
/// another, whichever image it was. Before each timed pull the memory it
/// will use is made the guest's again; freed pages are given back about
/// two seconds later. At most half the memory available is touched.
fn touch_memory(bytes: usize) {
    let half = cocoon_image::gunzip::available_memory() / 2;
    let bytes = bytes.min(usize::try_from(half).unwrap_or(usize::MAX));
    std::hint::black_box(vec![1u8; bytes]);
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

fn secs(d: Duration) -> f64 {
    d.as_secs_f64()
}

/// Times `f` over `bytes`, returning GB/s.
fn rate(bytes: u64, f: impl FnOnce()) -> (f64, f64) {
    let t = Instant::now();
    f();
    let s = t.elapsed().as_secs_f64();
    (s, bytes as f64 / s / 1e9)
}

async fn download_all(
    client: &RegistryClient,
    image: &Reference,
) -> Result<(
    Vec<Vec<u8>>,
    Vec<(String, std::collections::HashMap<String, String>)>,
)> {
    let m = client.manifest(image).await?;
    let manifest: oci_spec::image::ImageManifest = serde_json::from_slice(&m.bytes)?;
    let pinned = image.with_digest(&m.digest);
    let mut blobs = Vec::new();
    let mut meta = Vec::new();
    for l in manifest.layers() {
        let mut resp = client.blob(&pinned, l.digest().as_ref()).await?;
        let mut v = Vec::with_capacity(l.size() as usize);
        while let Some(c) = resp.chunk().await? {
            v.extend_from_slice(&c);
        }
        blobs.push(v);
        meta.push((
            l.digest().to_string(),
            l.annotations().clone().unwrap_or_default(),
        ));
    }
    Ok((blobs, meta))
}

/// Runs the benchmark.
pub async fn run(a: ImageBenchArgs) -> Result<()> {
    cocoon_kbs_client::install_crypto_provider();
    let shm = Path::new("/dev/shm");
    let tmp = if shm.is_dir() {
        tempfile::tempdir_in(shm)?
    } else {
        tempfile::tempdir()?
    };
    let work = a.work.clone().unwrap_or_else(|| tmp.path().to_path_buf());
    std::fs::create_dir_all(&work)?;
    outln!(
        "scratch directory (bundles, caches, skopeo output): {}",
        work.display()
    );
    if a.layers < 2 {
        bail!("--layers must be at least 2 (the pipeline downloads layers concurrently)");
    }
    let reg = RegistryConfig {
        insecure: [a.registry.clone()].into(),
        ..Default::default()
    };
    let client = RegistryClient::new(reg.clone()).map_err(anyhow::Error::msg)?;
    let plain = Reference::parse(&format!("{}/bench/image:plain", a.registry))?;
    let enc = Reference::parse(&format!("{}/bench/image:encrypted", a.registry))?;

    // The image, built on both cores.
    let t = Instant::now();
    let per_layer = a.size_mib * (1 << 20) / a.layers;
    let layers: Vec<(Vec<u8>, String)> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..2)
            .map(|w| {
                s.spawn(move || {
                    (0..a.layers)
                        .filter(|i| i % 2 == w)
                        .map(|i| make_layer(i, per_layer).map(|l| (i, l)))
                        .collect::<Result<Vec<_>>>()
                })
            })
            .collect();
        let mut all = Vec::new();
        for h in handles {
            all.extend(
                h.join()
                    .map_err(|_| anyhow::anyhow!("layer builder panicked"))??,
            );
        }
        all.sort_by_key(|(i, _)| *i);
        Ok::<_, anyhow::Error>(all.into_iter().map(|(_, l)| l).collect())
    })?;
    let compressed: usize = layers.iter().map(|(b, _)| b.len()).sum();
    let uncompressed = per_layer * a.layers;
    push_image(&client, &plain, &layers, &["/bin/sh"]).await?;
    drop(layers);
    let sk = p256::SecretKey::random(&mut rand_core::OsRng);
    let key_pem = work.join("bench-key.pem");
    std::fs::write(&key_pem, sk.to_pkcs8_pem(LineEnding::LF)?.as_bytes())?;
    let puller = ImagePuller::new(PullConfig {
        registry: reg.clone(),
        ..PullConfig::new(work.join("unused-cache"))
    })?;
    encrypt_image(
        &puller,
        &plain,
        &enc,
        &EncryptOptions {
            recipients: vec![PublicKey::Ec(sk.public_key())],
            keks: vec![],
        },
    )
    .await?;
    outln!(
        "image: {} layers, {:.0} MiB uncompressed, {:.0} MiB gzip ({:.2}x), built and pushed plain + JWE-encrypted in {:.1}s",
        a.layers,
        uncompressed as f64 / (1 << 20) as f64,
        compressed as f64 / (1 << 20) as f64,
        uncompressed as f64 / compressed as f64,
        t.elapsed().as_secs_f64()
    );

    // Timed pulls, alternating, each with a cold cache and an empty bundle,
    // and each (skopeo's too) right after memory as large as a pull's
    // footprint was touched and freed.
    let footprint = (compressed + uncompressed) * 3 / 2;
    let keys = Arc::new(vec![PrivateKey::from_file(&key_pem)?]);
    let policy = work.join("skopeo-policy.json");
    std::fs::write(
        &policy,
        br#"{"default":[{"type":"insecureAcceptAnything"}]}"#,
    )?;
    let (mut ours_plain, mut ours_enc, mut skopeo) = (Vec::new(), Vec::new(), Vec::new());
    let mut last_enc: Option<PullReport> = None;
    let mut last_plain: Option<PullReport> = None;
    for r in 0..a.runs {
        for (encrypted, image) in [(false, &plain), (true, &enc)] {
            let dir = work.join(format!("run-{r}-{encrypted}"));
            let mut cfg = PullConfig::new(dir.join("cache"));
            cfg.registry = reg.clone();
            cfg.max_concurrent_downloads = a.concurrency;
            if encrypted {
                cfg.decrypt = DecryptConfig {
                    private_keys: keys.clone(),
                    fetcher: None,
                };
            }
            touch_memory(footprint);
            let report = ImagePuller::new(cfg)?
                .pull(image, &dir.join("bundle"), Arc::new(NoProgress))
                .await?;
            if encrypted {
                ours_enc.push(secs(report.total));
                last_enc = Some(report);
            } else {
                ours_plain.push(secs(report.total));
                last_plain = Some(report);
            }
            std::fs::remove_dir_all(&dir)?;
        }
        let layout = work.join(format!("skopeo-{r}"));
        touch_memory(footprint);
        let t = Instant::now();
        let mut cmd = std::process::Command::new("skopeo");
        cmd.arg("--policy")
            .arg(&policy)
            .args([
                "copy",
                "--quiet",
                "--src-tls-verify=false",
                "--decryption-key",
            ])
            .arg(&key_pem)
            .arg(format!("docker://{enc}"))
            .arg(format!("oci:{}:x", layout.display()));
        let o = tokio::task::spawn_blocking(move || cmd.output())
            .await?
            .context("running skopeo (apt-get install skopeo)")?;
        if !o.status.success() {
            bail!("skopeo copy failed: {}", String::from_utf8_lossy(&o.stderr));
        }
        skopeo.push(t.elapsed().as_secs_f64());
        std::fs::remove_dir_all(&layout)?;
    }
    let each = |v: &[f64]| {
        v.iter()
            .map(|x| format!("{x:.3}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let runs = format!(
        "  each run in order: plain {}; encrypted {}; skopeo {}",
        each(&ours_plain),
        each(&ours_enc),
        each(&skopeo)
    );
    let (p, e, s) = (median(ours_plain), median(ours_enc), median(skopeo));
    outln!(
        "\npull + verify + decrypt + unpack, cold cache, median of {} runs:",
        a.runs
    );
    outln!(
        "  plain image (baseline)          {p:8.3} s   {:6.0} MB/s of image",
        uncompressed as f64 / p / 1e6
    );
    outln!(
        "  encrypted image (ours)          {e:8.3} s   {:.2}x plain (target <= 1.3x)",
        e / p
    );
    outln!(
        "  skopeo copy --decryption-key    {s:8.3} s   ours is {:.2}x faster (target >= 2x; skopeo does not unpack)",
        s / e
    );
    outln!("{runs}");
    for (name, r) in [("plain", &last_plain), ("encrypted", &last_enc)] {
        if let Some(r) = r {
            outln!(
                "  breakdown ({name}, last run): manifest+policy+keys {:.3}s; layers downloaded+hashed in {:.3}s wall; decoder: waited {:.3}s, decrypt+gunzip {:.3}s; applier: tar+write {:.3}s",
                secs(r.prepare),
                secs(r.download),
                secs(r.unpack_waiting),
                secs(r.unpack_decode),
                secs(r.unpack_apply)
            );
        }
    }

    // Single-core cost of each stage over this image's bytes.
    let (ct, meta) = download_all(&client, &enc).await?;
    let (pt, _) = download_all(&client, &plain).await?;
    let total: u64 = ct.iter().map(|b| b.len() as u64).sum();
    let cfg = DecryptConfig {
        private_keys: keys.clone(),
        fetcher: None,
    };
    let mut lkeys = Vec::new();
    for (d, ann) in &meta {
        lkeys.push(Arc::new(LayerKey::unwrap(d, ann, &cfg).await?));
    }
    let ct = Arc::new(ct);
    let (sha_s, sha_gbs) = rate(total, || {
        for b in ct.iter() {
            std::hint::black_box(ring::digest::digest(&ring::digest::SHA256, b));
        }
    });
    let (mac_s, _) = rate(total, || {
        for (b, k) in ct.iter().zip(&lkeys) {
            let mut m = k.mac();
            m.update(b);
            std::hint::black_box(k.mac_matches(m));
        }
    });
    let mut scratch: Vec<Vec<u8>> = ct.iter().map(|b| b.to_vec()).collect();
    let (aes_s, _) = rate(total, || {
        for (b, k) in scratch.iter_mut().zip(&lkeys) {
            k.cipher().apply(b);
        }
    });
    // Decryption as the pipeline does it: HMAC check, then AES-CTR, per layer.
    let decrypt_layer = |i: usize, out: &mut Vec<u8>| {
        let mut m = lkeys[i].mac();
        m.update(&ct[i]);
        assert!(lkeys[i].mac_matches(m), "bench layer MAC");
        out.clear();
        out.extend_from_slice(&ct[i]);
        lkeys[i].cipher().apply(out);
    };
    let mut buf = Vec::new();
    let (dec1_s, dec1_gbs) = rate(total, || {
        for i in 0..ct.len() {
            decrypt_layer(i, &mut buf);
        }
    });
    let next = std::sync::atomic::AtomicUsize::new(0);
    let (dec2_s, dec2_gbs) = rate(total, || {
        std::thread::scope(|s| {
            for _ in 0..2 {
                s.spawn(|| {
                    let mut buf = Vec::new();
                    loop {
                        let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        if i >= ct.len() {
                            break;
                        }
                        decrypt_layer(i, &mut buf);
                    }
                });
            }
        });
    });
    let (gzs_s, _) = rate(total, || {
        for b in &pt {
            let mut out = Vec::with_capacity(per_layer + (1 << 20));
            flate2::read::MultiGzDecoder::new(b.as_slice())
                .read_to_end(&mut out)
                .expect("gunzip");
            std::hint::black_box(out);
        }
    });
    // Into one recycled buffer, as the pipeline's buffer pool does.
    let mut out = Vec::new();
    let (gz_s, _) = rate(total, || {
        for b in &pt {
            let size =
                u32::from_le_bytes(b[b.len() - 4..].try_into().expect("gzip trailer")) as usize;
            out.resize(size, 0);
            assert!(
                cocoon_image::gunzip::libdeflate_exact(b, &mut out),
                "gunzip"
            );
        }
    });
    drop(out);
    let tars: Vec<Vec<u8>> = pt
        .iter()
        .map(|b| {
            let mut t = Vec::new();
            flate2::read::MultiGzDecoder::new(b.as_slice())
                .read_to_end(&mut t)
                .expect("gunzip");
            t
        })
        .collect();
    let (diff_s, _) = rate(total, || {
        for t in &tars {
            std::hint::black_box(ring::digest::digest(&ring::digest::SHA256, t));
        }
    });
    let root = work.join("apply-rootfs");
    // Untimed first: the first writes of this much data pay for memory the
    // machine has not touched yet, which would count against whichever
    // way of applying came first.
    {
        let mut rootfs = Rootfs::open(&root, UnpackOptions::default()).expect("rootfs");
        for t in &tars {
            rootfs.apply(t.as_slice()).expect("apply");
        }
    }
    std::fs::remove_dir_all(&root)?;
    let (apply_s, _) = rate(total, || {
        let mut rootfs = Rootfs::open(&root, UnpackOptions::default()).expect("rootfs");
        for t in &tars {
            rootfs.apply_bytes(t).expect("apply");
        }
    });
    std::fs::remove_dir_all(&root)?;
    let (apply_stream_s, _) = rate(total, || {
        let mut rootfs = Rootfs::open(&root, UnpackOptions::default()).expect("rootfs");
        for t in &tars {
            rootfs.apply(t.as_slice()).expect("apply");
        }
    });
    std::fs::remove_dir_all(&root)?;
    let mb = |s: f64, b: u64| b as f64 / s / 1e6;
    outln!(
        "\nstage costs over this image, one core ({:.0} MiB compressed, {:.0} MiB uncompressed):",
        total as f64 / (1 << 20) as f64,
        uncompressed as f64 / (1 << 20) as f64
    );
    outln!(
        "  SHA-256 (blob digest)           {sha_s:7.3} s  {:6.0} MB/s",
        mb(sha_s, total)
    );
    outln!(
        "  HMAC-SHA256 (ocicrypt MAC)      {mac_s:7.3} s  {:6.0} MB/s   <- the only hashing encryption adds",
        mb(mac_s, total)
    );
    outln!(
        "  AES-256-CTR                     {aes_s:7.3} s  {:6.0} MB/s",
        mb(aes_s, total)
    );
    outln!(
        "  gunzip, whole layer (libdeflate){gz_s:7.3} s  {:6.0} MB/s of output",
        mb(gz_s, uncompressed as u64)
    );
    outln!(
        "  gunzip, streaming (zlib-rs)     {gzs_s:7.3} s  {:6.0} MB/s of output",
        mb(gzs_s, uncompressed as u64)
    );
    outln!(
        "  SHA-256 (diff_id, the tar)      {diff_s:7.3} s  {:6.0} MB/s of output",
        mb(diff_s, uncompressed as u64)
    );
    outln!(
        "  tar apply, from memory          {apply_s:7.3} s  {:6.0} MB/s   <- the pipeline's path for layers decoded whole (data written straight from the buffer)",
        mb(apply_s, uncompressed as u64)
    );
    outln!(
        "  tar apply, streamed             {apply_stream_s:7.3} s  {:6.0} MB/s",
        mb(apply_stream_s, uncompressed as u64)
    );
    let chosen = cocoon_image::gunzip::current();
    if let Some(e) = chosen {
        outln!(
            "  the pipeline's gzip decoder: {} (calibrated on the first layer: libdeflate {:.2} ns/B, zlib-rs {:.2} ns/B of output)",
            e.best().name(),
            e.whole,
            e.stream
        );
    }
    // The encrypted pull's own work, every stage above once, on however
    // many cores there are: what no pipeline on this machine beats.
    let (gunzip_s, apply_path_s) = match chosen.map(|e| e.best()) {
        Some(cocoon_image::gunzip::Decoder::Stream) => (gzs_s, apply_stream_s),
        _ => (gz_s, apply_s),
    };
    let work_s = sha_s + mac_s + aes_s + gunzip_s + diff_s + apply_path_s;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let floor_s = work_s / cores as f64;
    outln!(
        "  the encrypted pull's work, these stages once: {work_s:.3} s on one core; on {cores} cores shared perfectly {floor_s:.3} s, {:.2}x faster than this run's skopeo at best (ours {e:.3} s; the registry's own CPU not counted)",
        s / floor_s
    );
    outln!(
        "\nraw layer decryption (HMAC check + AES-256-CTR) vs one SHA-256 pass, the floor (this CPU {} SHA extensions):",
        if sha_extensions() { "has" } else { "has no" }
    );
    outln!("  SHA-256 floor, 1 core           {sha_s:7.3} s  {sha_gbs:.3} GB/s");
    outln!(
        "  decrypt, 1 core                 {dec1_s:7.3} s  {dec1_gbs:.3} GB/s   {:.2}x the floor",
        dec1_s / sha_s
    );
    outln!(
        "  decrypt, 2 cores over layers    {dec2_s:7.3} s  {dec2_gbs:.3} GB/s   {:.2}x the floor (target <= 1.2x)",
        dec2_s / sha_s
    );
    Ok(())
}

/// Whether the CPU has the SHA extensions SHA-256 speed depends on.
fn sha_extensions() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::arch::is_x86_feature_detected!("sha")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_layers_are_deterministic_and_compressible() {
        let (a, da) = make_layer(3, 1 << 20).unwrap();
        let (b, db) = make_layer(3, 1 << 20).unwrap();
        assert_eq!(da, db);
        assert_eq!(a, b);
        assert!(a.len() < (1 << 20) * 3 / 4, "compresses: {}", a.len());
        assert!(a.len() > (1 << 20) / 8, "not trivially: {}", a.len());
    }
}
