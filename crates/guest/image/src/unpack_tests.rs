use super::*;

/// Builds a tar stream entry by entry, writing names byte for byte so
/// hostile names can be expressed.
#[derive(Default)]
pub(crate) struct TarBuilder(Vec<u8>);

impl TarBuilder {
    pub(crate) fn entry(
        mut self,
        kind: tar::EntryType,
        name: &str,
        link: &str,
        data: &[u8],
        mode: u32,
    ) -> Self {
        let mut h = tar::Header::new_ustar();
        {
            let u = h.as_ustar_mut().expect("ustar");
            u.name[..name.len().min(100)].copy_from_slice(&name.as_bytes()[..name.len().min(100)]);
            u.linkname[..link.len()].copy_from_slice(link.as_bytes());
        }
        h.set_entry_type(kind);
        h.set_size(data.len() as u64);
        h.set_mode(mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(1_700_000_000);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self.0.extend_from_slice(data);
        self.0.resize(self.0.len().div_ceil(512) * 512, 0);
        self
    }
    pub(crate) fn file(self, name: &str, data: &[u8]) -> Self {
        self.entry(tar::EntryType::Regular, name, "", data, 0o644)
    }
    pub(crate) fn dir(self, name: &str) -> Self {
        self.entry(tar::EntryType::Directory, name, "", b"", 0o755)
    }
    pub(crate) fn symlink(self, name: &str, target: &str) -> Self {
        self.entry(tar::EntryType::Symlink, name, target, b"", 0o777)
    }
    pub(crate) fn hardlink(self, name: &str, target: &str) -> Self {
        self.entry(tar::EntryType::Link, name, target, b"", 0o644)
    }
    /// A header that declares `size` bytes without supplying them.
    fn declared(mut self, kind: tar::EntryType, size: u64) -> Self {
        let mut h = tar::Header::new_gnu();
        h.as_gnu_mut().expect("gnu").name[..13].copy_from_slice(b"././@LongLink");
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_cksum();
        self.0.extend_from_slice(h.as_bytes());
        self
    }
    fn pax(self, records: &[(&str, &[u8])]) -> Self {
        let mut data = Vec::new();
        for (k, v) in records {
            let body_len = k.len() + v.len() + 3;
            let mut len = body_len + 1;
            while len != body_len + len.to_string().len() {
                len = body_len + len.to_string().len();
            }
            data.extend_from_slice(format!("{len} {k}=").as_bytes());
            data.extend_from_slice(v);
            data.push(b'\n');
        }
        self.entry(tar::EntryType::XHeader, "pax", "", &data, 0o644)
    }
    pub(crate) fn finish(mut self) -> Vec<u8> {
        self.0.extend_from_slice(&[0u8; 1024]);
        self.0
    }
}

fn opts() -> UnpackOptions {
    UnpackOptions {
        allow_devices: false,
        preserve_ownership: false,
    }
}

/// Applies `tar` to `root` streamed, and to a twin root beside it from
/// memory ([`Rootfs::apply_bytes`]: data from the buffer, seeking): both
/// must agree on the outcome and leave identical trees.
fn apply(root: &Path, tar: Vec<u8>) -> Result<UnpackStats, UnpackError> {
    let streamed = Rootfs::open(root, opts()).and_then(|mut r| r.apply(tar.as_slice()));
    let twin = root.with_extension("in-memory");
    let whole = Rootfs::open(&twin, opts()).and_then(|mut r| r.apply_bytes(&tar));
    match (&streamed, &whole) {
        (Ok(a), Ok(b)) => {
            assert_eq!(
                (a.entries, a.bytes, a.whiteouts),
                (b.entries, b.bytes, b.whiteouts)
            );
            assert_eq!(tree(root), tree(&twin), "the two ways of applying differ");
        }
        (Err(a), Err(b)) => assert_eq!(a.to_string(), b.to_string()),
        _ => panic!("streamed: {streamed:?}, in memory: {whole:?}"),
    }
    streamed
}

/// Everything under `root`: path, type, mode, size, content or target,
/// modification time.
fn tree(root: &Path) -> Vec<String> {
    use std::os::unix::fs::MetadataExt;
    // A directory the layer did not list is made when unpacking, with that
    // moment's time: the two applies may fall on either side of a second.
    let recent = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        - 86_400;
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let m = std::fs::symlink_metadata(&p).unwrap();
            let rel = p.strip_prefix(root).unwrap().display().to_string();
            let what = if m.is_dir() {
                stack.push(p.clone());
                "dir".to_string()
            } else if m.file_type().is_symlink() {
                format!("-> {}", std::fs::read_link(&p).unwrap().display())
            } else if m.is_file() {
                format!("{:?}", std::fs::read(&p).unwrap())
            } else {
                "special".to_string()
            };
            let mtime = if m.is_dir() && m.mtime() > recent {
                "(time of unpacking)".to_string()
            } else {
                m.mtime().to_string()
            };
            out.push(format!("{rel} {:o} {} {mtime} {what}", m.mode(), m.len()));
        }
    }
    out.sort();
    out
}

