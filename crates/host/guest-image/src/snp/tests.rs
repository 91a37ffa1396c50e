use super::*;

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    let v = hex::decode(s).unwrap();
    v.try_into().unwrap()
}

/// The synthetic firmware layout of the known-answer tests of
/// `sev-snp-measure-go` (virtee's Go port of AMD's tool): its sections,
/// AP reset address, two vCPUs, features 0x1, EC2's launch, seeded with a
/// firmware digest.
fn go_layout() -> Layout {
    let s = |gpa, kind, size| Section { gpa, size, kind };
    Layout {
        sections: vec![
            s(0x80_0000, SectionKind::SnpSecMem, 0x9000),
            s(0x80_a000, SectionKind::SnpSecMem, 0x3000),
            s(0x80_d000, SectionKind::SnpSecrets, 0x1000),
            s(0x80_e000, SectionKind::Cpuid, 0x1000),
            s(0x80_f000, SectionKind::SnpSecMem, 0x11000),
        ],
        reset_eip: 0x80_b004,
        hash_table_gpa: None,
    }
}

#[test]
fn the_reference_tools_known_answers() {
    let layout = go_layout();
    for (seed, want) in [
        (
            "a58211791a556a630a4319dc9e2ea96cc0e9784dd9f20a4fadf81b26c98d163fcdcb6703884bbbb80d7b1de45b3d84d0",
            "4c6e33087d08fa770259484dddbef367086a15c3e2cf10038dc97229d39c942671c2e22b300178f8de594a3f2fa59303",
        ),
        (
            "2027a27bb9f7acfd280e4c7bd68a73973b94bf0756e5b282e004b9395f597b8d0eb4defa7d8f6549375aa4d2b146f0f3",
            "c2c84b9364fc9f0f54b04534768c860c6e0e386ad98b96e8b98eca46ac8971d05c531ba48373f054c880cfd1f4a0a84e",
        ),
    ] {
        let got = launch_digest(&Launch {
            ovmf: None,
            firmware_digest: Some(unhex(seed)),
            layout: &layout,
            kernel: None,
            vcpus: 2,
            vcpu_signature: 0,
            guest_features: 0x1,
            vmm: Vmm::Ec2,
        })
        .unwrap();
        assert_eq!(hex::encode(got), want);
    }
}

#[test]
fn vcpu_types_have_their_signatures() {
    assert_eq!(vcpu_signature(14, 1, 2), 0xe12);
    assert_eq!(vcpu_signature(23, 1, 2), 0x80_0f12);
    for (t, sig) in [
        ("EPYC-v4", 0x80_0f12),
        ("EPYC-Rome", 0x83_0f10),
        ("EPYC-Milan-v2", 0xa0_0f11),
        ("EPYC-Genoa", 0xa1_0f10),
        ("EPYC-Turin", 0xb0_0f00),
    ] {
        assert_eq!(vcpu_type_signature(t), Some(sig), "{t}");
    }
    assert_eq!(vcpu_type_signature("Skylake-Server"), None);
}

#[test]
fn the_hashes_table_and_vmsa_have_their_layout() {
    let page = hashes_page(0x80_fc00, b"", b"", "");
    assert_eq!(
        hex::encode(&page[0xc00..0xc12]),
        "06d63894224fc94cb479a793d411fd21a800"
    );
    assert!(page[..0xc00].iter().all(|b| *b == 0));
    assert!(page[0xc00 + 176..].iter().all(|b| *b == 0));
    // No command line hashes its NUL, no initrd the empty string.
    assert_eq!(
        &page[0xc00 + 0x12 + 18..0xc00 + 0x44],
        &Sha256::digest([0u8])[..]
    );
    assert_eq!(
        &page[0xc00 + 0x44 + 18..0xc00 + 0x76],
        &Sha256::digest([])[..]
    );
    let v = vmsa(Vmm::Qemu, true, 0xffff_fff0, 0x80_0f12, 0x21);
    assert_eq!(
        &v[0x10..0x20],
        &[
            0, 0xf0, 0x9b, 0, 0xff, 0xff, 0, 0, 0, 0, 0xff, 0xff, 0, 0, 0, 0
        ]
    );
    assert_eq!(
        u64::from_le_bytes(v[0x178..0x180].try_into().unwrap()),
        0xfff0
    );
    assert_eq!(
        u64::from_le_bytes(v[0x310..0x318].try_into().unwrap()),
        0x80_0f12
    );
    assert_eq!(
        u64::from_le_bytes(v[0x3b0..0x3b8].try_into().unwrap()),
        0x21
    );
    let ap = vmsa(Vmm::Qemu, false, 0x80_b004, 0x80_0f12, 0x21);
    assert_eq!(
        u64::from_le_bytes(ap[0x18..0x20].try_into().unwrap()),
        0x80_0000
    );
    assert_eq!(
        u64::from_le_bytes(ap[0x178..0x180].try_into().unwrap()),
        0xb004
    );
}

