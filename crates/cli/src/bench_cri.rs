//! The CRI phase of `cocoon bench pod`: Debian's containerd with the
//! `cocoon` handler and our guest-pull snapshotter as CRI's snapshotter,
//! driven through CRI as kubelet drives it. Times
//! RunPodSandbox to container running, call by call, against a plain QEMU
//! boot of the same guest image (the same kernel, initramfs, firmware and
//! vTPM, no containerd or shim) to its agent's first answer, booted just
//! before each pod, and against the same run's poweroff floor; starts four pods at
//! once, and reports the host memory per pod (QEMU + shim, and the
//! snapshotter's share) and the shim's RSS.

use crate::pod::Cri;
use anyhow::{Context, Result, bail};
use cocoon_host_grpc::cri;
use cocoon_hypervisor::Mode;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// The program `name` of the workspace's `package`, built beside this one.
fn beside_cocoon(name: &str, package: &str) -> Result<PathBuf> {
    let bin = std::env::current_exe()?.with_file_name(name);
    if !bin.is_file() {
        bail!(
            "{} is missing: build it beside cocoon (cargo build --release -p {package})",
            bin.display()
        );
    }
    Ok(bin)
}

/// Our guest-pull snapshotter as CRI's snapshotter, as a node runs it;
/// killed on drop (after containerd).
struct Snapshotter {
    child: Child,
    sock: PathBuf,
}

impl Snapshotter {
    fn start(dir: &Path) -> Result<Self> {
        let bin = beside_cocoon("cocoon-snapshotter", "cocoon-snapshotter")?;
        let sock = dir.join("snapshotter.sock");
        let child = Command::new(&bin)
            .arg("--root")
            .arg(dir.join("snapshotter"))
            .arg("--address")
            .arg(&sock)
            .arg("--content-root")
            .arg(dir.join("root/io.containerd.content.v1.content"))
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("snapshotter.log"))?)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let mut me = Self { child, sock };
        let t = Instant::now();
        while !me.sock.exists() {
            if let Some(st) = me.child.try_wait()? {
                bail!(
                    "cocoon-snapshotter exited ({st}): {}",
                    std::fs::read_to_string(dir.join("snapshotter.log")).unwrap_or_default()
                );
            }
            if t.elapsed() > Duration::from_secs(20) {
                bail!(
                    "cocoon-snapshotter did not listen on {} in 20 s",
                    me.sock.display()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(me)
    }
}

impl Drop for Snapshotter {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A throwaway containerd with CRI and our handler; stopped on drop (the
/// pods' shims with it).
struct Containerd {
    child: Child,
    sock: PathBuf,
}

impl Containerd {
    fn start(
        dir: &Path,
        pause: &str,
        registry: &str,
        shim_cfg: &Path,
        snapshotter: &Path,
    ) -> Result<Self> {
        let shim = beside_cocoon("containerd-shim-cocoon-v2", "cocoon-shim")?;
        let cni = dir.join("cni");
        std::fs::create_dir_all(&cni)?;
        std::fs::write(
            cni.join("10-bench.conflist"),
            format!(
                r#"{{"cniVersion":"1.0.0","name":"cocoon-bench","plugins":[{{"type":"bridge","bridge":"{BRIDGE}","isGateway":true,"ipMasq":false,"ipam":{{"type":"host-local","ranges":[[{{"subnet":"10.88.99.0/24"}}]],"dataDir":"{}"}}}}]}}"#,
                dir.join("ipam").display()
            ),
        )?;
        let sock = dir.join("c.sock");
        let cfg = dir.join("containerd.toml");
        std::fs::write(
            &cfg,
            format!(
                r#"version = 2
root = "{root}"
state = "{state}"
[grpc]
  address = "{sock}"
[ttrpc]
  address = "{sock}.ttrpc"
[proxy_plugins.cocoon]
  type = "snapshot"
  address = "{snapshotter}"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{pause}"
  stream_server_address = "127.0.0.1"
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/usr/lib/cni"
    conf_dir = "{cni}"
  [plugins."io.containerd.grpc.v1.cri".registry.mirrors."{registry}"]
    endpoint = ["http://{registry}"]
  [plugins."io.containerd.grpc.v1.cri".containerd]
    default_runtime_name = "runc"
    snapshotter = "cocoon"
    disable_snapshot_annotations = false
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cocoon]
    runtime_type = "io.containerd.cocoon.v2"
    pod_annotations = ["io.katacontainers.*"]
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.cocoon.options]
      ConfigPath = "{shim_cfg}"
"#,
                root = dir.join("root").display(),
                state = dir.join("state").display(),
                sock = sock.display(),
                cni = cni.display(),
                shim_cfg = shim_cfg.display(),
                snapshotter = snapshotter.display(),
            ),
        )?;
        let path = format!(
            "{}:{}",
            shim.parent().unwrap_or(Path::new(".")).display(),
            std::env::var("PATH").unwrap_or_default()
        );
        let child = Command::new("containerd")
            .arg("--config")
            .arg(&cfg)
            .env("PATH", path)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("containerd.log"))?)
            .spawn()
            .context("starting containerd (Debian: apt-get install containerd)")?;
        Ok(Self { child, sock })
    }

    /// Our shims serving this containerd.
    /// This containerd's shims (`guard` false) or their guards (each
    /// shim's child that cleans up if the shim is killed).
    fn shim_processes(&self, guard: bool) -> Vec<u32> {
        processes(|argv0, cmd| {
            argv0.ends_with("containerd-shim-cocoon-v2")
                && cmd.contains(&self.sock.display().to_string())
                && (cmd.split('\0').nth(1) == Some("__guard")) == guard
        })
    }

    fn shims(&self) -> Vec<u32> {
        self.shim_processes(false)
    }

    fn guards(&self) -> Vec<u32> {
        self.shim_processes(true)
    }
}

