//! Trustee start-up: data directory, keys, store, TLS, and the listener.

use crate::admin::AdminKey;
use crate::api::{KbsState, denial_recorder, router};
pub use crate::data_dir::DataPaths;
use crate::data_dir::{ensure_admin_key, ensure_self_signed, file_err, warn_if_kek_beside_db};
use crate::decision::DecisionCache;
use crate::metrics::Metrics;
use crate::session::SessionSealer;
use cocoon_attestation::{AsConfig, AttestationService};
use cocoon_rvps::Rvps;
use cocoon_store::{Kek, PgStore, SqliteStore, Store};
use cocoon_verifier::{VerifierOptions, VerifierRegistry};
use serde_json::json;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// How the trustee serves.
#[derive(Debug, Clone)]
pub enum TlsMode {
    /// Plain HTTP (development only).
    InsecureHttp,
    /// A certificate and key given by the operator (PEM files).
    Files {
        /// Certificate chain.
        cert: PathBuf,
        /// Private key.
        key: PathBuf,
    },
    /// A self-signed certificate kept in the data directory (development).
    SelfSigned,
}

/// Trustee configuration; [`TrusteeConfig::default`] is what runs with no flags.
#[derive(Debug, Clone)]
pub struct TrusteeConfig {
    /// Listen address (default 127.0.0.1:8080; port 0 picks a free port).
    pub listen: SocketAddr,
    /// Data directory: database, key-encryption key, admin key, TLS.
    pub data_dir: PathBuf,
    /// A PostgreSQL connection string for a database shared by replicas;
    /// `None`: the embedded SQLite database in the data directory.
    pub database: Option<String>,
    /// The CA (PEM) that the database server's certificate must chain to:
    /// the connection is then TLS, and the database may be on another
    /// host. `None`: plain text, to this machine only.
    pub database_ca: Option<PathBuf>,
    /// TLS mode.
    pub tls: TlsMode,
    /// The audit log's signing key (Ed25519 PEM); default
    /// `<data-dir>/audit-key.pem`, created on first start.
    pub audit_key: Option<PathBuf>,
    /// A signed checkpoint every this many audit records (and at start).
    pub audit_checkpoint_every: u64,
    /// Start although the audit log's tail does not verify (recorded in
    /// the log as a signed `tamper` checkpoint).
    pub audit_accept_tampered: bool,
    /// Open connections at most (further ones are closed at once); also
    /// capped by the open-file limit.
    pub max_connections: usize,
    /// Requests per second each client may make to the unauthenticated
    /// routes (`auth`, `attest`, TPM enrollment), with bursts of
    /// `unauthenticated_burst`; 0: no limit.
    pub unauthenticated_rate: f64,
    pub unauthenticated_burst: f64,
    /// Apply those limits to loopback clients too.
    pub rate_limit_loopback: bool,
    /// Open connections per client address at most (IPv6 by its /64); 0:
    /// no per-client cap.
    pub max_connections_per_client: usize,
    /// Addresses of trusted TCP proxies (load balancers): their
    /// connections must begin with a PROXY protocol header (v1 or v2),
    /// and the client it names is the one the limits count.
    pub trusted_proxies: Vec<ipnet::IpNet>,
    /// Seconds a client has to send a request's headers, and again its
    /// body; slower: closed (the body with 408).
    pub request_read_timeout_secs: u64,
    /// Extra DNS names or addresses for a self-signed certificate (made
    /// once; the names guests reach the trustee by, e.g. a Service's).
    pub tls_names: Vec<String>,
    /// Register development TEEs (sample).
    pub allow_dev_tee: bool,
    /// Accept admin requests without authentication.
    pub insecure_admin: bool,
    /// Allow `insecure_admin` and plain HTTP on a non-loopback listen
    /// address; without it such a configuration refuses to start.
    pub allow_insecure_on_network: bool,
    /// Trusted admin public keys (PEM). Empty: the data directory's admin key,
    /// created on first start.
    pub admin_public_keys: Vec<PathBuf>,
    /// Auditors' public keys: their tokens read the audit log only.
    pub auditor_public_keys: Vec<PathBuf>,
    /// Key-encryption key file (default `<data-dir>/kek.key`).
    pub kek_file: Option<PathBuf>,
    /// The key-encryption key in a PKCS#11 token instead (an RFC 7512
    /// URI with `module-path` and `pin-source`).
    pub kek_pkcs11: Option<String>,
    /// DCAP collateral JSON used for TDX evidence that carries none.
    pub dcap_collateral: Option<PathBuf>,
    /// CCA platform attestation keys (PEM/JWK file or directory).
    pub cca_cpak: Option<PathBuf>,
    /// Intel PCCS (or PCS) base URL for DCAP collateral.
    pub pccs_url: Option<String>,
    /// Directory of SEV-SNP VCEKs.
    pub snp_vcek_dir: Option<PathBuf>,
    /// AMD KDS base URL for VCEKs.
    pub snp_kds_url: Option<String>,
    /// TPM CAs: AKs whose TPM's EK certificate chains to one are
    /// registered by credential activation, as software-backed (the CA may
    /// be a software TPM's, like swtpm's local CA).
    pub tpm_ek_ca: Option<PathBuf>,
    /// Hardware TPM makers' CAs: AKs enrolled through them count as
    /// hardware-backed, so the `tpm` hardware claim is affirming.
    pub tpm_hardware_ek_ca: Option<PathBuf>,
    /// Session lifetime, seconds.
    pub session_timeout_secs: i64,
    /// Token lifetime, seconds.
    pub token_lifetime_secs: i64,
}

