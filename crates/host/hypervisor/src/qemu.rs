//! The local driver: one QEMU process per VM (plus a fresh swtpm in vtpm
//! mode), each started from a thread that lives exactly as long as the
//! process and asks the kernel to SIGKILL it if that thread dies, so a
//! driver killed with SIGKILL takes its VMs with it. Sockets are abstract
//! (the agent channel) or socket pairs (the vTPM), so nothing is left in
//! the filesystem; a state directory whose driver died is removed by the
//! next [`gc_stale`].

use crate::{Accel, Hypervisor, Mode, Vm, VmError, VmExit, VmSpec};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use cocoon_types::initdata::{InitData, disk_image};
use std::os::unix::io::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use tokio::sync::watch;

/// Default firmware per mode (Debian's packages).
pub fn default_firmware(mode: Mode) -> Option<&'static str> {
    match mode {
        Mode::None => None,
        Mode::Vtpm => Some("/usr/share/ovmf/OVMF.fd"),
        Mode::Tdx => Some("/usr/share/ovmf/OVMF.inteltdx.fd"),
        Mode::Snp => Some("/usr/share/ovmf/AMDSEV.fd"),
    }
}

/// The fd number the vTPM control socket has in QEMU.
const TPM_FD: i32 = 3;
/// The fd number the control socket has in swtpm.
const SWTPM_FD: i32 = 3;
/// The pod NIC's tap device, as QEMU inherits it.
const TAP_FD: i32 = 4;

/// SEV-SNP parameters of the host CPU (CPUID 0x8000001F EBX).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnpCpu {
    /// Position of the C-bit in page table entries.
    pub cbitpos: u32,
    /// Physical address bits lost to memory encryption.
    pub reduced_phys_bits: u32,
}

impl SnpCpu {
    /// From CPUID 0x8000001F EBX: bits 5:0 C-bit position, 11:6 reduced bits.
    pub fn from_ebx(ebx: u32) -> Self {
        Self {
            cbitpos: ebx & 0x3f,
            reduced_phys_bits: (ebx >> 6) & 0x3f,
        }
    }

    /// This host's, if it reports SEV (CPUID leaf present).
    pub fn host() -> Option<Self> {
        #[cfg(target_arch = "x86_64")]
        {
            let max = core::arch::x86_64::__cpuid(0x8000_0000).eax;
            if max < 0x8000_001f {
                return None;
            }
            let r = core::arch::x86_64::__cpuid(0x8000_001f);
            // EAX bit 4: SEV-SNP supported.
            (r.eax & (1 << 4) != 0).then(|| Self::from_ebx(r.ebx))
        }
        #[cfg(not(target_arch = "x86_64"))]
        None
    }
}

/// Files and names one VM uses.
#[derive(Debug, Clone)]
pub struct Layout {
    /// Abstract socket name of the agent channel (without the `@`).
    pub agent_socket: String,
    /// The initdata disk image, if any.
    pub initdata_disk: Option<PathBuf>,
    /// The guest's vsock context id, where the host has vhost-vsock (the
    /// agent is then reached on vsock port [`AGENT_VSOCK_PORT`]).
    pub vsock_cid: Option<u32>,
}

/// The vsock port the agent listens on (Kata's).
pub const AGENT_VSOCK_PORT: u32 = 1024;

/// Whether this host can give guests a vsock device.
pub fn vhost_vsock_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/vhost-vsock")
        .is_ok()
}

/// A context id for a new guest: random above the reserved ones (0-2),
/// so concurrent VMs rarely collide (QEMU refuses a CID in use, and the
/// start is retried with another).
fn new_cid() -> u32 {
    let mut b = [0u8; 4];
    let _ = getrandom(&mut b);
    3 + (u32::from_le_bytes(b) % (u32::MAX / 2))
}

