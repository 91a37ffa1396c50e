//! Arbitrary bytes as a layer tarball: never a panic, never a write
//! outside the root, and the same verdict streamed or from memory.
#![no_main]

use cocoon_image::unpack::{Rootfs, UnpackOptions};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;

struct Dirs {
    _tmp: tempfile::TempDir,
    root: std::path::PathBuf,
    outside: std::path::PathBuf,
}

fn dirs() -> &'static Dirs {
    static D: OnceLock<Dirs> = OnceLock::new();
    D.get_or_init(|| {
        let base = if std::path::Path::new("/dev/shm").is_dir() { "/dev/shm" } else { "/tmp" };
        let tmp = tempfile::tempdir_in(base).expect("tempdir");
        let outside = tmp.path().join("outside");
        std::fs::create_dir(&outside).expect("outside");
        Dirs { root: tmp.path().join("root"), outside, _tmp: tmp }
    })
}

fuzz_target!(|data: &[u8]| {
    let d = dirs();
    let _ = std::fs::remove_dir_all(&d.root);
    let opts = UnpackOptions { allow_devices: false, preserve_ownership: false };
    // Streamed, then (into a fresh root) from memory, the whole-layer
    // path (data written from the buffer, entries skipped by seeking).
    let streamed = Rootfs::open(&d.root, opts.clone()).map(|mut r| r.apply(data).map(|s| s.entries).ok());
    let _ = std::fs::remove_dir_all(&d.root);
    let in_memory = Rootfs::open(&d.root, opts).map(|mut r| r.apply_bytes(data).map(|s| s.entries).ok());
    if let (Ok(a), Ok(b)) = (streamed, in_memory) {
        assert_eq!(a, b, "the two ways of applying disagree");
    }
    assert_eq!(std::fs::read_dir(&d.outside).map(|r| r.count()).unwrap_or(0), 0, "wrote outside the root");
});
