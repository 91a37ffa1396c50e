//! The shim's guard: a small child process that outlives a shim killed
//! outright (SIGKILL, the OOM killer) and removes what the shim would
//! have removed on its way out: its socket, its VM's state directory and
//! the pod's console log.
//!
//! containerd runs the shim's `delete` after a shim dies, in the dead
//! task's bundle, but CRI deletes that bundle at the same time (it sees
//! the task's exit too), and containerd 1.6 to 2.x start `delete` in the
//! bundle directory: when the bundle goes first, `delete` never runs, or
//! runs without the files it reads. The guard does not depend on it.
//!
//! The guard holds the read end of a pipe whose write end only the shim
//! holds (close-on-exec, so the VM and its helpers do not keep it open):
//! end of file means the shim is gone. Through the pipe the shim tells it
//! which socket file is its own (device and inode, so a new shim's socket
//! at the same path is never taken for it), the pod's state directory and
//! sandbox id once it knows them, and, on a clean exit, that nothing is
//! left to do.

use cocoon_hypervisor::qemu::{owner_alive, running};
use std::io::{Read, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the guard waits for the dead shim to have exited and its
/// socket to stop answering, before it cleans up anyway.
const SETTLE: Duration = Duration::from_secs(3);

/// The shim's end of the guard's pipe.
pub struct Guard {
    pipe: Mutex<std::process::ChildStdin>,
}

impl Guard {
    /// Starts the guard for the shim that is to serve `socket` (a path
    /// or a `unix://` address) for the containerd at `containerd` (shown
    /// in the guard's command line, so it can be told apart).
    pub fn spawn(socket: &str, containerd: &str) -> std::io::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .args([crate::GUARD_ARG, socket, containerd])
            .current_dir("/")
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pipe = child.stdin.take().ok_or_else(|| {
            std::io::Error::other("the guard's standard input was not set up as a pipe")
        })?;
        // Reaped here if it ends before the shim (it should not); the
        // shim reaps nothing itself.
        std::thread::Builder::new()
            .name("guard-reaper".into())
            .spawn(move || {
                let status = child.wait();
                tracing::warn!(?status, "the shim's guard ended before the shim");
            })?;
        Ok(Self {
            pipe: Mutex::new(pipe),
        })
    }

    fn send(&self, fields: &[&[u8]]) {
        let mut record = Vec::new();
        for f in fields {
            record.extend_from_slice(f);
            record.push(0);
        }
        let mut pipe = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = pipe.write_all(&record) {
            tracing::warn!(error = %e, "writing to the shim's guard");
        }
    }

    /// Tells the guard which file at its socket path is this shim's (its
    /// [`file_id`], once the server is bound).
    pub fn socket_bound(&self, (dev, ino): (u64, u64)) {
        self.send(&[b"socket", format!("{dev}:{ino}").as_bytes()]);
    }

    /// Tells the guard where the pod's VM keeps its state.
    pub fn pod(&self, state_dir: &Path, sandbox_id: &str) {
        self.send(&[
            b"pod",
            state_dir.as_os_str().as_encoded_bytes(),
            sandbox_id.as_bytes(),
        ]);
    }

    /// Tells the guard the shim cleaned up after itself.
    pub fn done(&self) {
        self.send(&[b"done"]);
    }
}

/// What the shim told its guard.
#[derive(Debug, Default, PartialEq)]
struct Told {
    /// Device and inode of the shim's socket file.
    socket: Option<(u64, u64)>,
    /// The pod's state directory and sandbox id.
    pod: Option<(PathBuf, String)>,
    done: bool,
}

