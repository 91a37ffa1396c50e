//! `cocoon trustee`: serve with embedded defaults.

use anyhow::{Context, Result};
use clap::Args;
use cocoon_kbs::{TlsMode, Trustee, TrusteeConfig};
use std::net::SocketAddr;
use std::path::PathBuf;

/// Options of `cocoon trustee`. With none, it serves HTTPS on 127.0.0.1:8080
/// with a self-signed certificate and state under the default data directory.
#[derive(Args, Debug)]
pub struct TrusteeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Data directory: database, key-encryption key, admin key, TLS files.
    /// Default: $COCOON_DATA_DIR, else $XDG_DATA_HOME/cocoon/trustee, else ~/.local/share/cocoon/trustee.
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Keep state in PostgreSQL instead of the data directory's SQLite
    /// file: a connection string (`postgres://user:password@host/db`, or
    /// `host=/run/postgresql dbname=cocoon`) that every replica of one
    /// deployment shares. The schema is created or migrated at start.
    #[arg(long, env = "COCOON_DATABASE", hide_env_values = true)]
    database: Option<String>,
    /// Connect to the database over TLS, verifying its certificate against
    /// this CA (PEM) and the connection string's host name; the database
    /// may then be on another host. Without it, only a Unix socket or a
    /// loopback address is accepted.
    #[arg(long, env = "COCOON_DATABASE_CA", requires = "database")]
    database_ca: Option<PathBuf>,
    /// Serve plain HTTP (development only). Refused on a listen address
    /// other than loopback unless --allow-insecure-on-network is given.
    #[arg(long, conflicts_with_all = ["tls_cert", "tls_key"])]
    insecure_http: bool,
    /// TLS certificate chain (PEM); needs --tls-key.
    #[arg(long, requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// TLS private key (PEM); needs --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Generate (once) and use a self-signed certificate in the data directory.
    /// This is the default when no certificate is given.
    #[arg(long, conflicts_with_all = ["tls_cert", "insecure_http"])]
    self_signed_tls: bool,
    /// A DNS name or address for the self-signed certificate besides
    /// localhost and the listen address (repeatable; used when the
    /// certificate is first made), e.g. the trustee's Service name.
    #[arg(long = "tls-san", conflicts_with_all = ["tls_cert", "insecure_http"])]
    tls_names: Vec<String>,
    /// Accept the development `sample` TEE (unsigned evidence; proves nothing).
    #[arg(long)]
    allow_dev_tee: bool,
    /// DCAP collateral (TCB info, QE identity, CRLs) for TDX and SGX
    /// evidence that carries none: one collateral JSON file, or a directory
    /// of them (one per platform FMSPC and TEE). Without it the
    /// `tcb_status` claim is `unknown`.
    #[arg(long, alias = "tdx-collateral")]
    dcap_collateral: Option<PathBuf>,
    /// Arm CCA platform attestation keys (CPAKs) to trust: PEM public keys
    /// or EC JWKs, in a file or a directory. Without them every CCA token
    /// is refused.
    #[arg(long)]
    cca_cpak: Option<PathBuf>,
    /// Intel PCCS (or PCS) base URL: DCAP collateral for TDX/SGX platforms
    /// the --dcap-collateral files do not cover is fetched from it and kept
    /// until its nextUpdate (e.g. https://api.trustedservices.intel.com).
    #[arg(long)]
    pccs_url: Option<String>,
    /// Directory of SEV-SNP VCEKs (DER or PEM) for evidence without one.
    #[arg(long)]
    snp_vcek_dir: Option<PathBuf>,
    /// AMD KDS base URL: VCEKs for evidence without one are fetched from it
    /// and kept (e.g. https://kdsintf.amd.com).
    #[arg(long)]
    snp_kds_url: Option<String>,
    /// TPM manufacturer CA certificates (PEM file or directory): a guest
    /// whose EK certificate chains to one enrolls its AK itself by
    /// credential activation (`cocoon tpm enroll --ek-enroll --url URL`).
    #[arg(long)]
    tpm_ek_ca: Option<PathBuf>,
    /// Like --tpm-ek-ca, for CAs of hardware TPM makers: AKs enrolled
    /// through them count as hardware-backed (`ak_hardware_backed`), which
    /// the default policy needs to affirm a TPM's hardware. Never give a
    /// software TPM's CA here.
    #[arg(long)]
    tpm_hardware_ek_ca: Option<PathBuf>,
    /// Accept admin requests without authentication (development only).
    /// Refused on a listen address other than loopback unless
    /// --allow-insecure-on-network is given.
    #[arg(long)]
    insecure_admin: bool,
    /// Allow --insecure-admin and --insecure-http on a non-loopback listen
    /// address: anyone who reaches the port can then administer the trustee
    /// (--insecure-admin), and tokens and uploaded secrets cross the
    /// network in the clear (--insecure-http). Only for a network you fully
    /// control, such as a throwaway test VM's private bridge.
    #[arg(long)]
    allow_insecure_on_network: bool,
    /// Trusted admin public key, repeatable: SPKI PEM (`PUBLIC KEY`, as
    /// `openssl pkey -in KEY -pubout` writes it), Ed25519 or P-256. Default:
    /// the data directory's admin key, created on first start.
    #[arg(long = "admin-public-key")]
    admin_public_keys: Vec<PathBuf>,
    /// Public key of an auditor, repeatable (the same forms as
    /// --admin-public-key): tokens it signs may read the audit log
    /// (`cocoon audit tail|verify`) and nothing else.
    #[arg(long = "auditor-public-key")]
    auditor_public_keys: Vec<PathBuf>,
    /// Key-encryption key file (32 bytes, mode 0600 or stricter: a file group
    /// or others can read is refused). Default: <data-dir>/kek.key, created
    /// on first start; keep it on another volume than the data directory so
    /// one copy of that directory does not hold both the data and its key.
    #[arg(long)]
    kek_file: Option<PathBuf>,
    /// Keep the key-encryption key in a PKCS#11 token (an HSM; SoftHSM2 for
    /// tests) instead of a file: an RFC 7512 URI,
    /// `pkcs11:token=LABEL;object=LABEL?module-path=LIB&pin-source=file:PATH`.
    /// Sealing and opening happen inside the token; the key is created there
    /// (sensitive, not extractable) when the token has none of that label.
    #[arg(long = "kek", value_name = "PKCS11_URI", conflicts_with = "kek_file")]
    kek_pkcs11: Option<String>,
    /// Session lifetime after auth, in seconds.
    #[arg(long, default_value_t = 300)]
    session_timeout: i64,
    /// Attestation token lifetime, in seconds.
    #[arg(long, default_value_t = 300)]
    token_lifetime: i64,
    /// Policies to apply at start: `resource.rego` and `<id>.rego`
    /// attestation policies (a ConfigMap volume in Kubernetes).
    #[arg(long)]
    policy_dir: Option<PathBuf>,
    /// Resources to store at start: `<repo>/<type>/<tag>` files (a Secret
    /// volume with `items` paths in Kubernetes).
    #[arg(long)]
    resource_dir: Option<PathBuf>,
    /// Reference values to register at start: CoCo RVPS messages (`*.json`).
    #[arg(long)]
    reference_value_dir: Option<PathBuf>,
    /// The audit log's signing key (Ed25519 PEM). Default: the data
    /// directory's `audit-key.pem`, created on first start.
    #[arg(long)]
    audit_key: Option<PathBuf>,
    /// Sign an audit checkpoint every this many records (and at each start).
    #[arg(long, default_value_t = 1000)]
    audit_checkpoint_every: u64,
    /// Start although the audit log's tail (from its last signed
    /// checkpoint) does not verify; the problem is recorded in the log.
    #[arg(long)]
    audit_accept_tampered: bool,
    /// Open connections at most; further ones are closed at once (also
    /// capped by the open-file limit, which is raised to its maximum).
    #[arg(long, default_value_t = 10_000)]
    max_connections: usize,
    /// Writes per second each client address may make (the guest's auth,
    /// attest and TPM enrollment, and admin writes); 0: no limit. Over it:
    /// 429 with Retry-After. Resource fetches are not limited.
    #[arg(long, default_value_t = 100.0)]
    unauthenticated_rate: f64,
    /// Bursts allowed above that rate.
    #[arg(long, default_value_t = 200.0)]
    unauthenticated_burst: f64,
    /// Apply the per-client limits to loopback clients too (exempt by
    /// default: a local proxy or the operator).
    #[arg(long)]
    rate_limit_loopback: bool,
    /// Open connections per client address at most (IPv6 by its /64); 0:
    /// no per-client cap. One over is closed at once.
    #[arg(long, default_value_t = 256)]
    max_connections_per_client: usize,
    /// A TCP load balancer's address or network (CIDR; repeatable, or
    /// comma-separated in the variable): its connections must begin with a
    /// PROXY protocol header (v1 or v2), and the client it names is the one
    /// the per-client limits count. Others' connections are served as
    /// before.
    #[arg(long = "trusted-proxy", value_name = "CIDR", env = "COCOON_TRUSTED_PROXIES",
          value_delimiter = ',', value_parser = parse_cidr)]
    trusted_proxies: Vec<ipnet::IpNet>,
    /// Seconds a client has to send a request's headers (HTTP/1), and
    /// again its body (408); also how long an HTTP/2 peer has to answer a
    /// ping. Slower clients hold no connection or task for long.
    #[arg(long, value_name = "SECS", default_value_t = 15,
          value_parser = clap::value_parser!(u64).range(1..=3600))]
    request_read_timeout: u64,
}

