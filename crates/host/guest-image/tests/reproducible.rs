//! Two builds of the guest image from the same inputs give the same bytes,
//! and the image holds what the manifest says.
//!
//! Needs the static guest binary (scripts/build-guest) and the pinned
//! kernel package (downloaded with apt-get into the cache on first use).

mod common;

use cocoon_guest_image::{BuildOptions, Manifest, build};
use common::guest_binary;
use std::path::PathBuf;

fn cache() -> PathBuf {
    std::env::var_os("COCOON_CACHE_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var("HOME").unwrap()).join(".cache/cocoon"))
}

#[test]
fn two_builds_are_byte_identical() {
    let dir = tempfile::tempdir().unwrap();
    let opts = |n: &str| BuildOptions {
        out_dir: dir.path().join(n),
        guest_binary: guest_binary(),
        cache_dir: cache(),
        kernel_deb: None,
        cmdline: None,
        compression: cocoon_guest_image::Compression::None,
        module_signatures: Default::default(),
    };
    let a = build(&opts("a")).unwrap();
    let b = build(&opts("b")).unwrap();
    assert_eq!(a, b);
    let mut files: Vec<String> = ["vmlinuz", "initrd.img", "cmdline", "manifest.json"]
        .map(String::from)
        .to_vec();
    files
        .extend(cocoon_guest_image::PCR4_MEMORY_MIB.map(cocoon_guest_image::reference_values_file));
    for f in &files {
        let x = std::fs::read(dir.path().join("a").join(f)).unwrap();
        let y = std::fs::read(dir.path().join("b").join(f)).unwrap();
        assert!(x == y, "{f} differs between two builds");
    }
    assert_eq!(Manifest::load(&dir.path().join("a")).unwrap(), a);
    // The initramfs carries the modules the guest loads, dependencies first.
    let pos = |m: &str| a.modules.iter().position(|x| x == m).unwrap();
    assert!(pos("virtio_pci") > pos("virtio_ring"));
    assert!(pos("virtio_console") > pos("virtio_ring"));
    // Container root filesystems are plain directories: no overlayfs.
    assert!(!a.modules.contains(&"overlay".to_string()));
    // The agent's channel and the initdata disk come before the rest; of
    // the rest the network first (the host configures it next), and the
    // vsock transport last, in a list of its own.
    assert!(pos("virtio_blk") < pos("virtio_net"));
    assert!(pos("virtio_console") < pos("virtio_net"));
    assert!(pos("virtio_net") < pos("virtio_rng"));
    assert!(pos("virtio_rng") < pos("vsock"));
    assert!(pos("vsock") < pos("vmw_vsock_virtio_transport"));
    let initrd = std::fs::read(dir.path().join("a/initrd.img")).unwrap();
    for list in ["lib/modules/order.late\0", "lib/modules/order.vsock\0"] {
        assert!(
            initrd.windows(list.len()).any(|w| w == list.as_bytes()),
            "{list} is not in the initramfs"
        );
    }
    // Modules go in without Debian's signatures unless asked to keep them.
    let magic = b"~Module signature appended~\n";
    let signed = |archive: &[u8]| archive.windows(magic.len()).filter(|w| w == magic).count();
    assert_eq!(signed(&initrd), 0, "a module kept its signature");
    assert_eq!(
        a.module_signatures,
        cocoon_guest_image::ModuleSignatures::Strip
    );
    let mut k = opts("k");
    k.module_signatures = cocoon_guest_image::ModuleSignatures::Keep;
    let kept = build(&k).unwrap();
    let kept_initrd = std::fs::read(dir.path().join("k/initrd.img")).unwrap();
    assert_eq!(signed(&kept_initrd), a.modules.len());
    assert!(kept.initrd.size > a.initrd.size);
    assert_eq!(
        kept.module_signatures,
        cocoon_guest_image::ModuleSignatures::Keep
    );
    // Another command line changes the command-line digest and PCR only.
    let mut o = opts("c");
    o.cmdline = Some("console=ttyS0 panic=-1".into());
    let c = build(&o).unwrap();
    assert_eq!(c.initrd, a.initrd);
    assert_ne!(c.cmdline_sha256, a.cmdline_sha256);
    assert_ne!(c.measurements, a.measurements);
    // The default form: zstd, also reproducible, the same archive inside.
    let mut z = opts("z1");
    z.compression = cocoon_guest_image::Compression::Zstd;
    let z1 = build(&z).unwrap();
    z.out_dir = dir.path().join("z2");
    let z2 = build(&z).unwrap();
    assert_eq!(z1.initrd, z2.initrd);
    assert!(
        z1.initrd.size * 2 < a.initrd.size,
        "zstd shrinks the initramfs"
    );
    let plain = std::fs::read(dir.path().join("a/initrd.img")).unwrap();
    let packed = std::fs::read(dir.path().join("z1/initrd.img")).unwrap();
    assert_eq!(zstd::decode_all(&packed[..]).unwrap(), plain);
    eprintln!(
        "guest image: kernel {} bytes, initrd {} bytes ({} with zstd)",
        a.kernel.size, a.initrd.size, z1.initrd.size
    );
}