/// The default data directory: `$COCOON_DATA_DIR`, else
/// `$XDG_DATA_HOME/cocoon/trustee`, else `~/.local/share/cocoon/trustee`.
pub fn default_data_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("COCOON_DATA_DIR") {
        return PathBuf::from(d);
    }
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    base.join("cocoon").join("trustee")
}

impl Default for TrusteeConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:8080".parse().expect("valid literal"),
            data_dir: default_data_dir(),
            database: None,
            database_ca: None,
            tls: TlsMode::SelfSigned,
            tls_names: vec![],
            audit_key: None,
            audit_checkpoint_every: 1000,
            audit_accept_tampered: false,
            max_connections: 10_000,
            unauthenticated_rate: 100.0,
            unauthenticated_burst: 200.0,
            rate_limit_loopback: false,
            max_connections_per_client: 256,
            trusted_proxies: Vec::new(),
            request_read_timeout_secs: 15,
            allow_dev_tee: false,
            insecure_admin: false,
            allow_insecure_on_network: false,
            admin_public_keys: Vec::new(),
            auditor_public_keys: Vec::new(),
            kek_file: None,
            kek_pkcs11: None,
            dcap_collateral: None,
            cca_cpak: None,
            pccs_url: None,
            snp_vcek_dir: None,
            snp_kds_url: None,
            tpm_ek_ca: None,
            tpm_hardware_ek_ca: None,
            session_timeout_secs: 300,
            token_lifetime_secs: 300,
        }
    }
}

/// Start-up failures.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Any failure, with what to do about it.
    #[error("{0}")]
    Msg(String),
}

pub(crate) fn err(m: impl std::fmt::Display) -> StartError {
    StartError::Msg(m.to_string())
}

/// Refuses `--insecure-admin` and `--insecure-http` on a listen address
/// other hosts can reach, unless `allow_insecure_on_network` says so.
fn check_exposure(cfg: &TrusteeConfig) -> Result<(), StartError> {
    if cfg.listen.ip().to_canonical().is_loopback() || cfg.allow_insecure_on_network {
        return Ok(());
    }
    let mut risks = Vec::new();
    if cfg.insecure_admin {
        risks.push(
            "--insecure-admin lets anyone who can reach the port read and change every secret and policy without credentials",
        );
    }
    if matches!(cfg.tls, TlsMode::InsecureHttp) {
        risks.push(
            "--insecure-http sends attestation tokens, admin tokens and the secrets admins upload across the network in the clear",
        );
    }
    if risks.is_empty() {
        return Ok(());
    }
    Err(err(format!(
        "refusing to serve on {}, which is not a loopback address, with development flags: {}. \
         Listen on 127.0.0.1 (and reach it through an SSH tunnel), drop the flag, or, \
         only on a network you fully control, add --allow-insecure-on-network",
        cfg.listen,
        risks.join("; ")
    )))
}

