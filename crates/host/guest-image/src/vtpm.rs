//! The SHA-256 PCRs a pod VM's vTPM holds after OVMF boots a guest image
//! directly (QEMU `-kernel/-initrd/-append`), computed from the artifacts:
//!
//! - **PCR 4**: the kernel image as OVMF loads it (its Authenticode digest),
//!   then OVMF's boot action and separator. OVMF gets the kernel from QEMU's
//!   fw_cfg, where QEMU has already written boot-protocol fields into the
//!   setup header (loader type, heap end, command-line pointer, initrd
//!   address and size), and those bytes are hashed: the value depends on
//!   the initrd size and on the VM's memory (which places the initrd).
//! - **PCR 9**: what the kernel's EFI stub measures: its load options (the
//!   command line OVMF passes, with `initrd=initrd` appended, UTF-16 with
//!   the terminator), then the initrd.
//! - **PCR 12**: the command line as PID 1 reads and extends it.
//! - **PCRs 2, 3, 5, 6, 7**: OVMF's fixed boot flow (separators, the
//!   ExitBootServices actions, secure boot off with empty key databases).
//!
//! PCRs 0 (firmware code) and 1 (firmware and VMM configuration: boot
//! entries, SMBIOS) belong to the platform (OVMF build and QEMU), not to
//! the guest image.

use sha2::{Digest, Sha256};
use std::collections::BTreeMap;

/// What OVMF logs in PCR 4 when it hands control to the OS (at
/// ReadyToBoot), after the kernel image was measured at load.
pub const OVMF_BOOT_ACTION: &str = "Calling EFI Application from Boot Option";
/// What OVMF appends to the kernel command line when it hands the kernel
/// an initrd (the kernel, and so PID 1, see it in `/proc/cmdline`).
pub const OVMF_INITRD_ARG: &str = "initrd=initrd";
/// The PCR PID 1 extends with the command line.
pub const CMDLINE_PCR: u32 = 12;

const EXIT_BOOT_SERVICES: &str = "Exit Boot Services Invocation";
const EXIT_BOOT_SERVICES_OK: &str = "Exit Boot Services Returned with Success";
const EFI_GLOBAL_VARIABLE: [u8; 16] = guid_le(
    0x8be4df61,
    0x93ca,
    0x11d2,
    [0xaa, 0x0d, 0x00, 0xe0, 0x98, 0x03, 0x2b, 0x8c],
);
const EFI_IMAGE_SECURITY_DATABASE: [u8; 16] = guid_le(
    0xd719b2cb,
    0x3d3a,
    0x4596,
    [0xa3, 0xbc, 0xda, 0xd0, 0x0e, 0x67, 0x65, 0x6f],
);

pub(crate) const fn guid_le(a: u32, b: u16, c: u16, d: [u8; 8]) -> [u8; 16] {
    let a = a.to_le_bytes();
    let b = b.to_le_bytes();
    let c = c.to_le_bytes();
    [
        a[0], a[1], a[2], a[3], b[0], b[1], c[0], c[1], d[0], d[1], d[2], d[3], d[4], d[5], d[6],
        d[7],
    ]
}

/// A PCR extended from zero with `digests`, in order.
pub fn replay<D: AsRef<[u8]>>(digests: &[D]) -> [u8; 32] {
    extend_from_zero::<Sha256, D>(digests).into()
}

/// A register of hash `H` (a PCR bank, an RTMR) extended from zero with
/// `digests`, in order.
pub fn extend_from_zero<H: Digest, D: AsRef<[u8]>>(digests: &[D]) -> sha2::digest::Output<H> {
    digests.iter().fold(Default::default(), |r, d| {
        let mut h = H::new();
        h.update(&r);
        h.update(d.as_ref());
        h.finalize()
    })
}

fn separator() -> [u8; 32] {
    Sha256::digest([0u8; 4]).into()
}

