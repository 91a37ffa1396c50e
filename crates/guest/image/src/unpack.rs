//! Applies layer tarballs to a rootfs, the way containerd and umoci do:
//! OCI whiteouts (`.wh.NAME`) and opaque directories (`.wh..wh..opq`),
//! ownership, modes, times and xattrs.
//!
//! Layers are untrusted input. Every path is resolved with `openat2`
//! `RESOLVE_IN_ROOT`, so symlinks already in the rootfs (absolute or
//! relative) resolve inside it and nothing can be written outside. On top
//! of that, entries are refused outright when their name is absolute or
//! climbs with `..`, when a symlink or hard link points above the root,
//! for device nodes unless allowed, for sparse files, and for name or PAX
//! headers over [`MAX_HEADER_BYTES`].

use rustix::fs::{AtFlags, Dir, FileType, Mode, OFlags, ResolveFlags, Timestamps};
use rustix::io::Errno;
use std::collections::HashSet;
use std::io::Read;
use std::os::fd::{AsFd, OwnedFd};
use std::path::Path;

/// Largest GNU long-name or PAX header accepted.
pub const MAX_HEADER_BYTES: u64 = 1 << 20;
/// Longest path accepted (Linux PATH_MAX).
const MAX_PATH: usize = 4096;
const WHITEOUT_PREFIX: &str = ".wh.";
const OPAQUE: &str = ".wh..wh..opq";

/// Why a layer could not be applied.
#[derive(Debug, thiserror::Error)]
pub enum UnpackError {
    /// A hostile or unsupported entry; nothing was written for it.
    #[error("refused tar entry {path:?}: {reason}")]
    Refused {
        /// The entry name as in the archive.
        path: String,
        /// Why.
        reason: String,
    },
    /// The archive is not a valid tar stream.
    #[error("malformed layer tarball: {0}")]
    Malformed(String),
    /// The filesystem said no.
    #[error("cannot write {path:?} in the rootfs: {source}")]
    Io {
        /// Entry path.
        path: String,
        /// The error.
        source: std::io::Error,
    },
}

/// What an unpack may do.
#[derive(Debug, Clone)]
pub struct UnpackOptions {
    /// Create character and block devices (refused by default: the runtime
    /// provides `/dev`).
    pub allow_devices: bool,
    /// Apply the archive's uid/gid (needs root; default: when running as root).
    pub preserve_ownership: bool,
}

impl Default for UnpackOptions {
    fn default() -> Self {
        Self {
            allow_devices: false,
            preserve_ownership: rustix::process::geteuid().is_root(),
        }
    }
}

/// Counts from one layer.
#[derive(Debug, Default, Clone, Copy)]
pub struct UnpackStats {
    /// Entries created.
    pub entries: u64,
    /// Bytes of regular-file content written.
    pub bytes: u64,
    /// Paths removed by whiteouts.
    pub whiteouts: u64,
}

fn refused(path: &str, reason: impl Into<String>) -> UnpackError {
    UnpackError::Refused {
        path: path.to_string(),
        reason: reason.into(),
    }
}

