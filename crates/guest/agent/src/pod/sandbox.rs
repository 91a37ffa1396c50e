//! The pod's containers as PID 1 keeps them: each container's bundle,
//! its init process and exec'd processes with their stdio pipes and exit
//! statuses. Container operations run through the [`oci`] helper; images
//! come from the data hub (guest pull); exits come from the [`Reaper`].

use super::confine;
use super::oci::{self, Op};
use super::pty::{ConsoleSocket, Pty};
use super::reaper::{Reaper, Status};
use super::spec;
use cocoon_guest_protos::kata::{agent, oci as koci};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::sync::{Mutex, watch};

/// Where bundles live (Kata's path, so storages' mount points match).
pub const BUNDLES: &str = "/run/kata-containers";
/// libcontainer's state root.
pub const OCI_ROOT: &str = "/run/cocoon/oci";
/// The pod's `/dev/shm`: one tmpfs every container of the pod mounts, as
/// Kubernetes shares it across a pod (the host's is not the VM's).
pub const POD_SHM: &str = "/run/cocoon/pod-shm";
/// The pod's IPC namespace, pinned by a bind mount of the pause
/// container's once it is created: containers join this path, never a
/// `/proc/<pid>` one whose pid could be another process's later.
pub const POD_IPC: &str = "/run/cocoon/pod-ipc";
/// The pod's process namespace, pinned the same way: the containers of a
/// pod with `shareProcessNamespace` (Kata's `sandbox_pidns`) join it, and
/// see the pause process as their PID 1.
pub const POD_PID: &str = "/run/cocoon/pod-pid";
/// Parent cgroup of every container.
pub const CGROUP_PARENT: &str = "/cocoon";
/// The pause container's program, bind-mounted from the guest binary.
pub const PAUSE: &str = "/pause";
/// Largest chunk one ReadStdout/ReadStderr returns.
const MAX_READ: usize = 1 << 20;
/// Exec'd processes one container may run at once (each holds three
/// pipes in PID 1).
const MAX_EXECS: usize = 256;
/// How long the terminal master may take to arrive once the runtime
/// helper succeeded (it was sent before the helper returned).
const CONSOLE_WAIT: std::time::Duration = std::time::Duration::from_secs(10);
/// How long a pull may wait for the data hub to come up.
const HUB_WAIT: std::time::Duration = std::time::Duration::from_secs(60);

/// A failed container operation, as the host sees it.
#[derive(Debug, thiserror::Error)]
pub enum SandboxError {
    /// The request is malformed or refers to nothing.
    #[error("{0}")]
    Invalid(String),
    /// No such container or process.
    #[error("{0}")]
    NotFound(String),
    /// Already there.
    #[error("{0}")]
    Exists(String),
    /// Not supported by this agent.
    #[error("{0}")]
    Unsupported(String),
    /// The operation failed inside the guest.
    #[error("{0}")]
    Failed(String),
    /// The agent policy refused it.
    #[error(transparent)]
    Denied(super::policy::Denial),
}

impl SandboxError {
    /// The ttrpc status the host gets.
    pub fn code(&self) -> ttrpc::Code {
        match self {
            Self::Invalid(_) => ttrpc::Code::INVALID_ARGUMENT,
            Self::NotFound(_) => ttrpc::Code::NOT_FOUND,
            Self::Exists(_) => ttrpc::Code::ALREADY_EXISTS,
            Self::Unsupported(_) => ttrpc::Code::UNIMPLEMENTED,
            Self::Failed(_) => ttrpc::Code::INTERNAL,
            Self::Denied(_) => ttrpc::Code::PERMISSION_DENIED,
        }
    }
}

fn failed(what: &str) -> impl Fn(std::io::Error) -> SandboxError + '_ {
    move |e| SandboxError::Failed(format!("{what}: {e}"))
}

type Reader = Box<dyn AsyncRead + Send + Unpin>;
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// One process of a container: its pid, stdio and exit.
pub struct Process {
    /// Pid as the guest sees it.
    pub pid: i32,
    stdin: Mutex<Option<Writer>>,
    stdout: Mutex<Option<Reader>>,
    stderr: Mutex<Option<Reader>>,
    /// The terminal master, for a process with a terminal; closed once
    /// the process exited and its output was read to the end.
    tty: std::sync::Mutex<Option<Pty>>,
    exit: watch::Receiver<Option<Status>>,
}

impl Process {
    /// The exit status, once it has exited.
    pub fn exited(&self) -> Option<Status> {
        *self.exit.borrow()
    }

    /// Waits for the exit status.
    pub async fn wait(&self) -> Status {
        exit_status(self.exit.clone()).await.unwrap_or(255)
    }
}

/// The exit status `exit` reports once there is one; `None` when its
/// sender went away without one.
async fn exit_status(mut exit: watch::Receiver<Option<Status>>) -> Option<Status> {
    exit.wait_for(Option::is_some).await.ok().and_then(|s| *s)
}

/// The agent's ends of a process's stdio: three pipes, or a terminal
/// (whose output is stdout; stderr is then empty).
struct Ends {
    stdin: Writer,
    stdout: Reader,
    stderr: Option<Reader>,
    tty: Option<Pty>,
}

impl Ends {
    fn terminal(pty: Pty) -> Self {
        Self {
            stdin: Box::new(pty.clone()),
            stdout: Box::new(pty.clone()),
            stderr: None,
            tty: Some(pty),
        }
    }
}

/// Stdio pipes for a new process: its ends (stdin, stdout, stderr) and ours.
fn pipes() -> Result<([std::os::fd::OwnedFd; 3], Ends), SandboxError> {
    let f = failed("creating stdio pipes");
    let (in_r, in_w) = std::io::pipe().map_err(&f)?;
    let (out_r, out_w) = std::io::pipe().map_err(&f)?;
    let (err_r, err_w) = std::io::pipe().map_err(&f)?;
    let ends = Ends {
        stdin: Box::new(pipe::Sender::from_owned_fd(in_w.into()).map_err(&f)?),
        stdout: Box::new(pipe::Receiver::from_owned_fd(out_r.into()).map_err(&f)?),
        stderr: Some(Box::new(
            pipe::Receiver::from_owned_fd(err_r.into()).map_err(&f)?,
        )),
        tty: None,
    };
    Ok(([in_r.into(), out_w.into(), err_w.into()], ends))
}

/// The stdio a helper hands to the new process, and how the agent gets
/// its own ends afterwards.
enum Stdio {
    /// Pipes: the process's ends go to the helper.
    Pipes([std::os::fd::OwnedFd; 3], Ends),
    /// A terminal: its master arrives on the console socket.
    Terminal(ConsoleSocket, Option<(u16, u16)>),
}

/// A container in the pod.
pub struct Container {
    /// Its id.
    pub id: String,
    bundle: PathBuf,
    cgroup: PathBuf,
    init: Arc<Process>,
    execs: Mutex<HashMap<String, Arc<Process>>>,
    /// Exec ids being set up (two calls with one id cannot both pass).
    reserved: Mutex<std::collections::HashSet<String>>,
    /// OOM kills seen in its cgroup.
    oom: Arc<OomWatch>,
}

/// OOM kills not yet taken by `GetOOMEvent`, oldest first.
#[derive(Default)]
pub struct OomQueue {
    queue: std::sync::Mutex<std::collections::VecDeque<String>>,
    /// GetOOMEvent calls so far, and the call that took each container's
    /// last event: the host has it once it calls again (the shim calls
    /// again only after publishing what it got).
    polls: std::sync::Mutex<(u64, HashMap<String, u64>)>,
    /// Something was queued.
    queued: tokio::sync::Notify,
    /// A GetOOMEvent call came.
    polled: tokio::sync::Notify,
}

