//! The AMD SEV-SNP launch digest of a pod VM, computed from its artifacts
//! the way the PSP computes it while the VMM loads the guest (AMD's SNP
//! firmware ABI, SNP_LAUNCH_UPDATE), and as AMD's `sev-snp-measure` tool
//! models QEMU's launch:
//!
//! 1. every 4 KiB page of the OVMF image, mapped to end at 4 GiB;
//! 2. the sections OVMF's SEV metadata lists, in order: pre-validated
//!    memory as zero pages, the secrets and CPUID pages, and the page with
//!    the kernel, initrd and command-line hashes (`kernel-hashes=on`);
//! 3. one VMSA per vCPU (the boot CPU's, then the others'), whose register
//!    state depends on the vCPU type (its CPUID signature in RDX) and the
//!    guest features.
//!
//! Each step folds a 112-byte PAGE_INFO into a SHA-384 chain.

#[cfg(test)]
use crate::ovmf::FOOTER_GUID;
use crate::ovmf::u32_at;
use crate::vtpm::guid_le;
use sha2::{Digest, Sha256, Sha384};

/// Where the VMM places every VMSA.
pub const VMSA_GPA: u64 = 0xFFFF_FFFF_F000;
/// `sev-snp-measure`'s default guest features: SNP active.
pub const DEFAULT_GUEST_FEATURES: u64 = 0x1;

const PAGE: usize = 4096;
const SEV_ES_RESET_BLOCK: [u8; 16] = guid_le(
    0x00f771de,
    0x1a7e,
    0x4fcb,
    [0x89, 0x0e, 0x68, 0xc7, 0x7e, 0x2f, 0xb4, 0x4e],
);
const SEV_HASH_TABLE_RV: [u8; 16] = guid_le(
    0x7255371f,
    0x3a3b,
    0x4b04,
    [0x92, 0x7b, 0x1d, 0xa6, 0xef, 0xa8, 0xd4, 0x54],
);
const SEV_METADATA: [u8; 16] = guid_le(
    0xdc886566,
    0x984a,
    0x4798,
    [0xa7, 0x5e, 0x55, 0x85, 0xa7, 0xbf, 0x67, 0xcc],
);
const HASHES_TABLE: [u8; 16] = guid_le(
    0x9438d606,
    0x4f22,
    0x4cc9,
    [0xb4, 0x79, 0xa7, 0x93, 0xd4, 0x11, 0xfd, 0x21],
);
const HASH_CMDLINE: [u8; 16] = guid_le(
    0x97d02dd8,
    0xbd20,
    0x4c94,
    [0xaa, 0x78, 0xe7, 0x71, 0x4d, 0x36, 0xab, 0x2a],
);
const HASH_INITRD: [u8; 16] = guid_le(
    0x44baf731,
    0x3a2f,
    0x4bd7,
    [0x9a, 0xf1, 0x41, 0xe2, 0x91, 0x69, 0x78, 0x1d],
);
const HASH_KERNEL: [u8; 16] = guid_le(
    0x4de79437,
    0xabd2,
    0x427f,
    [0xb8, 0x35, 0xd5, 0xb1, 0x72, 0xd2, 0x04, 0x5b],
);

/// Why a launch digest cannot be computed.
#[derive(Debug, thiserror::Error)]
pub enum SnpError {
    /// The firmware is not an OVMF image with SEV metadata.
    #[error("OVMF: {0}")]
    Ovmf(String),
    /// The inputs do not fit the firmware.
    #[error("{0}")]
    Input(String),
}

/// A section of OVMF's SEV metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// Guest physical address.
    pub gpa: u32,
    /// Size in bytes.
    pub size: u32,
    /// What it holds.
    pub kind: SectionKind,
}

/// The section types of OVMF's SEV metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SectionKind {
    /// Memory OVMF expects pre-validated (measured as zero pages).
    SnpSecMem,
    /// The secrets page.
    SnpSecrets,
    /// The CPUID page.
    Cpuid,
    /// The SVSM calling area (zero pages).
    SvsmCaa,
    /// The page that receives the kernel, initrd and command-line hashes.
    SnpKernelHashes,
}

impl SectionKind {
    fn from_u32(v: u32) -> Option<Self> {
        Some(match v {
            1 => Self::SnpSecMem,
            2 => Self::SnpSecrets,
            3 => Self::Cpuid,
            4 => Self::SvsmCaa,
            0x10 => Self::SnpKernelHashes,
            _ => return None,
        })
    }
}

