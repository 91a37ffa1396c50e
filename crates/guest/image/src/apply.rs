//! Turning downloaded layers into a rootfs, using both cores.
//!
//! Two decoder threads take layers in order as they arrive: they check the
//! HMAC of encrypted layers found in the cache, decrypt (AES-CTR) and
//! decompress. The applier (the calling thread) applies the tar streams
//! strictly in layer order. Decoders run at most [`LEAD`] layers ahead of
//! the applier, which bounds memory.
//!
//! A gzip layer whose uncompressed size (gzip trailer) is at most
//! [`WHOLE_LAYER_LIMIT`] is decompressed in one call with libdeflate
//! (about 1.5x zlib-rs's speed here), which must consume the whole input.
//! Larger layers, zstd and multi-member gzip stream through the usual
//! decoders in 1 MiB chunks.

use crate::ocicrypt::{DecryptingReader, LayerKey};
use crate::pull::{PullError, Ready};
use crate::unpack::Rootfs;
use oci_spec::image::Descriptor;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::oneshot;

/// Decoder threads.
const DECODERS: usize = 2;
/// How many layers decoders may work on beyond the one being applied.
pub const LEAD: usize = 2;
/// Largest uncompressed gzip layer decoded in one piece, in memory.
pub const WHOLE_LAYER_LIMIT: u64 = 256 << 20;
/// Chunk size of streamed layers.
const CHUNK: usize = 1 << 20;
/// Chunks queued per streamed layer.
const QUEUED_CHUNKS: usize = 8;

/// A layer's download result and when it arrived.
pub(crate) type Arrival = oneshot::Receiver<(Result<Ready, PullError>, Instant)>;

/// Where the unpack time went.
#[derive(Default, Debug, Clone, Copy)]
pub(crate) struct ApplyTotals {
    pub(crate) downloaded: u64,
    pub(crate) cached: u64,
    pub(crate) entries: u64,
    /// Decoders waiting for downloads.
    pub(crate) waiting: Duration,
    /// HMAC passes over cached layers.
    pub(crate) mac: Duration,
    /// Decryption and decompression (both decoders together).
    pub(crate) decode: Duration,
    /// Tar parsing and file writes.
    pub(crate) apply: Duration,
    pub(crate) last_arrival: Option<Instant>,
}

impl ApplyTotals {
    fn add(&mut self, o: &ApplyTotals) {
        self.downloaded += o.downloaded;
        self.cached += o.cached;
        self.waiting += o.waiting;
        self.mac += o.mac;
        self.decode += o.decode;
        self.last_arrival = match (self.last_arrival, o.last_arrival) {
            (Some(a), Some(b)) => Some(a.max(b)),
            (a, b) => a.or(b),
        };
    }
}

type Chunk = std::io::Result<Vec<u8>>;

/// A decoded layer: whole in memory, or a stream of chunks.
enum Decoded {
    Whole(Vec<u8>),
    Stream(Receiver<Chunk>),
}

