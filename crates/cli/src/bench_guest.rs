//! `cocoon bench guest`: time from Attestation Agent start to the first
//! secret in hand, with the `sample` attester (the baseline: protocol and
//! trustee cost only) and the `tpm` attester on a real software TPM, each
//! repeated and reported as median / p90, in the same run.
//!
//! One run = build the agent (attester, initdata-free), run the KBS
//! handshake with fresh evidence, fetch and decrypt one resource. The TPM
//! is a swtpm the benchmark starts (or `--tpm TCTI`) with an enrolled AK
//! the trustee is told to trust and PCR reference values registered.

use crate::admin::{Admin, AdminConnection};
use crate::bench::percentile_ms;
use anyhow::{Context, Result, bail};
use clap::Args;
use cocoon_attester::{AttesterOptions, TpmAttesterConfig};
use cocoon_guest::aa::{AaConfig, AttestationAgent};
use cocoon_tpm::{DEFAULT_AK_HANDLE, KeyAlgorithm, Tcti, Tpm};
use cocoon_types::resource::ResourceUri;
use std::time::{Duration, Instant};

/// `cocoon bench guest`.
#[derive(Args, Debug)]
pub struct GuestBenchArgs {
    /// The trustee and its admin key (to store the resource, trust the AK,
    /// set PCR reference values).
    #[command(flatten)]
    admin: AdminConnection,
    /// Runs per attester.
    #[arg(long, default_value_t = 15)]
    runs: usize,
    /// TPM to use (default: start a swtpm on 127.0.0.1 for the benchmark).
    #[arg(long = "tpm")]
    tpm: Option<String>,
    /// Allow a plain http:// trustee URL for the agent (development only).
    #[arg(long)]
    insecure_http_kbs: bool,
}

/// Median, p90 and minimum in milliseconds.
fn stats(v: &[Duration]) -> (f64, f64, f64) {
    let mut us: Vec<u32> = v
        .iter()
        .map(|d| d.as_micros().min(u32::MAX as u128) as u32)
        .collect();
    us.sort_unstable();
    (
        percentile_ms(&us, 0.5),
        percentile_ms(&us, 0.9),
        percentile_ms(&us, 0.0),
    )
}

async fn time_runs(
    label: &str,
    runs: usize,
    cfg: &AaConfig,
    path: &cocoon_types::resource::ResourcePath,
    expected: &[u8],
) -> Result<Vec<Duration>> {
    let mut out = Vec::with_capacity(runs);
    // One warm-up run (connection set-up, lazy statics) not counted.
    for i in 0..=runs {
        let t0 = Instant::now();
        let aa = AttestationAgent::start(cfg.clone()).await?;
        let secret = aa
            .kbs()
            .context("no KBS")?
            .get_resource(path)
            .await
            .with_context(|| format!("{label}: fetching the resource failed"))?;
        let dt = t0.elapsed();
        if secret.as_slice() != expected {
            bail!("{label}: the released secret differs from the stored one");
        }
        if i > 0 {
            out.push(dt);
        }
    }
    Ok(out)
}

/// Runs the benchmark.
pub async fn run(a: GuestBenchArgs) -> Result<()> {
    if a.runs == 0 {
        bail!("--runs must be at least 1");
    }
    let admin = Admin::new(&a.admin)?;
    let conn = admin.conn.clone();
    let uri = ResourceUri::parse("kbs:///bench/guest/secret")?;
    let mut secret = vec![0u8; 32];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
    admin
        .send(
            admin
                .http
                .post(conn.kbs(&format!("/resource/{}", uri.path)))
                .body(secret.clone()),
            "storing the benchmark resource",
        )
        .await?;

    // The TPM: a swtpm of our own unless one is given.
    let tmp = tempfile::tempdir()?;
    let (_swtpm, tcti) = match &a.tpm {
        Some(t) => (None, t.parse::<Tcti>()?),
        None => {
            let sw = cocoon_tpm::swtpm::Swtpm::start(tmp.path())?;
            let t = sw.tcti();
            (Some(sw), t)
        }
    };
    let tcti2 = tcti.clone();
    let (ak_der, pcrs) = tokio::task::spawn_blocking(move || -> Result<_> {
        let mut tpm = Tpm::open(&tcti2)?;
        let (ak, _) = tpm.ensure_ak(DEFAULT_AK_HANDLE, KeyAlgorithm::Rsa2048)?;
        Ok((ak.to_spki_der()?, tpm.pcr_read_sha256()?))
    })
    .await??;
    // The benchmark's swtpm is declared hardware-backed, and its boot PCRs
    // and the absence of initdata pinned, so the default policy affirms it.
    admin
        .send(
            admin
                .http
                .post(format!("{}?hardware_backed=true", conn.kbs("/tpm-ak")))
                .body(ak_der),
            "trusting the AK",
        )
        .await?;
    let pins = [0usize, 1, 2, 3, 4, 5, 6, 7, 9]
        .into_iter()
        .map(|i| {
            (
                format!("tpm_pcr{i}"),
                serde_json::json!([hex::encode(pcrs[i])]),
            )
        })
        .chain([("init_data".to_string(), serde_json::json!(["none"]))]);
    for (name, value) in pins {
        admin
            .send(
                admin
                    .http
                    .put(conn.kbs(&format!("/reference-value/{name}")))
                    .json(&serde_json::json!({ "value": value })),
                "setting reference values",
            )
            .await?;
    }

    let base = AaConfig {
        kbs_url: Some(conn.url.clone()),
        kbs_cert_pem: conn.cert_pem()?,
        kbs_insecure_http: a.insecure_http_kbs,
        ..AaConfig::default()
    };
    let sample_cfg = AaConfig {
        tee: Some("sample".into()),
        ..base.clone()
    };
    let tpm_cfg = AaConfig {
        tee: Some("tpm".into()),
        attester: AttesterOptions {
            tpm: TpmAttesterConfig {
                tcti: tcti.clone(),
                event_log: None,
                ..TpmAttesterConfig::default()
            },
        },
        ..base
    };
    outln!(
        "cocoon bench guest: agent start -> first secret in hand, {} runs each, trustee {}",
        a.runs,
        conn.url
    );
    let sample = time_runs("sample", a.runs, &sample_cfg, &uri.path, &secret).await?;
    let tpm = time_runs("tpm", a.runs, &tpm_cfg, &uri.path, &secret).await?;

    // Where the TPM time goes: one quote + PCR read, alone.
    let attester = cocoon_attester::attester_for("tpm", &tpm_cfg.attester)?;
    let mut ev = Vec::new();
    for _ in 0..a.runs {
        let t0 = Instant::now();
        attester.evidence(&[7u8; 48])?;
        ev.push(t0.elapsed());
    }

    let (s50, s90, smin) = stats(&sample);
    let (t50, t90, tmin) = stats(&tpm);
    let (e50, e90, _) = stats(&ev);
    outln!("  sample attester (baseline): median {s50:.2} ms  p90 {s90:.2} ms  min {smin:.2} ms");
    outln!(
        "  tpm attester (swtpm):       median {t50:.2} ms  p90 {t90:.2} ms  min {tmin:.2} ms  ({:.2}x baseline)",
        t50 / s50
    );
    outln!(
        "    of which TPM evidence (RSA-2048 quote + PCR read): median {e50:.2} ms  p90 {e90:.2} ms"
    );
    Ok(())
}