/// Sample-TEE reference values, registered (if absent) when development TEEs
/// are on, so a first try with the sample TEE is affirming.
fn seed_sample_reference_values(rvps: &Rvps) -> Result<(), StartError> {
    for (name, value) in [
        ("svn", json!(["1"])),
        ("launch_digest", json!(["abcde"])),
        ("major_version", json!(1)),
        ("minimum_minor_version", json!(0)),
    ] {
        if rvps.record(name).map_err(err)?.is_none() {
            rvps.add(name, value, None).map_err(err)?;
        }
    }
    Ok(())
}

/// A trustee ready to serve.
pub struct Trustee {
    /// Shared state (also what tests drive directly).
    pub state: Arc<KbsState>,
    /// The bound listener.
    pub listener: std::net::TcpListener,
    /// TLS configuration, if serving HTTPS.
    pub tls: Option<axum_server::tls_rustls::RustlsConfig>,
    /// Where the admin private key is, if the trustee created one.
    pub admin_key_hint: Option<PathBuf>,
    /// TLS certificate clients should trust, when self-signed.
    pub cert_hint: Option<PathBuf>,
    recorder_rx: Option<tokio::sync::mpsc::Receiver<crate::api::Denial>>,
    max_connections: usize,
    per_client: (usize, bool),
    trusted_proxies: Vec<ipnet::IpNet>,
    handle: axum_server::Handle,
    limiter: Arc<crate::limits::RateLimiter>,
}

