//! The pod VM's guest image: Debian's kernel (pinned, [`debian::KERNEL`])
//! and an initramfs holding the static guest binary as `/init` and the few
//! kernel modules it loads. The build is reproducible: the same kernel
//! package and guest binary give the same bytes (sorted archive, zero
//! times, root ownership, single-threaded zstd when compressed).
//!
//! Output directory: `vmlinuz`, `initrd.img`, `cmdline`, `manifest.json`
//! (what went in, the digests of kernel, initrd and command line, and the
//! measurements that follow from them).

pub mod cpio;
pub mod debian;
pub mod elf;
pub mod modules;
pub mod ovmf;
pub mod snp;
pub mod tdx;
pub mod vtpm;

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256, Sha384};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// Modules the guest loads before its agent answers (their dependencies
/// come along): the virtio transport, the agent port and the initdata disk.
pub const EARLY_MODULES: &[&str] = &["virtio_pci", "virtio_console", "virtio_blk"];

/// Modules the guest loads once its agent answers, in this order (each
/// after its dependencies): the network first, which the host configures
/// next, then entropy. Container root filesystems are plain directories
/// (the image is unpacked in the guest), so no overlayfs.
pub const LATE_MODULES: &[&str] = &["virtio_net", "virtio_rng"];

/// Modules the guest loads after the late ones only when the VM has a
/// virtio vsock device: the agent's vsock listener.
pub const VSOCK_MODULES: &[&str] = &["vmw_vsock_virtio_transport"];

/// The kernel command line the image is built for. `panic=-1` reboots at
/// once on a panic, which the VMM turns into an exit (`-no-reboot`).
/// `rootfstype=ramfs` unpacks the initramfs into ramfs rather than tmpfs:
/// under software emulation that took 0.13 s instead of 0.63 s for the
/// plain 17 MB archive, and nothing writes to the root but PID 1 (`/run`
/// and `/tmp` are tmpfs mounts of their own).
pub const DEFAULT_CMDLINE: &str = "console=ttyS0 quiet panic=-1 reboot=t rootfstype=ramfs";

/// Where the initramfs keeps modules, in load order.
pub const MODULE_DIR: &str = "lib/modules";
/// Load order of the early modules in [`MODULE_DIR`], one name per line.
pub const MODULE_ORDER: &str = "lib/modules/order";
/// Load order of the late modules (after the early ones).
pub const MODULE_ORDER_LATE: &str = "lib/modules/order.late";
/// Load order of the vsock modules (after the late ones, with a vsock
/// device only).
pub const MODULE_ORDER_VSOCK: &str = "lib/modules/order.vsock";

pub use vtpm::{CMDLINE_PCR, OVMF_INITRD_ARG};

/// What to build.
#[derive(Debug, Clone)]
pub struct BuildOptions {
    /// Output directory (created).
    pub out_dir: PathBuf,
    /// The static guest binary.
    pub guest_binary: PathBuf,
    /// Download and unpack cache.
    pub cache_dir: PathBuf,
    /// The pinned kernel package as a file, instead of downloading it.
    pub kernel_deb: Option<PathBuf>,
    /// Kernel command line ([`DEFAULT_CMDLINE`] when `None`).
    pub cmdline: Option<String>,
    /// How the initramfs is compressed.
    pub compression: Compression,
    /// Whether the modules keep the package's signatures.
    pub module_signatures: ModuleSignatures,
}

/// What the initramfs's modules carry of the signatures Debian appended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ModuleSignatures {
    /// Dropped ([`modules::strip_signature`]): each module loads about
    /// 3 ms sooner under software emulation, and the kernel marks itself
    /// tainted (`E`).
    #[default]
    Strip,
    /// Kept, for a kernel that enforces them (`module.sig_enforce=1` on
    /// the command line, or lockdown under UEFI Secure Boot).
    Keep,
}

impl ModuleSignatures {
    /// What a manifest from before this choice existed means.
    fn kept() -> Self {
        Self::Keep
    }
}

