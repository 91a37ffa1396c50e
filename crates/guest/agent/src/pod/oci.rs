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

impl Op {
    /// The operation's name, as its request spells it.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Create { .. } => "create",
            Op::Exec { .. } => "exec",
            Op::Delete => "delete",
        }
    }
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
    /// When the helper's `main` began, on the guest's monotonic clock
    /// (ns): PID 1 tells the helper's start from its work with it.
    #[serde(default)]
    pub main_at_ns: u64,
    /// How long each step of the operation took (µs), in order.
    #[serde(default)]
    pub steps_us: Vec<(String, u64)>,
}

/// The guest's monotonic clock (ns), one clock for every process.
pub fn monotonic_ns() -> u64 {
    let mut t = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime fills the timespec it is given.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut t) };
    (t.tv_sec as u64).saturating_mul(1_000_000_000) + t.tv_nsec as u64
}

/// Steps of one helper operation, timed as they end.
struct Steps {
    last: std::time::Instant,
    done: Vec<(String, u64)>,
}

impl Steps {
    fn new() -> Self {
        Self {
            last: std::time::Instant::now(),
            done: Vec::new(),
        }
    }

    fn end(&mut self, what: &str) {
        let now = std::time::Instant::now();
        self.done
            .push((what.into(), (now - self.last).as_micros() as u64));
        self.last = now;
    }
}

/// The helper's `main`: `__oci-helper <request JSON> <reply file>`.
pub fn helper_main(args: &[String]) -> std::process::ExitCode {
    let (Some(req), Some(reply_path)) = (args.get(2), args.get(3)) else {
        eprintln!("usage: {HELPER_ARG} <request JSON> <reply file>");
        return std::process::ExitCode::from(2);
    };
    std::process::ExitCode::from(helper_run(req, reply_path) as u8)
}

/// One operation of a helper process (started by PID 1, or forked by
/// the zygote): runs `req` and writes the reply to `reply_path`; the
/// exit code (0 once the reply is written).
pub fn helper_run(req: &str, reply_path: &str) -> i32 {
    let main_at_ns = monotonic_ns();
    let mut steps = Steps::new();
    // The workload must not inherit the Rust runtime's ignored SIGPIPE.
    // SAFETY: resetting a disposition before any thread exists.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_DFL) };
    // Whatever layout PID 1 gave the helper itself, what the helper
    // creates (a container's init, exec'd processes) is laid out at random,
    // or nothing is created.
    let done = randomize_children()
        .map_err(|e| format!("runtime helper: {e}"))
        .and_then(|()| {
            serde_json::from_str::<Request>(req).map_err(|e| format!("bad helper request: {e}"))
        })
        .and_then(|r| run(&r, &mut steps));
    let (pid, error) = match done {
        Ok(pid) => (pid, None),
        Err(e) => (None, Some(e)),
    };
    let reply = Reply {
        pid,
        error,
        main_at_ns,
        steps_us: steps.done,
    };
    let text = serde_json::to_vec(&reply).unwrap_or_default();
    match std::fs::write(reply_path, text) {
        Ok(()) => 0,
        Err(_) => 1,
    }
}

/// Turns address-space randomization back on for the programs this
/// process and its children execute from now on, and checks that it is.
fn randomize_children() -> Result<(), String> {
    let now = persona().map_err(|e| format!("reading the persona: {e}"))?;
    if now & libc::ADDR_NO_RANDOMIZE != 0 {
        set_persona(now & !libc::ADDR_NO_RANDOMIZE)
            .map_err(|e| format!("turning address randomization back on: {e}"))?;
    }
    match persona() {
        Ok(p) if p & libc::ADDR_NO_RANDOMIZE == 0 => Ok(()),
        Ok(_) => Err("address randomization stays off".into()),
        Err(e) => Err(format!("reading the persona: {e}")),
    }
}

/// The calling thread's persona (personality(2) is per thread; a child
/// inherits its creating thread's, and exec applies it).
fn persona() -> std::io::Result<i32> {
    // SAFETY: personality(0xffffffff) only reads the current persona.
    let p = unsafe { libc::personality(0xffff_ffff) };
    if p < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(p)
}

