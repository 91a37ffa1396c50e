//! A reproducible `newc` cpio archive, the format the kernel unpacks as its
//! initramfs: entries sorted by path, owned by root, every time zero and
//! inode numbers assigned in order, so the same inputs give the same bytes.

use std::collections::BTreeMap;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    /// A directory.
    Dir,
    /// A regular file with its contents.
    File(Vec<u8>),
    /// A symbolic link to the target.
    Symlink(String),
    /// A character device (major, minor).
    CharDev(u32, u32),
}

/// An entry: the node and its permission bits.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Kind and contents.
    pub node: Node,
    /// Permission bits (`0o755`, ...).
    pub mode: u32,
}

/// Why an archive cannot be made.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum CpioError {
    /// Paths are relative, `/`-separated, without `.`/`..` components.
    #[error("invalid archive path '{0}'")]
    Path(String),
    /// newc sizes are 32-bit.
    #[error("'{0}' is larger than a cpio entry can hold")]
    TooLarge(String),
}

/// An archive being assembled; parent directories are added implicitly.
#[derive(Debug, Default)]
pub struct Archive {
    entries: BTreeMap<String, Entry>,
}

impl Archive {
    /// Adds (or replaces) `path` (relative, e.g. `lib/modules/x.ko`), and
    /// creates its parent directories (mode 0755) where missing.
    pub fn add(&mut self, path: &str, node: Node, mode: u32) -> Result<(), CpioError> {
        if path.is_empty()
            || path.starts_with('/')
            || path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..")
        {
            return Err(CpioError::Path(path.to_string()));
        }
        let mut parent = String::new();
        let comps: Vec<&str> = path.split('/').collect();
        for c in &comps[..comps.len() - 1] {
            if !parent.is_empty() {
                parent.push('/');
            }
            parent.push_str(c);
            self.entries.entry(parent.clone()).or_insert(Entry {
                node: Node::Dir,
                mode: 0o755,
            });
        }
        self.entries.insert(path.to_string(), Entry { node, mode });
        Ok(())
    }

    /// The entries, sorted by path.
    pub fn entries(&self) -> impl Iterator<Item = (&str, &Entry)> {
        self.entries.iter().map(|(k, v)| (k.as_str(), v))
    }

    /// The archive bytes, `TRAILER!!!` included.
    pub fn to_bytes(&self) -> Result<Vec<u8>, CpioError> {
        let mut out = Vec::new();
        for (ino, (path, e)) in self.entries.iter().enumerate() {
            let (kind, data, rdev): (u32, &[u8], (u32, u32)) = match &e.node {
                Node::Dir => (0o040000, &[], (0, 0)),
                Node::File(d) => (0o100000, d, (0, 0)),
                Node::Symlink(t) => (0o120000, t.as_bytes(), (0, 0)),
                Node::CharDev(ma, mi) => (0o020000, &[], (*ma, *mi)),
            };
            let size = u32::try_from(data.len()).map_err(|_| CpioError::TooLarge(path.clone()))?;
            let nlink = if matches!(e.node, Node::Dir) { 2 } else { 1 };
            header(
                &mut out,
                ino as u32 + 1,
                kind | (e.mode & 0o7777),
                nlink,
                size,
                rdev,
                path,
            );
            out.extend_from_slice(data);
            pad4(&mut out);
        }
        header(&mut out, 0, 0, 1, 0, (0, 0), "TRAILER!!!");
        Ok(out)
    }
}

fn header(
    out: &mut Vec<u8>,
    ino: u32,
    mode: u32,
    nlink: u32,
    size: u32,
    rdev: (u32, u32),
    name: &str,
) {
    // magic, ino, mode, uid, gid, nlink, mtime, filesize, devmajor,
    // devminor, rdevmajor, rdevminor, namesize, check: 8 hex digits each.
    let fields = [
        ino,
        mode,
        0,
        0,
        nlink,
        0,
        size,
        0,
        0,
        rdev.0,
        rdev.1,
        name.len() as u32 + 1,
        0,
    ];
    out.extend_from_slice(b"070701");
    for f in fields {
        out.extend_from_slice(format!("{f:08x}").as_bytes());
    }
    out.extend_from_slice(name.as_bytes());
    out.push(0);
    pad4(out);
}

fn pad4(out: &mut Vec<u8>) {
    while !out.len().is_multiple_of(4) {
        out.push(0);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The header layout of one file, worked out by hand from the newc
    /// format: 110 header bytes, the name with its NUL, padding to 4.
    #[test]
    fn newc_layout() {
        let mut a = Archive::default();
        a.add("init", Node::File(b"hi".to_vec()), 0o755).unwrap();
        let b = a.to_bytes().unwrap();
        let expect_header = "070701\
            00000001\
            000081ed\
            00000000\
            00000000\
            00000001\
            00000000\
            00000002\
            00000000\
            00000000\
            00000000\
            00000000\
            00000005\
            00000000";
        assert_eq!(&b[..110], expect_header.as_bytes());
        // 110 + "init\0" = 115, padded to 116; then the data, padded to 120.
        assert_eq!(&b[110..116], b"init\0\0");
        assert_eq!(&b[116..120], b"hi\0\0");
        assert_eq!(&b[120..126], b"070701");
        assert!(b.windows(11).any(|w| w == b"TRAILER!!!\0"));
        assert_eq!(b.len() % 4, 0);
    }

    /// Parents appear before children whatever the insertion order, and the
    /// bytes do not depend on that order.
    #[test]
    fn sorted_and_order_independent() {
        let mut a = Archive::default();
        a.add("lib/modules/b.ko", Node::File(vec![1]), 0o644)
            .unwrap();
        a.add("dev/console", Node::CharDev(5, 1), 0o600).unwrap();
        a.add("init", Node::File(vec![2]), 0o755).unwrap();
        let mut b = Archive::default();
        b.add("init", Node::File(vec![2]), 0o755).unwrap();
        b.add("dev/console", Node::CharDev(5, 1), 0o600).unwrap();
        b.add("lib/modules/b.ko", Node::File(vec![1]), 0o644)
            .unwrap();
        assert_eq!(a.to_bytes().unwrap(), b.to_bytes().unwrap());
        let names: Vec<&str> = a.entries().map(|(p, _)| p).collect();
        assert_eq!(
            names,
            [
                "dev",
                "dev/console",
                "init",
                "lib",
                "lib/modules",
                "lib/modules/b.ko"
            ]
        );
    }

    #[test]
    fn bad_paths_refused() {
        let mut a = Archive::default();
        for p in ["", "/init", "a//b", "a/../b", "./a", "a/"] {
            assert_eq!(
                a.add(p, Node::Dir, 0o755),
                Err(CpioError::Path(p.to_string()))
            );
        }
    }
}
