//! The pod VM's PID 1: sets the guest up ([`init`]), finds its initdata,
//! and serves the Kata agent API to the host over the agent channel
//! ([`channel`]).

pub mod agent;
pub mod channel;
pub mod confine;
pub mod devcgroup;
pub mod init;
pub mod net;
pub mod oci;
pub mod policy;
pub mod pty;
pub mod reaper;
pub mod sandbox;
pub mod spec;
pub mod zygote;

/// The abstract socket the agent's ttrpc server listens on inside the
/// guest; the channel bridge connects the host's port to it.
pub const AGENT_SOCKET: &str = "unix://@cocoon-pod-agent";

/// The vsock address the agent also listens on where the VM has a vsock
/// device (Kata's port).
pub const AGENT_VSOCK: &str = "vsock://-1:1024";

/// Name of the virtio-serial port the host reaches the agent on.
pub const AGENT_PORT: &str = "agent.0";

/// Where initdata is written for the guest services (as Kata's agent does).
pub const INITDATA_DIR: &str = "/run/confidential-containers/initdata";

use std::path::Path;
use std::sync::Arc;

extern "C" fn pause_exit(_: libc::c_int) {
    // SAFETY: _exit is async-signal-safe.
    unsafe { libc::_exit(0) }
}

/// The pause container: sleeps until SIGTERM or SIGINT (as the init of
/// its PID namespace it only gets signals it has a handler for). In a pod
/// that shares its process namespace the kernel hands it the orphans of
/// every container: with SIGCHLD ignored, they are reaped as they exit.
pub fn pause() -> ! {
    // SAFETY: installing a handler that only calls _exit, and ignoring
    // SIGCHLD.
    unsafe {
        libc::signal(libc::SIGTERM, pause_exit as *const () as libc::sighandler_t);
        libc::signal(libc::SIGINT, pause_exit as *const () as libc::sighandler_t);
        libc::signal(libc::SIGCHLD, libc::SIG_IGN);
    }
    loop {
        // SAFETY: pause(2) just sleeps.
        unsafe { libc::pause() };
    }
}

/// Runs as the pod VM's PID 1. Never returns: on a fatal error the VM is
/// powered off after the reason is written to the console.
pub fn run_pid1() -> ! {
    let started = std::time::Instant::now();
    // One malloc arena: glibc would give each thread that allocates an
    // arena of its own (up to eight per CPU), each keeping what it freed,
    // and the agent's memory is the pod's overhead.
    // SAFETY: a plain setting, made before any other thread exists.
    unsafe { libc::mallopt(libc::M_ARENA_MAX, 1) };
    if let Err(e) = init::mount_basics() {
        eprintln!("cocoon-guest: {e}");
        init::power_off();
    }
    // Every exec holds pipes in PID 1; the kernel's 1024 would run out
    // long before memory does. Raised before the zygote's fork, so that
    // every helper has it as one PID 1 starts itself does.
    let nofile = libc::rlimit {
        rlim_cur: 65536,
        rlim_max: 65536,
    };
    // SAFETY: setrlimit with a valid struct.
    let nofile = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &nofile) } == 0;
    // Only where helpers may share PID 1's layout (see zygote.rs). Forked
    // this early, the zygote shares little memory with PID 1 (each page
    // PID 1 writes after the fork is copied), has no log (its helpers'
    // stderr is a container's), and nothing secret has reached PID 1 yet;
    // the root is already the one containers are built from.
    let zygote = oci::early_helper_layout().map(|()| zygote::Zygote::fork());
    init_console_logging();
    if !nofile {
        tracing::warn!("cannot raise the open file limit");
    }
    match setup() {
        Ok(()) => {}
        Err(e) => {
            tracing::error!("{e:#}");
            init::power_off();
        }
    }
    // Under software emulation, with no sign of a TEE, the container
    // runtime helpers share one layout; what they start is randomized.
    // Elsewhere the zygote ends as its socket closes.
    let shared = oci::decide_helper_layout();
    match &shared {
        Ok(()) => tracing::info!("software-emulated CPU: the runtime helpers keep one layout"),
        Err(why) => tracing::debug!("runtime helpers laid out at random: {why}"),
    }
    let zygote = match (shared, zygote) {
        (Ok(()), Ok(Ok(z))) => {
            tracing::info!("the runtime helpers are forked by a zygote");
            Some(z)
        }
        (Ok(()), Ok(Err(e))) => {
            tracing::warn!("the runtime helpers' zygote: {e}; each helper starts afresh");
            None
        }
        _ => None,
    };
    let rt = match crate::runtime() {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            init::power_off();
        }
    };
    let r = rt.block_on(serve(started, zygote));
    if let Err(e) = r {
        tracing::error!("{e:#}");
    }
    init::power_off();
}

