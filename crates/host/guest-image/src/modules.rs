//! Kernel modules for the initramfs: each module's dependencies read from
//! its own `.modinfo` section (the package ships no `modules.dep`; that is
//! made by `depmod` at install time), closed over, and ordered so that every
//! module comes after the ones it depends on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Why the module set cannot be made.
#[derive(Debug, thiserror::Error)]
pub enum ModuleError {
    /// The kernel tree has no such module.
    #[error("kernel module '{0}' is not in {1}")]
    Missing(String, PathBuf),
    /// A `.ko` that is not a well-formed ELF64 object.
    #[error("{0}: {1}")]
    Malformed(PathBuf, &'static str),
    /// Reading the tree failed.
    #[error("{0}: {1}")]
    Io(PathBuf, std::io::Error),
    /// Dependencies that loop.
    #[error("kernel modules depend on each other in a cycle through '{0}'")]
    Cycle(String),
}

/// The `key=value` strings of an ELF64 little-endian object's `.modinfo`.
pub fn modinfo(elf: &[u8]) -> Result<Vec<(String, String)>, &'static str> {
    let (_, data) = crate::elf::sections(elf)?
        .into_iter()
        .find(|(name, _)| *name == b".modinfo")
        .ok_or("no .modinfo section")?;
    Ok(data
        .split(|b| *b == 0)
        .filter_map(|kv| {
            let s = std::str::from_utf8(kv).ok()?;
            let (k, v) = s.split_once('=')?;
            Some((k.to_string(), v.to_string()))
        })
        .collect())
}

/// A module to ship: its name and file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    /// Module name (`virtio_pci`).
    pub name: String,
    /// Its `.ko` file in the kernel tree.
    pub path: PathBuf,
}

/// `wanted` and everything they depend on, dependencies first (ties broken
/// by name, so the order is reproducible). `tree` is
/// `lib/modules/<version>` of the unpacked kernel package.
pub fn resolve(tree: &Path, wanted: &[&str]) -> Result<Vec<Module>, ModuleError> {
    let index = index(tree)?;
    let mut deps: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    let mut todo: Vec<String> = wanted.iter().map(|w| w.replace('-', "_")).collect();
    while let Some(name) = todo.pop() {
        if deps.contains_key(&name) {
            continue;
        }
        let path = index
            .get(&name)
            .ok_or_else(|| ModuleError::Missing(name.clone(), tree.to_path_buf()))?;
        let bytes = std::fs::read(path).map_err(|e| ModuleError::Io(path.clone(), e))?;
        let info = modinfo(&bytes).map_err(|e| ModuleError::Malformed(path.clone(), e))?;
        let d: BTreeSet<String> = info
            .iter()
            .filter(|(k, _)| k == "depends")
            .flat_map(|(_, v)| v.split(','))
            .filter(|s| !s.is_empty())
            .map(|s| s.replace('-', "_"))
            .collect();
        todo.extend(d.iter().cloned());
        deps.insert(name, d);
    }
    // Topological order, smallest name first among the ready ones.
    let mut out = Vec::new();
    let mut done = BTreeSet::new();
    while done.len() < deps.len() {
        let ready = deps
            .iter()
            .find(|(n, d)| !done.contains(*n) && d.iter().all(|x| done.contains(x)))
            .map(|(n, _)| n.clone());
        let Some(n) = ready else {
            let stuck = deps.keys().find(|n| !done.contains(*n)).cloned();
            return Err(ModuleError::Cycle(stuck.unwrap_or_default()));
        };
        out.push(Module {
            path: index[&n].clone(),
            name: n.clone(),
        });
        done.insert(n);
    }
    Ok(out)
}

/// Module name -> `.ko` path for every module under `tree/kernel`.
fn index(tree: &Path) -> Result<BTreeMap<String, PathBuf>, ModuleError> {
    let mut out = BTreeMap::new();
    let mut dirs = vec![tree.join("kernel")];
    while let Some(d) = dirs.pop() {
        let rd = std::fs::read_dir(&d).map_err(|e| ModuleError::Io(d.clone(), e))?;
        for e in rd {
            let e = e.map_err(|e| ModuleError::Io(d.clone(), e))?;
            let p = e.path();
            let ft = e.file_type().map_err(|e| ModuleError::Io(p.clone(), e))?;
            if ft.is_dir() {
                dirs.push(p);
            } else if let Some(stem) = p
                .file_name()
                .and_then(|n| n.to_str())
                .and_then(|n| n.strip_suffix(".ko"))
            {
                out.insert(stem.replace('-', "_"), p);
            }
        }
    }
    Ok(out)
}

/// The trailer the kernel's `sign-file` appends to a signed module.
const SIG_MAGIC: &[u8] = b"~Module signature appended~\n";

/// `struct module_signature`: algorithm, hash, id type, signer and key id
/// lengths, three pad bytes, then the signature's length (big-endian).
const SIG_INFO_LEN: usize = 12;

