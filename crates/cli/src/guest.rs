//! `cocoon attest` and `cocoon get-resource`: act as a guest.

use crate::client::Connection;
use anyhow::{Context, Result};
use clap::Args;
use cocoon_kbs_client::{ClientOptions, KbsClient};
use cocoon_types::resource::ResourceUri;
use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

/// Guest-side options.
#[derive(Args, Debug)]
pub struct GuestOptions {
    #[command(flatten)]
    conn: Connection,
    /// TEE to attest as (only `sample` has a host-side attester).
    #[arg(long, default_value = "sample")]
    tee: String,
    /// Initdata TOML to send (its digest is bound where the TEE allows).
    #[arg(long)]
    init_data: Option<PathBuf>,
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

fn client(g: &GuestOptions) -> Result<KbsClient> {
    let attester = cocoon_attester::attester_for(&g.tee, &Default::default())?;
    let init_data = match &g.init_data {
        Some(p) => Some(
            std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))?,
        ),
        None => None,
    };
    let opts = ClientOptions {
        kbs_cert_pem: g.conn.cert_pem()?,
        init_data,
        key_pair: None,
    };
    Ok(KbsClient::new(&g.conn.url, Arc::from(attester), opts)?)
}

/// Attests and prints the token.
pub async fn attest(a: AttestArgs) -> Result<()> {
    let token = client(&a.guest)?.attest().await?;
    println!("{token}");
    Ok(())
}

/// Attests and writes the resource plaintext to stdout.
pub async fn get_resource(a: GetResourceArgs) -> Result<()> {
    let uri = ResourceUri::parse(&a.uri)?;
    let plain = client(&a.guest)?.get_resource(&uri.path).await?;
    let mut out = std::io::stdout().lock();
    out.write_all(&plain)?;
    out.flush()?;
    Ok(())
}