/// Logs to the console without colour, filtered by `cocoon.log=` on the
/// kernel command line (default `info`).
fn init_console_logging() {
    let level = std::fs::read_to_string("/proc/cmdline").ok().and_then(|c| {
        c.split_whitespace()
            .find_map(|a| a.strip_prefix("cocoon.log=").map(str::to_string))
    });
    crate::cli::init_stderr_logging(level.as_deref(), false);
}

fn setup() -> anyhow::Result<()> {
    // Measure the command line before anything else can act on it.
    let cmdline = init::cmdline()?;
    let mods = init::load_modules(Path::new("/lib/modules"), Path::new("/lib/modules/order"))?;
    tracing::debug!(modules = mods.len(), "kernel modules loaded");
    if let Some(value) = init::measure_cmdline(&cmdline)? {
        tracing::info!(
            pcr = init::CMDLINE_PCR,
            value = %hex::encode(value),
            "kernel command line measured"
        );
    }
    if let Some(text) = init::find_initdata()? {
        let doc = init::write_initdata(Path::new(INITDATA_DIR), &text)?;
        tracing::info!(digest = %hex::encode(&doc.digest), "initdata found");
    }
    Ok(())
}

async fn serve(started: std::time::Instant, zygote: Option<zygote::Zygote>) -> anyhow::Result<()> {
    let reaper = reaper::Reaper::start()?;
    let exe = std::env::current_exe().unwrap_or_else(|_| "/init".into());
    // The policy comes from initdata (written by setup). It loads while the
    // agent comes up (every decision waits for it); one that does not load
    // refuses every request and stops the guest.
    let policy = Arc::new(policy::Gate::from_initdata(Path::new(INITDATA_DIR))?);
    let loading = policy.clone();
    tokio::task::spawn_blocking(move || {
        if let Err(e) = loading.wait() {
            tracing::error!("{e}: the guest stops");
            init::power_off();
        }
    });
    let sandbox = sandbox::Sandbox::new(
        reaper,
        exe,
        zygote,
        crate::services::DEFAULT_CDH_SOCKET,
        policy.clone(),
    )?;
    sandbox.watch_oom();
    if let Err(e) = net::loopback_up() {
        tracing::warn!("{e}");
    }
    let mut server = ttrpc::r#async::Server::new()
        .bind(AGENT_SOCKET)
        .map_err(|e| anyhow::anyhow!("binding {AGENT_SOCKET}: {e}"))?
        .register_service(agent::services(sandbox.clone(), policy.clone()));
    server
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("starting the agent server: {e}"))?;
    // The rest of the modules (network first, then entropy) load while
    // the host already talks to the agent; then, with a vsock device, its
    // modules; then the guest services.
    // A list that fails does not keep the next from loading: without
    // vsock the host may not reach the agent at all.
    let late = tokio::task::spawn_blocking(|| {
        let dir = Path::new("/lib/modules");
        let mut lists = vec![("late", init::load_modules(dir, &dir.join("order.late")))];
        if init::has_virtio_vsock() {
            lists.push(("vsock", init::load_modules(dir, &dir.join("order.vsock"))));
        }
        lists
    });
    // The port appears once virtio_console is loaded; udev is not running,
    // so wait for the device node.
    let port = loop {
        if let Some(p) = channel::find_port(AGENT_PORT) {
            break p;
        }
        if started.elapsed() > std::time::Duration::from_secs(30) {
            anyhow::bail!("no virtio-serial port named {AGENT_PORT}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    };
    let name = AGENT_SOCKET.trim_start_matches("unix://@").to_string();
    tracing::info!(port = %port.display(), after_ms = started.elapsed().as_millis() as u64, "agent ready");
    let bridge = std::thread::spawn(move || channel::bridge(port, name));
    match late.await {
        Ok(lists) => {
            for (list, loaded) in lists {
                match loaded {
                    Ok(m) => tracing::debug!(list, modules = m.len(), "kernel modules loaded"),
                    Err(e) => tracing::error!(list, "{e}"),
                }
            }
        }
        Err(e) => tracing::error!("loading kernel modules: {e}"),
    }
    // The same services on vsock where the VM has a vsock device.
    let _vsock = match ttrpc::r#async::Server::new().bind(AGENT_VSOCK) {
        Ok(s) => {
            let mut s = s.register_service(agent::services(sandbox.clone(), policy.clone()));
            match s.start().await {
                Ok(()) => {
                    tracing::info!(addr = AGENT_VSOCK, "agent listening on vsock");
                    Some(s)
                }
                Err(e) => {
                    tracing::debug!(error = %e, "no vsock listener");
                    None
                }
            }
        }
        Err(e) => {
            tracing::debug!(error = %e, "no vsock device");
            None
        }
    };
    tokio::spawn(start_guest_services());
    let r = tokio::task::spawn_blocking(move || bridge.join()).await;
    anyhow::bail!("the agent channel ended: {r:?}")
}

/// Parses one guest service's arguments (as `cocoon-guest NAME ARGS...`
/// takes them), with that service's parser alone: building the whole
/// command-line parser three times cost PID 1 about 14 ms of an emulated
/// CPU in every pod's start.
fn service<A: clap::Args>(name: &'static str, args: &[&str]) -> anyhow::Result<A> {
    let matches = A::augment_args(clap::Command::new(name))
        .try_get_matches_from(std::iter::once(name).chain(args.iter().copied()))?;
    Ok(A::from_arg_matches(&matches)?)
}

/// With initdata, starts the attestation agent (which binds the initdata
/// to the TEE first: PCR 8 on a vTPM); then the data hub (configured by
/// initdata's cdh.toml, or with no KBS for plain images) and the workload
/// REST API, as tasks of PID 1. A service that fails is logged; the agent
/// keeps serving (containers that need no secret still run).
async fn start_guest_services() {
    use crate::cli::GuestCommand;
    let spawn = |name: &'static str, cmd: anyhow::Result<GuestCommand>| match cmd {
        Ok(cmd) => Some(tokio::spawn(async move {
            if let Err(e) = crate::cli::run(cmd).await {
                tracing::error!(service = name, "{e:#}");
            }
        })),
        Err(e) => {
            tracing::error!(service = name, "{e}");
            None
        }
    };
    let initdata = Path::new(INITDATA_DIR).join("initdata.toml");
    if !initdata.is_file() {
        tracing::info!("no initdata: no attestation agent; the data hub pulls without a KBS");
        spawn(
            "confidential-data-hub",
            service("cdh", &[]).map(GuestCommand::Cdh),
        );
        return;
    }
    let init = initdata.display().to_string();
    let aa = spawn(
        "attestation-agent",
        // The VM's vTPM is fresh: its key is made here and enrolled by the
        // EK certificate.
        service("aa", &["--initdata-toml", &init, "--create-ak"]).map(GuestCommand::Aa),
    );
    // The data hub asks the attestation agent; wait until it listens (or
    // has failed, in which case the hub reports it on its first request).
    let aa_socket = crate::services::DEFAULT_AA_SOCKET.trim_start_matches("unix://");
    let t = std::time::Instant::now();
    while !Path::new(aa_socket).exists()
        && aa.as_ref().is_some_and(|h| !h.is_finished())
        && t.elapsed() < std::time::Duration::from_secs(60)
    {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    spawn(
        "confidential-data-hub",
        service("cdh", &["--initdata-toml", &init]).map(GuestCommand::Cdh),
    );
    spawn(
        "api-server-rest",
        service("api-server", &[]).map(GuestCommand::ApiServer),
    );
}

#[cfg(test)]
mod tests {
    use super::service;
    use crate::cli::{AaArgs, CdhArgs, GuestCommand, RestArgs};

    /// The whole `cocoon-guest` parser, as the services were parsed before.
    #[derive(clap::Parser)]
    struct Whole {
        #[command(subcommand)]
        cmd: GuestCommand,
    }

    #[test]
    fn each_service_parses_its_own_arguments() {
        use clap::Parser;
        let whole = |args: &[&str]| {
            let argv = std::iter::once("cocoon-guest").chain(args.iter().copied());
            format!("{:?}", Whole::try_parse_from(argv).unwrap().cmd)
        };
        // Every field as the whole parser makes it, for the command lines
        // PID 1 starts the services with.
        let init = ["--initdata-toml", "/run/i.toml"];
        let aa: AaArgs = service("aa", &[init[0], init[1], "--create-ak"]).unwrap();
        let aa = format!("{:?}", GuestCommand::Aa(aa));
        assert_eq!(aa, whole(&["aa", init[0], init[1], "--create-ak"]));
        assert!(aa.contains("create_ak: true"), "{aa}");
        assert!(aa.contains(r#"initdata: Some("/run/i.toml")"#), "{aa}");
        for args in [&init[..], &[]] {
            let cdh: CdhArgs = service("cdh", args).unwrap();
            let mut argv = vec!["cdh"];
            argv.extend_from_slice(args);
            assert_eq!(format!("{:?}", GuestCommand::Cdh(cdh)), whole(&argv));
        }
        let rest: RestArgs = service("api-server", &[]).unwrap();
        assert_eq!(
            format!("{:?}", GuestCommand::ApiServer(rest)),
            whole(&["api-server"])
        );
        // Another service's flag is refused, with its name.
        let e = service::<CdhArgs>("cdh", &["--runtime-register", "9"])
            .unwrap_err()
            .to_string();
        assert!(e.contains("--runtime-register"), "{e}");
    }
}
