//! `cocoon guest build`: the pod VM's guest image.

use anyhow::{Context, Result, bail};
use cocoon_guest_image::{BuildOptions, build};
use std::path::PathBuf;

/// Build the pod VM's guest image (kernel, initramfs, command line, manifest).
#[derive(clap::Args)]
pub struct BuildArgs {
    /// Output directory.
    #[arg(long)]
    out: PathBuf,
    /// The static guest binary to run as PID 1 (default: `cocoon-guest`
    /// beside this executable, else the one scripts/build-guest makes).
    #[arg(long, env = "COCOON_GUEST_BINARY")]
    guest_binary: Option<PathBuf>,
    /// The pinned kernel package as a file, instead of `apt-get download`.
    #[arg(long)]
    kernel_deb: Option<PathBuf>,
    /// Download and unpack cache (default: $XDG_CACHE_HOME/cocoon or ~/.cache/cocoon).
    #[arg(long, env = "COCOON_CACHE_DIR")]
    cache_dir: Option<PathBuf>,
    /// Kernel command line.
    #[arg(long)]
    cmdline: Option<String>,
    /// Initramfs compression: zstd (about a quarter of the size; less for
    /// firmware to load and measure) or none (no decompression at boot).
    #[arg(long, default_value = "zstd")]
    compression: cocoon_guest_image::Compression,
    /// The kernel modules' signatures: strip (each module loads sooner; the
    /// initramfs is measured as a whole) or keep (for a kernel that
    /// enforces them: `module.sig_enforce=1` or UEFI Secure Boot).
    #[arg(long, default_value = "strip")]
    module_signatures: cocoon_guest_image::ModuleSignatures,
}

/// Default cache directory.
pub fn cache_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_CACHE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("cocoon");
    }
    std::env::var_os("HOME")
        .map(|h| PathBuf::from(h).join(".cache/cocoon"))
        .unwrap_or_else(|| PathBuf::from("/var/cache/cocoon"))
}

fn guest_binary() -> Result<PathBuf> {
    let beside = std::env::current_exe()
        .ok()
        .and_then(|e| e.parent().map(|d| d.join("cocoon-guest")));
    let candidates = beside
        .into_iter()
        .chain(["release", "debug"].iter().map(|p| {
            PathBuf::from(format!(
                "target/static/x86_64-unknown-linux-gnu/{p}/cocoon-guest"
            ))
        }));
    // A dynamically linked build beside us (a debug `cargo build`) cannot
    // be PID 1: look further.
    for c in candidates {
        if cocoon_guest_image::is_static_executable(&c) {
            return Ok(c);
        }
    }
    bail!("no static guest binary found: build it with scripts/build-guest, or pass --guest-binary")
}

pub fn run(a: BuildArgs) -> Result<()> {
    let guest = match a.guest_binary {
        Some(g) => g,
        None => guest_binary()?,
    };
    let opts = BuildOptions {
        out_dir: a.out.clone(),
        guest_binary: guest,
        cache_dir: a.cache_dir.unwrap_or_else(cache_dir),
        kernel_deb: a.kernel_deb,
        cmdline: a.cmdline,
        compression: a.compression,
        module_signatures: a.module_signatures,
    };
    let m =
        build(&opts).with_context(|| format!("building the guest image in {}", a.out.display()))?;
    let mb = |n: u64| n as f64 / 1_048_576.0;
    outln!("guest image in {}", a.out.display());
    outln!(
        "  kernel   {} ({:.1} MiB) sha256 {}",
        m.kernel_package,
        mb(m.kernel.size),
        m.kernel.sha256
    );
    outln!("           sha384 {}", m.kernel.sha384);
    outln!(
        "  initrd   {:.1} MiB ({:?} compression), {} modules ({:?} signatures), sha256 {}",
        mb(m.initrd.size),
        m.compression,
        m.modules.len(),
        m.module_signatures,
        m.initrd.sha256
    );
    outln!("           sha384 {}", m.initrd.sha384);
    outln!("  cmdline  \"{}\" sha256 {}", m.cmdline, m.cmdline_sha256);
    outln!("           sha384 {}", m.cmdline_sha384);
    outln!(
        "  total    {:.1} MiB (kernel + initrd)",
        mb(m.kernel.size + m.initrd.size)
    );
    let ms = &m.measurements;
    outln!("expected vTPM measurements (SHA-256 PCRs; trustee reference values tpm_pcrN):");
    let line = |label: String, v: &str| outln!("  {label:<46} {v}");
    line("kernel Authenticode".into(), &ms.kernel_authenticode_sha256);
    for (mib, v) in &ms.vtpm_pcr4_sha256_by_memory_mib {
        let size = if *mib == 2048 {
            format!(
                "2048 or >= {} MiB",
                cocoon_guest_image::vtpm::Q35_HIGH_MEMORY_MIB
            )
        } else {
            format!("{mib} MiB")
        };
        line(format!("pcr4  kernel as loaded, VM of {size}"), v);
    }
    line(
        "pcr9  command line and initrd (EFI stub)".into(),
        &ms.vtpm_pcr9_sha256,
    );
    line("pcr12 command line (PID 1)".into(), &ms.vtpm_pcr12_sha256);
    for (i, v) in &ms.vtpm_ovmf_flow_pcrs_sha256 {
        line(format!("pcr{i:<2} OVMF boot flow"), v);
    }
    outln!("  pcr0, pcr1: the platform's (OVMF build, QEMU configuration)");
    outln!(
        "as trustee reference values per VM size: {}/reference-values-vtpm-<MiB>mib.json \
         (cocoon admin register-reference-values --file F)",
        a.out.display()
    );
    Ok(())
}
