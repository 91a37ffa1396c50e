//! The Intel TDX measurements of a pod VM, computed from its artifacts:
//!
//! - **MRTD**: the TDX module's running SHA-384 over the pages the VMM
//!   adds from the TDVF (OVMF built for TDX) before the TD runs: a
//!   128-byte `MEM.PAGE.ADD` block per page and, for sections marked
//!   MR.EXTEND, a `MR.EXTEND` block and the 256 bytes for each chunk.
//!   The TDVF metadata (found through OVMF's footer GUID table) lists the
//!   sections.
//! - **RTMR1**: what OVMF measures for PCRs 2 to 6 (the mapping of UEFI's
//!   CC measurement protocol): the kernel as loaded (Authenticode
//!   SHA-384, with the setup-header fields QEMU writes), OVMF's boot action,
//!   the separator and the ExitBootServices actions.
//! - **RTMR2**: PCRs 8 to 15: the EFI stub's load options (the command
//!   line with `initrd=initrd`, UTF-16 with the terminator) and the initrd,
//!   for a kernel whose stub measures through the CC protocol (Linux 6.9
//!   and later); with an older stub nothing is measured there.
//!
//! RTMR0 (the TD HOB, configuration volume, ACPI tables and boot variables
//! QEMU provides) belongs to the platform, as PCRs 0 and 1 do for a vTPM.

use crate::ovmf::u32_at;
use crate::vtpm::{self, guid_le};
use sha2::{Digest, Sha384};

const TDX_METADATA_OFFSET: [u8; 16] = guid_le(
    0xe47a6535,
    0x984a,
    0x4798,
    [0x86, 0x5e, 0x46, 0x85, 0xa7, 0xbf, 0x8e, 0xc2],
);
const PAGE: usize = 4096;
const CHUNK: usize = 256;
/// Section attribute: the pages' contents are extended into MRTD.
pub const ATTR_EXTEND_MR: u32 = 0x1;
/// Section attribute: the pages are accepted later (TDH.MEM.PAGE.AUG), not
/// added at build time.
pub const ATTR_PAGE_AUG: u32 = 0x2;

/// Why TDX measurements cannot be computed.
#[derive(Debug, thiserror::Error)]
#[error("TDVF: {0}")]
pub struct TdxError(String);

/// A section of the TDVF metadata.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Section {
    /// Where its bytes are in the image.
    pub data_offset: u32,
    /// How many bytes the image holds for it.
    pub raw_size: u32,
    /// Guest physical address.
    pub gpa: u64,
    /// Size in guest memory.
    pub size: u64,
    /// BFV 0, CFV 1, TD_HOB 2, TempMem 3, PermMem 4, Payload 5,
    /// PayloadParam 6.
    pub kind: u32,
    /// [`ATTR_EXTEND_MR`], [`ATTR_PAGE_AUG`].
    pub attributes: u32,
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap_or([0; 8]))
}

/// The sections of a TDVF image's metadata.
pub fn sections(fw: &[u8]) -> Result<Vec<Section>, TdxError> {
    let bad = |s: String| TdxError(s);
    let table = crate::ovmf::footer_table(fw).map_err(bad)?;
    let (length, entries) =
        crate::ovmf::metadata(fw, &table, &TDX_METADATA_OFFSET, b"TDVF", 32, "TDX")
            .map_err(bad)?
            .ok_or_else(|| bad("no TDX metadata: not a firmware built for TDX".into()))?;
    if length != 16 + 32 * entries.len() {
        return Err(bad(format!(
            "the TDX metadata length {length} does not hold {} sections",
            entries.len()
        )));
    }
    let mut out = Vec::with_capacity(entries.len());
    for (i, d) in entries.into_iter().enumerate() {
        let s = Section {
            data_offset: u32_at(d, 0),
            raw_size: u32_at(d, 4),
            gpa: u64_at(d, 8),
            size: u64_at(d, 16),
            kind: u32_at(d, 24),
            attributes: u32_at(d, 28),
        };
        if !s.gpa.is_multiple_of(PAGE as u64)
            || !s.size.is_multiple_of(PAGE as u64)
            || s.size < u64::from(s.raw_size)
        {
            return Err(bad(format!(
                "section {i} ({:#x} bytes at {:#x}) is not whole pages holding its data",
                s.size, s.gpa
            )));
        }
        if s.size > 1 << 32 || s.gpa.checked_add(s.size).is_none_or(|end| end > 1 << 52) {
            return Err(bad(format!(
                "section {i} ({:#x} bytes at {:#x}) is larger than a firmware section can be",
                s.size, s.gpa
            )));
        }
        let extended = s.attributes & ATTR_EXTEND_MR != 0;
        if extended && u64::from(s.data_offset) + s.size > fw.len() as u64 {
            return Err(bad(format!("section {i}'s data runs past the image")));
        }
        out.push(s);
    }
    Ok(out)
}

