//! `cocoon measure`: the measurements a pod VM will report, computed from
//! its artifacts alone, as reference values for a trustee.

use crate::admin::{Admin, AdminConnection};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use cocoon_guest_image::{Measurements, vtpm};
use std::path::PathBuf;

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
    /// Registers `values` (name, hex) when `--register` is given.
    async fn store(mut self, values: &[(String, String)]) -> Result<()> {
        let Some(url) = self.register.take() else {
            return Ok(());
        };
        self.admin.conn.url = url;
        let ad = Admin::new(&self.admin)?;
        ad.send(
            ad.http
                .post(ad.conn.kbs("/reference-value"))
                .header("content-type", "application/json")
                .body(rvps_message(values)),
            "register-reference-values",
        )
        .await?;
        eprintln!(
            "registered {} reference values at {}",
            values.len(),
            ad.conn.url
        );
        Ok(())
    }
}

/// `cocoon measure tdx`.
#[derive(Args)]
pub struct TdxArgs {
    /// The TDVF (OVMF built for TDX).
    #[arg(long)]
    tdvf: PathBuf,
    /// The kernel (EFI stub bzImage).
    #[arg(long)]
    kernel: PathBuf,
    /// The initrd.
    #[arg(long)]
    initrd: PathBuf,
    /// The kernel command line.
    #[arg(long)]
    append: String,
    /// TD memory, MiB (QEMU places the initrd by it, which RTMR1 covers).
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// How the VMM adds firmware pages: interleaved (KVM upstream, QEMU 9+) or two-pass (QEMU 8 TDX stacks).
    #[arg(long, default_value = "interleaved")]
    page_order: String,
    /// Whether the kernel's EFI stub measures its command line and initrd into RTMR2 (Linux 6.9+): auto (by the kernel's release), yes or no.
    #[arg(long, default_value = "auto")]
    stub_measures: String,
    #[command(flatten)]
    register: Register,
}