impl OomQueue {
    /// Events kept for a host that does not take them.
    const KEEP: usize = 64;

    fn push(&self, id: &str) {
        let mut q = self.queue.lock().unwrap_or_else(|e| e.into_inner());
        if q.len() >= Self::KEEP {
            q.pop_front();
        }
        q.push_back(id.into());
        drop(q);
        self.queued.notify_waiters();
    }

    fn holds(&self, id: &str) -> bool {
        self.queue
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .any(|q| q == id)
    }

    /// The next OOM kill, waiting for one.
    pub async fn next(&self) -> String {
        let call = {
            let mut p = self.polls.lock().unwrap_or_else(|e| e.into_inner());
            p.0 += 1;
            p.0
        };
        self.polled.notify_waiters();
        loop {
            let queued = self.queued.notified();
            tokio::pin!(queued);
            queued.as_mut().enable();
            let next = self
                .queue
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .pop_front();
            if let Some(id) = next {
                self.polls
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .1
                    .insert(id.clone(), call);
                return id;
            }
            queued.await;
        }
    }

    /// Whether the host has every OOM kill of `id`: none is queued, and
    /// it called again after the call that took the last one.
    fn delivered(&self, id: &str) -> bool {
        if self.holds(id) {
            return false;
        }
        let p = self.polls.lock().unwrap_or_else(|e| e.into_inner());
        p.1.get(id).is_none_or(|&took| p.0 > took)
    }

    /// Waits (at most `limit`) until the host has every OOM kill of `id`.
    async fn until_taken(&self, id: &str, limit: std::time::Duration) {
        let _ = tokio::time::timeout(limit, async {
            loop {
                let polled = self.polled.notified();
                tokio::pin!(polled);
                polled.as_mut().enable();
                if self.delivered(id) {
                    return;
                }
                polled.await;
            }
        })
        .await;
        // Done with it (also after the limit: a later exit of the
        // container waits only for its own kills).
        self.polls
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .1
            .remove(id);
    }
}

/// One container's cgroup, watched for OOM kills.
struct OomWatch {
    id: String,
    cgroup: PathBuf,
    kills: AtomicU64,
    queue: Arc<OomQueue>,
}

impl OomWatch {
    /// Queues an event when the cgroup counts a new OOM kill; true if it
    /// did.
    fn check(&self) -> bool {
        let kills = read_kv(&self.cgroup.join("memory.events"))
            .get("oom_kill")
            .copied()
            .unwrap_or(0);
        if kills > self.kills.swap(kills, Ordering::Relaxed) {
            tracing::warn!(container = %self.id, "out of memory: a process was killed");
            self.queue.push(&self.id);
            return true;
        }
        false
    }
}

/// The pod's containers.
pub struct Sandbox {
    reaper: Arc<Reaper>,
    exe: PathBuf,
    /// Forks the runtime helpers; without it (or once it is gone) each
    /// helper is `exe` started afresh.
    zygote: Option<Arc<super::zygote::Zygote>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    seq: AtomicU64,
    hub: String,
    oom: Arc<OomQueue>,
    policy: Arc<super::policy::Gate>,
    /// Whether the pod's IPC and process namespaces are pinned at
    /// [`POD_IPC`] and [`POD_PID`].
    pod_pinned: std::sync::Mutex<bool>,
}

/// What became of asking the zygote for a runtime helper.
enum Forked {
    /// It runs: its exit.
    Running(tokio::sync::oneshot::Receiver<super::reaper::Status>),
    /// None ran: why (none without a zygote), and the helper's stdio back
    /// for one started afresh.
    Not(Option<std::io::Error>, Option<[std::os::fd::OwnedFd; 3]>),
}

impl Sandbox {
    /// A sandbox whose helpers the zygote forks (or, without one, are
    /// `exe` started afresh) and whose pulls go to the data hub at `hub`;
    /// creates the runtime's state and bundle directories.
    pub fn new(
        reaper: Arc<Reaper>,
        exe: PathBuf,
        zygote: Option<super::zygote::Zygote>,
        hub: &str,
        policy: Arc<super::policy::Gate>,
    ) -> Result<Arc<Self>, SandboxError> {
        for dir in [OCI_ROOT, BUNDLES] {
            std::fs::create_dir_all(dir).map_err(failed(dir))?;
        }
        let oom = Arc::new(OomQueue::default());
        Ok(Arc::new(Self {
            reaper,
            exe,
            zygote: zygote.map(Arc::new),
            containers: Mutex::new(HashMap::new()),
            seq: AtomicU64::new(0),
            hub: hub.into(),
            oom,
            policy,
            pod_pinned: Default::default(),
        }))
    }

    /// Stdio for a new process: pipes, or a console socket when its
    /// `process` asks for a terminal (with the initial window size).
    fn stdio_for(
        &self,
        process: Option<&libcontainer::oci_spec::runtime::Process>,
    ) -> Result<Stdio, SandboxError> {
        let Some(p) = process.filter(|p| p.terminal() == Some(true)) else {
            let (child, ends) = pipes()?;
            return Ok(Stdio::Pipes(child, ends));
        };
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let sock = ConsoleSocket::bind(Path::new(OCI_ROOT).join(format!(".console-{n}")))
            .map_err(failed("creating the console socket"))?;
        let size = p.console_size().map(|b| {
            let clamp = |v: u64| u16::try_from(v).unwrap_or(u16::MAX);
            (clamp(b.height()), clamp(b.width()))
        });
        Ok(Stdio::Terminal(sock, size))
    }

    /// Runs `op` with `stdio` and returns the new process's pid (if the
    /// operation makes one) with the agent's ends of its stdio.
    async fn helper_with(
        &self,
        id: &str,
        op: Op,
        stdio: Stdio,
    ) -> Result<(Option<i32>, Ends), SandboxError> {
        match stdio {
            Stdio::Pipes(child, ends) => {
                let pid = self.helper(id, op, Some(child), None).await?;
                Ok((pid, ends))
            }
            Stdio::Terminal(sock, size) => {
                let pid = self
                    .helper(id, op, None, Some(sock.path().to_path_buf()))
                    .await?;
                let pty = match tokio::time::timeout(CONSOLE_WAIT, sock.receive()).await {
                    Ok(Ok(pty)) => Ok(pty),
                    Ok(Err(e)) => Err(failed("receiving the terminal")(e)),
                    Err(_) => Err(SandboxError::Failed(format!(
                        "the terminal of {id} did not arrive within {CONSOLE_WAIT:?}"
                    ))),
                }
                .and_then(|pty| match size.filter(|&(r, c)| r > 0 && c > 0) {
                    Some((rows, cols)) => pty
                        .resize(rows, cols)
                        .map(|()| pty)
                        .map_err(failed("sizing the terminal")),
                    None => Ok(pty),
                });
                match pty {
                    Ok(pty) => Ok((pid, Ends::terminal(pty))),
                    Err(e) => {
                        // A process nobody can talk to must not live on.
                        if let Some(pid) = pid {
                            let _exit = self.reaper.watch(pid);
                            let _ = self.reaper.kill(pid, libc::SIGKILL);
                        }
                        Err(e)
                    }
                }
            }
        }
    }

