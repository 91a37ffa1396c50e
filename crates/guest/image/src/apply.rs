//! Turning downloaded layers into a rootfs, using both cores.
//!
//! Two decoder threads take layers in order as they arrive: they check the
//! digest and HMAC of layers found in the cache, decrypt (AES-CTR) and
//! decompress, always from the descriptor the blob was verified through
//! (never by path again: whoever can rename in the cache cannot swap it).
//! While decompressing they hash the tar stream, which must equal the image
//! config's `rootfs.diff_ids[i]`. The applier (the calling thread) applies
//! the tar streams strictly in layer order. Decoders run at most [`LEAD`]
//! layers ahead of the applier, which bounds memory.
//!
//! A streamed layer's diff_id is known only at its end, after its entries
//! were written to the staging rootfs (as the ocicrypt HMAC would be): a
//! mismatch fails the pull, and the staging rootfs, that layer included, is
//! removed and never becomes the bundle.
//!
//! A gzip layer is read into memory and decrypted there, then decoded by
//! the decoder [`crate::gunzip`] finds fastest on this machine: libdeflate
//! over the whole layer (which must be exactly one member), or zlib-rs
//! streaming. Layers too large for memory, zstd and multi-member gzip
//! stream from the file in 1 MiB chunks. A layer decoded whole is applied
//! from memory ([`Rootfs::apply_bytes`]: file data written straight from
//! the buffer), while the decoders work on the next layers.
//! `cocoon image pull` and the guest's data hub both pull through here.

use crate::gunzip;
use crate::ocicrypt::{DecryptingReader, LayerKey};
use crate::pull::{PullError, Ready};
use crate::unpack::{Rootfs, UnpackError, UnpackStats};
use oci_spec::image::Descriptor;
use std::fs::File;
use std::io::{BufReader, Read, Seek};
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

/// A piece of a streamed layer: tar bytes, or why the stream ends early
/// (including a diff_id mismatch found at its end).
enum Chunk {
    Data(Vec<u8>),
    Failed(PullError),
}

/// A decoded layer: whole in memory (diff_id already checked), or a stream
/// of chunks whose last word is the diff_id verdict.
enum Decoded {
    Whole(Vec<u8>),
    Stream(Receiver<Chunk>),
}

/// Reads a streamed layer's chunks; keeps the decoder's failure.
struct ChunkReader {
    chunks: Receiver<Chunk>,
    current: Vec<u8>,
    pos: usize,
    failure: Option<PullError>,
}

impl ChunkReader {
    fn new(chunks: Receiver<Chunk>) -> Self {
        Self {
            chunks,
            current: Vec::new(),
            pos: 0,
            failure: None,
        }
    }

    /// Applies the stream, then reads it to its end: the tar archive may
    /// end before the stream does, and the verdict comes last. A decoder
    /// failure takes precedence over what it made the tar parser say.
    fn apply_to(mut self, rootfs: &mut Rootfs, digest: &str) -> Result<UnpackStats, PullError> {
        let applied = rootfs.apply(&mut self);
        if applied.is_ok() {
            let _ = std::io::copy(&mut self, &mut std::io::sink());
        }
        match self.failure.take() {
            Some(e) => Err(e),
            None => applied.map_err(|source| PullError::Unpack {
                digest: digest.to_string(),
                source,
            }),
        }
    }
}

