//! `cocoon`: run a trustee, administer it, act as a guest, and benchmark it.

#[macro_use]
mod out;
mod admin;
mod audit;
mod bench;
mod bench_conns;
mod bench_cri;
mod bench_guest;
mod bench_image;
mod bench_pod;
mod client;
mod guest;
mod guest_image;
mod image;
mod measure;
mod node;
mod pod;
mod policy;
mod run;
mod secret;
mod term;
mod tpm;
mod trustee;
mod verify;

use clap::{Parser, Subcommand};
use std::process::ExitCode;

/// The trustee builds and frees a few hundred small trees (JSON, Rego
/// values) per attestation: jemalloc serves that with less CPU than
/// glibc's malloc (docs/trustee.md, "Allocator").
#[global_allocator]
static ALLOC: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// Cocoon: confidential containers with CoCo-compatible attestation.
#[derive(Parser)]
#[command(name = "cocoon", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the trustee (KBS + attestation service + RVPS) with embedded defaults.
    Trustee(Box<trustee::TrusteeArgs>),
    /// Administer a trustee: resources, policies, reference values.
    Admin(admin::AdminArgs),
    /// Act as a guest: attest to a KBS and print the attestation token.
    Attest(guest::AttestArgs),
    /// Act as a guest: attest and print a resource's plaintext to stdout.
    GetResource(guest::GetResourceArgs),
    /// Verify one piece of TEE evidence offline and print its claims.
    Verify(verify::VerifyArgs),
    /// The trustee's audit log: print it, or verify its hash chain and signed checkpoints.
    #[command(subcommand)]
    Audit(audit::AuditCommand),
    /// Show recent denials: which claim failed which rule.
    Explain(admin::ExplainArgs),
    /// Prepare a TPM for attestation: enroll an AK, read and extend PCRs.
    #[command(subcommand)]
    Tpm(tpm::TpmCommand),
    /// Build the pod VM's guest image; run the guest services (attestation agent, data hub, REST API) or their clients.
    #[command(subcommand)]
    Guest(GuestCommand),
    /// Images: pull/verify/decrypt/unpack as a guest does; encrypt and sign as an owner.
    #[command(subcommand)]
    Image(image::ImageCommand),
    /// Create sealed secrets for guests' data hubs.
    #[command(subcommand)]
    Secret(secret::SecretCommand),
    /// Benchmarks.
    #[command(subcommand)]
    Bench(bench::BenchCommand),
    /// Run a container in its own confidential pod VM; the image is pulled and decrypted inside the guest.
    Run(Box<run::RunArgs>),
    /// Run Kubernetes Pod manifests through a CRI runtime (containerd) as kubelet does.
    #[command(subcommand)]
    Pod(pod::PodCommand),
    /// Install the runtime on a Kubernetes node (containerd handlers, shim, guest image), remove it, or check it.
    #[command(subcommand)]
    Node(node::NodeCommand),
    /// Expected measurements of a pod VM from its artifacts, as trustee reference values.
    #[command(subcommand)]
    Measure(measure::MeasureCommand),
    /// Agent policies: pin what a pod may run and who may reach into it.
    #[command(subcommand)]
    Policy(policy::PolicyCommand),
}

#[derive(Subcommand)]
enum GuestCommand {
    /// Build the pod VM's guest image: Debian's kernel and an initramfs with the static guest binary as PID 1.
    Build(guest_image::BuildArgs),
    #[command(flatten)]
    Services(Box<cocoon_guest::cli::GuestCommand>),
}

fn main() -> ExitCode {
    // The relay QEMU runs per guest connection of a pod's forwarded port.
    let argv: Vec<String> = std::env::args().collect();
    if argv.get(1).map(String::as_str) == Some(run::RELAY_ARG) {
        return match cocoon_hypervisor::tcp_relay(
            argv.get(2).map_or("", String::as_str),
            argv.get(3).map(std::path::Path::new),
        ) {
            Ok(()) => ExitCode::SUCCESS,
            Err(e) => {
                eprintln!("cocoon relay: {e}");
                ExitCode::FAILURE
            }
        };
    }
    let cli = Cli::parse();
    // `bench policy` times the guest's policy engine as the guest runs it,
    // where RUST_BACKTRACE is unset: the engine's parser makes errors while
    // it tries alternatives, and with RUST_BACKTRACE=1 each captured a
    // backtrace (the policy's load took 11 ms instead of 2.3 ms).
    if matches!(cli.command, Command::Bench(bench::BenchCommand::Policy(_)))
        && std::env::var_os("RUST_LIB_BACKTRACE").is_none()
    {
        // SAFETY: no other thread exists yet.
        unsafe { std::env::set_var("RUST_LIB_BACKTRACE", "0") };
    }
    init_logging();
    let rt = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        let r = match cli.command {
            Command::Run(a) => return run::run(*a).await,
            Command::Pod(c) => return pod::run(c).await,
            Command::Node(c) => return node::run(c).await,
            Command::Audit(c) => return audit::run(c).await,
            Command::Policy(c) => policy::run(c).await,
            Command::Measure(c) => measure::run(c).await,
            Command::Trustee(a) => trustee::run(*a).await,
            Command::Admin(a) => admin::run(a).await,
            Command::Attest(a) => guest::attest(a).await,
            Command::GetResource(a) => guest::get_resource(a).await,
            Command::Explain(a) => admin::explain(a).await,
            Command::Verify(a) => verify::run(a),
            Command::Bench(b) => bench::run(b).await,
            Command::Secret(c) => secret::run(c),
            Command::Image(c) => image::run(c).await,
            Command::Guest(GuestCommand::Build(a)) => {
                tokio::task::spawn_blocking(move || guest_image::run(a)).await?
            }
            Command::Guest(GuestCommand::Services(g)) => cocoon_guest::cli::run(*g).await,
            Command::Tpm(t) => tokio::task::spawn_blocking(move || tpm::run(t)).await?,
        };
        r.map(|()| 0u8)
    });
    // A stdin reader may still block; do not wait for it.
    rt.shutdown_background();
    match result {
        // Output was lost (a closed pipe, a full disk): not a success.
        Ok(0) if out::failed() => ExitCode::FAILURE,
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs to stderr, filtered by `COCOON_LOG` in tracing's `EnvFilter`
/// syntax (default `info`). The guest binary has a smaller filter of its
/// own (`cocoon_guest::cli::log_filter`).
fn init_logging() {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("COCOON_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
}