    async fn helper(
        &self,
        id: &str,
        op: Op,
        stdio: Option<[std::os::fd::OwnedFd; 3]>,
        console_socket: Option<PathBuf>,
    ) -> Result<Option<i32>, SandboxError> {
        let root = PathBuf::from(OCI_ROOT);
        let op_name = op.name();
        let n = self.seq.fetch_add(1, Ordering::Relaxed);
        let reply_path = root.join(format!(".reply-{n}"));
        let req = oci::Request {
            root,
            id: id.into(),
            op,
            console_socket,
        };
        let spawned_ns = oci::monotonic_ns();
        let exit = match self.fork_helper(&req, &reply_path, stdio).await? {
            Forked::Running(exit) => exit,
            Forked::Not(why, stdio) => {
                if let Some(e) = why {
                    tracing::warn!("{e}: the runtime helper is started as a new process");
                }
                self.start_helper(&req, &reply_path, stdio)?
            }
        };
        let status = exit.await.unwrap_or(255);
        let text = std::fs::read(&reply_path);
        let _ = std::fs::remove_file(&reply_path);
        let reply: oci::Reply = match text {
            Ok(t) => serde_json::from_slice(&t).unwrap_or_default(),
            Err(_) => {
                return Err(SandboxError::Failed(format!(
                    "the runtime helper ended with status {status} and no reply"
                )));
            }
        };
        let us = |from: u64, to: u64| to.saturating_sub(from) / 1000;
        tracing::debug!(
            container = id,
            op = op_name,
            total_us = us(spawned_ns, oci::monotonic_ns()),
            start_us = us(spawned_ns, reply.main_at_ns),
            steps = ?reply.steps_us,
            "runtime helper done"
        );
        match reply.error {
            Some(e) => Err(SandboxError::Failed(e)),
            None => Ok(reply.pid),
        }
    }

    /// The helper for `req` forked by the zygote. Our ends of `stdio` are
    /// closed once the helper has its own, so the pipes see EOF when the
    /// process exits. An error when `stdio` is lost with no helper run:
    /// the operation fails.
    async fn fork_helper(
        &self,
        req: &oci::Request,
        reply: &Path,
        stdio: Option<[std::os::fd::OwnedFd; 3]>,
    ) -> Result<Forked, SandboxError> {
        let Some(zygote) = self.zygote.clone() else {
            return Ok(Forked::Not(None, stdio));
        };
        let (json, reply) = match (serde_json::to_string(req), reply.to_str()) {
            (Ok(j), Some(r)) => (j, r.to_string()),
            _ => return Ok(Forked::Not(None, stdio)),
        };
        let reaper = self.reaper.clone();
        let forked = tokio::task::spawn_blocking(move || {
            let asked = std::time::Instant::now();
            let watch = |pid| reaper.watch_started(pid, asked);
            let spawned = match &stdio {
                Some([i, o, e]) => zygote.spawn(&json, &reply, [i, o, e], watch),
                None => std::fs::OpenOptions::new()
                    .read(true)
                    .write(true)
                    .open("/dev/null")
                    .and_then(|n| {
                        let n = std::os::fd::OwnedFd::from(n);
                        zygote.spawn(&json, &reply, [&n, &n, &n], watch)
                    }),
            };
            (spawned, stdio)
        })
        .await;
        match forked {
            Ok((Ok(exit), _)) => Ok(Forked::Running(exit)),
            Ok((Err(e), stdio)) => Ok(Forked::Not(Some(e), stdio)),
            // The task ended early: its go-ahead pipe is closed, so no
            // helper ran, but the process's stdio went with it.
            Err(e) => Err(SandboxError::Failed(format!(
                "starting the runtime helper: {e}"
            ))),
        }
    }

    /// The helper for `req` started afresh as `exe`: its exit.
    fn start_helper(
        &self,
        req: &oci::Request,
        reply: &Path,
        stdio: Option<[std::os::fd::OwnedFd; 3]>,
    ) -> Result<tokio::sync::oneshot::Receiver<super::reaper::Status>, SandboxError> {
        let mut cmd = oci::command(&self.exe, req, reply);
        match stdio {
            Some([i, o, e]) => {
                cmd.stdin(i).stdout(o).stderr(e);
            }
            None => {
                cmd.stdin(std::process::Stdio::null())
                    .stdout(std::process::Stdio::null())
                    .stderr(std::process::Stdio::null());
            }
        }
        let spawned = {
            // Only this spawn, from this thread, gets the fixed layout.
            let _layout = oci::FixedLayout::enter();
            self.reaper.spawn(&mut cmd)
        };
        let (_, exit) = spawned.map_err(failed("starting the runtime helper"))?;
        // The child's stdio ends were moved into `cmd`; drop them here so
        // the pipes see EOF when the process exits.
        drop(cmd);
        Ok(exit)
    }

    /// Follows the exit of `pid`. An OOM kill in the container's cgroup
    /// is queued before the exit is known, and the exit waits (briefly)
    /// until `GetOOMEvent` took it: the host hears of the OOM first, as
    /// containerd expects of a runtime.
    fn track(&self, pid: i32, p: Ends, oom: Arc<OomWatch>) -> Arc<Process> {
        let (tx, rx) = watch::channel(None);
        let exit = self.reaper.watch(pid);
        tokio::spawn(async move {
            let code = exit.await.unwrap_or(255);
            // The periodic check may have queued it already: wait either way.
            oom.check();
            oom.queue
                .until_taken(&oom.id, std::time::Duration::from_secs(1))
                .await;
            let _ = tx.send(Some(code));
        });
        Arc::new(Process {
            pid,
            stdin: Mutex::new(Some(p.stdin)),
            stdout: Mutex::new(Some(p.stdout)),
            stderr: Mutex::new(p.stderr),
            tty: std::sync::Mutex::new(p.tty),
            exit: rx,
        })
    }

    async fn container(&self, id: &str) -> Result<Arc<Container>, SandboxError> {
        self.containers
            .lock()
            .await
            .get(id)
            .cloned()
            .ok_or_else(|| SandboxError::NotFound(format!("container {id} does not exist")))
    }

    async fn process(&self, id: &str, exec_id: &str) -> Result<Arc<Process>, SandboxError> {
        let c = self.container(id).await?;
        if exec_id.is_empty() || exec_id == id {
            return Ok(c.init.clone());
        }
        c.execs.lock().await.get(exec_id).cloned().ok_or_else(|| {
            SandboxError::NotFound(format!(
                "process {exec_id} of container {id} does not exist"
            ))
        })
    }

