//! Early guest setup as PID 1: file systems, kernel modules, the command
//! line measured into the TPM before anything else runs, the initdata disk.

use sha2::{Digest, Sha256};
use std::ffi::CString;
use std::path::{Path, PathBuf};

/// Why setup failed.
#[derive(Debug, thiserror::Error)]
pub enum InitError {
    /// A mount failed.
    #[error("mount {0} on {1}: {2}")]
    Mount(String, String, std::io::Error),
    /// A module failed to load.
    #[error("loading kernel module {0}: {1}")]
    Module(String, std::io::Error),
    /// Measuring the command line failed.
    #[error("measuring the kernel command line into PCR {0}: {1}")]
    Measure(u32, String),
    /// The initdata disk is unreadable or invalid.
    #[error("initdata disk {0}: {1}")]
    InitData(String, String),
    /// Files.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

fn mount(
    src: &str,
    target: &str,
    fstype: &str,
    flags: libc::c_ulong,
    data: &str,
) -> Result<(), InitError> {
    let err = |e| InitError::Mount(fstype.to_string(), target.to_string(), e);
    std::fs::create_dir_all(target).map_err(err)?;
    let c = |s: &str| CString::new(s).map_err(|_| err(std::io::ErrorKind::InvalidInput.into()));
    let (src_c, target_c, fs_c, data_c) = (c(src)?, c(target)?, c(fstype)?, c(data)?);
    // SAFETY: valid NUL-terminated strings that outlive the call.
    let rc = unsafe {
        libc::mount(
            src_c.as_ptr(),
            target_c.as_ptr(),
            fs_c.as_ptr(),
            flags,
            data_c.as_ptr().cast(),
        )
    };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Moves PID 1 off the initramfs root: the kernel's `rootfs` cannot be
/// the current root of a `pivot_root`, which every container's runtime
/// does. A recursive bind of `/` moved onto `/` is a real mount with a
/// parent, at no copying cost. Called before any thread exists.
fn leave_rootfs() -> Result<(), InitError> {
    const NEW: &str = "/.root";
    let err = |what: &str, e| InitError::Mount(what.into(), "/".into(), e);
    match std::fs::create_dir(NEW) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(err("mkdir", e)),
    }
    mount("/", NEW, "", libc::MS_BIND | libc::MS_REC, "")?;
    std::env::set_current_dir(NEW).map_err(|e| err("chdir", e))?;
    mount(".", "/", "", libc::MS_MOVE, "")?;
    let dot =
        CString::new(".").map_err(|_| err("chroot", std::io::ErrorKind::InvalidInput.into()))?;
    // SAFETY: chroot(2) with a valid C string; single-threaded here.
    if unsafe { libc::chroot(dot.as_ptr()) } != 0 {
        return Err(err("chroot", std::io::Error::last_os_error()));
    }
    std::env::set_current_dir("/").map_err(|e| err("chdir", e))
}

/// The file systems every guest needs.
pub fn mount_basics() -> Result<(), InitError> {
    leave_rootfs()?;
    let nodev = libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC;
    mount("proc", "/proc", "proc", nodev, "")?;
    mount("sysfs", "/sys", "sysfs", nodev, "")?;
    mount("devtmpfs", "/dev", "devtmpfs", libc::MS_NOSUID, "mode=0755")?;
    mount(
        "devpts",
        "/dev/pts",
        "devpts",
        libc::MS_NOSUID | libc::MS_NOEXEC,
        "newinstance,ptmxmode=0666,mode=0620",
    )?;
    mount("tmpfs", "/dev/shm", "tmpfs", nodev, "mode=1777")?;
    mount(
        "tmpfs",
        "/run",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=0755",
    )?;
    mount(
        "tmpfs",
        "/tmp",
        "tmpfs",
        libc::MS_NOSUID | libc::MS_NODEV,
        "mode=1777",
    )?;
    mount("cgroup2", "/sys/fs/cgroup", "cgroup2", nodev, "")?;
    // The firmware event log (TPM) lives in securityfs.
    mount(
        "securityfs",
        "/sys/kernel/security",
        "securityfs",
        nodev,
        "",
    )?;
    Ok(())
}

/// Loads the modules listed in `order` (one name per line, dependencies
/// first) from `dir`. A module already loaded is fine.
pub fn load_modules(dir: &Path, order: &Path) -> Result<Vec<String>, InitError> {
    let list = match std::fs::read_to_string(order) {
        Ok(l) => l,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(InitError::Io(order.display().to_string(), e)),
    };
    let mut loaded = Vec::new();
    for name in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        let path = dir.join(format!("{name}.ko"));
        let f = std::fs::File::open(&path).map_err(|e| InitError::Module(name.into(), e))?;
        use std::os::unix::io::AsRawFd;
        let params = c"";
        // SAFETY: a valid fd and an empty parameter string.
        let rc =
            unsafe { libc::syscall(libc::SYS_finit_module, f.as_raw_fd(), params.as_ptr(), 0) };
        if rc != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EEXIST) {
                return Err(InitError::Module(name.into(), e));
            }
        }
        loaded.push(name.to_string());
    }
    Ok(loaded)
}

