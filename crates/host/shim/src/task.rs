//! containerd's task API (`containerd.task.v2.Task`) for one pod: the
//! pod's sandbox container (or a lone `ctr run` container) brings the VM
//! up, every container and exec of the pod becomes a call to the Kata
//! agent inside it, and the events containerd needs are published in its
//! order (create, start, exit, delete; exec-added, exec-started, exit).

use crate::config::{Config, PodSettings};
use crate::events::Publisher;
use crate::spec::{self, Kind, Meta};
use crate::stdio;
use cocoon_hypervisor::{Mode, Qemu, UserNetwork, VmSpec};
use cocoon_pod::kata::{agent, oci as pb};
use cocoon_pod::{AgentClient, PodVm, container::guest_pull_storage};
use containerd_shim::asynchronous::ExitSignal;
use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::well_known_types::any::Any;
use containerd_shim_protos::protobuf::well_known_types::timestamp::Timestamp;
use containerd_shim_protos::protobuf::{MessageDyn, MessageField};
use containerd_shim_protos::shim_async::Task;
use containerd_shim_protos::topics;
use containerd_shim_protos::ttrpc::{self, r#async::TtrpcContext};

type TtrpcResult<T> = ttrpc::Result<T>;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::watch;

/// Where a process stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Status {
    Created,
    Running,
    Stopped,
}

#[derive(Debug, Clone, Default)]
struct Exit {
    status: u32,
    at: Option<Timestamp>,
}

/// One process: a container's init (empty exec id) or an exec.
struct Proc {
    exec_id: String,
    io: stdio::Paths,
    /// The exec's process; `None` for an init.
    spec: Option<pb::Process>,
    status: Mutex<Status>,
    exit: watch::Sender<Option<Exit>>,
    /// Ends the stdin relay (CloseIO).
    stdin_close: Mutex<Option<tokio::sync::oneshot::Sender<()>>>,
    /// CloseIO came before Start: close stdin as soon as it is relayed.
    close_pending: std::sync::atomic::AtomicBool,
    /// The start event is out: an exit may follow it.
    start_published: watch::Sender<bool>,
    /// The exit event is out: Wait may return (so a Delete that follows
    /// a Wait cannot publish its event before the exit's).
    exit_published: watch::Sender<bool>,
}

impl Proc {
    fn new(exec_id: &str, io: stdio::Paths, spec: Option<pb::Process>) -> Arc<Self> {
        Arc::new(Self {
            exec_id: exec_id.into(),
            io,
            spec,
            status: Mutex::new(Status::Created),
            exit: watch::channel(None).0,
            stdin_close: Mutex::new(None),
            close_pending: std::sync::atomic::AtomicBool::new(false),
            start_published: watch::channel(false).0,
            exit_published: watch::channel(false).0,
        })
    }

    fn status(&self) -> Status {
        *self.status.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn set_status(&self, s: Status) {
        *self.status.lock().unwrap_or_else(|e| e.into_inner()) = s;
    }

    fn exited(&self) -> Option<Exit> {
        self.exit.borrow().clone()
    }

    /// Records the exit once; false when it was already recorded.
    fn record_exit(&self, status: u32) -> bool {
        let mut first = false;
        self.exit.send_if_modified(|e| {
            if e.is_some() {
                return false;
            }
            *e = Some(Exit {
                status,
                at: Some(Timestamp::now()),
            });
            first = true;
            true
        });
        if first {
            self.set_status(Status::Stopped);
        }
        first
    }

    async fn wait_exit(&self) -> Exit {
        let mut rx = self.exit.subscribe();
        let e = loop {
            if let Some(e) = rx.borrow_and_update().clone() {
                break e;
            }
            if rx.changed().await.is_err() {
                return Exit::default();
            }
        };
        self.exit_announced().await;
        e
    }

    /// Waits (a bounded time) until the exit event of an exited process
    /// is out.
    async fn exit_announced(&self) {
        let mut published = self.exit_published.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(10), published.wait_for(|s| *s)).await;
    }
}

/// One container of the pod.
struct Container {
    id: String,
    bundle: String,
    meta: Meta,
    init: Arc<Proc>,
    execs: Mutex<HashMap<String, Arc<Proc>>>,
}

impl Container {
    fn process(&self, exec_id: &str) -> TtrpcResult<Arc<Proc>> {
        if exec_id.is_empty() {
            return Ok(self.init.clone());
        }
        self.execs
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(exec_id)
            .cloned()
            .ok_or_else(|| not_found(format!("exec {exec_id} of container {}", self.id)))
    }
}

/// The pod's VM.
struct Pod {
    vm: PodVm,
    console: PathBuf,
}

impl Pod {
    fn agent(&self) -> &AgentClient {
        &self.vm.agent
    }
}

/// The shim's task service.
#[derive(Clone)]
pub struct Service(Arc<Inner>);

