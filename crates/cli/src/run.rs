//! `cocoon run`: one container in its own pod VM, like `docker run`, with
//! the image pulled (and decrypted) inside the guest. The host sees the
//! VM, the agent's answers and the container's stdio, never the image's
//! layers or the keys the trustee releases to the guest.

use anyhow::{Context, Result, bail};
use cocoon_hypervisor::{Mode, Qemu, UserNetwork, VmSpec};
use cocoon_pod::PodVm;
use cocoon_pod::container::ContainerConfig;
use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// First argument that makes `cocoon` the TCP relay of a pod's forward.
pub const RELAY_ARG: &str = "__tcp-relay";

/// The relay command for a [`UserNetwork`]: this very program.
pub fn relay() -> Result<Vec<String>> {
    let exe = std::env::current_exe().context("locating the cocoon binary")?;
    Ok(vec![exe.display().to_string(), RELAY_ARG.into()])
}

/// Where the local vTPM CA lives by default: data, not cache (trustees are
/// configured with its certificates).
pub fn default_vtpm_ca() -> PathBuf {
    std::env::var_os("XDG_DATA_HOME")
        .filter(|d| !d.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("/var/lib"))
        .join("cocoon/vtpm-ca")
}

/// `cocoon run`.
#[derive(clap::Args, Debug)]
pub struct RunArgs {
    /// Pass standard input to the container.
    #[arg(short = 'i', long)]
    interactive: bool,
    /// Run the process on a terminal in the guest, sized from ours and
    /// resized with it; with -i on a terminal, ours is put in raw mode.
    #[arg(short = 't', long)]
    tty: bool,
    /// Trustee (KBS) URL the guest attests to; a loopback URL is forwarded
    /// into the guest under the same name.
    #[arg(long, value_name = "URL")]
    kbs: Option<String>,
    /// The trustee's TLS certificate (PEM), trusted by the guest.
    #[arg(long, value_name = "FILE")]
    kbs_cert: Option<PathBuf>,
    /// Initdata document (TOML) for the pod; without it one is made from
    /// --kbs, --kbs-cert and --insecure-registry.
    #[arg(long, value_name = "FILE")]
    init_data: Option<PathBuf>,
    /// Virtual CPUs.
    #[arg(long, default_value_t = 1)]
    vcpus: u32,
    /// Guest memory, MiB.
    #[arg(long, default_value_t = 2048)]
    memory: u32,
    /// Registry (HOST:PORT) the guest pulls from over plain HTTP.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
    /// Isolation: none, vtpm, tdx, snp. Default: vtpm with --kbs or
    /// --init-data, else none.
    #[arg(long)]
    tee: Option<String>,
    /// vtpm mode: the local CA that certifies each pod's vTPM (created on
    /// first use). Give the trustee its certificates, DIR/certs, with
    /// `--tpm-ek-ca` so guests enroll their attestation keys.
    #[arg(long, env = "COCOON_VTPM_CA", value_name = "DIR")]
    vtpm_ca: Option<PathBuf>,
    /// Guest image directory (`cocoon guest build --out DIR`).
    #[arg(long, env = "COCOON_GUEST_IMAGE", value_name = "DIR")]
    guest_image: PathBuf,
    /// Keep the guest console here (default: kept only when the run fails).
    #[arg(long, value_name = "FILE")]
    console_log: Option<PathBuf>,
    /// Print where the time went (boot, network, pull and start, run).
    #[arg(long)]
    timings: bool,
    /// Print the pod's initdata (made from the flags, or --init-data) and,
    /// on standard error, its digest, which the trustee's reference value
    /// 'init_data' must list; start nothing.
    #[arg(long)]
    print_init_data: bool,
    /// The image (pulled inside the guest).
    image: String,
    /// Command and arguments (default: the image's).
    #[arg(last = true)]
    command: Vec<String>,
}