#[test]
fn files_dirs_links_and_modes() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rootfs");
    let tar = TarBuilder::default()
        .dir("etc/")
        .file("etc/hostname", b"cocoon\n")
        .entry(
            tar::EntryType::Regular,
            "bin/tool",
            "",
            b"#!/bin/sh\n",
            0o755,
        )
        .symlink("etc/alias", "hostname")
        .symlink("abs", "/etc/hostname")
        .hardlink("etc/hostname2", "etc/hostname")
        .entry(tar::EntryType::Fifo, "run/fifo", "", b"", 0o600)
        .finish();
    let stats = apply(&root, tar).unwrap();
    assert_eq!(stats.entries, 7);
    assert_eq!(
        std::fs::read(root.join("etc/hostname")).unwrap(),
        b"cocoon\n"
    );
    assert_eq!(std::fs::read(root.join("etc/alias")).unwrap(), b"cocoon\n");
    assert_eq!(
        std::fs::read_link(root.join("abs")).unwrap(),
        Path::new("/etc/hostname")
    );
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    let a = std::fs::metadata(root.join("etc/hostname")).unwrap();
    let b = std::fs::metadata(root.join("etc/hostname2")).unwrap();
    assert_eq!(a.ino(), b.ino(), "hard link shares the inode");
    assert_eq!(
        std::fs::metadata(root.join("bin/tool"))
            .unwrap()
            .permissions()
            .mode()
            & 0o777,
        0o755
    );
    assert_eq!(a.mtime(), 1_700_000_000);
    // Links and nodes keep the archive's time too (not the time of unpacking).
    for p in ["abs", "etc/alias", "run/fifo"] {
        let m = std::fs::symlink_metadata(root.join(p)).unwrap();
        assert_eq!(m.mtime(), 1_700_000_000, "{p}");
    }
}

#[test]
fn whiteouts_and_opaque_directories() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rootfs");
    let lower = TarBuilder::default()
        .file("a/b", b"1")
        .file("a/c", b"2")
        .file("d/e", b"3")
        .file("f", b"4")
        .finish();
    apply(&root, lower).unwrap();
    let upper = TarBuilder::default()
        .dir("a/")
        .file("a/new", b"5")
        .file("a/.wh..wh..opq", b"")
        .file(".wh.d", b"")
        .file(".wh.f", b"")
        .file(".wh.missing", b"")
        .finish();
    let stats = apply(&root, upper).unwrap();
    assert!(!root.join("a/b").exists() && !root.join("a/c").exists());
    assert_eq!(
        std::fs::read(root.join("a/new")).unwrap(),
        b"5",
        "opaque keeps this layer's files"
    );
    assert!(!root.join("d").exists() && !root.join("f").exists());
    assert_eq!(stats.whiteouts, 5); // a/b, a/c, d/e + d, f
    // A file replaces a directory and the other way round.
    let swap = TarBuilder::default()
        .file("a", b"file now")
        .dir("f/")
        .finish();
    apply(&root, swap).unwrap();
    assert_eq!(std::fs::read(root.join("a")).unwrap(), b"file now");
    assert!(root.join("f").is_dir());
}