impl Trustee {
    /// Prepares everything and binds the listener.
    pub async fn prepare(cfg: TrusteeConfig) -> Result<Self, StartError> {
        check_exposure(&cfg)?;
        std::fs::create_dir_all(&cfg.data_dir).map_err(|e| {
            err(format!(
                "cannot create data directory {}: {e}",
                cfg.data_dir.display()
            ))
        })?;
        let paths = DataPaths::new(&cfg.data_dir);
        let kek = match &cfg.kek_pkcs11 {
            Some(uri) => {
                let kek = Kek::from_pkcs11_uri(uri).map_err(err)?;
                tracing::info!("key-encryption key: in the PKCS#11 token");
                kek
            }
            None => {
                let kek_path = cfg.kek_file.as_deref().unwrap_or(&paths.kek);
                let kek = Kek::load_or_create(kek_path).map_err(err)?;
                if cfg.database.is_none() {
                    warn_if_kek_beside_db(kek_path, &paths.db);
                }
                kek
            }
        };
        let store: Arc<dyn Store> = match &cfg.database {
            Some(url) => {
                let store = match &cfg.database_ca {
                    Some(ca) => {
                        let pem = std::fs::read(ca).map_err(|e| {
                            StartError::Msg(format!(
                                "cannot read the database CA {}: {e}",
                                ca.display()
                            ))
                        })?;
                        PgStore::connect_tls(url, &pem).map_err(err)?
                    }
                    None => PgStore::connect(url).map_err(err)?,
                };
                tracing::info!(database = %cocoon_store::describe_database(url), "PostgreSQL store connected");
                Arc::new(store)
            }
            None => Arc::new(SqliteStore::open(&paths.db).map_err(err)?),
        };
        let kek = Arc::new(kek);
        let sessions = SessionSealer::load_or_create(&store, kek.clone(), cfg.session_timeout_secs)
            .map_err(err)?;
        let rvps = Rvps::new(store.clone());
        if cfg.allow_dev_tee {
            tracing::warn!(
                "DEVELOPMENT TEEs ARE ENABLED: the 'sample' TEE accepts unsigned evidence and proves nothing. Never use --allow-dev-tee in production."
            );
            seed_sample_reference_values(&rvps)?;
        }
        let fetcher: Option<Arc<dyn cocoon_verifier::fetch::HttpGet>> =
            if cfg.pccs_url.is_some() || cfg.snp_kds_url.is_some() {
                Some(Arc::new(crate::fetch::Fetcher::new().map_err(err)?))
            } else {
                None
            };
        let mut dcap = match &cfg.dcap_collateral {
            Some(p) => {
                let set = cocoon_verifier::tdx::collateral::CollateralSet::load(p).map_err(err)?;
                tracing::info!(platforms = set.len(), path = %p.display(), "DCAP collateral loaded");
                Some(set)
            }
            None => None,
        };
        if let (Some(url), Some(f)) = (&cfg.pccs_url, &fetcher) {
            tracing::info!(url = %url, "DCAP collateral not in files is fetched from this PCCS");
            dcap = Some(
                dcap.unwrap_or_default()
                    .with_pccs(cocoon_verifier::tdx::pccs::Pccs::new(url, f.clone())),
            );
        }
        let dcap_collateral = dcap.map(Arc::new);
        let mut vcek = match &cfg.snp_vcek_dir {
            Some(d) => Some(cocoon_verifier::snp::VcekSource::from_dir(d).map_err(err)?),
            None => None,
        };
        if let (Some(url), Some(f)) = (&cfg.snp_kds_url, &fetcher) {
            tracing::info!(url = %url, "SEV-SNP VCEKs not sent with the evidence are fetched from this KDS");
            vcek = Some(vcek.unwrap_or_default().with_kds(url, f.clone()));
        }
        let snp_vcek = vcek.map(Arc::new);
        let mut ek_trust = Vec::new();
        for (path, hardware) in [(&cfg.tpm_hardware_ek_ca, true), (&cfg.tpm_ek_ca, false)] {
            if let Some(p) = path {
                let t = cocoon_verifier::tpm::ek::EkTrust::load(p)
                    .map_err(err)?
                    .with_hardware_backed(hardware);
                tracing::info!(cas = t.len(), path = %p.display(), hardware_backed = hardware, "TPM AKs may enroll by EK certificate");
                ek_trust.push(t);
            }
        }
        let cca_cpaks = match &cfg.cca_cpak {
            Some(p) => {
                let keys = cocoon_verifier::cca::Cpaks::load(p).map_err(err)?;
                tracing::info!(keys = keys.0.len(), path = %p.display(), "CCA platform keys loaded");
                Some(Arc::new(keys))
            }
            None => None,
        };
        let verifiers = VerifierRegistry::new(VerifierOptions {
            allow_dev_tee: cfg.allow_dev_tee,
            tpm_trusted_aks: Some(Arc::new(crate::tpm_aks::StoreTrustedAks(store.clone()))),
            dcap_collateral,
            cca_cpaks,
            snp_vcek,
        });
        let attestation = AttestationService::new(
            store.clone(),
            &kek,
            rvps.clone(),
            verifiers,
            AsConfig {
                token_lifetime_secs: cfg.token_lifetime_secs,
                ..AsConfig::default()
            },
        )
        .map_err(err)?;

        let mut admin_key_hint = None;
        let mut admin_keys = Vec::new();
        if cfg.insecure_admin {
            tracing::warn!(
                "ADMIN AUTHENTICATION IS OFF (--insecure-admin): anyone who reaches this port can read and change secrets and policies."
            );
        } else {
            let files = if cfg.admin_public_keys.is_empty() {
                ensure_admin_key(&paths)?;
                if paths.admin_key.exists() {
                    admin_key_hint = Some(paths.admin_key.clone());
                }
                vec![paths.admin_pub.clone()]
            } else {
                cfg.admin_public_keys.clone()
            };
            for f in files {
                admin_keys.push(AdminKey::from_file(&f).map_err(|e| file_err(&f, e))?);
            }
        }
        let auditor_keys = cfg
            .auditor_public_keys
            .iter()
            .map(|f| AdminKey::from_file(f).map_err(|e| file_err(f, e)))
            .collect::<Result<Vec<_>, _>>()?;

        let (tls, cert_hint) = match &cfg.tls {
            TlsMode::InsecureHttp => {
                tracing::warn!(
                    "serving plain HTTP (--insecure-http): secrets are still sealed to the TEE, but tokens and admin requests travel in the clear."
                );
                (None, None)
            }
            TlsMode::Files { cert, key } => (Some(load_tls(cert, key).await?), None),
            TlsMode::SelfSigned => {
                ensure_self_signed(&paths, &cfg.listen, &cfg.tls_names)?;
                (
                    Some(load_tls(&paths.tls_cert, &paths.tls_key).await?),
                    Some(paths.tls_cert.clone()),
                )
            }
        };

        let listener = std::net::TcpListener::bind(cfg.listen).map_err(|e| {
            err(format!(
                "cannot listen on {}: {e} (is another trustee running? use --listen)",
                cfg.listen
            ))
        })?;
        listener.set_nonblocking(true).map_err(err)?;
        let (tx, rx) = tokio::sync::mpsc::channel(1024);
        let audit_signer = crate::data_dir::audit_key(&paths, cfg.audit_key.as_deref())?;
        let audit = crate::audit::AuditLog::start(
            store.clone(),
            audit_signer,
            cfg.audit_checkpoint_every,
            crate::audit::Entry::new(
                "start",
                serde_json::json!({
                    "version": env!("CARGO_PKG_VERSION"),
                    "listen": cfg.listen.to_string(),
                    "checkpoint_every": cfg.audit_checkpoint_every,
                    "insecure_admin": cfg.insecure_admin,
                    "allow_dev_tee": cfg.allow_dev_tee,
                    "admin_keys": admin_keys.iter().map(crate::admin::fingerprint).collect::<Vec<_>>(),
                    "auditor_keys": auditor_keys.iter().map(crate::admin::fingerprint).collect::<Vec<_>>(),
                }),
            ),
            cfg.audit_accept_tampered,
        )
        .map_err(err)?;
        let state = Arc::new(KbsState {
            audit,
            store,
            kek,
            sessions,
            attestation,
            rvps,
            admin_keys,
            auditor_keys,
            insecure_admin: cfg.insecure_admin,
            session_timeout_secs: cfg.session_timeout_secs,
            metrics: Metrics::new(),
            decisions: DecisionCache::default(),
            verified_tokens: Default::default(),
            opened_cookies: Default::default(),
            denials: tx,
            ek_trust,
            ek_pending: Default::default(),
            body_timeout: std::time::Duration::from_secs(cfg.request_read_timeout_secs.max(1)),
        });
        Ok(Self {
            state,
            listener,
            tls,
            admin_key_hint,
            cert_hint,
            recorder_rx: Some(rx),
            handle: axum_server::Handle::new(),
            max_connections: crate::limits::connection_budget(cfg.max_connections),
            per_client: (cfg.max_connections_per_client, cfg.rate_limit_loopback),
            trusted_proxies: cfg.trusted_proxies.clone(),
            limiter: Arc::new(crate::limits::RateLimiter::new(
                cfg.unauthenticated_rate,
                cfg.unauthenticated_burst,
                cfg.rate_limit_loopback,
            )),
        })
    }