/// Reads the shim's records (`name NUL field NUL ...`); an incomplete or
/// unknown record ends the reading.
fn parse(input: &[u8]) -> Told {
    let mut told = Told::default();
    let mut fields = input.split(|b| *b == 0);
    // The part after the last NUL is never a complete field.
    let complete = input.iter().filter(|b| **b == 0).count();
    let mut taken = 0;
    let mut next = |n: usize| -> Option<Vec<&[u8]>> {
        if taken + n > complete {
            return None;
        }
        taken += n;
        (0..n).map(|_| fields.next()).collect()
    };
    while let Some(name) = next(1) {
        match name[0] {
            b"socket" => {
                let Some(f) = next(1) else { break };
                let id = std::str::from_utf8(f[0]).ok().and_then(|s| {
                    let (dev, ino) = s.split_once(':')?;
                    Some((dev.parse().ok()?, ino.parse().ok()?))
                });
                told.socket = id;
            }
            b"pod" => {
                let Some(f) = next(2) else { break };
                let (dir, id) = (f[0], std::str::from_utf8(f[1]).unwrap_or_default());
                // A sandbox id is a file name, never a path.
                told.pod = (!dir.is_empty()
                    && !id.is_empty()
                    && !id.contains('/')
                    && !id.starts_with('.'))
                .then(|| {
                    let dir = <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(
                        dir.to_vec(),
                    );
                    (PathBuf::from(dir), id.to_string())
                });
            }
            b"done" => told.done = true,
            _ => break,
        }
    }
    told
}

/// The guard process: waits for the shim to go, then cleans up after it.
pub fn run(socket: &str) -> ! {
    if socket.is_empty() {
        eprintln!("{}: the guard needs the shim's socket", crate::RUNTIME);
        std::process::exit(2);
    }
    // Nothing but the pipe is the guard's to hold: not what containerd
    // handed the shim without close-on-exec.
    // SAFETY: closes descriptors of this process that nothing here uses.
    if unsafe { libc::close_range(3, u32::MAX, 0) } != 0 {
        // Kernels before 5.9: one by one, as listed before closing any.
        let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
            .map(|d| {
                d.flatten()
                    .filter_map(|e| e.file_name().to_str()?.parse().ok())
                    .filter(|fd| *fd >= 3)
                    .collect()
            })
            .unwrap_or_default();
        for fd in fds {
            // SAFETY: as above (the listing's own descriptor is already
            // closed and fails harmlessly).
            unsafe { libc::close(fd) };
        }
    }
    let shim = std::os::unix::process::parent_id();
    watch(std::io::stdin().lock(), shim, socket);
    std::process::exit(0)
}

/// Reads what the shim tells until it closes the pipe, waits for process
/// `shim` to have exited, and cleans up unless it said it had.
fn watch(mut pipe: impl Read, shim: u32, socket: &str) {
    let mut input = Vec::new();
    // Returns at end of file: the shim has closed its end, by exiting.
    let _ = pipe.read_to_end(&mut input);
    let told = parse(&input);
    if told.done {
        return;
    }
    let deadline = Instant::now() + SETTLE;
    while running(shim) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    if let Some(own) = told.socket {
        // The file the dead shim bound, and no other: a new shim at the
        // same path made a new one.
        let same = |p: &str| file_id(p) == Some(own);
        if same(socket_path(socket)) {
            while served(socket) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            remove_unserved(socket, same);
        }
    }
    if let Some((dir, id)) = &told.pod {
        let vm = dir.join(id);
        match owner_alive(&vm) {
            // A new shim for the same id (ids are the user's with `ctr`)
            // owns what is there now.
            Some(true) => cocoon_hypervisor::qemu::gc_stale(dir),
            // A VM directory the dead shim made before its owner file
            // was written is not taken for stale by the sweep; this one
            // is known.
            None if vm.is_dir() => {
                let _ = std::fs::remove_dir_all(&vm);
                remove_pod_state(dir, id);
            }
            _ => remove_pod_state(dir, id),
        }
    }
}

/// Whether a server may listen at `address` (`unix:///path` or a
/// path): false only when connecting is refused or nothing is there.
/// The connection is tried without blocking, so a server whose queue of
/// connections is full still counts and the question never hangs; when
/// it cannot be asked (no descriptors left), a server is assumed.
pub fn served(address: &str) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let path = Path::new(socket_path(address)).as_os_str().as_bytes();
    connect_nonblocking(path).is_none_or(|(_, r)| !matches!(r, libc::ECONNREFUSED | libc::ENOENT))
}

