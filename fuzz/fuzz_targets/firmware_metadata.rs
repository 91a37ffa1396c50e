//! Arbitrary bytes as a firmware image for `cocoon measure`: the OVMF
//! footer table, SEV metadata and TDVF metadata are parsed and the
//! measurements computed, or refused; never a panic or a runaway loop.
#![no_main]

use cocoon_guest_image::{snp, tdx};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // Page-sized images, as firmware is; the tail carries the tables.
    let mut fw = data.to_vec();
    fw.resize(data.len().div_ceil(4096).max(1) * 4096, 0);
    if let Ok(layout) = snp::Layout::from_ovmf(&fw) {
        let _ = snp::launch_digest(&snp::Launch {
            ovmf: None,
            firmware_digest: Some([0; 48]),
            layout: &layout,
            kernel: Some((b"k", b"", "c")),
            vcpus: 2,
            vcpu_signature: 0x80_0f12,
            guest_features: 1,
            vmm: snp::Vmm::Qemu,
        });
    }
    if let Ok(sections) = tdx::sections(&fw) {
        // Bounded work: at most 4 GiB of pages per section is accepted,
        // so only hash when the total is small.
        let pages: u64 = sections.iter().map(|s| s.size / 4096).sum();
        if pages < 4096 {
            let _ = tdx::mrtd(&fw, tdx::PageOrder::Interleaved);
        }
    }
    let _ = tdx::stub_measures_cc(data);
});
