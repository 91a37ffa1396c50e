//! The guest kernel: a Debian kernel package at a pinned version, checked
//! against a pinned SHA-256, downloaded with `apt-get download` (or given as
//! a file) and unpacked with `dpkg-deb` into a cache shared by builds.

use sha2::{Digest, Sha256};
use std::path::{Path, PathBuf};
use std::process::Command;

/// A pinned kernel package.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelPackage {
    /// Debian package name.
    pub name: &'static str,
    /// Exact package version.
    pub version: &'static str,
    /// SHA-256 of the `.deb`.
    pub sha256: &'static str,
    /// The kernel release it installs (`uname -r`).
    pub release: &'static str,
}

/// The kernel the guest image is built from: Debian 12's cloud flavour
/// (virtio, TPM TIS/CRB and EFI stub, without the drivers for physical
/// hardware a generic kernel probes at boot; it boots in about half the
/// time of the generic flavour under software emulation).
pub const KERNEL: KernelPackage = KernelPackage {
    name: "linux-image-6.1.0-50-cloud-amd64",
    version: "6.1.176-1",
    sha256: "efe19f605b6f54a8352e68d85a629abb2d30b72a085faef603a9152590baa791",
    release: "6.1.0-50-cloud-amd64",
};

/// Why the kernel cannot be had.
#[derive(Debug, thiserror::Error)]
pub enum KernelError {
    /// `apt-get download` failed.
    #[error(
        "cannot download {0} with apt-get ({1}); the guest image pins this Debian 12 kernel: run `apt-get update`, or pass the .deb with --kernel-deb"
    )]
    Download(String, String),
    /// The package is not the pinned one.
    #[error("{0} has SHA-256 {1}, not the pinned {2}: refusing to build a guest from it")]
    Digest(PathBuf, String, String),
    /// `dpkg-deb` failed.
    #[error("cannot unpack {0} with dpkg-deb: {1}")]
    Unpack(PathBuf, String),
    /// Files.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
}

fn io(p: &Path) -> impl FnOnce(std::io::Error) -> KernelError + '_ {
    move |e| KernelError::Io(p.to_path_buf(), e)
}

fn sha256_file(p: &Path) -> Result<String, KernelError> {
    let mut f = std::fs::File::open(p).map_err(io(p))?;
    let mut h = Sha256::new();
    std::io::copy(&mut f, &mut h).map_err(io(p))?;
    Ok(hex::encode(h.finalize()))
}

/// The pinned package's `.deb` in `cache` (downloaded if missing, or copied
/// from `given`), its digest checked.
pub fn deb(
    cache: &Path,
    pkg: &KernelPackage,
    given: Option<&Path>,
) -> Result<PathBuf, KernelError> {
    let dir = cache.join("debs");
    std::fs::create_dir_all(&dir).map_err(io(&dir))?;
    let path = dir.join(format!("{}_{}_amd64.deb", pkg.name, pkg.version));
    let check = |p: &Path| -> Result<(), KernelError> {
        let got = sha256_file(p)?;
        if got != pkg.sha256 {
            return Err(KernelError::Digest(p.to_path_buf(), got, pkg.sha256.into()));
        }
        Ok(())
    };
    if path.exists() && check(&path).is_ok() {
        return Ok(path);
    }
    let tmp = tempdir_in(&dir)?;
    let r = fetch_into(&tmp, &path, pkg, given, check);
    let _ = std::fs::remove_dir_all(&tmp);
    r.map(|()| path)
}

fn fetch_into(
    tmp: &Path,
    path: &Path,
    pkg: &KernelPackage,
    given: Option<&Path>,
    check: impl Fn(&Path) -> Result<(), KernelError>,
) -> Result<(), KernelError> {
    let fetched = match given {
        Some(g) => g.to_path_buf(),
        None => {
            let spec = format!("{}={}", pkg.name, pkg.version);
            let out = Command::new("apt-get")
                .args(["download", "-q", &spec])
                .current_dir(tmp)
                .output()
                .map_err(|e| KernelError::Download(spec.clone(), e.to_string()))?;
            if !out.status.success() {
                let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
                return Err(KernelError::Download(spec, err));
            }
            let found = std::fs::read_dir(tmp)
                .map_err(io(tmp))?
                .filter_map(|e| e.ok().map(|e| e.path()))
                .find(|p| p.extension().is_some_and(|e| e == "deb"));
            found.ok_or_else(|| KernelError::Download(spec, "no .deb was written".into()))?
        }
    };
    check(&fetched)?;
    let staged = tmp.join("staged.deb");
    std::fs::copy(&fetched, &staged).map_err(io(&fetched))?;
    std::fs::rename(&staged, path).map_err(io(path))
}

/// The package unpacked under `cache` (once; later builds reuse it).
pub fn unpacked(cache: &Path, pkg: &KernelPackage, deb: &Path) -> Result<PathBuf, KernelError> {
    let root = cache.join(format!("kernel-{}", &pkg.sha256[..16]));
    if root.join("boot").is_dir() {
        return Ok(root);
    }
    let tmp = tempdir_in(cache)?;
    let out = Command::new("dpkg-deb")
        .arg("-x")
        .arg(deb)
        .arg(&tmp)
        .output()
        .map_err(|e| KernelError::Unpack(deb.to_path_buf(), e.to_string()))?;
    if !out.status.success() {
        return Err(KernelError::Unpack(
            deb.to_path_buf(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    // Another build may have unpacked it meanwhile: either copy is the same.
    if std::fs::rename(&tmp, &root).is_err() && !root.join("boot").is_dir() {
        return Err(KernelError::Unpack(
            deb.to_path_buf(),
            "cannot move into the cache".into(),
        ));
    }
    let _ = std::fs::remove_dir_all(&tmp);
    Ok(root)
}

fn tempdir_in(dir: &Path) -> Result<PathBuf, KernelError> {
    let p = dir.join(format!(".tmp-{}-{}", std::process::id(), unique()));
    std::fs::create_dir_all(&p).map_err(io(&p))?;
    Ok(p)
}

fn unique() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static N: AtomicU64 = AtomicU64::new(0);
    N.fetch_add(1, Ordering::Relaxed)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A file that is not the pinned package is refused, and nothing lands
    /// in the cache.
    #[test]
    fn wrong_deb_refused() {
        let dir = tempfile::tempdir().unwrap();
        let fake = dir.path().join("fake.deb");
        std::fs::write(&fake, b"not the kernel").unwrap();
        let err = deb(&dir.path().join("cache"), &KERNEL, Some(&fake)).unwrap_err();
        assert!(matches!(err, KernelError::Digest(..)), "{err}");
        assert!(err.to_string().contains(KERNEL.sha256));
        let cached = dir
            .path()
            .join("cache/debs")
            .join(format!("{}_{}_amd64.deb", KERNEL.name, KERNEL.version));
        assert!(!cached.exists());
    }
}
