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
    /// Remove the records before a signed checkpoint (keep a copy first:
    /// `cocoon audit tail --from 1 -n N`). The log then starts with that
    /// checkpoint, and a signed prune record says so.
    Prune(PruneArgs),
}

#[derive(Args)]
pub struct PruneArgs {
    #[command(flatten)]
    admin: AdminConnection,
    /// Remove what comes before the newest checkpoint at or before this
    /// record number.
    #[arg(long)]
    before: u64,
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
    /// Read and check only the records from the checkpoint in --state on
    /// (which must be unchanged). The records before it were checked by
    /// the run that wrote the state and are not read again, so a change
    /// among them is found only by a run without this flag.
    #[arg(long, requires = "state")]
    incremental: bool,
    /// Check a copy of the log instead of asking the trustee: records one
    /// per line, as `cocoon audit tail` prints them (needs --public-key).
    #[arg(long, requires = "public_key")]
    file: Option<PathBuf>,
}

#[derive(serde::Deserialize)]
struct Page {
    records: Vec<Row>,
    /// The newest record's number.
    #[serde(default)]
    last: Option<i64>,
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
    /// The log's id, once its checkpoints named it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    log_id: Option<String>,
}

async fn page(ad: &Admin, from: i64, limit: usize) -> Result<Page> {
    let p: Page = ad
        .send(
            ad.http
                .get(ad.conn.kbs(&format!("/audit?from={from}&limit={limit}"))),
            "audit",
        )
        .await?
        .json()
        .await?;
    Ok(p)
}

/// The records from number `from` on, in order, at least `want` of them
/// when there are (pages of 5,000, the trustee's answers being capped).
async fn all_rows(ad: &Admin, mut from: i64, want: usize) -> Result<Vec<Row>> {
    let mut out = vec![];
    loop {
        let rows = page(ad, from, 5000).await?.records;
        let n = rows.len();
        if let Some(r) = rows.last() {
            from = r.seq + 1;
        }
        out.extend(rows);
        if n < 5000 || out.len() >= want {
            return Ok(out);
        }
    }
}

/// Every record from number `from` on, in order.
async fn all(ad: &Admin, from: i64) -> Result<Vec<(i64, Vec<u8>)>> {
    Ok(all_rows(ad, from, usize::MAX)
        .await?
        .into_iter()
        .map(|r| (r.seq, r.record.into_bytes()))
        .collect())
}

