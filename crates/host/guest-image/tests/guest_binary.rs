//! The release guest binary (scripts/build-guest) carries no unwind tables,
//! and still ends an error with its message and exit code when the
//! environment asks for backtraces: the unwinder, finding no table for its
//! own frame, would abort the process (as PID 1, the whole VM).

mod common;

use common::guest_binary;

const PT_GNU_EH_FRAME: u32 = 0x6474_e550;

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes([b[at], b[at + 1]]) as usize
}
fn u32_at(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
}
fn u64_at(b: &[u8], at: usize) -> usize {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize
}

/// The program header types and section names of a little-endian ELF64 file.
fn elf_layout(b: &[u8]) -> (Vec<u32>, Vec<String>) {
    assert_eq!(
        &b[..6],
        b"\x7fELF\x02\x01",
        "not a little-endian ELF64 file"
    );
    let (phoff, phentsize, phnum) = (u64_at(b, 0x20), u16_at(b, 0x36), u16_at(b, 0x38));
    let (shoff, shentsize, shnum) = (u64_at(b, 0x28), u16_at(b, 0x3a), u16_at(b, 0x3c));
    let types = (0..phnum)
        .map(|i| u32_at(b, phoff + i * phentsize))
        .collect();
    let shstr = shoff + u16_at(b, 0x3e) * shentsize;
    let strtab = &b[u64_at(b, shstr + 0x18)..][..u64_at(b, shstr + 0x20)];
    let names = (0..shnum)
        .map(|i| {
            let name = &strtab[u32_at(b, shoff + i * shentsize) as usize..];
            let end = name.iter().position(|&c| c == 0).unwrap();
            String::from_utf8_lossy(&name[..end]).into_owned()
        })
        .collect();
    (types, names)
}

#[test]
fn the_release_guest_binary_has_no_unwind_tables() {
    let bin = std::fs::read(guest_binary()).unwrap();
    let (types, names) = elf_layout(&bin);
    assert!(types.contains(&1), "no PT_LOAD: {types:x?}");
    assert!(names.iter().any(|n| n == ".text"), "{names:?}");
    assert!(
        !types.contains(&PT_GNU_EH_FRAME),
        "the guest binary has an unwind table index (build it with scripts/build-guest)"
    );
    assert!(
        !names.iter().any(|n| n.starts_with(".eh_frame")),
        "the guest binary has unwind tables: {names:?}"
    );
}

#[test]
fn an_error_exits_with_its_message_when_backtraces_are_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("no-data-hub.sock");
    for var in ["RUST_BACKTRACE", "RUST_LIB_BACKTRACE"] {
        for value in ["1", "full"] {
            let out = std::process::Command::new(guest_binary())
                .env_remove("RUST_BACKTRACE")
                .env_remove("RUST_LIB_BACKTRACE")
                .env(var, value)
                .args(["get-resource", "--cdh-socket"])
                .arg(format!("unix://{}", socket.display()))
                .arg("kbs:///default/key/1")
                .output()
                .unwrap();
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(1), "{var}={value}: {out:?}");
            assert!(
                stderr.contains("cannot connect to the data hub"),
                "{var}={value}: {stderr}"
            );
        }
    }
}
