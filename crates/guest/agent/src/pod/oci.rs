//! Container operations through youki's `libcontainer`, run in a
//! short-lived single-threaded helper process. libcontainer clones the
//! calling process to build a container, which is not sound in the
//! multi-threaded PID 1; so PID 1 runs `/proc/self/exe __oci-helper` for
//! each operation (create, exec, delete; start clones nothing and runs in
//! PID 1, see [`start`]) and reads back one JSON reply. The helper's standard
//! streams are the new process's stdio. Processes it creates outlive it
//! and are reparented to PID 1, whose reaper collects them.

use serde::{Deserialize, Serialize};
use std::os::fd::AsFd;
use std::path::{Path, PathBuf};

/// First argument that makes the guest binary act as the helper.
pub const HELPER_ARG: &str = "__oci-helper";

/// One operation on one container.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "op")]
pub enum Op {
    /// Creates the container from `bundle/config.json`; its init waits
    /// for `Start`.
    Create { bundle: PathBuf },
    /// Runs the process in `process` (an OCI `process` JSON) inside the
    /// running container.
    Exec { process: PathBuf },
    /// Kills what is left, removes the cgroup and the state.
    Delete,
}

/// What PID 1 asks of the helper.
#[derive(Debug, Serialize, Deserialize)]
pub struct Request {
    /// libcontainer's state root.
    pub root: PathBuf,
    /// Container id.
    pub id: String,
    /// The operation.
    #[serde(flatten)]
    pub op: Op,
    /// Where the new process's terminal master is sent (Create and Exec
    /// of a process with a terminal).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub console_socket: Option<PathBuf>,
}

/// The helper's answer.
#[derive(Debug, Default, Serialize, Deserialize)]
pub struct Reply {
    /// The new process (Create, Exec), as seen from the guest.
    pub pid: Option<i32>,
    /// Why the operation failed.
    pub error: Option<String>,
}

/// The helper's `main`: `__oci-helper <request JSON> <reply file>`.
pub fn helper_main(args: &[String]) -> std::process::ExitCode {
    let (Some(req), Some(reply_path)) = (args.get(2), args.get(3)) else {
        eprintln!("usage: {HELPER_ARG} <request JSON> <reply file>");
        return std::process::ExitCode::from(2);
    };
    // The workload must not inherit the Rust runtime's ignored SIGPIPE.
    // SAFETY: resetting a disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    let reply = match serde_json::from_str::<Request>(req) {
        Ok(r) => match run(&r) {
            Ok(pid) => Reply { pid, error: None },
            Err(e) => Reply {
                pid: None,
                error: Some(e),
            },
        },
        Err(e) => Reply {
            pid: None,
            error: Some(format!("bad helper request: {e}")),
        },
    };
    let text = serde_json::to_vec(&reply).unwrap_or_default();
    match std::fs::write(reply_path, text) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(_) => std::process::ExitCode::FAILURE,
    }
}

fn stdio() -> Result<[std::os::fd::OwnedFd; 3], String> {
    let dup = |f: std::os::fd::BorrowedFd<'_>| {
        f.try_clone_to_owned()
            .map_err(|e| format!("stdio of the helper: {e}"))
    };
    Ok([
        dup(std::io::stdin().as_fd())?,
        dup(std::io::stdout().as_fd())?,
        dup(std::io::stderr().as_fd())?,
    ])
}

fn builder(req: &Request) -> Result<libcontainer::container::builder::ContainerBuilder, String> {
    use libcontainer::container::builder::ContainerBuilder;
    use libcontainer::syscall::syscall::SyscallType;
    let [i, o, e] = stdio()?;
    Ok(
        ContainerBuilder::new(req.id.clone(), SyscallType::default())
            .with_root_path(&req.root)
            .map_err(|e| e.to_string())?
            .with_stdin(i)
            .with_stdout(o)
            .with_stderr(e)
            .with_console_socket(req.console_socket.as_ref()),
    )
}

fn load(root: &Path, id: &str) -> Result<libcontainer::container::Container, String> {
    libcontainer::container::Container::load(root.join(id))
        .map_err(|e| format!("container {id}: {e}"))
}

/// Lets the created init of container `id` run its workload, from PID 1
/// itself (no helper process): nothing here clones, and specs with hooks
/// are refused before a container is created, so no poststart hook runs.
/// libcontainer's own `start` is not used: it reaches the init's socket by
/// changing the working directory, which belongs to the whole process and
/// would move PID 1's other threads (and every helper they start) with it.
/// The socket is reached through the container directory's descriptor
/// instead (`/proc/self/fd/N/notify.sock`: short, whatever the id).
pub fn start(root: &Path, id: &str) -> Result<(), String> {
    use libcontainer::container::ContainerStatus;
    use std::os::fd::AsRawFd;
    use std::os::unix::fs::OpenOptionsExt;
    let dir = root.join(id);
    let err = |e: &dyn std::fmt::Display| format!("starting container {id}: {e}");
    // Loading refreshes the status from /proc.
    let mut c = load(root, id)?;
    if !c.can_start() {
        return Err(err(&format!("it is {:?}, not created", c.status())));
    }
    // The directory itself, never a symlink or a FIFO put in its place.
    let d = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_PATH)
        .open(&dir)
        .map_err(|e| err(&e))?;
    let sock = format!(
        "/proc/self/fd/{}/{}",
        d.as_raw_fd(),
        libcontainer::notify_socket::NOTIFY_FILE
    );
    tell_init(&sock).map_err(|e| err(&format!("telling its init: {e}")))?;
    drop(d);
    c.set_status(ContainerStatus::Running)
        .save()
        .map_err(|e| err(&e))?;
    Ok(())
}