struct Inner {
    namespace: String,
    publisher: Publisher,
    exit: Arc<ExitSignal>,
    pod: Mutex<Option<Arc<Pod>>>,
    containers: Mutex<HashMap<String, Arc<Container>>>,
    /// Serializes VM start-up and teardown against container creation.
    lifecycle: tokio::sync::Mutex<()>,
    /// OOM events received from the guest, and those published: an exit
    /// waits until every OOM received before it is out (the guest sends
    /// a container's OOM before its exit).
    oom_received: std::sync::atomic::AtomicU64,
    oom_published: watch::Sender<u64>,
    /// The guard that cleans up if this shim is killed outright.
    guard: Option<crate::guard::Guard>,
}

fn rpc(code: ttrpc::Code, msg: impl Into<String>) -> ttrpc::Error {
    ttrpc::Error::RpcStatus(ttrpc::get_status(code, msg.into()))
}

fn not_found(what: String) -> ttrpc::Error {
    rpc(ttrpc::Code::NOT_FOUND, format!("{what}: not found"))
}

fn failed(e: impl std::fmt::Display) -> ttrpc::Error {
    rpc(ttrpc::Code::FAILED_PRECONDITION, e.to_string())
}

fn internal(e: impl std::fmt::Display) -> ttrpc::Error {
    rpc(ttrpc::Code::INTERNAL, e.to_string())
}

fn unimplemented(call: &str) -> ttrpc::Error {
    rpc(
        ttrpc::Code::UNIMPLEMENTED,
        format!("{call} is not supported by the cocoon runtime"),
    )
}

/// The `ConfigPath` of containerd's runtime options
/// (`runtimeoptions.v1.Options{type_url = 1, config_path = 2}`).
pub fn config_path(options: &MessageField<Any>) -> Option<PathBuf> {
    let any = options.as_ref()?;
    let mut input = containerd_shim_protos::protobuf::CodedInputStream::from_bytes(&any.value);
    let mut path = None;
    while let Ok(Some(tag)) = input.read_raw_tag_or_eof() {
        match (tag >> 3, tag & 7) {
            (2, 2) => path = input.read_string().ok(),
            (_, 2) => input.read_bytes().ok().map(drop)?,
            (_, 0) => input.read_raw_varint64().ok().map(|_| ())?,
            _ => return None,
        };
    }
    path.filter(|p| !p.is_empty()).map(PathBuf::from)
}

/// What a Start starts, for its error message.
fn start_what(exec_id: &str) -> String {
    if exec_id.is_empty() {
        "starting the init".into()
    } else {
        format!("starting exec {exec_id}")
    }
}

/// The end of a console log for an error message: a kernel panic's
/// reason line (the backtrace after it says little), else the last lines.
fn console_tail(p: &Path) -> String {
    let text = std::fs::read(p).unwrap_or_default();
    let text = String::from_utf8_lossy(&text);
    let lines: Vec<&str> = text.lines().collect();
    // The guest agent's own panic message comes before the kernel's
    // (init died), which follows a few lines later.
    let agent = lines.iter().position(|l| l.contains("' panicked at "));
    let kernel = lines.iter().position(|l| l.contains("Kernel panic"));
    let from = match (agent, kernel) {
        (Some(i), _) => i,
        (None, Some(i)) => i.saturating_sub(2),
        (None, None) => lines.len().saturating_sub(12),
    };
    lines[from..]
        .iter()
        .take(12)
        .copied()
        .collect::<Vec<_>>()
        .join("\n")
}

fn timestamp(e: &Exit) -> MessageField<Timestamp> {
    e.at.clone().into()
}

impl Service {
    /// A service publishing through `publisher` for containerd namespace
    /// `namespace`; `exit` ends the shim.
    pub fn new(
        namespace: &str,
        publisher: Publisher,
        exit: Arc<ExitSignal>,
        guard: Option<crate::guard::Guard>,
    ) -> Self {
        Self(Arc::new(Inner {
            namespace: namespace.into(),
            publisher,
            exit,
            pod: Mutex::new(None),
            containers: Mutex::new(HashMap::new()),
            lifecycle: tokio::sync::Mutex::new(()),
            oom_received: std::sync::atomic::AtomicU64::new(0),
            oom_published: watch::channel(0).0,
            guard,
        }))
    }

    /// The shim's guard, if it has one.
    pub fn guard(&self) -> Option<&crate::guard::Guard> {
        self.0.guard.as_ref()
    }
}

impl Inner {
    fn publish(&self, topic: &str, event: Box<dyn MessageDyn>) {
        self.publisher.publish(topic, &self.namespace, event);
    }

    fn pod(&self) -> TtrpcResult<Arc<Pod>> {
        self.pod
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .ok_or_else(|| failed("the pod VM is not running"))
    }

