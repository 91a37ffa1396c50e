//! Which gzip decoder a layer gets, chosen by measurement on this machine.
//!
//! Two decoders are available: libdeflate, which decodes a whole layer in
//! one call (the layer and its tar stream both in memory), and zlib-rs
//! through flate2, which streams in 1 MiB chunks. Which one is faster
//! depends on the CPU, the memory system (a whole layer is a fresh
//! layer-sized buffer to fault in) and the data, so neither a fixed rule
//! nor a size threshold holds everywhere.
//!
//! The first gzip layer of the process that decompresses to at least
//! [`CALIBRATION_BYTES`] calibrates on its own data: both decoders decode
//! its first [`CALIBRATION_BYTES`] of output, in turns, [`CALIBRATION_ROUNDS`]
//! times each after one untimed turn each (which warms caches and faults
//! the buffer in, as a recycled pipeline buffer is). Each decoder's
//! estimate is its cheapest turn, in CPU nanoseconds per output byte (the
//! thread's own CPU time, so waiting and preemption do not count): the
//! same bytes for both, real layer content. The cheapest turn, not the
//! last one: a turn is a fraction of a millisecond, and one interruption
//! the thread's clock still counts (time the hypervisor takes the CPU
//! away, caches refilled after another thread ran) can double it. With a
//! single timed turn each, a loaded 2-core machine once measured
//! libdeflate at 1.40 ns/B against zlib-rs's 1.37 ns/B and streamed every
//! later layer, when decoding the whole image took libdeflate 0.37 s and
//! zlib-rs 0.69 s. Every later layer takes the decoder that was cheaper;
//! until then libdeflate is used.
//!
//! The calibration runs beside the pull, on a copy of the layer's first
//! bytes, in a thread at the lowest priority, so it never delays the
//! layer that started it. On a host its work is about 3 ms of CPU (under
//! load, at its priority, it finishes within 150 ms); in an emulated guest
//! about 150 ms. In front of the layer (and at 1 MiB, two turns each) it
//! was 200 ms there, longer than a small image's whole decode.
//!
//! Whole-layer timings are not fed back: a whole layer's cost in one
//! thread and a streamed layer's, spread over the decoder and the applier
//! (which copies its chunks), are not comparable, and the first fill of a
//! layer-sized buffer (page faults, which the buffer pool then saves)
//! would count against libdeflate. Measured that way, the choice flipped
//! to streaming and the pull got slower.
//!
//! Memory, not speed, limits the whole-layer decoder: a layer whose
//! compressed and uncompressed sizes together exceed an eighth of the
//! memory available (`MemAvailable`; at most [`WHOLE_MAX`]) streams.

use std::io::Read;
#[cfg(test)]
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// The two gzip decoders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decoder {
    /// libdeflate, whole layer in one call.
    Whole,
    /// zlib-rs, streamed in chunks.
    Stream,
}

impl Decoder {
    /// Its name in reports.
    pub fn name(self) -> &'static str {
        match self {
            Self::Whole => "libdeflate (whole layer)",
            Self::Stream => "zlib-rs (streaming)",
        }
    }
}

/// Largest layer (compressed plus uncompressed) decoded whole, whatever
/// the memory.
pub const WHOLE_MAX: u64 = 1 << 30;
/// Output decoded by each decoder to calibrate: enough for the thread CPU
/// clock (nanoseconds) to separate them, little enough to cost about
/// 12 ms a turn and under 1 MiB of memory in an emulated guest.
pub const CALIBRATION_BYTES: usize = 256 << 10;
/// Timed turns of each decoder in a calibration; the cheapest counts.
pub const CALIBRATION_ROUNDS: usize = 5;
const _: () = assert!(CALIBRATION_ROUNDS > 0);
/// Compressed bytes copied for a calibration: enough for
/// [`CALIBRATION_BYTES`] of output after a gzip header of up to 64 KiB
/// from what encoders write, stored blocks of incompressible data
/// included (5 bytes per 64 KiB). A stream that needs more (a longer
/// header, or a hostile one: literals of 15 bits, empty blocks) only
/// calibrates nothing, and a later layer tries again.
const CALIBRATION_INPUT: usize = CALIBRATION_BYTES + (CALIBRATION_BYTES >> 10) + (64 << 10);

/// Estimated CPU cost of each decoder, nanoseconds per output byte.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Estimates {
    /// libdeflate, whole layer.
    pub whole: f64,
    /// zlib-rs, streaming.
    pub stream: f64,
}

impl Estimates {
    /// The decoder with the lower estimate (libdeflate on a tie).
    pub fn best(&self) -> Decoder {
        if self.stream < self.whole {
            Decoder::Stream
        } else {
            Decoder::Whole
        }
    }
}

