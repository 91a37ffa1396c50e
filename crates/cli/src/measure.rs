//! `cocoon measure`: the measurements a pod VM will report, computed from
//! its artifacts alone, as reference values for a trustee.

use crate::admin::{Admin, AdminConnection};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use cocoon_guest_image::{rvps_message, snp, tdx, vtpm};
use std::path::{Path, PathBuf};

/// Expected measurements.
#[derive(Subcommand)]
pub enum MeasureCommand {
    /// vTPM PCRs of an OVMF direct boot (kernel, initrd, command line, initdata) as trustee reference values.
    Vtpm(VtpmArgs),
    /// SEV-SNP launch digest (flags as AMD's sev-snp-measure takes them).
    Snp(SnpArgs),
    /// TDX MRTD, RTMR1 and RTMR2 of a TDVF direct boot.
    Tdx(TdxArgs),
}

/// Where to store measurements.
#[derive(Args)]
pub struct Register {
    /// Store the values in the trustee at this URL (admin key and certificate as for `cocoon admin`).
    #[arg(long, value_name = "URL")]
    register: Option<String>,
    #[command(flatten)]
    admin: AdminConnection,
}

impl Register {
    /// Registers `message` (an RVPS message of `count` values) when
    /// `--register` is given.
    async fn store(mut self, message: &str, count: usize) -> Result<()> {
        let Some(url) = self.register.take() else {
            return Ok(());
        };
        self.admin.conn.url = url;
        let ad = Admin::new(&self.admin)?;
        ad.send(
            ad.http
                .post(ad.conn.kbs("/reference-value"))
                .header("content-type", "application/json")
                .body(message.to_string()),
            "register-reference-values",
        )
        .await?;
        eprintln!("registered {count} reference values at {}", ad.conn.url);
        Ok(())
    }
}

fn read(p: &Path, what: &str) -> Result<Vec<u8>> {
    std::fs::read(p).with_context(|| format!("reading the {what} {}", p.display()))
}

/// How the VMM adds firmware pages to a TD.
#[derive(ValueEnum, Clone, Copy)]
enum PageOrder {
    /// Each page added, then extended (KVM upstream, QEMU 9+).
    Interleaved,
    /// A section's pages added, then extended (QEMU 8 TDX stacks).
    TwoPass,
}

/// Whether the kernel's EFI stub measures into RTMR2.
#[derive(ValueEnum, Clone, Copy)]
enum StubMeasures {
    /// By the kernel's release (Linux 6.9+).
    Auto,
    Yes,
    No,
}

/// What QEMU boots directly (`-kernel`, `-initrd`, `-append`, `-m`).
#[derive(Args)]
pub struct DirectBoot {
    /// The kernel (EFI stub bzImage).
    #[arg(long)]
    kernel: PathBuf,
    /// The initrd.
    #[arg(long)]
    initrd: PathBuf,
    /// The kernel command line as QEMU's -append gives it.
    #[arg(long)]
    append: String,
    /// Guest memory, MiB (QEMU places the initrd by it, which the kernel's measurement covers).
    #[arg(long, default_value_t = 2048)]
    memory: u32,
}

/// `cocoon measure tdx`.
#[derive(Args)]
pub struct TdxArgs {
    /// The TDVF (OVMF built for TDX).
    #[arg(long)]
    tdvf: PathBuf,
    #[command(flatten)]
    boot: DirectBoot,
    /// How the VMM adds firmware pages.
    #[arg(long, value_enum, default_value = "interleaved")]
    page_order: PageOrder,
    /// Whether the kernel's EFI stub measures its command line and initrd into RTMR2.
    #[arg(long, value_enum, default_value = "auto")]
    stub_measures: StubMeasures,
    #[command(flatten)]
    register: Register,
}