/// Every hostile case is refused, and nothing appears outside the root.
#[test]
fn hostile_tarballs_are_refused() {
    let t = tempfile::tempdir().unwrap();
    let outside = t.path().join("outside");
    std::fs::create_dir(&outside).unwrap();
    let outside_s = outside.display().to_string();
    let cases: Vec<(&str, Vec<u8>, &str)> = vec![
        (
            "dot-dot",
            TarBuilder::default().file("../outside/x", b"pwn").finish(),
            "'..'",
        ),
        (
            "nested dot-dot",
            TarBuilder::default()
                .file("a/../../outside/x", b"pwn")
                .finish(),
            "'..'",
        ),
        (
            "absolute",
            TarBuilder::default()
                .file(&format!("{outside_s}/x"), b"pwn")
                .finish(),
            "absolute",
        ),
        (
            "symlink escape",
            TarBuilder::default()
                .symlink("esc", "../../outside")
                .finish(),
            "escapes the root",
        ),
        (
            "write through an absolute symlink",
            TarBuilder::default()
                .symlink("esc", &outside_s)
                .file("esc/x", b"pwn")
                .finish(),
            "cannot be created",
        ),
        (
            "hard link escape",
            TarBuilder::default().hardlink("h", "../outside/x").finish(),
            "escapes the root",
        ),
        (
            "hard link absolute",
            TarBuilder::default().hardlink("h", "/etc/passwd").finish(),
            "escapes the root",
        ),
        (
            "char device",
            TarBuilder::default()
                .entry(tar::EntryType::Char, "dev/mem", "", b"", 0o600)
                .finish(),
            "device nodes are not allowed",
        ),
        (
            "block device",
            TarBuilder::default()
                .entry(tar::EntryType::Block, "dev/sda", "", b"", 0o600)
                .finish(),
            "device nodes are not allowed",
        ),
        (
            "huge long name",
            TarBuilder::default()
                .declared(tar::EntryType::GNULongName, 1 << 33)
                .finish(),
            "extended header",
        ),
        (
            "huge PAX header",
            TarBuilder::default()
                .declared(tar::EntryType::XHeader, MAX_HEADER_BYTES + 1)
                .finish(),
            "extended header",
        ),
        (
            "PAX path with dot-dot",
            TarBuilder::default()
                .pax(&[("path", b"../outside/x")])
                .file("innocent", b"pwn")
                .finish(),
            "'..'",
        ),
        (
            "sparse file",
            TarBuilder::default()
                .entry(tar::EntryType::GNUSparse, "s", "", b"", 0o644)
                .finish(),
            "not supported",
        ),
    ];
    for (what, tar, expect) in cases {
        let root = t.path().join(format!("root-{}", what.replace(' ', "-")));
        let err = apply(&root, tar).expect_err(what).to_string();
        assert!(err.contains(expect), "{what}: {err}");
        assert_eq!(
            std::fs::read_dir(&outside).unwrap().count(),
            0,
            "{what} wrote outside the root"
        );
    }
}

#[test]
fn pax_names_and_truncated_archives() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rootfs");
    let long = format!("{}/file", "d".repeat(150));
    let tar = TarBuilder::default()
        .pax(&[("path", long.as_bytes())])
        .file("short", b"x")
        .finish();
    apply(&root, tar).unwrap();
    assert_eq!(std::fs::read(root.join(&long)).unwrap(), b"x");
    // Declared data that never comes is an error, not a short file.
    let mut cut = TarBuilder::default().file("big", &[7u8; 4096]).finish();
    cut.truncate(1024);
    assert!(apply(&t.path().join("cut"), cut).is_err());
    // Garbage is malformed, not a panic.
    assert!(apply(&t.path().join("junk"), vec![0xff; 2048]).is_err());
}

/// An opaque directory also empties lower-layer contents of directories
/// the same layer re-creates before the marker (sorted order puts `-conf`
/// before `.wh..wh..opq`).
#[test]
fn opaque_directories_reach_into_recreated_subdirectories() {
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rootfs");
    apply(
        &root,
        TarBuilder::default()
            .file("d/-conf/key", b"secret")
            .file("d/-conf/old", b"1")
            .finish(),
    )
    .unwrap();
    let upper = TarBuilder::default()
        .dir("d/")
        .dir("d/-conf/")
        .file("d/-conf/new", b"2")
        .file("d/.wh..wh..opq", b"")
        .finish();
    apply(&root, upper).unwrap();
    assert!(!root.join("d/-conf/key").exists() && !root.join("d/-conf/old").exists());
    assert_eq!(std::fs::read(root.join("d/-conf/new")).unwrap(), b"2");
}