/// Reads a streamed layer's chunks.
struct ChunkReader {
    chunks: Receiver<Chunk>,
    current: Vec<u8>,
    pos: usize,
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.current.len() {
            match self.chunks.recv() {
                Ok(chunk) => {
                    self.current = chunk?;
                    self.pos = 0;
                }
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len() - self.pos);
        buf[..n].copy_from_slice(&self.current[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The applier's progress, which decoders wait on.
struct Window {
    state: Mutex<(usize, bool)>,
    cv: Condvar,
    /// Tells downloads still running to stop.
    downloads: tokio::sync::watch::Sender<bool>,
}

/// Stops decoders and downloads however the applier exits (a panic too).
struct StopOnDrop<'a>(&'a Window);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.stop();
    }
}

impl Window {
    /// Waits until layer `i` may be decoded; false when the pull stopped.
    fn admit(&self, i: usize) -> bool {
        let Ok(mut g) = self.state.lock() else {
            return false;
        };
        while !g.1 && i >= g.0 + LEAD {
            g = match self.cv.wait(g) {
                Ok(g) => g,
                Err(_) => return false,
            };
        }
        !g.1
    }
    fn applied(&self, n: usize) {
        if let Ok(mut g) = self.state.lock() {
            g.0 = n;
        }
        self.cv.notify_all();
    }
    fn stop(&self) {
        if let Ok(mut g) = self.state.lock() {
            g.1 = true;
        }
        self.cv.notify_all();
        self.downloads.send_replace(true);
    }
}

/// Everything the decoders share.
struct Work<'a> {
    layers: &'a [Descriptor],
    keys: &'a [Option<Arc<LayerKey>>],
    arrivals: Vec<Mutex<Option<Arrival>>>,
    slots: Vec<Mutex<Option<SyncSender<Decoded>>>>,
    next: AtomicUsize,
    window: Window,
    /// The first decoder failure; the applier reports it.
    failure: Mutex<Option<PullError>>,
    /// Layer-sized buffers for reuse: fresh ones cost a page fault per 4 KiB.
    pool: BufferPool,
}

/// A few large buffers recycled between layers.
#[derive(Default)]
struct BufferPool(Mutex<Vec<Vec<u8>>>);

impl BufferPool {
    const KEEP: usize = 2 * (LEAD + 1);

    /// An empty buffer, with a recycled allocation when one is free.
    fn take(&self) -> Vec<u8> {
        let mut v = self
            .0
            .lock()
            .ok()
            .and_then(|mut p| p.pop())
            .unwrap_or_default();
        v.clear();
        v
    }

    fn put(&self, v: Vec<u8>) {
        if let Ok(mut p) = self.0.lock()
            && p.len() < Self::KEEP
        {
            p.push(v);
        }
    }
}

impl Work<'_> {
    /// Records a failure and hangs up every layer not yet handed over, so
    /// the applier stops at the first layer it cannot get.
    fn fail(&self, e: PullError) {
        if let Ok(mut f) = self.failure.lock()
            && f.is_none()
        {
            *f = Some(e);
        }
        for s in &self.slots {
            if let Ok(mut s) = s.lock() {
                s.take();
            }
        }
        self.window.stop();
    }
}

/// Applies the layers to `rootfs` in order as they arrive.
pub(crate) fn apply_all(
    rootfs: &mut Rootfs,
    layers: &[Descriptor],
    keys: &[Option<Arc<LayerKey>>],
    arrivals: Vec<Arrival>,
    progress: &dyn crate::pull::PullProgress,
    stop_downloads: tokio::sync::watch::Sender<bool>,
) -> Result<ApplyTotals, PullError> {
    let n = layers.len();
    let mut receivers = Vec::with_capacity(n);
    let mut slots = Vec::with_capacity(n);
    for _ in 0..n {
        let (tx, rx) = sync_channel(1);
        slots.push(Mutex::new(Some(tx)));
        receivers.push(rx);
    }
    let work = Work {
        layers,
        keys,
        arrivals: arrivals.into_iter().map(|a| Mutex::new(Some(a))).collect(),
        slots,
        next: AtomicUsize::new(0),
        window: Window {
            state: Mutex::new((0, false)),
            cv: Condvar::new(),
            downloads: stop_downloads,
        },
        failure: Mutex::new(None),
        pool: BufferPool::default(),
    };
    std::thread::scope(|s| {
        let decoders: Vec<_> = (0..DECODERS).map(|_| s.spawn(|| decoder(&work))).collect();
        let stop_guard = StopOnDrop(&work.window);
        let mut totals = ApplyTotals::default();
        let mut result = Ok(());
        for (i, rx) in receivers.into_iter().enumerate() {
            let Ok(decoded) = rx.recv() else {
                // A decoder failed; its error is recorded (after join).
                result = Err(PullError::Io {
                    what: format!("decoding layer {}", layers[i].digest()),
                    source: std::io::Error::other("decoder stopped"),
                });
                break;
            };
            let a = Instant::now();
            let applied = match decoded {
                Decoded::Whole(tar) => {
                    let r = rootfs.apply(tar.as_slice());
                    work.pool.put(tar);
                    r
                }
                Decoded::Stream(chunks) => rootfs.apply(ChunkReader {
                    chunks,
                    current: Vec::new(),
                    pos: 0,
                }),
            };
            totals.apply += a.elapsed();
            match applied {
                Ok(stats) => totals.entries += stats.entries,
                Err(source) => {
                    result = Err(PullError::Unpack {
                        digest: layers[i].digest().to_string(),
                        source,
                    });
                    break;
                }
            }
            work.window.applied(i + 1);
            progress.unpacked(i);
        }
        drop(stop_guard);
        for d in decoders {
            match d.join() {
                Ok(t) => totals.add(&t),
                Err(_) => {
                    result = result.and(Err(PullError::Io {
                        what: "decoding layers".into(),
                        source: std::io::Error::other("decoder thread panicked"),
                    }))
                }
            }
        }
        if let Ok(mut f) = work.failure.lock()
            && let Some(e) = f.take()
        {
            return Err(e);
        }
        result.map(|()| totals)
    })
}