fn set_persona(p: i32) -> std::io::Result<()> {
    // SAFETY: sets the calling thread's persona, a plain flag word.
    if unsafe { libc::personality(p as libc::c_ulong) } < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Whether the guest's CPU is QEMU's software emulation (TCG), by the
/// hypervisor's CPUID vendor leaf. The host answers that leaf, in a TEE
/// too: alone it proves nothing (see [`decide_helper_layout`]).
fn emulated_cpu() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        use std::arch::x86_64::__cpuid;
        // SAFETY: CPUID exists on every x86_64 CPU; leaf 1 bit 31 says
        // whether the hypervisor leaves exist.
        #[allow(unused_unsafe)]
        let leaf1 = unsafe { __cpuid(1) };
        if leaf1.ecx & (1 << 31) == 0 {
            return false;
        }
        // SAFETY: as above; the hypervisor leaf exists.
        #[allow(unused_unsafe)]
        let h = unsafe { __cpuid(0x4000_0000) };
        tcg_vendor(h.ebx, h.ecx, h.edx)
    }
    #[cfg(not(target_arch = "x86_64"))]
    false
}

/// Whether the hypervisor vendor in leaf 0x40000000's EBX, ECX and EDX
/// is QEMU's TCG.
fn tcg_vendor(ebx: u32, ecx: u32, edx: u32) -> bool {
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&ecx.to_le_bytes());
    vendor[8..].copy_from_slice(&edx.to_le_bytes());
    &vendor == b"TCGTCGTCGTCG"
}

/// Signs of a confidential guest the host cannot forge: the kernel's own
/// CPU flags (`tdx_guest` comes from leaf 0x21, which the TDX module
/// answers, not the host; the `sev` flags from the SEV status the guest
/// kernel reads) and the TEE devices the kernel creates only in such a
/// guest. The first one found.
fn tee_sign(cpuinfo: &str, exists: impl Fn(&str) -> bool) -> Option<String> {
    const FLAGS: &[&str] = &["tdx_guest", "sev", "sev_es", "sev_snp"];
    const PATHS: &[&str] = &[
        "/dev/tdx_guest",
        "/dev/tdx-guest",
        "/dev/sev-guest",
        "/sys/devices/platform/sev-guest",
        "/sys/firmware/tdx",
    ];
    for line in cpuinfo.lines() {
        let Some((key, flags)) = line.split_once(':') else {
            continue;
        };
        if key.trim() == "flags"
            && let Some(f) = flags.split_whitespace().find(|f| FLAGS.contains(f))
        {
            return Some(format!("CPU flag {f}"));
        }
    }
    PATHS.iter().find(|p| exists(p)).map(|p| p.to_string())
}

/// Whether the runtime helpers PID 1 starts keep one address layout.
static FIXED_LAYOUT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Decides, once, after PID 1 loaded its modules, whether the runtime
/// helpers share one address layout (the zygote's forks share PID 1's;
/// helpers started afresh keep one fixed layout): only under software
/// emulation, and never with any sign of a TEE, so a host that claims TCG
/// to a TDX or SNP guest changes nothing. QEMU keeps the code it
/// translated by virtual address, so a helper at new random addresses has
/// all of its code translated again (about 0.1 s of each container's
/// creation here); one at the same addresses reuses what ran before. What
/// a helper starts is randomized as usual ([`helper_run`]). Returns why
/// not, or none when shared.
pub fn decide_helper_layout() -> Result<(), String> {
    emulated_without_tee(|p| Path::new(p).exists())?;
    FIXED_LAYOUT.store(true, std::sync::atomic::Ordering::Relaxed);
    Ok(())
}

/// [`decide_helper_layout`]'s test before the modules are loaded: the
/// CPU's TEE flags only (the TEE devices come with modules). Why not, or
/// none when helpers may share a layout as far as it can tell yet.
pub fn early_helper_layout() -> Result<(), String> {
    emulated_without_tee(|_| false)
}

fn emulated_without_tee(exists: impl Fn(&str) -> bool) -> Result<(), String> {
    if !emulated_cpu() {
        return Err("not a software-emulated CPU".into());
    }
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo")
        .map_err(|e| format!("cannot read /proc/cpuinfo: {e}"))?;
    if let Some(sign) = tee_sign(&cpuinfo, exists) {
        return Err(format!("the CPU says TCG, but {sign} says TEE"));
    }
    Ok(())
}

/// The calling thread's persona with a fixed layout, for one helper's
/// start (the child inherits it); the old one comes back when dropped.
pub struct FixedLayout {
    before: i32,
}

impl FixedLayout {
    /// A fixed layout for the next spawn, when [`decide_helper_layout`]
    /// chose it.
    pub fn enter() -> Option<Self> {
        Self::enter_if(FIXED_LAYOUT.load(std::sync::atomic::Ordering::Relaxed))
    }

    fn enter_if(on: bool) -> Option<Self> {
        if !on {
            return None;
        }
        let before = persona().ok()?;
        set_persona(before | libc::ADDR_NO_RANDOMIZE).ok()?;
        Some(Self { before })
    }
}

