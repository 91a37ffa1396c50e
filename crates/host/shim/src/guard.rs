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
//! end of file means the shim is gone. The shim writes the pod's state
//! directory and sandbox id into the pipe once it knows them.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// How long the guard waits for the dead shim's socket to stop answering
/// and for the shim to have exited, before it cleans up anyway.
const SETTLE: Duration = Duration::from_secs(3);

/// The shim's end of the guard's pipe.
pub struct Guard {
    pipe: Mutex<std::process::ChildStdin>,
}

impl Guard {
    /// Starts the guard for the shim serving `socket` (a path or a
    /// `unix://` address).
    pub fn spawn(socket: &str) -> std::io::Result<Self> {
        let mut child = Command::new(std::env::current_exe()?)
            .arg(crate::GUARD_ARG)
            .arg(socket)
            .stdin(Stdio::piped())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()?;
        let pipe = child.stdin.take().ok_or_else(|| {
            std::io::Error::other("the guard's standard input was not set up as a pipe")
        })?;
        // The guard outlives this process on purpose; its exit status is
        // not wanted (once this process is gone it is reparented).
        drop(child);
        Ok(Self {
            pipe: Mutex::new(pipe),
        })
    }

    /// Tells the guard where the pod's VM keeps its state.
    pub fn pod(&self, state_dir: &Path, sandbox_id: &str) {
        let mut record = Vec::new();
        record.extend_from_slice(state_dir.as_os_str().as_encoded_bytes());
        record.push(0);
        record.extend_from_slice(sandbox_id.as_bytes());
        record.push(0);
        let mut pipe = self.pipe.lock().unwrap_or_else(|e| e.into_inner());
        if let Err(e) = pipe.write_all(&record) {
            tracing::warn!(error = %e, "telling the guard about the pod");
        }
    }
}

/// The last pod record in what the shim wrote: `state dir NUL id NUL`.
fn last_pod(input: &[u8]) -> Option<(PathBuf, String)> {
    let fields: Vec<&[u8]> = input.split(|b| *b == 0).collect();
    // A complete record ends in NUL, leaving an empty last field.
    let complete = fields.len().checked_sub(1)? / 2 * 2;
    if complete == 0 {
        return None;
    }
    let dir = fields[complete - 2];
    let id = std::str::from_utf8(fields[complete - 1]).ok()?;
    if dir.is_empty() || id.is_empty() || id.contains('/') || id.starts_with('.') {
        return None;
    }
    let dir = PathBuf::from(
        <std::ffi::OsString as std::os::unix::ffi::OsStringExt>::from_vec(dir.to_vec()),
    );
    Some((dir, id.to_string()))
}

/// Whether process `pid` has exited (gone, or a zombie).
fn exited(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .is_none_or(|state| matches!(state, "Z" | "X")),
        Err(_) => true,
    }
}

/// The guard process: waits for the shim to go, then cleans up after it.
pub fn run(socket: &str) -> ! {
    if socket.is_empty() {
        eprintln!("{}: the guard needs the shim's socket", crate::RUNTIME);
        std::process::exit(2);
    }
    let shim = std::os::unix::process::parent_id();
    let mut input = Vec::new();
    // Returns at end of file: the shim has closed its end, by exiting.
    let _ = std::io::stdin().lock().read_to_end(&mut input);
    let deadline = Instant::now() + SETTLE;
    while !exited(shim) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let pod = last_pod(&input);
    clean_up(
        Some(socket),
        pod.as_ref().map(|(dir, id)| (dir.as_path(), id.as_str())),
        deadline,
    );
    std::process::exit(0)
}

/// Whether a server answers at `address` (`unix:///path` or a path).
pub fn served(address: &str) -> bool {
    std::os::unix::net::UnixStream::connect(socket_path(address)).is_ok()
}

fn socket_path(address: &str) -> &str {
    address.strip_prefix("unix://").unwrap_or(address)
}

/// Removes what a dead shim leaves: its socket at `socket` (once nothing
/// answers there, waiting until `settle` at most), and, for the pod whose
/// VM kept its state under `state` (state dir, sandbox id), the state of
/// every VM whose driver died and the pod's console log.
pub fn clean_up(socket: Option<&str>, state: Option<(&Path, &str)>, settle: Instant) {
    if let Some(socket) = socket {
        while served(socket) && Instant::now() < settle {
            std::thread::sleep(Duration::from_millis(20));
        }
        if !served(socket) {
            let _ = std::fs::remove_file(socket_path(socket));
        }
    }
    if let Some((dir, id)) = state {
        cocoon_hypervisor::qemu::gc_stale(dir);
        let _ = std::fs::remove_file(dir.join(format!("{id}.console.log")));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_last_complete_pod_record_is_taken() {
        assert_eq!(last_pod(b""), None);
        assert_eq!(last_pod(b"/state\0"), None);
        assert_eq!(
            last_pod(b"/state\0pod1\0"),
            Some(("/state".into(), "pod1".into()))
        );
        assert_eq!(
            last_pod(b"/a\0one\0/b\0two\0/c\0thr"),
            Some(("/b".into(), "two".into()))
        );
        // A sandbox id is a file name, never a path.
        assert_eq!(last_pod(b"/state\0../x\0"), None);
        assert_eq!(last_pod(b"/state\0.hidden\0"), None);
        assert_eq!(last_pod(b"\0pod\0"), None);
    }

    #[test]
    fn a_process_that_ended_counts_as_exited() {
        assert!(!exited(std::process::id()));
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Unreaped: a zombie.
        while !exited(pid) {
            std::thread::sleep(Duration::from_millis(5));
        }
        child.wait().unwrap();
        assert!(exited(pid));
    }

    #[test]
    fn a_socket_is_removed_only_once_nothing_answers_on_it() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("shim.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let address = format!("unix://{}", path.display());
        clean_up(Some(&address), None, Instant::now());
        assert!(path.exists(), "a served socket must stay");
        drop(listener);
        clean_up(Some(&address), None, Instant::now());
        assert!(!path.exists(), "a dead socket must go");
    }

    #[test]
    fn a_dead_pods_console_log_and_vm_state_go() {
        let dir = tempfile::tempdir().unwrap();
        let vm = dir.path().join("pod1");
        std::fs::create_dir(&vm).unwrap();
        // Owned by a process that has exited.
        let mut child = Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        std::fs::write(vm.join("owner"), format!("{pid} 1")).unwrap();
        std::fs::write(dir.path().join("pod1.console.log"), "boot").unwrap();
        std::fs::write(dir.path().join("pod2.console.log"), "boot").unwrap();
        clean_up(None, Some((dir.path(), "pod1")), Instant::now());
        assert!(!vm.exists());
        assert!(!dir.path().join("pod1.console.log").exists());
        assert!(dir.path().join("pod2.console.log").exists());
    }
}
