//! Whether KVM really works here. `/dev/kvm` can exist and open yet fail
//! to run a Linux guest (nested virtualization without what the kernel
//! needs: the kernel then stalls in early boot), so the probe boots the
//! guest kernel itself under KVM with an init that powers off at once, and
//! remembers the answer per kernel and host boot.

use crate::Accel;
use sha2::{Digest, Sha256};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// How long a KVM boot of the probe may take (well under a second on a
/// working host).
const PROBE_TIMEOUT: Duration = Duration::from_secs(15);

/// Whether `/dev/kvm` opens and speaks KVM API 12.
pub fn device_usable() -> bool {
    use std::os::unix::io::AsRawFd;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
    else {
        return false;
    };
    // KVM_GET_API_VERSION = _IO(0xAE, 0x00)
    // SAFETY: an ioctl without arguments on a file we own.
    let v = unsafe { libc::ioctl(f.as_raw_fd(), 0xAE00) };
    v == 12
}

/// KVM when it boots `kernel` (probed once per kernel and host boot; the
/// answer is cached in `cache`), otherwise software emulation.
pub fn accel_for(qemu: &Path, kernel: &Path, cache: Option<&Path>) -> Accel {
    if !device_usable() {
        return Accel::Tcg;
    }
    let key = probe_key(kernel);
    let cached = cache
        .zip(key.as_ref())
        .map(|(c, k)| c.join(format!(".kvm-probe-{k}")));
    if let Some(c) = &cached
        && let Ok(v) = std::fs::read_to_string(c)
    {
        return if v.trim() == "kvm" {
            Accel::Kvm
        } else {
            Accel::Tcg
        };
    }
    let accel = if boot_probe(qemu, kernel) {
        Accel::Kvm
    } else {
        tracing::info!("KVM is present but cannot boot the guest kernel: using software emulation");
        Accel::Tcg
    };
    if let Some(c) = cached {
        let _ = std::fs::write(c, if accel == Accel::Kvm { "kvm" } else { "tcg" });
    }
    accel
}

/// Bytes of the kernel's head and of its tail that [`probe_key`] hashes.
const KEY_SAMPLE: u64 = 64 << 10;

/// The cache key of `kernel`'s probe: its size, its first and last
/// [`KEY_SAMPLE`] bytes (a bzImage's header with its version string, and
/// the end of its compressed payload) and the host boot. Not the whole
/// file: reading and hashing a 14 MB kernel took 15-20 ms of every pod's
/// start. Not its metadata either: a chmod, a relabel or a rebuild of the
/// same kernel would each cost a new probe (15 s where KVM cannot boot it).
fn probe_key(kernel: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(kernel).ok()?;
    let size = f.metadata().ok()?.len();
    let mut head = Vec::new();
    (&mut f).take(KEY_SAMPLE).read_to_end(&mut head).ok()?;
    let mut tail = Vec::new();
    f.seek(SeekFrom::Start(size.saturating_sub(KEY_SAMPLE)))
        .ok()?;
    f.take(KEY_SAMPLE).read_to_end(&mut tail).ok()?;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let mut h = Sha256::new();
    h.update(size.to_le_bytes());
    h.update(&head);
    h.update(&tail);
    h.update(boot.trim().as_bytes());
    Some(hex::encode(&h.finalize()[..8]))
}

/// Boots `kernel` under KVM with an init that powers off; true if QEMU
/// exits cleanly in time.
pub fn boot_probe(qemu: &Path, kernel: &Path) -> bool {
    let Ok(dir) = tempdir() else { return false };
    let initrd = dir.join("probe.cpio");
    if std::fs::write(&initrd, cocoon_guest_image::poweroff_initramfs()).is_err() {
        let _ = std::fs::remove_dir_all(&dir);
        return false;
    }
    let child = Command::new(qemu)
        .args([
            "-machine",
            "q35,accel=kvm",
            "-cpu",
            "host",
            "-m",
            "256M",
            "-smp",
            "1",
        ])
        .args(["-nodefaults", "-no-user-config", "-nographic", "-no-reboot"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(&initrd)
        .args(["-append", "console=ttyS0 quiet panic=-1"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    let ok = match child {
        Ok(mut c) => {
            let start = Instant::now();
            loop {
                match c.try_wait() {
                    Ok(Some(s)) => break s.success(),
                    Ok(None) if start.elapsed() < PROBE_TIMEOUT => {
                        std::thread::sleep(Duration::from_millis(50))
                    }
                    _ => {
                        let _ = c.kill();
                        let _ = c.wait();
                        break false;
                    }
                }
            }
        }
        Err(_) => false,
    };
    let _ = std::fs::remove_dir_all(&dir);
    ok
}

fn tempdir() -> std::io::Result<std::path::PathBuf> {
    let d = std::env::temp_dir().join(format!("cocoon-kvm-probe-{}", std::process::id()));
    std::fs::create_dir_all(&d)?;
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The key follows the kernel's bytes: the same bytes keep it, even
    /// written anew (another inode, other times); another head, another
    /// tail of the same size, or another size each get another; none
    /// without a file.
    #[test]
    fn probe_keys_follow_the_kernel() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        let image: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        std::fs::write(&kernel, &image).unwrap();
        let first = probe_key(&kernel).expect("a key for an existing file");
        let staged = dir.path().join("vmlinuz.new");
        std::fs::write(&staged, &image).unwrap();
        std::fs::rename(&staged, &kernel).unwrap();
        assert_eq!(
            probe_key(&kernel),
            Some(first.clone()),
            "the same kernel rewritten"
        );
        let changed = |at: usize| {
            let mut other = image.clone();
            other[at] ^= 1;
            std::fs::write(&kernel, &other).unwrap();
            probe_key(&kernel).unwrap()
        };
        assert_ne!(
            changed(0x20e),
            first,
            "another version string in the header"
        );
        assert_ne!(changed(image.len() - 1), first, "another payload end");
        std::fs::write(&kernel, &image[..image.len() - 1]).unwrap();
        assert_ne!(probe_key(&kernel).unwrap(), first, "another size");
        assert_eq!(probe_key(&dir.path().join("missing")), None);
    }
}