/// Whether the VM has a virtio vsock device (PCI vendor 0x1af4, device
/// 0x1053: virtio 1.0 device type 19). PCI devices are in sysfs before
/// PID 1 starts, whether or not a driver is loaded.
pub fn has_virtio_vsock() -> bool {
    has_pci_device(Path::new("/sys/bus/pci/devices"), 0x1af4, 0x1053)
}

/// Whether a device under `dir` (sysfs PCI layout) has this vendor and
/// device id.
fn has_pci_device(dir: &Path, vendor: u16, device: u16) -> bool {
    let id = |p: &Path, f: &str| {
        std::fs::read_to_string(p.join(f))
            .ok()
            .and_then(|v| u16::from_str_radix(v.trim().trim_start_matches("0x"), 16).ok())
    };
    std::fs::read_dir(dir).is_ok_and(|rd| {
        rd.flatten().any(|e| {
            let p = e.path();
            id(&p, "vendor") == Some(vendor) && id(&p, "device") == Some(device)
        })
    })
}

/// The kernel command line as the guest sees it (without the newline).
pub fn cmdline() -> Result<String, InitError> {
    std::fs::read_to_string("/proc/cmdline")
        .map(|s| s.trim_end_matches('\n').to_string())
        .map_err(|e| InitError::Io("/proc/cmdline".into(), e))
}

/// PCR the command line is extended into (see the guest image builder).
pub const CMDLINE_PCR: u32 = 12;

/// Extends [`CMDLINE_PCR`] with SHA-256 of `cmdline` when the guest has a
/// TPM; returns the register's new value, if it did.
pub fn measure_cmdline(cmdline: &str) -> Result<Option<[u8; 32]>, InitError> {
    let dev = ["/dev/tpmrm0", "/dev/tpm0"]
        .into_iter()
        .find(|d| Path::new(d).exists());
    let Some(dev) = dev else { return Ok(None) };
    let digest: [u8; 32] = Sha256::digest(cmdline.as_bytes()).into();
    let mut tpm = cocoon_tpm::device::Tpm::open(&cocoon_tpm::device::Tcti::Device(dev.into()))
        .map_err(|e| InitError::Measure(CMDLINE_PCR, e.to_string()))?;
    tpm.pcr_extend_sha256(CMDLINE_PCR, &digest)
        .map_err(|e| InitError::Measure(CMDLINE_PCR, e.to_string()))?;
    let pcrs = tpm
        .pcr_read_sha256()
        .map_err(|e| InitError::Measure(CMDLINE_PCR, e.to_string()))?;
    Ok(pcrs.get(CMDLINE_PCR as usize).copied())
}