async fn tdx(a: TdxArgs) -> Result<()> {
    let fw = read(&a.tdvf, "firmware")?;
    let kernel = read(&a.boot.kernel, "kernel")?;
    let initrd = read(&a.boot.initrd, "initrd")?;
    let order = match a.page_order {
        PageOrder::Interleaved => tdx::PageOrder::Interleaved,
        PageOrder::TwoPass => tdx::PageOrder::TwoPass,
    };
    let stub = match a.stub_measures {
        StubMeasures::Yes => true,
        StubMeasures::No => false,
        StubMeasures::Auto => tdx::stub_measures_cc(&kernel).with_context(
            || "the kernel names no release in its header: say --stub-measures yes or no",
        )?,
    };
    let mrtd = tdx::mrtd(&fw, order)?;
    let b = &a.boot;
    let rtmr1 =
        tdx::rtmr1(&kernel, initrd.len(), &b.append, b.memory).map_err(anyhow::Error::msg)?;
    let rtmr2 = tdx::rtmr2(&initrd, &b.append, stub);
    let values = vec![
        ("tdx_mr_td".to_string(), hex::encode(mrtd)),
        ("tdx_rtmr_1".to_string(), hex::encode(rtmr1)),
        ("tdx_rtmr_2".to_string(), hex::encode(rtmr2)),
    ];
    for (k, v) in &values {
        outln!("{k:<11} {v}");
    }
    eprintln!(
        "tdx_rtmr_0: the platform's (TD HOB, configuration volume, ACPI tables and boot variables QEMU provides){}",
        if stub {
            ""
        } else {
            "; RTMR2 is zero: this kernel's EFI stub does not measure through the CC protocol"
        }
    );
    a.register.store(&rvps_message(&values), values.len()).await
}

/// The hypervisor that launches an SNP guest.
#[derive(ValueEnum, Clone, Copy)]
enum VmmType {
    Qemu,
    Ec2,
}

/// How the launch digest is printed.
#[derive(ValueEnum, Clone, Copy)]
enum OutputFormat {
    Hex,
    Base64,
}

/// `cocoon measure snp`.
#[derive(Args)]
pub struct SnpArgs {
    /// Only `snp` (the launch digest) is supported.
    #[arg(long, default_value = "snp")]
    mode: String,
    /// The firmware (OVMF built for SEV-SNP; AmdSev for direct boot).
    #[arg(long)]
    ovmf: PathBuf,
    /// The kernel QEMU boots with kernel-hashes=on.
    #[arg(long)]
    kernel: Option<PathBuf>,
    /// The initrd.
    #[arg(long, requires = "kernel")]
    initrd: Option<PathBuf>,
    /// The kernel command line.
    #[arg(long, requires = "kernel")]
    append: Option<String>,
    /// vCPUs.
    #[arg(long)]
    vcpus: u32,
    /// QEMU vCPU type (EPYC-v4, EPYC-Milan, EPYC-Genoa, ...).
    #[arg(long, required_unless_present_any = ["vcpu_sig", "vcpu_family"])]
    vcpu_type: Option<String>,
    /// The vCPU's CPUID signature instead of a type (hex or decimal).
    #[arg(long, value_parser = parse_int)]
    vcpu_sig: Option<u64>,
    /// The vCPU's family (with --vcpu-model and --vcpu-stepping).
    #[arg(long, requires_all = ["vcpu_model", "vcpu_stepping"])]
    vcpu_family: Option<u32>,
    /// The vCPU's model.
    #[arg(long)]
    vcpu_model: Option<u32>,
    /// The vCPU's stepping.
    #[arg(long)]
    vcpu_stepping: Option<u32>,
    /// VMSA SEV features (hex or decimal).
    #[arg(long, value_parser = parse_int, default_value = "0x1")]
    guest_features: u64,
    /// The hypervisor.
    #[arg(long, value_enum, default_value = "qemu")]
    vmm_type: VmmType,
    /// The firmware's digest (96 hex digits) instead of hashing --ovmf's pages.
    #[arg(long)]
    snp_ovmf_hash: Option<String>,
    /// How the digest is printed.
    #[arg(long, value_enum, default_value = "hex")]
    output_format: OutputFormat,
    #[command(flatten)]
    register: Register,
}

fn parse_int(s: &str) -> Result<u64, String> {
    match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16).map_err(|e| format!("{s}: {e}")),
        None => s.parse().map_err(|e| format!("{s}: {e}")),
    }
}