/// The module without its appended signature (the same bytes when it has
/// none).
///
/// The initramfs is measured as a whole and its modules come from the
/// pinned kernel package, so the kernel's own check of each module's
/// signature proves nothing more; under software emulation it costs about
/// 3 ms per module at boot. Without `module.sig_enforce` (Debian's
/// default, and lockdown only comes with UEFI Secure Boot) the kernel
/// loads an unsigned module and marks itself tainted (`E`).
pub fn strip_signature(ko: &[u8]) -> Result<&[u8], &'static str> {
    let Some(body) = ko.strip_suffix(SIG_MAGIC) else {
        return Ok(ko);
    };
    let info_at = body
        .len()
        .checked_sub(SIG_INFO_LEN)
        .ok_or("signature trailer without its header")?;
    let info = &body[info_at..];
    let sig_len = u32::from_be_bytes([info[8], info[9], info[10], info[11]]) as usize;
    let end = info_at
        .checked_sub(sig_len)
        .ok_or("signature longer than the module")?;
    Ok(&ko[..end])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 object: a null section, `.shstrtab` and `.modinfo`.
    pub(crate) fn fake_ko(modinfo: &[u8]) -> Vec<u8> {
        let shstrtab = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(&[0x7f, b'E', b'L', b'F', 2, 1]);
        let strtab_off = elf.len();
        elf.extend_from_slice(shstrtab);
        let info_off = elf.len();
        elf.extend_from_slice(modinfo);
        while !elf.len().is_multiple_of(8) {
            elf.push(0);
        }
        let shoff = elf.len();
        let sh = |name: u32, off: usize, size: usize| {
            let mut h = vec![0u8; 64];
            h[..4].copy_from_slice(&name.to_le_bytes());
            h[0x18..0x20].copy_from_slice(&(off as u64).to_le_bytes());
            h[0x20..0x28].copy_from_slice(&(size as u64).to_le_bytes());
            h
        };
        elf.extend(sh(0, 0, 0));
        elf.extend(sh(1, strtab_off, shstrtab.len()));
        elf.extend(sh(11, info_off, modinfo.len()));
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        elf
    }

    #[test]
    fn reads_modinfo() {
        let ko = fake_ko(b"license=GPL\0depends=virtio,virtio_ring\0name=virtio_pci\0");
        let info = modinfo(&ko).unwrap();
        assert!(info.contains(&("depends".into(), "virtio,virtio_ring".into())));
        assert!(info.contains(&("name".into(), "virtio_pci".into())));
    }

    #[test]
    fn malformed_objects_are_errors() {
        let ko = fake_ko(b"depends=\0");
        assert!(modinfo(b"not elf").is_err());
        assert!(modinfo(&ko[..70]).is_err());
        let mut bad = ko.clone();
        bad[0x28..0x30].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(modinfo(&bad).is_err());
        let mut bad = ko.clone();
        bad[0x3e..0x40].copy_from_slice(&9u16.to_le_bytes());
        assert!(modinfo(&bad).is_err());
    }

    /// `ko` signed as `sign-file` lays it out, with a signature of `n` bytes.
    fn signed(ko: &[u8], n: usize) -> Vec<u8> {
        let mut v = ko.to_vec();
        v.extend(std::iter::repeat_n(0xa5, n));
        v.extend_from_slice(&[0, 0, 2, 0, 0, 0, 0, 0]);
        v.extend_from_slice(&(n as u32).to_be_bytes());
        v.extend_from_slice(SIG_MAGIC);
        v
    }

    #[test]
    fn strips_an_appended_signature() {
        let ko = fake_ko(b"name=virtio\0");
        assert_eq!(strip_signature(&signed(&ko, 681)).unwrap(), &ko[..]);
        // An unsigned module comes back as it is.
        assert_eq!(strip_signature(&ko).unwrap(), &ko[..]);
        // The result still reads as a module.
        assert!(modinfo(strip_signature(&signed(&ko, 5)).unwrap()).is_ok());
    }

    #[test]
    fn a_malformed_signature_trailer_is_an_error() {
        let ko = fake_ko(b"name=virtio\0");
        // A length past the start of the file.
        let mut long = signed(&ko, 8);
        let at = long.len() - SIG_MAGIC.len() - 4;
        long[at..at + 4].copy_from_slice(&u32::MAX.to_be_bytes());
        assert_eq!(
            strip_signature(&long),
            Err("signature longer than the module")
        );
        // The magic alone, with no room for the header.
        assert!(strip_signature(SIG_MAGIC).is_err());
        assert!(strip_signature(&[&[0u8; 4][..], SIG_MAGIC].concat()).is_err());
    }

    #[test]
    fn resolves_dependencies_first() {
        let dir = tempfile::tempdir().unwrap();
        let k = dir.path().join("kernel/drivers");
        std::fs::create_dir_all(&k).unwrap();
        let w = |n: &str, deps: &str| {
            std::fs::write(
                k.join(format!("{n}.ko")),
                fake_ko(format!("depends={deps}\0").as_bytes()),
            )
            .unwrap()
        };
        w("virtio_pci", "virtio,virtio_ring,virtio_pci_modern_dev");
        w("virtio_pci_modern_dev", "");
        w("virtio", "");
        w("virtio_ring", "virtio");
        w("virtio_console", "virtio,virtio_ring");
        w("unused", "");
        let mods = resolve(dir.path(), &["virtio_console", "virtio-pci"]).unwrap();
        let names: Vec<&str> = mods.iter().map(|m| m.name.as_str()).collect();
        assert_eq!(
            names,
            [
                "virtio",
                "virtio_pci_modern_dev",
                "virtio_ring",
                "virtio_console",
                "virtio_pci"
            ]
        );
        assert!(matches!(
            resolve(dir.path(), &["nope"]),
            Err(ModuleError::Missing(n, _)) if n == "nope"
        ));
        w("a", "b");
        w("b", "a");
        assert!(matches!(
            resolve(dir.path(), &["a"]),
            Err(ModuleError::Cycle(_))
        ));
    }
}
