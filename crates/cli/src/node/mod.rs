//! `cocoon node install|uninstall|status`: puts the runtime on a node
//! (the shim, the snapshotter, the guest image and the handlers' shim
//! configurations under a prefix), adds the handlers to containerd's
//! configuration in the way its release reads them, restarts containerd
//! and waits until CRI serves them; undoes exactly that. Also the entry
//! point of the node DaemonSet, where the host's filesystem is mounted at
//! `--host-root` and host commands run in the host's namespaces.

pub mod containerd;
mod kube;

use crate::pod::Cri;
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand, ValueEnum};
use containerd::{Handler, Layout, Settings, Version};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

#[derive(Subcommand)]
pub enum NodeCommand {
    /// Install the runtime on this node (idempotent; also upgrades).
    Install(InstallArgs),
    /// Remove what install added and put containerd's configuration back.
    Uninstall(UninstallArgs),
    /// Say what is installed and whether containerd serves it.
    Status(StatusArgs),
}

#[derive(Args)]
pub struct StatusArgs {
    #[command(flatten)]
    common: Common,
    /// Check that the installed files are there, without reading them for
    /// their digests (the DaemonSet's readiness probe, every 30 s).
    #[arg(long)]
    quick: bool,
}

#[derive(Args, Clone)]
pub struct Common {
    /// Where the host's filesystem is (the DaemonSet mounts it); paths
    /// below are the host's own.
    #[arg(long, default_value = "/")]
    host_root: PathBuf,
    /// containerd's configuration file.
    #[arg(long, default_value = "/etc/containerd/config.toml")]
    containerd_config: String,
    /// Where the runtime's files go.
    #[arg(long, default_value = "/opt/cocoon")]
    prefix: String,
    /// containerd's CRI socket.
    #[arg(
        long,
        env = "CONTAINER_RUNTIME_ENDPOINT",
        default_value = "unix:///run/containerd/containerd.sock"
    )]
    runtime_endpoint: String,
    /// How containerd is restarted (run by `sh -c` on the host); default:
    /// `systemctl restart containerd`.
    #[arg(long)]
    restart_command: Option<String>,
    /// The Kubernetes node to label `cocoon.io/runtime=true` (in a
    /// cluster: the downward API's `spec.nodeName`); unset outside one.
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// How long containerd may take to serve CRI again after a restart.
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    timeout: Duration,
}

#[derive(Args)]
pub struct InstallArgs {
    #[command(flatten)]
    common: Common,
    /// Runtime handlers to add (`cocoon` = vTPM, `cocoon-tdx`,
    /// `cocoon-snp`); default: `cocoon` plus the TEEs this host offers.
    #[arg(long, value_delimiter = ',')]
    handlers: Vec<String>,
    /// Where `containerd-shim-cocoon-v2`, `cocoon-snapshotter` and `cocoon`
    /// are; default: beside this program.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// The guest image (`cocoon guest build`); default: `$COCOON_GUEST_IMAGE`,
    /// else `BIN_DIR/../share/guest-image`.
    #[arg(long)]
    guest_image: Option<PathBuf>,
    /// The `cocoon` handler's shim configuration, instead of the defaults
    /// (see docs/kubernetes.md).
    #[arg(long)]
    shim_config: Option<PathBuf>,
    /// containerd's release, when it is not running to say (`1.6`, `2.1`).
    #[arg(long)]
    containerd_version: Option<String>,
    /// The guest-pull snapshotter: `runtime` names it on the handlers
    /// (containerd 1.7+, run as the systemd unit `cocoon-snapshotter`);
    /// `auto` does so where containerd and systemd allow it.
    #[arg(long, value_enum, default_value_t = SnapshotterMode::Auto)]
    snapshotter: SnapshotterMode,
    /// containerd 2.2+'s drop-in directory.
    #[arg(long, default_value = "/etc/containerd/conf.d")]
    dropin_dir: String,
    /// A directory on containerd's PATH for a link to the shim: containerd
    /// 1.6 starts a pod's first task by the runtime's name alone, ignoring
    /// `runtime_path`.
    #[arg(long, default_value = "/usr/local/bin")]
    shim_link_dir: String,
    /// Keep running afterwards until SIGTERM, also after a failure (the
    /// DaemonSet's container).
    #[arg(long)]
    stay: bool,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SnapshotterMode {
    Auto,
    Runtime,
    None,
}

#[derive(Args)]
pub struct UninstallArgs {
    #[command(flatten)]
    common: Common,
    /// Also remove the node's runtime state (`/var/lib/cocoon`: the vTPM
    /// CA that trustees may pin, the snapshotter's data).
    #[arg(long)]
    purge: bool,
    /// Uninstall although pods of the handlers still run (they keep
    /// running, unmanaged, until their VMs stop).
    #[arg(long)]
    force: bool,
    /// Keep running afterwards until SIGTERM (the cleanup DaemonSet).
    #[arg(long)]
    stay: bool,
}

/// The node label the RuntimeClasses select on.
pub const LABEL: &str = "cocoon.io/runtime";
/// Labels of the TEEs a node offers.
const TEE_LABELS: [(&str, &str); 2] = [
    ("cocoon-tdx", "cocoon.io/tdx"),
    ("cocoon-snp", "cocoon.io/snp"),
];

/// The binaries the installer puts under `PREFIX/bin`.
const BINARIES: [&str; 3] = ["containerd-shim-cocoon-v2", "cocoon-snapshotter", "cocoon"];
/// The snapshotter's name in containerd and its socket.
const SNAPSHOTTER: &str = "cocoon";
const SNAPSHOTTER_SOCKET: &str = "/run/cocoon/snapshotter.sock";
const SNAPSHOTTER_UNIT: &str = "/etc/systemd/system/cocoon-snapshotter.service";
/// Runtime state the shim and snapshotter make (left unless `--purge`).
const STATE_DIR: &str = "/var/lib/cocoon";

/// What an install did, kept at `PREFIX/install.json` so that uninstall
/// undoes exactly that and a second install changes nothing.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
struct Record {
    cocoon_version: String,
    containerd_version: String,
    layout: Option<Layout>,
    config_path: String,
    /// The configuration before the first install: its backup (host path)
    /// and digest; none when there was no file.
    backup: Option<String>,
    original_sha256: Option<String>,
    /// The digest of `config.toml` as the install left it (edit or import).
    written_sha256: Option<String>,
    /// Our containerd 2.x file (imported, or in the drop-in directory).
    containerd_file: Option<String>,
    handlers: Vec<String>,
    snapshotter: Option<String>,
    /// Files added (host path → sha256) and directories made.
    files: BTreeMap<String, String>,
    /// Symbolic links added (host path → target).
    #[serde(default)]
    links: BTreeMap<String, String>,
    dirs: Vec<String>,
    labelled_node: Option<String>,
}

impl Common {
    /// A host path as this process sees it.
    fn host(&self, p: &str) -> PathBuf {
        self.host_root.join(p.trim_start_matches('/'))
    }