async fn snp(a: SnpArgs) -> Result<()> {
    if a.mode != "snp" {
        bail!(
            "--mode {}: only snp (the launch digest) is supported",
            a.mode
        );
    }
    let vmm = match a.vmm_type {
        VmmType::Qemu => snp::Vmm::Qemu,
        VmmType::Ec2 => snp::Vmm::Ec2,
    };
    let signature = match (&a.vcpu_sig, &a.vcpu_family, &a.vcpu_type) {
        (Some(sig), _, _) => u32::try_from(*sig).context("--vcpu-sig is larger than 32 bits")?,
        (None, Some(f), _) => snp::vcpu_signature(
            *f,
            a.vcpu_model.unwrap_or_default(),
            a.vcpu_stepping.unwrap_or_default(),
        ),
        (None, None, Some(t)) => snp::vcpu_type_signature(t).with_context(|| {
            format!("--vcpu-type {t} is not known: give --vcpu-sig or --vcpu-family/--vcpu-model/--vcpu-stepping")
        })?,
        (None, None, None) => bail!("give --vcpu-type, --vcpu-sig or --vcpu-family"),
    };
    let fw = read(&a.ovmf, "firmware")?;
    let layout = snp::Layout::from_ovmf(&fw)?;
    let seed = match &a.snp_ovmf_hash {
        Some(h) => Some(
            <[u8; 48]>::try_from(hex::decode(h).context("--snp-ovmf-hash is not hex")?)
                .map_err(|_| anyhow::anyhow!("--snp-ovmf-hash must be 48 bytes (96 hex digits)"))?,
        ),
        None => None,
    };
    let kernel = a.kernel.as_deref().map(|k| read(k, "kernel")).transpose()?;
    let initrd = match &a.initrd {
        Some(i) => read(i, "initrd")?,
        None => Vec::new(),
    };
    let append = a.append.clone().unwrap_or_default();
    let digest = snp::launch_digest(&snp::Launch {
        ovmf: Some(&fw),
        firmware_digest: seed,
        layout: &layout,
        kernel: kernel.as_deref().map(|k| (k, &initrd[..], append.as_str())),
        vcpus: a.vcpus,
        vcpu_signature: signature,
        guest_features: a.guest_features,
        vmm,
    })?;
    match a.output_format {
        OutputFormat::Hex => outln!("{}", hex::encode(digest)),
        OutputFormat::Base64 => {
            use base64::Engine;
            outln!(
                "{}",
                base64::engine::general_purpose::STANDARD.encode(digest)
            );
        }
    }
    let values = [("snp_launch_measurement".to_string(), hex::encode(digest))];
    a.register.store(&rvps_message(&values), values.len()).await
}

/// `cocoon measure vtpm`.
#[derive(Args)]
pub struct VtpmArgs {
    /// The OVMF firmware QEMU boots (its own PCRs 0 and 1 are the platform's).
    #[arg(long)]
    ovmf: PathBuf,
    #[command(flatten)]
    boot: DirectBoot,
    /// The pod's initdata document (its digest, extended into PCR 8).
    #[arg(long)]
    init_data: Option<PathBuf>,
    #[command(flatten)]
    register: Register,
}

/// Runs `cocoon measure`.
pub async fn run(cmd: MeasureCommand) -> Result<()> {
    match cmd {
        MeasureCommand::Vtpm(a) => vtpm(a).await,
        MeasureCommand::Snp(a) => snp(a).await,
        MeasureCommand::Tdx(a) => tdx(a).await,
    }
}