/// The memory only the guards hold: their code is the shim binary's,
/// already counted in the shims' RSS.
fn guards_own_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| crate::bench_pod::status_kib(*p, "RssAnon:"))
        .sum()
}

impl Drop for Containerd {
    fn drop(&mut self) {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        for pid in self.shims() {
            // SAFETY: a shim this containerd started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
        // The CNI bridge plugin leaves its bridge behind.
        let _ = Command::new("ip").args(["link", "del", BRIDGE]).output();
    }
}

/// The bench's CNI bridge.
const BRIDGE: &str = "cocoonbench0";

/// Processes whose argv[0] and NUL-separated command line match.
fn processes(matches: impl Fn(&str, &str) -> bool) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let pid: u32 = e.file_name().to_str()?.parse().ok()?;
            let cmd = std::fs::read(e.path().join("cmdline")).ok()?;
            let cmd = String::from_utf8_lossy(&cmd).into_owned();
            let argv0 = cmd.split('\0').next().unwrap_or_default().to_string();
            matches(&argv0, &cmd).then_some(pid)
        })
        .collect()
}

/// QEMU processes of VMs whose state is under `state`.
fn vms(state: &Path) -> Vec<u32> {
    let needle = state.display().to_string();
    processes(|argv0, cmd| argv0.contains("qemu-system") && cmd.contains(&needle))
}

fn sum_rss_kib(pids: &[u32]) -> u64 {
    pids.iter()
        .filter_map(|p| crate::bench_pod::rss_kib(*p))
        .sum()
}

/// Where a pod start's time went, call by call as kubelet makes them.
#[derive(Clone, Default)]
struct Steps {
    /// The workload container's id.
    container: String,
    /// RunPodSandbox: CNI, the shim, the VM boot, the pause container.
    sandbox: Duration,
    /// CreateContainer: containerd's records and snapshot only.
    create: Duration,
    /// StartContainer: the task (the guest pull, the container's
    /// creation in the VM) and its start.
    start: Duration,
}