fn mode(a: &RunArgs) -> Result<Mode> {
    Ok(match a.tee.as_deref() {
        None if a.kbs.is_some() || a.init_data.is_some() => Mode::Vtpm,
        None | Some("none") => Mode::None,
        Some("vtpm") => Mode::Vtpm,
        Some("tdx") => Mode::Tdx,
        Some("snp") => Mode::Snp,
        Some(other) => bail!("--tee {other}: expected none, vtpm, tdx or snp"),
    })
}

/// The port of `host:port` when the host is the loopback address (or
/// `localhost`).
pub(crate) fn loopback_port(hostport: &str) -> Option<u16> {
    let (host, port) = hostport.rsplit_once(':')?;
    let host = host.trim_start_matches('[').trim_end_matches(']');
    let loopback = host == "localhost"
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback());
    if loopback { port.parse().ok() } else { None }
}

/// The `host:port` of a URL, with the scheme's default port.
pub(crate) fn url_hostport(url: &str) -> Option<String> {
    let (scheme, rest) = url.split_once("://")?;
    let auth = rest.split('/').next()?;
    if auth.contains(':') && !auth.ends_with(']') {
        Some(auth.to_string())
    } else {
        Some(format!(
            "{auth}:{}",
            if scheme == "https" { 443 } else { 80 }
        ))
    }
}

/// KBS URLs named by an initdata document's aa.toml and cdh.toml.
fn initdata_urls(doc: &cocoon_types::initdata::InitData) -> Vec<String> {
    let mut urls = Vec::new();
    for (file, path) in [
        ("aa.toml", &["token_configs", "kbs", "url"][..]),
        ("cdh.toml", &["kbc", "url"][..]),
    ] {
        let Some(text) = doc.data.get(file) else {
            continue;
        };
        let Ok(v) = text.parse::<toml::Table>() else {
            continue;
        };
        let mut cur = Some(toml::Value::Table(v));
        for k in path {
            cur = cur.and_then(|c| c.get(*k).cloned());
        }
        if let Some(toml::Value::String(u)) = cur {
            urls.push(u);
        }
    }
    urls
}

/// An initdata document from the flags: the KBS for the attestation
/// agent and data hub, and the plain-HTTP registries.
fn make_initdata(a: &RunArgs) -> Result<Option<String>> {
    let cert = match &a.kbs_cert {
        Some(p) => Some(
            std::fs::read_to_string(p)
                .with_context(|| format!("reading --kbs-cert {}", p.display()))?,
        ),
        None => None,
    };
    initdata_for(a.kbs.as_deref(), cert, &a.insecure_registries)
}

/// The initdata `cocoon run` makes from `--kbs`, the KBS certificate (PEM)
/// and `--insecure-registry` (`None` without a KBS or registry).
pub fn initdata_for(
    kbs: Option<&str>,
    cert: Option<String>,
    insecure_registries: &[String],
) -> Result<Option<String>> {
    if kbs.is_none() && insecure_registries.is_empty() {
        return Ok(None);
    }
    Ok(Some(toml::to_string(&initdata_doc(
        kbs,
        cert,
        insecure_registries,
    )?)?))
}

/// The initdata document of [`initdata_for`] as a table, with `aa.toml`
/// for a KBS and `cdh.toml` when there is a KBS or a registry.
pub fn initdata_doc(
    kbs: Option<&str>,
    cert: Option<String>,
    insecure_registries: &[String],
) -> Result<toml::Table> {
    let mut cdh = toml::Table::new();
    let mut aa = toml::Table::new();
    if let Some(url) = kbs {
        let mut kbc = toml::Table::new();
        kbc.insert("name".into(), "cc_kbc".into());
        kbc.insert("url".into(), url.into());
        let mut kbs = toml::Table::new();
        kbs.insert("url".into(), url.into());
        if let Some(c) = &cert {
            kbc.insert("kbs_cert".into(), c.clone().into());
            kbs.insert("cert".into(), c.clone().into());
        }
        cdh.insert("kbc".into(), kbc.into());
        let mut tc = toml::Table::new();
        tc.insert("kbs".into(), kbs.into());
        aa.insert("token_configs".into(), tc.into());
    }
    if !insecure_registries.is_empty() {
        let mut image = toml::Table::new();
        image.insert(
            "insecure_registries".into(),
            toml::Value::Array(
                insecure_registries
                    .iter()
                    .map(|r| toml::Value::String(r.clone()))
                    .collect(),
            ),
        );
        cdh.insert("image".into(), image.into());
    }
    let mut data = toml::Table::new();
    if !aa.is_empty() {
        data.insert("aa.toml".into(), toml::to_string(&aa)?.into());
    }
    if !cdh.is_empty() {
        data.insert("cdh.toml".into(), toml::to_string(&cdh)?.into());
    }
    let mut doc = toml::Table::new();
    doc.insert("version".into(), "0.1.0".into());
    doc.insert("algorithm".into(), "sha256".into());
    doc.insert("data".into(), data.into());
    Ok(doc)
}

