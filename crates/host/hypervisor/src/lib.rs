//! The host side of a pod VM: a driver that starts a VM from a guest image,
//! hands it the pod's initdata bound into its TEE evidence, connects the
//! agent channel, captures the console and tears everything down on every
//! path. The driver sits behind [`Hypervisor`], so a remote (peer-pod)
//! provider can stand beside the local QEMU one without its callers
//! changing. This crate never links the guest's secret-holding code: it
//! handles the initdata document (public configuration) and bytes on the
//! agent channel only.

pub mod kvm;
pub mod qemu;

use std::path::PathBuf;

pub use qemu::Qemu;

/// How the guest is isolated and measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Mode {
    /// A plain VM (development; nothing is measured).
    None,
    /// OVMF measured boot and a fresh software TPM per VM: the vTPM PCRs
    /// cover firmware, kernel, initrd and command line; initdata goes to
    /// PCR 8.
    Vtpm,
    /// Intel TDX: initdata in MRCONFIGID.
    Tdx,
    /// AMD SEV-SNP: initdata in HOST_DATA, kernel hashes in the launch digest.
    Snp,
}

impl std::str::FromStr for Mode {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Mode::None),
            "vtpm" => Ok(Mode::Vtpm),
            "tdx" => Ok(Mode::Tdx),
            "snp" => Ok(Mode::Snp),
            o => Err(format!("unknown VM mode '{o}': use none, vtpm, tdx or snp")),
        }
    }
}

/// How the CPU is virtualized.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Accel {
    /// Hardware virtualization.
    Kvm,
    /// Software emulation (QEMU TCG).
    Tcg,
}

/// Everything a VM is started from.
#[derive(Debug, Clone)]
pub struct VmSpec {
    /// Identifier (pod sandbox id); names the VM and its files.
    pub id: String,
    /// Isolation mode.
    pub mode: Mode,
    /// `None`: probe (KVM when it really works, else TCG).
    pub accel: Option<Accel>,
    /// Virtual CPUs.
    pub vcpus: u32,
    /// Memory, MiB.
    pub memory_mib: u32,
    /// Guest kernel.
    pub kernel: PathBuf,
    /// Guest initramfs.
    pub initrd: PathBuf,
    /// Kernel command line.
    pub cmdline: String,
    /// Firmware: OVMF (vtpm), TDVF (tdx), AMDSEV.fd (snp). `None`: the
    /// distribution's default for the mode.
    pub firmware: Option<PathBuf>,
    /// The pod's initdata document (TOML), if any.
    pub initdata: Option<String>,
    /// Directory for this VM's files (created; removed on teardown).
    pub state_dir: PathBuf,
    /// Where the guest console is written (kept after teardown).
    pub console_log: PathBuf,
    /// A NIC on QEMU's user network, or none.
    pub network: Option<UserNetwork>,
    /// vtpm mode: the directory of the local CA that certifies each VM's
    /// fresh vTPM as its manufacturer (an EK certificate in NV, made with
    /// `swtpm_setup`; the CA is created there on first use). The guest
    /// then enrolls its attestation key with a trustee given the CA's
    /// certificates (`cocoon_tpm::swtpm::ca_certs_dir`). `None`: a vTPM
    /// without an EK certificate; the guest's attestation key, made at
    /// boot, then has nothing a trustee can enroll it by.
    pub vtpm_ca: Option<PathBuf>,
    /// A second NIC on the pod's own network (the namespace CNI set up).
    pub pod_network: Option<PodNic>,
}

/// A guest NIC joined to a pod's network namespace: the tap device
/// `tap` there (whose traffic the caller mirrors to and from the
/// namespace's interface) carries the guest's frames, under `mac`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodNic {
    /// The network namespace (`/var/run/netns/...`).
    pub netns: PathBuf,
    /// The tap device in it.
    pub tap: String,
    /// The guest NIC's MAC address (the namespace interface's own).
    pub mac: String,
}

/// A guest NIC on QEMU's user-mode network, restricted: the guest reaches
/// nothing but the host loopback ports listed here, each at
/// [`UserNetwork::FORWARD_IP`]`:port`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UserNetwork {
    /// Host loopback ports (`127.0.0.1:port`) the guest may connect to.
    pub forwards: Vec<u16>,
    /// The relay QEMU runs per guest connection, with `127.0.0.1:PORT`
    /// and the VM's relay slot directory appended: a program that calls
    /// [`tcp_relay`] (such as `cocoon __tcp-relay`). QEMU's plain TCP
    /// forward carries one connection per rule for the VM's life; a
    /// command per connection carries up to [`MAX_RELAYS`] at once.
    pub relay: Vec<String>,
}

/// Guest connections to forwarded ports one VM may hold open at once
/// (each is a relay process on the host).
pub const MAX_RELAYS: usize = 64;