impl Steps {
    fn total(&self) -> Duration {
        self.sandbox + self.create + self.start
    }
}

/// One pod: sandbox, a container that keeps running; returns its id and
/// the time from RunPodSandbox to the container running, by call.
async fn start_pod(
    cri: &Cri,
    name: &str,
    handler: &str,
    image: &str,
    annotations: &std::collections::HashMap<String, String>,
    logs: &Path,
) -> Result<(String, Steps)> {
    let mut rt = cri.runtime.clone();
    let uid = uuid::Uuid::new_v4().to_string();
    let sandbox = cri::PodSandboxConfig {
        metadata: Some(cri::PodSandboxMetadata {
            name: name.into(),
            uid: uid.clone(),
            namespace: "bench".into(),
            attempt: 0,
        }),
        hostname: name.into(),
        log_directory: logs.join(&uid).display().to_string(),
        annotations: annotations.clone(),
        ..Default::default()
    };
    let t = Instant::now();
    let id = rt
        .run_pod_sandbox(cri::RunPodSandboxRequest {
            config: Some(sandbox.clone()),
            runtime_handler: handler.into(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("RunPodSandbox: {}", s.message()))?
        .into_inner()
        .pod_sandbox_id;
    let sandboxed = t.elapsed();
    let c = rt
        .create_container(cri::CreateContainerRequest {
            pod_sandbox_id: id.clone(),
            config: Some(cri::ContainerConfig {
                metadata: Some(cri::ContainerMetadata {
                    name: "main".into(),
                    attempt: 0,
                }),
                image: Some(cri::ImageSpec {
                    image: image.into(),
                    ..Default::default()
                }),
                command: vec!["/bin/sleep".into(), "600".into()],
                log_path: "main.log".into(),
                // As kubelet sends them.
                linux: Some(cri::LinuxContainerConfig {
                    resources: None,
                    security_context: Some(crate::pod::kubelet_security_context()),
                }),
                ..Default::default()
            }),
            sandbox_config: Some(sandbox),
        })
        .await
        .map_err(|s| anyhow::anyhow!("CreateContainer: {}", s.message()))?
        .into_inner()
        .container_id;
    let created = t.elapsed();
    let c_id = c.clone();
    rt.start_container(cri::StartContainerRequest { container_id: c })
        .await
        .map_err(|s| anyhow::anyhow!("StartContainer: {}", s.message()))?;
    let started = t.elapsed();
    Ok((
        id,
        Steps {
            container: c_id,
            sandbox: sandboxed,
            create: created - sandboxed,
            start: started - created,
        },
    ))
}

/// RunPodSandbox and StartContainer of one pod split by what the shim
/// logged (through containerd's log): milliseconds of each part.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Split {
    /// What is left of RunPodSandbox: containerd, CNI, the shim's start
    /// and its work before its timer (reading its configuration and the
    /// guest image's command line), and the sandbox task's start.
    containerd: u64,
    /// Moving the pod's network namespace into the VM (tap device), and
    /// finding QEMU.
    attach: u64,
    /// QEMU's start to the agent's first answer.
    boot: u64,
    /// The guest's network and CreateSandbox.
    sandbox: u64,
    /// The pause container's creation in the guest.
    pause: u64,
    /// The workload's creation in the guest: its guest pull included.
    workload: u64,
}

/// One pod's start beside the plain boot just before it.
#[derive(Clone, Copy)]
struct BootGap {
    /// RunPodSandbox to the container running.
    total: Duration,
    /// The plain boot to the agent's first answer.
    plain: Duration,
    /// The pod VM's own boot to its agent's first answer (the shim's).
    pod_boot: Duration,
}

impl BootGap {
    fn of(took: &Steps, plain: Duration, s: &Split) -> Self {
        Self {
            total: took.total(),
            plain,
            pod_boot: Duration::from_millis(s.boot),
        }
    }

    /// The pod's time with its own boot replaced by the plain boot.
    fn apart(&self) -> Duration {
        (self.total + self.plain).saturating_sub(self.pod_boot)
    }
}

/// The pod under its agent policy against the same pod without, run by
/// run, each with its own boot replaced by the run's plain boot: what
/// the policy costs, apart from how long either VM took to boot.
fn policy_apart(one: &[BootGap], pol: &[BootGap]) -> String {
    let one: Vec<Duration> = one.iter().map(BootGap::apart).collect();
    let pol: Vec<Duration> = pol.iter().map(BootGap::apart).collect();
    format!(
        "with each pod's own boot replaced by the plain boot before it, the pod under its agent policy is {} the pod without",
        crate::bench_pod::paired(&pol, &one)
    )
}

/// The split of the pod `id` from containerd's log at `log`, waited for:
/// containerd copies the shim's lines into its log as they come, and the
/// last one may land a moment after StartContainer answered.
async fn shim_split(log: &Path, id: &str, took: &Steps) -> Option<Split> {
    let waited = Instant::now();
    loop {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(s) = split(&text, id, took) {
            return Some(s);
        }
        if waited.elapsed() > Duration::from_secs(2) {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How much longer each pod's VM took to boot than the plain boot before
/// it, and each pod's time with its own boot replaced by that plain boot:
/// what the CRI path adds to a boot, apart from how long this boot took.
fn boot_gaps(gaps: &[BootGap]) -> String {
    let secs = |d: Duration| d.as_secs_f64();
    let mut diffs: Vec<f64> = gaps
        .iter()
        .map(|g| secs(g.pod_boot) - secs(g.plain))
        .collect();
    let listed: Vec<String> = diffs.iter().map(|d| format!("{d:+.2}")).collect();
    diffs.sort_by(f64::total_cmp);
    let adjusted: Vec<Duration> = gaps.iter().map(BootGap::apart).collect();
    let plains: Vec<Duration> = gaps.iter().map(|g| g.plain).collect();
    format!(
        "the pod VM's own boot against the plain boot before it: {} s (median {:+.2} s); with the plain boot in place of its own, each pod is {} the plain boot",
        listed.join(" "),
        diffs[diffs.len() / 2],
        crate::bench_pod::paired(&adjusted, &plains)
    )
}

/// The number after `key=` in `line`.
fn field(line: &str, key: &str) -> Option<u64> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    let digits: String = line[at..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// The split of the pod `sandbox` whose calls took `steps`, from the
/// shim's lines in containerd's log; none when a line is missing.
fn split(log: &str, sandbox: &str, steps: &Steps) -> Option<Split> {
    let line = |what: &str, id: &str| {
        // A sandbox's id is quoted, a container's ends at a space.
        let (quoted, bare) = (format!("=\\\"{id}\\\""), format!("={id} "));
        log.lines()
            .find(|l| l.contains(what) && (l.contains(&quoted) || l.contains(&bare)))
    };
    let up = line("pod VM up", sandbox)?;
    let set = line("pod network and sandbox set up", sandbox)?;
    let pause = field(line("container created in the pod VM", sandbox)?, "ms")?;
    let workload = field(
        line("container created in the pod VM", &steps.container)?,
        "ms",
    )?;
    let (boot, up_at) = (field(up, "boot_ms")?, field(up, "since_start_ms")?);
    let set_at = field(set, "since_start_ms")?;
    let sandbox_ms = steps.sandbox.as_millis() as u64;
    Some(Split {
        containerd: sandbox_ms.saturating_sub(set_at + pause),
        attach: up_at.saturating_sub(boot),
        boot,
        sandbox: set_at.saturating_sub(up_at),
        pause,
        workload,
    })
}

/// Runs the CRI phase and prints its table.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    guest_image: &Path,
    registry: &str,
    mode: Mode,
    memory: u32,
    runs: usize,
    floor: Duration,
    boot: impl AsyncFn(String) -> Result<(Duration, u64)>,
) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let guest_image = &std::path::absolute(guest_image)?;
    let image = crate::bench_pod::push_image_with(
        registry,
        "cocoon-bench/busybox:cri",
        &["/bin/echo", "hello"],
    )
    .await?;
    let pause = crate::bench_pod::push_image_with(
        registry,
        "cocoon-bench/pause:1",
        &["/bin/sleep", "2147483647"],
    )
    .await?;
    let port = registry
        .rsplit_once(':')
        .and_then(|(_, p)| p.parse::<u16>().ok())
        .context("--registry is HOST:PORT")?;
    let state = dir.path().join("shim-state");
    let shim_cfg = dir.path().join("shim.toml");
    let mode_name = match mode {
        Mode::None => "none",
        Mode::Vtpm => "vtpm",
        Mode::Tdx => "tdx",
        Mode::Snp => "snp",
    };
    std::fs::write(
        &shim_cfg,
        format!(
            "guest_image = \"{}\"\nmode = \"{mode_name}\"\ndefault_memory_mib = {memory}\nstate_dir = \"{}\"\nhost_ports = [{port}]\nvtpm_ca = \"{}\"\n",
            guest_image.display(),
            state.display(),
            crate::run::default_vtpm_ca().display()
        ),
    )?;
    // The shim probes KVM before its first VM where /dev/kvm opens (up to
    // 15 s where it cannot boot the guest kernel) and caches the answer in
    // its state directory: probed here, so that no timed pod includes it.
    let probe = {
        let (qemu, kernel, cache) = (
            cocoon_hypervisor::qemu::Qemu::new()?.binary().to_path_buf(),
            guest_image.join("vmlinuz"),
            state.clone(),
        );
        std::fs::create_dir_all(&cache)?;
        let t = Instant::now();
        let accel = tokio::task::spawn_blocking(move || {
            cocoon_hypervisor::kvm::accel_for(&qemu, &kernel, Some(&cache))
        })
        .await?;
        (accel, t.elapsed())
    };
    outln!(
        "CRI: the shim's KVM probe, once per host boot and state directory, before the timed pods: {:.2} s ({:?})",
        probe.1.as_secs_f64(),
        probe.0
    );
    let snap = Snapshotter::start(dir.path())?;
    let ctd = Containerd::start(dir.path(), &pause, registry, &shim_cfg, &snap.sock)?;
    let endpoint = format!("unix://{}", ctd.sock.display());
    let t = Instant::now();
    let cri = loop {
        match Cri::connect(&endpoint).await {
            Ok(c) => break c,
            Err(e) if t.elapsed() > Duration::from_secs(30) => {
                let log =
                    std::fs::read_to_string(dir.path().join("containerd.log")).unwrap_or_default();
                let errors: Vec<&str> = log
                    .lines()
                    .filter(|l| l.contains("level=error") || l.contains("level=warn"))
                    .collect();
                return Err(e.context(errors.join("\n")));
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
        }
    };
    // kubelet pulls before it starts a pod: not part of the time.
    for img in [&image, &pause] {
        cri.images
            .clone()
            .pull_image(cri::PullImageRequest {
                image: Some(cri::ImageSpec {
                    image: img.clone(),
                    ..Default::default()
                }),
                ..Default::default()
            })
            .await
            .map_err(|s| anyhow::anyhow!("PullImage {img}: {}", s.message()))?;
    }
    let initdata = crate::run::initdata_for(None, None, &[registry.to_string()])?
        .context("initdata for the registry")?;
    let mut annotations = std::collections::HashMap::new();
    annotations.insert(
        "io.katacontainers.config.hypervisor.cc_init_data".to_string(),
        crate::policy::gzip_b64(&initdata)?,
    );
    // The same pod pinned by a generated agent policy (the guest decides
    // every request): started in turn with the plain one.
    let policy_annotations = {
        let manifest = format!(
            "kind: Deployment\nmetadata: {{name: pol, namespace: bench}}\nspec:\n  template:\n    spec:\n      containers:\n      - name: main\n        image: {image}\n        command: [/bin/sleep, \"600\"]\n"
        );
        let doc: serde_yaml_ng::Value = serde_yaml_ng::from_str(&manifest)?;
        let w = crate::policy::Workload::of(&doc)?.context("the bench workload")?;
        let resolved = crate::policy::Resolver::new(&[registry.to_string()])?
            .image(&image)
            .await?;
        let regs = [registry.to_string()];
        let data = crate::policy::policy_data(
            &w,
            &[resolved],
            &crate::policy::Options {
                deny_logs: false,
                kbs: None,
                insecure_registries: &regs,
            },
        )?;
        let text = crate::policy::initdata(None, None, &regs, &crate::policy::policy_text(&data)?)?;
        let mut a = std::collections::HashMap::new();
        a.insert(
            crate::policy::INITDATA_ANNOTATION.to_string(),
            crate::policy::gzip_b64(&text)?,
        );
        a
    };
    let logs = dir.path().join("logs");
    let mut times = Vec::new();
    let mut boots = Vec::new();
    let mut policy_times = Vec::new();
    let mut splits = Vec::new();
    let mut gaps = Vec::new();
    let mut policy_gaps = Vec::new();
    let mut shim_rss = 0;
    let mut guard_kib = 0;
    let mut vm_rss = 0;
    let vtpm_ca = crate::run::default_vtpm_ca();
    let ctd_log = dir.path().join("containerd.log");
    for i in 0..runs.max(1) {
        // The baseline, booted just before each pod: the same guest image
        // booted by QEMU alone, to its agent's first answer.
        boots.push(boot(format!("cri-boot-{i}")).await?.0);
        if mode == Mode::Vtpm {
            crate::bench_pod::settle_vtpm_pool(&vtpm_ca, dir.path())?;
        }
        let (id, took) = start_pod(
            &cri,
            &format!("one-{i}"),
            "cocoon",
            &image,
            &annotations,
            &logs,
        )
        .await?;
        let plain = *boots.last().unwrap_or(&Duration::ZERO);
        let s = shim_split(&ctd_log, &id, &took).await;
        if let Some(s) = s {
            splits.push(s);
        }
        gaps.push(s.map(|s| BootGap::of(&took, plain, &s)));
        times.push(took);
        shim_rss = sum_rss_kib(&ctd.shims());
        guard_kib = guards_own_kib(&ctd.guards());
        vm_rss = sum_rss_kib(&vms(&state));
        cri.remove_pod(&id).await?;
        if mode == Mode::Vtpm {
            crate::bench_pod::settle_vtpm_pool(&vtpm_ca, dir.path())?;
        }
        let (id, took) = start_pod(
            &cri,
            &format!("pol-{i}"),
            "cocoon",
            &image,
            &policy_annotations,
            &logs,
        )
        .await
        .context("a pod under its generated agent policy")?;
        let s = shim_split(&ctd_log, &id, &took).await;
        policy_gaps.push(s.map(|s| BootGap::of(&took, plain, &s)));
        policy_times.push(took);
        cri.remove_pod(&id).await?;
    }
    let totals: Vec<Duration> = times.iter().map(Steps::total).collect();
    let one = crate::bench_pod::median(totals.clone());
    let boot = crate::bench_pod::median(boots.clone());
    let median_of = |f: fn(&Steps) -> Duration| {
        crate::bench_pod::median(times.iter().map(f).collect()).as_secs_f64()
    };
    let pinned = crate::bench_pod::median(policy_times.iter().map(Steps::total).collect());
    // Four pods at once.
    let t = Instant::now();
    let start = |name: &'static str| start_pod(&cri, name, "cocoon", &image, &annotations, &logs);
    let (a, b, c, d) = tokio::join!(
        start("four-0"),
        start("four-1"),
        start("four-2"),
        start("four-3")
    );
    let results = [a, b, c, d];
    let four = t.elapsed();
    let per_pod =
        (sum_rss_kib(&ctd.shims()) + guards_own_kib(&ctd.guards()) + sum_rss_kib(&vms(&state))) / 4;
    let snap_rss = sum_rss_kib(&[snap.child.id()]);
    let shims_four = ctd.shims().len();
    for (id, _) in results.iter().flatten() {
        cri.remove_pod(id).await?;
    }
    for r in results {
        r?;
    }
    outln!();
    outln!(
        "CRI ({mode_name}, {memory} MiB): RunPodSandbox to container running {:.2} s: {:.2}x a plain QEMU boot of the same guest image to its agent's first answer ({:.2} s, booted just before each pod; target 1.2x), {:.2}x the poweroff floor ({:.2} s)",
        one.as_secs_f64(),
        one.as_secs_f64() / boot.as_secs_f64(),
        boot.as_secs_f64(),
        one.as_secs_f64() / floor.as_secs_f64(),
        floor.as_secs_f64(),
    );
    outln!(
        "CRI: each pod against the boot just before it: {}",
        crate::bench_pod::paired(&totals, &boots)
    );
    // Listed run by run like the line above: only when every run has one.
    let every = |g: &[Option<BootGap>]| -> Option<Vec<BootGap>> { g.iter().copied().collect() };
    if let Some(g) = every(&gaps).filter(|g| !g.is_empty()) {
        outln!("CRI: {}", boot_gaps(&g));
    }
    outln!(
        "CRI: by call (medians): RunPodSandbox {:.2} s, CreateContainer {:.2} s, StartContainer {:.2} s (the task: the guest pull and the container's creation in the VM, and its start)",
        median_of(|s| s.sandbox),
        median_of(|s| s.create),
        median_of(|s| s.start),
    );
    if splits.len() == times.len() {
        let m = |f: fn(&Split) -> u64| {
            crate::bench_pod::median(splits.iter().map(|s| Duration::from_millis(f(s))).collect())
                .as_secs_f64()
        };
        outln!(
            "CRI: inside the calls (medians, from the shim's log): containerd, CNI and the shim's start {:.2} s, pod network into the VM {:.2} s, VM boot to the agent {:.2} s, guest network and sandbox {:.2} s, pause container {:.2} s; the workload's guest pull and creation {:.2} s",
            m(|s| s.containerd),
            m(|s| s.attach),
            m(|s| s.boot),
            m(|s| s.sandbox),
            m(|s| s.pause),
            m(|s| s.workload),
        );
    } else {
        outln!(
            "CRI: the shim's timings were missing from containerd's log for {} of {} pods: no split by part",
            times.len() - splits.len(),
            times.len()
        );
    }
    outln!(
        "CRI: the same pod under its generated agent policy {:.2} s, {:.3}x without (target 1.05x)",
        pinned.as_secs_f64(),
        pinned.as_secs_f64() / one.as_secs_f64()
    );
    if let (Some(one), Some(pol)) = (every(&gaps), every(&policy_gaps))
        && !one.is_empty()
    {
        outln!("CRI: {}", policy_apart(&one, &pol));
    }
    outln!(
        "CRI: four pods at once {:.2} s in all ({shims_four} shims); host memory per pod (QEMU + shim and its guard) {} MiB; the snapshotter, one per node, {} KiB, so with four pods {} MiB a pod (QEMU + shim + guard + a quarter of the snapshotter)",
        four.as_secs_f64(),
        per_pod / 1024,
        snap_rss,
        (per_pod + snap_rss / 4) / 1024
    );
    outln!(
        "CRI: shim RSS {} KiB (target under 15 MB), and its guard's own memory {} KiB; QEMU RSS {} MiB",
        shim_rss,
        guard_kib,
        vm_rss / 1024
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// containerd 1.6 writes the shim's lines into its own log as below.
    const LOG: &str = r#"time="2026-12-03T09:53:57.089244719Z" level=info msg="RunPodSandbox for &PodSandboxMetadata{Name:one-0,Uid:58a4,Namespace:bench,Attempt:0,}"
time="2026-12-03T09:53:58.1Z" level=info msg="pod VM up sandbox=\"aa11\" boot_ms=9999 since_start_ms=9999"
time="2026-12-03T09:54:03.762737247Z" level=info msg="pod VM up sandbox=\"7f77\" boot_ms=6563 since_start_ms=6607"
time="2026-12-03T09:54:03.91596319Z" level=info msg="pod network and sandbox set up in the guest sandbox=\"7f77\" since_start_ms=6760"
time="2026-12-03T09:54:04.277615187Z" level=info msg="container created in the pod VM container=7f77 ms=361"
time="2026-12-03T09:54:05.064359933Z" level=info msg="container created in the pod VM container=b53d ms=736"
"#;

    #[test]
    fn boot_gaps_set_the_pods_own_boot_apart() {
        let ms = Duration::from_millis;
        let gaps = [
            // Booted 0.25 s slower than the plain boot: 4.63 s (1.27x) is
            // 1.20x once its boot is the plain one's.
            BootGap {
                total: ms(4630),
                plain: ms(3660),
                pod_boot: ms(3910),
            },
            BootGap {
                total: ms(4500),
                plain: ms(4000),
                pod_boot: ms(3900),
            },
            BootGap {
                total: ms(4800),
                plain: ms(4000),
                pod_boot: ms(4000),
            },
        ];
        assert_eq!(
            boot_gaps(&gaps),
            "the pod VM's own boot against the plain boot before it: +0.25 -0.10 +0.00 s (median +0.00 s); \
             with the plain boot in place of its own, each pod is 1.20x 1.15x 1.20x (median 1.20x) the plain boot"
        );
    }

    #[test]
    fn the_policy_is_set_against_the_pod_without_with_both_boots_apart() {
        let ms = Duration::from_millis;
        let gap = |total, plain, pod_boot| BootGap {
            total: ms(total),
            plain: ms(plain),
            pod_boot: ms(pod_boot),
        };
        // Run 1: the policy pod's VM booted 0.2 s slower than the other
        // pod's (5.00 s is 1.09x of 4.60 s); each with the plain boot in
        // place of its own: 4.70 s against 4.50 s.
        let one = [gap(4600, 4000, 4100), gap(4500, 3900, 3900)];
        let pol = [gap(5000, 4000, 4300), gap(4400, 3900, 3700)];
        assert_eq!(
            policy_apart(&one, &pol),
            "with each pod's own boot replaced by the plain boot before it, the pod under its agent policy is \
             1.04x 1.02x (median 1.04x) the pod without"
        );
    }

    #[test]
    fn a_pod_start_splits_by_the_shims_timings() {
        let steps = Steps {
            container: "b53d".into(),
            sandbox: Duration::from_millis(7222),
            create: Duration::from_millis(9),
            start: Duration::from_millis(757),
        };
        assert_eq!(
            split(LOG, "7f77", &steps),
            Some(Split {
                containerd: 7222 - 6760 - 361,
                attach: 44,
                boot: 6563,
                sandbox: 153,
                pause: 361,
                workload: 736,
            })
        );
        // Another pod's lines are not taken, and a missing line gives no
        // split rather than a made-up part.
        assert_eq!(split(LOG, "7f7", &steps), None);
        let other = Steps {
            container: "c0ff".into(),
            ..steps
        };
        assert_eq!(split(LOG, "7f77", &other), None);
        assert_eq!(field("x boot_ms=12 y", "boot_ms"), Some(12));
        assert_eq!(field("x reboot_ms=12 y", "boot_ms"), None);
        assert_eq!(field("x boot_ms= y", "boot_ms"), None);
    }
}