#[test]
fn debians_ovmf_has_sev_metadata_and_vcpus_change_the_digest() {
    let fw = std::fs::read("/usr/share/ovmf/OVMF.fd")
        .expect("/usr/share/ovmf/OVMF.fd (scripts/test installs ovmf)");
    let layout = Layout::from_ovmf(&fw).unwrap();
    assert_ne!(layout.reset_eip, 0);
    assert!(
        layout
            .sections
            .iter()
            .any(|s| s.kind == SectionKind::SnpSecrets)
    );
    let digest = |vcpus, sig| {
        launch_digest(&Launch {
            ovmf: Some(&fw),
            firmware_digest: None,
            layout: &layout,
            kernel: None,
            vcpus,
            vcpu_signature: sig,
            guest_features: DEFAULT_GUEST_FEATURES,
            vmm: Vmm::Qemu,
        })
        .unwrap()
    };
    let one = digest(1, 0x80_0f12);
    assert_ne!(one, digest(2, 0x80_0f12));
    assert_ne!(one, digest(1, 0xa0_0f11));
    // Seeding with the firmware digest gives the same result.
    let seeded = launch_digest(&Launch {
        ovmf: None,
        firmware_digest: Some(ovmf_digest(&fw)),
        layout: &layout,
        kernel: None,
        vcpus: 1,
        vcpu_signature: 0x80_0f12,
        guest_features: DEFAULT_GUEST_FEATURES,
        vmm: Vmm::Qemu,
    })
    .unwrap();
    assert_eq!(one, seeded);
    // This firmware has no room for kernel hashes: direct boot needs the
    // AmdSev build, and saying so beats a digest no guest will have.
    let e = launch_digest(&Launch {
        ovmf: Some(&fw),
        firmware_digest: None,
        layout: &layout,
        kernel: Some((b"kernel", b"", "console=ttyS0")),
        vcpus: 1,
        vcpu_signature: 0x80_0f12,
        guest_features: DEFAULT_GUEST_FEATURES,
        vmm: Vmm::Qemu,
    })
    .unwrap_err();
    assert!(e.to_string().contains("no kernel hashes section"), "{e}");
}

#[test]
fn malformed_firmware_is_refused() {
    assert!(Layout::from_ovmf(&[]).is_err());
    assert!(Layout::from_ovmf(&[0u8; 4095]).is_err());
    // No footer table: no reset block.
    let e = Layout::from_ovmf(&[0u8; 8192]).unwrap_err().to_string();
    assert!(e.contains("no SEV-ES reset block"), "{e}");
    // A footer whose size runs past the image.
    let mut fw = vec![0u8; 8192];
    let n = fw.len();
    fw[n - 48..n - 32].copy_from_slice(&FOOTER_GUID);
    fw[n - 50..n - 48].copy_from_slice(&0xffffu16.to_le_bytes());
    assert!(Layout::from_ovmf(&fw).is_err());
    // An entry of size 0.
    fw[n - 50..n - 48].copy_from_slice(&(18u16 + 18).to_le_bytes());
    assert!(Layout::from_ovmf(&fw).is_err());
}