    /// Whether an `imports` entry names an existing file (relative entries
    /// are taken from the configuration's directory, as containerd 2.x does).
    fn import_exists(&self, entry: &str) -> bool {
        let p = Path::new(entry);
        if p.is_absolute() {
            self.host(entry).exists()
        } else {
            let dir = Path::new(&self.containerd_config)
                .parent()
                .unwrap_or(Path::new("/"));
            self.host(&dir.join(p).display().to_string()).exists()
        }
    }

    fn record_path(&self) -> PathBuf {
        self.host(&format!("{}/install.json", self.prefix))
    }

    fn load_record(&self) -> Result<Option<Record>> {
        let p = self.record_path();
        match std::fs::read(&p) {
            Ok(b) => serde_json::from_slice(&b)
                .map(Some)
                .with_context(|| format!("{} is not an install record", p.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| format!("reading {}", p.display())),
        }
    }

    fn save_record(&self, r: &Record) -> Result<()> {
        write_atomic(&self.record_path(), &serde_json::to_vec_pretty(r)?, 0o644)
    }

    /// The CRI socket as this process reaches it.
    fn endpoint(&self) -> String {
        let path = self
            .runtime_endpoint
            .strip_prefix("unix://")
            .unwrap_or(&self.runtime_endpoint);
        format!("unix://{}", self.host(path).display())
    }

    /// Runs a command on the host: directly, or in the host's namespaces
    /// (PID 1's, as the DaemonSet with `hostPID` sees them) when the host
    /// is mounted elsewhere.
    fn host_command(&self, line: &str) -> Result<()> {
        let mut cmd = if self.host_root == Path::new("/") {
            let mut c = Command::new("sh");
            c.args(["-c", line]);
            c
        } else {
            let mut c = Command::new("nsenter");
            c.args([
                "--target", "1", "--mount", "--uts", "--ipc", "--net", "--pid", "--", "sh", "-c",
                line,
            ]);
            c
        };
        let out = cmd
            .stdin(std::process::Stdio::null())
            .output()
            .with_context(|| format!("running {line:?}"))?;
        if !out.status.success() {
            bail!(
                "{line:?} failed ({}): {}",
                out.status,
                String::from_utf8_lossy(&out.stderr).trim()
            );
        }
        Ok(())
    }

    fn restart_containerd(&self) -> Result<()> {
        let line = self
            .restart_command
            .as_deref()
            .unwrap_or("systemctl restart containerd");
        outln!("restarting containerd: {line}");
        self.host_command(line)
    }
}

/// What CRI says about the runtime.
struct Served {
    version: String,
    /// Runtime handler → runtime type.
    runtimes: BTreeMap<String, String>,
}

/// Asks CRI for its version and the runtimes it serves.
async fn served(c: &Common) -> Result<Served> {
    let cri = Cri::connect(&c.endpoint()).await?;
    let v = cri
        .runtime
        .clone()
        .version(cocoon_host_grpc::cri::VersionRequest {
            version: "v1".into(),
        })
        .await?
        .into_inner();
    let st = cri
        .runtime
        .clone()
        .status(cocoon_host_grpc::cri::StatusRequest { verbose: true })
        .await?
        .into_inner();
    let mut runtimes = BTreeMap::new();
    if let Some(cfg) = st.info.get("config") {
        for (name, ty) in containerd::cri_runtimes(cfg)? {
            runtimes.insert(name, ty);
        }
    }
    for h in st.runtime_handlers {
        runtimes.entry(h.name).or_default();
    }
    Ok(Served {
        version: v.runtime_version,
        runtimes,
    })
}

/// Waits until CRI answers at all.
async fn wait_answers(c: &Common) -> Result<()> {
    wait_served(c, &[], true).await
}

/// Waits until CRI answers and serves (or no longer serves) `handlers`.
async fn wait_served(c: &Common, handlers: &[String], present: bool) -> Result<()> {
    let deadline = Instant::now() + c.timeout;
    loop {
        let last = match served(c).await {
            Ok(s) => {
                let ok = handlers
                    .iter()
                    .all(|h| s.runtimes.contains_key(h) == present);
                if ok {
                    return Ok(());
                }
                format!(
                    "CRI answers but serves the handlers {:?}",
                    s.runtimes.keys().collect::<Vec<_>>()
                )
            }
            Err(e) => format!("{e:#}"),
        };
        if Instant::now() >= deadline {
            bail!(
                "containerd did not serve CRI as configured within {:?}: {last}",
                c.timeout
            );
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn sha256_hex(b: &[u8]) -> String {
    hex::encode(Sha256::digest(b))
}

/// Writes a file through a temporary beside it and a rename, so a reader
/// (containerd, a shim starting) sees the old bytes or the new, never half.
fn write_atomic(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    cocoon_store::replace_file(path, bytes, mode)
        .with_context(|| format!("writing {}", path.display()))
}

/// A file's permission bits, or `default` when it cannot be read.
fn file_mode(path: &Path, default: u32) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(default)
}

/// Makes a directory and its missing parents, recording (host paths) the
/// ones it made.
fn make_dirs(c: &Common, host_dir: &str, made: &mut Vec<String>) -> Result<()> {
    let mut missing = vec![];
    let mut p = PathBuf::from(host_dir);
    while !c.host(&p.display().to_string()).exists() {
        missing.push(p.display().to_string());
        if !p.pop() {
            break;
        }
    }
    for d in missing.into_iter().rev() {
        std::fs::create_dir(c.host(&d)).with_context(|| format!("creating {d}"))?;
        if !made.contains(&d) {
            made.push(d);
        }
    }
    Ok(())
}

/// The TEEs KVM on this host offers.
fn host_tees(c: &Common) -> Vec<&'static str> {
    let on = |p: &str| {
        std::fs::read_to_string(c.host(p))
            .map(|s| matches!(s.trim(), "Y" | "y" | "1"))
            .unwrap_or(false)
    };
    let mut v = vec![];
    if on("/sys/module/kvm_intel/parameters/tdx") {
        v.push("cocoon-tdx");
    }
    if on("/sys/module/kvm_amd/parameters/sev_snp") {
        v.push("cocoon-snp");
    }
    v
}

/// Refuses a host path the installer would write into containerd's
/// configuration, a systemd unit or the file system unsafely: it must be
/// absolute, normalized, not `/`, and of plain characters.
fn check_host_path(flag: &str, path: &str) -> Result<()> {
    let p = Path::new(path);
    let plain = path
        .chars()
        .all(|ch| ch.is_ascii_alphanumeric() || "/._+-".contains(ch));
    let normal = p.components().all(|c| {
        matches!(
            c,
            std::path::Component::RootDir | std::path::Component::Normal(_)
        )
    });
    if !p.is_absolute() || !plain || !normal || p.components().count() < 2 {
        bail!(
            "{flag} {path:?}: a host path must be absolute, below /, without `..`, \
             and of letters, digits and ./_+- only"
        );
    }
    Ok(())
}

/// What the host lacks that pods of `handlers` need (Cocoon uses the
/// host's QEMU, firmware and software TPM).
fn missing_host_tools(c: &Common, handlers: &[String]) -> Vec<String> {
    let on_path = |name: &str| {
        ["/usr/bin", "/usr/local/bin", "/bin", "/usr/sbin"]
            .iter()
            .any(|d| c.host(&format!("{d}/{name}")).exists())
    };
    let mut missing = vec![];
    if !on_path("qemu-system-x86_64") {
        missing.push("qemu-system-x86_64 (qemu-system-x86)".to_string());
    }
    if handlers.iter().any(|h| h == "cocoon") {
        for (tool, package) in [("swtpm", "swtpm"), ("swtpm_setup", "swtpm-tools")] {
            if !on_path(tool) {
                missing.push(format!("{tool} ({package})"));
            }
        }
        if !c.host("/usr/share/ovmf/OVMF.fd").exists() {
            missing.push("/usr/share/ovmf/OVMF.fd (ovmf)".to_string());
        }
    }
    missing
}

/// The shim configuration of a handler made with the defaults.
fn default_shim_config(prefix: &str, handler: &str) -> Result<String> {
    let mode = match handler {
        "cocoon" => "vtpm",
        "cocoon-tdx" => "tdx",
        "cocoon-snp" => "snp",
        other => bail!(
            "unknown handler {other:?}: the handlers are cocoon (vTPM), cocoon-tdx and cocoon-snp"
        ),
    };
    Ok(format!(
        "# Written by cocoon node install (handler {handler}); every setting is in docs/kubernetes.md.\n\
         guest_image = \"{prefix}/share/guest-image\"\nmode = \"{mode}\"\n"
    ))
}

fn snapshotter_unit(prefix: &str, containerd_root: &str) -> String {
    format!(
        "# Written by cocoon node install; cocoon node uninstall removes it.\n\
         [Unit]\nDescription=Cocoon guest-pull snapshotter for containerd\n\
         Before=containerd.service\n\n\
         [Service]\nExecStart={prefix}/bin/cocoon-snapshotter --root {STATE_DIR}/snapshotter \
         --address {SNAPSHOTTER_SOCKET} --content-root {containerd_root}/io.containerd.content.v1.content\n\
         Restart=always\nRestartSec=2\n\n\
         [Install]\nWantedBy=multi-user.target\n"
    )
}

/// A configuration with the entries an install (`r`) added taken out.
fn strip(text: &str, r: &Record) -> Result<String> {
    let mut t = containerd::remove_v2(text, &r.handlers, r.snapshotter.as_deref())?;
    if let Some(f) = &r.containerd_file {
        t = containerd::remove_import(&t, f)?;
    }
    Ok(t)
}

pub async fn run(cmd: NodeCommand) -> Result<u8> {
    match cmd {
        NodeCommand::Install(a) => {
            let stay = a.stay;
            stay_or_return(stay, install(a).await).await
        }
        NodeCommand::Uninstall(a) => {
            let stay = a.stay;
            stay_or_return(stay, uninstall(a).await).await
        }
        NodeCommand::Status(a) => status(a.common, a.quick).await,
    }
}

/// With `--stay` (a DaemonSet's container): report the outcome and keep
/// running until told to stop, so a failure shows as an unready pod (its
/// readiness is `cocoon node status`) instead of a crash loop that would
/// restart containerd at every attempt. Delete the pod to try again.
async fn stay_or_return(stay: bool, outcome: Result<()>) -> Result<u8> {
    if !stay {
        return outcome.map(|_| 0);
    }
    if let Err(e) = &outcome {
        eprintln!("error: {e:#}");
        eprintln!("staying (--stay): delete this pod to try again");
    }
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        _ = tokio::signal::ctrl_c() => {}
    }
    Ok(0)
}

/// A file the install puts on the host.
struct Payload {
    host_path: String,
    bytes: Vec<u8>,
    mode: u32,
}

async fn install(a: InstallArgs) -> Result<()> {
    let c = &a.common;
    let previous = c.load_record()?;
    let mut rec = previous.clone().unwrap_or_default();
    // containerd's release decides where the handlers go.
    let version = match &a.containerd_version {
        Some(v) => Version::parse(v)?,
        None => match (served(c).await, &previous) {
            (Ok(s), _) => Version::parse(&s.version)?,
            // containerd down after an earlier install: the release it had.
            (Err(e), Some(r)) if !r.containerd_version.is_empty() => {
                outln!(
                    "containerd does not answer ({e:#}): taking the release the last install saw, {}",
                    r.containerd_version
                );
                Version::parse(&r.containerd_version)?
            }
            (Err(e), _) => {
                return Err(e).with_context(|| {
                    format!(
                        "containerd does not answer at {}: start it, or say its release with --containerd-version",
                        c.runtime_endpoint
                    )
                });
            }
        },
    };
    for (flag, path) in [
        ("--prefix", c.prefix.as_str()),
        ("--containerd-config", c.containerd_config.as_str()),
        ("--dropin-dir", a.dropin_dir.as_str()),
        ("--shim-link-dir", a.shim_link_dir.as_str()),
    ] {
        check_host_path(flag, path)?;
    }

    let mut handlers = a.handlers.clone();
    if handlers.is_empty() {
        handlers.push("cocoon".into());
        handlers.extend(host_tees(c).into_iter().map(String::from));
    }
    let mut seen = std::collections::HashSet::new();
    handlers.retain(|h| seen.insert(h.clone()));
    let systemd = c.restart_command.is_none();
    let snapshotter = match a.snapshotter {
        SnapshotterMode::None => false,
        SnapshotterMode::Auto => version.per_runtime_snapshotter() && systemd,
        SnapshotterMode::Runtime => {
            if !version.per_runtime_snapshotter() {
                bail!(
                    "containerd {version} has no snapshotter per runtime handler (1.7+); \
                     see docs/kubernetes.md for CRI's default snapshotter on 1.6"
                );
            }
            if !systemd {
                bail!(
                    "the snapshotter runs as the systemd unit cocoon-snapshotter: it needs systemd, not --restart-command"
                );
            }
            true
        }
    };

    // What goes on the host.
    let exe = std::env::current_exe().context("finding this program")?;
    let bin_dir = a
        .bin_dir
        .clone()
        .or_else(|| exe.parent().map(Path::to_path_buf))
        .context("no --bin-dir")?;
    let guest_image = a
        .guest_image
        .clone()
        .or_else(|| std::env::var_os("COCOON_GUEST_IMAGE").map(PathBuf::from))
        .unwrap_or_else(|| bin_dir.join("../share/guest-image"));
    let prefix = c.prefix.trim_end_matches('/').to_string();
    let mut payload = vec![];
    for b in BINARIES {
        let src = bin_dir.join(b);
        let bytes = std::fs::read(&src).with_context(|| {
            format!(
                "reading {} (build it, or point --bin-dir at it)",
                src.display()
            )
        })?;
        payload.push(Payload {
            host_path: format!("{prefix}/bin/{b}"),
            bytes,
            mode: 0o755,
        });
    }
    let mut image_files: Vec<_> = std::fs::read_dir(&guest_image)
        .with_context(|| {
            format!(
                "reading the guest image {} (cocoon guest build --out DIR)",
                guest_image.display()
            )
        })?
        .collect::<std::io::Result<Vec<_>>>()?;
    image_files.sort_by_key(|e| e.file_name());
    for e in image_files {
        if e.file_type()?.is_file() {
            payload.push(Payload {
                host_path: format!(
                    "{prefix}/share/guest-image/{}",
                    e.file_name().to_string_lossy()
                ),
                bytes: std::fs::read(e.path())?,
                mode: 0o644,
            });
        }
    }
    for name in ["vmlinuz", "initrd.img", "cmdline"] {
        if !payload
            .iter()
            .any(|p| p.host_path.ends_with(&format!("/guest-image/{name}")))
        {
            bail!(
                "{} has no {name}: it is not a guest image (cocoon guest build --out DIR)",
                guest_image.display()
            );
        }
    }
    for h in &handlers {
        let text = match (&a.shim_config, h.as_str()) {
            (Some(f), "cocoon") => {
                std::fs::read_to_string(f).with_context(|| format!("reading {}", f.display()))?
            }
            _ => default_shim_config(&prefix, h)?,
        };
        payload.push(Payload {
            host_path: format!("{prefix}/etc/{h}.toml"),
            bytes: text.into_bytes(),
            mode: 0o644,
        });
    }
    let settings = Settings {
        shim_path: format!("{prefix}/bin/containerd-shim-cocoon-v2"),
        handlers: handlers
            .iter()
            .map(|h| Handler {
                name: h.clone(),
                config_path: format!("{prefix}/etc/{h}.toml"),
            })
            .collect(),
        snapshotter: snapshotter.then(|| (SNAPSHOTTER.to_string(), SNAPSHOTTER_SOCKET.to_string())),
        per_runtime_snapshotter: version.per_runtime_snapshotter(),
    };
    let config_host = c.host(&c.containerd_config);
    // A link would resolve inside this container, not on the host.
    if std::fs::symlink_metadata(&config_host).is_ok_and(|m| m.file_type().is_symlink()) {
        bail!(
            "{} is a symbolic link: pass the file it points to with --containerd-config",
            c.containerd_config
        );
    }
    let config_mode = file_mode(&config_host, 0o644);
    let current = match std::fs::read_to_string(&config_host) {
        Ok(t) => Some(t),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(e) => return Err(e).with_context(|| format!("reading {}", c.containerd_config)),
    };
    if let Some(r) = &previous
        && r.config_path != c.containerd_config
    {
        bail!(
            "cocoon was installed against {}; uninstall it first to use {}",
            r.config_path,
            c.containerd_config
        );
    }
    if snapshotter {
        let root = current
            .as_deref()
            .and_then(|t| t.parse::<toml_edit::DocumentMut>().ok())
            .and_then(|d| d.get("root").and_then(|r| r.as_str()).map(String::from))
            .unwrap_or_else(|| "/var/lib/containerd".into());
        payload.push(Payload {
            host_path: SNAPSHOTTER_UNIT.into(),
            bytes: snapshotter_unit(&prefix, &root).into_bytes(),
            mode: 0o644,
        });
    }

    // The configuration without anything of ours: the backup while nobody
    // changed the file since the install; else the file as it is now with
    // our entries taken out (which becomes the backup, so that uninstall
    // keeps those later changes).
    let mut refresh_backup = false;
    let pristine = match (&previous, &current) {
        (Some(r), Some(cur))
            if r.written_sha256.as_deref() == Some(&sha256_hex(cur.as_bytes())) =>
        {
            match &r.backup {
                Some(b) => Some(
                    std::fs::read_to_string(c.host(b))
                        .with_context(|| format!("reading the backup {b}"))?,
                ),
                None => None,
            }
        }
        (Some(r), Some(cur)) if r.written_sha256.is_some() => {
            refresh_backup = true;
            Some(strip(cur, r)?)
        }
        (Some(r), None) if r.written_sha256.is_some() => bail!(
            "{} is gone since cocoon was installed: restore it or uninstall first",
            c.containerd_config
        ),
        _ => current.clone(),
    };
    let is_ours = |entry: &str| containerd::is_our_import(Path::new(&prefix), entry);
    let exists = |p: &str| c.import_exists(p);
    let dropin_file = format!("{}/cocoon.toml", a.dropin_dir.trim_end_matches('/'));
    let layout = containerd::layout(version, pristine.as_deref(), &dropin_file)?;
    if let Some(old) = rec.layout.filter(|l| *l != layout) {
        outln!("containerd {version}: moving the handlers from the {old:?} layout to {layout:?}");
    }
    let schema = match &pristine {
        Some(p) => {
            let d = p
                .parse::<toml_edit::DocumentMut>()
                .with_context(|| format!("{} is not valid TOML", c.containerd_config))?;
            containerd::check_cri_enabled(&d)?;
            containerd::schema(&d)?
        }
        None => 3,
    };
    let report = |repaired: &[String]| {
        for r in repaired {
            outln!(
                "repaired: removed the stale import {r} (its file is gone) from {}",
                c.containerd_config
            );
        }
    };
    let mut containerd_file = None;
    let new_config: Option<String> = match layout {
        Layout::EditV2 => {
            let base = pristine.clone().unwrap_or_else(|| "version = 2\n".into());
            Some(containerd::add_v2(&base, &settings)?)
        }
        Layout::Import => {
            let f = format!("{prefix}/etc/cocoon-containerd.toml");
            let file = containerd::handler_file(&settings, schema, pristine.as_deref())?;
            payload.push(Payload {
                host_path: f.clone(),
                bytes: file.into_bytes(),
                mode: 0o644,
            });
            let out = containerd::set_imports(pristine.as_deref(), Some(&f), is_ours, exists)?;
            report(&out.repaired);
            containerd_file = Some(f);
            Some(out.text)
        }
        Layout::DropIn => {
            let f = dropin_file.clone();
            let file = containerd::handler_file(&settings, schema, pristine.as_deref())?;
            payload.push(Payload {
                host_path: f.clone(),
                bytes: file.into_bytes(),
                mode: 0o644,
            });
            containerd_file = Some(f);
            // The main file changes only to drop a stale import (which
            // would stop containerd) or what an earlier layout of ours
            // added to it.
            let cleaned = match &pristine {
                Some(p) if !containerd::missing_imports(p, exists).is_empty() => {
                    let out = containerd::set_imports(Some(p), None, is_ours, exists)?;
                    report(&out.repaired);
                    Some(out.text)
                }
                p => p.clone(),
            };
            match (cleaned, &current) {
                (Some(cl), Some(cur)) if cl != *cur => Some(cl),
                _ => None,
            }
        }
    };

    // What containerd reads (the main file, our file for it, an earlier
    // layout's file of ours), as it is now: put back if containerd does
    // not come up with the new version.
    let mut containerd_paths = vec![c.containerd_config.clone()];
    containerd_paths.extend(containerd_file.iter().cloned());
    containerd_paths.extend(previous.as_ref().and_then(|r| r.containerd_file.clone()));
    containerd_paths.dedup();
    let saved: Vec<(String, Option<Vec<u8>>)> = containerd_paths
        .iter()
        .map(|p| (p.clone(), std::fs::read(c.host(p)).ok()))
        .collect();
    let snapshotter_before = previous.as_ref().is_some_and(|r| r.snapshotter.is_some());
    // A snapshotter an earlier install ran and this one does not: stopped
    // and disabled before its unit goes.
    if snapshotter_before && !snapshotter {
        c.host_command("systemctl disable --now cocoon-snapshotter")?;
    }

    // Files first (containerd must find what its configuration names).
    let mut made = rec.dirs.clone();
    let mut written = std::collections::BTreeSet::new();
    let mut files = BTreeMap::new();
    for p in &payload {
        let dir = Path::new(&p.host_path)
            .parent()
            .unwrap()
            .display()
            .to_string();
        make_dirs(c, &dir, &mut made)?;
        let digest = sha256_hex(&p.bytes);
        let on_disk = std::fs::read(c.host(&p.host_path))
            .ok()
            .map(|b| sha256_hex(&b));
        if on_disk.as_deref() != Some(&digest) {
            if on_disk.is_some() && !rec.files.contains_key(&p.host_path) {
                bail!(
                    "{} exists and is not cocoon's: move it away first",
                    p.host_path
                );
            }
            write_atomic(&c.host(&p.host_path), &p.bytes, p.mode)?;
            written.insert(p.host_path.clone());
        }
        // Recorded as it goes: a failure half-way leaves a record that
        // uninstall can undo.
        rec.files.insert(p.host_path.clone(), digest.clone());
        files.insert(p.host_path.clone(), digest);
        rec.dirs = made.clone();
        c.save_record(&rec)?;
    }
    // The shim where containerd looks it up by name.
    let link = format!(
        "{}/containerd-shim-cocoon-v2",
        a.shim_link_dir.trim_end_matches('/')
    );
    let target = format!("{prefix}/bin/containerd-shim-cocoon-v2");
    match std::fs::read_link(c.host(&link)) {
        Ok(t) if t == Path::new(&target) => {}
        Ok(_) if rec.links.contains_key(&link) => {
            std::fs::remove_file(c.host(&link))?;
            std::os::unix::fs::symlink(&target, c.host(&link))?;
        }
        Ok(t) => bail!(
            "{link} exists and points at {}, not cocoon's shim: remove it first",
            t.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            make_dirs(c, a.shim_link_dir.trim_end_matches('/'), &mut made)?;
            std::os::unix::fs::symlink(&target, c.host(&link))
                .with_context(|| format!("linking {link}"))?;
        }
        Err(_) => bail!("{link} exists and is not cocoon's link: remove it first"),
    }
    let mut links = BTreeMap::new();
    links.insert(link, target);
    for old in rec.links.keys().filter(|k| !links.contains_key(*k)) {
        let _ = std::fs::remove_file(c.host(old));
    }
    rec.links = links;
    // Files an earlier install added that this one does not.
    let previous_files = rec.files.clone();
    for old in previous_files.keys().filter(|k| !files.contains_key(*k)) {
        let _ = std::fs::remove_file(c.host(old));
        written.insert(old.clone());
    }

    // The backup: the configuration before cocoon touched it (or as an
    // admin changed it since, without cocoon's entries).
    let first = previous.as_ref().is_none_or(|r| r.written_sha256.is_none());
    if new_config.is_some()
        && let Some(base) = if first {
            current.as_ref()
        } else {
            pristine.as_ref().filter(|_| refresh_backup)
        }
    {
        let name = Path::new(&c.containerd_config)
            .file_name()
            .context("containerd's configuration path names no file")?
            .to_string_lossy()
            .into_owned();
        let b = format!("{prefix}/backup/{name}");
        make_dirs(c, &format!("{prefix}/backup"), &mut made)?;
        write_atomic(&c.host(&b), base.as_bytes(), 0o600)?;
        rec.backup = Some(b);
        rec.original_sha256 = Some(sha256_hex(base.as_bytes()));
    }
    rec.cocoon_version = env!("CARGO_PKG_VERSION").into();
    rec.containerd_version = version.to_string();
    rec.layout = Some(layout);
    rec.config_path = c.containerd_config.clone();
    rec.containerd_file = containerd_file;
    rec.handlers = handlers.clone();
    rec.snapshotter = snapshotter.then(|| SNAPSHOTTER.to_string());
    rec.files = files;
    rec.dirs = made;
    let config_changed = match &new_config {
        Some(n) => current.as_deref() != Some(n.as_str()),
        None => false,
    };
    if let Some(n) = &new_config {
        if config_changed {
            if let Some(dir) = Path::new(&c.containerd_config).parent() {
                make_dirs(c, &dir.display().to_string(), &mut rec.dirs)?;
            }
            write_atomic(&config_host, n.as_bytes(), config_mode)?;
        }
        rec.written_sha256 = Some(sha256_hex(n.as_bytes()));
    } else if let Some(cur) = &current
        && rec.written_sha256.is_some()
    {
        rec.written_sha256 = Some(sha256_hex(cur.as_bytes()));
    }
    c.save_record(&rec)?;

    if snapshotter {
        let changed = written
            .iter()
            .any(|w| w == SNAPSHOTTER_UNIT || w.ends_with("/bin/cocoon-snapshotter"));
        c.host_command(if changed {
            "systemctl daemon-reload && systemctl enable cocoon-snapshotter && systemctl restart cocoon-snapshotter"
        } else {
            "systemctl enable --now cocoon-snapshotter"
        })?;
    }
    // containerd reads its configuration at start only.
    let already = served(c)
        .await
        .map(|s| {
            handlers.iter().all(|h| {
                s.runtimes
                    .get(h)
                    .is_some_and(|t| t == containerd::RUNTIME_TYPE)
            })
        })
        .unwrap_or(false);
    let containerd_file_changed = containerd_paths.iter().skip(1).any(|p| written.contains(p));
    if config_changed || containerd_file_changed || !already {
        let up = match c.restart_containerd() {
            Ok(()) => wait_served(c, &handlers, true).await,
            Err(e) => Err(e),
        };
        if let Err(e) = up {
            // Put what containerd reads back as it was rather than leave
            // the node wedged, and say so in the record.
            for (p, old) in &saved {
                let host = c.host(p);
                match old {
                    Some(b) => {
                        let mode = if p == &c.containerd_config {
                            config_mode
                        } else {
                            0o644
                        };
                        write_atomic(&host, b, mode)?;
                    }
                    None => {
                        let _ = std::fs::remove_file(&host);
                    }
                }
            }
            if snapshotter && !snapshotter_before {
                let _ = c.host_command("systemctl disable --now cocoon-snapshotter");
            }
            let was = previous.clone().unwrap_or_default();
            rec.layout = was.layout;
            rec.containerd_file = was.containerd_file;
            rec.written_sha256 = was.written_sha256;
            rec.snapshotter = was.snapshotter;
            for (p, old) in &saved {
                if p == &c.containerd_config {
                    continue;
                }
                match old {
                    Some(b) => rec.files.insert(p.clone(), sha256_hex(b)),
                    None => rec.files.remove(p),
                };
            }
            c.save_record(&rec)?;
            // The restart command may report failure and still have
            // restarted containerd: what counts is that CRI answers again.
            let back = c.restart_containerd();
            let answers = wait_answers(c).await;
            bail!(
                "{e:#}\ncontainerd's configuration was put back{}; cocoon's files stay under {prefix} \
                 (cocoon node uninstall removes them)",
                match (back, answers) {
                    (Ok(()), Ok(())) => " and containerd restarted".to_string(),
                    (Err(e), Ok(())) =>
                        format!(" and containerd serves again (its restart command failed: {e:#})"),
                    (_, Err(e)) => format!(", but containerd does not come back: {e:#}"),
                }
            );
        }
    } else {
        outln!(
            "containerd already serves {}: not restarted",
            handlers.join(", ")
        );
    }

    let missing = missing_host_tools(c, &handlers);
    for m in &missing {
        outln!("warning: this host lacks {m}: pods of the handlers fail until it is installed");
    }
    if let Some(node) = &c.node_name {
        // The scheduler sends pods of the RuntimeClasses only to nodes that
        // can run them: no label while the host lacks what they need, and
        // a TEE's label only with its handler.
        let mut set = vec![];
        let mut unset = vec![];
        if missing.is_empty() {
            set.push((LABEL.to_string(), "true".to_string()));
        } else {
            unset.push(LABEL.to_string());
            outln!("not labelling node {node} {LABEL}=true until the host has what the pods need");
        }
        for (h, l) in TEE_LABELS {
            if missing.is_empty() && handlers.iter().any(|x| x == h) {
                set.push((l.to_string(), "true".to_string()));
            } else {
                unset.push(l.to_string());
            }
        }
        kube::relabel(node, &set, &unset).await?;
        rec.labelled_node = Some(node.clone());
        c.save_record(&rec)?;
        outln!(
            "labelled node {node}: {}",
            set.iter()
                .map(|(k, v)| format!("{k}={v}"))
                .chain(unset.iter().map(|k| format!("{k}-")))
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    outln!(
        "installed: handlers {} on containerd {version} ({layout:?}){}",
        handlers.join(", "),
        if snapshotter {
            ", snapshotter cocoon"
        } else {
            ""
        }
    );
    Ok(())
}

async fn uninstall(a: UninstallArgs) -> Result<()> {
    let c = &a.common;
    let Some(rec) = c.load_record()? else {
        outln!(
            "cocoon is not installed under {} (no install.json): nothing to do",
            c.prefix
        );
        return Ok(());
    };
    if !a.force {
        let cri = Cri::connect(&c.endpoint()).await.with_context(|| {
            "containerd does not answer, so whether pods of cocoon's handlers run is unknown: \
             start it, or pass --force"
        })?;
        let running: Vec<String> = cri
            .pods()
            .await?
            .into_iter()
            .filter(|p| rec.handlers.contains(&p.runtime_handler) && p.state == 0)
            .map(|p| {
                p.metadata
                    .map(|m| format!("{}/{}", m.namespace, m.name))
                    .unwrap_or(p.id)
            })
            .collect();
        if !running.is_empty() {
            bail!(
                "pods still run with cocoon's handlers: {}. Remove them first (drain the node), or pass --force",
                running.join(", ")
            );
        }
    }
    // The labels first: the scheduler stops sending pods here while the
    // rest is undone (and the API credentials are still valid).
    if let Some(node) = rec.labelled_node.as_ref().or(c.node_name.as_ref()) {
        let mut keys = vec![LABEL.to_string()];
        keys.extend(TEE_LABELS.iter().map(|(_, l)| l.to_string()));
        kube::unlabel(node, &keys).await?;
        outln!("removed cocoon's labels from node {node}");
    }
    let config_host = c.host(&rec.config_path);
    let current = std::fs::read_to_string(&config_host).ok();
    let mode = file_mode(&config_host, 0o644);
    let unchanged = current
        .as_deref()
        .is_some_and(|t| rec.written_sha256.as_deref() == Some(&sha256_hex(t.as_bytes())));
    if rec.written_sha256.is_some() {
        if unchanged {
            match &rec.backup {
                Some(b) => {
                    let bytes = std::fs::read(c.host(b))
                        .with_context(|| format!("reading the backup {b}"))?;
                    if rec.original_sha256.as_deref() != Some(&sha256_hex(&bytes)) {
                        bail!(
                            "the backup {b} does not match the configuration cocoon found: refusing to restore it"
                        );
                    }
                    write_atomic(&config_host, &bytes, mode)?;
                    outln!("restored {} from its backup", rec.config_path);
                }
                None => {
                    std::fs::remove_file(&config_host)?;
                    outln!("removed {} (cocoon made it)", rec.config_path);
                }
            }
        } else if let Some(cur) = &current {
            let text = strip(cur, &rec)?;
            write_atomic(&config_host, text.as_bytes(), mode)?;
            outln!(
                "{} changed since the install: removed cocoon's entries and kept the rest (not a byte-for-byte restore)",
                rec.config_path
            );
        }
    }
    if let Some(f) = &rec.containerd_file {
        let _ = std::fs::remove_file(c.host(f));
    }
    if rec.snapshotter.is_some() {
        c.host_command("systemctl disable --now cocoon-snapshotter")?;
    }
    for f in rec.files.keys() {
        match std::fs::remove_file(c.host(f)) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(e).with_context(|| format!("removing {f}")),
        }
    }
    for (l, target) in &rec.links {
        // Only our own link (it may have been replaced since).
        if std::fs::read_link(c.host(l)).is_ok_and(|t| t == Path::new(target)) {
            std::fs::remove_file(c.host(l)).with_context(|| format!("removing {l}"))?;
        }
    }
    if rec.snapshotter.is_some() {
        let _ = c.host_command("systemctl daemon-reload");
    }
    if !served(c)
        .await
        .is_ok_and(|s| rec.handlers.iter().all(|h| !s.runtimes.contains_key(h)))
    {
        c.restart_containerd()?;
        wait_served(c, &rec.handlers, false).await?;
    }
    // The record goes last: until here, a failed uninstall can be re-run.
    if let Some(b) = &rec.backup {
        let _ = std::fs::remove_file(c.host(b));
    }
    std::fs::remove_file(c.record_path())?;
    // Directories the install made, deepest first, where now empty.
    let mut dirs = rec.dirs.clone();
    dirs.sort_by_key(|d| std::cmp::Reverse(d.len()));
    for d in dirs {
        let _ = std::fs::remove_dir(c.host(&d));
    }
    if a.purge {
        let _ = std::fs::remove_dir_all(c.host(STATE_DIR));
        outln!("purged {STATE_DIR}");
    } else if c.host(STATE_DIR).exists() {
        outln!("kept {STATE_DIR} (the node's vTPM CA, which trustees may pin): --purge removes it");
    }
    outln!(
        "uninstalled: containerd no longer offers {}",
        rec.handlers.join(", ")
    );
    Ok(())
}

/// Prints what is installed and whether containerd serves it; 0 when all
/// is as the record says, 1 otherwise. `quick`: files only for presence.
async fn status(c: Common, quick: bool) -> Result<u8> {
    let mut problems = vec![];
    let rec = c.load_record()?;
    let config = std::fs::read_to_string(c.host(&c.containerd_config)).ok();
    let missing = config
        .as_deref()
        .map(|t| containerd::missing_imports(t, |p| c.import_exists(p)))
        .unwrap_or_default();
    for m in &missing {
        problems.push(format!(
            "{} imports {m}, which does not exist: containerd will not start",
            c.containerd_config
        ));
    }
    let served = served(&c).await;
    match &served {
        Ok(s) => outln!(
            "containerd {} answers CRI at {}",
            s.version,
            c.runtime_endpoint
        ),
        Err(e) => problems.push(format!(
            "containerd does not answer CRI at {}: {e:#}",
            c.runtime_endpoint
        )),
    }
    match &rec {
        None => {
            outln!("cocoon: not installed under {}", c.prefix);
            if let Ok(s) = &served {
                for (h, t) in &s.runtimes {
                    if t == containerd::RUNTIME_TYPE {
                        problems.push(format!(
                            "containerd still offers {h} ({t}) without an install record"
                        ));
                    }
                }
            }
        }
        Some(r) => {
            outln!(
                "cocoon {}: installed under {} for containerd {} ({:?})",
                r.cocoon_version,
                c.prefix,
                r.containerd_version,
                r.layout.unwrap_or(Layout::EditV2)
            );
            let mut bad = 0;
            for (f, digest) in &r.files {
                let problem = if quick {
                    (!c.host(f).is_file()).then(|| format!("{f} is missing"))
                } else {
                    match std::fs::read(c.host(f)) {
                        Ok(b) if &sha256_hex(&b) == digest => None,
                        Ok(_) => Some(format!("{f} changed since the install")),
                        Err(_) => Some(format!("{f} is missing")),
                    }
                };
                if let Some(p) = problem {
                    bad += 1;
                    problems.push(p);
                }
            }
            outln!(
                "files: {} of {} {}",
                r.files.len() - bad,
                r.files.len(),
                if quick { "present" } else { "as installed" }
            );
            if r.written_sha256.is_some() {
                let same = config.as_deref().is_some_and(|t| {
                    r.written_sha256.as_deref() == Some(&sha256_hex(t.as_bytes()))
                });
                outln!(
                    "{}: {}",
                    r.config_path,
                    if same {
                        "as the install left it"
                    } else {
                        "changed since the install (uninstall will remove only cocoon's entries)"
                    }
                );
            }
            for h in &r.handlers {
                match served.as_ref().ok().and_then(|s| s.runtimes.get(h)) {
                    Some(t) if t == containerd::RUNTIME_TYPE => outln!("handler {h}: served"),
                    Some(t) => problems.push(format!(
                        "handler {h} is served by {t}, not {}",
                        containerd::RUNTIME_TYPE
                    )),
                    None => problems.push(format!(
                        "handler {h} is not served by containerd (restart it?)"
                    )),
                }
            }
            if r.snapshotter.is_some() {
                let up = c.host(SNAPSHOTTER_SOCKET).exists();
                outln!(
                    "snapshotter cocoon: {}",
                    if up { "listening" } else { "not listening" }
                );
                if !up {
                    problems.push(format!(
                        "the snapshotter does not listen on {SNAPSHOTTER_SOCKET}"
                    ));
                }
            }
            for m in missing_host_tools(&c, &r.handlers) {
                problems.push(format!("this host lacks {m}"));
            }
            if let Some(n) = &r.labelled_node {
                outln!("node {n} labelled {LABEL}=true");
            }
        }
    }
    for p in &problems {
        outln!("problem: {p}");
    }
    Ok(if problems.is_empty() { 0 } else { 1 })
}

#[cfg(test)]
mod tests;