    /// CreateContainer: pulls the image (or sets up the pause rootfs),
    /// writes the bundle and creates the container; its init waits for
    /// StartContainer.
    pub async fn create(&self, req: &agent::CreateContainerRequest) -> Result<(), SandboxError> {
        let id = req.container_id.as_str();
        let kspec = req
            .OCI
            .as_ref()
            .ok_or_else(|| SandboxError::Invalid("CreateContainer carries no OCI spec".into()))?;
        shared_pidns_request(req.sandbox_pidns, kspec)?;
        let bundle = Path::new(BUNDLES).join(id);
        let rootfs = bundle.join("rootfs");
        let paths = spec::GuestPaths {
            rootfs: rootfs.clone(),
            cgroup_parent: CGROUP_PARENT.into(),
        };
        // Validates the id too, before it names anything on disk.
        let mut oci_spec =
            spec::to_oci(kspec, id, &paths).map_err(|e| SandboxError::Invalid(e.to_string()))?;
        let pod_sysctls = spec::take_pod_sysctls(&mut oci_spec)
            .map_err(|e| SandboxError::Invalid(e.to_string()))?;
        // The pod's network settings come with its sandbox, as containerd
        // sends them, and never with a container of the pod.
        let sandbox = kspec
            .Annotations
            .get("io.kubernetes.cri.container-type")
            .is_some_and(|t| t == "sandbox");
        if !pod_sysctls.is_empty() && !sandbox {
            return Err(SandboxError::Invalid(format!(
                "network sysctls ({}) are the pod's: only its sandbox sets them",
                pod_sysctls
                    .iter()
                    .map(|(n, _)| n.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            )));
        }
        if self.containers.lock().await.contains_key(id) {
            return Err(SandboxError::Exists(format!(
                "container {id} already exists"
            )));
        }
        match std::fs::create_dir(&bundle) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                return Err(SandboxError::Exists(format!(
                    "container {id} already has a bundle"
                )));
            }
            Err(e) => return Err(failed("creating the bundle")(e)),
        }
        let t0 = std::time::Instant::now();
        let prepared = self
            .prepare(req, kspec, sandbox, &bundle, &rootfs, &mut oci_spec)
            .await;
        tracing::debug!(
            container = id,
            us = t0.elapsed().as_micros() as u64,
            "bundle prepared"
        );
        let r = match prepared {
            // The pod's network settings, in the VM's network namespace
            // (the pod's), once everything else about the sandbox passed.
            Ok(()) => match set_pod_sysctls(&pod_sysctls) {
                Ok(()) => {
                    let how = Creation {
                        sandbox,
                        sandbox_pidns: req.sandbox_pidns,
                    };
                    self.create_in(id, &bundle, oci_spec.process().as_ref(), how)
                        .await
                }
                e => e,
            },
            e => e,
        };
        if r.is_err() {
            cleanup_bundle(&bundle);
        }
        r
    }

    async fn prepare(
        &self,
        req: &agent::CreateContainerRequest,
        kspec: &koci::Spec,
        sandbox: bool,
        bundle: &Path,
        rootfs: &Path,
        oci_spec: &mut libcontainer::oci_spec::runtime::Spec,
    ) -> Result<(), SandboxError> {
        let id = req.container_id.as_str();
        let pull = req.storages.iter().find(|s| s.driver == "image_guest_pull");
        if let Some(other) = req.storages.iter().find(|s| s.driver != "image_guest_pull") {
            return Err(SandboxError::Unsupported(format!(
                "storage driver '{}' is not supported (image_guest_pull only)",
                other.driver
            )));
        }
        match pull {
            Some(storage) if !sandbox => {
                let image = if storage.source.is_empty() {
                    kspec
                        .Annotations
                        .get("io.kubernetes.cri.image-name")
                        .cloned()
                        .unwrap_or_default()
                } else {
                    storage.source.clone()
                };
                if image.is_empty() {
                    return Err(SandboxError::Invalid(
                        "image_guest_pull storage names no image".into(),
                    ));
                }
                self.pull(&image, id, bundle).await?;
                let image_cfg = read_spec(&bundle.join("config.json"))?;
                spec::merge_image_config(oci_spec, &image_cfg);
                tracing::info!(container = id, image = %image, "image pulled in the guest");
            }
            _ => {
                // The pause container: no pull, the guest's own binary.
                std::fs::create_dir_all(rootfs).map_err(failed("creating the pause rootfs"))?;
                bind_pause(&self.exe, rootfs)?;
                if let Some(p) = oci_spec.process_mut() {
                    p.set_args(Some(vec![PAUSE.into()]));
                }
            }
        }
        confine::container(oci_spec, bundle)?;
        self.share_pod_namespaces(oci_spec, sandbox, req.sandbox_pidns)?;
        let text = serde_json::to_vec_pretty(&*oci_spec)
            .map_err(|e| SandboxError::Failed(format!("writing config.json: {e}")))?;
        std::fs::write(bundle.join("config.json"), text).map_err(failed("writing config.json"))
    }

    /// What Kubernetes shares across a pod and the guest makes once: its
    /// IPC namespace (the pause container's, which every other container
    /// joins), its `/dev/shm` (one tmpfs, [`POD_SHM`], in place of each
    /// container's own) and, with `sandbox_pidns`, its process namespace
    /// (the pause container's). Done after the host's spec was checked:
    /// the paths are the guest's own.
    fn share_pod_namespaces(
        &self,
        spec: &mut libcontainer::oci_spec::runtime::Spec,
        sandbox: bool,
        sandbox_pidns: bool,
    ) -> Result<(), SandboxError> {
        use libcontainer::oci_spec::runtime::{LinuxNamespaceType, MountBuilder};
        mount_pod_shm()?;
        let pinned = *self.pod_pinned.lock().unwrap_or_else(|e| e.into_inner());
        if sandbox && pinned {
            return Err(SandboxError::Invalid(
                "the pod has its sandbox already".into(),
            ));
        }
        if sandbox_pidns && (sandbox || !pinned) {
            return Err(SandboxError::Invalid(
                "sandbox_pidns: only a container of a pod whose sandbox runs can share its process namespace"
                    .into(),
            ));
        }
        // A container of a pod with a sandbox joins the pod's; one run
        // alone (`ctr run`, `cocoon run`: no sandbox) keeps its own.
        let mut joined = false;
        if let (false, true, Some(linux)) = (sandbox, pinned, spec.linux_mut()) {
            // The pod's sysctls are its sandbox's (IPC ones now act on the
            // namespace the whole pod shares).
            if linux.sysctl().as_ref().is_some_and(|s| !s.is_empty()) {
                return Err(SandboxError::Invalid(
                    "sysctls are the pod's: only its sandbox sets them".into(),
                ));
            }
            let mut namespaces = linux.namespaces().clone().unwrap_or_default();
            for n in &mut namespaces {
                if n.typ() == LinuxNamespaceType::Ipc {
                    n.set_path(Some(PathBuf::from(POD_IPC)));
                }
                if n.typ() == LinuxNamespaceType::Pid && sandbox_pidns {
                    n.set_path(Some(PathBuf::from(POD_PID)));
                    joined = true;
                }
            }
            linux.set_namespaces(Some(namespaces));
        }
        // Without an entry to join by, the container would stay in the
        // agent's process namespace.
        if sandbox_pidns && !joined {
            return Err(SandboxError::Failed(
                "sandbox_pidns: the spec has no process namespace to join the pod's by".into(),
            ));
        }
        let mut mounts = spec.mounts().clone().unwrap_or_default();
        for m in &mut mounts {
            if m.destination() == Path::new("/dev/shm") {
                *m = MountBuilder::default()
                    .destination("/dev/shm")
                    .typ("bind")
                    .source(POD_SHM)
                    .options(
                        ["rbind", "nosuid", "noexec", "nodev"]
                            .map(String::from)
                            .to_vec(),
                    )
                    .build()
                    .map_err(|e| SandboxError::Failed(format!("the pod /dev/shm mount: {e}")))?;
            }
        }
        spec.set_mounts(Some(mounts));
        Ok(())
    }

    /// Pins the IPC and process namespaces of the pod's pause container,
    /// just created and not yet known to any other request (its init waits
    /// for StartContainer, and only the agent reaps, so `pid` is still
    /// its), at [`POD_IPC`] and [`POD_PID`]: both or neither.
    fn pin_pod_namespaces(&self, pid: i32) -> Result<(), SandboxError> {
        use std::os::unix::fs::MetadataExt;
        use std::os::unix::io::AsRawFd;
        let mut pinned = self.pod_pinned.lock().unwrap_or_else(|e| e.into_inner());
        if *pinned {
            return Err(SandboxError::Invalid(
                "the pod has its sandbox already".into(),
            ));
        }
        let mut open = Vec::new();
        for (kind, pin) in [("ipc", POD_IPC), ("pid", POD_PID)] {
            let ns = std::fs::File::open(format!("/proc/{pid}/ns/{kind}")).map_err(failed(
                &format!("opening the pause container's {kind} namespace"),
            ))?;
            let theirs = ns
                .metadata()
                .map_err(failed(&format!("the pause {kind} namespace")))?;
            let ours = std::fs::metadata(format!("/proc/self/ns/{kind}"))
                .map_err(failed(&format!("the agent's {kind} namespace")))?;
            if (theirs.dev(), theirs.ino()) == (ours.dev(), ours.ino()) {
                return Err(SandboxError::Failed(format!(
                    "the pause container is in the agent's {kind} namespace"
                )));
            }
            open.push((kind, pin, ns));
        }
        let mut done: Vec<&str> = Vec::new();
        for (kind, pin, ns) in open {
            let fd = Path::new("/proc/self/fd").join(ns.as_raw_fd().to_string());
            let r = std::fs::File::create(pin)
                .map_err(failed(&format!("creating the pod {kind} pin")))
                .and_then(|_| {
                    mount(Some(&fd), Path::new(pin), None, libc::MS_BIND, None)
                        .map_err(failed(&format!("pinning the pod {kind} namespace")))
                });
            if let Err(e) = r {
                for p in done {
                    unmount(p);
                }
                return Err(e);
            }
            done.push(pin);
        }
        *pinned = true;
        Ok(())
    }

    /// Pulls `image` into `bundle` once the policy accepts it. Under a
    /// policy the image is first resolved to its manifest digest, judged
    /// (reference and digest: the policy may pin both), and only then
    /// pulled as judged: a reference that now resolves to another digest
    /// fails at its manifest; nothing else is fetched or unpacked.
    async fn pull(&self, image: &str, id: &str, bundle: &Path) -> Result<(), SandboxError> {
        let hub = self.hub(image).await?;
        let failed = |e| SandboxError::Failed(format!("pulling {image}: {e}"));
        if !self.policy.enforcing() {
            hub.pull_image(image, &bundle.display().to_string())
                .await
                .map_err(failed)?;
            return Ok(());
        }
        let digest = hub.resolve_image(image).await.map_err(failed)?;
        self.policy
            .check_input(
                super::policy::PULL_RULE,
                &serde_json::json!({
                    "image": image,
                    "manifest_digest": digest,
                    "container_id": id,
                }),
                true,
            )
            .map_err(SandboxError::Denied)?;
        // By the same reference (the signature policy judges its tag); the
        // hub refuses at the manifest if it no longer resolves to `digest`.
        hub.pull_resolved_image(image, &bundle.display().to_string(), &digest)
            .await
            .map_err(failed)?;
        Ok(())
    }

    /// The data hub, waited for.
    async fn hub(&self, image: &str) -> Result<crate::services::CdhClient, SandboxError> {
        // The data hub starts beside the agent (after the attestation agent
        // bound initdata): the first pull may come before it listens.
        let t = std::time::Instant::now();
        let hub = loop {
            match crate::services::CdhClient::connect(&self.hub).await {
                Ok(hub) => break hub,
                Err(e) if t.elapsed() > HUB_WAIT => {
                    return Err(SandboxError::Failed(format!(
                        "the data hub did not come up within {HUB_WAIT:?} to pull {image}: {e}"
                    )));
                }
                Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
            }
        };
        Ok(hub)
    }

    async fn create_in(
        &self,
        id: &str,
        bundle: &Path,
        process: Option<&libcontainer::oci_spec::runtime::Process>,
        how: Creation,
    ) -> Result<(), SandboxError> {
        let stdio = self.stdio_for(process)?;
        let created = self
            .helper_with(
                id,
                Op::Create {
                    bundle: bundle.to_path_buf(),
                },
                stdio,
            )
            .await;
        let (pid, ends) = match created {
            Ok((Some(pid), ends)) => (pid, ends),
            Ok((None, _)) | Err(_) => {
                // Whatever libcontainer left of it goes with the bundle.
                let _ = self.helper(id, Op::Delete, None, None).await;
                return Err(created.err().unwrap_or_else(|| {
                    SandboxError::Failed(format!("container {id} has no pid"))
                }));
            }
        };
        // The pod's namespaces are pinned before any other request can
        // find the pause container (and signal it).
        if how.sandbox
            && let Err(e) = self.pin_pod_namespaces(pid)
        {
            let _ = self.helper(id, Op::Delete, None, None).await;
            return Err(e);
        }
        let cgroup = Path::new("/sys/fs/cgroup")
            .join(CGROUP_PARENT.trim_start_matches('/'))
            .join(id);
        let oom = Arc::new(OomWatch {
            id: id.into(),
            cgroup: cgroup.clone(),
            kills: AtomicU64::new(0),
            queue: self.oom.clone(),
        });
        let init = self.track(pid, ends, oom.clone());
        if how.sandbox_pidns {
            end_with_init(&init, cgroup.join("cgroup.kill"));
        }
        let c = Arc::new(Container {
            id: id.into(),
            bundle: bundle.to_path_buf(),
            cgroup,
            init,
            execs: Mutex::new(HashMap::new()),
            reserved: Mutex::new(std::collections::HashSet::new()),
            oom,
        });
        self.containers.lock().await.insert(id.into(), c);
        tracing::info!(container = id, pid, "container created");
        Ok(())
    }

    /// StartContainer.
    pub async fn start(&self, id: &str) -> Result<(), SandboxError> {
        let c = self.container(id).await?;
        let cid = c.id.clone();
        tokio::task::spawn_blocking(move || oci::start(Path::new(OCI_ROOT), &cid))
            .await
            .map_err(|e| SandboxError::Failed(format!("starting container {id}: {e}")))?
            .map_err(SandboxError::Failed)?;
        tracing::info!(container = id, "container started");
        Ok(())
    }

    /// ExecProcess: runs another process in a running container.
    pub async fn exec(&self, req: &agent::ExecProcessRequest) -> Result<(), SandboxError> {
        let c = self.container(&req.container_id).await?;
        let exec_id = req.exec_id.as_str();
        if exec_id.is_empty() || exec_id == c.id {
            return Err(SandboxError::Invalid(
                "exec id must name a new process".into(),
            ));
        }
        spec::check_container_id(exec_id).map_err(|e| SandboxError::Invalid(e.to_string()))?;
        {
            let execs = c.execs.lock().await;
            if execs.contains_key(exec_id) || !c.reserved.lock().await.insert(exec_id.into()) {
                return Err(SandboxError::Exists(format!(
                    "process {exec_id} already exists in {}",
                    c.id
                )));
            }
            let live = execs.values().filter(|p| p.exited().is_none()).count();
            if live >= MAX_EXECS {
                c.reserved.lock().await.remove(exec_id);
                return Err(SandboxError::Invalid(format!(
                    "container {} already runs {live} processes",
                    c.id
                )));
            }
        }
        let r = self.exec_reserved(&c, req).await;
        c.reserved.lock().await.remove(exec_id);
        r
    }

    async fn exec_reserved(
        &self,
        c: &Arc<Container>,
        req: &agent::ExecProcessRequest,
    ) -> Result<(), SandboxError> {
        let exec_id = req.exec_id.as_str();
        if c.init.exited().is_some() {
            return Err(SandboxError::Invalid(format!(
                "container {} is not running",
                c.id
            )));
        }
        let kproc = req
            .process
            .as_ref()
            .ok_or_else(|| SandboxError::Invalid("ExecProcess carries no process".into()))?;
        let mut process =
            spec::process_to_oci(kproc).map_err(|e| SandboxError::Invalid(e.to_string()))?;
        confine::process(&process)?;
        let base = read_spec(&c.bundle.join("config.json"))?;
        // Exec'd processes see the container's environment under their own.
        if let Some(base_env) = base.process().as_ref().and_then(|p| p.env().as_ref()) {
            let own = process.env().clone().unwrap_or_default();
            process.set_env(Some(spec::overlay_env(base_env, &own)));
        }
        let path = c.bundle.join(format!("exec-{exec_id}.json"));
        let text = serde_json::to_vec(&process)
            .map_err(|e| SandboxError::Failed(format!("writing the exec process: {e}")))?;
        std::fs::write(&path, text).map_err(failed("writing the exec process"))?;
        let r = match self.stdio_for(Some(&process)) {
            Ok(stdio) => {
                self.helper_with(
                    &c.id,
                    Op::Exec {
                        process: path.clone(),
                    },
                    stdio,
                )
                .await
            }
            Err(e) => Err(e),
        };
        let _ = std::fs::remove_file(&path);
        let (pid, ends) = r?;
        let pid = pid.ok_or_else(|| SandboxError::Failed("exec gave no pid".into()))?;
        let proc_ = self.track(pid, ends, c.oom.clone());
        c.execs.lock().await.insert(exec_id.into(), proc_);
        tracing::info!(container = %c.id, exec = exec_id, pid, "process started");
        Ok(())
    }

    /// WaitProcess.
    pub async fn wait(&self, id: &str, exec_id: &str) -> Result<Status, SandboxError> {
        Ok(self.process(id, exec_id).await?.wait().await)
    }

    /// SignalProcess; an exited process is not an error.
    pub async fn signal(&self, id: &str, exec_id: &str, sig: u32) -> Result<(), SandboxError> {
        let p = self.process(id, exec_id).await?;
        let sig = i32::try_from(sig)
            .ok()
            .filter(|s| (1..=64).contains(s))
            .ok_or_else(|| SandboxError::Invalid(format!("signal {sig} is not a signal")))?;
        if p.exited().is_some() {
            return Ok(());
        }
        // Through the reaper: never to a pid reaped and reused since.
        self.reaper
            .kill(p.pid, sig)
            .map_err(|e| SandboxError::Failed(format!("signal {sig} to {id}: {e}")))
    }

    /// ReadStdout / ReadStderr: up to `len` bytes; empty at end of stream.
    pub async fn read(
        &self,
        id: &str,
        exec_id: &str,
        len: u32,
        stderr: bool,
    ) -> Result<Vec<u8>, SandboxError> {
        let p = self.process(id, exec_id).await?;
        let mut guard = if stderr {
            p.stderr.lock().await
        } else {
            p.stdout.lock().await
        };
        let Some(r) = guard.as_mut() else {
            return Ok(Vec::new());
        };
        let mut buf = vec![0u8; (len as usize).clamp(1, MAX_READ)];
        let n = r
            .read(&mut buf)
            .await
            .map_err(failed("reading the stream"))?;
        if n == 0 {
            *guard = None;
            // A terminal's output ends when the process and whatever it
            // left behind closed it: the master and the stdin writer (its
            // clone) go too, so exec'd terminals do not pin ptys.
            let had_tty = p.tty.lock().unwrap_or_else(|e| e.into_inner()).take();
            if had_tty.is_some() && !stderr {
                drop(guard);
                p.stdin.lock().await.take();
            }
        }
        buf.truncate(n);
        Ok(buf)
    }

    /// WriteStdin: returns the bytes written.
    pub async fn write(&self, id: &str, exec_id: &str, data: &[u8]) -> Result<u32, SandboxError> {
        let p = self.process(id, exec_id).await?;
        let mut guard = p.stdin.lock().await;
        let w = guard
            .as_mut()
            .ok_or_else(|| SandboxError::Invalid(format!("stdin of {id} is closed")))?;
        w.write_all(data).await.map_err(failed("writing stdin"))?;
        Ok(data.len() as u32)
    }

    /// CloseStdin. With a terminal the process keeps its terminal: only
    /// the agent stops writing to it.
    pub async fn close_stdin(&self, id: &str, exec_id: &str) -> Result<(), SandboxError> {
        let p = self.process(id, exec_id).await?;
        p.stdin.lock().await.take();
        Ok(())
    }

    /// TtyWinResize.
    pub async fn resize(
        &self,
        id: &str,
        exec_id: &str,
        rows: u32,
        cols: u32,
    ) -> Result<(), SandboxError> {
        let p = self.process(id, exec_id).await?;
        if p.exited().is_some() {
            // Its terminal may be closed already: nothing to resize.
            return Ok(());
        }
        let tty = p
            .tty
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| {
                SandboxError::Invalid(format!(
                    "process {} of {id} has no terminal",
                    shown(exec_id, id)
                ))
            })?;
        let fit = |v: u32, what: &str| {
            u16::try_from(v)
                .map_err(|_| SandboxError::Invalid(format!("terminal {what} {v} is too large")))
        };
        tty.resize(fit(rows, "height")?, fit(cols, "width")?)
            .map_err(failed("resizing the terminal"))
    }

    /// RemoveContainer: kills what is left, deletes the state and bundle.
    pub async fn remove(&self, id: &str) -> Result<(), SandboxError> {
        let c = self.container(id).await?;
        self.helper(&c.id, Op::Delete, None, None).await?;
        cleanup_bundle(&c.bundle);
        self.containers.lock().await.remove(id);
        tracing::info!(container = id, "container removed");
        Ok(())
    }

    /// DestroySandbox: removes every container.
    pub async fn destroy(&self) -> Result<(), SandboxError> {
        let ids: Vec<String> = self.containers.lock().await.keys().cloned().collect();
        let mut first = None;
        for id in ids {
            if let Err(e) = self.remove(&id).await {
                tracing::warn!(container = %id, "{e}");
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// StatsContainer from the container's cgroup.
    pub async fn stats(&self, id: &str) -> Result<agent::StatsContainerResponse, SandboxError> {
        let c = self.container(id).await?;
        Ok(cgroup_stats(&c.cgroup))
    }

    /// Whether any container exists (or is being created).
    pub async fn has_containers(&self) -> bool {
        !self.containers.lock().await.is_empty()
            || std::fs::read_dir(BUNDLES).is_ok_and(|mut d| d.next().is_some())
    }

    /// GetOOMEvent: waits until some container's cgroup records an OOM kill.
    pub async fn oom_event(&self) -> String {
        self.oom.next().await
    }

    /// Watches the containers' `memory.events` for OOM kills.
    pub fn watch_oom(self: &Arc<Self>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
                let Some(s) = me.upgrade() else { return };
                let cs: Vec<Arc<Container>> = s.containers.lock().await.values().cloned().collect();
                for c in cs {
                    c.oom.check();
                }
            }
        });
    }
}

