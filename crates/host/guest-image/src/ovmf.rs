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

/// The little-endian u32 at `at` (the caller checked the bounds).
pub(crate) fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]])
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

/// A firmware metadata block: its length and entries.
pub(crate) type Metadata<'a> = (usize, Vec<&'a [u8]>);

/// The entries of a firmware metadata block (SEV's `ASEV`, TDX's `TDVF`):
/// the footer entry `guid` holds its offset from the end of the image; it
/// starts with a 16-byte header (signature, length, version 1, number of
/// entries) and `entry` bytes per entry follow. Its length and entries, or
/// `None` when the image has no such entry; `what` names the block in
/// errors.
pub(crate) fn metadata<'a>(
    fw: &'a [u8],
    table: &[Entry<'_>],
    guid: &[u8; 16],
    signature: &[u8; 4],
    entry: usize,
    what: &str,
) -> Result<Option<Metadata<'a>>, String> {
    let Some(offset) = entry_u32(table, guid).map(|o| o as usize) else {
        return Ok(None);
    };
    if offset < 16 || offset > fw.len() {
        return Err(format!("the {what} metadata offset is outside the image"));
    }
    let head = &fw[fw.len() - offset..];
    if &head[..4] != signature {
        return Err(format!(
            "the {what} metadata has no {} signature",
            String::from_utf8_lossy(signature)
        ));
    }
    let length = u32_at(head, 4) as usize;
    let version = u32_at(head, 8);
    let count = u32_at(head, 12) as usize;
    if version != 1 {
        return Err(format!(
            "{what} metadata version {version} (only 1 is known)"
        ));
    }
    if length > head.len() || length < 16 || count > (length - 16) / entry {
        return Err(format!(
            "the {what} metadata length {length} does not hold its {count} sections"
        ));
    }
    Ok(Some((
        length,
        (0..count)
            .map(|i| &head[16 + entry * i..16 + entry * (i + 1)])
            .collect(),
    )))
}

/// The first four bytes of the entry `guid` as a little-endian u32.
pub fn entry_u32(table: &[Entry<'_>], guid: &[u8; 16]) -> Option<u32> {
    table
        .iter()
        .find(|(id, _)| id == guid)
        .map(|(_, d)| *d)
        .filter(|d| d.len() >= 4)
        .map(|d| u32_at(d, 0))
}
