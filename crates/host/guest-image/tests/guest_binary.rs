//! The release guest binary (scripts/build-guest) carries no unwind tables,
//! and still ends an error with its message and exit code when the
//! environment asks for backtraces: the unwinder, finding no table for its
//! own frame, would abort the process (as PID 1, the whole VM).

mod common;

use common::guest_binary;

const PT_GNU_EH_FRAME: u32 = 0x6474_e550;

#[test]
fn the_release_guest_binary_has_no_unwind_tables() {
    let bin = std::fs::read(guest_binary()).unwrap();
    let types = cocoon_guest_image::elf::program_header_types(&bin).unwrap();
    let names: Vec<String> = cocoon_guest_image::elf::sections(&bin)
        .unwrap()
        .into_iter()
        .map(|(name, _)| String::from_utf8_lossy(name).into_owned())
        .collect();
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
