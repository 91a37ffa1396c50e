//! The SEV-SNP attestation report (AMD SEV-SNP ABI, `ATTESTATION_REPORT`),
//! parsed at explicit offsets. Versions 2 and later; 1184 bytes, of which
//! the first 0x2A0 are signed.

/// Size of a report.
pub const REPORT_LEN: usize = 0x4A0;
/// Length of the signed part (everything before the signature).
pub const SIGNED_LEN: usize = 0x2A0;

/// Why a report did not parse.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum ReportError {
    /// Wrong length.
    #[error("an SNP report is {REPORT_LEN} bytes, got {0}")]
    Length(usize),
    /// Version 1 reports have another layout; 0 is invalid.
    #[error("SNP report version {0} is not supported (2 or later)")]
    Version(u32),
    /// Only ECDSA P-384 with SHA-384 is defined.
    #[error("SNP report signature algorithm {0} is not ECDSA P-384/SHA-384 (1)")]
    SignatureAlgorithm(u32),
}

/// A TCB version as the report carries it (one 64-bit value whose byte
/// layout depends on the processor generation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TcbVersion(pub u64);

/// The per-component security patch levels of a [`TcbVersion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TcbParts {
    /// Firmware (Turin and later only).
    pub fmc: Option<u8>,
    /// Boot loader SPL.
    pub bootloader: u8,
    /// PSP OS (TEE) SPL.
    pub tee: u8,
    /// SNP firmware SPL.
    pub snp: u8,
    /// Microcode SPL.
    pub microcode: u8,
}

impl TcbVersion {
    /// The parts, for Milan/Genoa (`turin == false`) or Turin layouts.
    pub fn parts(self, turin: bool) -> TcbParts {
        let b = self.0.to_le_bytes();
        if turin {
            TcbParts {
                fmc: Some(b[0]),
                bootloader: b[1],
                tee: b[2],
                snp: b[3],
                microcode: b[7],
            }
        } else {
            TcbParts {
                fmc: None,
                bootloader: b[0],
                tee: b[1],
                snp: b[6],
                microcode: b[7],
            }
        }
    }
}

/// A parsed report (fields named as in the ABI specification).
#[derive(Debug, Clone)]
pub struct SnpReport {
    /// Report format version.
    pub version: u32,
    /// Guest SVN.
    pub guest_svn: u32,
    /// Guest policy.
    pub policy: u64,
    /// Family ID supplied at launch.
    pub family_id: [u8; 16],
    /// Image ID supplied at launch.
    pub image_id: [u8; 16],
    /// VMPL the report was requested from.
    pub vmpl: u32,
    /// Signature algorithm (1 = ECDSA P-384 with SHA-384).
    pub sig_algo: u32,
    /// Current TCB.
    pub current_tcb: TcbVersion,
    /// Platform information bits.
    pub platform_info: u64,
    /// Bits 0 (author key enabled), 1 (MASK_CHIP_KEY), 2..4 (signing key: 0 VCEK, 1 VLEK).
    pub flags: u32,
    /// Guest-supplied report data.
    pub report_data: [u8; 64],
    /// Launch measurement.
    pub measurement: [u8; 48],
    /// Host-supplied data (CoCo: the initdata digest).
    pub host_data: [u8; 32],
    /// SHA-384 of the ID key.
    pub id_key_digest: [u8; 48],
    /// SHA-384 of the author key.
    pub author_key_digest: [u8; 48],
    /// Report ID.
    pub report_id: [u8; 32],
    /// Report ID of the migration agent.
    pub report_id_ma: [u8; 32],
    /// TCB used to derive the signing key.
    pub reported_tcb: TcbVersion,
    /// CPUID family/model/stepping (version 3 and later; zero before).
    pub cpuid: (u8, u8, u8),
    /// Chip identifier (hwID), zero when MASK_CHIP_ID is set.
    pub chip_id: [u8; 64],
    /// Committed TCB.
    pub committed_tcb: TcbVersion,
    /// Current firmware build, minor, major.
    pub current_version: (u8, u8, u8),
    /// Committed firmware build, minor, major.
    pub committed_version: (u8, u8, u8),
    /// TCB at launch.
    pub launch_tcb: TcbVersion,
    /// Signature R, big-endian.
    pub sig_r: [u8; 48],
    /// Signature S, big-endian.
    pub sig_s: [u8; 48],
}

fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes([b[o], b[o + 1], b[o + 2], b[o + 3]])
}

fn u64_at(b: &[u8], o: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[o..o + 8]);
    u64::from_le_bytes(a)
}

fn arr<const N: usize>(b: &[u8], o: usize) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&b[o..o + N]);
    a
}

/// The little-endian 72-byte signature component as a 48-byte big-endian scalar.
fn scalar(b: &[u8], o: usize) -> [u8; 48] {
    let mut a = [0u8; 48];
    for (i, x) in b[o..o + 48].iter().rev().enumerate() {
        a[i] = *x;
    }
    a
}

impl SnpReport {
    /// Parses a report.
    pub fn parse(b: &[u8]) -> Result<Self, ReportError> {
        if b.len() != REPORT_LEN {
            return Err(ReportError::Length(b.len()));
        }
        let version = u32_at(b, 0x00);
        if version < 2 {
            return Err(ReportError::Version(version));
        }
        let sig_algo = u32_at(b, 0x34);
        if sig_algo != 1 {
            return Err(ReportError::SignatureAlgorithm(sig_algo));
        }
        Ok(Self {
            version,
            guest_svn: u32_at(b, 0x04),
            policy: u64_at(b, 0x08),
            family_id: arr(b, 0x10),
            image_id: arr(b, 0x20),
            vmpl: u32_at(b, 0x30),
            sig_algo,
            current_tcb: TcbVersion(u64_at(b, 0x38)),
            platform_info: u64_at(b, 0x40),
            flags: u32_at(b, 0x48),
            report_data: arr(b, 0x50),
            measurement: arr(b, 0x90),
            host_data: arr(b, 0xC0),
            id_key_digest: arr(b, 0xE0),
            author_key_digest: arr(b, 0x110),
            report_id: arr(b, 0x140),
            report_id_ma: arr(b, 0x160),
            reported_tcb: TcbVersion(u64_at(b, 0x180)),
            cpuid: if version >= 3 {
                (b[0x188], b[0x189], b[0x18A])
            } else {
                (0, 0, 0)
            },
            chip_id: arr(b, 0x1A0),
            committed_tcb: TcbVersion(u64_at(b, 0x1E0)),
            current_version: (b[0x1E8], b[0x1E9], b[0x1EA]),
            committed_version: (b[0x1EC], b[0x1ED], b[0x1EE]),
            launch_tcb: TcbVersion(u64_at(b, 0x1F0)),
            sig_r: scalar(b, 0x2A0),
            sig_s: scalar(b, 0x2A0 + 72),
        })
    }

    /// 0 = VCEK, 1 = VLEK.
    pub fn signing_key(&self) -> u32 {
        (self.flags >> 2) & 0x7
    }

    /// Whether the chip ID is masked (MASK_CHIP_ID).
    pub fn chip_id_masked(&self) -> bool {
        self.chip_id.iter().all(|b| *b == 0)
    }
}