/// The process's estimates; none until a layer large enough calibrated.
static ESTIMATES: Mutex<Option<Estimates>> = Mutex::new(None);

/// The current estimates, if calibrated.
pub fn current() -> Option<Estimates> {
    *ESTIMATES.lock().unwrap_or_else(|e| e.into_inner())
}

/// The decoder for a gzip layer, `gz` in memory (decrypted), that
/// decompresses to `uncompressed` bytes (its trailer's word).
pub fn choose(gz: &[u8], uncompressed: u64) -> Decoder {
    if (gz.len() as u64).saturating_add(uncompressed) > whole_limit() {
        return Decoder::Stream;
    }
    if let Some(e) = current() {
        return e.best();
    }
    if uncompressed >= CALIBRATION_BYTES as u64 {
        calibrate_in_background(gz);
    }
    Decoder::Whole
}

/// Whether a calibration is running or has succeeded.
static CALIBRATING: AtomicBool = AtomicBool::new(false);

/// Starts the process's one calibration on a copy of `gz`'s first bytes,
/// unless one is running or done. One that fails (not a stream both
/// decoders read that far) lets the next layer try.
fn calibrate_in_background(gz: &[u8]) {
    if CALIBRATING.swap(true, Ordering::AcqRel) {
        return;
    }
    let sample = gz[..gz.len().min(CALIBRATION_INPUT)].to_vec();
    let spawned = std::thread::Builder::new()
        .name("gzip-calibrate".into())
        .spawn(move || {
            // The lowest priority of this thread alone (Linux threads
            // have their own nice value): it runs when a CPU is free.
            // SAFETY: setpriority on the calling thread, no pointers.
            unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, 19) };
            match calibrate(&sample) {
                Some(e) => {
                    ESTIMATES
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .get_or_insert(e);
                }
                None => CALIBRATING.store(false, Ordering::Release),
            }
        });
    if let Err(e) = spawned {
        tracing::debug!("cannot start the gzip calibration: {e}");
        CALIBRATING.store(false, Ordering::Release);
    }
}

/// How much memory one whole layer (compressed and uncompressed) may
/// take: an eighth of the memory available, at most [`WHOLE_MAX`].
pub fn whole_limit() -> u64 {
    (available_memory() / 8).min(WHOLE_MAX)
}

/// The memory available (`MemAvailable`), in bytes; zero when unknown.
pub fn available_memory() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| mem_available(&m))
        .unwrap_or(0)
}

/// `MemAvailable` from /proc/meminfo text, in bytes.
fn mem_available(meminfo: &str) -> Option<u64> {
    let line = meminfo.lines().find(|l| l.starts_with("MemAvailable:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    kib.checked_mul(1024)
}

/// The calling thread's CPU time so far.
pub fn thread_cpu() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes one timespec through a valid pointer.
    if unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) } != 0 {
        return Duration::ZERO;
    }
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Layer-like content: words, binary words with zero runs, and random
/// bytes, as files of a few KiB to a few hundred.
#[cfg(test)]
fn sample_content(len: usize) -> Vec<u8> {
    const WORDS: &[&str] = &[
        "the",
        "container",
        "layer",
        "image",
        "config",
        "lib",
        "usr",
        "share",
        "bin",
        "static",
        "function",
        "return",
        "value",
        "error",
        "data",
        "index",
        "module",
        "version",
        "0",
        "1",
    ];
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    let mut next = move || {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        x.wrapping_mul(0x2545_F491_4F6C_DD1D)
    };
    let mut out = Vec::with_capacity(len + 64);
    while out.len() < len {
        let file = 4096 + (next() % (128 << 10)) as usize;
        let end = (out.len() + file).min(len);
        match next() % 20 {
            0..=10 => {
                while out.len() < end {
                    let r = next();
                    out.extend_from_slice(WORDS[(r % WORDS.len() as u64) as usize].as_bytes());
                    out.push(if r >> 60 == 0 { b'\n' } else { b' ' });
                }
            }
            11..=16 => {
                while out.len() < end {
                    let r = next();
                    if r % 3 == 0 {
                        out.extend(std::iter::repeat_n(0u8, (r >> 8) as usize % 64));
                    } else {
                        out.extend_from_slice(&r.to_le_bytes());
                    }
                }
            }
            _ => {
                while out.len() < end {
                    out.extend_from_slice(&next().to_le_bytes());
                }
            }
        }
    }
    out.truncate(len);
    out
}

