//! `cocoon audit tail|verify`: read the trustee's audit log, and check its
//! hash chain and signed checkpoints.

use crate::admin::{Admin, AdminConnection};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use std::path::PathBuf;

#[derive(Subcommand)]
pub enum AuditCommand {
    /// Print audit records (JSON, one per line), oldest first.
    Tail(TailArgs),
    /// Check the whole log: numbering, hash chain and checkpoint signatures.
    Verify(VerifyArgs),
}

#[derive(Args)]
pub struct TailArgs {
    #[command(flatten)]
    admin: AdminConnection,
    /// The newest N records (default 20); with --from, N records from there.
    #[arg(long, short = 'n', default_value_t = 20)]
    limit: usize,
    /// Start at this record number.
    #[arg(long)]
    from: Option<i64>,
}

#[derive(Args)]
pub struct VerifyArgs {
    #[command(flatten)]
    admin: AdminConnection,
    /// The audit public key (PEM) to check checkpoints against, kept apart
    /// from the trustee (default: the one the trustee serves, which proves
    /// the chain but not who signed it).
    #[arg(long)]
    public_key: Option<PathBuf>,
    /// A file remembering the last checkpoint verified: read to detect a
    /// log cut back past it, then updated.
    #[arg(long)]
    state: Option<PathBuf>,
}

#[derive(serde::Deserialize)]
struct Page {
    records: Vec<Row>,
}

#[derive(serde::Deserialize)]
struct Row {
    seq: i64,
    record: String,
}

#[derive(serde::Serialize, serde::Deserialize)]
struct State {
    checkpoint: u64,
    sha256: String,
}

async fn page(ad: &Admin, from: i64, limit: usize) -> Result<Vec<Row>> {
    let p: Page = ad
        .send(
            ad.http
                .get(ad.conn.kbs(&format!("/audit?from={from}&limit={limit}"))),
            "audit",
        )
        .await?
        .json()
        .await?;
    Ok(p.records)
}

/// Every record, in order.
async fn all(ad: &Admin) -> Result<Vec<(i64, Vec<u8>)>> {
    let mut out = vec![];
    let mut from = 1;
    loop {
        let rows = page(ad, from, 5000).await?;
        let n = rows.len();
        for r in rows {
            from = r.seq + 1;
            out.push((r.seq, r.record.into_bytes()));
        }
        if n < 5000 {
            return Ok(out);
        }
    }
}

fn ed25519_from_pem(pem: &str) -> Result<ed25519_dalek::VerifyingKey> {
    match cocoon_kbs::admin::AdminKey::from_pem(pem).context("reading the audit public key")? {
        cocoon_kbs::admin::AdminKey::Ed25519(k) => Ok(k),
        _ => bail!("the audit public key is not Ed25519"),
    }
}

pub async fn run(cmd: AuditCommand) -> Result<u8> {
    match cmd {
        AuditCommand::Tail(a) => {
            let ad = Admin::new(&a.admin)?;
            let rows = match a.from {
                Some(f) => page(&ad, f, a.limit).await?,
                None => {
                    let all = all(&ad).await?;
                    let skip = all.len().saturating_sub(a.limit);
                    all.into_iter()
                        .skip(skip)
                        .map(|(seq, b)| Row {
                            seq,
                            record: String::from_utf8_lossy(&b).into_owned(),
                        })
                        .collect()
                }
            };
            for r in rows {
                println!("{}", r.record);
            }
            Ok(0)
        }
        AuditCommand::Verify(a) => {
            let ad = Admin::new(&a.admin)?;
            let pem = match &a.public_key {
                Some(p) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?,
                None => {
                    ad.send(ad.http.get(ad.conn.kbs("/audit/public-key")), "audit key")
                        .await?
                        .text()
                        .await?
                }
            };
            let key = ed25519_from_pem(&pem)?;
            let anchor: Option<State> = match &a.state {
                Some(p) if p.exists() => Some(
                    serde_json::from_slice(&std::fs::read(p)?)
                        .with_context(|| format!("{} is not a verification state", p.display()))?,
                ),
                _ => None,
            };
            let records = all(&ad).await?;
            let v = match cocoon_kbs::audit::verify(
                &records,
                &key,
                anchor.as_ref().map(|s| (s.checkpoint, s.sha256.as_str())),
            ) {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("audit log does NOT verify: {e}");
                    return Ok(1);
                }
            };
            let after = match &v.last_checkpoint {
                Some((cp, _)) => v.records - cp,
                None => v.records,
            };
            println!(
                "audit log verifies: {} records, last signed checkpoint {}, {after} record(s) after it (signed at the next checkpoint)",
                v.records,
                v.last_checkpoint
                    .as_ref()
                    .map_or("none".into(), |c| c.0.to_string()),
            );
            if let (Some(p), Some((cp, hash))) = (&a.state, &v.last_checkpoint) {
                let s = State {
                    checkpoint: *cp,
                    sha256: hash.clone(),
                };
                std::fs::write(p, serde_json::to_vec_pretty(&s)?)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            Ok(0)
        }
    }
}
