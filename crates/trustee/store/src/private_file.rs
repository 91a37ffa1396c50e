//! Files that hold private keys: created with mode 0600 from the first byte,
//! never through a path another process could have prepared.

use rand_core::{OsRng, RngCore};
use std::fs::File;
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

/// Creates a new temporary file next to `path` with `O_CREAT|O_EXCL` and
/// `mode`, writes `bytes` and syncs it. A random name, and `O_EXCL`, mean a
/// file planted under a predictable name can neither receive the key nor
/// lend it its permissions.
fn write_temp(dir: &Path, path: &Path, bytes: &[u8], mode: u32) -> io::Result<PathBuf> {
    let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("key");
    let mut attempts = 0;
    let (tmp, mut f) = loop {
        let tmp = dir.join(format!(
            ".{name}.{}.{:016x}.tmp",
            std::process::id(),
            OsRng.next_u64()
        ));
        match std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(mode)
            .open(&tmp)
        {
            Ok(f) => break (tmp, f),
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists && attempts < 8 => attempts += 1,
            Err(e) => return Err(e),
        }
    };
    let written = f.write_all(bytes).and_then(|()| f.sync_all());
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    Ok(tmp)
}

fn sync_dir(dir: &Path) {
    if let Ok(d) = File::open(dir) {
        let _ = d.sync_all();
    }
}

fn parent_dir(path: &Path) -> io::Result<&Path> {
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d,
        _ => Path::new("."),
    };
    std::fs::create_dir_all(dir)?;
    Ok(dir)
}

/// Writes `bytes` to `path` with `mode`, replacing any file there atomically
/// (a fresh exclusive temporary file, fsync, rename).
pub fn replace_file(path: &Path, bytes: &[u8], mode: u32) -> io::Result<()> {
    let dir = parent_dir(path)?;
    let tmp = write_temp(dir, path, bytes, mode)?;
    if let Err(e) = std::fs::rename(&tmp, path) {
        let _ = std::fs::remove_file(&tmp);
        return Err(e);
    }
    sync_dir(dir);
    Ok(())
}

/// Creates `path` holding `bytes`, with `mode`, unless it already exists; an
/// existing file is left as it is. Returns whether this call created it.
///
/// The bytes go to an exclusive temporary file first, which is then
/// hard-linked to `path`: `link(2)` never replaces a file, so of several
/// processes racing to create the same file exactly one wins, and the others
/// (and any reader) only ever see the complete file.
pub fn create_file_exclusive(path: &Path, bytes: &[u8], mode: u32) -> io::Result<bool> {
    let dir = parent_dir(path)?;
    let tmp = write_temp(dir, path, bytes, mode)?;
    let linked = std::fs::hard_link(&tmp, path);
    let _ = std::fs::remove_file(&tmp);
    match linked {
        Ok(()) => {
            sync_dir(dir);
            Ok(true)
        }
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(false),
        Err(e) => Err(e),
    }
}

/// [`replace_file`] with mode 0600.
pub fn write_private_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    replace_file(path, bytes, 0o600)
}

/// [`create_file_exclusive`] with mode 0600: how private keys are created.
pub fn create_private_file(path: &Path, bytes: &[u8]) -> io::Result<bool> {
    create_file_exclusive(path, bytes, 0o600)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn mode(p: &Path) -> u32 {
        std::fs::metadata(p).unwrap().permissions().mode() & 0o777
    }

    #[test]
    fn create_never_replaces_and_leaves_no_temp_files() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("sub").join("k.pem");
        assert!(create_private_file(&p, b"first").unwrap());
        assert!(!create_private_file(&p, b"second").unwrap());
        assert_eq!(std::fs::read(&p).unwrap(), b"first");
        assert_eq!(mode(&p), 0o600);
        let names: Vec<_> = std::fs::read_dir(p.parent().unwrap())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("k.pem")]);
    }

    #[test]
    fn create_does_not_follow_a_planted_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let target = dir.path().join("elsewhere");
        let p = dir.path().join("k.pem");
        std::os::unix::fs::symlink(&target, &p).unwrap();
        assert!(!create_private_file(&p, b"secret").unwrap());
        assert!(
            !target.exists(),
            "the key must not be written through the link"
        );
    }

    #[test]
    fn a_planted_temp_file_never_lends_its_mode_to_the_key() {
        // The temporary name used to be predictable (`.<name>.tmp<pid>`) and
        // opened without O_EXCL: a world-readable file planted there kept its
        // mode and became the key.
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("kek.key");
        let planted = dir
            .path()
            .join(format!(".kek.key.tmp{}", std::process::id()));
        std::fs::write(&planted, b"").unwrap();
        std::fs::set_permissions(&planted, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private_file(&p, b"secret").unwrap();
        assert_eq!(mode(&p), 0o600);
        assert_eq!(std::fs::read(&planted).unwrap(), b"");
    }

    #[test]
    fn write_replaces_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k.pem");
        std::fs::write(&p, b"old").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        write_private_file(&p, b"new").unwrap();
        assert_eq!(std::fs::read(&p).unwrap(), b"new");
        assert_eq!(mode(&p), 0o600);
    }
}
