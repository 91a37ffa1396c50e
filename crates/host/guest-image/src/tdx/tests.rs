use super::*;
use crate::ovmf::FOOTER_GUID;

/// A firmware image with TDVF metadata listing `sections`, and `data`
/// copied in at its offset.
fn image(sections: &[Section], data: &[(usize, Vec<u8>)]) -> Vec<u8> {
    let mut fw = vec![0u8; 0x8000];
    for (at, bytes) in data {
        fw[*at..*at + bytes.len()].copy_from_slice(bytes);
    }
    let meta = 0x6000;
    fw[meta..meta + 4].copy_from_slice(b"TDVF");
    fw[meta + 4..meta + 8].copy_from_slice(&(16 + 32 * sections.len() as u32).to_le_bytes());
    fw[meta + 8..meta + 12].copy_from_slice(&1u32.to_le_bytes());
    fw[meta + 12..meta + 16].copy_from_slice(&(sections.len() as u32).to_le_bytes());
    for (i, s) in sections.iter().enumerate() {
        let d = meta + 16 + 32 * i;
        fw[d..d + 4].copy_from_slice(&s.data_offset.to_le_bytes());
        fw[d + 4..d + 8].copy_from_slice(&s.raw_size.to_le_bytes());
        fw[d + 8..d + 16].copy_from_slice(&s.gpa.to_le_bytes());
        fw[d + 16..d + 24].copy_from_slice(&s.size.to_le_bytes());
        fw[d + 24..d + 28].copy_from_slice(&s.kind.to_le_bytes());
        fw[d + 28..d + 32].copy_from_slice(&s.attributes.to_le_bytes());
    }
    // The footer table: the TDX entry (offset from the end), then the footer.
    let n = fw.len();
    let end = n - 50;
    fw[end - 22..end - 18].copy_from_slice(&((n - meta) as u32).to_le_bytes());
    fw[end - 18..end - 16].copy_from_slice(&22u16.to_le_bytes());
    fw[end - 16..end].copy_from_slice(&TDX_METADATA_OFFSET);
    fw[n - 50..n - 48].copy_from_slice(&(18u16 + 22).to_le_bytes());
    fw[n - 48..n - 32].copy_from_slice(&FOOTER_GUID);
    fw
}

fn temp(gpa: u64, size: u64) -> Section {
    Section {
        data_offset: 0,
        raw_size: 0,
        gpa,
        size,
        kind: 3,
        attributes: 0,
    }
}

fn bfv() -> (Section, (usize, Vec<u8>)) {
    let s = Section {
        data_offset: 0x1000,
        raw_size: 0x2000,
        gpa: 0xffff_e000,
        size: 0x2000,
        kind: 0,
        attributes: ATTR_EXTEND_MR,
    };
    (s, (0x1000, (0..0x2000).map(|k| (k % 256) as u8).collect()))
}

/// Known answers computed by an independent implementation of the TDX
/// module's PAGE.ADD and MR.EXTEND hashing.
#[test]
fn mrtd_known_answers() {
    let fw = image(&[temp(0x80_0000, 0x1000)], &[]);
    assert_eq!(
        hex::encode(mrtd(&fw, PageOrder::Interleaved).unwrap()),
        "73e66eb2f63d5a2c92c756c54b86b24f1a3d87c07a191518580ba4b227f9edda1faeb4223ffb2dd70c789055f9af5e7c"
    );
    let (b, data) = bfv();
    let fw = image(&[b], std::slice::from_ref(&data));
    assert_eq!(
        hex::encode(mrtd(&fw, PageOrder::Interleaved).unwrap()),
        "a6d8f259830e661e1259865270122afb3672513880c1840aaa3c7699e59aed49fcef317ee0c3b7b09f8acab9341fd56b"
    );
    assert_eq!(
        hex::encode(mrtd(&fw, PageOrder::TwoPass).unwrap()),
        "30e863beea7053f60be078272ae44bd1a13ef90ed9cc8ef8c3c114a74e3a0af6ee88544396b4daed79614be52d74de1f"
    );
    let fw = image(&[b, temp(0x80_0000, 0x2000)], &[data]);
    assert_eq!(
        hex::encode(mrtd(&fw, PageOrder::Interleaved).unwrap()),
        "ca00b1e619aba93c12587d110855a3fab9414f328a3b6622e63979c0301829fb58b9c2c5450e88c32a0774e51428beed"
    );
    // Pages accepted later are not part of MRTD.
    let mut aug = temp(0x90_0000, 0x1000);
    aug.attributes = ATTR_PAGE_AUG;
    let fw2 = image(&[b, temp(0x80_0000, 0x2000), aug], &[bfv().1]);
    assert_eq!(
        mrtd(&fw2, PageOrder::Interleaved).unwrap(),
        mrtd(&fw, PageOrder::Interleaved).unwrap()
    );
}