/// A process's name in messages: its exec id, or the container's for
/// the init.
fn shown<'a>(exec_id: &'a str, id: &'a str) -> &'a str {
    if exec_id.is_empty() { id } else { exec_id }
}

fn read_spec(path: &Path) -> Result<libcontainer::oci_spec::runtime::Spec, SandboxError> {
    let text = std::fs::read(path).map_err(failed("reading the image config"))?;
    // serde's message may quote the config's values (its environment
    // included): the host gets only the position.
    serde_json::from_slice(&text).map_err(|e| {
        SandboxError::Failed(format!(
            "{} is not an OCI runtime config (line {}, column {})",
            path.display(),
            e.line(),
            e.column()
        ))
    })
}

/// Mounts the pod's `/dev/shm` tmpfs at [`POD_SHM`] once (the size the
/// runtime gives a container's, 64 MiB).
fn mount_pod_shm() -> Result<(), SandboxError> {
    // Held across the check and the mount: two creates at once mount once.
    static MOUNTED: std::sync::Mutex<bool> = std::sync::Mutex::new(false);
    let mut mounted = MOUNTED.lock().unwrap_or_else(|e| e.into_inner());
    if *mounted {
        return Ok(());
    }
    std::fs::create_dir_all(POD_SHM).map_err(failed("creating the pod /dev/shm"))?;
    mount(
        Some(Path::new("shm")),
        Path::new(POD_SHM),
        Some("tmpfs"),
        libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
        Some("mode=1777,size=65536k"),
    )
    .map_err(failed("mounting the pod /dev/shm"))?;
    *mounted = true;
    Ok(())
}