/// QEMU's launch (its VMSA: the vCPU signature in RDX, MXCSR and x87 FCW
/// set) for the same layout, as an independent implementation of the
/// reference algorithm computes it.
#[test]
fn qemus_launch_of_the_same_layout() {
    let layout = go_layout();
    let got = launch_digest(&Launch {
        ovmf: None,
        firmware_digest: Some(unhex(
            "a58211791a556a630a4319dc9e2ea96cc0e9784dd9f20a4fadf81b26c98d163fcdcb6703884bbbb80d7b1de45b3d84d0",
        )),
        layout: &layout,
        kernel: None,
        vcpus: 2,
        vcpu_signature: 0x80_0f12,
        guest_features: 0x21,
        vmm: Vmm::Qemu,
    })
    .unwrap();
    assert_eq!(
        hex::encode(got),
        "ed005ea554b5c22ca904fabd91523963e5642d4410e01cec737acbe9239f5d02cc560c76c25c8e87b159e03a534346fc"
    );
    assert_eq!(
        hex::encode(Sha384::digest(vmsa(
            Vmm::Qemu,
            true,
            0xffff_fff0,
            0x80_0f12,
            0x21
        ))),
        "ae79efa6efbe1594a2717dfd42af495a0e4ed37b00e529a5fdf349bea04c3513962ffb0c74cf65b0d9a1857271833d6e"
    );
}

/// Debian's OVMF.fd for several vCPU counts and types, as an independent
/// implementation of the reference algorithm computed them.
#[test]
fn debians_ovmf_launch_digests() {
    let fw = std::fs::read("/usr/share/ovmf/OVMF.fd")
        .expect("/usr/share/ovmf/OVMF.fd (scripts/test installs ovmf)");
    let layout = Layout::from_ovmf(&fw).unwrap();
    assert_eq!(layout.reset_eip, 0x80_b004);
    assert_eq!(layout.hash_table_gpa, None);
    assert_eq!(
        hex::encode(ovmf_digest(&fw)),
        "ba2c811512ef868474f239a21f7d7057d65a20de87a003c4f116e4fb1573183bfbcd75c3e99b2f558575a5d0094f73c6"
    );
    for (t, vcpus, want) in [
        (
            "EPYC-v4",
            1,
            "11570979c77a0adb515761a702527c8b9e11554e730552621d950988613a3a75c6ff1703f540bd22a9beede8fe7a97e3",
        ),
        (
            "EPYC-v4",
            2,
            "a5b54e62ae971b58274dd24cc6c47b842662617036e7bd67d7326c07ac6363f35399ef933330a5ea160cead90a00603f",
        ),
        (
            "EPYC-v4",
            4,
            "32ac9d7a17d28f7cd4404a4516d2f00519668c40ada2062351c36767e908eb3f090d66c33ab10f80150e00a4385b6d0f",
        ),
        (
            "EPYC-Milan",
            1,
            "80479ca85a2b182c026f6a3a2f2b180ab968d84b17540dd30de39039e70b8c0c33ead2cae6d34e37750035fcff60bfc8",
        ),
        (
            "EPYC-Milan",
            2,
            "a175292a4a09fcfb760c5bd80c93ed667dbaafce6247d0f21fc06638658b3ebf2804d3019e2abed05cb6a9efe0a7464e",
        ),
        (
            "EPYC-Milan",
            4,
            "e9c10ab98f8086bf4a4993dcdc1f768b1128bcb02301d1791f1d3274329e790db2d12a301d66d99a462a13b5d87e2840",
        ),
    ] {
        let got = launch_digest(&Launch {
            ovmf: Some(&fw),
            firmware_digest: None,
            layout: &layout,
            kernel: None,
            vcpus,
            vcpu_signature: vcpu_type_signature(t).unwrap(),
            guest_features: DEFAULT_GUEST_FEATURES,
            vmm: Vmm::Qemu,
        })
        .unwrap();
        assert_eq!(hex::encode(got), want, "{t} x{vcpus}");
    }
}