    fn container(&self, id: &str) -> TtrpcResult<Arc<Container>> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(id)
            .cloned()
            .ok_or_else(|| not_found(format!("container {id}")))
    }

    fn all_containers(&self) -> Vec<Arc<Container>> {
        self.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// The pid containerd sees for every task: the VMM's.
    fn task_pid(&self) -> u32 {
        self.pod
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .as_ref()
            .and_then(|p| p.vm.vm().pids().first().copied())
            .unwrap_or_else(std::process::id)
    }

    /// Boots the pod's VM and prepares its sandbox in the guest.
    async fn start_pod(
        self: &Arc<Self>,
        cfg: &Config,
        sandbox_id: &str,
        hostname: &str,
        netns: Option<&str>,
        settings: PodSettings,
    ) -> TtrpcResult<Arc<Pod>> {
        std::fs::create_dir_all(&cfg.state_dir)
            .map_err(|e| internal(format!("creating {}: {e}", cfg.state_dir.display())))?;
        cocoon_hypervisor::qemu::gc_stale(&cfg.state_dir);
        if let Some(guard) = &self.guard {
            guard.pod(&cfg.state_dir, sandbox_id);
        }
        let img = &cfg.guest_image;
        let cmdline = std::fs::read_to_string(img.join("cmdline")).map_err(|e| {
            failed(format!(
                "the guest image {} cannot be read ({e}): set guest_image in the shim \
                 configuration to a directory made by `cocoon guest build`",
                img.display()
            ))
        })?;
        let cmdline = match settings.kernel_params.trim() {
            "" => cmdline.trim().to_string(),
            extra => format!("{} {extra}", cmdline.trim()),
        };
        let console = cfg.state_dir.join(format!("{sandbox_id}.console.log"));
        let spec = VmSpec {
            id: sandbox_id.into(),
            mode: cfg.mode,
            accel: None,
            vcpus: settings.vcpus,
            memory_mib: settings.memory_mib,
            kernel: img.join("vmlinuz"),
            initrd: img.join("initrd.img"),
            cmdline,
            firmware: cfg.firmware.clone(),
            initdata: settings.initdata.clone(),
            state_dir: cfg.state_dir.join(sandbox_id),
            console_log: console.clone(),
            network: user_network(&cfg.host_ports)?,
            vtpm_ca: (cfg.mode == Mode::Vtpm).then(|| cfg.vtpm_ca.clone()),
            pod_network: None,
        };
        let t0 = std::time::Instant::now();
        let pod_net = match netns {
            Some(ns) => {
                let ns = PathBuf::from(ns);
                let net = tokio::task::spawn_blocking(move || cocoon_pod::network::attach(&ns))
                    .await
                    .map_err(internal)?
                    .map_err(failed)?;
                Some(net)
            }
            None => None,
        };
        let mut spec = spec;
        spec.pod_network = pod_net.as_ref().map(|n| n.nic());
        let qemu = Qemu::new().map_err(failed)?;
        let boot_failed = |what: String| {
            let tail = console_tail(&console);
            let _ = std::fs::remove_file(&console);
            failed(format!("{what}; the guest console ended with:\n{tail}"))
        };
        // The tap's link and its mirroring are set up while the VM boots.
        let mirrored = pod_net
            .clone()
            .map(|n| tokio::task::spawn_blocking(move || cocoon_pod::network::mirror(&n)));
        let started = PodVm::start(&qemu, spec, Duration::from_secs(cfg.boot_timeout_secs)).await;
        // The mirroring is waited for on every path: nothing of it runs on
        // after this call answers.
        let mirror = match mirrored {
            Some(m) => m.await.map_err(internal).and_then(|r| r.map_err(failed)),
            None => Ok(()),
        };
        let vm = started.map_err(|e| boot_failed(format!("the pod VM did not start: {e}")))?;
        if let Err(e) = mirror {
            let _ = vm.stop().await;
            let _ = std::fs::remove_file(&console);
            return Err(e);
        }
        tracing::info!(
            sandbox = sandbox_id,
            boot_ms = vm.boot_time.as_millis() as u64,
            since_start_ms = t0.elapsed().as_millis() as u64,
            "pod VM up"
        );
        let pod = Arc::new(Pod {
            vm,
            console: console.clone(),
        });
        let prepared = async {
            // The legacy policy annotation first, as Kata sends it.
            if let Some(p) = &settings.agent_policy {
                pod.agent().set_policy(p).await?;
            }
            if !cfg.host_ports.is_empty() {
                pod.agent()
                    .setup_user_network(&cfg.host_ports, pod_net.is_none())
                    .await?;
            }
            if let Some(net) = &pod_net {
                pod.agent().setup_pod_network(net).await?;
            }
            pod.agent().create_sandbox(sandbox_id, hostname).await
        }
        .await;
        if let Err(e) = prepared {
            let _ = pod.vm.vm().stop().await;
            return Err(boot_failed(format!("preparing the pod in the guest: {e}")));
        }
        tracing::info!(
            sandbox = sandbox_id,
            since_start_ms = t0.elapsed().as_millis() as u64,
            "pod network and sandbox set up in the guest"
        );
        self.watch_vm(pod.clone());
        self.watch_oom(pod.agent().clone());
        Ok(pod)
    }

    /// When the VM ends on its own (guest panic, VMM killed), every
    /// process in it has ended: containerd learns it through exits.
    fn watch_vm(self: &Arc<Self>, pod: Arc<Pod>) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            let how = pod.vm.vm().wait().await;
            let Some(me) = me.upgrade() else { return };
            let current = me.pod.lock().unwrap_or_else(|e| e.into_inner()).clone();
            if !current.is_some_and(|p| Arc::ptr_eq(&p, &pod)) {
                return; // stopped on purpose
            }
            // The guest's last words (a panic message of PID 1 is there):
            // the console file goes with the pod.
            tracing::warn!(?how, console = ?console_tail(&pod.console), "the pod VM ended");
            for c in me.all_containers() {
                let mut procs = vec![c.init.clone()];
                procs.extend(
                    c.execs
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .values()
                        .cloned(),
                );
                for p in procs {
                    if p.status() == Status::Running && p.record_exit(255) {
                        me.publish_exit(&c, &p).await;
                    }
                }
            }
        });
    }

    fn watch_oom(self: &Arc<Self>, agent: AgentClient) {
        let me = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let r = agent
                    .agent
                    .get_oom_event(
                        ttrpc::context::Context::default(),
                        &agent::GetOOMEventRequest::new(),
                    )
                    .await;
                let (Ok(oom), Some(me)) = (r, me.upgrade()) else {
                    return;
                };
                me.oom_received
                    .fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                tracing::info!(container = %oom.container_id, "out of memory in the guest");
                me.publish(
                    topics::TASK_OOM_EVENT_TOPIC,
                    Box::new(ev::TaskOOM {
                        container_id: oom.container_id,
                        ..Default::default()
                    }),
                );
                me.oom_published.send_modify(|n| *n += 1);
            }
        });
    }

    async fn publish_exit(&self, c: &Container, p: &Proc) {
        // containerd must hear of the start before the exit.
        let mut started = p.start_published.subscribe();
        let _ = tokio::time::timeout(Duration::from_secs(10), started.wait_for(|s| *s)).await;
        // ... and of an OOM kill that ended the process before its exit.
        let received = self.oom_received.load(std::sync::atomic::Ordering::SeqCst);
        let mut published = self.oom_published.subscribe();
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            published.wait_for(|n| *n >= received),
        )
        .await;
        let e = p.exited().unwrap_or_default();
        let event = ev::TaskExit {
            container_id: c.id.clone(),
            id: if p.exec_id.is_empty() {
                c.id.clone()
            } else {
                p.exec_id.clone()
            },
            pid: self.task_pid(),
            exit_status: e.status,
            exited_at: timestamp(&e),
            ..Default::default()
        };
        self.publish(topics::TASK_EXIT_EVENT_TOPIC, Box::new(event));
        p.exit_published.send_replace(true);
    }

    /// Relays the process's streams and, once it exits and its output is
    /// drained, records and publishes the exit.
    fn run_process(
        self: &Arc<Self>,
        agent: AgentClient,
        c: Arc<Container>,
        p: Arc<Proc>,
        opened: stdio::Opened,
    ) {
        let relays = opened.spawn(agent.clone(), &c.id, &p.exec_id);
        let mut close = relays.stdin_close;
        if p.close_pending.load(std::sync::atomic::Ordering::SeqCst)
            && let Some(tx) = close.take()
        {
            let _ = tx.send(());
        }
        *p.stdin_close.lock().unwrap_or_else(|e| e.into_inner()) = close;
        let me = self.clone();
        tokio::spawn(async move {
            let status = match agent.wait(&c.id, &p.exec_id).await {
                Ok(s) => u32::try_from(s).unwrap_or(255),
                Err(e) => {
                    tracing::warn!(container = %c.id, exec = %p.exec_id, error = %e, "waiting for the process failed");
                    255
                }
            };
            // Output written just before the exit still reaches the fifos
            // before containerd hears of it; a daemon child keeping the
            // streams open does not hold the exit up for long.
            let _ = tokio::time::timeout(Duration::from_secs(2), relays.output).await;
            // Nobody writes to an exited process: end its stdin relay.
            drop(
                p.stdin_close
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .take(),
            );
            if p.record_exit(status) {
                me.publish_exit(&c, &p).await;
            }
        });
    }

    /// Stops the VM (after the pod's last container, or on shutdown).
    async fn stop_pod(&self) {
        let pod = self.pod.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(pod) = pod {
            let _ = pod
                .agent()
                .agent
                .destroy_sandbox(
                    cocoon_pod::ctx(Duration::from_secs(10)),
                    &agent::DestroySandboxRequest::new(),
                )
                .await;
            if let Err(e) = pod.vm.vm().stop().await {
                tracing::warn!(error = %e, "stopping the pod VM");
            }
            let _ = std::fs::remove_file(&pod.console);
        }
    }
}