/// What a created container is to its pod.
#[derive(Clone, Copy)]
struct Creation {
    /// The pod's sandbox (pause) container.
    sandbox: bool,
    /// A container in the pod's process namespace.
    sandbox_pidns: bool,
}

/// Kata's runtime sends a container that shares its pod's process
/// namespace without a PID namespace of its own: one listed as well is
/// refused rather than joined (a policy that only asks for the entry
/// would otherwise let a host share what the manifest keeps apart).
fn shared_pidns_request(sandbox_pidns: bool, spec: &koci::Spec) -> Result<(), SandboxError> {
    let own = spec
        .Linux
        .as_ref()
        .is_some_and(|l| l.Namespaces.iter().any(|n| n.Type == "pid"));
    if sandbox_pidns && own {
        return Err(SandboxError::Invalid(
            "sandbox_pidns: a container that joins the pod's process namespace lists no pid namespace of its own"
                .into(),
        ));
    }
    Ok(())
}

/// In a PID namespace of its own, a container's processes end with its
/// init (the kernel kills the rest); in the pod's they would live on,
/// handed to the pause process. So when `init` exits, the rest of its
/// cgroup is killed, as containerd's runc shim does for such containers.
fn end_with_init(init: &Process, kill: PathBuf) {
    let exit = init.exit.clone();
    tokio::spawn(async move {
        if exit_status(exit).await.is_none() {
            return;
        }
        if let Err(e) = std::fs::write(&kill, "1")
            && e.kind() != std::io::ErrorKind::NotFound
        {
            tracing::warn!("{}: {e}", kill.display());
        }
    });
}