/// One decoder thread: takes the next layer, decodes it, hands it over.
fn decoder(work: &Work<'_>) -> ApplyTotals {
    let mut t = ApplyTotals::default();
    loop {
        let i = work.next.fetch_add(1, Ordering::Relaxed);
        if i >= work.layers.len() || !work.window.admit(i) {
            return t;
        }
        let slot = work.slots[i].lock().ok().and_then(|mut s| s.take());
        let arrival = work.arrivals[i].lock().ok().and_then(|mut a| a.take());
        let (Some(slot), Some(arrival)) = (slot, arrival) else {
            return t;
        };
        if let Err(e) = decode_layer(work, i, arrival, &slot, &mut t) {
            drop(slot);
            work.fail(e);
            return t;
        }
    }
}

fn io(what: String) -> impl FnOnce(std::io::Error) -> PullError {
    move |source| PullError::Io { what, source }
}

/// Waits for layer `i`, checks the HMAC of a cached encrypted layer,
/// decodes it and sends it to `slot` (whole, or as a stream it then feeds).
fn decode_layer(
    work: &Work<'_>,
    i: usize,
    arrival: Arrival,
    slot: &SyncSender<Decoded>,
    t: &mut ApplyTotals,
) -> Result<(), PullError> {
    let digest = work.layers[i].digest().to_string();
    let wait = Instant::now();
    let (ready, arrived) = arrival.blocking_recv().map_err(|_| PullError::Io {
        what: format!("downloading layer {digest}"),
        source: std::io::Error::other("download task ended"),
    })?;
    let ready = ready?;
    t.waiting += wait.elapsed();
    t.last_arrival = Some(t.last_arrival.map_or(arrived, |l| l.max(arrived)));
    t.downloaded += ready.downloaded;
    t.cached += ready.cached;
    let key = work.keys[i].as_deref();
    let read_err = || format!("reading cached layer {digest}");
    if ready.from_cache {
        let m = Instant::now();
        verify_cached(&ready.path, &digest, key).map_err(io(read_err()))??;
        t.mac += m.elapsed();
    }
    let d = Instant::now();
    let media = work.layers[i].media_type().to_string();
    let plain = media
        .strip_suffix(crate::ocicrypt::ENCRYPTED_SUFFIX)
        .unwrap_or(&media);
    let gzip = plain.ends_with("+gzip") || plain.ends_with(".tar.gzip");
    if gzip && let Some(tar) = whole_gzip(&ready.path, key, &work.pool).map_err(io(read_err()))? {
        t.decode += d.elapsed();
        let _ = slot.send(Decoded::Whole(tar));
        return Ok(());
    }
    let file = std::fs::File::open(&ready.path).map_err(io(read_err()))?;
    let reader: Box<dyn Read> = match key {
        Some(k) => Box::new(DecryptingReader::new(
            BufReader::with_capacity(CHUNK, file),
            k,
        )),
        None => Box::new(BufReader::with_capacity(CHUNK, file)),
    };
    let mut tar = decompressor(&media, reader).map_err(|reason| PullError::Manifest {
        image: digest.clone(),
        reason,
    })?;
    let (tx, chunks) = sync_channel::<Chunk>(QUEUED_CHUNKS);
    if slot.send(Decoded::Stream(chunks)).is_err() {
        return Ok(()); // the applier stopped; it reports why
    }
    loop {
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0;
        while n < CHUNK {
            match tar.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let reason = format!("layer {digest} does not decompress: {e}");
                    let _ = tx.send(Err(std::io::Error::other(reason)));
                    return Ok(()); // the applier reports the broken stream
                }
            }
        }
        if n == 0 {
            break;
        }
        buf.truncate(n);
        // The applier hangs up once it reaches the end of the archive.
        if tx.send(Ok(buf)).is_err() {
            break;
        }
    }
    t.decode += d.elapsed();
    Ok(())
}