/// Sends libcontainer's start message to the init listening at `path`
/// (it reads to the end). Non-blocking, so a listener that accepts
/// nothing (its queue full) is an error, never a PID 1 thread held.
fn tell_init(path: &str) -> std::io::Result<()> {
    use nix::sys::socket::{AddressFamily, SockFlag, SockType, UnixAddr, connect, socket};
    use std::io::Write;
    use std::os::fd::AsRawFd;
    let fd = socket(
        AddressFamily::Unix,
        SockType::Stream,
        SockFlag::SOCK_CLOEXEC | SockFlag::SOCK_NONBLOCK,
        None,
    )?;
    connect(fd.as_raw_fd(), &UnixAddr::new(path)?)?;
    // 15 bytes into a new connection's empty buffer: never would-block.
    std::os::unix::net::UnixStream::from(fd).write_all(b"start container")
}

fn run(req: &Request) -> Result<Option<i32>, String> {
    match &req.op {
        Op::Create { bundle } => {
            let c = builder(req)?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| format!("creating container {}: {e}", req.id))?;
            // The init waits for Start: its device rules hold before the
            // workload runs, or it never runs.
            if let Err(e) = device_rules(bundle) {
                let _ = load(&req.root, &req.id)
                    .and_then(|mut c| c.delete(true).map_err(|e| e.to_string()));
                return Err(format!("container {}: {e}", req.id));
            }
            Ok(c.pid().map(|p| p.as_raw()))
        }
        Op::Exec { process } => {
            let pid = builder(req)?
                .as_tenant()
                .with_detach(true)
                .with_process(Some(process))
                .build()
                .map_err(|e| format!("exec in container {}: {e}", req.id))?;
            Ok(Some(pid.as_raw()))
        }
        Op::Delete => {
            load(&req.root, &req.id)?
                .delete(true)
                .map_err(|e| format!("deleting container {}: {e}", req.id))?;
            Ok(None)
        }
    }
}

/// Attaches the device rules of the bundle's spec to its cgroup.
fn device_rules(bundle: &Path) -> Result<(), String> {
    use libcontainer::oci_spec::runtime::Spec;
    let spec = Spec::load(bundle.join("config.json")).map_err(|e| e.to_string())?;
    let rules = super::devcgroup::rules_of(&spec).map_err(|e| e.to_string())?;
    let path = spec
        .linux()
        .as_ref()
        .and_then(|l| l.cgroups_path().clone())
        .ok_or("the spec names no cgroup")?;
    let cgroup = Path::new("/sys/fs/cgroup").join(path.strip_prefix("/").unwrap_or(&path));
    super::devcgroup::attach(&cgroup, &rules).map_err(|e| e.to_string())
}

/// The request as the helper's command line.
pub fn command(exe: &Path, req: &Request, reply: &Path) -> std::process::Command {
    let mut cmd = std::process::Command::new(exe);
    cmd.arg(HELPER_ARG)
        .arg(serde_json::to_string(req).unwrap_or_default())
        .arg(reply);
    cmd
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_round_trip_on_the_command_line() {
        let req = Request {
            root: "/run/cocoon/oci".into(),
            id: "c1".into(),
            op: Op::Exec {
                process: "/run/x/p.json".into(),
            },
            console_socket: Some("/run/cocoon/oci/.console-1".into()),
        };
        let cmd = command(Path::new("/init"), &req, Path::new("/tmp/r"));
        let args: Vec<String> = cmd
            .get_args()
            .map(|a| a.to_string_lossy().into_owned())
            .collect();
        assert_eq!(args[0], HELPER_ARG);
        let back: Request = serde_json::from_str(&args[1]).unwrap();
        assert!(
            matches!(back.op, Op::Exec { ref process } if process == Path::new("/run/x/p.json"))
        );
        assert_eq!(back.id, "c1");
        assert_eq!(
            back.console_socket.as_deref(),
            Some(Path::new("/run/cocoon/oci/.console-1"))
        );
        // Without a terminal the field is left out and reads back as none.
        let plain: Request =
            serde_json::from_str(r#"{"root":"/r","id":"c","op":"delete"}"#).unwrap();
        assert!(plain.console_socket.is_none());
        assert!(
            serde_json::from_str::<Request>(r#"{"root":"/r","id":"c","op":"format"}"#).is_err()
        );
    }
}