/// The digest of an EV_EFI_VARIABLE_DRIVER_CONFIG event (UEFI_VARIABLE_DATA).
fn variable_event(guid: &[u8; 16], name: &str, data: &[u8]) -> [u8; 32] {
    let name16: Vec<u8> = name.encode_utf16().flat_map(u16::to_le_bytes).collect();
    let mut h = Sha256::new();
    h.update(guid);
    h.update((name.encode_utf16().count() as u64).to_le_bytes());
    h.update((data.len() as u64).to_le_bytes());
    h.update(&name16);
    h.update(data);
    h.finalize().into()
}

/// The kernel's Authenticode SHA-256 (PE/COFF image hash, signatures
/// excluded).
pub fn authenticode_sha256(image: &[u8]) -> Result<[u8; 32], String> {
    Ok(authenticode_with::<Sha256>(image)?.into())
}

/// The kernel's Authenticode digest with hash `D`.
pub fn authenticode_with<D: Digest + sha2::digest::Update>(
    image: &[u8],
) -> Result<sha2::digest::Output<D>, String> {
    let pe = object::read::pe::PeFile64::parse(image)
        .map_err(|e| format!("the kernel is not a PE32+ image (no EFI stub?): {e}"))?;
    let mut h = D::new();
    authenticode::authenticode_digest(&pe, &mut h)
        .map_err(|e| format!("the kernel's PE headers are inconsistent: {e}"))?;
    Ok(h.finalize())
}

/// From this much guest memory (MiB) up, QEMU's q35 machine keeps 2 GiB
/// below 4 GiB; below it, all of it.
pub const Q35_HIGH_MEMORY_MIB: u32 = 2816;

/// QEMU's q35 machine: RAM below 4 GiB for `memory_mib` of guest memory.
fn below_4g(memory_mib: u32) -> u64 {
    if memory_mib >= Q35_HIGH_MEMORY_MIB {
        0x8000_0000
    } else {
        u64::from(memory_mib) << 20
    }
}

/// The memory size whose PCR 4 a VM of `memory_mib` shares: itself, or
/// 2048 MiB (2 GiB below 4 GiB too) from [`Q35_HIGH_MEMORY_MIB`] up.
pub fn pcr4_memory_class(memory_mib: u32) -> u32 {
    if memory_mib >= Q35_HIGH_MEMORY_MIB {
        2048
    } else {
        memory_mib
    }
}

/// The kernel as OVMF receives it from QEMU (7.2, `-kernel` with an
/// initrd): the setup header fields of the Linux boot protocol that QEMU
/// fills in before handing the image over through fw_cfg.
pub fn kernel_as_loaded(
    kernel: &[u8],
    initrd_len: usize,
    cmdline: &str,
    memory_mib: u32,
) -> Result<Vec<u8>, String> {
    if kernel.len() < 0x1000 || &kernel[0x202..0x206] != b"HdrS" {
        return Err("the kernel has no Linux boot protocol header".into());
    }
    let protocol = u16::from_le_bytes([kernel[0x206], kernel[0x207]]);
    if protocol < 0x203 || kernel[0x211] & 0x01 == 0 {
        return Err(format!(
            "boot protocol {protocol:#x} (or a kernel not loaded high) is not modelled"
        ));
    }
    if cmdline.split(' ').any(|a| a.starts_with("vga=")) {
        return Err("a vga= argument (QEMU rewrites the video mode) is not modelled".into());
    }
    // Where QEMU puts things for a protocol >= 2.02 kernel.
    const REAL_ADDR: u32 = 0x10000;
    const CMDLINE_ADDR: u32 = 0x20000;
    // QEMU reserves this much below the top of low RAM for ACPI tables.
    const ACPI_DATA_SIZE: u64 = 0x20000 + 0x8000;
    let mut k = kernel.to_vec();
    k[0x210] = 0xb0; // type_of_loader: QEMU
    k[0x211] |= 0x80; // loadflags: CAN_USE_HEAP
    k[0x224..0x226].copy_from_slice(&((CMDLINE_ADDR - REAL_ADDR - 0x200) as u16).to_le_bytes());
    k[0x228..0x22c].copy_from_slice(&CMDLINE_ADDR.to_le_bytes());
    // A kernel that can take its initrd above 4 GiB (boot protocol 2.12
    // XLF_CAN_BE_LOADED_ABOVE_4G) gets it as high as 32 bits allow; others
    // below their initrd_addr_max.
    let xlf = u16::from_le_bytes([k[0x236], k[0x237]]);
    let header_max = if protocol >= 0x20c && xlf & 0x2 != 0 {
        u64::from(u32::MAX)
    } else {
        u64::from(u32::from_le_bytes([k[0x22c], k[0x22d], k[0x22e], k[0x22f]]))
    };
    let low = below_4g(memory_mib);
    if low <= ACPI_DATA_SIZE {
        return Err(format!("{memory_mib} MiB is too little memory for a guest"));
    }
    let initrd_max = if header_max >= low - ACPI_DATA_SIZE {
        low - ACPI_DATA_SIZE - 1
    } else {
        header_max
    };
    let len = initrd_len as u64;
    if len >= initrd_max {
        return Err(format!(
            "an initrd of {len} bytes does not fit below {initrd_max:#x} with {memory_mib} MiB"
        ));
    }
    let addr = ((initrd_max - len) & !4095) as u32;
    k[0x218..0x21c].copy_from_slice(&addr.to_le_bytes());
    k[0x21c..0x220].copy_from_slice(&(len as u32).to_le_bytes());
    Ok(k)
}