/// The vTPM reference values (`tpm_pcrN`, and `init_data` with an
/// initdata document) of an OVMF direct boot.
pub fn vtpm_values(
    ovmf: &[u8],
    kernel: &[u8],
    initrd: &[u8],
    cmdline: &str,
    initdata: Option<&str>,
    memory_mib: u32,
) -> Result<Vec<(String, String)>> {
    check_ovmf(ovmf)?;
    let init = match initdata {
        Some(text) => {
            let doc = cocoon_types::initdata::InitData::parse(text)?;
            if doc.digest.len() != 32 {
                bail!(
                    "a vTPM binds initdata by a SHA-256 extend of PCR 8: the document's algorithm must be sha256"
                );
            }
            Some(doc.digest)
        }
        None => None,
    };
    let mut values = vtpm::ovmf_flow_pcrs();
    values.insert(
        4,
        vtpm::pcr4(kernel, initrd.len(), cmdline, memory_mib).map_err(anyhow::Error::msg)?,
    );
    values.insert(9, vtpm::pcr9(initrd, cmdline));
    values.insert(vtpm::CMDLINE_PCR, vtpm::pcr12(cmdline));
    if let Some(d) = &init {
        values.insert(8, vtpm::replay(&[d]));
    }
    let mut out: Vec<(String, String)> = values
        .into_iter()
        .map(|(i, v)| (format!("tpm_pcr{i}"), hex::encode(v)))
        .collect();
    if let Some(d) = init {
        out.push(("init_data".into(), hex::encode(d)));
    }
    Ok(out)
}

/// An OVMF image: a flash image whose last firmware volume header sits
/// where the reset vector expects it. PCRs 0 and 1 are not derived from it:
/// OVMF measures its PEI volume after PEI modules have written into it,
/// and PCR 1 holds boot variables from NVRAM and QEMU.
fn check_ovmf(ovmf: &[u8]) -> Result<()> {
    let has_fv = ovmf.len() >= 0x10000
        && ovmf.len().is_multiple_of(0x1000)
        && ovmf.windows(4).step_by(8).any(|w| w == b"_FVH");
    if !has_fv {
        bail!("--ovmf is not a firmware image (no firmware volume found)");
    }
    Ok(())
}

async fn vtpm(a: VtpmArgs) -> Result<()> {
    let initdata = match &a.init_data {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the initdata {}", p.display()))?,
        ),
        None => None,
    };
    let values = vtpm_values(
        &read(&a.ovmf, "firmware")?,
        &read(&a.boot.kernel, "kernel")?,
        &read(&a.boot.initrd, "initrd")?,
        &a.boot.append,
        initdata.as_deref(),
        a.boot.memory,
    )?;
    for (k, v) in &values {
        eprintln!("{k:<10} {v}");
    }
    eprintln!(
        "tpm_pcr0, tpm_pcr1: the platform's (OVMF measures its PEI volume after PEI wrote into it; PCR 1 holds NVRAM boot entries and QEMU's); pin them per host type"
    );
    let message = rvps_message(&values);
    a.register.store(&message, values.len()).await?;
    out!("{message}");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inputs_that_cannot_be_measured_are_refused_with_the_reason() {
        let ovmf = std::fs::read("/usr/share/ovmf/OVMF.fd")
            .expect("/usr/share/ovmf/OVMF.fd (scripts/test installs ovmf)");
        let e = vtpm_values(&[0u8; 0x20000], b"", b"", "", None, 512).unwrap_err();
        assert!(e.to_string().contains("not a firmware image"), "{e}");
        let sha384 = "version = \"0.1.0\"\nalgorithm = \"sha384\"\n[data]\n";
        let e = vtpm_values(&ovmf, b"", b"", "", Some(sha384), 512).unwrap_err();
        assert!(e.to_string().contains("must be sha256"), "{e}");
        let sha256 = "version = \"0.1.0\"\nalgorithm = \"sha256\"\n[data]\n";
        let e = vtpm_values(&ovmf, b"not a kernel", b"", "x", Some(sha256), 512).unwrap_err();
        assert!(e.to_string().contains("kernel"), "{e}");
    }

    #[test]
    fn the_message_is_an_rvps_sample_message() {
        use base64::Engine;
        let msg = rvps_message(&[
            ("tpm_pcr8".into(), "ab".into()),
            ("init_data".into(), "cd".into()),
        ]);
        let v: serde_json::Value = serde_json::from_str(&msg).unwrap();
        assert_eq!(v["version"], "0.1.0");
        assert_eq!(v["type"], "sample");
        let payload: serde_json::Value = serde_json::from_slice(
            &base64::engine::general_purpose::STANDARD
                .decode(v["payload"].as_str().unwrap())
                .unwrap(),
        )
        .unwrap();
        assert_eq!(
            payload,
            serde_json::json!({"tpm_pcr8": ["ab"], "init_data": ["cd"]})
        );
    }
}
