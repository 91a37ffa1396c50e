//! Command line of the guest services, shared by the static `cocoon-guest`
//! binary and `cocoon guest`.

use crate::aa::{AaConfig, AttestationAgent};
use crate::cdh::{AaAttester, CdhConfig, DataHub};
use crate::rest::{DEFAULT_BIND, Features, RestBackends};
use crate::services::{self, AaClient, CdhClient, DEFAULT_AA_SOCKET, DEFAULT_CDH_SOCKET};
use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use cocoon_attester::{AttesterOptions, TpmAttesterConfig};
use std::io::{Read, Write};
use std::path::PathBuf;
use std::sync::Arc;

/// Guest service commands.
#[derive(Subcommand, Debug)]
pub enum GuestCommand {
    /// Run the Attestation Agent (ttrpc AttestationAgentService).
    Aa(AaArgs),
    /// Run the Confidential Data Hub (ttrpc GetResourceService, SealedSecretService).
    Cdh(CdhArgs),
    /// Run the workload REST API on 127.0.0.1.
    ApiServer(RestArgs),
    /// Ask a data hub for a resource and write it to stdout.
    GetResource {
        /// Data hub socket.
        #[arg(long, default_value = DEFAULT_CDH_SOCKET)]
        cdh_socket: String,
        /// kbs:///repo/type/tag
        uri: String,
    },
    /// Ask a data hub to unseal a sealed secret (file, or - for stdin); writes the plaintext to stdout.
    Unseal {
        /// Data hub socket.
        #[arg(long, default_value = DEFAULT_CDH_SOCKET)]
        cdh_socket: String,
        /// File holding `sealed.…`, or `-`.
        file: String,
    },
    /// Ask a data hub to pull an image into a bundle (rootfs + config.json); prints the manifest digest.
    PullImage {
        /// Data hub socket.
        #[arg(long, default_value = DEFAULT_CDH_SOCKET)]
        cdh_socket: String,
        /// Image reference.
        image: String,
        /// Absolute bundle directory in the guest.
        #[arg(long)]
        bundle: String,
    },
    /// Ask an attestation agent for a KBS token.
    Token {
        /// Attestation agent socket.
        #[arg(long, default_value = DEFAULT_AA_SOCKET)]
        aa_socket: String,
    },
}

/// Which TEE and TPM to attest with.
#[derive(Args, Debug, Clone)]
pub struct TeeArgs {
    /// TEE: tdx, snp, az-snp-vtpm, az-tdx-vtpm, tpm, sample (development); unset probes the platform.
    #[arg(long, env = "COCOON_TEE")]
    tee: Option<String>,
    /// TPM TCTI for --tee tpm: device:/dev/tpmrm0 or swtpm:host=H,port=P.
    #[arg(long = "tpm", env = "COCOON_TPM")]
    tpm: Option<String>,
    /// Persistent handle of the TPM attestation key.
    #[arg(long, default_value = "0x81010002")]
    ak_handle: String,
    /// Create the TPM attestation key when the handle is empty (a fresh
    /// vTPM whose key the trustee enrolls by its EK certificate).
    #[arg(long)]
    create_ak: bool,
}

impl TeeArgs {
    fn attester_options(&self) -> Result<AttesterOptions> {
        let mut tpm = TpmAttesterConfig::default();
        if let Some(t) = &self.tpm {
            tpm.tcti = t.parse()?;
        }
        tpm.ak_handle = u32::from_str_radix(self.ak_handle.trim_start_matches("0x"), 16)
            .with_context(|| format!("--ak-handle '{}' is not hex", self.ak_handle))?;
        tpm.create_ak = self.create_ak;
        Ok(AttesterOptions { tpm })
    }
}

/// KBS location.
#[derive(Args, Debug, Clone)]
pub struct KbsArgs {
    /// KBS URL (default: from initdata aa.toml / cdh.toml, or the -c config).
    #[arg(long, env = "COCOON_KBS_URL")]
    kbs_url: Option<String>,
    /// KBS certificate to pin (PEM file).
    #[arg(long, env = "COCOON_KBS_CERT")]
    kbs_cert: Option<PathBuf>,
    /// Allow a plain http:// KBS URL (development only: over plain HTTP the host could forge resources).
    #[arg(long)]
    insecure_http_kbs: bool,
    /// Initdata TOML (bound to the TEE at start and sent with every attestation).
    #[arg(long = "initdata-toml", alias = "initdata")]
    initdata: Option<PathBuf>,
}