impl Read for ChunkReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.pos == self.current.len() {
            if self.failure.is_some() {
                return Err(std::io::Error::other("the layer stream failed"));
            }
            match self.chunks.recv() {
                Ok(Chunk::Data(d)) => {
                    self.current = d;
                    self.pos = 0;
                }
                Ok(Chunk::Failed(e)) => {
                    let msg = e.to_string();
                    self.failure = Some(e);
                    return Err(std::io::Error::other(msg));
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
    /// The image config's `rootfs.diff_ids`, one per layer.
    diff_ids: &'a [String],
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

    /// Largest buffer kept for reuse.
    const KEEP_MAX: usize = 256 << 20;

    fn put(&self, v: Vec<u8>) {
        if v.capacity() > Self::KEEP_MAX {
            return;
        }
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

/// Applies the layers to `rootfs` in order as they arrive; each layer's
/// tar stream must hash to its `diff_ids` entry (same length as `layers`).
pub(crate) fn apply_all(
    rootfs: &mut Rootfs,
    layers: &[Descriptor],
    keys: &[Option<Arc<LayerKey>>],
    diff_ids: &[String],
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
        diff_ids,
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
            let digest = layers[i].digest().to_string();
            let applied = match decoded {
                Decoded::Whole(tar) => {
                    let r = rootfs.apply_bytes(&tar);
                    work.pool.put(tar);
                    r.map_err(|source| PullError::Unpack { digest, source })
                }
                Decoded::Stream(chunks) => ChunkReader::new(chunks).apply_to(rootfs, &digest),
            };
            totals.apply += a.elapsed();
            match applied {
                Ok(stats) => totals.entries += stats.entries,
                Err(e) => {
                    result = Err(e);
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

/// Waits for layer `i`; for a cached blob checks its digest (and HMAC);
/// decodes it from that same descriptor and sends it to `slot` (whole, or
/// as a stream it then feeds), checking the tar stream against the diff_id.
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
    let Ready {
        mut file,
        path,
        from_cache,
        downloaded,
        cached,
    } = ready?;
    t.waiting += wait.elapsed();
    t.last_arrival = Some(t.last_arrival.map_or(arrived, |l| l.max(arrived)));
    t.downloaded += downloaded;
    t.cached += cached;
    let key = work.keys[i].as_deref();
    let read_err = || format!("reading cached layer {digest}");
    if from_cache {
        let m = Instant::now();
        verify_cached(&mut file, &path, &digest, key).map_err(io(read_err()))??;
        t.mac += m.elapsed();
    }
    let diff = DiffId {
        index: i,
        digest: &digest,
        expected: &work.diff_ids[i],
    };
    let d = Instant::now();
    let media = work.layers[i].media_type().to_string();
    let plain = media
        .strip_suffix(crate::ocicrypt::ENCRYPTED_SUFFIX)
        .unwrap_or(&media);
    let gzip = plain.ends_with("+gzip") || plain.ends_with(".tar.gzip");
    file.rewind().map_err(io(read_err()))?;
    let in_memory = if gzip {
        match gzip_in_memory(&mut file, key, &work.pool).map_err(io(read_err()))? {
            InMemory::Decoded(tar) => {
                let checked = diff.check(ring::digest::digest(&ring::digest::SHA256, &tar));
                t.decode += d.elapsed();
                if let Err(e) = checked {
                    work.pool.put(tar);
                    return Err(e);
                }
                let _ = slot.send(Decoded::Whole(tar));
                return Ok(());
            }
            InMemory::Stream(data) => Some(data),
            InMemory::TooLarge => None,
        }
    } else {
        None
    };
    let reader: Box<dyn Read> = match (in_memory, key) {
        // Already decrypted.
        (Some(data), _) => Box::new(std::io::Cursor::new(data)),
        (None, Some(k)) => {
            file.rewind().map_err(io(read_err()))?;
            Box::new(DecryptingReader::new(
                BufReader::with_capacity(CHUNK, file),
                k,
            ))
        }
        (None, None) => {
            file.rewind().map_err(io(read_err()))?;
            Box::new(BufReader::with_capacity(CHUNK, file))
        }
    };
    let mut tar = decompressor(&media, reader).map_err(|reason| PullError::Manifest {
        image: digest.clone(),
        reason,
    })?;
    let (tx, chunks) = sync_channel::<Chunk>(QUEUED_CHUNKS);
    if slot.send(Decoded::Stream(chunks)).is_err() {
        return Ok(()); // the applier stopped; it reports why
    }
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    loop {
        let mut buf = vec![0u8; CHUNK];
        let mut n = 0;
        while n < CHUNK {
            match tar.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let source = UnpackError::Malformed(format!("layer does not decompress: {e}"));
                    let _ = tx.send(Chunk::Failed(PullError::Unpack {
                        digest: digest.clone(),
                        source,
                    }));
                    return Ok(()); // the applier reports the broken stream
                }
            }
        }
        if n == 0 {
            break;
        }
        buf.truncate(n);
        sha.update(&buf);
        if tx.send(Chunk::Data(buf)).is_err() {
            break; // the applier stopped; it reports why
        }
    }
    if let Err(e) = diff.check(sha.finish()) {
        let _ = tx.send(Chunk::Failed(e));
    }
    t.decode += d.elapsed();
    Ok(())
}

/// The diff_id a layer's tar stream must have.
struct DiffId<'a> {
    index: usize,
    digest: &'a str,
    expected: &'a str,
}

impl DiffId<'_> {
    fn check(&self, sha256: ring::digest::Digest) -> Result<(), PullError> {
        let actual = format!("sha256:{}", hex::encode(sha256.as_ref()));
        if actual == self.expected {
            return Ok(());
        }
        Err(PullError::DiffIdMismatch {
            index: self.index,
            digest: self.digest.to_string(),
            expected: self.expected.to_string(),
            actual,
        })
    }
}

/// Re-checks a blob found in the cache, through the descriptor it will be
/// decoded from: its SHA-256 against the digest (a blob that does not
/// match is removed, so the next pull fetches it again), and for an
/// encrypted layer the HMAC.
fn verify_cached(
    file: &mut File,
    path: &Path,
    digest: &str,
    key: Option<&LayerKey>,
) -> std::io::Result<Result<(), PullError>> {
    let mut sha = ring::digest::Context::new(&ring::digest::SHA256);
    let mut mac = key.map(LayerKey::mac);
    let mut buf = vec![0u8; CHUNK];
    file.rewind()?;
    loop {
        let n = file.read(&mut buf)?;
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

/// A gzip layer read into memory (and decrypted there).
enum InMemory {
    /// libdeflate decoded it whole.
    Decoded(Vec<u8>),
    /// To be streamed from these (decrypted) bytes: zlib-rs was chosen,
    /// or the layer is not exactly one member.
    Stream(Vec<u8>),
    /// Too large to hold: stream it from the file.
    TooLarge,
}

/// Reads a gzip layer from `file` (its current position) into memory,
/// decrypts it, and decodes it whole when [`gunzip::choose`] picks
/// libdeflate for its sizes (the uncompressed one from its trailer).
fn gzip_in_memory(
    file: &mut File,
    key: Option<&LayerKey>,
    pool: &BufferPool,
) -> std::io::Result<InMemory> {
    gzip_in_memory_with(file, key, pool, gunzip::choose)
}

fn gzip_in_memory_with(
    file: &mut File,
    key: Option<&LayerKey>,
    pool: &BufferPool,
    choose: impl Fn(&[u8], u64) -> gunzip::Decoder,
) -> std::io::Result<InMemory> {
    let len = file.metadata()?.len();
    // The compressed layer and at least as much output must fit the bound
    // before anything is read (the output's size is known only from the
    // trailer; `choose` checks both then).
    if len.saturating_mul(2) > gunzip::whole_limit() {
        return Ok(InMemory::TooLarge);
    }
    let mut data = pool.take();
    data.reserve(len as usize);
    file.read_to_end(&mut data)?;
    if let Some(k) = key {
        k.cipher().apply(&mut data);
    }
    let Some(trailer) = data.len().checked_sub(8).and_then(|at| data.get(at..)) else {
        return Ok(InMemory::Stream(data));
    };
    // The size modulo 2^32: a wrong guess fails the exact decode below.
    let size = u64::from(u32::from_le_bytes([
        trailer[4], trailer[5], trailer[6], trailer[7],
    ]));
    if choose(&data, size) != gunzip::Decoder::Whole {
        return Ok(InMemory::Stream(data));
    }
    let mut out = pool.take();
    out.resize(size as usize, 0);
    if gunzip::libdeflate_exact(&data, &mut out) {
        pool.put(data);
        Ok(InMemory::Decoded(out))
    } else {
        pool.put(out);
        Ok(InMemory::Stream(data))
    }
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

    fn whole(f: &mut File, pool: &BufferPool) -> InMemory {
        gzip_in_memory_with(f, None, pool, |_, _| gunzip::Decoder::Whole).unwrap()
    }

    /// One member decodes whole; several members (even with the last
    /// trailer matching the first member) fall back to streaming, which
    /// reads them all; a layer the chooser gives zlib-rs comes back as its
    /// (decrypted) bytes to stream.
    #[test]
    fn whole_gzip_only_for_exactly_one_member() {
        let t = tempfile::tempdir().unwrap();
        let pool = BufferPool::default();
        let data: Vec<u8> = (0..200_000u32).map(|i| (i % 251) as u8).collect();
        let one = t.path().join("one");
        let one_gz = gz(&data);
        std::fs::write(&one, &one_gz).unwrap();
        let open = |p: &Path| File::open(p).unwrap();
        assert!(matches!(whole(&mut open(&one), &pool), InMemory::Decoded(d) if d == data));
        let streamed = gzip_in_memory_with(&mut open(&one), None, &pool, |c, u| {
            assert_eq!((c, u), (one_gz.as_slice(), data.len() as u64));
            gunzip::Decoder::Stream
        })
        .unwrap();
        assert!(matches!(streamed, InMemory::Stream(d) if d == one_gz));
        // Two members; the second has the same length and content as the
        // first, so the final trailer alone cannot tell them apart.
        let half = &data[..100_000];
        let mut two = gz(half);
        two.extend_from_slice(&gz(half));
        let two_path = t.path().join("two");
        std::fs::write(&two_path, &two).unwrap();
        assert!(matches!(whole(&mut open(&two_path), &pool), InMemory::Stream(d) if d == two));
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
        assert!(matches!(whole(&mut open(&tp), &pool), InMemory::Stream(_)));
        // Shorter than a trailer: streamed (and refused by the decoder).
        let tiny = t.path().join("tiny");
        std::fs::write(&tiny, b"\x1f\x8b").unwrap();
        assert!(matches!(
            whole(&mut open(&tiny), &pool),
            InMemory::Stream(_)
        ));
    }
}