/// The host loopback ports the guest must reach: the image's registry,
/// plain-HTTP registries and the trustee, when they are on 127.0.0.1.
fn forwards(a: &RunArgs, initdata: Option<&str>) -> Result<Vec<u16>> {
    let mut ports = BTreeSet::new();
    let registry = cocoon_image::reference::Reference::parse(&a.image)
        .with_context(|| format!("image '{}'", a.image))?
        .registry
        .clone();
    ports.extend(loopback_port(&registry));
    ports.extend(
        a.insecure_registries
            .iter()
            .filter_map(|r| loopback_port(r)),
    );
    let mut urls: Vec<String> = a.kbs.iter().cloned().collect();
    if let Some(text) = initdata {
        urls.extend(initdata_urls(&cocoon_types::initdata::InitData::parse(
            text,
        )?));
    }
    ports.extend(urls.iter().filter_map(|u| loopback_port(&url_hostport(u)?)));
    Ok(ports.into_iter().collect())
}

fn state_root() -> PathBuf {
    let base = std::env::var_os("XDG_RUNTIME_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            // SAFETY: getuid cannot fail.
            std::env::temp_dir().join(format!("cocoon-{}", unsafe { libc::getuid() }))
        });
    base.join("cocoon").join("run")
}

pub async fn run(a: RunArgs) -> Result<u8> {
    let mode = mode(&a)?;
    let initdata = match &a.init_data {
        Some(p) => {
            if !a.insecure_registries.is_empty() {
                bail!(
                    "--insecure-registry cannot change a given --init-data: \
                     list the registries in its cdh.toml [image] insecure_registries"
                );
            }
            Some(
                std::fs::read_to_string(p)
                    .with_context(|| format!("reading --init-data {}", p.display()))?,
            )
        }
        None => make_initdata(&a)?,
    };
    if a.print_init_data {
        let text = initdata
            .context("this pod has no initdata: give --kbs, --insecure-registry or --init-data")?;
        let doc = cocoon_types::initdata::InitData::parse(&text)?;
        out!("{text}");
        eprintln!(
            "initdata digest ({}): {} (register it as the trustee's reference value 'init_data')",
            doc.algorithm,
            hex::encode(&doc.digest)
        );
        return Ok(0);
    }
    let forwards = forwards(&a, initdata.as_deref())?;
    let root = state_root();
    std::fs::create_dir_all(&root).with_context(|| format!("creating {}", root.display()))?;
    cocoon_hypervisor::qemu::gc_stale(&root);
    let id = format!(
        "run-{}-{:08x}",
        std::process::id(),
        rand_core::RngCore::next_u32(&mut rand_core::OsRng)
    );
    let keep_console = a.console_log.is_some();
    let console = a
        .console_log
        .clone()
        .unwrap_or_else(|| root.join(format!("{id}.console.log")));
    let img = &a.guest_image;
    let spec = VmSpec {
        id: id.clone(),
        mode,
        accel: None,
        vcpus: a.vcpus,
        memory_mib: a.memory,
        kernel: img.join("vmlinuz"),
        initrd: img.join("initrd.img"),
        cmdline: std::fs::read_to_string(img.join("cmdline")).with_context(|| {
            format!(
                "{} is not a guest image (build one with `cocoon guest build --out DIR`)",
                img.display()
            )
        })?,
        firmware: None,
        initdata,
        state_dir: root.join(&id),
        console_log: console.clone(),
        network: Some(UserNetwork {
            forwards: forwards.clone(),
            relay: relay()?,
        }),
        vtpm_ca: (mode == Mode::Vtpm).then(|| a.vtpm_ca.clone().unwrap_or_else(default_vtpm_ca)),
        pod_network: None,
    };
    let qemu = Qemu::new()?;
    let t0 = Instant::now();
    let pod = PodVm::start(&qemu, spec, Duration::from_secs(300))
        .await
        .with_context(|| format!("starting the pod VM (console: {})", console.display()))?;
    let booted = t0.elapsed();
    let result = run_in(&pod, &a, &id, &forwards, t0, booted).await;
    let stopped = pod.stop().await;
    let failed = result.is_err();
    if !keep_console {
        if failed {
            eprintln!("guest console: {}", console.display());
        } else {
            let _ = std::fs::remove_file(&console);
        }
    }
    stopped.context("stopping the pod VM")?;
    result
}