/// Splits an entry name into normal components, refusing absolute names
/// and `..`.
fn components(raw: &str) -> Result<Vec<&str>, UnpackError> {
    if raw.starts_with('/') {
        return Err(refused(raw, "absolute path"));
    }
    if raw.len() > MAX_PATH || raw.contains('\0') {
        return Err(refused(raw, "path too long or contains NUL"));
    }
    let mut out = Vec::new();
    for c in raw.split('/') {
        match c {
            "" | "." => {}
            ".." => return Err(refused(raw, "path contains '..'")),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Whether a relative symlink target, seen from the link's directory,
/// climbs above the root.
fn escapes(link_dir_depth: usize, target: &str) -> bool {
    if target.starts_with('/') {
        return false; // resolved inside the container's root
    }
    let mut depth = link_dir_depth as isize;
    for c in target.split('/') {
        match c {
            "" | "." => {}
            ".." => {
                depth -= 1;
                if depth < 0 {
                    return true;
                }
            }
            _ => depth += 1,
        }
    }
    false
}

fn resolve() -> ResolveFlags {
    ResolveFlags::IN_ROOT | ResolveFlags::NO_MAGICLINKS | ResolveFlags::NO_XDEV
}

/// A rootfs being written, every path resolved inside it.
pub struct Rootfs {
    root: OwnedFd,
    opts: UnpackOptions,
    parent_cache: Option<(String, OwnedFd)>,
    copy_buf: Vec<u8>,
    /// The umask new files are created under, when known.
    umask: Option<u32>,
}

#[derive(Default)]
struct Pending {
    name: Option<String>,
    link: Option<String>,
    xattrs: Vec<(String, Vec<u8>)>,
    xattr_bytes: u64,
    pax_size: Option<u64>,
    uid: Option<u64>,
    gid: Option<u64>,
}

impl Rootfs {
    /// Opens (creating if needed) the rootfs directory.
    pub fn open(path: &Path, opts: UnpackOptions) -> Result<Self, UnpackError> {
        let io = |source| UnpackError::Io {
            path: path.display().to_string(),
            source,
        };
        std::fs::create_dir_all(path).map_err(io)?;
        let root = rustix::fs::open(
            path,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io(e.into()))?;
        Ok(Self {
            root,
            opts,
            parent_cache: None,
            copy_buf: Vec::new(),
            umask: current_umask(),
        })
    }

    /// Reads a small regular file inside the root (symlinks resolved inside
    /// it); `None` when missing, not a regular file or over `max` bytes.
    pub fn read_small(&self, rel: &str, max: u64) -> Option<Vec<u8>> {
        let fd = rustix::fs::openat2(
            &self.root,
            rel,
            OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NONBLOCK,
            Mode::empty(),
            resolve(),
        )
        .ok()?;
        let st = rustix::fs::fstat(&fd).ok()?;
        if FileType::from_raw_mode(st.st_mode) != FileType::RegularFile || st.st_size as u64 > max {
            return None;
        }
        let mut out = Vec::new();
        std::fs::File::from(fd)
            .take(max)
            .read_to_end(&mut out)
            .ok()?;
        Some(out)
    }

    /// Opens a directory inside the root, `O_PATH`.
    fn open_dir(&self, rel: &str) -> Result<OwnedFd, Errno> {
        let rel = if rel.is_empty() { "." } else { rel };
        rustix::fs::openat2(
            &self.root,
            rel,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
            resolve(),
        )
    }

    /// The parent directory of an entry, created (0755) where missing.
    fn parent(&mut self, comps: &[&str], raw: &str) -> Result<OwnedFd, UnpackError> {
        let dir = comps[..comps.len() - 1].join("/");
        if let Some((p, fd)) = &self.parent_cache
            && *p == dir
        {
            return fd.try_clone().map_err(|source| UnpackError::Io {
                path: raw.into(),
                source,
            });
        }
        let fd = match self.open_dir(&dir) {
            Ok(fd) => fd,
            Err(Errno::NOENT) => {
                let mut cur = self.open_dir("").map_err(|e| io_err(raw, e))?;
                for i in 0..comps.len() - 1 {
                    let prefix = comps[..=i].join("/");
                    cur = match self.open_dir(&prefix) {
                        Ok(fd) => fd,
                        Err(Errno::NOENT) => {
                            match rustix::fs::mkdirat(
                                &cur,
                                comps[i],
                                Mode::from_bits_truncate(0o755),
                            ) {
                                Ok(()) | Err(Errno::EXIST) => {}
                                Err(e) => return Err(io_err(raw, e)),
                            }
                            self.open_dir(&prefix).map_err(|e| {
                                refused(raw, format!("parent {prefix:?} cannot be created: {e}"))
                            })?
                        }
                        Err(Errno::NOTDIR) => {
                            return Err(refused(
                                raw,
                                format!("parent {prefix:?} is not a directory"),
                            ));
                        }
                        Err(e) => return Err(io_err(raw, e)),
                    };
                }
                cur
            }
            Err(Errno::NOTDIR) => return Err(refused(raw, "a parent is not a directory")),
            Err(Errno::XDEV) => return Err(refused(raw, "a parent resolves across a mount")),
            Err(e) => return Err(io_err(raw, e)),
        };
        self.parent_cache = Some((
            dir,
            fd.try_clone().map_err(|source| UnpackError::Io {
                path: raw.into(),
                source,
            })?,
        ));
        Ok(fd)
    }

    /// Applies one uncompressed layer tarball, read as a stream.
    pub fn apply<R: Read>(&mut self, tar: R) -> Result<UnpackStats, UnpackError> {
        let mut archive = tar::Archive::new(tar);
        let entries = archive
            .entries()
            .map_err(|e| UnpackError::Malformed(e.to_string()))?;
        self.apply_entries(entries, None)
    }

    /// Applies one uncompressed layer tarball held in memory: file data is
    /// written straight from `tar` (one copy fewer than streaming), and
    /// entries are skipped by seeking.
    pub fn apply_bytes(&mut self, tar: &[u8]) -> Result<UnpackStats, UnpackError> {
        let mut archive = tar::Archive::new(std::io::Cursor::new(tar));
        let entries = archive
            .entries_with_seek()
            .map_err(|e| UnpackError::Malformed(e.to_string()))?;
        self.apply_entries(entries, Some(tar))
    }

    /// The entries in order (file data from `whole` when the layer is in
    /// memory), then the directories' modes and times.
    fn apply_entries<R: Read>(
        &mut self,
        entries: tar::Entries<'_, R>,
        whole: Option<&[u8]>,
    ) -> Result<UnpackStats, UnpackError> {
        let mut stats = UnpackStats::default();
        let mut created: HashSet<String> = HashSet::new();
        let mut dir_meta: Vec<(String, tar::Header)> = Vec::new();
        let entries = entries.raw(true);
        let mut pending = Pending::default();
        // From memory the archive skips entries by seeking, which does not
        // notice an end that comes too soon: each entry's data and padding
        // must be there when the next one is read, as the stream requires.
        let mut last_end: Option<(String, Option<u64>)> = None;
        for entry in entries {
            let mut entry = entry.map_err(|e| UnpackError::Malformed(e.to_string()))?;
            let mut header = entry.header().clone();
            let kind = header.entry_type();
            let size = header
                .entry_size()
                .map_err(|e| UnpackError::Malformed(e.to_string()))?;
            let raw_name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
            if let Some(tar) = whole {
                check_end(&mut last_end, tar)?;
                last_end = Some((
                    raw_name.clone(),
                    size.checked_next_multiple_of(512)
                        .and_then(|padded| entry.raw_file_position().checked_add(padded)),
                ));
            }
            match kind {
                tar::EntryType::GNULongName | tar::EntryType::GNULongLink => {
                    let data = read_header_data(&mut entry, size, &raw_name)?;
                    let s = String::from_utf8_lossy(data.split(|b| *b == 0).next().unwrap_or(&[]))
                        .into_owned();
                    if kind == tar::EntryType::GNULongName {
                        pending.name = Some(s);
                    } else {
                        pending.link = Some(s);
                    }
                    continue;
                }
                tar::EntryType::XHeader => {
                    let data = read_header_data(&mut entry, size, &raw_name)?;
                    parse_pax(&data, &mut pending, &raw_name)?;
                    continue;
                }
                tar::EntryType::XGlobalHeader => {
                    read_header_data(&mut entry, size, &raw_name)?;
                    continue;
                }
                _ => {}
            }
            let name = pending.name.take().unwrap_or(raw_name);
            let link = pending.link.take().or_else(|| {
                entry
                    .link_name_bytes()
                    .map(|l| String::from_utf8_lossy(&l).into_owned())
            });
            let xattrs = std::mem::take(&mut pending.xattrs);
            pending.xattr_bytes = 0;
            // Ids too large for the ustar fields come in PAX records.
            if let Some(u) = pending.uid.take() {
                header.set_uid(u);
            }
            if let Some(g) = pending.gid.take() {
                header.set_gid(g);
            }
            if let Some(s) = pending.pax_size.take()
                && s != size
            {
                return Err(refused(
                    &name,
                    "PAX size override (files over 8 GiB) is not supported",
                ));
            }
            let comps = components(&name)?;
            if comps.is_empty() {
                continue; // the root itself
            }
            let base = comps[comps.len() - 1];
            if let Some(hidden) = base.strip_prefix(WHITEOUT_PREFIX) {
                let parent = self.parent(&comps, &name)?;
                let dir = comps[..comps.len() - 1].join("/");
                if base == OPAQUE {
                    stats.whiteouts += self.clear_dir(&parent, &dir, &created, &name)?;
                } else if !hidden.is_empty() && hidden != "." && hidden != ".." {
                    let target = if dir.is_empty() {
                        hidden.to_string()
                    } else {
                        format!("{dir}/{hidden}")
                    };
                    if !created.contains(&target) {
                        stats.whiteouts += self.remove_at(&parent, hidden, &name)?;
                    }
                } else {
                    return Err(refused(&name, "malformed whiteout"));
                }
                continue;
            }
            let norm = comps.join("/");
            let parent = self.parent(&comps, &name)?;
            let existing = rustix::fs::statat(&parent, base, AtFlags::SYMLINK_NOFOLLOW).ok();
            let existing_dir = existing
                .as_ref()
                .is_some_and(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory);
            if existing.is_some() && !(kind == tar::EntryType::Directory && existing_dir) {
                self.remove_at(&parent, base, &name)?;
            }
            match kind {
                tar::EntryType::Regular | tar::EntryType::Continuous => {
                    // Created with its final permissions where the umask
                    // keeps them (no chmod then); set-id and sticky bits
                    // come with the chmod after the chown.
                    let perm = mode(&header);
                    let exact = perm & !0o777 == 0 && self.umask.is_some_and(|m| perm & m == 0);
                    let fd = rustix::fs::openat(
                        &parent,
                        base,
                        OFlags::WRONLY
                            | OFlags::CREATE
                            | OFlags::EXCL
                            | OFlags::NOFOLLOW
                            | OFlags::CLOEXEC,
                        Mode::from_bits_truncate(if exact { perm } else { 0o600 }),
                    )
                    .map_err(|e| io_err(&name, e))?;
                    let mut file = std::fs::File::from(fd);
                    let meta = Meta::of(&header, !exact);
                    match whole {
                        Some(tar) => {
                            // Straight from the layer in memory: one copy,
                            // into the file.
                            let at = entry.raw_file_position();
                            let data = usize::try_from(at)
                                .ok()
                                .zip(usize::try_from(size).ok())
                                .and_then(|(at, n)| tar.get(at..at.checked_add(n)?))
                                .ok_or_else(|| {
                                    UnpackError::Malformed(format!("{name}: truncated file data"))
                                })?;
                            std::io::Write::write_all(&mut file, data).map_err(|source| {
                                UnpackError::Io {
                                    path: name.clone(),
                                    source,
                                }
                            })?;
                        }
                        None => {
                            let n = copy_data(&mut entry, &mut file, &mut self.copy_buf).map_err(
                                |source| UnpackError::Io {
                                    path: name.clone(),
                                    source,
                                },
                            )?;
                            if n != size {
                                return Err(UnpackError::Malformed(format!(
                                    "{name}: truncated file data"
                                )));
                            }
                        }
                    }
                    stats.bytes += size;
                    set_meta(&self.opts, file.as_fd(), &meta, &xattrs, &name)?;
                }
                tar::EntryType::Directory => {
                    if !existing_dir {
                        rustix::fs::mkdirat(&parent, base, Mode::from_bits_truncate(0o755))
                            .map_err(|e| io_err(&name, e))?;
                    }
                    let fd = rustix::fs::openat(
                        &parent,
                        base,
                        OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                        Mode::empty(),
                    )
                    .map_err(|e| io_err(&name, e))?;
                    for (k, v) in &xattrs {
                        set_xattr(fd.as_fd(), k, v);
                    }
                    dir_meta.push((norm.clone(), header.clone()));
                }
                tar::EntryType::Symlink => {
                    let target = link.ok_or_else(|| refused(&name, "symlink without a target"))?;
                    if target.is_empty() || target.len() > MAX_PATH || target.contains('\0') {
                        return Err(refused(&name, "symlink target empty or too long"));
                    }
                    if escapes(comps.len() - 1, &target) {
                        return Err(refused(
                            &name,
                            format!("symlink target {target:?} escapes the root"),
                        ));
                    }
                    rustix::fs::symlinkat(target.as_str(), &parent, base)
                        .map_err(|e| io_err(&name, e))?;
                    self.set_meta_at(&parent, base, &header, &name)?;
                }
                tar::EntryType::Link => {
                    let target =
                        link.ok_or_else(|| refused(&name, "hard link without a target"))?;
                    let tcomps = components(&target).map_err(|_| {
                        refused(
                            &name,
                            format!("hard link target {target:?} escapes the root"),
                        )
                    })?;
                    if tcomps.is_empty() {
                        return Err(refused(&name, "hard link to the root"));
                    }
                    let tdir = self
                        .open_dir(&tcomps[..tcomps.len() - 1].join("/"))
                        .map_err(|e| refused(&name, format!("hard link target {target:?}: {e}")))?;
                    let tstat = rustix::fs::statat(
                        &tdir,
                        tcomps[tcomps.len() - 1],
                        AtFlags::SYMLINK_NOFOLLOW,
                    )
                    .map_err(|e| refused(&name, format!("hard link target {target:?}: {e}")))?;
                    if FileType::from_raw_mode(tstat.st_mode) == FileType::Directory {
                        return Err(refused(&name, "hard link to a directory"));
                    }
                    rustix::fs::linkat(
                        &tdir,
                        tcomps[tcomps.len() - 1],
                        &parent,
                        base,
                        AtFlags::empty(),
                    )
                    .map_err(|e| io_err(&name, e))?;
                }
                tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo => {
                    let (ft, what) = match kind {
                        tar::EntryType::Char => (FileType::CharacterDevice, "character device"),
                        tar::EntryType::Block => (FileType::BlockDevice, "block device"),
                        _ => (FileType::Fifo, "fifo"),
                    };
                    if ft != FileType::Fifo && !self.opts.allow_devices {
                        return Err(refused(
                            &name,
                            format!("{what} (device nodes are not allowed)"),
                        ));
                    }
                    let major = header.device_major().ok().flatten().unwrap_or(0);
                    let minor = header.device_minor().ok().flatten().unwrap_or(0);
                    rustix::fs::mknodat(
                        &parent,
                        base,
                        ft,
                        Mode::from_bits_truncate(mode(&header)),
                        rustix::fs::makedev(major, minor),
                    )
                    .map_err(|e| io_err(&name, e))?;
                    self.set_meta_at(&parent, base, &header, &name)?;
                }
                other => {
                    return Err(refused(
                        &name,
                        format!("entry type {other:?} is not supported"),
                    ));
                }
            }
            created.insert(norm);
            stats.entries += 1;
        }
        if let Some(tar) = whole {
            check_end(&mut last_end, tar)?;
        }
        // Directory modes and times last, so read-only directories can be filled.
        for (path, header) in dir_meta.iter().rev() {
            if let Ok(fd) = rustix::fs::openat2(
                &self.root,
                path.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
                resolve(),
            ) {
                set_meta(&self.opts, fd.as_fd(), &Meta::of(header, true), &[], path)?;
            }
        }
        Ok(stats)
    }

    /// The archive's owner and time on an entry that is not opened
    /// (symlink, node), set on the entry itself, never a link's target.
    fn set_meta_at(
        &self,
        parent: &OwnedFd,
        base: &str,
        header: &tar::Header,
        name: &str,
    ) -> Result<(), UnpackError> {
        if self.opts.preserve_ownership {
            rustix::fs::chownat(
                parent,
                base,
                Some(uid(header)),
                Some(gid(header)),
                AtFlags::SYMLINK_NOFOLLOW,
            )
            .map_err(|e| io_err(name, e))?;
        }
        let _ = rustix::fs::utimensat(
            parent,
            base,
            &times(mtime(header)),
            AtFlags::SYMLINK_NOFOLLOW,
        );
        Ok(())
    }

    /// Removes `name` in `dir` (recursively for directories); returns how
    /// many paths were removed.
    fn remove_at(&mut self, dir: &OwnedFd, name: &str, entry: &str) -> Result<u64, UnpackError> {
        self.parent_cache = None;
        let st = match rustix::fs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW) {
            Ok(s) => s,
            Err(Errno::NOENT) => return Ok(0),
            Err(e) => return Err(io_err(entry, e)),
        };
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            let sub = rustix::fs::openat(
                dir,
                name,
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )
            .map_err(|e| io_err(entry, e))?;
            let n = remove_children(&sub, &|_| true).map_err(|e| io_err(entry, e))?;
            rustix::fs::unlinkat(dir, name, AtFlags::REMOVEDIR).map_err(|e| io_err(entry, e))?;
            Ok(n + 1)
        } else {
            rustix::fs::unlinkat(dir, name, AtFlags::empty()).map_err(|e| io_err(entry, e))?;
            Ok(1)
        }
    }

    /// Opaque directory: removes what lower layers put in `dir`, keeping
    /// what this layer already created there.
    fn clear_dir(
        &mut self,
        parent: &OwnedFd,
        dir: &str,
        created: &HashSet<String>,
        entry: &str,
    ) -> Result<u64, UnpackError> {
        self.parent_cache = None;
        let fd = rustix::fs::openat(
            parent,
            ".",
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io_err(entry, e))?;
        remove_lower(&fd, dir, created).map_err(|e| io_err(entry, e))
    }
}

/// Opaque-directory semantics below `dir` (at `path`): removes everything
/// lower layers left, descending into directories this layer created so
/// their lower-layer contents go too.
fn remove_lower(dir: &OwnedFd, path: &str, created: &HashSet<String>) -> Result<u64, Errno> {
    let child_path = |child: &str| {
        if path.is_empty() {
            child.to_string()
        } else {
            format!("{path}/{child}")
        }
    };
    let mut removed = remove_children(dir, &|child| !created.contains(&child_path(child)))?;
    let mut kept_dirs = Vec::new();
    for e in Dir::read_from(dir)? {
        let e = e?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n == "." || n == ".." {
            continue;
        }
        let st = rustix::fs::statat(dir, n.as_str(), AtFlags::SYMLINK_NOFOLLOW)?;
        if FileType::from_raw_mode(st.st_mode) == FileType::Directory {
            kept_dirs.push(n);
        }
    }
    for n in kept_dirs {
        let sub = rustix::fs::openat(
            dir,
            n.as_str(),
            OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )?;
        removed += remove_lower(&sub, &child_path(&n), created)?;
    }
    Ok(removed)
}

/// Removes the children of `dir` for which `select` is true, recursively,
/// never following symlinks.
fn remove_children(dir: &OwnedFd, select: &dyn Fn(&str) -> bool) -> Result<u64, Errno> {
    let mut names = Vec::new();
    for e in Dir::read_from(dir)? {
        let e = e?;
        let n = e.file_name().to_string_lossy().into_owned();
        if n != "." && n != ".." && select(&n) {
            names.push((n, e.file_type()));
        }
    }
    let mut count = 0;
    for (n, ft) in names {
        let is_dir = match ft {
            FileType::Unknown => rustix::fs::statat(dir, n.as_str(), AtFlags::SYMLINK_NOFOLLOW)
                .map(|s| FileType::from_raw_mode(s.st_mode) == FileType::Directory)?,
            ft => ft == FileType::Directory,
        };
        if is_dir {
            let sub = rustix::fs::openat(
                dir,
                n.as_str(),
                OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                Mode::empty(),
            )?;
            count += remove_children(&sub, &|_| true)?;
            rustix::fs::unlinkat(dir, n.as_str(), AtFlags::REMOVEDIR)?;
        } else {
            rustix::fs::unlinkat(dir, n.as_str(), AtFlags::empty())?;
        }
        count += 1;
    }
    Ok(count)
}

/// What a regular file gets after its data.
struct Meta {
    uid: rustix::fs::Uid,
    gid: rustix::fs::Gid,
    mode: u32,
    mtime: i64,
    /// The mode still has to be set (it was not created with it).
    chmod: bool,
}

impl Meta {
    fn of(h: &tar::Header, chmod: bool) -> Self {
        Self {
            uid: uid(h),
            gid: gid(h),
            mode: mode(h),
            mtime: mtime(h),
            chmod,
        }
    }
}

/// Ownership, xattrs, mode and times, in that order (chown clears set-id
/// bits, so the mode comes after it).
fn set_meta(
    opts: &UnpackOptions,
    fd: std::os::fd::BorrowedFd<'_>,
    meta: &Meta,
    xattrs: &[(String, Vec<u8>)],
    name: &str,
) -> Result<(), UnpackError> {
    if opts.preserve_ownership {
        rustix::fs::fchown(fd, Some(meta.uid), Some(meta.gid)).map_err(|e| io_err(name, e))?;
    }
    for (k, v) in xattrs {
        set_xattr(fd, k, v);
    }
    // chown of a file with set-id bits clears them: the mode again.
    if meta.chmod || (opts.preserve_ownership && meta.mode & 0o6000 != 0) {
        rustix::fs::fchmod(fd, Mode::from_bits_truncate(meta.mode)).map_err(|e| io_err(name, e))?;
    }
    let _ = rustix::fs::futimens(fd, &times(meta.mtime));
    Ok(())
}

/// The previous entry of an in-memory archive (name, end of its padded
/// data) must end within it.
fn check_end(last: &mut Option<(String, Option<u64>)>, tar: &[u8]) -> Result<(), UnpackError> {
    if let Some((name, end)) = last.take()
        && end.is_none_or(|end| end > tar.len() as u64)
    {
        return Err(UnpackError::Malformed(format!(
            "{name}: the archive ends inside this entry"
        )));
    }
    Ok(())
}

/// The process's umask (from /proc, which reads it without changing it).
fn current_umask() -> Option<u32> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with("Umask:"))?;
    u32::from_str_radix(line.split_whitespace().nth(1)?, 8).ok()
}