/// The load options OVMF gives the kernel: the command line with
/// [`OVMF_INITRD_ARG`] appended (what `/proc/cmdline` shows).
pub fn ovmf_cmdline(cmdline: &str) -> String {
    format!("{cmdline} {OVMF_INITRD_ARG}")
}

/// PCR 4 for a VM of `memory_mib`: the kernel as loaded (it depends on
/// the initrd's size, the command line and the memory), then OVMF's boot
/// action and separator.
pub fn pcr4(
    kernel: &[u8],
    initrd_len: usize,
    cmdline: &str,
    memory_mib: u32,
) -> Result<[u8; 32], String> {
    let loaded = kernel_as_loaded(kernel, initrd_len, cmdline, memory_mib)?;
    Ok(replay(&[
        authenticode_sha256(&loaded)?,
        Sha256::digest(OVMF_BOOT_ACTION).into(),
        separator(),
    ]))
}

/// PCR 9: the EFI stub's load options (UTF-16 with the terminator), then
/// the initrd.
pub fn pcr9(initrd: &[u8], cmdline: &str) -> [u8; 32] {
    let options: Vec<u8> = ovmf_cmdline(cmdline)
        .encode_utf16()
        .chain([0])
        .flat_map(u16::to_le_bytes)
        .collect();
    replay(&[Sha256::digest(&options), Sha256::digest(initrd)])
}

/// PCR 12: the command line the kernel got, extended by PID 1.
pub fn pcr12(cmdline: &str) -> [u8; 32] {
    replay(&[Sha256::digest(ovmf_cmdline(cmdline).as_bytes())])
}