/// An address (one host) or a network in CIDR notation.
fn parse_cidr(s: &str) -> Result<ipnet::IpNet, String> {
    s.parse::<ipnet::IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(ipnet::IpNet::from))
        .map_err(|_| format!("{s:?} is neither an address nor a network (such as 10.0.0.0/8)"))
}

/// Runs the trustee until interrupted.
pub async fn run(a: TrusteeArgs) -> Result<()> {
    let tls = if a.insecure_http {
        TlsMode::InsecureHttp
    } else if let (Some(cert), Some(key)) = (a.tls_cert.clone(), a.tls_key.clone()) {
        TlsMode::Files { cert, key }
    } else {
        TlsMode::SelfSigned
    };
    let cfg = TrusteeConfig {
        listen: a.listen,
        data_dir: a
            .data_dir
            .clone()
            .unwrap_or_else(cocoon_kbs::default_data_dir),
        database: a.database.clone(),
        database_ca: a.database_ca.clone(),
        tls,
        tls_names: a.tls_names.clone(),
        audit_key: a.audit_key.clone(),
        audit_checkpoint_every: a.audit_checkpoint_every,
        audit_accept_tampered: a.audit_accept_tampered,
        max_connections: a.max_connections,
        unauthenticated_rate: a.unauthenticated_rate,
        unauthenticated_burst: a.unauthenticated_burst,
        rate_limit_loopback: a.rate_limit_loopback,
        max_connections_per_client: a.max_connections_per_client,
        trusted_proxies: a.trusted_proxies.clone(),
        request_read_timeout_secs: a.request_read_timeout,
        allow_dev_tee: a.allow_dev_tee,
        insecure_admin: a.insecure_admin,
        allow_insecure_on_network: a.allow_insecure_on_network,
        admin_public_keys: a.admin_public_keys.clone(),
        auditor_public_keys: a.auditor_public_keys.clone(),
        kek_file: a.kek_file.clone(),
        kek_pkcs11: a.kek_pkcs11.clone(),
        dcap_collateral: a.dcap_collateral.clone(),
        cca_cpak: a.cca_cpak.clone(),
        pccs_url: a.pccs_url.clone(),
        snp_vcek_dir: a.snp_vcek_dir.clone(),
        snp_kds_url: a.snp_kds_url.clone(),
        tpm_ek_ca: a.tpm_ek_ca.clone(),
        tpm_hardware_ek_ca: a.tpm_hardware_ek_ca.clone(),
        session_timeout_secs: a.session_timeout,
        token_lifetime_secs: a.token_lifetime,
    };
    let data_dir = cfg.data_dir.clone();
    let trustee = Trustee::prepare(cfg).await?;
    let seeded = cocoon_kbs::seed::apply(
        &trustee.state,
        &cocoon_kbs::seed::SeedDirs {
            policies: a.policy_dir.clone(),
            resources: a.resource_dir.clone(),
            reference_values: a.reference_value_dir.clone(),
        },
    )?;
    let url = trustee.url();
    let mut flags = format!("--url {url}");
    if let Some(c) = &trustee.cert_hint {
        flags.push_str(&format!(" --kbs-cert {}", c.display()));
    }
    let mut admin_flags = flags.clone();
    if let Some(k) = &trustee.admin_key_hint {
        admin_flags.push_str(&format!(" --admin-key {}", k.display()));
    }
    // The banner must never take the trustee down (stdout may be a closed pipe).
    macro_rules! say {
        ($($t:tt)*) => {{
            use std::io::Write;
            let _ = writeln!(std::io::stdout(), $($t)*);
        }};
    }
    say!("cocoon trustee listening on {url}");
    say!("  data directory:  {}", data_dir.display());
    if let Some(url) = &a.database {
        say!(
            "  database:        {}",
            cocoon_store::describe_database(url)
        );
    }
    if seeded != Default::default() {
        say!(
            "  applied at start: {} policies, {} resources, {} reference values",
            seeded.policies.len(),
            seeded.resources.len(),
            seeded.reference_values.len()
        );
    }
    if let Some(k) = &trustee.admin_key_hint {
        say!("  admin key:       {}", k.display());
    }
    if let Some(c) = &trustee.cert_hint {
        say!(
            "  TLS certificate: {} (self-signed, for development)",
            c.display()
        );
    }
    say!("  TEEs accepted:   {}", {
        let s = trustee.state.attestation.verifiers().supported();
        if s.is_empty() {
            "none yet (hardware verifiers come with their own issue; --allow-dev-tee enables 'sample')".to_string()
        } else {
            s.join(", ")
        }
    });
    say!("next, in another terminal:");
    say!("  echo -n s3cret > secret.txt");
    say!("  cocoon admin {admin_flags} set-resource kbs:///default/key/1 --file secret.txt");
    if a.allow_dev_tee {
        say!("  cocoon get-resource {flags} kbs:///default/key/1 --tee sample");
    } else {
        say!("  (to try a guest without TEE hardware, restart with --allow-dev-tee and run");
        say!("   cocoon get-resource {flags} kbs:///default/key/1 --tee sample)");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    let audit = trustee.state.audit.clone();
    let stop = trustee.stopper();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot watch for SIGTERM")?;
    let mut serving = std::pin::pin!(trustee.serve());
    let served = tokio::select! {
        r = &mut serving => Some(r),
        _ = tokio::signal::ctrl_c() => None,
        _ = term.recv() => None,
    };
    let served = match served {
        Some(r) => r,
        None => {
            // Requests in flight finish (and record what they did) first.
            tracing::info!("stopping: no new connections, open ones get 10 s to finish");
            stop(std::time::Duration::from_secs(10));
            serving.await
        }
    };
    // What the trustee did is in the audit log before it exits.
    if !audit.flush(std::time::Duration::from_secs(5)).await {
        tracing::error!("stopping with audit records not yet written (the database is away)");
    }
    Ok(served?)
}
