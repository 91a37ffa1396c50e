//! `cocoon attest` and `cocoon get-resource`: act as a guest, with the same
//! attestation agent the guest services run (initdata is bound first).

use crate::client::Connection;
use anyhow::{Context, Result};
use clap::Args;
use cocoon_attester::{AttesterOptions, TpmAttesterConfig};
use cocoon_guest::aa::{AaConfig, AttestationAgent};
use cocoon_types::resource::ResourceUri;
use std::io::Write;
use std::path::PathBuf;

/// Guest-side options.
#[derive(Args, Debug)]
pub struct GuestOptions {
    #[command(flatten)]
    pub(crate) conn: Connection,
    /// TEE to attest as: sample (development), tpm, tdx, snp, az-snp-vtpm, az-tdx-vtpm.
    #[arg(long, default_value = "sample")]
    pub(crate) tee: String,
    /// TPM for --tee tpm: device:/dev/tpmrm0 or swtpm:host=H,port=P.
    #[arg(long = "tpm", env = "COCOON_TPM", default_value = "device:/dev/tpmrm0")]
    pub(crate) tpm: String,
    /// Persistent handle of the TPM attestation key.
    #[arg(long, default_value = "0x81010002")]
    pub(crate) ak_handle: String,
    /// Initdata TOML: bound to the TEE first (vTPM: PCR 8), then sent with the evidence.
    #[arg(long)]
    pub(crate) init_data: Option<PathBuf>,
    /// Allow a plain http:// KBS URL (development only: over plain HTTP the host could forge resources).
    #[arg(long)]
    pub(crate) insecure_http_kbs: bool,
}

pub(crate) async fn agent(g: &GuestOptions) -> Result<AttestationAgent> {
    let init_data = match &g.init_data {
        Some(p) => {
            let text = std::fs::read_to_string(p)
                .with_context(|| format!("cannot read {}", p.display()))?;
            let parsed = cocoon_types::initdata::InitData::from_payload("toml", &text)
                .with_context(|| format!("{} is not initdata", p.display()))?;
            // What the trustee's default policy pins (reference value init_data).
            eprintln!(
                "initdata digest: {} (the trustee's reference value 'init_data' must list it)",
                hex::encode(&parsed.digest)
            );
            Some(text)
        }
        None => None,
    };
    let tpm = TpmAttesterConfig {
        tcti: g.tpm.parse()?,
        ak_handle: u32::from_str_radix(g.ak_handle.trim_start_matches("0x"), 16)
            .with_context(|| format!("--ak-handle '{}' is not hex", g.ak_handle))?,
        ..TpmAttesterConfig::default()
    };
    let cfg = AaConfig {
        tee: Some(g.tee.clone()),
        attester: AttesterOptions { tpm },
        kbs_url: Some(g.conn.url.clone()),
        kbs_cert_pem: g.conn.cert_pem()?,
        kbs_insecure_http: g.insecure_http_kbs,
        init_data,
        ..AaConfig::default()
    };
    Ok(AttestationAgent::start(cfg).await?)
}

fn kbs(aa: &AttestationAgent) -> Result<&cocoon_kbs_client::KbsClient> {
    aa.kbs().context("no KBS configured")
}

/// `cocoon attest`.
#[derive(Args, Debug)]
pub struct AttestArgs {
    #[command(flatten)]
    guest: GuestOptions,
}

/// `cocoon get-resource`.
#[derive(Args, Debug)]
pub struct GetResourceArgs {
    /// Resource URI, e.g. kbs:///default/key/1.
    uri: String,
    #[command(flatten)]
    guest: GuestOptions,
}

/// Attests and prints the token.
pub async fn attest(a: AttestArgs) -> Result<()> {
    let aa = agent(&a.guest).await?;
    let token = kbs(&aa)?.attest().await?;
    outln!("{token}");
    Ok(())
}

/// Attests and writes the resource plaintext to stdout.
pub async fn get_resource(a: GetResourceArgs) -> Result<()> {
    let uri = ResourceUri::parse(&a.uri)?;
    let aa = agent(&a.guest).await?;
    let plain = kbs(&aa)?.get_resource(&uri.path).await?;
    let mut out = std::io::stdout().lock();
    out.write_all(&plain)?;
    out.flush()?;
    Ok(())
}