#[async_trait::async_trait]
impl Task for Service {
    async fn create(
        &self,
        _ctx: &TtrpcContext,
        req: api::CreateTaskRequest,
    ) -> TtrpcResult<api::CreateTaskResponse> {
        let me = &self.0;
        if !req.checkpoint.is_empty() || !req.parent_checkpoint.is_empty() {
            return Err(unimplemented("restoring from a checkpoint"));
        }
        let bundle = PathBuf::from(&req.bundle);
        let bytes = std::fs::read(bundle.join("config.json"))
            .map_err(|e| failed(format!("reading {}/config.json: {e}", req.bundle)))?;
        let (mut ospec, meta) = spec::from_json(&bytes).map_err(failed)?;
        let io = stdio::Paths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        io.check().map_err(failed)?;
        let _guard = me.lifecycle.lock().await;
        if me
            .containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .contains_key(&req.id)
        {
            return Err(rpc(
                ttrpc::Code::ALREADY_EXISTS,
                format!("container {} already exists", req.id),
            ));
        }
        let pod = match meta.kind {
            Kind::Pause | Kind::Standalone => {
                if me.pod.lock().unwrap_or_else(|e| e.into_inner()).is_some() {
                    return Err(failed("this shim already runs a pod VM"));
                }
                let cfg = Config::load(config_path(&req.options).as_deref()).map_err(failed)?;
                // For `delete` after a shim died: where its VM's state is.
                std::fs::write(
                    bundle.join(crate::shim::STATE_FILE),
                    cfg.state_dir.as_os_str().as_encoded_bytes(),
                )
                .map_err(|e| internal(format!("writing {}: {e}", crate::shim::STATE_FILE)))?;
                let settings = cfg.pod(&ospec.Annotations).map_err(failed)?;
                let sandbox_id = meta.sandbox_id.clone().unwrap_or_else(|| req.id.clone());
                let hostname = if ospec.Hostname.is_empty() {
                    req.id.clone()
                } else {
                    ospec.Hostname.clone()
                };
                let pod = me
                    .start_pod(
                        &cfg,
                        &sandbox_id,
                        &hostname,
                        meta.netns.as_deref(),
                        settings,
                    )
                    .await?;
                *me.pod.lock().unwrap_or_else(|e| e.into_inner()) = Some(pod.clone());
                pod
            }
            Kind::Container => me.pod()?,
        };
        let storages = match (meta.kind, &meta.image) {
            (Kind::Pause, _) => Vec::new(),
            (_, Some(image)) => vec![guest_pull_storage(&req.id, image)],
            (_, None) => {
                if meta.kind == Kind::Standalone {
                    me.stop_pod().await;
                }
                return Err(failed(format!(
                    "container {} names no image: the cocoon runtime pulls images inside the pod VM \
                     and needs the {} annotation (CRI sets it; with ctr pass \
                     --annotation {}=REF)",
                    req.id,
                    spec::annotations::IMAGE_NAME,
                    spec::annotations::IMAGE_NAME
                )));
            }
        };
        if let Some(p) = ospec.Process.as_mut() {
            p.Terminal = req.terminal;
        }
        let t0 = std::time::Instant::now();
        let r = pod
            .agent()
            .agent
            .create_container(
                ttrpc::context::Context::default(),
                &agent::CreateContainerRequest {
                    container_id: req.id.clone(),
                    exec_id: req.id.clone(),
                    OCI: Some(ospec).into(),
                    storages,
                    sandbox_pidns: meta.sandbox_pidns,
                    ..Default::default()
                },
            )
            .await;
        if let Err(e) = r {
            if matches!(meta.kind, Kind::Pause | Kind::Standalone) {
                me.stop_pod().await;
            }
            return Err(failed(format!(
                "creating container {} in the pod VM: {}",
                req.id,
                cocoon_pod::describe(e)
            )));
        }
        tracing::info!(
            container = %req.id,
            ms = t0.elapsed().as_millis() as u64,
            "container created in the pod VM"
        );
        let c = Arc::new(Container {
            id: req.id.clone(),
            bundle: req.bundle.clone(),
            meta,
            init: Proc::new("", io, None),
            execs: Mutex::new(HashMap::new()),
        });
        me.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(req.id.clone(), c);
        let pid = me.task_pid();
        me.publish(
            topics::TASK_CREATE_EVENT_TOPIC,
            Box::new(ev::TaskCreate {
                container_id: req.id.clone(),
                bundle: req.bundle.clone(),
                rootfs: req.rootfs.clone(),
                io: Some(ev::TaskIO {
                    stdin: req.stdin.clone(),
                    stdout: req.stdout.clone(),
                    stderr: req.stderr.clone(),
                    terminal: req.terminal,
                    ..Default::default()
                })
                .into(),
                pid,
                ..Default::default()
            }),
        );
        Ok(api::CreateTaskResponse {
            pid,
            ..Default::default()
        })
    }