/// Copies file data with a large reusable buffer (few write calls).
fn copy_data(
    from: &mut impl Read,
    to: &mut std::fs::File,
    buf: &mut Vec<u8>,
) -> std::io::Result<u64> {
    use std::io::Write;
    buf.resize(256 << 10, 0);
    let mut total = 0;
    loop {
        let n = match from.read(buf) {
            Ok(0) => return Ok(total),
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        to.write_all(&buf[..n])?;
        total += n as u64;
    }
}

fn io_err(path: &str, e: Errno) -> UnpackError {
    UnpackError::Io {
        path: path.to_string(),
        source: e.into(),
    }
}

fn mode(h: &tar::Header) -> u32 {
    h.mode().unwrap_or(0o644) & 0o7777
}

fn mtime(h: &tar::Header) -> i64 {
    h.mtime().unwrap_or(0) as i64
}

/// Access and modification both at `mtime` (seconds).
fn times(mtime: i64) -> Timestamps {
    let t = rustix::fs::Timespec {
        tv_sec: mtime,
        tv_nsec: 0,
    };
    Timestamps {
        last_access: t,
        last_modification: t,
    }
}

fn uid(h: &tar::Header) -> rustix::fs::Uid {
    rustix::fs::Uid::from_raw(h.uid().unwrap_or(0) as u32)
}

fn gid(h: &tar::Header) -> rustix::fs::Gid {
    rustix::fs::Gid::from_raw(h.gid().unwrap_or(0) as u32)
}

/// Extended attributes from PAX `SCHILY.xattr.*`; only the namespaces a
/// container image legitimately carries, failures ignored (e.g. tmpfs
/// without user xattrs).
fn set_xattr(fd: std::os::fd::BorrowedFd<'_>, name: &str, value: &[u8]) {
    if name.starts_with("user.") || name == "security.capability" {
        let _ = rustix::fs::fsetxattr(fd, name, value, rustix::fs::XattrFlags::empty());
    }
}

fn read_header_data<R: Read>(
    entry: &mut tar::Entry<'_, R>,
    size: u64,
    name: &str,
) -> Result<Vec<u8>, UnpackError> {
    if size > MAX_HEADER_BYTES {
        return Err(refused(
            name,
            format!("{size}-byte extended header (limit {MAX_HEADER_BYTES})"),
        ));
    }
    let mut data = Vec::with_capacity(size as usize);
    entry
        .take(size)
        .read_to_end(&mut data)
        .map_err(|e| UnpackError::Malformed(e.to_string()))?;
    Ok(data)
}

/// PAX records: `"<len> <key>=<value>\n"`.
fn parse_pax(mut data: &[u8], pending: &mut Pending, name: &str) -> Result<(), UnpackError> {
    let bad = || UnpackError::Malformed(format!("{name}: malformed PAX record"));
    while !data.is_empty() {
        let sp = data.iter().position(|b| *b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&data[..sp])
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(bad)?;
        if len <= sp + 1 || len > data.len() || data[len - 1] != b'\n' {
            return Err(bad());
        }
        let rec = &data[sp + 1..len - 1];
        let eq = rec.iter().position(|b| *b == b'=').ok_or_else(bad)?;
        let key = String::from_utf8_lossy(&rec[..eq]);
        let value = &rec[eq + 1..];
        match key.as_ref() {
            "path" => pending.name = Some(String::from_utf8_lossy(value).into_owned()),
            "linkpath" => pending.link = Some(String::from_utf8_lossy(value).into_owned()),
            "size" => {
                pending.pax_size = Some(
                    std::str::from_utf8(value)
                        .ok()
                        .and_then(|s| s.parse().ok())
                        .ok_or_else(bad)?,
                )
            }
            "uid" | "gid" => {
                let id: u64 = std::str::from_utf8(value)
                    .ok()
                    .and_then(|s| s.parse().ok())
                    .filter(|id| *id <= u64::from(u32::MAX))
                    .ok_or_else(bad)?;
                if key.as_ref() == "uid" {
                    pending.uid = Some(id);
                } else {
                    pending.gid = Some(id);
                }
            }
            k if k.starts_with("SCHILY.xattr.") => {
                pending.xattr_bytes += (k.len() + value.len()) as u64;
                if pending.xattr_bytes > MAX_HEADER_BYTES {
                    return Err(refused(
                        name,
                        "extended attributes over 1 MiB for one entry",
                    ));
                }
                pending
                    .xattrs
                    .push((k["SCHILY.xattr.".len()..].to_string(), value.to_vec()));
            }
            _ => {}
        }
        data = &data[len..];
    }
    Ok(())
}

#[cfg(test)]
#[path = "unpack_tests.rs"]
mod tests;
