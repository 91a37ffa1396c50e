//! `cocoon-snapshotter`: serves containerd's snapshotter API on a unix
//! socket, for containerd's `proxy_plugins`.

use clap::Parser;
use cocoon_host_grpc::snapshots::snapshots_server::SnapshotsServer;
use cocoon_snapshotter::{policy::GuestPull, service::Service, store::Store};
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

/// containerd proxy snapshotter: overlay snapshots, and none of the layers
/// of images pulled inside confidential pod VMs.
#[derive(Parser)]
#[command(name = "cocoon-snapshotter", version)]
struct Args {
    /// Where snapshots and their metadata live.
    #[arg(long, default_value = "/var/lib/cocoon/snapshotter")]
    root: PathBuf,
    /// The socket containerd's `proxy_plugins` entry names.
    #[arg(long, default_value = "/run/cocoon/snapshotter.sock")]
    address: PathBuf,
    /// containerd's content store, where image manifests are read.
    #[arg(
        long,
        default_value = "/var/lib/containerd/io.containerd.content.v1.content"
    )]
    content_root: PathBuf,
    /// Images whose reference starts with this are always pulled in the
    /// guest (repeatable); images with encrypted layers always are.
    #[arg(long = "guest-pull-image", value_name = "PREFIX")]
    guest_pull_images: Vec<String>,
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> std::process::ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COCOON_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let a = Args::parse();
    match serve(a).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("cocoon-snapshotter: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

async fn serve(a: Args) -> Result<(), String> {
    let store = Store::open(&a.root).map_err(|e| e.to_string())?;
    let svc = Service::new(store, GuestPull::new(a.content_root, a.guest_pull_images));
    if let Some(dir) = a.address.parent() {
        std::fs::create_dir_all(dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&a.address);
    let listener = tokio::net::UnixListener::bind(&a.address)
        .map_err(|e| format!("listening on {}: {e}", a.address.display()))?;
    std::fs::set_permissions(&a.address, std::fs::Permissions::from_mode(0o600))
        .map_err(|e| format!("{}: {e}", a.address.display()))?;
    tracing::info!(address = %a.address.display(), root = %a.root.display(), "serving");
    let stop = async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
    };
    tonic::transport::Server::builder()
        .add_service(SnapshotsServer::new(svc))
        .serve_with_incoming_shutdown(
            tokio_stream::wrappers::UnixListenerStream::new(listener),
            stop,
        )
        .await
        .map_err(|e| e.to_string())?;
    let _ = std::fs::remove_file(&a.address);
    Ok(())
}