/// One of `max` relay slots in `dir` (created, owner-only), held as a
/// lock for as long as the returned file is open; none when all are taken.
pub fn relay_slot(dir: &std::path::Path, max: usize) -> std::io::Result<Option<std::fs::File>> {
    use std::os::unix::fs::DirBuilderExt;
    match std::fs::DirBuilder::new().mode(0o700).create(dir) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {}
        Err(e) => return Err(e),
    }
    for i in 0..max {
        let f = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(i.to_string()))?;
        match f.try_lock() {
            Ok(()) => return Ok(Some(f)),
            Err(std::fs::TryLockError::WouldBlock) => continue,
            Err(std::fs::TryLockError::Error(e)) => return Err(e),
        }
    }
    Ok(None)
}

/// Copies standard input to a TCP connection to `target` and the
/// connection to standard output, until both directions end: the relay
/// QEMU runs for each guest connection of a [`UserNetwork`] forward.
/// With `slots` (the VM's slot directory), it first takes one of
/// [`MAX_RELAYS`] slots, and refuses the connection when all are taken,
/// so a guest cannot start host processes without bound.
pub fn tcp_relay(target: &str, slots: Option<&std::path::Path>) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::fd::AsFd;
    let addr: std::net::SocketAddr = target
        .parse()
        .map_err(|_| std::io::Error::other(format!("'{target}' is not ip:port")))?;
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::other(format!(
            "{addr} is not a loopback address"
        )));
    }
    let _slot = match slots {
        Some(dir) => Some(relay_slot(dir, MAX_RELAYS)?.ok_or_else(|| {
            std::io::Error::other(format!(
                "the VM already holds {MAX_RELAYS} forwarded connections"
            ))
        })?),
        None => None,
    };
    let sock = std::net::TcpStream::connect(addr)?;
    let mut up = sock.try_clone()?;
    let t = std::thread::spawn(move || {
        let _ = std::io::copy(&mut std::io::stdin().lock(), &mut up);
        let _ = up.shutdown(std::net::Shutdown::Write);
    });
    let mut down = sock;
    // Unbuffered: Rust's stdout holds bytes back until a newline.
    let mut out = std::fs::File::from(std::io::stdout().as_fd().try_clone_to_owned()?);
    std::io::copy(&mut down, &mut out)?;
    out.flush()?;
    // The target closed: so does the guest's side, for writing (QEMU
    // gives the relay one socket as stdin and stdout), or the guest's
    // client would send its next request on a connection nobody reads.
    // SAFETY: shutdown on a descriptor this process holds.
    unsafe { libc::shutdown(std::os::fd::AsRawFd::as_raw_fd(&out), libc::SHUT_WR) };
    let _ = t.join();
    Ok(())
}

impl UserNetwork {
    /// The guest's address and prefix length.
    pub const GUEST_IP: &str = "10.0.2.15";
    /// Prefix length of the guest network.
    pub const PREFIX: u8 = 24;
    /// The gateway (QEMU's slirp).
    pub const GATEWAY: &str = "10.0.2.2";
    /// Where forwarded host ports appear in the guest.
    pub const FORWARD_IP: &str = "10.0.2.100";
    /// The NIC's MAC address (one NIC per VM).
    pub const MAC: &str = "52:54:00:c0:c0:01";
}

/// Why a VM could not be started or stopped.
#[derive(Debug, thiserror::Error)]
pub enum VmError {
    /// A required program is missing.
    #[error("{0} is not installed ({1}): install it (Debian: {2})")]
    Missing(String, String, &'static str),
    /// The spec cannot work.
    #[error("invalid VM settings: {0}")]
    Invalid(String),
    /// The initdata document is not valid.
    #[error("initdata: {0}")]
    InitData(#[from] cocoon_types::initdata::InitDataError),
    /// The VM did not come up.
    #[error("the VM failed to start: {0}")]
    Start(String),
    /// Files and processes.
    #[error("{0}: {1}")]
    Io(String, std::io::Error),
}

/// How a VM ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VmExit {
    /// The VMM exited with this status (0: the guest powered off).
    Exited(i32),
    /// The VMM was killed by this signal.
    Signaled(i32),
}

/// A running VM.
#[async_trait::async_trait]
pub trait Vm: Send + Sync {
    /// The ttrpc address of the guest agent (`unix://@...`).
    fn agent_address(&self) -> String;
    /// Digest of the initdata bound into the VM (the algorithm the
    /// document declares), if it was given one.
    fn initdata_digest(&self) -> Option<Vec<u8>>;
    /// How the CPU is virtualized.
    fn accel(&self) -> Accel;
    /// Host processes serving this VM (VMM, vTPM); empty for remote VMs.
    fn pids(&self) -> Vec<u32>;
    /// Waits until the VM ends.
    async fn wait(&self) -> VmExit;
    /// Stops the VM (and its helpers), removes its state directory.
    async fn stop(&self) -> Result<VmExit, VmError>;
}

/// Starts VMs.
#[async_trait::async_trait]
pub trait Hypervisor: Send + Sync {
    /// Starts a VM; returns once its processes run (the agent may still be
    /// booting: callers poll the agent's health check).
    async fn start(&self, spec: VmSpec) -> Result<Box<dyn Vm>, VmError>;
}