/// The initdata document on the VM's initdata disk, if it has one: the
/// virtio disk whose serial is `initdata`, else any disk that starts with
/// the initdata magic.
pub fn find_initdata() -> Result<Option<String>, InitError> {
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return Ok(None);
    };
    let mut disks: Vec<PathBuf> = rd.flatten().map(|e| e.path()).collect();
    disks.sort();
    for d in disks {
        let Some(name) = d.file_name().and_then(|n| n.to_str()).map(str::to_string) else {
            continue;
        };
        if !name.starts_with("vd") {
            continue;
        }
        let dev = format!("/dev/{name}");
        let mut head = vec![0u8; 16];
        use std::io::Read;
        let Ok(mut f) = std::fs::File::open(&dev) else {
            continue;
        };
        if f.read_exact(&mut head).is_err() || &head[..8] != cocoon_types::initdata::DISK_MAGIC {
            continue;
        }
        let len = u64::from_le_bytes(head[8..16].try_into().unwrap_or_default());
        if len as usize > cocoon_types::initdata::DISK_MAX {
            return Err(InitError::InitData(
                dev,
                format!("length {len} is too large"),
            ));
        }
        let mut body = vec![0u8; len as usize];
        f.read_exact(&mut body)
            .map_err(|e| InitError::InitData(dev.clone(), e.to_string()))?;
        let mut disk = head;
        disk.extend_from_slice(&body);
        let text = cocoon_types::initdata::from_disk(&disk)
            .map_err(|e| InitError::InitData(dev.clone(), e.to_string()))?;
        return Ok(Some(text));
    }
    Ok(None)
}

/// Writes the initdata document and its `[data]` files under `dir`.
pub fn write_initdata(
    dir: &Path,
    text: &str,
) -> Result<cocoon_types::initdata::InitData, InitError> {
    let doc = cocoon_types::initdata::InitData::parse(text)
        .map_err(|e| InitError::InitData("initdata".into(), e.to_string()))?;
    let w = |name: &str, body: &str| {
        let p = dir.join(name);
        std::fs::write(&p, body).map_err(|e| InitError::Io(p.display().to_string(), e))
    };
    std::fs::create_dir_all(dir).map_err(|e| InitError::Io(dir.display().to_string(), e))?;
    w("initdata.toml", text)?;
    for (name, body) in &doc.data {
        // Only plain file names: the document is host-supplied.
        if name.contains('/') || name.starts_with('.') || name.is_empty() {
            return Err(InitError::InitData(
                "initdata".into(),
                format!("invalid [data] name '{name}'"),
            ));
        }
        w(name, body)?;
    }
    Ok(doc)
}

/// Powers the VM off (the VMM exits).
pub fn power_off() -> ! {
    // SAFETY: plain system calls; PID 1 owns the machine.
    unsafe {
        libc::sync();
        libc::reboot(libc::RB_POWER_OFF);
    }
    loop {
        std::thread::sleep(std::time::Duration::from_secs(3600));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initdata_files_are_written_and_names_checked() {
        let dir = tempfile::tempdir().unwrap();
        let doc = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n\"aa.toml\" = 'x = 1'\n";
        let d = write_initdata(dir.path(), doc).unwrap();
        assert_eq!(d.digest.len(), 48);
        assert_eq!(
            std::fs::read_to_string(dir.path().join("initdata.toml")).unwrap(),
            doc
        );
        assert_eq!(
            std::fs::read_to_string(dir.path().join("aa.toml")).unwrap(),
            "x = 1"
        );
        let evil =
            "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n\"../../etc/passwd\" = 'x'\n";
        let err = write_initdata(dir.path(), evil).unwrap_err().to_string();
        assert!(err.contains("invalid [data] name"), "{err}");
    }

    #[test]
    fn pci_devices_are_found_by_vendor_and_device() {
        let dir = tempfile::tempdir().unwrap();
        let dev = |name: &str, vendor: &str, device: &str| {
            let d = dir.path().join(name);
            std::fs::create_dir(&d).unwrap();
            std::fs::write(d.join("vendor"), vendor).unwrap();
            std::fs::write(d.join("device"), device).unwrap();
        };
        dev("0000:00:01.0", "0x8086\n", "0x29c0\n");
        dev("0000:00:02.0", "0x1af4\n", "0x1043\n");
        assert!(!has_pci_device(dir.path(), 0x1af4, 0x1053));
        dev("0000:00:03.0", "0x1af4\n", "0x1053\n");
        assert!(has_pci_device(dir.path(), 0x1af4, 0x1053));
        assert!(!has_pci_device(&dir.path().join("none"), 0x1af4, 0x1053));
    }

    #[test]
    fn missing_module_list_is_no_modules() {
        let dir = tempfile::tempdir().unwrap();
        assert!(
            load_modules(dir.path(), &dir.path().join("order"))
                .unwrap()
                .is_empty()
        );
        std::fs::write(dir.path().join("order"), "nope\n").unwrap();
        let err = load_modules(dir.path(), &dir.path().join("order")).unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