async fn tdx(a: TdxArgs) -> Result<()> {
    use cocoon_guest_image::tdx;
    let read = |p: &PathBuf| std::fs::read(p).with_context(|| format!("reading {}", p.display()));
    let (fw, kernel, initrd) = (read(&a.tdvf)?, read(&a.kernel)?, read(&a.initrd)?);
    let order = match a.page_order.as_str() {
        "interleaved" => tdx::PageOrder::Interleaved,
        "two-pass" => tdx::PageOrder::TwoPass,
        other => bail!("--page-order {other}: interleaved or two-pass"),
    };
    let stub = match a.stub_measures.as_str() {
        "yes" => true,
        "no" => false,
        "auto" => tdx::stub_measures_cc(&kernel).with_context(
            || "the kernel names no release in its header: say --stub-measures yes or no",
        )?,
        other => bail!("--stub-measures {other}: auto, yes or no"),
    };
    let mrtd = tdx::mrtd(&fw, order)?;
    let rtmr1 =
        tdx::rtmr1(&kernel, initrd.len(), &a.append, a.memory).map_err(anyhow::Error::msg)?;
    let rtmr2 = tdx::rtmr2(&initrd, &a.append, stub);
    let values = vec![
        ("tdx_mr_td".to_string(), hex::encode(mrtd)),
        ("tdx_rtmr_1".to_string(), hex::encode(rtmr1)),
        ("tdx_rtmr_2".to_string(), hex::encode(rtmr2)),
    ];
    for (k, v) in &values {
        println!("{k:<11} {v}");
    }
    eprintln!(
        "tdx_rtmr_0: the platform's (TD HOB, configuration volume, ACPI tables and boot variables QEMU provides){}",
        if stub {
            ""
        } else {
            "; RTMR2 is zero: this kernel's EFI stub does not measure through the CC protocol"
        }
    );
    a.register.store(&values).await
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
    /// The hypervisor: qemu or ec2.
    #[arg(long, default_value = "qemu")]
    vmm_type: String,
    /// The firmware's digest (96 hex digits) instead of hashing --ovmf's pages.
    #[arg(long)]
    snp_ovmf_hash: Option<String>,
    /// hex or base64.
    #[arg(long, default_value = "hex")]
    output_format: String,
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
    use cocoon_guest_image::snp;
    if a.mode != "snp" {
        bail!(
            "--mode {}: only snp (the launch digest) is supported",
            a.mode
        );
    }
    let vmm = match a.vmm_type.as_str() {
        "qemu" => snp::Vmm::Qemu,
        "ec2" => snp::Vmm::Ec2,
        other => bail!("--vmm-type {other}: qemu or ec2"),
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
    let fw = std::fs::read(&a.ovmf).with_context(|| format!("reading {}", a.ovmf.display()))?;
    let layout = snp::Layout::from_ovmf(&fw)?;
    let seed = match &a.snp_ovmf_hash {
        Some(h) => Some(
            <[u8; 48]>::try_from(hex::decode(h).context("--snp-ovmf-hash is not hex")?)
                .map_err(|_| anyhow::anyhow!("--snp-ovmf-hash must be 48 bytes (96 hex digits)"))?,
        ),
        None => None,
    };
    let kernel = match &a.kernel {
        Some(k) => Some(std::fs::read(k).with_context(|| format!("reading {}", k.display()))?),
        None => None,
    };
    let initrd = match &a.initrd {
        Some(i) => std::fs::read(i).with_context(|| format!("reading {}", i.display()))?,
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
    match a.output_format.as_str() {
        "hex" => println!("{}", hex::encode(digest)),
        "base64" => {
            use base64::Engine;
            println!(
                "{}",
                base64::engine::general_purpose::STANDARD.encode(digest)
            );
        }
        other => bail!("--output-format {other}: hex or base64"),
    }
    a.register
        .store(&[("snp_launch_measurement".into(), hex::encode(digest))])
        .await
}

/// `cocoon measure vtpm`.
#[derive(Args)]
pub struct VtpmArgs {
    /// The OVMF firmware QEMU boots (its own PCRs 0 and 1 are the platform's).
    #[arg(long)]
    ovmf: PathBuf,
    /// The kernel (EFI stub bzImage).
    #[arg(long)]
    kernel: PathBuf,
    /// The initrd.
    #[arg(long)]
    initrd: PathBuf,
    /// The kernel command line as QEMU's -append gives it.
    #[arg(long)]
    append: String,
    /// The pod's initdata document (its digest, extended into PCR 8).
    #[arg(long)]
    init_data: Option<PathBuf>,
    /// Guest memory, MiB (QEMU places the initrd by it, which PCR 4 covers).
    #[arg(long, default_value_t = 2048)]
    memory: u32,
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
    let m = Measurements::compute(kernel, initrd, cmdline).map_err(anyhow::Error::msg)?;
    let mut values: Vec<(u32, String)> = m
        .vtpm_ovmf_flow_pcrs_sha256
        .iter()
        .map(|(i, v)| (*i, v.clone()))
        .collect();
    let pcr4 = vtpm::pcr4(kernel, initrd.len(), cmdline, memory_mib).map_err(anyhow::Error::msg)?;
    values.push((4, hex::encode(pcr4)));
    values.push((9, m.vtpm_pcr9_sha256.clone()));
    values.push((vtpm::CMDLINE_PCR, m.vtpm_pcr12_sha256.clone()));
    if let Some(d) = &init {
        values.push((8, hex::encode(vtpm::replay(&[d]))));
    }
    values.sort();
    let mut out: Vec<(String, String)> = values
        .into_iter()
        .map(|(i, v)| (format!("tpm_pcr{i}"), v))
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

/// The values as a CoCo RVPS message (`cocoon admin register-reference-values`).
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

async fn vtpm(a: VtpmArgs) -> Result<()> {
    let read = |p: &PathBuf, what: &str| {
        std::fs::read(p).with_context(|| format!("reading the {what} {}", p.display()))
    };
    let initdata = match &a.init_data {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading the initdata {}", p.display()))?,
        ),
        None => None,
    };
    let values = vtpm_values(
        &read(&a.ovmf, "firmware")?,
        &read(&a.kernel, "kernel")?,
        &read(&a.initrd, "initrd")?,
        &a.append,
        initdata.as_deref(),
        a.memory,
    )?;
    for (k, v) in &values {
        eprintln!("{k:<10} {v}");
    }
    eprintln!(
        "tpm_pcr0, tpm_pcr1: the platform's (OVMF measures its PEI volume after PEI wrote into it; PCR 1 holds NVRAM boot entries and QEMU's); pin them per host type"
    );
    let message = rvps_message(&values);
    a.register.store(&values).await?;
    print!("{message}");
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