/// Passes our terminal's size to the container's.
async fn pass_terminal_size(agent: &cocoon_pod::AgentClient, cid: &str) {
    if let Some((rows, cols)) = crate::term::size(1) {
        let _ = agent.resize(cid, "", rows.into(), cols.into()).await;
    }
}

async fn run_in(
    pod: &PodVm,
    a: &RunArgs,
    id: &str,
    forwards: &[u16],
    t0: Instant,
    booted: Duration,
) -> Result<u8> {
    let agent = &pod.agent;
    agent.setup_user_network(forwards, true).await?;
    agent.create_sandbox(id, "cocoon").await?;
    let networked = t0.elapsed();
    let c = ContainerConfig {
        id: "main".into(),
        image: a.image.clone(),
        args: a.command.clone(),
        hostname: "cocoon".into(),
        terminal: a.tty,
        console_size: a.tty.then(|| crate::term::size(1)).flatten(),
        ..Default::default()
    };
    // Listen for resizes before the container starts, so one that comes
    // while it starts is not lost.
    let winch_signal = if a.tty {
        use tokio::signal::unix::{SignalKind, signal};
        signal(SignalKind::window_change()).ok()
    } else {
        None
    };
    agent.run_container(&c).await?;
    let started = t0.elapsed();
    // Keys go to the container's terminal as typed (Ctrl-C included);
    // restored when the run ends.
    let raw = (a.tty && a.interactive && crate::term::is_terminal(0))
        .then(|| crate::term::RawMode::enter(0))
        .transpose()
        .context("putting the terminal in raw mode")?;
    let winch = winch_signal.map(|mut winch| {
        let (agent, cid, initial) = (agent.clone(), c.id.clone(), c.console_size);
        tokio::spawn(async move {
            // Resized while the container started: the guest has the old size.
            let now = crate::term::size(1);
            if now.is_some() && now != initial {
                pass_terminal_size(&agent, &cid).await;
            }
            while winch.recv().await.is_some() {
                pass_terminal_size(&agent, &cid).await;
            }
        })
    });
    // Standard streams until EOF; stdin from ours with -i.
    let out = pump(agent.clone(), c.id.clone(), false);
    let err = pump(agent.clone(), c.id.clone(), true);
    if a.interactive {
        let (agent, cid) = (agent.clone(), c.id.clone());
        tokio::spawn(async move {
            let mut stdin = tokio::io::stdin();
            let mut buf = vec![0u8; 32 * 1024];
            loop {
                match stdin.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        if agent.write_stdin(&cid, "", &buf[..n]).await.is_err() {
                            return;
                        }
                    }
                }
            }
            let _ = agent.close_stdin(&cid, "").await;
        });
    } else {
        agent.close_stdin(&c.id, "").await?;
    }
    // Ctrl-C and SIGTERM go to the container, as `docker run` proxies them.
    let sigs = {
        let (agent, cid) = (agent.clone(), c.id.clone());
        tokio::spawn(async move {
            use tokio::signal::unix::{SignalKind, signal};
            let (Ok(mut int), Ok(mut term)) = (
                signal(SignalKind::interrupt()),
                signal(SignalKind::terminate()),
            ) else {
                return;
            };
            loop {
                let s = tokio::select! {
                    _ = int.recv() => libc::SIGINT,
                    _ = term.recv() => libc::SIGTERM,
                };
                let _ = agent.signal(&cid, "", s as u32).await;
            }
        })
    };
    let status = agent.wait(&c.id, "").await;
    let _ = out.await;
    let _ = err.await;
    sigs.abort();
    if let Some(w) = winch {
        w.abort();
    }
    drop(raw);
    let status = status?;
    let ran = t0.elapsed();
    let stats = if a.timings {
        agent.agent_stats().await.ok()
    } else {
        None
    };
    agent.remove_container(&c.id).await?;
    if a.timings {
        let m = stats.unwrap_or_default();
        eprintln!(
            "timings: boot {:.2}s, network {:.2}s, pull+create+start {:.2}s, run {:.2}s, \
             total {:.2}s; agent rss {} KiB (peak {} KiB; anon {}, file {}, shmem {}; {} threads)",
            booted.as_secs_f64(),
            (networked - booted).as_secs_f64(),
            (started - networked).as_secs_f64(),
            (ran - started).as_secs_f64(),
            t0.elapsed().as_secs_f64(),
            m.rss_kib,
            m.peak_rss_kib,
            m.rss_anon_kib,
            m.rss_file_kib,
            m.rss_shmem_kib,
            m.threads
        );
    }
    Ok(u8::try_from(status.clamp(0, 255)).unwrap_or(255))
}