impl std::str::FromStr for ModuleSignatures {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "strip" => Ok(Self::Strip),
            "keep" => Ok(Self::Keep),
            o => Err(format!(
                "unknown module signature choice '{o}': use strip or keep"
            )),
        }
    }
}

/// Initramfs compression.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain cpio: no decompression at boot (0.4 s less for a plain VM
    /// under software emulation here), but four times the bytes for
    /// firmware to load and measure (slower in vtpm mode).
    None,
    /// zstd level 19: about a quarter of the size.
    #[default]
    Zstd,
}

impl std::str::FromStr for Compression {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "none" => Ok(Self::None),
            "zstd" => Ok(Self::Zstd),
            o => Err(format!("unknown compression '{o}': use none or zstd")),
        }
    }
}

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// Getting the kernel.
    #[error(transparent)]
    Kernel(#[from] debian::KernelError),
    /// Module resolution.
    #[error(transparent)]
    Modules(#[from] modules::ModuleError),
    /// The archive.
    #[error(transparent)]
    Cpio(#[from] cpio::CpioError),
    /// The guest binary is not usable as PID 1.
    #[error("{0}: {1}")]
    Guest(PathBuf, String),
    /// A bad command line.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// The kernel cannot be measured as firmware would.
    #[error("measuring the kernel: {0}")]
    Measure(String),
    /// Files.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> BuildError + '_ {
    move |e| BuildError::Io(p.to_path_buf(), e)
}

/// A file's size and digests.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct FileDigest {
    /// File name in the output directory.
    pub file: String,
    /// Bytes.
    pub size: u64,
    /// SHA-256, hex.
    pub sha256: String,
    /// SHA-384, hex.
    pub sha384: String,
}

impl FileDigest {
    fn of(file: &str, bytes: &[u8]) -> Self {
        Self {
            file: file.into(),
            size: bytes.len() as u64,
            sha256: hex::encode(Sha256::digest(bytes)),
            sha384: hex::encode(Sha384::digest(bytes)),
        }
    }
}

/// Guest memory sizes (MiB) the manifest gives vTPM PCR 4 for. From
/// 2816 MiB up QEMU keeps 2 GiB below 4 GiB, so 2048 stands for those too.
pub const PCR4_MEMORY_MIB: [u32; 4] = [256, 512, 1024, 2048];

/// Measurements that follow from the image alone (see [`vtpm`]).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Measurements {
    /// The kernel file's Authenticode SHA-256.
    pub kernel_authenticode_sha256: String,
    /// vTPM PCR 4 (SHA-256 bank) by guest memory in MiB: QEMU writes the
    /// initrd's placement, which follows the memory size, into the kernel
    /// header OVMF measures.
    pub vtpm_pcr4_sha256_by_memory_mib: BTreeMap<u32, String>,
    /// vTPM PCR 9: the command line and initrd, as the EFI stub measures them.
    pub vtpm_pcr9_sha256: String,
    /// vTPM PCR 12 after PID 1 extends the command line as the kernel got
    /// it from OVMF (with [`OVMF_INITRD_ARG`] appended).
    pub vtpm_pcr12_sha256: String,
    /// vTPM PCRs 2, 3, 5, 6 and 7: OVMF's own boot flow (no secure boot keys).
    pub vtpm_ovmf_flow_pcrs_sha256: BTreeMap<u32, String>,
}

impl Measurements {
    /// The measurements of a kernel, initrd and command line.
    pub fn compute(kernel: &[u8], initrd: &[u8], cmdline: &str) -> Result<Self, String> {
        // Sizes the initrd does not fit in are left out.
        let pcr4: BTreeMap<u32, String> = PCR4_MEMORY_MIB
            .iter()
            .filter_map(|&mib| {
                let v = vtpm::pcr4(kernel, initrd.len(), cmdline, mib).ok()?;
                Some((mib, hex::encode(v)))
            })
            .collect();
        Ok(Self {
            kernel_authenticode_sha256: hex::encode(vtpm::authenticode_sha256(kernel)?),
            vtpm_pcr4_sha256_by_memory_mib: pcr4,
            vtpm_pcr9_sha256: hex::encode(vtpm::pcr9(initrd, cmdline)),
            vtpm_pcr12_sha256: hex::encode(vtpm::pcr12(cmdline)),
            vtpm_ovmf_flow_pcrs_sha256: vtpm::ovmf_flow_pcrs()
                .into_iter()
                .map(|(i, v)| (i, hex::encode(v)))
                .collect(),
        })
    }