/// What the launch needs from the firmware: its SEV metadata sections,
/// the AP reset address and where the hashes table goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// The metadata sections, in the firmware's order.
    pub sections: Vec<Section>,
    /// The EIP the other vCPUs start at (SEV-ES reset block).
    pub reset_eip: u32,
    /// Where OVMF expects the hashes table (0 or absent: not supported).
    pub hash_table_gpa: Option<u32>,
}

impl Layout {
    /// The layout an OVMF image declares.
    pub fn from_ovmf(fw: &[u8]) -> Result<Self, SnpError> {
        let bad = |s: String| SnpError::Ovmf(s);
        if fw.is_empty() || !fw.len().is_multiple_of(PAGE) || fw.len() as u64 > 1 << 32 {
            return Err(bad(format!(
                "{} bytes is not a firmware image (a whole number of 4 KiB pages below 4 GiB)",
                fw.len()
            )));
        }
        let table = crate::ovmf::footer_table(fw).map_err(SnpError::Ovmf)?;
        let entry = |g: &[u8; 16]| crate::ovmf::entry_u32(&table, g);
        let reset_eip = entry(&SEV_ES_RESET_BLOCK).ok_or_else(|| {
            bad("no SEV-ES reset block: the firmware does not start SEV-ES/SNP APs".into())
        })?;
        let hash_table_gpa = entry(&SEV_HASH_TABLE_RV).filter(|g| *g != 0);
        let (_, entries) = crate::ovmf::metadata(fw, &table, &SEV_METADATA, b"ASEV", 12, "SEV")
            .map_err(bad)?
            .ok_or_else(|| bad("no SEV metadata: not a firmware built for SEV-SNP".into()))?;
        let mut sections = Vec::with_capacity(entries.len());
        for d in entries {
            let ty = u32_at(d, 8);
            let kind = SectionKind::from_u32(ty)
                .ok_or_else(|| bad(format!("SEV metadata section type {ty:#x} is unknown")))?;
            sections.push(Section {
                gpa: u32_at(d, 0),
                size: u32_at(d, 4),
                kind,
            });
        }
        Ok(Self {
            sections,
            reset_eip,
            hash_table_gpa,
        })
    }
}

/// The hypervisor that launches the guest: its initial register state
/// differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Vmm {
    /// QEMU/KVM.
    #[default]
    Qemu,
    /// AWS EC2 (its VMSA as `sev-snp-measure` models version 1: RDX 0;
    /// CPUID pages measured last).
    Ec2,
}

/// The CPUID signature (family, model, stepping) a vCPU type reports.
pub fn vcpu_signature(family: u32, model: u32, stepping: u32) -> u32 {
    let (family_low, family_high) = if family > 0xf {
        (0xf, (family - 0xf) & 0xff)
    } else {
        (family, 0)
    };
    (family_high << 20)
        | (((model >> 4) & 0xf) << 16)
        | (family_low << 8)
        | ((model & 0xf) << 4)
        | (stepping & 0xf)
}

/// The signature of a QEMU vCPU type (`-cpu` name), as `sev-snp-measure`
/// knows them.
pub fn vcpu_type_signature(name: &str) -> Option<u32> {
    let (f, m, s) = match name {
        "EPYC" | "EPYC-v1" | "EPYC-v2" | "EPYC-IBPB" | "EPYC-v3" | "EPYC-v4" => (23, 1, 2),
        "EPYC-Rome" | "EPYC-Rome-v1" | "EPYC-Rome-v2" | "EPYC-Rome-v3" => (23, 49, 0),
        "EPYC-Milan" | "EPYC-Milan-v1" | "EPYC-Milan-v2" => (25, 1, 1),
        "EPYC-Genoa" | "EPYC-Genoa-v1" => (25, 17, 0),
        "EPYC-Turin" | "EPYC-Turin-v1" => (26, 0, 0),
        _ => return None,
    };
    Some(vcpu_signature(f, m, s))
}

/// The 4 KiB page with the kernel, initrd and command-line hashes that
/// QEMU writes for `kernel-hashes=on` (SHA-256 each; the command line with
/// its NUL terminator), the table at `gpa & 0xfff`.
pub fn hashes_page(table_gpa: u32, kernel: &[u8], initrd: &[u8], cmdline: &str) -> [u8; PAGE] {
    let mut table = Vec::with_capacity(176);
    table.extend_from_slice(&HASHES_TABLE);
    table.extend_from_slice(&168u16.to_le_bytes());
    let mut cmd = cmdline.as_bytes().to_vec();
    cmd.push(0);
    for (guid, data) in [
        (HASH_CMDLINE, &cmd[..]),
        (HASH_INITRD, initrd),
        (HASH_KERNEL, kernel),
    ] {
        table.extend_from_slice(&guid);
        table.extend_from_slice(&50u16.to_le_bytes());
        table.extend_from_slice(&Sha256::digest(data));
    }
    table.resize(176, 0);
    let mut page = [0u8; PAGE];
    let at = (table_gpa & 0xfff) as usize;
    // The table is 176 bytes; OVMF reserves room for it in the page.
    let end = (at + table.len()).min(PAGE);
    page[at..end].copy_from_slice(&table[..end - at]);
    page
}