    async fn start(
        &self,
        _ctx: &TtrpcContext,
        req: api::StartRequest,
    ) -> TtrpcResult<api::StartResponse> {
        let me = &self.0;
        let c = me.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if p.status() != Status::Created {
            return Err(failed(format!(
                "process {} of {} was already started",
                req.exec_id, req.id
            )));
        }
        let pod = me.pod()?;
        let agent = pod.agent().clone();
        let opened = stdio::open(&p.io).map_err(failed)?;
        let started = match &p.spec {
            None => agent.start_container(&req.id).await,
            Some(process) => {
                agent
                    .exec_process(&req.id, &req.exec_id, process.clone())
                    .await
            }
        };
        started.map_err(|e| failed(format!("{} of {}: {e}", start_what(&req.exec_id), req.id)))?;
        p.set_status(Status::Running);
        me.run_process(agent, c.clone(), p.clone(), opened);
        let pid = me.task_pid();
        if req.exec_id.is_empty() {
            me.publish(
                topics::TASK_START_EVENT_TOPIC,
                Box::new(ev::TaskStart {
                    container_id: req.id.clone(),
                    pid,
                    ..Default::default()
                }),
            );
        } else {
            me.publish(
                topics::TASK_EXEC_STARTED_EVENT_TOPIC,
                Box::new(ev::TaskExecStarted {
                    container_id: req.id.clone(),
                    exec_id: req.exec_id.clone(),
                    pid,
                    ..Default::default()
                }),
            );
        }
        p.start_published.send_replace(true);
        Ok(api::StartResponse {
            pid,
            ..Default::default()
        })
    }