    /// vTPM PCR 4 for a VM of `memory_mib`, when the manifest has it.
    pub fn vtpm_pcr4(&self, memory_mib: u32) -> Option<&String> {
        self.vtpm_pcr4_sha256_by_memory_mib
            .get(&vtpm::pcr4_memory_class(memory_mib))
    }

    /// [`Measurements::vtpm_reference_values`] as a CoCo RVPS message
    /// (`{"version":"0.1.0","type":"sample","payload":<base64 JSON>}`,
    /// each name with a one-element list of hex digests).
    pub fn vtpm_rvps_message(&self, memory_mib: u32) -> Result<String, String> {
        Ok(rvps_message(&self.vtpm_reference_values(memory_mib)?))
    }

    /// Reference values (`tpm_pcrN`, hex) for a trustee: every vTPM PCR the
    /// image and OVMF's boot flow determine, for a VM of `memory_mib`.
    /// PCRs 0 and 1 are the platform's (firmware build, QEMU) and are not
    /// among them.
    pub fn vtpm_reference_values(&self, memory_mib: u32) -> Result<Vec<(String, String)>, String> {
        let pcr4 = self.vtpm_pcr4(memory_mib).ok_or_else(|| {
            format!(
                "the manifest has PCR 4 for {PCR4_MEMORY_MIB:?} MiB only, not {memory_mib}: compute it with cocoon_guest_image::vtpm::pcr4"
            )
        })?;
        let mut v: Vec<(u32, String)> = self
            .vtpm_ovmf_flow_pcrs_sha256
            .iter()
            .map(|(i, d)| (*i, d.clone()))
            .collect();
        v.push((4, pcr4.clone()));
        v.push((9, self.vtpm_pcr9_sha256.clone()));
        v.push((CMDLINE_PCR, self.vtpm_pcr12_sha256.clone()));
        v.sort();
        Ok(v.into_iter()
            .map(|(i, d)| (format!("tpm_pcr{i}"), d))
            .collect())
    }
}

/// Reference values (name, hex) as a CoCo RVPS message
/// (`{"version":"0.1.0","type":"sample","payload":<base64 JSON>}`, each
/// name with a one-element list), as `cocoon admin
/// register-reference-values` takes it.
pub fn rvps_message(values: &[(String, String)]) -> String {
    use base64::Engine;
    let map: serde_json::Map<String, serde_json::Value> = values
        .iter()
        .map(|(k, v)| (k.clone(), serde_json::json!([v])))
        .collect();
    let payload = base64::engine::general_purpose::STANDARD
        .encode(serde_json::Value::Object(map).to_string());
    format!("{{\"version\":\"0.1.0\",\"type\":\"sample\",\"payload\":\"{payload}\"}}\n")
}

/// What a build made.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Manifest {
    /// Kernel package name and version.
    pub kernel_package: String,
    /// `uname -r` of the kernel.
    pub kernel_release: String,
    /// SHA-256 of the guest binary.
    pub guest_binary_sha256: String,
    /// Modules in the initramfs, in load order.
    pub modules: Vec<String>,
    /// The kernel.
    pub kernel: FileDigest,
    /// The initramfs (newc cpio, compressed as `compression` says).
    pub initrd: FileDigest,
    /// The initramfs compression.
    pub compression: Compression,
    /// Whether the modules kept their signatures.
    #[serde(default = "ModuleSignatures::kept")]
    pub module_signatures: ModuleSignatures,
    /// The kernel command line.
    pub cmdline: String,
    /// SHA-256 of the command line, hex.
    pub cmdline_sha256: String,
    /// SHA-384 of the command line, hex.
    pub cmdline_sha384: String,
    /// Expected measurements.
    pub measurements: Measurements,
}