/// Detaches a mount of ours; one already gone is fine.
fn unmount(path: &str) {
    if let Ok(c) = std::ffi::CString::new(path) {
        // SAFETY: a valid C string.
        unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    }
}

fn bind_pause(exe: &Path, rootfs: &Path) -> Result<(), SandboxError> {
    let target = rootfs.join(PAUSE.trim_start_matches('/'));
    std::fs::File::create(&target).map_err(failed("creating the pause file"))?;
    // Read-only needs a remount.
    mount(Some(exe), &target, None, libc::MS_BIND, None)
        .and_then(|()| {
            mount(
                None,
                &target,
                None,
                libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                None,
            )
        })
        .map_err(failed("mounting the pause binary"))
}

/// mount(2).
fn mount(
    source: Option<&Path>,
    target: &Path,
    fstype: Option<&str>,
    flags: libc::c_ulong,
    data: Option<&str>,
) -> std::io::Result<()> {
    let c = |b: &[u8]| {
        std::ffi::CString::new(b).map_err(|_| std::io::Error::other("a mount argument with NUL"))
    };
    let source = source
        .map(|p| c(p.as_os_str().as_encoded_bytes()))
        .transpose()?;
    let target = c(target.as_os_str().as_encoded_bytes())?;
    let fstype = fstype.map(|t| c(t.as_bytes())).transpose()?;
    let data = data.map(|d| c(d.as_bytes())).transpose()?;
    let ptr = |o: &Option<std::ffi::CString>| o.as_ref().map_or(std::ptr::null(), |c| c.as_ptr());
    // SAFETY: valid C strings or null pointers, alive for the call.
    let rc = unsafe {
        libc::mount(
            ptr(&source),
            target.as_ptr(),
            ptr(&fstype),
            flags,
            ptr(&data).cast(),
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Writes the pod's network sysctls (dotted names from
/// [`spec::take_pod_sysctls`], one of Kubernetes' safe ones each) in the
/// VM's network namespace.
fn set_pod_sysctls(sysctls: &[(String, String)]) -> Result<(), SandboxError> {
    for (name, value) in sysctls {
        let path = Path::new("/proc/sys").join(name.replace('.', "/"));
        std::fs::write(&path, value).map_err(|e| {
            SandboxError::Invalid(format!(
                "setting sysctl {name} to the value the host sent: {e}"
            ))
        })?;
        tracing::info!(sysctl = %name, "pod sysctl set in the VM");
    }
    Ok(())
}

/// Unmounts what is mounted under the bundle and removes it.
fn cleanup_bundle(bundle: &Path) {
    if let Ok(mounts) = std::fs::read_to_string("/proc/self/mounts") {
        let mut under: Vec<&str> = mounts
            .lines()
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter(|m| Path::new(m).starts_with(bundle))
            .collect();
        // Deepest first.
        under.sort_by_key(|m| std::cmp::Reverse(m.len()));
        for m in under {
            unmount(m);
        }
    }
    if let Err(e) = std::fs::remove_dir_all(bundle)
        && e.kind() != std::io::ErrorKind::NotFound
    {
        tracing::warn!(bundle = %bundle.display(), "cannot remove the bundle: {e}");
    }
}

/// `key value` lines (cgroup v2 flat-keyed files).
fn read_kv(path: &Path) -> HashMap<String, u64> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_string(), it.next()?.parse().ok()?))
        })
        .collect()
}

fn read_u64(path: &Path) -> Option<u64> {
    std::fs::read_to_string(path).ok()?.trim().parse().ok()
}

