//! What the guest image tests share.

use std::path::{Path, PathBuf};

/// The static guest binary: `COCOON_GUEST_BINARY`, else the release build
/// of scripts/build-guest.
pub fn guest_binary() -> PathBuf {
    let bin = std::env::var_os("COCOON_GUEST_BINARY")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(env!("CARGO_MANIFEST_DIR"))
                .join("../../../target/static/x86_64-unknown-linux-gnu/release/cocoon-guest")
        });
    assert!(
        bin.is_file(),
        "no static guest binary at {}: run scripts/build-guest",
        bin.display()
    );
    bin
}