impl Manifest {
    /// Reads `manifest.json` from a built image directory.
    pub fn load(dir: &Path) -> Result<Self, BuildError> {
        let p = dir.join("manifest.json");
        let text = std::fs::read(&p).map_err(io(&p))?;
        serde_json::from_slice(&text)
            .map_err(|e| BuildError::Io(p, std::io::Error::other(e.to_string())))
    }
}

/// Checks that `bin` is a statically linked x86-64 ELF executable (a
/// dynamic one cannot run as PID 1 in an initramfs without its loader).
fn check_static(bin: &Path, bytes: &[u8]) -> Result<(), BuildError> {
    let bad = |m: &str| BuildError::Guest(bin.to_path_buf(), m.to_string());
    if bytes.get(..5) != Some(&[0x7f, b'E', b'L', b'F', 2][..]) {
        return Err(bad("not an ELF64 executable"));
    }
    if bytes.get(0x12..0x14) != Some(&0x3eu16.to_le_bytes()[..]) {
        return Err(bad("not an x86-64 executable"));
    }
    // PT_INTERP: needs a dynamic loader.
    if elf::program_header_types(bytes).map_err(bad)?.contains(&3) {
        return Err(bad(
            "dynamically linked; build it static (scripts/build-guest)",
        ));
    }
    Ok(())
}

/// Whether `path` is a static x86-64 executable that can run as PID 1.
pub fn is_static_executable(path: &Path) -> bool {
    std::fs::read(path).is_ok_and(|b| check_static(path, &b).is_ok())
}