impl Drop for FixedLayout {
    fn drop(&mut self) {
        if set_persona(self.before).is_err() {
            // This thread would start anything else at a fixed layout.
            tracing::error!("cannot restore the thread's persona: ending");
            std::process::abort();
        }
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

fn run(req: &Request, steps: &mut Steps) -> Result<Option<i32>, String> {
    steps.end("request");
    match &req.op {
        Op::Create { bundle } => {
            let c = builder(req)?
                .as_init(bundle)
                .with_systemd(false)
                .with_detach(true)
                .build()
                .map_err(|e| format!("creating container {}: {e}", req.id))?;
            steps.end("create");
            // The init waits for Start: its device rules hold before the
            // workload runs, or it never runs.
            if let Err(e) = device_rules(bundle) {
                let _ = load(&req.root, &req.id)
                    .and_then(|mut c| c.delete(true).map_err(|e| e.to_string()));
                return Err(format!("container {}: {e}", req.id));
            }
            steps.end("device rules");
            Ok(c.pid().map(|p| p.as_raw()))
        }
        Op::Exec { process } => {
            let pid = builder(req)?
                .as_tenant()
                .with_detach(true)
                .with_process(Some(process))
                .build()
                .map_err(|e| format!("exec in container {}: {e}", req.id))?;
            steps.end("exec");
            Ok(Some(pid.as_raw()))
        }
        Op::Delete => {
            load(&req.root, &req.id)?
                .delete(true)
                .map_err(|e| format!("deleting container {}: {e}", req.id))?;
            steps.end("delete");
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

    /// The persona of a program started now, as its /proc file says it.
    fn child_persona() -> i32 {
        let out = std::process::Command::new("cat")
            .arg("/proc/self/personality")
            .output()
            .expect("run cat");
        i32::from_str_radix(String::from_utf8_lossy(&out.stdout).trim(), 16).unwrap()
    }

    #[test]
    fn operation_names_are_the_requests_own() {
        for op in [
            Op::Create {
                bundle: "/b".into(),
            },
            Op::Exec {
                process: "/p".into(),
            },
            Op::Delete,
        ] {
            let v = serde_json::to_value(&op).unwrap();
            assert_eq!(v["op"], op.name());
        }
    }

    #[test]
    fn helpers_keep_one_layout_and_what_they_start_is_randomized() {
        // The persona is a thread's: a thread of its own keeps the test
        // runner's other threads as they were.
        std::thread::spawn(|| {
            let fixed = libc::ADDR_NO_RANDOMIZE;
            let before = child_persona();
            assert!(FixedLayout::enter_if(false).is_none());
            assert_eq!(child_persona(), before);
            {
                let _layout = FixedLayout::enter_if(true).expect("personality(2) refused here");
                assert_eq!(child_persona(), before | fixed);
                // The helper's first act: its children are randomized again.
                randomize_children().unwrap();
                assert_eq!(child_persona() & fixed, 0);
                randomize_children().unwrap();
                assert_eq!(child_persona() & fixed, 0);
            }
            // The thread's own persona is back when the spawn is done.
            assert_eq!(child_persona(), before);
        })
        .join()
        .unwrap();
    }

    #[test]
    fn any_sign_of_a_tee_keeps_helpers_randomized() {
        let plain = "processor\t: 0\nflags\t\t: fpu vme de pse hypervisor aes\n";
        assert_eq!(tee_sign(plain, |_| false), None);
        for flag in ["tdx_guest", "sev", "sev_es", "sev_snp"] {
            let info = plain.replace("hypervisor", &format!("hypervisor {flag}"));
            assert_eq!(
                tee_sign(&info, |_| false),
                Some(format!("CPU flag {flag}")),
                "{flag}"
            );
        }
        // A flag that only starts like one is not one.
        let info = plain.replace("aes", "sevx tdx_guestish");
        assert_eq!(tee_sign(&info, |_| false), None);
        for dev in [
            "/dev/tdx_guest",
            "/dev/sev-guest",
            "/sys/devices/platform/sev-guest",
        ] {
            assert_eq!(tee_sign(plain, |p| p == dev).as_deref(), Some(dev));
        }
    }

    #[test]
    fn only_qemus_software_emulation_counts_as_emulated() {
        let regs = |v: &[u8; 12]| {
            let w = |i: usize| u32::from_le_bytes(v[i..i + 4].try_into().unwrap());
            (w(0), w(4), w(8))
        };
        let (b, c, d) = regs(b"TCGTCGTCGTCG");
        assert!(tcg_vendor(b, c, d));
        for other in [
            b"KVMKVMKVM\0\0\0",
            b"Microsoft Hv",
            b"TCGTCGTCGTCA",
            &[0; 12],
        ] {
            let (b, c, d) = regs(other);
            assert!(!tcg_vendor(b, c, d), "{other:?}");
        }
    }
}