    async fn delete(
        &self,
        _ctx: &TtrpcContext,
        req: api::DeleteRequest,
    ) -> TtrpcResult<api::DeleteResponse> {
        let me = &self.0;
        let c = me.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if p.status() == Status::Running {
            return Err(failed(format!(
                "process {} of {} is still running",
                req.exec_id, req.id
            )));
        }
        if p.exited().is_some() {
            p.exit_announced().await;
        }
        let e = p.exited().unwrap_or_default();
        let pid = me.task_pid();
        if !req.exec_id.is_empty() {
            c.execs
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&req.exec_id);
            return Ok(api::DeleteResponse {
                pid,
                exit_status: e.status,
                exited_at: timestamp(&e),
                ..Default::default()
            });
        }
        let _guard = me.lifecycle.lock().await;
        if let Ok(pod) = me.pod()
            && let Err(err) = pod.agent().remove_container(&req.id).await
        {
            tracing::warn!(container = %req.id, error = %err, "removing the container in the guest");
        }
        me.containers
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&req.id);
        if matches!(c.meta.kind, Kind::Pause | Kind::Standalone) {
            me.stop_pod().await;
        }
        me.publish(
            topics::TASK_DELETE_EVENT_TOPIC,
            Box::new(ev::TaskDelete {
                container_id: req.id.clone(),
                pid,
                exit_status: e.status,
                exited_at: timestamp(&e),
                id: req.id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::DeleteResponse {
            pid,
            exit_status: e.status,
            exited_at: timestamp(&e),
            ..Default::default()
        })
    }

    async fn exec(
        &self,
        _ctx: &TtrpcContext,
        req: api::ExecProcessRequest,
    ) -> TtrpcResult<api::Empty> {
        let me = &self.0;
        let c = me.container(&req.id)?;
        if req.exec_id.is_empty() || req.exec_id == req.id {
            return Err(failed("an exec needs an id of its own"));
        }
        let process = spec::process_from_json(&req.spec.value).map_err(failed)?;
        let mut process = process;
        process.Terminal = req.terminal;
        let io = stdio::Paths {
            stdin: req.stdin.clone(),
            stdout: req.stdout.clone(),
            stderr: req.stderr.clone(),
            terminal: req.terminal,
        };
        io.check().map_err(failed)?;
        {
            let mut execs = c.execs.lock().unwrap_or_else(|e| e.into_inner());
            if execs.contains_key(&req.exec_id) {
                return Err(rpc(
                    ttrpc::Code::ALREADY_EXISTS,
                    format!("exec {} already exists", req.exec_id),
                ));
            }
            execs.insert(
                req.exec_id.clone(),
                Proc::new(&req.exec_id, io, Some(process)),
            );
        }
        me.publish(
            topics::TASK_EXEC_ADDED_EVENT_TOPIC,
            Box::new(ev::TaskExecAdded {
                container_id: req.id.clone(),
                exec_id: req.exec_id.clone(),
                ..Default::default()
            }),
        );
        Ok(api::Empty::new())
    }

    async fn state(
        &self,
        _ctx: &TtrpcContext,
        req: api::StateRequest,
    ) -> TtrpcResult<api::StateResponse> {
        let me = &self.0;
        let c = me.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let e = p.exited().unwrap_or_default();
        let status = match p.status() {
            Status::Created => api::Status::CREATED,
            Status::Running => api::Status::RUNNING,
            Status::Stopped => api::Status::STOPPED,
        };
        Ok(api::StateResponse {
            id: req.id.clone(),
            bundle: c.bundle.clone(),
            pid: me.task_pid(),
            status: status.into(),
            stdin: p.io.stdin.clone(),
            stdout: p.io.stdout.clone(),
            stderr: p.io.stderr.clone(),
            terminal: p.io.terminal,
            exit_status: e.status,
            exited_at: timestamp(&e),
            exec_id: req.exec_id.clone(),
            ..Default::default()
        })
    }

    async fn kill(&self, _ctx: &TtrpcContext, req: api::KillRequest) -> TtrpcResult<api::Empty> {
        let me = &self.0;
        let c = me.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        match p.status() {
            Status::Stopped => {
                return Err(not_found(format!(
                    "process {} of {} (it has exited)",
                    req.exec_id, req.id
                )));
            }
            Status::Created if req.exec_id.is_empty() => {}
            Status::Created => return Err(failed(format!("exec {} was not started", req.exec_id))),
            Status::Running => {}
        }
        let pod = me.pod()?;
        // `all`: every process of the container (an empty exec id reaches
        // them all in the agent).
        let exec = if req.all { "" } else { req.exec_id.as_str() };
        pod.agent()
            .signal(&req.id, exec, req.signal)
            .await
            .map_err(|e| failed(format!("signal {} to {}: {e}", req.signal, req.id)))?;
        Ok(api::Empty::new())
    }

    async fn pids(
        &self,
        _ctx: &TtrpcContext,
        req: api::PidsRequest,
    ) -> TtrpcResult<api::PidsResponse> {
        let me = &self.0;
        me.container(&req.id)?;
        Ok(api::PidsResponse {
            processes: vec![containerd_shim_protos::api::ProcessInfo {
                pid: me.task_pid(),
                ..Default::default()
            }],
            ..Default::default()
        })
    }

    async fn resize_pty(
        &self,
        _ctx: &TtrpcContext,
        req: api::ResizePtyRequest,
    ) -> TtrpcResult<api::Empty> {
        let me = &self.0;
        me.container(&req.id)?;
        me.pod()?
            .agent()
            .resize(&req.id, &req.exec_id, req.height, req.width)
            .await
            .map_err(|e| failed(e.to_string()))?;
        Ok(api::Empty::new())
    }

    async fn close_io(
        &self,
        _ctx: &TtrpcContext,
        req: api::CloseIORequest,
    ) -> TtrpcResult<api::Empty> {
        let me = &self.0;
        let c = me.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        if req.stdin {
            let close = p
                .stdin_close
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take();
            match close {
                // The relay drains what is buffered, then closes the guest's stdin.
                Some(tx) => {
                    let _ = tx.send(());
                }
                None if p.status() == Status::Created => {
                    p.close_pending
                        .store(true, std::sync::atomic::Ordering::SeqCst);
                }
                None => {
                    if p.status() == Status::Running {
                        me.pod()?
                            .agent()
                            .close_stdin(&req.id, &req.exec_id)
                            .await
                            .map_err(failed)?;
                    }
                }
            }
        }
        Ok(api::Empty::new())
    }

    async fn update(
        &self,
        _ctx: &TtrpcContext,
        req: api::UpdateTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        let me = &self.0;
        me.container(&req.id)?;
        let resources = spec::resources_from_json(&req.resources.value).map_err(failed)?;
        me.pod()?
            .agent()
            .agent
            .update_container(
                cocoon_pod::ctx(Duration::from_secs(30)),
                &agent::UpdateContainerRequest {
                    container_id: req.id.clone(),
                    resources: Some(resources).into(),
                    ..Default::default()
                },
            )
            .await
            .map_err(|e| failed(cocoon_pod::describe(e)))?;
        Ok(api::Empty::new())
    }

    async fn wait(
        &self,
        _ctx: &TtrpcContext,
        req: api::WaitRequest,
    ) -> TtrpcResult<api::WaitResponse> {
        let c = self.0.container(&req.id)?;
        let p = c.process(&req.exec_id)?;
        let e = p.wait_exit().await;
        Ok(api::WaitResponse {
            exit_status: e.status,
            exited_at: timestamp(&e),
            ..Default::default()
        })
    }

    async fn stats(
        &self,
        _ctx: &TtrpcContext,
        req: api::StatsRequest,
    ) -> TtrpcResult<api::StatsResponse> {
        let me = &self.0;
        me.container(&req.id)?;
        let s = me.pod()?.agent().stats(&req.id).await.map_err(failed)?;
        let metrics = crate::stats::metrics_v1(&s);
        let any = Any {
            type_url: crate::stats::METRICS_V1_TYPE.into(),
            value: containerd_shim_protos::protobuf::Message::write_to_bytes(&metrics)
                .map_err(internal)?,
            ..Default::default()
        };
        Ok(api::StatsResponse {
            stats: Some(any).into(),
            ..Default::default()
        })
    }

    async fn connect(
        &self,
        _ctx: &TtrpcContext,
        req: api::ConnectRequest,
    ) -> TtrpcResult<api::ConnectResponse> {
        let me = &self.0;
        me.container(&req.id)?;
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid: me.task_pid(),
            ..Default::default()
        })
    }

    async fn shutdown(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ShutdownRequest,
    ) -> TtrpcResult<api::Empty> {
        let me = &self.0;
        // Containers left after the VM stopped are gone with it.
        let vm_running = me.pod.lock().unwrap_or_else(|e| e.into_inner()).is_some();
        if vm_running
            && !me
                .containers
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .is_empty()
        {
            return Ok(api::Empty::new());
        }
        me.stop_pod().await;
        me.exit.signal();
        Ok(api::Empty::new())
    }

    async fn pause(&self, _ctx: &TtrpcContext, _req: api::PauseRequest) -> TtrpcResult<api::Empty> {
        Err(unimplemented("pause"))
    }

    async fn resume(
        &self,
        _ctx: &TtrpcContext,
        _req: api::ResumeRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(unimplemented("resume"))
    }

    async fn checkpoint(
        &self,
        _ctx: &TtrpcContext,
        _req: api::CheckpointTaskRequest,
    ) -> TtrpcResult<api::Empty> {
        Err(unimplemented("checkpoint"))
    }
}

