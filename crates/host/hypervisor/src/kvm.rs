//! Whether KVM really works here. `/dev/kvm` can exist and open yet fail
//! to run a Linux guest (nested virtualization without what the kernel
//! needs: the kernel then stalls in early boot), so the probe boots the
//! guest kernel itself under KVM with an init that powers off at once, and
//! remembers the answer per kernel file and host boot.

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

/// The cache key of `kernel`'s probe: the file as it is (device, inode,
/// size, modification and change times) and the host boot. Its metadata,
/// not its content: reading and hashing a 14 MB kernel took 15-20 ms of
/// every pod's start. Replacing or rewriting the file changes its change
/// time (or inode), so a new kernel is probed anew.
fn probe_key(kernel: &Path) -> Option<String> {
    use std::os::unix::fs::MetadataExt;
    let m = std::fs::metadata(kernel).ok()?;
    let boot = std::fs::read_to_string("/proc/sys/kernel/random/boot_id").ok()?;
    let mut h = Sha256::new();
    for v in [m.dev(), m.ino(), m.size()] {
        h.update(v.to_le_bytes());
    }
    for (s, ns) in [(m.mtime(), m.mtime_nsec()), (m.ctime(), m.ctime_nsec())] {
        h.update(s.to_le_bytes());
        h.update(ns.to_le_bytes());
    }
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

    /// The key follows the kernel file: the same file keeps it; one
    /// replaced (a new inode) or grown gets another; none without a file.
    #[test]
    fn probe_keys_follow_the_kernel_file() {
        let dir = tempfile::tempdir().unwrap();
        let kernel = dir.path().join("vmlinuz");
        std::fs::write(&kernel, b"kernel one").unwrap();
        let first = probe_key(&kernel).expect("a key for an existing file");
        assert_eq!(probe_key(&kernel).as_deref(), Some(first.as_str()));
        let staged = dir.path().join("vmlinuz.new");
        std::fs::write(&staged, b"kernel two").unwrap();
        std::fs::rename(&staged, &kernel).unwrap();
        let replaced = probe_key(&kernel).unwrap();
        assert_ne!(replaced, first, "a replaced kernel is probed anew");
        std::fs::OpenOptions::new()
            .append(true)
            .open(&kernel)
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"!"))
            .unwrap();
        assert_ne!(
            probe_key(&kernel).unwrap(),
            replaced,
            "a rewritten kernel too"
        );
        assert_eq!(probe_key(&dir.path().join("missing")), None);
    }
}