/// Builds the image into `opts.out_dir` and returns its manifest.
pub fn build(opts: &BuildOptions) -> Result<Manifest, BuildError> {
    let cmdline = opts.cmdline.as_deref().unwrap_or(DEFAULT_CMDLINE);
    if cmdline.contains('\n') || cmdline.contains('\0') || cmdline.len() > 2048 {
        return Err(BuildError::Cmdline(
            "one line of at most 2048 bytes, without NUL".into(),
        ));
    }
    let pkg = &debian::KERNEL;
    std::fs::create_dir_all(&opts.cache_dir).map_err(io(&opts.cache_dir))?;
    let deb = debian::deb(&opts.cache_dir, pkg, opts.kernel_deb.as_deref())?;
    let root = debian::unpacked(&opts.cache_dir, pkg, &deb)?;
    let kernel_path = root.join(format!("boot/vmlinuz-{}", pkg.release));
    let kernel = std::fs::read(&kernel_path).map_err(io(&kernel_path))?;

    let guest = std::fs::read(&opts.guest_binary).map_err(io(&opts.guest_binary))?;
    check_static(&opts.guest_binary, &guest)?;
    let tree = root.join(format!("lib/modules/{}", pkg.release));
    // Each group in turn, each wanted module after its dependencies and
    // in the order its group lists them; a module already in an earlier
    // group is not repeated.
    let groups = [
        (EARLY_MODULES, MODULE_ORDER),
        (LATE_MODULES, MODULE_ORDER_LATE),
        (VSOCK_MODULES, MODULE_ORDER_VSOCK),
    ];
    let mut mods: Vec<modules::Module> = Vec::new();
    let mut lists = vec![String::new(); groups.len()];
    for ((wanted, _), list) in groups.iter().zip(&mut lists) {
        for w in *wanted {
            for m in modules::resolve(&tree, &[w])? {
                if !mods.contains(&m) {
                    list.push_str(&m.name);
                    list.push('\n');
                    mods.push(m);
                }
            }
        }
    }

    let mut a = cpio::Archive::default();
    a.add("init", cpio::Node::File(guest.clone()), 0o755)?;
    a.add("dev/console", cpio::Node::CharDev(5, 1), 0o600)?;
    a.add("dev/null", cpio::Node::CharDev(1, 3), 0o666)?;
    for d in ["proc", "sys", "run", "tmp", "etc", "mnt", "root"] {
        a.add(d, cpio::Node::Dir, 0o755)?;
    }
    for m in &mods {
        let mut bytes = std::fs::read(&m.path).map_err(io(&m.path))?;
        if opts.module_signatures == ModuleSignatures::Strip {
            let len = modules::strip_signature(&bytes)
                .map_err(|e| modules::ModuleError::Malformed(m.path.clone(), e))?
                .len();
            bytes.truncate(len);
        }
        a.add(
            &format!("{MODULE_DIR}/{}.ko", m.name),
            cpio::Node::File(bytes),
            0o644,
        )?;
    }
    for ((_, path), list) in groups.iter().zip(lists) {
        a.add(path, cpio::Node::File(list.into_bytes()), 0o644)?;
    }
    let archive = a.to_bytes()?;
    let initrd = match opts.compression {
        Compression::None => archive,
        Compression::Zstd => compress(&archive).map_err(io(&opts.out_dir))?,
    };

    let out = &opts.out_dir;
    std::fs::create_dir_all(out).map_err(io(out))?;
    let write = |name: &str, bytes: &[u8]| -> Result<(), BuildError> {
        let p = out.join(name);
        std::fs::write(&p, bytes).map_err(io(&p))
    };
    write("vmlinuz", &kernel)?;
    write("initrd.img", &initrd)?;
    write("cmdline", cmdline.as_bytes())?;
    let manifest = Manifest {
        kernel_package: format!("{}={}", pkg.name, pkg.version),
        kernel_release: pkg.release.into(),
        guest_binary_sha256: hex::encode(Sha256::digest(&guest)),
        modules: mods.iter().map(|m| m.name.clone()).collect(),
        kernel: FileDigest::of("vmlinuz", &kernel),
        initrd: FileDigest::of("initrd.img", &initrd),
        compression: opts.compression,
        module_signatures: opts.module_signatures,
        cmdline: cmdline.into(),
        cmdline_sha256: hex::encode(Sha256::digest(cmdline.as_bytes())),
        cmdline_sha384: hex::encode(Sha384::digest(cmdline.as_bytes())),
        measurements: Measurements::compute(&kernel, &initrd, cmdline)
            .map_err(BuildError::Measure)?,
    };
    let mut json = serde_json::to_vec_pretty(&manifest)
        .map_err(|e| BuildError::Io(out.join("manifest.json"), std::io::Error::other(e)))?;
    json.push(b'\n');
    write("manifest.json", &json)?;
    for mib in manifest.measurements.vtpm_pcr4_sha256_by_memory_mib.keys() {
        let msg = manifest
            .measurements
            .vtpm_rvps_message(*mib)
            .map_err(BuildError::Measure)?;
        write(&reference_values_file(*mib), msg.as_bytes())?;
    }
    Ok(manifest)
}

/// The file in an image directory with the vTPM reference values for a VM
/// of `memory_mib` (2048 also for 2816 MiB and more), as a CoCo RVPS
/// message: `cocoon admin register-reference-values --file DIR/<this>`.
pub fn reference_values_file(memory_mib: u32) -> String {
    format!(
        "reference-values-vtpm-{}mib.json",
        vtpm::pcr4_memory_class(memory_mib)
    )
}

/// zstd at a high level, single-threaded (so the output depends only on
/// the input), with a checksum the kernel verifies.
fn compress(data: &[u8]) -> std::io::Result<Vec<u8>> {
    let mut enc = zstd::stream::Encoder::new(Vec::with_capacity(data.len() / 3), 19)?;
    enc.include_checksum(true)?;
    std::io::Write::write_all(&mut enc, data)?;
    enc.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dynamic_or_foreign_binaries_refused() {
        let p = Path::new("x");
        assert!(check_static(p, b"#!/bin/sh\n").is_err());
        let me = std::fs::read("/proc/self/exe").unwrap();
        // Test binaries are dynamically linked.
        let err = check_static(p, &me).unwrap_err().to_string();
        assert!(err.contains("dynamically linked"), "{err}");
        assert!(check_static(p, &me[..40]).is_err());
    }
}