/// Repeated PAX headers cannot pile up extended attributes without bound;
/// PAX uid/gid override the ustar fields.
#[test]
fn pax_xattr_limit_and_large_ids() {
    let t = tempfile::tempdir().unwrap();
    let big = vec![b'x'; 600 << 10];
    let tar = TarBuilder::default()
        .pax(&[("SCHILY.xattr.user.a", &big)])
        .pax(&[("SCHILY.xattr.user.b", &big)])
        .file("f", b"x")
        .finish();
    let err = apply(&t.path().join("r1"), tar).unwrap_err().to_string();
    assert!(err.contains("extended attributes over 1 MiB"), "{err}");
    let tar = TarBuilder::default()
        .pax(&[("uid", b"3000000"), ("gid", b"3000001")])
        .file("f", b"x")
        .finish();
    let root = t.path().join("r2");
    let mut rootfs = Rootfs::open(
        &root,
        UnpackOptions {
            allow_devices: false,
            preserve_ownership: rustix::process::geteuid().is_root(),
        },
    )
    .unwrap();
    rootfs.apply(tar.as_slice()).unwrap();
    if rustix::process::geteuid().is_root() {
        use std::os::unix::fs::MetadataExt;
        let m = std::fs::metadata(root.join("f")).unwrap();
        assert_eq!((m.uid(), m.gid()), (3_000_000, 3_000_001));
    }
    assert!(
        apply(
            &t.path().join("r3"),
            TarBuilder::default()
                .pax(&[("uid", b"-1")])
                .file("f", b"x")
                .finish()
        )
        .is_err()
    );
}

/// PAX `uid`/`gid` records are read as numbers whoever runs the test (the
/// ownership they give is checked as root in `pax_xattr_limit_and_large_ids`);
/// anything else is malformed.
#[test]
fn pax_uid_and_gid_records_are_read() {
    let mut p = Pending::default();
    parse_pax(b"15 uid=3000000\n15 gid=3000001\n", &mut p, "f").unwrap();
    assert_eq!((p.uid, p.gid), (Some(3_000_000), Some(3_000_001)));
    for bad in [&b"10 uid=-1\n"[..], b"10 gid=x1\n", b"9 uid=\n"] {
        assert!(
            parse_pax(bad, &mut Pending::default(), "f").is_err(),
            "{}",
            String::from_utf8_lossy(bad)
        );
    }
}

/// Files created with their final mode (no chmod) or not: a file replaced
/// after a hard link to it was made, a read-only directory filled before
/// its mode is set, modes the umask would strip, set-id bits, many files
/// and a large one, from memory and streamed alike.
#[test]
fn file_modes_links_and_data_keep_the_layer_semantics() {
    use std::os::unix::fs::PermissionsExt;
    let t = tempfile::tempdir().unwrap();
    let root = t.path().join("rootfs");
    let big: Vec<u8> = (0..(3 << 20) + 4097).map(|i| (i % 253) as u8).collect();
    let mut b = TarBuilder::default()
        .entry(tar::EntryType::Directory, "ro/", "", b"", 0o555)
        .file("ro/inside", b"in a read-only directory")
        .file("a", b"old")
        .hardlink("b", "a")
        .file("a", b"new")
        .entry(tar::EntryType::Regular, "shared", "", b"rw for all", 0o666)
        .entry(tar::EntryType::Regular, "suid", "", b"#!", 0o4755)
        .entry(tar::EntryType::Regular, "none", "", b"", 0o000)
        .file("big", &big);
    for i in 0..300 {
        b = b.file(&format!("many/f{i}"), format!("file {i}").as_bytes());
    }
    let stats = apply(&root, b.finish()).unwrap();
    let read = |p: &str| std::fs::read(root.join(p)).unwrap();
    let perm = |p: &str| {
        std::fs::symlink_metadata(root.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert_eq!(read("a"), b"new");
    assert_eq!(read("b"), b"old");
    assert_eq!(read("ro/inside"), b"in a read-only directory");
    assert_eq!(perm("ro"), 0o555);
    assert_eq!(perm("shared"), 0o666);
    assert_eq!(perm("suid"), 0o4755);
    assert_eq!(perm("none"), 0);
    assert_eq!(read("big"), big);
    assert_eq!(read("many/f299"), b"file 299");
    assert_eq!(stats.entries, 9 + 300);
    // Times are set after the data (a write would move them).
    use std::os::unix::fs::MetadataExt;
    assert_eq!(
        std::fs::metadata(root.join("big")).unwrap().mtime(),
        1_700_000_000
    );
    // A later layer replaces a file.
    let again = TarBuilder::default().file("a", b"third").finish();
    apply(&root, again).unwrap();
    assert_eq!(read("a"), b"third");
}
