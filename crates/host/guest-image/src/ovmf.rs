//! The GUID table OVMF keeps at the end of its image (just below the
//! reset vector): firmware facts a VMM or a measurement needs, such as the
//! SEV and TDX metadata offsets. Entries are read backwards from the
//! table's footer: each is its data, a u16 size (data and header) and a
//! GUID.

use crate::vtpm::guid_le;

/// The GUID of the table's footer entry.
pub const FOOTER_GUID: [u8; 16] = guid_le(
    0x96b582de,
    0x1fb2,
    0x45f7,
    [0xba, 0xea, 0xa3, 0x66, 0xc5, 0x5a, 0x08, 0x2d],
);

fn u16_at(b: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([b[at], b[at + 1]])
}

/// An entry of the footer table: its GUID and data.
pub type Entry<'a> = ([u8; 16], &'a [u8]);

/// The entries of the GUID table at the end of an OVMF image, last first
/// (none when the image has no table).
pub fn footer_table(fw: &[u8]) -> Result<Vec<Entry<'_>>, String> {
    let bad = |s: &str| s.to_string();
    let len = fw.len();
    if len < 50 || fw[len - 48..len - 32] != FOOTER_GUID {
        return Ok(Vec::new());
    }
    let total = usize::from(u16_at(fw, len - 50));
    if total < 18 || total - 18 > len - 50 {
        return Err(bad("the GUID table's size runs past the image"));
    }
    let mut table = &fw[len - 50 - (total - 18)..len - 50];
    let mut out = Vec::new();
    while table.len() >= 18 {
        let n = table.len();
        let size = usize::from(u16_at(table, n - 18));
        if size < 18 || size > n {
            return Err(bad("a GUID table entry has an impossible size"));
        }
        let mut guid = [0u8; 16];
        guid.copy_from_slice(&table[n - 16..]);
        out.push((guid, &table[n - size..n - 18]));
        table = &table[..n - size];
    }
    Ok(out)
}

/// The first four bytes of the entry `guid` as a little-endian u32.
pub fn entry_u32(table: &[Entry<'_>], guid: &[u8; 16]) -> Option<u32> {
    table
        .iter()
        .find(|(id, _)| id == guid)
        .map(|(_, d)| *d)
        .filter(|d| d.len() >= 4)
        .map(|d| u32::from_le_bytes([d[0], d[1], d[2], d[3]]))
}