    /// The bound address.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// The base URL clients use.
    pub fn url(&self) -> String {
        let addr = self.local_addr().map(|a| a.to_string()).unwrap_or_default();
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://{addr}")
    }

    /// Serves until the process is stopped.
    /// Stops a running [`Self::serve`]: no new connections, and `serve`
    /// returns once the open ones are done or `grace` has passed.
    pub fn stopper(&self) -> impl Fn(std::time::Duration) + Send + Sync + 'static {
        let handle = self.handle.clone();
        move |grace| handle.graceful_shutdown(Some(grace))
    }

    pub async fn serve(mut self) -> Result<(), StartError> {
        if let Some(rx) = self.recorder_rx.take() {
            tokio::spawn(denial_recorder(self.state.store.clone(), rx));
        }
        // The router's outermost middleware refuses a client over its rate
        // before a body is waited for; the body's deadline runs inside the
        // KBS routes' own layer.
        let app = router(self.state.clone(), self.limiter.clone())
            .into_make_service_with_connect_info::<SocketAddr>();
        // Each connection holds a permit; TCP_NODELAY: responses go out in
        // several small writes (TLS records, headers and body); with Nagle
        // on, a client's delayed ACK holds the last one back for ~40 ms.
        let limit = crate::limits::LimitAcceptor::new(
            self.max_connections,
            self.per_client.0,
            self.per_client.1,
            self.trusted_proxies.clone(),
        );
        // A client that sends its headers this slowly holds a connection
        // for nothing: closed (its body: `body_deadline`).
        let slow = self.state.body_timeout;
        match self.tls {
            Some(tls) => {
                let mut server = axum_server::from_tcp(self.listener)
                    .handle(self.handle)
                    .acceptor(axum_server::tls_rustls::RustlsAcceptor::new(tls).acceptor(limit));
                bound(server.http_builder(), slow);
                server.serve(app).await.map_err(err)
            }
            None => {
                let mut server = axum_server::from_tcp(self.listener)
                    .handle(self.handle)
                    .acceptor(limit);
                bound(server.http_builder(), slow);
                server.serve(app).await.map_err(err)
            }
        }
    }
}