fn getrandom(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

/// Fits a digest into a TEE field of `len` bytes: cut, or zero-padded.
fn fit(digest: &[u8], len: usize) -> Vec<u8> {
    let mut v = digest[..digest.len().min(len)].to_vec();
    v.resize(len, 0);
    v
}

/// QEMU's arguments for `spec` (pure: no files are touched).
pub fn args(
    spec: &VmSpec,
    accel: Accel,
    layout: &Layout,
    initdata_digest: Option<&[u8]>,
    snp: Option<SnpCpu>,
) -> Result<Vec<String>, VmError> {
    if spec.vcpus == 0 || spec.vcpus > 256 {
        return Err(VmError::Invalid(format!("{} vCPUs (1-256)", spec.vcpus)));
    }
    // The id names the VM and its socket; paths go inside QEMU option
    // lists, where a comma would start another option.
    if spec.id.is_empty()
        || spec.id.len() > 64
        || !spec
            .id
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        || spec.id.starts_with('.')
    {
        return Err(VmError::Invalid(format!(
            "VM id '{}': 1-64 characters of A-Z, a-z, 0-9, '-', '_', '.', not starting with '.'",
            spec.id
        )));
    }
    let option_paths = [Some(&spec.console_log), layout.initdata_disk.as_ref()];
    if let Some(p) = option_paths
        .into_iter()
        .flatten()
        .find(|p| p.to_string_lossy().contains(','))
    {
        return Err(VmError::Invalid(format!(
            "path {} contains a comma, which QEMU option lists cannot carry",
            p.display()
        )));
    }
    if spec.memory_mib < 64 {
        return Err(VmError::Invalid(format!(
            "{} MiB of memory (at least 64)",
            spec.memory_mib
        )));
    }
    if matches!(spec.mode, Mode::Tdx | Mode::Snp) && accel != Accel::Kvm {
        return Err(VmError::Invalid(format!(
            "{:?} needs KVM on a host with that TEE; this host has no usable KVM",
            spec.mode
        )));
    }
    let p = |p: &Path| p.display().to_string();
    let mut machine = format!(
        "q35,accel={}",
        match accel {
            Accel::Kvm => "kvm",
            Accel::Tcg => "tcg",
        }
    );
    let mut a: Vec<String> = Vec::new();
    let mut push = |v: &[&str]| a.extend(v.iter().map(|s| s.to_string()));
    match spec.mode {
        Mode::Tdx => {
            machine.push_str(",kernel_irqchip=split,confidential-guest-support=tdx");
            let mut obj = serde_json_like_tdx(initdata_digest);
            obj.push('}');
            push(&["-object", &obj]);
        }
        Mode::Snp => {
            let cpu = snp.ok_or_else(|| {
                VmError::Invalid("snp mode on a host whose CPU does not report SEV-SNP".into())
            })?;
            machine.push_str(",confidential-guest-support=snp,memory-backend=ram1");
            let mut obj = format!(
                "sev-snp-guest,id=snp,cbitpos={},reduced-phys-bits={},kernel-hashes=on,policy=0x30000",
                cpu.cbitpos, cpu.reduced_phys_bits
            );
            if let Some(d) = initdata_digest {
                obj.push_str(&format!(",host-data={}", B64.encode(fit(d, 32))));
            }
            push(&["-object", &obj]);
            push(&[
                "-object",
                &format!(
                    "memory-backend-memfd,id=ram1,size={}M,share=true,prealloc=false",
                    spec.memory_mib
                ),
            ]);
        }
        Mode::None | Mode::Vtpm => {}
    }
    let cpu = match (accel, spec.mode) {
        // Without ERMS and FSRM, the guest's kernel and libc copy memory
        // with wide moves instead of `rep movsb`, which QEMU's emulation
        // runs a byte at a time: unpacking the zstd initramfs into ramfs
        // took 0.25 s instead of 0.47 s here, and the guest's other large copies
        // (page cache, libc's memcpy) take the same path.
        (Accel::Tcg, _) => "max,-erms,-fsrm",
        (Accel::Kvm, Mode::Snp) => "EPYC-v4",
        (Accel::Kvm, _) => "host",
    };
    push(&[
        "-name",
        &format!("cocoon-{},debug-threads=on", spec.id),
        "-machine",
        &machine,
        "-cpu",
        cpu,
        "-smp",
        &spec.vcpus.to_string(),
        "-m",
        &format!("{}M", spec.memory_mib),
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        // The console comes out on QEMU's stdout into a pipe the driver
        // copies to the log, bounded (the guest is not trusted to fill
        // the host's disk).
        "-serial",
        "stdio",
        "-kernel",
        &p(&spec.kernel),
        "-initrd",
        &p(&spec.initrd),
        "-append",
        &spec.cmdline,
    ]);
    let firmware = spec
        .firmware
        .clone()
        .or_else(|| default_firmware(spec.mode).map(PathBuf::from));
    if let Some(fw) = &firmware {
        push(&["-bios", &p(fw)]);
    }
    if spec.mode == Mode::Vtpm {
        push(&[
            "-chardev",
            &format!("socket,id=chrtpm,fd={TPM_FD}"),
            "-tpmdev",
            "emulator,id=tpm0,chardev=chrtpm",
            "-device",
            "tpm-tis,tpmdev=tpm0",
        ]);
    }
    push(&[
        "-device",
        "virtio-serial-pci,id=vser0",
        "-chardev",
        &format!(
            "socket,id=agent,path={},abstract=on,server=on,wait=off",
            layout.agent_socket
        ),
        "-device",
        "virtserialport,bus=vser0.0,chardev=agent,name=agent.0",
        "-device",
        "virtio-rng-pci",
    ]);
    if let Some(cid) = layout.vsock_cid {
        push(&[
            "-device",
            &format!("vhost-vsock-pci,id=vsock0,guest-cid={cid}"),
        ]);
    }
    if let Some(net) = &spec.network {
        // restrict=on: no route out of the guest but the guestfwd rules.
        let mut netdev = "user,id=net0,restrict=on,net=10.0.2.0/24".to_string();
        // The relay runs through /bin/sh inside a QEMU option list: plain
        // words only.
        let word = |w: &String| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"/._-+:@".contains(&b))
        };
        if !net.forwards.is_empty() && (net.relay.is_empty() || !net.relay.iter().all(word)) {
            return Err(VmError::Invalid(format!(
                "network relay {:?}: a program path and arguments of A-Z, a-z, 0-9, /._-+:@",
                net.relay
            )));
        }
        let slots = spec.state_dir.join("relay-slots");
        let slots = slots.display().to_string();
        if !net.forwards.is_empty() && !word(&slots) {
            return Err(VmError::Invalid(format!(
                "state directory {slots:?}: the relay takes it as a plain word (A-Z, a-z, 0-9, /._-+:@)"
            )));
        }
        for port in &net.forwards {
            netdev.push_str(&format!(
                ",guestfwd=tcp:{}:{port}-cmd:{} 127.0.0.1:{port} {slots}",
                crate::UserNetwork::FORWARD_IP,
                net.relay.join(" ")
            ));
        }
        push(&[
            "-netdev",
            &netdev,
            "-device",
            // No option ROM: the guest boots from -kernel, never the network.
            &format!(
                "virtio-net-pci,netdev=net0,mac={},romfile=",
                crate::UserNetwork::MAC
            ),
        ]);
    }
    if let Some(nic) = &spec.pod_network {
        if !valid_mac(&nic.mac) {
            return Err(VmError::Invalid(format!(
                "pod NIC MAC address '{}'",
                nic.mac
            )));
        }
        push(&[
            "-netdev",
            &format!("tap,id=pod0,fd={TAP_FD}"),
            "-device",
            &format!("virtio-net-pci,netdev=pod0,mac={},romfile=", nic.mac),
        ]);
    }
    if let Some(disk) = &layout.initdata_disk {
        push(&[
            "-drive",
            &format!(
                "file={},if=none,id=initdata,format=raw,readonly=on",
                p(disk)
            ),
            "-device",
            "virtio-blk-pci,drive=initdata,serial=initdata",
        ]);
    }
    Ok(a)
}