/// Re-checks a blob found in the cache: its SHA-256 against the digest
/// (a blob that does not match is removed, so the next pull fetches it
/// again), and for an encrypted layer the HMAC.
fn verify_cached(
    path: &Path,
    digest: &str,
    key: Option<&LayerKey>,
) -> std::io::Result<Result<(), PullError>> {
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut mac = key.map(LayerKey::mac);
    let mut f = std::fs::File::open(path)?;
    let mut buf = vec![0u8; CHUNK];
    loop {
        let n = f.read(&mut buf)?;
        if n == 0 {
            break;
        }
        sha.update(&buf[..n]);
        if let Some(m) = mac.as_mut() {
            m.update(&buf[..n]);
        }
    }
    let actual = format!("sha256:{}", hex::encode(sha.finish().as_ref()));
    if actual != digest {
        std::fs::remove_file(path)?;
        return Ok(Err(PullError::Registry(
            crate::registry::RegistryError::DigestMismatch {
                what: format!("cached layer {}", path.display()),
                expected: digest.to_string(),
                actual,
            },
        )));
    }
    if let (Some(key), Some(mac)) = (key, mac)
        && !key.mac_matches(mac)
    {
        return Ok(Err(PullError::HmacMismatch(digest.to_string())));
    }
    Ok(Ok(()))
}

/// Decrypts and decompresses a single-member gzip layer in one piece when
/// its trailer says it fits [`WHOLE_LAYER_LIMIT`]; `None` means "stream it".
fn whole_gzip(
    path: &Path,
    key: Option<&LayerKey>,
    pool: &BufferPool,
) -> std::io::Result<Option<Vec<u8>>> {
    let mut file = std::fs::File::open(path)?;
    let len = file.metadata()?.len();
    if !(18..=WHOLE_LAYER_LIMIT).contains(&len) {
        return Ok(None);
    }
    let mut data = pool.take();
    data.reserve(len as usize);
    file.read_to_end(&mut data)?;
    if let Some(k) = key {
        k.cipher().apply(&mut data);
    }
    let Some(trailer) = data.len().checked_sub(8).and_then(|at| data.get(at..)) else {
        return Ok(None);
    };
    let size = u64::from(u32::from_le_bytes([
        trailer[4], trailer[5], trailer[6], trailer[7],
    ]));
    if size > WHOLE_LAYER_LIMIT {
        return Ok(None);
    }
    let mut out = pool.take();
    out.resize(size as usize, 0);
    let exact = gzip_decompress_exact(&data, &mut out);
    pool.put(data);
    if exact {
        Ok(Some(out))
    } else {
        pool.put(out);
        Ok(None)
    }
}