/// HTTP/1: headers within `slow`. HTTP/2 (offered over TLS): few streams
/// per connection, and a connection whose peer stops answering pings is
/// closed.
fn bound(
    b: &mut hyper_util::server::conn::auto::Builder<hyper_util::rt::TokioExecutor>,
    slow: std::time::Duration,
) {
    b.http1()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(slow);
    b.http2()
        .timer(hyper_util::rt::TokioTimer::new())
        .max_concurrent_streams(32)
        .keep_alive_interval(Some(std::time::Duration::from_secs(30)))
        .keep_alive_timeout(slow);
}

async fn load_tls(
    cert: &Path,
    key: &Path,
) -> Result<axum_server::tls_rustls::RustlsConfig, StartError> {
    let _ = rustls::crypto::ring::default_provider().install_default();
    axum_server::tls_rustls::RustlsConfig::from_pem_file(cert, key)
        .await
        .map_err(|e| {
            err(format!(
                "TLS certificate {} / key {}: {e}",
                cert.display(),
                key.display()
            ))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(listen: &str, insecure_admin: bool, tls: TlsMode, force: bool) -> TrusteeConfig {
        TrusteeConfig {
            listen: listen.parse().unwrap(),
            insecure_admin,
            tls,
            allow_insecure_on_network: force,
            ..TrusteeConfig::default()
        }
    }

    #[test]
    fn development_flags_stay_on_loopback_unless_forced() {
        let network = ["0.0.0.0:8080", "[::]:8080", "192.0.2.7:8080"];
        let loopback = [
            "127.0.0.1:8080",
            "127.8.9.1:0",
            "[::1]:8080",
            "[::ffff:127.0.0.1]:1",
        ];
        for addr in network {
            let e = check_exposure(&cfg(addr, true, TlsMode::SelfSigned, false))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("--insecure-admin") && e.contains("without credentials"),
                "{e}"
            );
            assert!(e.contains("--allow-insecure-on-network"), "{e}");
            assert!(!e.contains("--insecure-http"), "{e}");
            let e = check_exposure(&cfg(addr, false, TlsMode::InsecureHttp, false))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("--insecure-http") && e.contains("in the clear"),
                "{e}"
            );
            assert!(check_exposure(&cfg(addr, true, TlsMode::InsecureHttp, true)).is_ok());
            assert!(check_exposure(&cfg(addr, false, TlsMode::SelfSigned, false)).is_ok());
        }
        for addr in loopback {
            assert!(
                check_exposure(&cfg(addr, true, TlsMode::InsecureHttp, false)).is_ok(),
                "{addr}"
            );
        }
    }
}