/// The PCRs of OVMF's own boot flow (a build without secure boot keys):
/// 2, 3 and 6 hold the separator alone; 5 the separator and the
/// ExitBootServices actions; 7 secure boot off, empty PK, KEK, db and dbx,
/// then the separator.
pub fn ovmf_flow_pcrs() -> BTreeMap<u32, [u8; 32]> {
    let sep = separator();
    let pcr7 = replay(&[
        variable_event(&EFI_GLOBAL_VARIABLE, "SecureBoot", &[0]),
        variable_event(&EFI_GLOBAL_VARIABLE, "PK", &[]),
        variable_event(&EFI_GLOBAL_VARIABLE, "KEK", &[]),
        variable_event(&EFI_IMAGE_SECURITY_DATABASE, "db", &[]),
        variable_event(&EFI_IMAGE_SECURITY_DATABASE, "dbx", &[]),
        sep,
    ]);
    let pcr5 = replay(&[
        sep,
        Sha256::digest(EXIT_BOOT_SERVICES).into(),
        Sha256::digest(EXIT_BOOT_SERVICES_OK).into(),
    ]);
    BTreeMap::from([
        (2, replay(&[sep])),
        (3, replay(&[sep])),
        (5, pcr5),
        (6, replay(&[sep])),
        (7, pcr7),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn separator_only_pcr_is_the_well_known_value() {
        assert_eq!(
            hex::encode(ovmf_flow_pcrs()[&2]),
            "3d458cfe55cc03ea1f443f1562beec8df51c75e14a9fcf9a7234a13f198e7969"
        );
    }

    #[test]
    fn globals_guid_is_in_uefi_byte_order() {
        assert_eq!(
            hex::encode(EFI_GLOBAL_VARIABLE),
            "61dfe48bca93d211aa0d00e098032b8c"
        );
    }

    fn fake_kernel() -> Vec<u8> {
        let mut k = vec![0u8; 0x2000];
        k[0x202..0x206].copy_from_slice(b"HdrS");
        k[0x206..0x208].copy_from_slice(&0x20fu16.to_le_bytes());
        k[0x211] = 0x01;
        k[0x22c..0x230].copy_from_slice(&0x7fff_ffffu32.to_le_bytes());
        k
    }

    #[test]
    fn qemu_places_the_initrd_below_low_ram_minus_acpi() {
        let k = kernel_as_loaded(&fake_kernel(), 5000, "console=ttyS0", 512).unwrap();
        let addr = u32::from_le_bytes(k[0x218..0x21c].try_into().unwrap());
        assert_eq!(addr, ((512u32 << 20) - 0x28000 - 1 - 5000) & !4095);
        assert_eq!(
            u32::from_le_bytes(k[0x21c..0x220].try_into().unwrap()),
            5000
        );
        assert_eq!(k[0x210], 0xb0);
        assert_eq!(k[0x211], 0x81);
        // Above 2.75 GiB of RAM, q35 keeps 2 GiB below 4 GiB.
        let a = kernel_as_loaded(&fake_kernel(), 5000, "", 3072).unwrap();
        let b = kernel_as_loaded(&fake_kernel(), 5000, "", 8192).unwrap();
        assert!(a == b);
        assert!(a == kernel_as_loaded(&fake_kernel(), 5000, "", 2048).unwrap());
        assert!(a != kernel_as_loaded(&fake_kernel(), 5000, "", 1024).unwrap());
    }

    #[test]
    fn kernels_loadable_above_4g_take_the_initrd_up_to_the_top_of_low_ram() {
        // Checked against QEMU 7.2 with OVMF: 2560 MiB, where the header's
        // 2 GiB initrd_addr_max and the 32-bit limit disagree.
        let mut k = fake_kernel();
        k[0x236..0x238].copy_from_slice(&0x7fu16.to_le_bytes());
        let l = kernel_as_loaded(&k, 5000, "", 2560).unwrap();
        let addr = u32::from_le_bytes(l[0x218..0x21c].try_into().unwrap());
        assert_eq!(addr, ((2560u32 << 20) - 0x28000 - 1 - 5000) & !4095);
        let old = kernel_as_loaded(&fake_kernel(), 5000, "", 2560).unwrap();
        let addr = u32::from_le_bytes(old[0x218..0x21c].try_into().unwrap());
        assert_eq!(addr, (0x7fff_ffff - 5000) & !4095);
        // Below 2 GiB both give the same placement.
        assert!(
            kernel_as_loaded(&k, 5000, "", 1024).unwrap()[0x218..0x220]
                == kernel_as_loaded(&fake_kernel(), 5000, "", 1024).unwrap()[0x218..0x220]
        );
    }

    #[test]
    fn unmodelled_inputs_are_refused() {
        assert!(kernel_as_loaded(&fake_kernel(), 1, "", 0).is_err());
        let mut old = fake_kernel();
        old[0x206..0x208].copy_from_slice(&0x201u16.to_le_bytes());
        assert!(kernel_as_loaded(&old, 1, "", 512).is_err());
        assert!(kernel_as_loaded(&fake_kernel(), 1, "vga=791", 512).is_err());
        assert!(kernel_as_loaded(&[0u8; 100], 1, "", 512).is_err());
        assert!(kernel_as_loaded(&fake_kernel(), 600 << 20, "", 512).is_err());
    }
}