/// The `tdx-guest` object as JSON, without its closing brace.
fn serde_json_like_tdx(initdata_digest: Option<&[u8]>) -> String {
    let mut obj = String::from(r#"{"qom-type":"tdx-guest","id":"tdx""#);
    if let Some(d) = initdata_digest {
        obj.push_str(&format!(r#","mrconfigid":"{}""#, B64.encode(fit(d, 48))));
    }
    obj.push_str(
        r#","quote-generation-socket":{"type":"unix","path":"/var/run/tdx-qgs/qgs.socket"}"#,
    );
    obj
}

/// A process started from a keeper thread.
struct Kept {
    pid: u32,
    /// A pidfd of the process (opened before anyone could reap it), so a
    /// signal never reaches another process that reused the pid.
    pidfd: Option<OwnedFd>,
    exit: watch::Receiver<Option<VmExit>>,
}

impl Kept {
    fn signal(&self, sig: libc::c_int) {
        if self.exit.borrow().is_some() {
            return;
        }
        match &self.pidfd {
            // SAFETY: pidfd_send_signal on a pidfd we own.
            Some(fd) => unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    fd.as_raw_fd(),
                    sig,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            },
            // SAFETY: signalling our child, not yet reaped (no exit seen).
            None => unsafe {
                libc::kill(self.pid as libc::pid_t, sig);
            },
        }
    }

    fn kill(&self) {
        self.signal(libc::SIGKILL);
    }
}

/// A pidfd for `pid` (Linux 5.3+); `None` where the kernel has none.
fn pidfd_open(pid: u32) -> Option<OwnedFd> {
    use std::os::fd::FromRawFd;
    // SAFETY: pidfd_open returns a new descriptor or -1.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0) };
    // SAFETY: a fresh descriptor we own.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd as i32) })
}

fn valid_mac(mac: &str) -> bool {
    let parts: Vec<&str> = mac.split(':').collect();
    parts.len() == 6
        && parts
            .iter()
            .all(|p| p.len() == 2 && p.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// Opens the tap device `tap` of network namespace `netns` (from a thread
/// that enters the namespace; the descriptor stays bound to the device).
fn open_tap(netns: &Path, tap: &str) -> Result<OwnedFd, VmError> {
    if tap.is_empty() || tap.len() >= libc::IFNAMSIZ || tap.contains(['/', ' ', '\0']) {
        return Err(VmError::Invalid(format!("tap device name '{tap}'")));
    }
    let (netns, name) = (netns.to_path_buf(), tap.to_string());
    let what = format!("opening tap {tap} in {}", netns.display());
    std::thread::spawn(move || -> std::io::Result<OwnedFd> {
        use std::os::fd::FromRawFd;
        let ns = std::fs::File::open(&netns)?;
        // SAFETY: setns on this (short-lived) thread only.
        if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let tun = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/net/tun")?;
        // SAFETY: a zeroed ifreq with the name and flags TUNSETIFF reads.
        let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
        for (d, s) in req.ifr_name.iter_mut().zip(name.bytes()) {
            *d = s as libc::c_char;
        }
        req.ifr_ifru.ifru_flags = (libc::IFF_TAP | libc::IFF_NO_PI) as libc::c_short;
        // SAFETY: TUNSETIFF with a valid ifreq on the tun device.
        if unsafe { libc::ioctl(tun.as_raw_fd(), libc::TUNSETIFF, &mut req) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let raw = std::os::fd::IntoRawFd::into_raw_fd(tun);
        // SAFETY: we own the descriptor just released.
        Ok(unsafe { OwnedFd::from_raw_fd(raw) })
    })
    .join()
    .map_err(|_| VmError::Start(format!("{what}: the thread failed")))?
    .map_err(|e| VmError::Io(what, e))
}

/// Marks every descriptor from `first` up close-on-exec. Runs between
/// fork and exec: system calls only. `close_range` does it in one call
/// (Linux 5.11); older kernels get [`cloexec_listed`].
fn cloexec_from(first: i32) -> std::io::Result<()> {
    // SAFETY: close_range with the CLOEXEC flag only sets flags.
    let r = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first as libc::c_uint,
            libc::c_uint::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if r == 0 {
        return Ok(());
    }
    cloexec_listed(first)
}

/// [`cloexec_from`] by the open descriptors `/proc/self/fd` lists, read
/// with `getdents64` into a buffer on the stack: no allocation, so it may
/// run between fork and exec.
fn cloexec_listed(first: i32) -> std::io::Result<()> {
    // SAFETY: a NUL-terminated path; the descriptor is closed below.
    let dir = unsafe {
        libc::open(
            c"/proc/self/fd".as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if dir < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = [0u8; 4096];
    let r = loop {
        // SAFETY: getdents64 writes at most buf.len() bytes into buf.
        let n = unsafe { libc::syscall(libc::SYS_getdents64, dir, buf.as_mut_ptr(), buf.len()) };
        if n < 0 {
            break Err(std::io::Error::last_os_error());
        }
        if n == 0 {
            break Ok(());
        }
        // Each record: inode (8), offset (8), record length (2), type
        // (1), then the NUL-terminated name.
        let mut at = 0usize;
        while at + 19 < n as usize {
            let len = u16::from_ne_bytes([buf[at + 16], buf[at + 17]]) as usize;
            if len == 0 {
                break;
            }
            let mut fd: i32 = 0;
            let mut digits = 0;
            for &b in buf[at + 19..(at + len).min(n as usize)].iter() {
                if !b.is_ascii_digit() {
                    break;
                }
                fd = fd.saturating_mul(10).saturating_add(i32::from(b - b'0'));
                digits += 1;
            }
            if digits > 0 && fd >= first && fd != dir {
                // SAFETY: F_SETFD on a descriptor this process has open.
                unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
            }
            at += len;
        }
    };
    // SAFETY: the directory descriptor opened above.
    unsafe { libc::close(dir) };
    r
}

/// Puts each `(from, to)` descriptor at `to` for the exec that follows,
/// and marks every other descriptor from 3 up close-on-exec: the child
/// holds its stdio and exactly the descriptors given, whatever its
/// starter inherited (containerd hands its shims descriptors that are not
/// close-on-exec). `scratch` has one slot per pair. Runs between fork and
/// exec: system calls only.
fn place_descriptors(fds: &[(i32, i32)], scratch: &mut [i32]) -> std::io::Result<()> {
    let above = fds.iter().map(|&(_, to)| to + 1).max().unwrap_or(3).max(3);
    // Every source first moves above every target, so no dup2 below
    // overwrites a source still to be placed.
    for (&(from, _), slot) in fds.iter().zip(scratch.iter_mut()) {
        // SAFETY: F_DUPFD_CLOEXEC duplicates a descriptor we hold.
        let d = unsafe { libc::fcntl(from, libc::F_DUPFD_CLOEXEC, above) };
        if d < 0 {
            return Err(std::io::Error::last_os_error());
        }
        *slot = d;
    }
    cloexec_from(3)?;
    for (&(_, to), &d) in fds.iter().zip(scratch.iter()) {
        // dup2 leaves the new descriptor without close-on-exec.
        // SAFETY: both are descriptors of this process.
        if unsafe { libc::dup2(d, to) } < 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// The absolute directories of a search path as glibc's loader splits it
/// (at `:` and `;`), in order, joined by `:`; none when it has none.
/// Empty and relative entries name directories relative to wherever the
/// process runs.
fn absolute_search_path(v: &std::ffi::OsStr) -> Option<std::ffi::OsString> {
    use std::os::unix::ffi::{OsStrExt, OsStringExt};
    let kept: Vec<&[u8]> = v
        .as_bytes()
        .split(|&b| b == b':' || b == b';')
        .filter(|e| e.first() == Some(&b'/'))
        .collect();
    (!kept.is_empty()).then(|| std::ffi::OsString::from_vec(kept.join(&b':')))
}

/// Starts `cmd` from a thread that waits for it: the child gets SIGKILL
/// when that thread (and so this process) dies. Each of `fds` is passed
/// to the child at its number ([`place_descriptors`]).
fn spawn_kept(mut cmd: Command, name: &str, fds: Vec<(OwnedFd, i32)>) -> Result<Kept, VmError> {
    let parent = std::process::id() as libc::pid_t;
    // containerd starts shims with `LD_LIBRARY_PATH=/opt/containerd/lib:`,
    // whose empty entry is the current directory: QEMU and swtpm run as
    // root and look for libraries only where the path names a directory.
    // (No caller clears the environment, which `get_envs` would not show.)
    let libs = cmd
        .get_envs()
        .find(|(k, _)| *k == "LD_LIBRARY_PATH")
        .map(|(_, v)| v.map(std::ffi::OsStr::to_os_string))
        .unwrap_or_else(|| std::env::var_os("LD_LIBRARY_PATH"));
    if let Some(v) = libs {
        match absolute_search_path(&v) {
            Some(clean) => cmd.env("LD_LIBRARY_PATH", clean),
            None => cmd.env_remove("LD_LIBRARY_PATH"),
        };
    }
    let raw: Vec<(i32, i32)> = fds.iter().map(|(f, n)| (f.as_raw_fd(), *n)).collect();
    // Allocated here: nothing may allocate between fork and exec.
    let mut scratch = vec![-1; raw.len()];
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(move || {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            // The driver died between fork and prctl: nobody would kill us.
            if libc::getppid() != parent {
                libc::_exit(1);
            }
            // Nothing else this process holds reaches the child: the VM's
            // processes face the guest.
            place_descriptors(&raw, &mut scratch)
        });
    }
    let (tx_pid, rx_pid) = std::sync::mpsc::channel();
    let (tx_exit, rx_exit) = watch::channel(None);
    let label = name.to_string();
    std::thread::Builder::new()
        .name(format!("keep-{name}"))
        .spawn(move || {
            let child = cmd.spawn();
            // The parent's copies of the child's stdio (a pipe's write end)
            // close now, so readers see the end when the child exits.
            drop(cmd);
            drop(fds);
            let mut child = match child {
                Ok(c) => c,
                Err(e) => {
                    let _ = tx_pid.send(Err(e));
                    return;
                }
            };
            // Opened before this thread waits: the pid is still ours.
            let _ = tx_pid.send(Ok((child.id(), pidfd_open(child.id()))));
            let status = child.wait();
            use std::os::unix::process::ExitStatusExt;
            let exit = match status {
                Ok(s) => match (s.code(), s.signal()) {
                    (Some(c), _) => VmExit::Exited(c),
                    (None, Some(sig)) => VmExit::Signaled(sig),
                    _ => VmExit::Exited(-1),
                },
                Err(_) => VmExit::Exited(-1),
            };
            tracing::debug!(process = %label, ?exit, "exited");
            let _ = tx_exit.send(Some(exit));
        })
        .map_err(|e| VmError::Io(format!("starting {name}"), e))?;
    let (pid, pidfd) = rx_pid
        .recv()
        .map_err(|_| VmError::Start(format!("{name} did not start")))?
        .map_err(|e| VmError::Io(format!("starting {name}"), e))?;
    Ok(Kept {
        pid,
        pidfd,
        exit: rx_exit,
    })
}

/// Most console output kept per VM.
pub const CONSOLE_MAX: u64 = 16 << 20;

/// Copies `from` to `to` until `from` ends, keeping at most `max` bytes
/// and a line that says the rest was dropped (it is still read, so the
/// writer never blocks on a full pipe).
pub(crate) fn copy_capped(mut from: impl std::io::Read, mut to: impl std::io::Write, max: u64) {
    let mut buf = vec![0u8; 64 << 10];
    let mut kept = 0u64;
    let mut dropped = false;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(_) => return,
        };
        if dropped {
            continue;
        }
        let room = usize::try_from(max.saturating_sub(kept)).unwrap_or(usize::MAX);
        let take = n.min(room);
        if to.write_all(&buf[..take]).is_err() {
            dropped = true;
            continue;
        }
        kept += take as u64;
        if take < n {
            let _ = writeln!(
                to,
                "\n[console log truncated after {max} bytes: the rest of the guest's output was dropped]"
            );
            dropped = true;
        }
        let _ = to.flush();
    }
}

async fn wait_kept(k: &Kept) -> VmExit {
    let mut rx = k.exit.clone();
    loop {
        if let Some(e) = rx.borrow_and_update().clone() {
            return e;
        }
        if rx.changed().await.is_err() {
            return VmExit::Exited(-1);
        }
    }
}

fn find(prog: &str) -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| Path::new(d).join(prog))
        .find(|p| p.is_file())
}

/// The local QEMU driver.
#[derive(Debug, Clone)]
pub struct Qemu {
    qemu: PathBuf,
    swtpm: Option<PathBuf>,
}

impl Qemu {
    /// Finds `qemu-system-x86_64` (and `swtpm`, needed for vtpm mode).
    pub fn new() -> Result<Self, VmError> {
        let qemu = find("qemu-system-x86_64").ok_or_else(|| {
            VmError::Missing(
                "qemu-system-x86_64".into(),
                "not on PATH".into(),
                "apt-get install qemu-system-x86 ovmf",
            )
        })?;
        Ok(Self {
            qemu,
            swtpm: find("swtpm"),
        })
    }

    /// The QEMU binary.
    pub fn binary(&self) -> &Path {
        &self.qemu
    }
}

/// A VM run by [`Qemu`].
pub struct QemuVm {
    qemu: Kept,
    swtpm: Option<Kept>,
    agent_socket: String,
    vsock_cid: Option<u32>,
    state_dir: PathBuf,
    initdata_digest: Option<Vec<u8>>,
    accel: Accel,
}

/// The file in a state directory naming the driver that owns it.
const OWNER: &str = "owner";

/// `pid start-time` of this process (start time from /proc, so a reused
/// pid is not taken for the owner); `None` once it has died, including
/// while it waits to be reaped.
fn owner_tag(pid: u32) -> Option<String> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let after = stat.rsplit_once(')')?.1;
    let mut fields = after.split_whitespace();
    if matches!(fields.next(), Some("Z" | "X")) {
        return None;
    }
    let start = fields.nth(18)?;
    Some(format!("{pid} {start}"))
}

/// Whether process `pid` runs (exists and is not a zombie).
pub fn running(pid: u32) -> bool {
    owner_tag(pid).is_some()
}

/// Whether the VM state directory `dir` names its owner, and that owner
/// (the driver that made it) still runs: `None` without an owner file.
pub fn owner_alive(dir: &Path) -> Option<bool> {
    let tag = std::fs::read_to_string(dir.join(OWNER)).ok()?;
    Some(
        tag.split_whitespace()
            .next()
            .and_then(|p| p.parse::<u32>().ok())
            .and_then(owner_tag)
            .is_some_and(|t| t == tag.trim()),
    )
}

/// Removes VM state directories under `parent` whose driver is gone
/// (killed before it could clean up).
pub fn gc_stale(parent: &Path) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for e in rd.flatten() {
        let dir = e.path();
        if owner_alive(&dir) == Some(false) {
            tracing::info!(dir = %dir.display(), "removing the state of a VM whose driver died");
            let _ = std::fs::remove_dir_all(&dir);
        }
    }
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> VmError {
    let w = what.into();
    move |e| VmError::Io(w, e)
}

#[async_trait::async_trait]
impl Hypervisor for Qemu {
    async fn start(&self, spec: VmSpec) -> Result<Box<dyn Vm>, VmError> {
        let accel = match spec.accel {
            Some(a) => a,
            None => {
                let (qemu, kernel) = (self.qemu.clone(), spec.kernel.clone());
                let cache = spec.state_dir.parent().map(Path::to_path_buf);
                tokio::task::spawn_blocking(move || {
                    crate::kvm::accel_for(&qemu, &kernel, cache.as_deref())
                })
                .await
                .unwrap_or(Accel::Tcg)
            }
        };
        std::fs::create_dir_all(&spec.state_dir)
            .map_err(io(format!("creating {}", spec.state_dir.display())))?;
        let tag = owner_tag(std::process::id()).unwrap_or_default();
        std::fs::write(spec.state_dir.join(OWNER), &tag).map_err(io("writing the owner file"))?;
        let mut vm = self.launch(&spec, accel).await;
        // A vsock context id another VM holds: try other ids.
        for _ in 0..3 {
            match &vm {
                Err(VmError::Start(m)) if m.contains("guest-cid") || m.contains("guest cid") => {
                    vm = self.launch(&spec, accel).await;
                }
                _ => break,
            }
        }
        if vm.is_err() {
            let _ = std::fs::remove_dir_all(&spec.state_dir);
        }
        vm
    }
}

impl Qemu {
    async fn launch(&self, spec: &VmSpec, accel: Accel) -> Result<Box<dyn Vm>, VmError> {
        let (digest, disk) = match &spec.initdata {
            Some(text) => {
                let d = InitData::parse(text)?;
                let path = spec.state_dir.join("initdata.img");
                std::fs::write(&path, disk_image(text)).map_err(io("writing the initdata disk"))?;
                (Some(d.digest), Some(path))
            }
            None => (None, None),
        };
        let layout = Layout {
            agent_socket: format!("cocoon-agent-{}-{}", spec.id, std::process::id()),
            initdata_disk: disk,
            vsock_cid: vhost_vsock_usable().then(new_cid),
        };
        let snp = if spec.mode == Mode::Snp {
            SnpCpu::host()
        } else {
            None
        };
        let argv = args(spec, accel, &layout, digest.as_deref(), snp)?;
        if let Some(fw) = spec
            .firmware
            .clone()
            .or_else(|| default_firmware(spec.mode).map(PathBuf::from))
            && !fw.is_file()
        {
            return Err(VmError::Missing(
                format!("firmware {}", fw.display()),
                "no such file".into(),
                "apt-get install ovmf",
            ));
        }
        let mut swtpm = None;
        let mut fds: Vec<(OwnedFd, i32)> = Vec::new();
        if spec.mode == Mode::Vtpm {
            let bin = self.swtpm.clone().ok_or_else(|| {
                VmError::Missing(
                    "swtpm".into(),
                    "not on PATH".into(),
                    "apt-get install swtpm",
                )
            })?;
            let (ours, theirs) = std::os::unix::net::UnixStream::pair()
                .map_err(io("creating the vTPM socket pair"))?;
            let tpm_dir = spec.state_dir.join("tpm");
            std::fs::create_dir_all(&tpm_dir).map_err(io("creating the vTPM state directory"))?;
            if let Some(ca) = spec.vtpm_ca.clone() {
                let dir = tpm_dir.clone();
                // A state manufactured ahead, when the CA's pool has one.
                tokio::task::spawn_blocking(move || cocoon_tpm::swtpm::provision(&dir, &ca))
                    .await
                    .map_err(|e| VmError::Start(format!("vTPM manufacture: {e}")))?
                    .map_err(|e| VmError::Start(format!("certifying the vTPM: {e}")))?;
            }
            let mut cmd = Command::new(bin);
            cmd.args(["socket", "--tpm2", "--tpmstate"])
                .arg(format!("dir={}", tpm_dir.display()))
                .args(["--ctrl", &format!("type=unixio,clientfd={SWTPM_FD}")])
                .arg("--log")
                .arg(format!(
                    "file={},level=1",
                    spec.state_dir.join("swtpm.log").display()
                ))
                .arg("--terminate")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null());
            swtpm = Some(spawn_kept(cmd, "swtpm", vec![(theirs.into(), SWTPM_FD)])?);
            fds.push((OwnedFd::from(ours), TPM_FD));
        }
        let console =
            std::fs::File::create(&spec.console_log).map_err(io("creating the console log"))?;
        let (console_r, console_w) = std::io::pipe().map_err(io("creating the console pipe"))?;
        std::thread::Builder::new()
            .name("console".into())
            .spawn(move || copy_capped(console_r, console, CONSOLE_MAX))
            .map_err(io("starting the console copier"))?;
        let mut cmd = Command::new(&self.qemu);
        cmd.args(&argv)
            .stdin(Stdio::null())
            .stdout(Stdio::from(console_w))
            .stderr(
                std::fs::File::create(spec.state_dir.join("qemu.log"))
                    .map(Stdio::from)
                    .unwrap_or_else(|_| Stdio::null()),
            );
        tracing::debug!(args = ?argv, "starting QEMU");
        if let Some(nic) = &spec.pod_network {
            match open_tap(&nic.netns, &nic.tap) {
                Ok(fd) => fds.push((fd, TAP_FD)),
                Err(e) => {
                    if let Some(s) = &swtpm {
                        s.kill();
                    }
                    return Err(e);
                }
            }
        }
        let qemu = match spawn_kept(cmd, "qemu", fds) {
            Ok(q) => q,
            Err(e) => {
                if let Some(s) = &swtpm {
                    s.kill();
                }
                return Err(e);
            }
        };
        // QEMU fails fast on bad arguments: report its own words.
        tokio::time::sleep(std::time::Duration::from_millis(150)).await;
        if let Some(exit) = qemu.exit.borrow().clone() {
            let log = std::fs::read_to_string(spec.state_dir.join("qemu.log")).unwrap_or_default();
            if let Some(s) = &swtpm {
                s.kill();
            }
            return Err(VmError::Start(format!(
                "QEMU exited ({exit:?}): {}",
                log.trim()
            )));
        }
        Ok(Box::new(QemuVm {
            qemu,
            swtpm,
            agent_socket: layout.agent_socket,
            vsock_cid: layout.vsock_cid,
            state_dir: spec.state_dir.clone(),
            initdata_digest: digest,
            accel,
        }))
    }
}

#[async_trait::async_trait]
impl Vm for QemuVm {
    fn agent_address(&self) -> String {
        match self.vsock_cid {
            Some(cid) => format!("vsock://{cid}:{AGENT_VSOCK_PORT}"),
            None => format!("unix://@{}", self.agent_socket),
        }
    }

    fn initdata_digest(&self) -> Option<Vec<u8>> {
        self.initdata_digest.clone()
    }

    fn accel(&self) -> Accel {
        self.accel
    }

    fn pids(&self) -> Vec<u32> {
        std::iter::once(self.qemu.pid)
            .chain(self.swtpm.as_ref().map(|s| s.pid))
            .collect()
    }

    async fn wait(&self) -> VmExit {
        wait_kept(&self.qemu).await
    }

    async fn stop(&self) -> Result<VmExit, VmError> {
        self.qemu.signal(libc::SIGTERM);
        let exit =
            match tokio::time::timeout(std::time::Duration::from_secs(5), wait_kept(&self.qemu))
                .await
            {
                Ok(e) => e,
                Err(_) => {
                    self.qemu.kill();
                    wait_kept(&self.qemu).await
                }
            };
        // swtpm's --terminate ends it when QEMU goes; make sure.
        if let Some(s) = &self.swtpm
            && s.exit.borrow().is_none()
            && tokio::time::timeout(std::time::Duration::from_secs(2), wait_kept(s))
                .await
                .is_err()
        {
            s.kill();
            wait_kept(s).await;
        }
        std::fs::remove_dir_all(&self.state_dir)
            .or_else(|e| {
                if e.kind() == std::io::ErrorKind::NotFound {
                    Ok(())
                } else {
                    Err(e)
                }
            })
            .map_err(io(format!("removing {}", self.state_dir.display())))?;
        Ok(exit)
    }
}

impl Drop for QemuVm {
    fn drop(&mut self) {
        // A VM is never left running by a dropped handle.
        self.qemu.kill();
        if let Some(s) = &self.swtpm {
            s.kill();
        }
    }
}

#[cfg(test)]
mod tests;