fn pump(agent: cocoon_pod::AgentClient, id: String, stderr: bool) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            match agent.read(&id, "", stderr).await {
                Ok(d) if d.is_empty() => return,
                Ok(d) => {
                    let r = if stderr {
                        let mut e = tokio::io::stderr();
                        e.write_all(&d).await.and(e.flush().await)
                    } else {
                        let mut o = tokio::io::stdout();
                        o.write_all(&d).await.and(o.flush().await)
                    };
                    if r.is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_endpoints_are_forwarded() {
        assert_eq!(loopback_port("127.0.0.1:5000"), Some(5000));
        assert_eq!(loopback_port("[::1]:5000"), Some(5000));
        assert_eq!(loopback_port("localhost:5000"), Some(5000));
        assert_eq!(loopback_port("registry.example:5000"), None);
        assert_eq!(loopback_port("10.1.2.3:5000"), None);
        assert_eq!(
            url_hostport("https://127.0.0.1:8443/kbs"),
            Some("127.0.0.1:8443".into())
        );
        assert_eq!(
            url_hostport("https://127.0.0.1"),
            Some("127.0.0.1:443".into())
        );
    }

    #[test]
    fn generated_initdata_carries_kbs_and_registries() {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct T {
            #[command(flatten)]
            r: RunArgs,
        }
        let t = T::parse_from([
            "t",
            "--guest-image",
            "/img",
            "--kbs",
            "https://127.0.0.1:8443",
            "--insecure-registry",
            "127.0.0.1:5000",
            "127.0.0.1:5000/app:1",
            "--",
            "echo",
            "hi",
        ]);
        let text = make_initdata(&t.r).unwrap().unwrap();
        let doc = cocoon_types::initdata::InitData::parse(&text).unwrap();
        assert_eq!(
            initdata_urls(&doc),
            ["https://127.0.0.1:8443", "https://127.0.0.1:8443"]
        );
        assert!(doc.data["cdh.toml"].contains("127.0.0.1:5000"));
        assert_eq!(forwards(&t.r, Some(&text)).unwrap(), [5000, 8443]);
        assert_eq!(t.r.command, ["echo", "hi"]);
        assert_eq!(mode(&t.r).unwrap(), Mode::Vtpm);
    }
}