impl KbsArgs {
    fn cert(&self) -> Result<Option<Vec<u8>>> {
        self.kbs_cert
            .as_ref()
            .map(|p| std::fs::read(p).with_context(|| format!("cannot read {}", p.display())))
            .transpose()
    }
    fn initdata(&self) -> Result<Option<String>> {
        self.initdata
            .as_ref()
            .map(|p| {
                std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
            })
            .transpose()
    }
}

#[derive(Args, Debug)]
pub struct AaArgs {
    /// Listen address.
    #[arg(long, alias = "attestation_sock", default_value = DEFAULT_AA_SOCKET)]
    socket: String,
    #[command(flatten)]
    tee: TeeArgs,
    #[command(flatten)]
    kbs: KbsArgs,
    /// AA config TOML ([token_configs.kbs] url, cert, insecure_http), as CoCo's aa.toml.
    #[arg(short = 'c', long = "config-file")]
    config: Option<PathBuf>,
    /// Register runtime measurements go to (TPM PCR / TDX RTMR index).
    #[arg(long)]
    runtime_register: Option<u64>,
    /// File the runtime measurement log is appended to.
    #[arg(long)]
    event_log: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct CdhArgs {
    /// Listen address.
    #[arg(long, default_value = DEFAULT_CDH_SOCKET)]
    socket: String,
    /// Attestation agent to get evidence from. Ignored with --tee.
    #[arg(long, default_value = DEFAULT_AA_SOCKET)]
    aa_socket: String,
    /// Attest in-process with this TEE instead of asking an attestation agent.
    #[command(flatten)]
    tee: TeeArgs,
    #[command(flatten)]
    kbs: KbsArgs,
    /// CDH config TOML ([kbc] url, kbs_cert, insecure_http), as CoCo's cdh.toml.
    #[arg(short = 'c', long = "config")]
    config: Option<PathBuf>,
    /// Directory of sealed-secret verification keys named by file.
    #[arg(long, default_value = crate::cdh::DEFAULT_SEALED_KEY_DIR)]
    sealed_key_dir: PathBuf,
    /// Accept sealed secrets without checking signatures (development only).
    #[arg(long)]
    skip_sealed_verification: bool,
    /// Registry (HOST:PORT) pulled from over plain HTTP; adds to cdh.toml [image] insecure_registries.
    #[arg(long = "insecure-registry", value_name = "HOST:PORT")]
    insecure_registries: Vec<String>,
    /// Signature policy for image pulls (kbs:/// URI or path); overrides cdh.toml [image].
    #[arg(long)]
    image_policy: Option<String>,
    /// Layer cache directory; overrides cdh.toml [image] work_dir.
    #[arg(long)]
    image_work_dir: Option<PathBuf>,
}

#[derive(Args, Debug)]
pub struct RestArgs {
    /// Listen address (loopback only).
    #[arg(long, default_value = DEFAULT_BIND)]
    bind: String,
    /// Attestation agent socket.
    #[arg(long, default_value = DEFAULT_AA_SOCKET)]
    aa_socket: String,
    /// Data hub socket.
    #[arg(long, default_value = DEFAULT_CDH_SOCKET)]
    cdh_socket: String,
    /// Endpoint groups to serve.
    #[arg(long, value_enum, default_value = "resource")]
    features: Features,
}

#[derive(serde::Deserialize, Default)]
struct CdhToml {
    #[serde(default)]
    kbc: Option<KbcToml>,
    #[serde(default)]
    image: Option<crate::cdh::ImageSettings>,
}

/// `[kbc]`: CoCo's `url` and `kbs_cert` (`name` and other keys stock
/// configs carry are ignored), plus `insecure_http` (ours; stock data hubs
/// ignore it).
#[derive(serde::Deserialize)]
struct KbcToml {
    url: String,
    #[serde(default)]
    kbs_cert: Option<String>,
    /// Allow a plain `http://` url (development only).
    #[serde(default)]
    insecure_http: bool,
}

fn read_toml<T: serde::de::DeserializeOwned + Default>(
    text: Option<&str>,
    what: &str,
) -> Result<T> {
    match text {
        Some(t) => toml::from_str(t).with_context(|| format!("{what} is not valid")),
        None => Ok(T::default()),
    }
}

async fn wait_for_shutdown() {
    // Inside a pod VM the services are tasks of PID 1: a signal to PID 1
    // (which any process may try) must not stop them.
    if std::process::id() == 1 {
        return std::future::pending().await;
    }
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(s) => s,
        Err(_) => return std::future::pending().await,
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run_aa(a: AaArgs) -> Result<()> {
    let mut cfg = AaConfig {
        tee: a.tee.tee.clone(),
        attester: a.tee.attester_options()?,
        kbs_url: a.kbs.kbs_url.clone(),
        kbs_cert_pem: a.kbs.cert()?,
        kbs_insecure_http: a.kbs.insecure_http_kbs,
        init_data: a.kbs.initdata()?,
        runtime_register: a.runtime_register,
        event_log_file: a.event_log,
        retry: Default::default(),
    };
    // Flags first, then the -c config, then initdata (applied at start).
    if let Some(path) = &a.config {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("cannot read {}", path.display()))?;
        crate::aa::apply_aa_toml(&mut cfg, &text)?;
    }
    let aa = Arc::new(AttestationAgent::start(cfg).await?);
    let mut server = services::aa_server(&a.socket, aa.clone())?;
    server
        .start()
        .await
        .context("cannot start the ttrpc server")?;
    tracing::info!(socket = %a.socket, tee = %aa.tee(), binding = ?aa.init_data_binding(), "attestation agent ready");
    wait_for_shutdown().await;
    let _ = server.shutdown().await;
    Ok(())
}

async fn run_cdh(a: CdhArgs) -> Result<()> {
    let init = a.kbs.initdata()?;
    let config_text = match &a.config {
        Some(p) => Some(
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        ),
        None => None,
    };
    let init_cdh = init
        .as_deref()
        .map(cocoon_types::initdata::InitData::parse)
        .transpose()?
        .and_then(|i| i.data.get("cdh.toml").cloned());
    let file_cfg: CdhToml =
        read_toml(config_text.as_deref().or(init_cdh.as_deref()), "CDH config")?;
    let kbc = file_cfg.kbc;
    let mut image = file_cfg.image.unwrap_or_default();
    image
        .insecure_registries
        .extend(a.insecure_registries.iter().cloned());
    if let Some(p) = &a.image_policy {
        image.image_security_policy_uri = Some(p.clone());
    }
    if let Some(w) = &a.image_work_dir {
        image.work_dir = w.clone();
    }
    let url = a
        .kbs
        .kbs_url
        .clone()
        .or_else(|| kbc.as_ref().map(|k| k.url.clone()));
    let hub = match url.as_deref() {
        None => {
            tracing::warn!(
                "no KBS configured (--kbs-url, -c cdh.toml or initdata cdh.toml [kbc] url): \
                 only images that need no key or KBS-held policy can be pulled"
            );
            Arc::new(DataHub::without_kbs(image)?)
        }
        Some(url) => {
            let mut cfg = CdhConfig::new(url);
            cfg.kbs_insecure_http =
                a.kbs.insecure_http_kbs || kbc.as_ref().is_some_and(|k| k.insecure_http);
            cfg.kbs_cert_pem = a
                .kbs
                .cert()?
                .or_else(|| kbc.and_then(|k| k.kbs_cert).map(String::into_bytes));
            cfg.init_data = init;
            cfg.sealed_key_dir = a.sealed_key_dir;
            cfg.skip_sealed_verification |= a.skip_sealed_verification;
            cfg.image = image;
            let attester: Arc<dyn cocoon_attester::Attester> = match &a.tee.tee {
                Some(t) => Arc::from(cocoon_attester::attester_for(
                    t,
                    &a.tee.attester_options()?,
                )?),
                None => Arc::new(AaAttester::connect(&a.aa_socket).await?),
            };
            Arc::new(DataHub::new(cfg, attester)?)
        }
    };
    let mut server = services::cdh_server(&a.socket, hub)?;
    server
        .start()
        .await
        .context("cannot start the ttrpc server")?;
    tracing::info!(socket = %a.socket, kbs = url.as_deref().unwrap_or("none"), "confidential data hub ready");
    wait_for_shutdown().await;
    let _ = server.shutdown().await;
    Ok(())
}

async fn run_rest(a: RestArgs) -> Result<()> {
    let addr: std::net::SocketAddr = a
        .bind
        .parse()
        .with_context(|| format!("--bind '{}' is not host:port", a.bind))?;
    if !addr.ip().is_loopback() {
        anyhow::bail!(
            "--bind must be a loopback address: the API serves secrets to local workloads only"
        );
    }
    let aa = match a.features {
        Features::Resource => None,
        _ => Some(a.aa_socket.clone()),
    };
    let cdh = match a.features {
        Features::Attestation => None,
        _ => Some(a.cdh_socket.clone()),
    };
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(addr = %listener.local_addr()?, features = ?a.features, "REST API ready");
    let backends = RestBackends {
        aa,
        cdh,
        features: a.features,
    };
    tokio::select! {
        r = crate::rest::serve(listener, backends) => r?,
        _ = wait_for_shutdown() => {}
    }
    Ok(())
}

fn write_stdout(bytes: &[u8]) -> Result<()> {
    let mut out = std::io::stdout().lock();
    out.write_all(bytes)?;
    out.flush()?;
    Ok(())
}

/// Logs to stderr, filtered by `COCOON_LOG` (default `info`; see
/// [`log_filter`]), in colour unless `NO_COLOR` is set.
pub fn init_logging() {
    let colour = std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    init_stderr_logging(std::env::var("COCOON_LOG").ok().as_deref(), colour);
}

/// The guest's log filter: a default level and `target=level` pairs
/// (`info,cocoon_guest::pod::sandbox=debug`), or `info` when `spec` is
/// absent or empty. A spec that does not parse is `info` too, with the
/// reason to log once logging runs.
pub fn log_filter(spec: Option<&str>) -> (tracing_subscriber::filter::Targets, Option<String>) {
    let info = || tracing_subscriber::filter::Targets::new().with_default(tracing::Level::INFO);
    // An empty piece ("info," or an empty spec) would parse as every
    // target at trace.
    let pieces: Vec<&str> = spec
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|p| !p.is_empty())
        .collect();
    if pieces.is_empty() {
        return (info(), None);
    }
    let spec = pieces.join(",");
    match spec.parse() {
        Ok(t) => (t, None),
        Err(e) => (
            info(),
            Some(format!(
                "log filter '{spec}' not understood ({e}): logging at info"
            )),
        ),
    }
}

