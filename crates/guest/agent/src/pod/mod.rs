//! The pod VM's PID 1: sets the guest up ([`init`]), finds its initdata,
//! and serves the Kata agent API to the host over the agent channel
//! ([`channel`]).

pub mod agent;
pub mod channel;
pub mod init;

/// The abstract socket the agent's ttrpc server listens on inside the
/// guest; the channel bridge connects the host's port to it.
pub const AGENT_SOCKET: &str = "unix://@cocoon-pod-agent";

/// Name of the virtio-serial port the host reaches the agent on.
pub const AGENT_PORT: &str = "agent.0";

/// Where initdata is written for the guest services (as Kata's agent does).
pub const INITDATA_DIR: &str = "/run/confidential-containers/initdata";

use std::path::Path;

/// Runs as the pod VM's PID 1. Never returns: on a fatal error the VM is
/// powered off after the reason is written to the console.
pub fn run_pid1() -> ! {
    let started = std::time::Instant::now();
    if let Err(e) = init::mount_basics() {
        eprintln!("cocoon-guest: {e}");
        init::power_off();
    }
    crate::cli::init_logging();
    match setup() {
        Ok(()) => {}
        Err(e) => {
            tracing::error!("{e:#}");
            init::power_off();
        }
    }
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!("cannot start the async runtime: {e}");
            init::power_off();
        }
    };
    let r = rt.block_on(serve(started));
    if let Err(e) = r {
        tracing::error!("{e:#}");
    }
    init::power_off();
}

fn setup() -> anyhow::Result<()> {
    // Measure the command line before anything else can act on it.
    let cmdline = init::cmdline()?;
    let mods = init::load_modules(Path::new("/lib/modules"), Path::new("/lib/modules/order"))?;
    tracing::debug!(modules = mods.len(), "kernel modules loaded");
    if init::measure_cmdline(&cmdline)? {
        tracing::info!(pcr = init::CMDLINE_PCR, "kernel command line measured");
    }
    if let Some(text) = init::find_initdata()? {
        let doc = init::write_initdata(Path::new(INITDATA_DIR), &text)?;
        tracing::info!(digest = %hex::encode(&doc.digest), "initdata found");
    }
    Ok(())
}

async fn serve(started: std::time::Instant) -> anyhow::Result<()> {
    let mut server = ttrpc::r#async::Server::new()
        .bind(AGENT_SOCKET)
        .map_err(|e| anyhow::anyhow!("binding {AGENT_SOCKET}: {e}"))?
        .register_service(agent::services());
    server
        .start()
        .await
        .map_err(|e| anyhow::anyhow!("starting the agent server: {e}"))?;
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
    let r = tokio::task::spawn_blocking(move || bridge.join()).await;
    anyhow::bail!("the agent channel ended: {r:?}")
}