/// Records from a copy of the log, one per line, each numbered by its
/// own `seq` (0 when it has none, which the verification then names).
fn from_file(path: &std::path::Path) -> Result<Vec<(i64, Vec<u8>)>> {
    let text = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(text
        .split(|b| *b == b'\n')
        .filter(|l| !l.is_empty())
        .map(|line| {
            let seq = serde_json::from_slice::<serde_json::Value>(line)
                .ok()
                .and_then(|v| v["seq"].as_i64())
                .unwrap_or(0);
            (seq, line.to_vec())
        })
        .collect())
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
            let rows: Vec<Row> = match a.from {
                Some(f) => {
                    let mut rows = all_rows(&ad, f, a.limit).await?;
                    rows.truncate(a.limit);
                    rows
                }
                // The newest N: from N before the end (a trustee that does
                // not say where the end is: everything, then the last N).
                None => {
                    let from = match page(&ad, 1, 0).await?.last {
                        Some(last) => (last - a.limit as i64 + 1).max(1),
                        None => 1,
                    };
                    let mut rows = all_rows(&ad, from, usize::MAX).await?;
                    let skip = rows.len().saturating_sub(a.limit);
                    rows.drain(..skip);
                    rows
                }
            };
            for r in rows {
                outln!("{}", r.record);
            }
            Ok(0)
        }
        AuditCommand::Verify(a) => {
            // A copy in a file needs no trustee (nor an admin key).
            let ad = match &a.file {
                Some(_) => None,
                None => Some(Admin::new(&a.admin)?),
            };
            let pem = match (&a.public_key, &ad) {
                (Some(p), _) => std::fs::read_to_string(p)
                    .with_context(|| format!("reading {}", p.display()))?,
                (None, Some(ad)) => {
                    ad.send(ad.http.get(ad.conn.kbs("/audit/public-key")), "audit key")
                        .await?
                        .text()
                        .await?
                }
                (None, None) => bail!("--file needs --public-key"),
            };
            let key = ed25519_from_pem(&pem)?;
            let anchor: Option<State> = match &a.state {
                Some(p) if p.exists() => Some(
                    serde_json::from_slice(&std::fs::read(p)?)
                        .with_context(|| format!("{} is not a verification state", p.display()))?,
                ),
                _ => None,
            };
            let since = match (&anchor, a.incremental) {
                (Some(s), true) => Some((s.checkpoint, s.sha256.as_str())),
                (None, true) => bail!(
                    "--incremental continues an earlier verification: {} does not exist yet; \
                     run once without --incremental",
                    a.state
                        .as_ref()
                        .map_or("--state".into(), |p| p.display().to_string())
                ),
                (_, false) => None,
            };
            let from = since.map_or(1, |(cp, _)| cp as i64);
            let records = match (&a.file, &ad) {
                (Some(f), _) => from_file(f)?
                    .into_iter()
                    .skip_while(|(s, _)| *s < from)
                    .collect(),
                (None, Some(ad)) => all(ad, from).await?,
                (None, None) => unreachable!("an admin connection is made without --file"),
            };
            let verified = match since {
                Some(anchor) => cocoon_kbs::audit::verify_since(&records, &key, anchor),
                None => cocoon_kbs::audit::verify(
                    &records,
                    &key,
                    anchor.as_ref().map(|s| (s.checkpoint, s.sha256.as_str())),
                ),
            };
            // Another log under the same key: not the log the state is
            // about. When the state's checkpoint was pruned away, the id is
            // all that ties this log to it, so it must be there.
            let anchor_gone = anchor
                .as_ref()
                .zip(records.first())
                .is_some_and(|(s, (first, _))| *first as u64 > s.checkpoint);
            let state_name = a
                .state
                .as_ref()
                .map_or(String::new(), |p| p.display().to_string());
            let verified = verified.and_then(|v| {
                match (
                    anchor.as_ref().and_then(|s| s.log_id.as_deref()),
                    v.log_id.as_deref(),
                ) {
                    (Some(was), Some(is)) if was != is => Err(format!(
                        "this is log {is}, and {state_name} is about log {was}"
                    )),
                    (Some(was), None) if anchor_gone => Err(format!(
                        "the log was pruned past the checkpoint in {state_name} and does not \
                         name itself, so it cannot be told to be log {was}"
                    )),
                    _ => Ok(v),
                }
            });
            let v = match verified {
                Ok(v) => v,
                Err(e) => {
                    eprintln!("audit log does NOT verify: {e}");
                    return Ok(1);
                }
            };
            // The numbers of the first and last records read.
            let first = records.first().map_or(0, |(s, _)| *s as u64);
            let head = records.last().map_or(0, |(s, _)| *s as u64);
            let after = match &v.last_checkpoint {
                Some((cp, _)) => head - cp,
                None => head,
            };
            let read = match since {
                Some((cp, _)) => {
                    format!("records {cp}-{head} checked (from the checkpoint in the state on)")
                }
                None if first > 1 => format!(
                    "records {first}-{head} (the ones before were pruned, as a signed prune record says)"
                ),
                None => format!("{head} records"),
            };
            outln!(
                "audit log verifies: {read}, last signed checkpoint {}, {after} record(s) after it (signed at the next checkpoint)",
                v.last_checkpoint
                    .as_ref()
                    .map_or("none".into(), |c| c.0.to_string()),
            );
            if let (Some(p), Some((cp, hash))) = (&a.state, &v.last_checkpoint) {
                let s = State {
                    checkpoint: *cp,
                    sha256: hash.clone(),
                    log_id: v.log_id.clone(),
                };
                std::fs::write(p, serde_json::to_vec_pretty(&s)?)
                    .with_context(|| format!("writing {}", p.display()))?;
            }
            Ok(0)
        }
        AuditCommand::Prune(a) => {
            let ad = Admin::new(&a.admin)?;
            let out: serde_json::Value = ad
                .send(
                    ad.http
                        .post(ad.conn.kbs("/audit/prune"))
                        .json(&serde_json::json!({"before": a.before})),
                    "audit prune",
                )
                .await?
                .json()
                .await?;
            outln!(
                "audit log pruned: {} record(s) removed; it starts with checkpoint {}",
                out["removed"],
                out["first"]
            );
            Ok(0)
        }
    }
}