/// The subscriber [`init_stderr_logging`] installs.
fn stderr_subscriber(
    filter: tracing_subscriber::filter::Targets,
    ansi: bool,
) -> impl tracing::Subscriber + Send + Sync {
    use tracing_subscriber::layer::SubscriberExt;
    tracing_subscriber::fmt()
        // fmt's own filter is info unless told otherwise: the Targets
        // filter is the one that decides.
        .with_max_level(tracing::level_filters::LevelFilter::TRACE)
        .with_ansi(ansi)
        .with_writer(std::io::stderr)
        .finish()
        .with(filter)
}

/// Logs to stderr through [`log_filter`]`(spec)`, coloured with `ansi`;
/// `log` records too.
pub fn init_stderr_logging(spec: Option<&str>, ansi: bool) {
    use tracing_subscriber::util::SubscriberInitExt;
    let (filter, problem) = log_filter(spec);
    stderr_subscriber(filter, ansi).init();
    if let Some(p) = problem {
        tracing::warn!("{p}");
    }
}

/// Runs one guest command until it finishes (services: until SIGTERM/SIGINT).
pub async fn run(cmd: GuestCommand) -> Result<()> {
    match cmd {
        GuestCommand::Aa(a) => run_aa(a).await,
        GuestCommand::Cdh(a) => run_cdh(a).await,
        GuestCommand::ApiServer(a) => run_rest(a).await,
        GuestCommand::GetResource { cdh_socket, uri } => {
            let r = CdhClient::connect(&cdh_socket)
                .await?
                .get_resource(&uri)
                .await?;
            write_stdout(&r)
        }
        GuestCommand::Unseal { cdh_socket, file } => {
            let mut secret = Vec::new();
            if file == "-" {
                std::io::stdin().read_to_end(&mut secret)?;
            } else {
                secret = std::fs::read(&file).with_context(|| format!("cannot read {file}"))?;
            }
            let p = CdhClient::connect(&cdh_socket)
                .await?
                .unseal(&secret)
                .await?;
            write_stdout(&p)
        }
        GuestCommand::PullImage {
            cdh_socket,
            image,
            bundle,
        } => {
            let digest = CdhClient::connect(&cdh_socket)
                .await?
                .pull_image(&image, &bundle)
                .await?;
            write_stdout(format!("{digest}\n").as_bytes())
        }
        GuestCommand::Token { aa_socket } => {
            let t = AaClient::connect(&aa_socket).await?.token("kbs").await?;
            write_stdout(&t)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A stock CoCo cdh.toml (`name`, other sections) still parses; the
    /// plain-HTTP allowance is off unless `insecure_http = true` is there.
    #[test]
    fn cdh_toml_insecure_http_key() {
        let stock = "socket = \"unix:///run/confidential-containers/cdh.sock\"\n\n[kbc]\nname = \"cc_kbc\"\nurl = \"http://10.0.2.2:8080\"\n\n[[credentials]]\nresource_uri = \"kbs:///default/credential/test\"\npath = \"/run/creds\"\n";
        let cfg: CdhToml = read_toml(Some(stock), "CDH config").unwrap();
        let kbc = cfg.kbc.unwrap();
        assert_eq!(kbc.url, "http://10.0.2.2:8080");
        assert!(!kbc.insecure_http);
        let dev =
            "[kbc]\nname = \"cc_kbc\"\nurl = \"http://10.0.2.2:8080\"\ninsecure_http = true\n";
        let cfg: CdhToml = read_toml(Some(dev), "CDH config").unwrap();
        assert!(cfg.kbc.unwrap().insecure_http);
    }

    /// `cocoon.log=` and `COCOON_LOG` take a level and `target=level`
    /// pairs; nothing, an empty spec or empty pieces are `info`; anything
    /// else is `info` with the reason.
    #[test]
    fn log_filters() {
        use tracing::Level;
        let (f, problem) = log_filter(Some("warn,cocoon_guest::pod::sandbox=debug,h2=error,"));
        assert_eq!(problem, None);
        assert!(f.would_enable("cocoon_guest::pod::sandbox", &Level::DEBUG));
        assert!(!f.would_enable("cocoon_guest::pod::sandbox", &Level::TRACE));
        assert!(!f.would_enable("cocoon_guest::pod", &Level::INFO));
        assert!(f.would_enable("cocoon_guest::pod", &Level::WARN));
        assert!(!f.would_enable("h2", &Level::WARN));
        for (spec, bad) in [
            (None, false),
            (Some(""), false),
            (Some(" , "), false),
            (Some("info,"), false),
            (Some("no=such=level"), true),
            (Some("cocoon=loud"), true),
        ] {
            let (f, problem) = log_filter(spec);
            assert!(f.would_enable("any", &Level::INFO), "{spec:?}");
            assert!(!f.would_enable("any", &Level::DEBUG), "{spec:?}");
            assert_eq!(problem.is_some(), bad, "{spec:?}: {problem:?}");
        }
    }

    /// The installed subscriber passes what the filter enables, debug and
    /// trace included (fmt's own filter is info unless told otherwise).
    #[test]
    fn the_subscriber_logs_what_the_filter_enables() {
        use tracing::Level;
        let (filter, _) = log_filter(Some("info,cocoon_guest::pod::sandbox=trace"));
        let d = tracing::Dispatch::new(stderr_subscriber(filter, false));
        tracing::dispatcher::with_default(&d, || {
            assert!(tracing::enabled!(target: "cocoon_guest::pod::sandbox", Level::TRACE));
            assert!(tracing::enabled!(target: "cocoon_guest::pod::sandbox", Level::DEBUG));
            assert!(tracing::enabled!(target: "elsewhere", Level::INFO));
            assert!(!tracing::enabled!(target: "elsewhere", Level::DEBUG));
        });
    }
}