/// libdeflate's gzip decoder, succeeding only when the input is exactly
/// one member that fills `out` exactly (the safe `libdeflater` wrapper does
/// not report how much input was consumed, so a multi-member stream would
/// silently decode to its first member).
fn gzip_decompress_exact(input: &[u8], out: &mut [u8]) -> bool {
    use libdeflate_sys::{
        libdeflate_alloc_decompressor, libdeflate_free_decompressor, libdeflate_gzip_decompress_ex,
        libdeflate_result_LIBDEFLATE_SUCCESS,
    };
    let (mut in_used, mut out_used) = (0usize, 0usize);
    // SAFETY: the decompressor is allocated, used and freed on this thread
    // only and checked for NULL; `input` and `out` are valid for reads and
    // writes of their lengths, which are passed alongside, and libdeflate
    // writes at most `out.len()` bytes to `out` and one `size_t` to each of
    // `in_used` and `out_used`, which outlive the call.
    let result = unsafe {
        let d = libdeflate_alloc_decompressor();
        if d.is_null() {
            return false;
        }
        let r = libdeflate_gzip_decompress_ex(
            d,
            input.as_ptr().cast(),
            input.len(),
            out.as_mut_ptr().cast(),
            out.len(),
            &mut in_used,
            &mut out_used,
        );
        libdeflate_free_decompressor(d);
        r
    };
    result == libdeflate_result_LIBDEFLATE_SUCCESS
        && in_used == input.len()
        && out_used == out.len()
}

/// The tar stream of a layer, by media type (under any decryption).
pub(crate) fn decompressor<'a>(
    media_type: &str,
    r: Box<dyn Read + 'a>,
) -> Result<Box<dyn Read + 'a>, String> {
    let plain = media_type
        .strip_suffix(crate::ocicrypt::ENCRYPTED_SUFFIX)
        .unwrap_or(media_type);
    if plain.ends_with("+gzip") || plain.ends_with(".tar.gzip") {
        Ok(Box::new(BufReader::with_capacity(
            CHUNK,
            flate2::read::MultiGzDecoder::new(BufReader::with_capacity(CHUNK, r)),
        )))
    } else if plain.ends_with("+zstd") {
        zstd::stream::read::Decoder::new(r)
            .map(|d| Box::new(d) as Box<dyn Read>)
            .map_err(|e| format!("zstd: {e}"))
    } else if plain.ends_with(".tar") || plain.ends_with("diff.tar") {
        Ok(r)
    } else {
        Err(format!(
            "layer media type {media_type:?} is not a tar layer"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    /// One member decodes whole; several members (even with the last
    /// trailer matching the first member) fall back to streaming, which
    /// reads them all.
    #[test]
    fn whole_gzip_only_for_exactly_one_member() {
        let t = tempfile::tempdir().unwrap();
        let pool = BufferPool::default();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let one = t.path().join("one");
        std::fs::write(&one, gz(&data)).unwrap();
        assert_eq!(whole_gzip(&one, None, &pool).unwrap().unwrap(), data);
        // Two members; the second has the same length and content as the
        // first, so the final trailer alone cannot tell them apart.
        let half = &data[..100_000];
        let mut two = gz(half);
        two.extend_from_slice(&gz(half));
        let two_path = t.path().join("two");
        std::fs::write(&two_path, &two).unwrap();
        assert!(whole_gzip(&two_path, None, &pool).unwrap().is_none());
        let mut streamed = Vec::new();
        decompressor(
            "application/vnd.oci.image.layer.v1.tar+gzip",
            Box::new(two.as_slice()),
        )
        .unwrap()
        .read_to_end(&mut streamed)
        .unwrap();
        assert_eq!(streamed.len(), 200_000);
        // Trailing garbage after one member is not accepted whole either.
        let mut trailing = gz(&data);
        trailing.extend_from_slice(b"junk");
        let tp = t.path().join("trailing");
        std::fs::write(&tp, trailing).unwrap();
        assert!(whole_gzip(&tp, None, &pool).unwrap().is_none());
    }
}
