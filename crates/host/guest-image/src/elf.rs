//! The parts of ELF64 little-endian files the image build reads: program
//! header types (is the guest binary static, has it unwind tables) and
//! sections (a kernel module's `.modinfo`). Every offset is checked
//! against the file; a malformed file is an error, never a panic.

/// Why a file cannot be read as ELF64 little-endian.
pub type ElfError = &'static str;

const SHT_NOBITS: u32 = 8;

fn bytes_at<const N: usize>(elf: &[u8], at: usize) -> Result<[u8; N], ElfError> {
    elf.get(at..at.checked_add(N).ok_or("bad offset")?)
        .and_then(|b| b.try_into().ok())
        .ok_or("truncated ELF file")
}
fn u16_at(elf: &[u8], at: usize) -> Result<usize, ElfError> {
    Ok(u16::from_le_bytes(bytes_at(elf, at)?).into())
}
fn u32_at(elf: &[u8], at: usize) -> Result<u32, ElfError> {
    Ok(u32::from_le_bytes(bytes_at(elf, at)?))
}
fn u64_at(elf: &[u8], at: usize) -> Result<usize, ElfError> {
    usize::try_from(u64::from_le_bytes(bytes_at(elf, at)?)).map_err(|_| "bad offset")
}
/// `base + i * size`, checked.
fn entry(base: usize, i: usize, size: usize) -> Result<usize, ElfError> {
    i.checked_mul(size)
        .and_then(|o| base.checked_add(o))
        .ok_or("bad table offset")
}

fn ident(elf: &[u8]) -> Result<(), ElfError> {
    if elf.get(..6) != Some(&[0x7f, b'E', b'L', b'F', 2, 1][..]) {
        return Err("not an ELF64 little-endian file");
    }
    Ok(())
}

/// The `p_type` of each program header.
pub fn program_header_types(elf: &[u8]) -> Result<Vec<u32>, ElfError> {
    ident(elf)?;
    let (phoff, phentsize, phnum) = (u64_at(elf, 0x20)?, u16_at(elf, 0x36)?, u16_at(elf, 0x38)?);
    (0..phnum)
        .map(|i| u32_at(elf, entry(phoff, i, phentsize)?))
        .collect()
}

/// A section's name and contents.
pub type Section<'a> = (&'a [u8], &'a [u8]);

/// Each section's name and contents (empty for a section that takes no
/// room in the file, such as `.bss`).
pub fn sections(elf: &[u8]) -> Result<Vec<Section<'_>>, ElfError> {
    ident(elf)?;
    let (shoff, shentsize) = (u64_at(elf, 0x28)?, u16_at(elf, 0x3a)?);
    let (shnum, shstrndx) = (u16_at(elf, 0x3c)?, u16_at(elf, 0x3e)?);
    if shentsize < 64 || shstrndx >= shnum {
        return Err("bad section header table");
    }
    let section = |i: usize| -> Result<(u32, &[u8]), ElfError> {
        let h = entry(shoff, i, shentsize)?;
        let (name, kind) = (u32_at(elf, h)?, u32_at(elf, h + 4)?);
        if kind == SHT_NOBITS {
            return Ok((name, &[]));
        }
        let (off, size) = (u64_at(elf, h + 0x18)?, u64_at(elf, h + 0x20)?);
        let data = elf
            .get(off..off.checked_add(size).ok_or("bad section")?)
            .ok_or("section outside the file")?;
        Ok((name, data))
    };
    let (_, names) = section(shstrndx)?;
    (0..shnum)
        .map(|i| {
            let (name, data) = section(i)?;
            let name = names
                .get(name as usize..)
                .and_then(|n| n.split(|b| *b == 0).next())
                .ok_or("section name outside the string table")?;
            Ok((name, data))
        })
        .collect()
}