/// Kata's cgroup statistics from a cgroup v2 directory.
fn cgroup_stats(dir: &Path) -> agent::StatsContainerResponse {
    let cpu = read_kv(&dir.join("cpu.stat"));
    let mem = read_kv(&dir.join("memory.stat"));
    let events = read_kv(&dir.join("memory.events"));
    let n = |m: &HashMap<String, u64>, k: &str| m.get(k).copied().unwrap_or(0);
    let limit = |f: &str| match std::fs::read_to_string(dir.join(f)) {
        Ok(t) if t.trim() == "max" => u64::MAX,
        Ok(t) => t.trim().parse().unwrap_or(0),
        Err(_) => 0,
    };
    let usage = agent::CpuUsage {
        total_usage: n(&cpu, "usage_usec") * 1000,
        usage_in_usermode: n(&cpu, "user_usec") * 1000,
        usage_in_kernelmode: n(&cpu, "system_usec") * 1000,
        ..Default::default()
    };
    let throttling = agent::ThrottlingData {
        periods: n(&cpu, "nr_periods"),
        throttled_periods: n(&cpu, "nr_throttled"),
        throttled_time: n(&cpu, "throttled_usec") * 1000,
        ..Default::default()
    };
    let memory = agent::MemoryData {
        usage: read_u64(&dir.join("memory.current")).unwrap_or(0),
        max_usage: read_u64(&dir.join("memory.peak")).unwrap_or(0),
        failcnt: n(&events, "max"),
        limit: limit("memory.max"),
        ..Default::default()
    };
    let swap = agent::MemoryData {
        usage: read_u64(&dir.join("memory.swap.current")).unwrap_or(0),
        limit: limit("memory.swap.max"),
        ..Default::default()
    };
    let stats = agent::CgroupStats {
        cpu_stats: Some(agent::CpuStats {
            cpu_usage: Some(usage).into(),
            throttling_data: Some(throttling).into(),
            ..Default::default()
        })
        .into(),
        memory_stats: Some(agent::MemoryStats {
            cache: n(&mem, "file"),
            usage: Some(memory).into(),
            swap_usage: Some(swap).into(),
            use_hierarchy: true,
            stats: mem,
            ..Default::default()
        })
        .into(),
        pids_stats: Some(agent::PidsStats {
            current: read_u64(&dir.join("pids.current")).unwrap_or(0),
            limit: limit("pids.max"),
            ..Default::default()
        })
        .into(),
        ..Default::default()
    };
    agent::StatsContainerResponse {
        cgroup_stats: Some(stats).into(),
        ..Default::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_shared_process_namespace_comes_without_a_pid_entry() {
        let spec = |types: &[&str]| koci::Spec {
            Linux: Some(koci::Linux {
                Namespaces: types
                    .iter()
                    .map(|t| koci::LinuxNamespace {
                        Type: t.to_string(),
                        ..Default::default()
                    })
                    .collect(),
                ..Default::default()
            })
            .into(),
            ..Default::default()
        };
        // As Kata's runtime sends it: joined.
        shared_pidns_request(true, &spec(&["ipc", "mount"])).unwrap();
        // Its own namespace, asked to join as well: refused, not joined.
        let e = shared_pidns_request(true, &spec(&["pid", "ipc"])).unwrap_err();
        assert!(
            e.to_string().contains("lists no pid namespace of its own"),
            "{e}"
        );
        // Not shared: whatever the list, the container's own.
        shared_pidns_request(false, &spec(&["pid", "ipc"])).unwrap();
        shared_pidns_request(false, &spec(&[])).unwrap();
        shared_pidns_request(true, &koci::Spec::default()).unwrap();
    }

    #[tokio::test]
    async fn the_rest_of_a_shared_container_ends_with_its_init() {
        let d = tempfile::tempdir().unwrap();
        let kill = d.path().join("cgroup.kill");
        let (tx, rx) = watch::channel(None);
        let (child, ends) = pipes().unwrap();
        drop(child);
        let init = Process {
            pid: 1,
            stdin: Mutex::new(Some(ends.stdin)),
            stdout: Mutex::new(Some(ends.stdout)),
            stderr: Mutex::new(ends.stderr),
            tty: std::sync::Mutex::new(ends.tty),
            exit: rx,
        };
        end_with_init(&init, kill.clone());
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        assert!(!kill.exists(), "killed before the init exited");
        tx.send(Some(0)).unwrap();
        for _ in 0..100 {
            if kill.exists() {
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        assert_eq!(std::fs::read_to_string(&kill).unwrap(), "1");
    }

    #[tokio::test]
    async fn oom_kills_are_queued_in_order_and_the_exit_waits_for_the_host() {
        let d = tempfile::tempdir().unwrap();
        let q = Arc::new(OomQueue::default());
        let w = OomWatch {
            id: "c1".into(),
            cgroup: d.path().into(),
            kills: AtomicU64::new(0),
            queue: q.clone(),
        };
        // No file, no kill: nothing queued.
        assert!(!w.check());
        std::fs::write(d.path().join("memory.events"), "oom 1\noom_kill 1\n").unwrap();
        assert!(w.check());
        // The same count again is not a new kill.
        assert!(!w.check());
        std::fs::write(d.path().join("memory.events"), "oom 2\noom_kill 2\n").unwrap();
        assert!(w.check());
        q.push("c2");
        // An exit waiting for c1's events goes on only once the host has
        // both: taken, and the host called again (so it handled them).
        let waiter = {
            let q = q.clone();
            tokio::spawn(async move {
                q.until_taken("c1", std::time::Duration::from_secs(30))
                    .await;
            })
        };
        assert_eq!(q.next().await, "c1");
        assert_eq!(q.next().await, "c1");
        tokio::task::yield_now().await;
        assert!(
            !waiter.is_finished(),
            "the exit went on before the host had c1's second event"
        );
        assert_eq!(q.next().await, "c2");
        waiter.await.unwrap();
        // Nothing queued for a container: its exit does not wait.
        let t = std::time::Instant::now();
        q.until_taken("c9", std::time::Duration::from_secs(30))
            .await;
        assert!(t.elapsed() < std::time::Duration::from_secs(30));
        // Nobody takes them: the exit goes on after the limit.
        q.push("c3");
        let t = std::time::Instant::now();
        q.until_taken("c3", std::time::Duration::from_millis(50))
            .await;
        assert!(t.elapsed() >= std::time::Duration::from_millis(50));
        // A host that never takes them does not make the queue grow.
        for _ in 0..1000 {
            q.push("c4");
        }
        assert_eq!(q.queue.lock().unwrap().len(), OomQueue::KEEP);
        // A waiting GetOOMEvent gets the next one.
        let next = {
            let q = q.clone();
            tokio::spawn(async move {
                for _ in 0..OomQueue::KEEP {
                    q.next().await;
                }
                q.next().await
            })
        };
        tokio::task::yield_now().await;
        q.push("c5");
        assert_eq!(next.await.unwrap(), "c5");
    }

    #[test]
    fn cgroup_v2_files_become_kata_stats() {
        let d = tempfile::tempdir().unwrap();
        let w = |n: &str, t: &str| std::fs::write(d.path().join(n), t).unwrap();
        w(
            "cpu.stat",
            "usage_usec 1500\nuser_usec 1000\nsystem_usec 500\nnr_periods 4\nnr_throttled 1\nthrottled_usec 20\n",
        );
        w("memory.current", "4096\n");
        w("memory.max", "max\n");
        w("memory.stat", "anon 1024\nfile 2048\n");
        w("memory.events", "low 0\nhigh 0\nmax 3\noom 1\noom_kill 1\n");
        w("pids.current", "2\n");
        w("pids.max", "100\n");
        let s = cgroup_stats(d.path());
        let cg = s.cgroup_stats.unwrap();
        let cpu = cg.cpu_stats.unwrap();
        assert_eq!(cpu.cpu_usage.total_usage, 1_500_000);
        assert_eq!(cpu.cpu_usage.usage_in_kernelmode, 500_000);
        assert_eq!(cpu.throttling_data.throttled_periods, 1);
        let mem = cg.memory_stats.unwrap();
        assert_eq!(mem.usage.usage, 4096);
        assert_eq!(mem.usage.limit, u64::MAX);
        assert_eq!(mem.usage.failcnt, 3);
        assert_eq!(mem.cache, 2048);
        assert_eq!(cg.pids_stats.limit, 100);
        assert_eq!(cg.pids_stats.current, 2);
        // A missing cgroup gives zeros, not an error.
        let none = cgroup_stats(Path::new("/nonexistent"));
        assert_eq!(none.cgroup_stats.unwrap().pids_stats.current, 0);
    }
}