fn put_segment(v: &mut [u8; PAGE], at: usize, selector: u16, attrib: u16, limit: u32, base: u64) {
    v[at..at + 2].copy_from_slice(&selector.to_le_bytes());
    v[at + 2..at + 4].copy_from_slice(&attrib.to_le_bytes());
    v[at + 4..at + 8].copy_from_slice(&limit.to_le_bytes());
    v[at + 8..at + 16].copy_from_slice(&base.to_le_bytes());
}

fn put_u64(v: &mut [u8; PAGE], at: usize, x: u64) {
    v[at..at + 8].copy_from_slice(&x.to_le_bytes());
}

/// The initial VMSA of a vCPU starting at `eip`.
pub fn vmsa(vmm: Vmm, bsp: bool, eip: u32, signature: u32, guest_features: u64) -> [u8; PAGE] {
    let mut v = [0u8; PAGE];
    let ec2 = vmm == Vmm::Ec2;
    let cs_attrib = if ec2 && bsp { 0x9a } else { 0x9b };
    for at in [0x00, 0x30, 0x40, 0x50] {
        put_segment(&mut v, at, 0, 0x93, 0xffff, 0);
    }
    put_segment(
        &mut v,
        0x10,
        0xf000,
        cs_attrib,
        0xffff,
        u64::from(eip & 0xffff_0000),
    );
    put_segment(&mut v, 0x20, 0, if ec2 { 0x92 } else { 0x93 }, 0xffff, 0);
    put_segment(&mut v, 0x60, 0, 0, 0xffff, 0);
    put_segment(&mut v, 0x70, 0, 0x82, 0xffff, 0);
    put_segment(&mut v, 0x80, 0, 0, 0xffff, 0);
    put_segment(&mut v, 0x90, 0, if ec2 { 0x83 } else { 0x8b }, 0xffff, 0);
    put_u64(&mut v, 0xd0, 0x1000); // EFER.SVME
    put_u64(&mut v, 0x148, 0x40); // CR4.MCE
    put_u64(&mut v, 0x158, 0x10); // CR0.ET
    put_u64(&mut v, 0x160, 0x400); // DR7
    put_u64(&mut v, 0x168, 0xffff_0ff0); // DR6
    put_u64(&mut v, 0x170, 0x2); // RFLAGS
    put_u64(&mut v, 0x178, u64::from(eip & 0xffff));
    put_u64(&mut v, 0x268, 0x0007_0406_0007_0406); // G_PAT
    put_u64(&mut v, 0x310, if ec2 { 0 } else { u64::from(signature) }); // RDX
    put_u64(&mut v, 0x3b0, guest_features);
    put_u64(&mut v, 0x3e8, 0x1); // XCR0
    if !ec2 {
        v[0x408..0x40c].copy_from_slice(&0x1f80u32.to_le_bytes()); // MXCSR
        v[0x410..0x412].copy_from_slice(&0x037fu16.to_le_bytes()); // x87 FCW
    }
    v
}

/// The running launch digest.
struct Gctx([u8; 48]);

impl Gctx {
    fn update(&mut self, page_type: u8, gpa: u64, contents: &[u8; 48]) {
        let mut info = [0u8; 0x70];
        info[..48].copy_from_slice(&self.0);
        info[48..96].copy_from_slice(contents);
        info[0x60..0x62].copy_from_slice(&0x70u16.to_le_bytes());
        info[0x62] = page_type;
        info[0x68..0x70].copy_from_slice(&gpa.to_le_bytes());
        self.0 = Sha384::digest(info).into();
    }

    fn normal(&mut self, gpa: u64, data: &[u8]) {
        for (i, page) in data.chunks(PAGE).enumerate() {
            self.update(1, gpa + (i * PAGE) as u64, &Sha384::digest(page).into());
        }
    }