/// libdeflate's gzip decoder over `input` into `out`: its result and how
/// many input and output bytes it used; none when it cannot allocate.
fn libdeflate_gzip(
    input: &[u8],
    out: &mut [u8],
) -> Option<(libdeflate_sys::libdeflate_result, usize, usize)> {
    use libdeflate_sys::{
        libdeflate_alloc_decompressor, libdeflate_free_decompressor, libdeflate_gzip_decompress_ex,
    };
    let (mut in_used, mut out_used) = (0usize, 0usize);
    // SAFETY: the decompressor is allocated, used and freed on this thread
    // only and checked for NULL; `input` and `out` are valid for reads and
    // writes of their lengths, which are passed alongside, and libdeflate
    // writes at most `out.len()` bytes to `out` and one `size_t` to each of
    // `in_used` and `out_used`, which outlive the call.
    let r = unsafe {
        let d = libdeflate_alloc_decompressor();
        if d.is_null() {
            return None;
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
    Some((r, in_used, out_used))
}

/// Decodes a single-member gzip stream that must fill `out` exactly, with
/// libdeflate (the safe `libdeflater` wrapper does not report how much
/// input was consumed, so a multi-member stream would silently decode to
/// its first member).
pub fn libdeflate_exact(input: &[u8], out: &mut [u8]) -> bool {
    matches!(
        libdeflate_gzip(input, out),
        Some((r, in_used, out_used))
            if r == libdeflate_sys::libdeflate_result_LIBDEFLATE_SUCCESS
                && in_used == input.len()
                && out_used == out.len()
    )
}

/// Streams a gzip input through zlib-rs in 1 MiB chunks; the bytes out.
pub fn zlib_stream(input: &[u8], chunk: &mut [u8]) -> std::io::Result<u64> {
    let mut d = flate2::read::MultiGzDecoder::new(input);
    let mut total = 0u64;
    loop {
        let n = d.read(chunk)?;
        if n == 0 {
            return Ok(total);
        }
        total += n as u64;
    }
}

/// Both decoders over the first [`CALIBRATION_BYTES`] of output of `gz`,
/// in turns, the cheapest of [`CALIBRATION_ROUNDS`] timed turns counting
/// for each; none when either cannot produce that much.
pub fn calibrate(gz: &[u8]) -> Option<Estimates> {
    // One buffer for both: faulted in by the untimed turns, as a recycled
    // pipeline buffer is.
    let mut out = vec![1u8; CALIBRATION_BYTES];
    let bytes = CALIBRATION_BYTES as f64;
    let (mut whole, mut stream) = (f64::INFINITY, f64::INFINITY);
    for round in 0..=CALIBRATION_ROUNDS {
        let t = thread_cpu();
        if !libdeflate_prefix(gz, &mut out) {
            return None;
        }
        let w = thread_cpu().saturating_sub(t).as_nanos() as f64 / bytes;
        let t = thread_cpu();
        if !zlib_prefix(gz, &mut out) {
            return None;
        }
        let s = thread_cpu().saturating_sub(t).as_nanos() as f64 / bytes;
        // A turn the clock did not see (zero) tells nothing: the cheapest
        // of the others counts.
        if round > 0 && w > 0.0 {
            whole = whole.min(w);
        }
        if round > 0 && s > 0.0 {
            stream = stream.min(s);
        }
    }
    // A clock too coarse to see a decoder's work leaves it no reading:
    // then neither reading decides, and the figures are a tie at zero
    // (libdeflate).
    let est = if whole.is_finite() && stream.is_finite() {
        Estimates { whole, stream }
    } else {
        Estimates {
            whole: f64::MIN_POSITIVE,
            stream: f64::MIN_POSITIVE,
        }
    };
    tracing::debug!(
        whole_ns_per_byte = est.whole,
        stream_ns_per_byte = est.stream,
        chosen = est.best().name(),
        "gzip decoders calibrated"
    );
    Some(est)
}

/// libdeflate over `gz` until `out` is full: true when it filled it
/// (the stream goes on, or ends exactly there). libdeflate stops before a
/// stored block or match that would not fit, so up to 64 KiB of `out`
/// may be left undecoded: its estimate can be up to a quarter low on
/// incompressible data, which only ever favours the decoder that wins by
/// more than that where it was measured (speed, never correctness).
fn libdeflate_prefix(gz: &[u8], out: &mut [u8]) -> bool {
    use libdeflate_sys::{
        libdeflate_result_LIBDEFLATE_INSUFFICIENT_SPACE as FULL,
        libdeflate_result_LIBDEFLATE_SUCCESS as DONE,
    };
    let len = out.len();
    matches!(libdeflate_gzip(gz, out), Some((r, _, used)) if r == FULL || (r == DONE && used == len))
}

/// zlib-rs over `gz` until `out` is full.
fn zlib_prefix(gz: &[u8], out: &mut [u8]) -> bool {
    let mut d = flate2::read::MultiGzDecoder::new(gz);
    let mut n = 0;
    while n < out.len() {
        match d.read(&mut out[n..]) {
            Ok(0) | Err(_) => return false,
            Ok(k) => n += k,
        }
    }
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cheaper_estimate_wins() {
        let e = Estimates {
            whole: 1.0,
            stream: 2.0,
        };
        assert_eq!(e.best(), Decoder::Whole);
        let e = Estimates {
            whole: 2.0,
            stream: 1.5,
        };
        assert_eq!(e.best(), Decoder::Stream);
        // A tie keeps libdeflate.
        let e = Estimates {
            whole: 1.0,
            stream: 1.0,
        };
        assert_eq!(e.best(), Decoder::Whole);
    }

    fn gz(data: &[u8]) -> Vec<u8> {
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::new(6));
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    #[test]
    fn calibration_measures_both_decoders_on_the_layer() {
        let layer = gz(&sample_content(3 << 20));
        let e = calibrate(&layer).expect("calibrated");
        assert!(e.whole.is_finite() && e.whole > 0.0, "{e:?}");
        assert!(e.stream.is_finite() && e.stream > 0.0, "{e:?}");
        // Exactly the calibration size is enough; less, or a broken
        // stream, calibrates nothing.
        assert!(calibrate(&gz(&sample_content(CALIBRATION_BYTES))).is_some());
        assert!(calibrate(&gz(&sample_content(CALIBRATION_BYTES - 1))).is_none());
        let mut broken = layer.clone();
        broken[40..4000].fill(0xff);
        assert!(calibrate(&broken).is_none());
        assert!(calibrate(b"not gzip at all").is_none());
    }

    #[test]
    fn the_first_large_layer_calibrates_beside_the_pull() {
        // Incompressible content is the longest input per output byte: the
        // copied prefix still holds a whole calibration.
        let mut x: u64 = 0x2545_F491_4F6C_DD1D;
        let noise: Vec<u8> = (0..(3usize << 20))
            .map(|_| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                x as u8
            })
            .collect();
        let layer = gz(&noise);
        assert!(layer.len() > CALIBRATION_INPUT);
        assert!(calibrate(&layer[..CALIBRATION_INPUT]).is_some());
        // The layer is answered at once (libdeflate until calibrated); the
        // estimates follow from the background thread.
        let n = noise.len() as u64;
        assert!(
            layer.len() as u64 + n <= whole_limit(),
            "this test needs 50 MiB of available memory"
        );
        let before = current();
        let chosen = choose(&layer, n);
        assert_eq!(chosen, before.map_or(Decoder::Whole, |e| e.best()));
        let start = std::time::Instant::now();
        while current().is_none() {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "no calibration result after a minute"
            );
            std::thread::sleep(Duration::from_millis(5));
            // Another test's layer may have started one that failed.
            choose(&layer, n);
        }
        let e = current().unwrap();
        assert_eq!(choose(&layer, n), e.best());
    }

    #[test]
    fn memory_bounds_the_whole_layer_decoder() {
        let m = "MemTotal:       24683520 kB\nMemFree:        19315852 kB\nMemAvailable:   23931684 kB\n";
        assert_eq!(mem_available(m), Some(23931684 * 1024));
        assert_eq!(mem_available("MemTotal: 1 kB\n"), None);
        assert_eq!(mem_available("MemAvailable: lots kB\n"), None);
        // Whatever the estimates, a layer beyond the memory bound streams.
        assert_eq!(choose(b"", u64::MAX), Decoder::Stream);
        assert_eq!(choose(b"", WHOLE_MAX + 1), Decoder::Stream);
    }

    #[test]
    fn decoders_agree_and_libdeflate_wants_exactly_one_member() {
        let plain = sample_content(300 << 10);
        let gz = gz(&plain);
        let mut out = vec![0u8; plain.len()];
        assert!(libdeflate_exact(&gz, &mut out));
        assert_eq!(out, plain);
        let mut chunk = vec![0u8; 1 << 16];
        assert_eq!(zlib_stream(&gz, &mut chunk).unwrap(), plain.len() as u64);
        // Two members: libdeflate would stop after the first.
        let mut two = gz.clone();
        two.extend_from_slice(&gz);
        let mut out2 = vec![0u8; plain.len() * 2];
        assert!(!libdeflate_exact(&two, &mut out2));
        assert_eq!(
            zlib_stream(&two, &mut chunk).unwrap(),
            2 * plain.len() as u64
        );
        // A wrong size is refused, not truncated or padded.
        let mut short = vec![0u8; plain.len() - 1];
        assert!(!libdeflate_exact(&gz, &mut short));
        let mut long = vec![0u8; plain.len() + 1];
        assert!(!libdeflate_exact(&gz, &mut long));
    }
}