/// A new socket connecting to the Unix socket at `path` without
/// blocking, and what `connect` gave (0, or its errno); `None` if the
/// path does not fit or no socket could be made.
fn connect_nonblocking(path: &[u8]) -> Option<(std::os::fd::OwnedFd, i32)> {
    use std::os::fd::FromRawFd;
    // SAFETY: a zeroed sockaddr_un is valid; the path is copied in below
    // with room left for its terminating NUL.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    if path.is_empty() || path.len() >= addr.sun_path.len() {
        return None;
    }
    addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
    for (d, s) in addr.sun_path.iter_mut().zip(path) {
        *d = *s as libc::c_char;
    }
    // SAFETY: a new socket, owned by the OwnedFd below.
    let fd = unsafe {
        libc::socket(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            0,
        )
    };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` was just opened and is owned by nothing else.
    let fd = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
    // SAFETY: `addr` is a valid sockaddr_un of the length given.
    let r = unsafe {
        libc::connect(
            std::os::fd::AsRawFd::as_raw_fd(&fd),
            (&raw const addr).cast(),
            std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t,
        )
    };
    let r = if r == 0 {
        0
    } else {
        std::io::Error::last_os_error().raw_os_error().unwrap_or(-1)
    };
    Some((fd, r))
}

/// The file of a socket address (`unix:///path` or a path).
pub fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Device and inode of the file at `path` itself (not a link's target):
/// which file it is, so a new one made at the same path is told apart.
pub fn file_id(path: &str) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// Runs `f` holding an exclusive lock on the directory of the socket
/// file `path`: a shim binding a socket there, and whoever removes a dead
/// shim's socket file after checking it, take it, so a check and the
/// removal that follows it cannot straddle another shim's bind. Without
/// the directory (or a lock on it), `f` runs unlocked.
pub fn with_socket_lock<T>(path: &str, f: impl FnOnce() -> T) -> T {
    let dir = Path::new(path)
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .and_then(|d| std::fs::File::open(d).ok());
    // flock(2): the lock goes when the directory is closed, below.
    let locked = dir.as_ref().is_some_and(|d| d.lock().is_ok());
    if !locked {
        tracing::debug!(
            path,
            "removing or binding a shim socket without the directory lock"
        );
    }
    let r = f();
    drop(dir);
    r
}

/// Removes the socket file at `socket` (an address or a path) if `ours`
/// says it is the one meant and nothing answers on it, holding the
/// socket directory's lock.
fn remove_unserved(socket: &str, ours: impl Fn(&str) -> bool) {
    let path = socket_path(socket);
    with_socket_lock(path, || {
        if ours(path) && !served(socket) {
            let _ = std::fs::remove_file(path);
        }
    });
}

/// Removes a dead shim's socket at `socket`, unless a server answers on
/// it.
pub fn remove_dead_socket(socket: &str) {
    remove_unserved(socket, |_| true);
}

/// Removes, under the state directory `dir`, the state of every VM whose
/// driver died and pod `id`'s console log.
pub fn remove_pod_state(dir: &Path, id: &str) {
    cocoon_hypervisor::qemu::gc_stale(dir);
    let _ = std::fs::remove_file(dir.join(format!("{id}.console.log")));
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::net::UnixListener;

    fn pod(dir: &str, id: &str) -> Option<(PathBuf, String)> {
        Some((dir.into(), id.into()))
    }

    #[test]
    fn the_shims_records_are_read_up_to_the_first_incomplete_one() {
        assert_eq!(parse(b""), Told::default());
        assert_eq!(parse(b"pod\0/state\0"), Told::default());
        let t = parse(b"socket\x0064:17\0pod\0/state\0pod1\0");
        assert_eq!(t.socket, Some((64, 17)));
        assert_eq!(t.pod, pod("/state", "pod1"));
        assert!(!t.done);
        assert_eq!(
            parse(b"pod\0/a\0one\0pod\0/b\0two\0pod\0/c\0thr").pod,
            pod("/b", "two")
        );
        assert!(parse(b"pod\0/a\0one\0done\0").done);
        assert!(!parse(b"pod\0/a\0one\0done").done);
        // A sandbox id is a file name, never a path.
        assert_eq!(parse(b"pod\0/state\0../x\0").pod, None);
        assert_eq!(parse(b"pod\0/state\0.hidden\0").pod, None);
        assert_eq!(parse(b"pod\0\0pod\0").pod, None);
        assert_eq!(parse(b"socket\0not-a-number\0").socket, None);
        // Unknown records end the reading.
        assert_eq!(parse(b"what\0pod\0/a\0one\0"), Told::default());
    }

    #[test]
    fn a_process_that_ended_counts_as_exited() {
        assert!(running(std::process::id()));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Unreaped: a zombie.
        while running(pid) {
            std::thread::sleep(Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert!(!running(pid));
    }

    /// A process that has exited (and been reaped).
    fn dead_pid() -> u32 {
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        pid
    }

    /// The owner tag of a live process: this one (pid and start time).
    fn this_process() -> String {
        let stat = std::fs::read_to_string("/proc/self/stat").unwrap();
        let start = stat
            .rsplit_once(')')
            .unwrap()
            .1
            .split_whitespace()
            .nth(19)
            .unwrap();
        format!("{} {start}", std::process::id())
    }

    /// A state directory with pod `id`'s VM state (owned by `owner`, an
    /// owner tag) and console log.
    fn pod_state(dir: &Path, id: &str, owner: Option<String>) {
        let vm = dir.join(id);
        std::fs::create_dir(&vm).unwrap();
        if let Some(tag) = owner {
            std::fs::write(vm.join("owner"), tag).unwrap();
        }
        std::fs::write(dir.join(format!("{id}.console.log")), "boot").unwrap();
    }

    fn record(fields: &[&[u8]]) -> Vec<u8> {
        fields
            .iter()
            .flat_map(|f| f.iter().chain(b"\0"))
            .copied()
            .collect()
    }

    /// The record a shim sends its guard about pod `id` under `dir`.
    fn pod_record(dir: &Path, id: &str) -> Vec<u8> {
        record(&[b"pod", dir.to_str().unwrap().as_bytes(), id.as_bytes()])
    }

    /// A socket file at `dir/shim.sock` whose server is gone, the record
    /// a shim sends its guard about it, and its inode.
    fn dead_socket(dir: &Path) -> (PathBuf, Vec<u8>, u64) {
        let sock = dir.join("shim.sock");
        drop(UnixListener::bind(&sock).unwrap());
        let m = std::fs::metadata(&sock).unwrap();
        let told = record(&[b"socket", format!("{}:{}", m.dev(), m.ino()).as_bytes()]);
        (sock, told, m.ino())
    }

    #[test]
    fn after_a_killed_shim_its_socket_vm_state_and_console_log_go() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, mut input, _) = dead_socket(dir.path());
        let state = dir.path().join("state");
        std::fs::create_dir(&state).unwrap();
        let shim = dead_pid();
        pod_state(&state, "pod1", Some(format!("{shim} 1")));
        pod_state(&state, "other", Some(this_process()));
        input.extend(pod_record(&state, "pod1"));
        watch(&input[..], shim, &format!("unix://{}", sock.display()));
        assert!(!sock.exists(), "the dead shim's socket");
        assert!(!state.join("pod1").exists(), "the dead shim's VM state");
        assert!(!state.join("pod1.console.log").exists());
        // A live pod's are left alone.
        assert!(state.join("other").exists());
        assert!(state.join("other.console.log").exists());
    }

    #[test]
    fn a_vm_directory_without_its_owner_file_goes_with_its_shim() {
        let dir = tempfile::tempdir().unwrap();
        pod_state(dir.path(), "pod1", None);
        let input = pod_record(dir.path(), "pod1");
        watch(&input[..], dead_pid(), "/nonexistent/shim.sock");
        assert!(!dir.path().join("pod1").exists());
    }

    #[test]
    fn a_new_pod_with_the_same_id_keeps_its_console_log_and_state() {
        let dir = tempfile::tempdir().unwrap();
        // The id's state is a live process's now.
        pod_state(dir.path(), "pod1", Some(this_process()));
        let input = pod_record(dir.path(), "pod1");
        watch(&input[..], dead_pid(), "/nonexistent/shim.sock");
        assert!(dir.path().join("pod1").exists());
        assert!(dir.path().join("pod1.console.log").exists());
    }

    #[test]
    fn after_a_clean_exit_nothing_is_touched() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, mut input, _) = dead_socket(dir.path());
        pod_state(dir.path(), "pod1", Some(format!("{} 1", dead_pid())));
        input.extend(pod_record(dir.path(), "pod1"));
        input.extend(record(&[b"done"]));
        watch(&input[..], dead_pid(), sock.to_str().unwrap());
        assert!(sock.exists());
        assert!(dir.path().join("pod1.console.log").exists());
    }

    #[test]
    fn a_new_shims_socket_at_the_same_path_is_left_alone() {
        let dir = tempfile::tempdir().unwrap();
        let (sock, input, ino) = dead_socket(dir.path());
        // A new shim for the same id took the path over (and is gone
        // too: only the file's identity protects it). The old file is
        // kept elsewhere so its inode is not reused.
        std::fs::rename(&sock, dir.path().join("old.sock")).unwrap();
        drop(UnixListener::bind(&sock).unwrap());
        assert_ne!(std::fs::metadata(&sock).unwrap().ino(), ino);
        watch(&input[..], dead_pid(), sock.to_str().unwrap());
        assert!(sock.exists(), "another shim's socket must stay");
    }

    #[test]
    fn a_server_with_a_full_queue_is_still_served_and_the_question_returns() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.sock");
        // A listener that never accepts, its queue (one connection)
        // filled up.
        let listener = UnixListener::bind(&path).unwrap();
        // SAFETY: the listener's own descriptor; listen again with the
        // shortest queue.
        assert_eq!(
            unsafe { libc::listen(std::os::fd::AsRawFd::as_raw_fd(&listener), 0) },
            0
        );
        let mut queued = Vec::new();
        loop {
            use std::os::unix::ffi::OsStrExt;
            let (fd, r) = connect_nonblocking(path.as_os_str().as_bytes()).unwrap();
            if r != 0 {
                assert_eq!(r, libc::EAGAIN, "a full queue");
                break;
            }
            queued.push(fd);
            assert!(queued.len() < 16, "the queue never filled");
        }
        assert!(served(path.to_str().unwrap()));
        drop(listener);
        assert!(!served(path.to_str().unwrap()));
        assert!(!served(dir.path().join("none.sock").to_str().unwrap()));
        // A plain file is no server either.
        std::fs::write(dir.path().join("file"), "").unwrap();
        assert!(!served(dir.path().join("file").to_str().unwrap()));
    }

    #[test]
    fn socket_checks_and_binds_in_one_directory_take_turns() {
        use std::sync::atomic::{AtomicBool, Ordering};
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("a.sock");
        let path = path.to_str().unwrap().to_string();
        let inside = std::sync::Arc::new(AtomicBool::new(false));
        let (entered, wait_entered) = std::sync::mpsc::channel();
        let holder = {
            let (path, inside) = (path.clone(), inside.clone());
            std::thread::spawn(move || {
                with_socket_lock(&path, || {
                    inside.store(true, Ordering::SeqCst);
                    entered.send(()).unwrap();
                    std::thread::sleep(Duration::from_millis(200));
                    inside.store(false, Ordering::SeqCst);
                })
            })
        };
        wait_entered.recv().unwrap();
        // Another socket in the same directory: it waits its turn.
        let other = dir.path().join("b.sock");
        let overlapped =
            with_socket_lock(other.to_str().unwrap(), || inside.load(Ordering::SeqCst));
        holder.join().unwrap();
        assert!(!overlapped, "the lock was not held");
        // A path without a directory part runs unlocked.
        assert_eq!(with_socket_lock("bare.sock", || 7), 7);
    }

    #[test]
    fn a_served_socket_is_never_removed() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shim.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let address = format!("unix://{}", path.display());
        remove_dead_socket(&address);
        assert!(path.exists(), "a served socket must stay");
        drop(listener);
        remove_dead_socket(&address);
        assert!(!path.exists(), "a dead socket must go");
    }
}