    fn zero(&mut self, gpa: u64, size: u32) -> Result<(), SnpError> {
        if !(size as usize).is_multiple_of(PAGE) {
            return Err(SnpError::Ovmf(format!(
                "a section of {size:#x} bytes at {gpa:#x} is not whole pages"
            )));
        }
        for off in (0..u64::from(size)).step_by(PAGE) {
            self.update(3, gpa + off, &[0; 48]);
        }
        Ok(())
    }
}

/// What to launch.
pub struct Launch<'a> {
    /// The firmware image; `None` with [`Launch::firmware_digest`].
    pub ovmf: Option<&'a [u8]>,
    /// The digest after the firmware pages (`--snp-ovmf-hash`), instead of
    /// hashing `ovmf`.
    pub firmware_digest: Option<[u8; 48]>,
    /// The firmware's layout.
    pub layout: &'a Layout,
    /// Kernel, initrd and command line (`kernel-hashes=on`).
    pub kernel: Option<(&'a [u8], &'a [u8], &'a str)>,
    /// vCPUs.
    pub vcpus: u32,
    /// Their CPUID signature.
    pub vcpu_signature: u32,
    /// VMSA SEV features.
    pub guest_features: u64,
    /// The hypervisor.
    pub vmm: Vmm,
}

/// The firmware part of the digest (`sev-snp-measure --mode snp:ovmf-hash`).
pub fn ovmf_digest(ovmf: &[u8]) -> [u8; 48] {
    let mut g = Gctx([0; 48]);
    g.normal((1u64 << 32) - ovmf.len() as u64, ovmf);
    g.0
}

/// The launch digest (the attestation report's MEASUREMENT).
pub fn launch_digest(l: &Launch<'_>) -> Result<[u8; 48], SnpError> {
    if l.vcpus == 0 {
        return Err(SnpError::Input("at least one vCPU".into()));
    }
    let mut g = match (l.firmware_digest, l.ovmf) {
        (Some(d), _) => Gctx(d),
        (None, Some(fw)) => Gctx(ovmf_digest(fw)),
        (None, None) => return Err(SnpError::Input("no firmware and no firmware digest".into())),
    };
    let mut hashes_used = false;
    for s in &l.layout.sections {
        let gpa = u64::from(s.gpa);
        match s.kind {
            SectionKind::SnpSecMem | SectionKind::SvsmCaa => g.zero(gpa, s.size)?,
            SectionKind::SnpSecrets => g.update(5, gpa, &[0; 48]),
            SectionKind::Cpuid if l.vmm != Vmm::Ec2 => g.update(6, gpa, &[0; 48]),
            SectionKind::Cpuid => {}
            SectionKind::SnpKernelHashes => match l.kernel {
                Some((kernel, initrd, cmdline)) => {
                    if s.size as usize != PAGE {
                        return Err(SnpError::Ovmf(format!(
                            "the kernel hashes section is {:#x} bytes, not one page",
                            s.size
                        )));
                    }
                    let table_gpa = l.layout.hash_table_gpa.ok_or_else(|| {
                        SnpError::Ovmf("no hashes table address (SEV hash table GUID)".into())
                    })?;
                    g.normal(gpa, &hashes_page(table_gpa, kernel, initrd, cmdline));
                    hashes_used = true;
                }
                None => g.zero(gpa, s.size)?,
            },
        }
    }
    if l.vmm == Vmm::Ec2 {
        for s in l
            .layout
            .sections
            .iter()
            .filter(|s| s.kind == SectionKind::Cpuid)
        {
            g.update(6, u64::from(s.gpa), &[0; 48]);
        }
    }
    if l.kernel.is_some() && !hashes_used {
        return Err(SnpError::Input(
            "a kernel is given but the firmware's SEV metadata has no kernel hashes section \
             (use a firmware built for direct boot, such as OVMF's AmdSev package)"
                .into(),
        ));
    }
    let bsp = vmsa(l.vmm, true, 0xffff_fff0, l.vcpu_signature, l.guest_features);
    g.update(2, VMSA_GPA, &Sha384::digest(bsp).into());
    if l.vcpus > 1 {
        if l.layout.reset_eip == 0 {
            return Err(SnpError::Ovmf("the AP reset address is 0".into()));
        }
        let ap = vmsa(
            l.vmm,
            false,
            l.layout.reset_eip,
            l.vcpu_signature,
            l.guest_features,
        );
        let ap_digest: [u8; 48] = Sha384::digest(ap).into();
        for _ in 1..l.vcpus {
            g.update(2, VMSA_GPA, &ap_digest);
        }
    }
    Ok(g.0)
}

#[cfg(test)]
mod tests;