/// The VM's user network (QEMU's, restricted: nothing on the host or
/// beyond is reachable through it) exists only to carry `host_ports` to
/// the host's loopback, so without them there is none: one NIC fewer for
/// the guest to probe, and no user-mode network stack in QEMU for it.
fn user_network(host_ports: &[u16]) -> TtrpcResult<Option<UserNetwork>> {
    if host_ports.is_empty() {
        return Ok(None);
    }
    let relay = std::env::current_exe()
        .map_err(internal)?
        .display()
        .to_string();
    Ok(Some(UserNetwork {
        forwards: host_ports.to_vec(),
        relay: vec![relay, crate::RELAY_ARG.into()],
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_user_network_only_carries_host_ports() {
        assert!(user_network(&[]).unwrap().is_none());
        let net = user_network(&[5000, 8080]).unwrap().unwrap();
        assert_eq!(net.forwards, vec![5000, 8080]);
        assert_eq!(net.relay.len(), 2);
        assert_eq!(net.relay[1], crate::RELAY_ARG);
    }

    #[test]
    fn config_path_comes_from_containerds_runtime_options() {
        // runtimeoptions.v1.Options{type_url = 1, config_path = 2}
        let mut value = vec![0x0a, 3, b'a', b'b', b'c', 0x12, 4];
        value.extend_from_slice(b"/x.t");
        let any = Any {
            type_url: "runtimeoptions.v1.Options".into(),
            value,
            ..Default::default()
        };
        assert_eq!(config_path(&Some(any).into()), Some(PathBuf::from("/x.t")));
        assert_eq!(config_path(&MessageField::none()), None);
        let junk = Any {
            value: vec![0x12, 50, 1],
            ..Default::default()
        };
        assert_eq!(config_path(&Some(junk).into()), None);
    }

    #[test]
    fn a_panicking_guest_is_reported_by_its_panic_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("c.log");
        let mut text: Vec<String> = (0..40).map(|i| format!("boot line {i}")).collect();
        text.push("Kernel panic - not syncing: No working init found.".into());
        text.extend((0..30).map(|i| format!("trace {i}")));
        std::fs::write(&p, text.join("\n")).unwrap();
        let t = console_tail(&p);
        assert!(
            t.contains("Kernel panic - not syncing: No working init found."),
            "{t}"
        );
        // The agent's panic message, then the kernel's: both shown.
        let mut text: Vec<String> = (0..40).map(|i| format!("boot line {i}")).collect();
        text.push("thread 'main' panicked at crates/guest/agent/src/x.rs:1:2:".into());
        text.push("the reason".into());
        text.extend((0..3).map(|i| format!("kernel line {i}")));
        text.push("Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b".into());
        std::fs::write(&p, text.join("\n")).unwrap();
        let t = console_tail(&p);
        assert!(t.starts_with("thread 'main' panicked at"), "{t}");
        assert!(
            t.contains("the reason") && t.contains("Attempted to kill init"),
            "{t}"
        );
        std::fs::write(&p, "a\nb\nlast words\n").unwrap();
        assert!(console_tail(&p).ends_with("last words"));
        assert_eq!(console_tail(&dir.path().join("none")), "");
    }
}