/// A static x86-64 program that powers the machine off at once (the
/// `reboot` system call with `LINUX_REBOOT_CMD_POWER_OFF`), as a minimal
/// ELF executable: the init of probe and floor-benchmark VMs.
pub fn poweroff_elf() -> Vec<u8> {
    const BASE: u64 = 0x40_0000;
    let code: [u8; 25] = [
        0xb8, 0xa9, 0x00, 0x00, 0x00, // mov eax, 169 (reboot)
        0xbf, 0xad, 0xde, 0xe1, 0xfe, // mov edi, LINUX_REBOOT_MAGIC1
        0xbe, 0x69, 0x19, 0x12, 0x28, // mov esi, LINUX_REBOOT_MAGIC2
        0xba, 0xdc, 0xfe, 0x21, 0x43, // mov edx, LINUX_REBOOT_CMD_POWER_OFF
        0x0f, 0x05, // syscall
        0x90, // nop
        0xeb, 0xfe, // jmp . (only if the call failed)
    ];
    let total = 64 + 56 + code.len();
    let mut e = Vec::with_capacity(total);
    e.extend_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
    e.extend_from_slice(&2u16.to_le_bytes()); // ET_EXEC
    e.extend_from_slice(&0x3eu16.to_le_bytes()); // x86-64
    e.extend_from_slice(&1u32.to_le_bytes());
    e.extend_from_slice(&(BASE + 120).to_le_bytes()); // entry
    e.extend_from_slice(&64u64.to_le_bytes()); // phoff
    e.extend_from_slice(&0u64.to_le_bytes()); // shoff
    e.extend_from_slice(&0u32.to_le_bytes()); // flags
    e.extend_from_slice(&64u16.to_le_bytes()); // ehsize
    e.extend_from_slice(&56u16.to_le_bytes()); // phentsize
    e.extend_from_slice(&1u16.to_le_bytes()); // phnum
    e.extend_from_slice(&[0; 6]); // shentsize, shnum, shstrndx
    e.extend_from_slice(&1u32.to_le_bytes()); // PT_LOAD
    e.extend_from_slice(&5u32.to_le_bytes()); // R+X
    e.extend_from_slice(&0u64.to_le_bytes()); // offset
    e.extend_from_slice(&BASE.to_le_bytes()); // vaddr
    e.extend_from_slice(&BASE.to_le_bytes()); // paddr
    e.extend_from_slice(&(total as u64).to_le_bytes()); // filesz
    e.extend_from_slice(&(total as u64).to_le_bytes()); // memsz
    e.extend_from_slice(&0x1000u64.to_le_bytes()); // align
    e.extend_from_slice(&code);
    e
}

/// An initramfs (uncompressed newc) whose `/init` powers off at once.
pub fn poweroff_initramfs() -> Vec<u8> {
    let mut a = cpio::Archive::default();
    // Both adds are valid constant paths.
    let _ = a.add("init", cpio::Node::File(poweroff_elf()), 0o755);
    let _ = a.add("dev/console", cpio::Node::CharDev(5, 1), 0o600);
    a.to_bytes().unwrap_or_default()
}

#[cfg(test)]
mod poweroff_tests {
    use super::*;

    /// The program is a valid static executable for our own check, and its
    /// entry point is the first instruction.
    #[test]
    fn poweroff_elf_is_static_x86_64() {
        let e = poweroff_elf();
        check_static(Path::new("poweroff"), &e).unwrap();
        assert_eq!(e.len(), 145);
        assert_eq!(&e[120..125], &[0xb8, 0xa9, 0, 0, 0]);
        assert_eq!(
            u64::from_le_bytes(e[24..32].try_into().unwrap()),
            0x40_0000 + 120
        );
    }
}