/// In which order the VMM adds and extends pages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PageOrder {
    /// Each page added, then its chunks extended (KVM since TDX went
    /// upstream, QEMU 9 and later).
    #[default]
    Interleaved,
    /// All pages of a section added, then all its chunks extended (earlier
    /// TDX stacks, QEMU 8).
    TwoPass,
}

fn block(op: &[u8], gpa: u64) -> [u8; 128] {
    let mut b = [0u8; 128];
    b[..op.len()].copy_from_slice(op);
    b[16..24].copy_from_slice(&gpa.to_le_bytes());
    b
}

/// MRTD of a TDVF image.
pub fn mrtd(fw: &[u8], order: PageOrder) -> Result<[u8; 48], TdxError> {
    let secs = sections(fw)?;
    let mut h = Sha384::new();
    let extend = |h: &mut Sha384, s: &Section, page: u64| {
        let base = s.data_offset as usize + page as usize;
        for c in 0..PAGE / CHUNK {
            let gpa = s.gpa + page + (c * CHUNK) as u64;
            h.update(block(b"MR.EXTEND", gpa));
            h.update(&fw[base + c * CHUNK..base + (c + 1) * CHUNK]);
        }
    };
    for s in &secs {
        if s.attributes & ATTR_PAGE_AUG != 0 {
            continue;
        }
        let extended = s.attributes & ATTR_EXTEND_MR != 0;
        let pages = (0..s.size).step_by(PAGE);
        match order {
            PageOrder::Interleaved => {
                for p in pages {
                    h.update(block(b"MEM.PAGE.ADD", s.gpa + p));
                    if extended {
                        extend(&mut h, s, p);
                    }
                }
            }
            PageOrder::TwoPass => {
                for p in pages.clone() {
                    h.update(block(b"MEM.PAGE.ADD", s.gpa + p));
                }
                if extended {
                    for p in pages {
                        extend(&mut h, s, p);
                    }
                }
            }
        }
    }
    Ok(h.finalize().into())
}

/// An RTMR extended from zero with `digests`.
pub fn replay384<D: AsRef<[u8]>>(digests: &[D]) -> [u8; 48] {
    vtpm::extend_from_zero::<Sha384, D>(digests).into()
}

fn sha384(b: &[u8]) -> [u8; 48] {
    Sha384::digest(b).into()
}

/// RTMR1: the kernel as QEMU hands it to OVMF for a TD of `memory_mib`,
/// OVMF's boot action, separator and ExitBootServices actions.
pub fn rtmr1(
    kernel: &[u8],
    initrd_len: usize,
    cmdline: &str,
    memory_mib: u32,
) -> Result<[u8; 48], String> {
    let loaded = vtpm::kernel_as_loaded(kernel, initrd_len, cmdline, memory_mib)?;
    Ok(replay384(&[
        vtpm::authenticode_with::<Sha384>(&loaded)?.into(),
        sha384(vtpm::OVMF_BOOT_ACTION.as_bytes()),
        sha384(&[0; 4]),
        sha384(b"Exit Boot Services Invocation"),
        sha384(b"Exit Boot Services Returned with Success"),
    ]))
}

/// RTMR2: the EFI stub's load options and the initrd, when the stub
/// measures through the CC protocol; zero otherwise.
pub fn rtmr2(initrd: &[u8], cmdline: &str, stub_measures: bool) -> [u8; 48] {
    if !stub_measures {
        return [0; 48];
    }
    let options: Vec<u8> = vtpm::ovmf_cmdline(cmdline)
        .encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect();
    replay384(&[sha384(&options), sha384(initrd)])
}

/// The kernel release a bzImage names in its header (`6.1.0-28-cloud-amd64`).
pub fn kernel_release(kernel: &[u8]) -> Option<String> {
    if kernel.len() < 0x210 || &kernel[0x202..0x206] != b"HdrS" {
        return None;
    }
    let at = usize::from(u16::from_le_bytes([kernel[0x20e], kernel[0x20f]])) + 0x200;
    let tail = kernel.get(at..)?;
    let end = tail.iter().position(|b| *b == 0 || *b == b' ')?;
    std::str::from_utf8(&tail[..end]).ok().map(str::to_string)
}

/// Whether a kernel's EFI stub measures its load options and initrd
/// through the CC measurement protocol (Linux 6.9 and later), by the
/// release in its header.
pub fn stub_measures_cc(kernel: &[u8]) -> Option<bool> {
    let release = kernel_release(kernel)?;
    let mut parts = release.split(['.', '-']);
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some((major, minor) >= (6, 9))
}

#[cfg(test)]
mod tests;