#[test]
fn rtmr_events_and_kernel_release() {
    assert_eq!(
        hex::encode(replay384(&[sha384(&[0; 4])])),
        "518923b0f955d08da077c96aaba522b9decede61c599cea6c41889cfbea4ae4d50529d96fe4d1afdafb65e7f95bf23c4"
    );
    let options: [u8; 48] = hex::decode(
        "1d26f8aff8992fdfc37e88b4fdf4a1a0ebb815a2ce925ea3046b3ba1f24a933e75a163af2af579268c20ca5f476f5386",
    )
    .unwrap()
    .try_into()
    .unwrap();
    assert_eq!(
        rtmr2(b"initrd", "console=ttyS0", true),
        replay384(&[options, sha384(b"initrd")])
    );
    assert_eq!(rtmr2(b"initrd", "console=ttyS0", false), [0; 48]);
    let mut k = vec![0u8; 0x1000];
    k[0x202..0x206].copy_from_slice(b"HdrS");
    k[0x20e..0x210].copy_from_slice(&0x300u16.to_le_bytes());
    k[0x500..0x51f].copy_from_slice(b"6.1.0-28-cloud-amd64 (debian-ke");
    assert_eq!(kernel_release(&k).as_deref(), Some("6.1.0-28-cloud-amd64"));
    assert_eq!(stub_measures_cc(&k), Some(false));
    k[0x500..0x507].copy_from_slice(b"6.12.3 ");
    assert_eq!(stub_measures_cc(&k), Some(true));
    assert_eq!(stub_measures_cc(b"no header"), None);
}

#[test]
fn malformed_metadata_is_refused() {
    assert!(
        sections(&[0u8; 0x8000])
            .unwrap_err()
            .to_string()
            .contains("no TDX metadata")
    );
    let (mut b, data) = bfv();
    b.size = 0x1800;
    let e = sections(&image(&[b], &[data])).unwrap_err().to_string();
    assert!(e.contains("not whole pages"), "{e}");
    let (mut b, data) = bfv();
    b.data_offset = 0x7000;
    let e = sections(&image(&[b], &[data])).unwrap_err().to_string();
    assert!(e.contains("runs past the image"), "{e}");
    let mut fw = image(&[temp(0x80_0000, 0x1000)], &[]);
    fw[0x6000..0x6004].copy_from_slice(b"XXXX");
    assert!(
        sections(&fw)
            .unwrap_err()
            .to_string()
            .contains("no TDVF signature")
    );
}

/// Debian's OVMF.fd carries TDVF metadata; its MRTD both ways, as an
/// independent implementation of the TDX module's hashing computed them.
#[test]
fn debians_ovmf_mrtd() {
    let fw = std::fs::read("/usr/share/ovmf/OVMF.fd")
        .expect("/usr/share/ovmf/OVMF.fd (scripts/test installs ovmf)");
    let s = sections(&fw).unwrap();
    assert_eq!(s.len(), 6);
    assert_eq!(
        (s[0].kind, s[0].gpa, s[0].attributes),
        (0, 0xffe2_0000, ATTR_EXTEND_MR)
    );
    assert_eq!(
        hex::encode(mrtd(&fw, PageOrder::Interleaved).unwrap()),
        "4c7206f0f483c524f12c366c711e9049030a8d47c471ee5aa9c4999a08de4057fb887fed0744d5631a212967fb231c47"
    );
    assert_eq!(
        hex::encode(mrtd(&fw, PageOrder::TwoPass).unwrap()),
        "acccbcc870a381adab0d3919d90a7f268ac3b0364771f202ed4bb4e892d045b33db3b32e6924cba830a724eed443f7e1"
    );
}
