//! `cocoon bench kbs`: load-test a running trustee the way guests use it.
//!
//! Three phases of `--duration` seconds each, with `--clients` concurrent
//! clients: (1) a baseline of bare `GET /healthz` requests, which measures
//! the HTTP stack and the load generator on this machine; (2) full
//! attestation flows (auth → attest → get-resource, decrypted and compared);
//! (3) resource fetches on attested sessions. Each client keeps one TEE key
//! pair. Figures are printed with their ratio to the baseline.

use crate::client::{Connection, check};
use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use cocoon_kbs_client::{ClientOptions, KbsClient};
use cocoon_types::resource::ResourceUri;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Benchmarks.
#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Load-test a running trustee: attestation flows/s, resource fetches/s, latency.
    Kbs(KbsBenchArgs),
    /// Time from attestation agent start to the first secret (sample and tpm attesters).
    Guest(crate::bench_guest::GuestBenchArgs),
    /// Image pipeline: encrypted vs plain pull, vs skopeo, decryption vs the SHA-256 floor.
    Image(crate::bench_image::ImageBenchArgs),
    /// Pod VM: boot to agent ready against a QEMU floor boot of the same kernel and firmware.
    Pod(crate::bench_pod::PodBenchArgs),
    /// Agent policy: the guest's cost of deciding CreateContainer, ExecProcess and ReadStream.
    Policy(crate::policy::bench::PolicyBenchArgs),
    /// Many concurrent connections to a trustee: how many it holds, and its memory.
    Connections(crate::bench_conns::ConnsBenchArgs),
}

/// `cocoon bench kbs`.
#[derive(Args, Debug)]
pub struct KbsBenchArgs {
    #[command(flatten)]
    conn: Connection,
    /// Concurrent clients.
    #[arg(long, default_value_t = 64)]
    clients: usize,
    /// Seconds per phase.
    #[arg(long, default_value_t = 10)]
    duration: u64,
    /// Resource to fetch. With an admin key it is (re)set to random bytes first.
    #[arg(long, default_value = "kbs:///bench/key/1")]
    resource: String,
    /// Admin key used to create the resource (default: the local trustee's, if present).
    #[arg(long, env = "COCOON_ADMIN_KEY")]
    admin_key: Option<PathBuf>,
    /// TEE to attest as.
    #[arg(long, default_value = "sample")]
    tee: String,
    /// Allow a plain http:// trustee URL for the guest clients (measures the KBS without TLS).
    #[arg(long)]
    insecure_http_kbs: bool,
    /// The trustee's process id (same machine): its own CPU time per flow
    /// and per fetch, against the crypto floor measured here. Repeat it
    /// for replicas: their CPU time is added up.
    #[arg(long)]
    pid: Vec<u32>,
    /// Another replica of the same deployment (repeatable): the clients
    /// are spread over `--url` and these, as a round-robin load balancer
    /// would spread guests.
    #[arg(long = "replica-url")]
    replica_urls: Vec<String>,
}

/// The CPU time of every process in `pids` together; `None` without any,
/// or when one cannot be read.
fn cpu_total(pids: &[u32]) -> Option<f64> {
    if pids.is_empty() {
        return None;
    }
    pids.iter().map(|p| cpu_secs(*p)).sum()
}

/// A process's CPU time (user + system), seconds.
fn cpu_secs(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces), from field 3.
    let rest = &stat[stat.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let ticks: f64 = f.get(11)?.parse::<f64>().ok()? + f.get(12)?.parse::<f64>().ok()?;
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) } as f64;
    (hz > 0.0).then(|| ticks / hz)
}

/// Rounds of each floor measurement; the cheapest counts.
const FLOOR_ROUNDS: u32 = 5;

/// The crypto a flow cannot avoid, timed in this process on one core, in
/// microseconds of the thread's CPU time: the token's ES256 signature over
/// an EAR claim set of the size the trustee issues, the key agreement with
/// the guest's P-256 key (ECDH-ES, once per token), and the resource's JWE
/// (AES key wrap and AES-GCM, per fetch).
fn crypto_floor(resource_len: usize) -> Result<(f64, f64, f64)> {
    use cocoon_types::jwe::{SealingKey, TeeKeyPair};
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = ring::signature::EcdsaKeyPair::generate_pkcs8(
        &ring::signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &rng,
    )
    .map_err(|_| anyhow::anyhow!("cannot generate a P-256 key"))?;
    let signer = cocoon_attestation::token::TokenSigner::from_pkcs8(pkcs8.as_ref())?;
    let claims = serde_json::json!({
        "eat_profile": "tag:github.com,2023:veraison/ear",
        "iat": 1_764_600_000, "exp": 1_764_600_300,
        "ear.verifier-id": {"developer": "cocoon", "build": "0.1.0"},
        "submods": {"cpu0": {
            "ear.status": "affirming",
            "ear.trustworthiness-vector": {"configuration": 2, "executables": 2, "file-system": 0,
                "hardware": 2, "instance-identity": 2, "runtime-opaque": 2, "sourced-data": 0, "storage-opaque": 2},
            "ear.veraison.annotated-evidence": {"sample": {"svn": "1", "report_data": "x".repeat(88), "init_data": ""}},
            "ear.veraison.policy-claims": {},
        }},
        "tee-pubkey": {"kty": "EC", "crv": "P-256", "alg": "ECDH-ES+A256KW", "x": "x".repeat(43), "y": "y".repeat(43)},
    });
    let key = TeeKeyPair::generate_ec();
    let sealing = SealingKey::new(&key.public_jwk())?;
    let plain = vec![7u8; resource_len];
    // This thread's CPU time, the cheapest of a few rounds: the floor is
    // what the crypto costs, and time the thread spent preempted (the
    // trustee's writers finishing, a neighbour) would inflate it and
    // flatter the ratio.
    let time = |n: u32, f: &mut dyn FnMut() -> Result<()>| -> Result<f64> {
        f()?;
        let mut best = f64::INFINITY;
        for _ in 0..FLOOR_ROUNDS {
            let t = cocoon_image::gunzip::thread_cpu();
            for _ in 0..n {
                f()?;
            }
            let took = cocoon_image::gunzip::thread_cpu().saturating_sub(t);
            best = best.min(took.as_secs_f64() * 1e6 / f64::from(n));
        }
        if !(best > 0.0 && best.is_finite()) {
            bail!("cannot read this thread's CPU time for the crypto floor");
        }
        Ok(best)
    };
    let sign = time(2000, &mut || {
        signer.sign(&claims)?;
        Ok(())
    })?;
    let seal = time(2000, &mut || {
        sealing.seal(&plain)?;
        Ok(())
    })?;
    let public = key.public_jwk();
    let agree = time(500, &mut || {
        SealingKey::new(&public)?;
        Ok(())
    })?;
    Ok((sign, agree, seal))
}

/// The trustee's in-handler time by route (`/metrics` histogram sums and
/// counts), to say where a flow's server time goes.
async fn route_times(
    http: &reqwest::Client,
    conn: &Connection,
) -> Result<std::collections::HashMap<String, (f64, f64)>> {
    let text = http
        .get(format!("{}/metrics", conn.url.trim_end_matches('/')))
        .send()
        .await?
        .text()
        .await?;
    let mut out: std::collections::HashMap<String, (f64, f64)> = Default::default();
    for line in text.lines() {
        let (which, rest) =
            if let Some(r) = line.strip_prefix("kbs_http_request_duration_seconds_sum{") {
                (0, r)
            } else if let Some(r) = line.strip_prefix("kbs_http_request_duration_seconds_count{") {
                (1, r)
            } else {
                continue;
            };
        let Some((labels, value)) = rest.split_once("} ") else {
            continue;
        };
        let route = labels
            .split(',')
            .find_map(|l| l.strip_prefix("route=\""))
            .map(|r| r.trim_end_matches('"').to_string())
            .unwrap_or_default();
        let v: f64 = value.trim().parse().unwrap_or(0.0);
        let e = out.entry(route).or_default();
        if which == 0 {
            e.0 += v;
        } else {
            e.1 += v;
        }
    }
    Ok(out)
}

#[derive(Default)]
struct PhaseResult {
    ops: u64,
    errors: u64,
    first_error: Option<String>,
    latencies_us: Vec<u32>,
    /// Per-step latencies inside a flow: the auth+attest handshake and the fetch.
    handshake_us: Vec<u32>,
    fetch_us: Vec<u32>,
}

fn micros(since: Instant) -> u32 {
    since.elapsed().as_micros().min(u32::MAX as u128) as u32
}

pub(crate) fn percentile_ms(sorted: &[u32], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i] as f64 / 1000.0
}

impl PhaseResult {
    fn merge(&mut self, o: PhaseResult) {
        self.ops += o.ops;
        self.errors += o.errors;
        if self.first_error.is_none() {
            self.first_error = o.first_error;
        }
        self.latencies_us.extend(o.latencies_us);
        self.handshake_us.extend(o.handshake_us);
        self.fetch_us.extend(o.fetch_us);
    }

    fn pct(&self, p: f64) -> f64 {
        percentile_ms(&self.latencies_us, p)
    }

    fn record<E: std::fmt::Display>(&mut self, start: Instant, r: Result<(), E>) {
        match r {
            Ok(()) => {
                self.ops += 1;
                self.latencies_us.push(micros(start));
            }
            Err(e) => {
                self.errors += 1;
                if self.first_error.is_none() {
                    self.first_error = Some(e.to_string());
                }
            }
        }
    }
}

struct Report {
    name: &'static str,
    unit: &'static str,
    rate: f64,
    r: PhaseResult,
}

async fn phase<F, Fut>(clients: usize, secs: u64, per_client: F) -> Result<(f64, PhaseResult)>
where
    F: Fn(usize, Instant) -> Fut,
    Fut: std::future::Future<Output = PhaseResult> + Send + 'static,
{
    let start = Instant::now();
    let deadline = start + Duration::from_secs(secs);
    let tasks: Vec<_> = (0..clients)
        .map(|i| tokio::spawn(per_client(i, deadline)))
        .collect();
    let mut total = PhaseResult::default();
    for t in tasks {
        total.merge(t.await.context("benchmark client panicked")?);
    }
    let elapsed = start.elapsed().as_secs_f64();
    total.latencies_us.sort_unstable();
    total.handshake_us.sort_unstable();
    total.fetch_us.sort_unstable();
    Ok((total.ops as f64 / elapsed, total))
}

/// Runs the KBS benchmark.
pub async fn run(cmd: BenchCommand) -> Result<()> {
    let a = match cmd {
        BenchCommand::Kbs(a) => a,
        BenchCommand::Guest(g) => return crate::bench_guest::run(g).await,
        BenchCommand::Image(i) => return crate::bench_image::run(i).await,
        BenchCommand::Pod(p) => return crate::bench_pod::run(p).await,
        BenchCommand::Policy(p) => return crate::policy::bench::run(p),
        BenchCommand::Connections(c) => return crate::bench_conns::run(c).await,
    };
    if a.clients == 0 || a.duration == 0 {
        bail!("--clients and --duration must be positive");
    }
    let path = ResourceUri::parse(&a.resource)?.path;
    let http = a.conn.http()?;
    let expected = prepare_resource(&a, &http, &path).await?;
    let cert = a.conn.cert_pem()?;
    let urls: Vec<&str> = std::iter::once(a.conn.url.as_str())
        .chain(a.replica_urls.iter().map(String::as_str))
        .collect();
    let make_client = |i: usize| sample_client(&a, urls[i % urls.len()], cert.clone());
    outln!(
        "cocoon bench kbs: {} clients, {} s per phase, against {} (load generator on the same machine)",
        a.clients,
        a.duration,
        urls.join(" and ")
    );

    // Phase 1: baseline.
    let health = format!("{}/healthz", a.conn.url.trim_end_matches('/'));
    let cpu_b0 = cpu_total(&a.pid);
    let (base_rate, base) = phase(a.clients, a.duration, |_, deadline| {
        let http = http.clone();
        let url = health.clone();
        async move {
            let mut r = PhaseResult::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                let res = match http.get(&url).send().await {
                    Ok(resp) if resp.status().is_success() => {
                        resp.bytes().await.map(|_| ()).map_err(|e| e.to_string())
                    }
                    Ok(resp) => Err(format!("status {}", resp.status())),
                    Err(e) => Err(e.to_string()),
                };
                r.record(t, res);
            }
            r
        }
    })
    .await?;

    let cpu_b1 = cpu_total(&a.pid);
    // Phase 2: full attestation flows.
    let clients: Vec<Arc<KbsClient>> = (0..a.clients)
        .map(|i| make_client(i).map(Arc::new))
        .collect::<Result<_>>()?;
    let cpu0 = cpu_total(&a.pid);
    let routes0 = route_times(&http, &a.conn).await.unwrap_or_default();
    let (flow_rate, flows) = phase(a.clients, a.duration, |i, deadline| {
        let c = clients[i].clone();
        let path = path.clone();
        let expected = expected.clone();
        async move {
            let mut r = PhaseResult::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                let mut steps = (0u32, 0u32);
                let res = async {
                    c.attest().await?;
                    steps.0 = micros(t);
                    let f = Instant::now();
                    let got = c.get_resource(&path).await?;
                    steps.1 = micros(f);
                    if got.as_slice() != expected.as_slice() {
                        anyhow::bail!("decrypted resource differs from the stored one");
                    }
                    Ok::<(), anyhow::Error>(())
                }
                .await;
                if res.is_ok() {
                    r.handshake_us.push(steps.0);
                    r.fetch_us.push(steps.1);
                }
                r.record(t, res);
            }
            r
        }
    })
    .await?;

    let cpu1 = cpu_total(&a.pid);
    let routes1 = route_times(&http, &a.conn).await.unwrap_or_default();
    // Phase 3: fetches on attested sessions (one attestation per client first).
    for c in &clients {
        c.attest()
            .await
            .context("attesting before the fetch phase")?;
    }
    let cpu2 = cpu_total(&a.pid);
    let (fetch_rate, fetches) = phase(a.clients, a.duration, |i, deadline| {
        let c = clients[i].clone();
        let path = path.clone();
        let expected = expected.clone();
        async move {
            let mut r = PhaseResult::default();
            while Instant::now() < deadline {
                let t = Instant::now();
                let res = match c.get_resource(&path).await {
                    Ok(got) if got.as_slice() == expected.as_slice() => Ok(()),
                    Ok(_) => Err("decrypted resource differs from the stored one".to_string()),
                    Err(e) => Err(e.to_string()),
                };
                r.record(t, res);
            }
            r
        }
    })
    .await?;

    let cpu3 = cpu_total(&a.pid);
    let reports = [
        Report {
            name: "baseline GET /healthz",
            unit: "req/s",
            rate: base_rate,
            r: base,
        },
        Report {
            name: "attestation flows (auth+attest+resource)",
            unit: "flows/s",
            rate: flow_rate,
            r: flows,
        },
        Report {
            name: "resource fetches (attested session)",
            unit: "fetches/s",
            rate: fetch_rate,
            r: fetches,
        },
    ];
    outln!(
        "{:<44} {:>12} {:>10} {:>10} {:>8} {:>10}",
        "phase",
        "rate",
        "p50 ms",
        "p99 ms",
        "errors",
        "vs base"
    );
    for rep in &reports {
        outln!(
            "{:<44} {:>8.0} {:<4}{:>9.2} {:>10.2} {:>8} {:>9.3}x",
            rep.name,
            rep.rate,
            rep.unit.split('/').next().unwrap_or(""),
            rep.r.pct(0.50),
            rep.r.pct(0.99),
            rep.r.errors,
            if base_rate > 0.0 {
                rep.rate / base_rate
            } else {
                0.0
            },
        );
        if let Some(e) = &rep.r.first_error {
            outln!("    first error: {e}");
        }
    }
    let f = &reports[1].r;
    outln!(
        "  inside a flow: auth+attest handshake p50 {:.2} ms p99 {:.2} ms; resource fetch p50 {:.2} ms p99 {:.2} ms",
        percentile_ms(&f.handshake_us, 0.5),
        percentile_ms(&f.handshake_us, 0.99),
        percentile_ms(&f.fetch_us, 0.5),
        percentile_ms(&f.fetch_us, 0.99)
    );
    outln!("targets: >= 2000 flows/s, >= 20000 fetches/s, p99 < 20 ms at 64 clients");
    // One line for scripts comparing runs (stores, replica counts).
    outln!("summary: {flow_rate:.0} flows/s {fetch_rate:.0} fetches/s");
    if let (Some(c0), Some(c1), Some(c2), Some(c3)) = (cpu0, cpu1, cpu2, cpu3) {
        let (sign, agree, seal) = crypto_floor(expected.len())?;
        let per_flow = (c1 - c0) * 1e6 / reports[1].r.ops.max(1) as f64;
        let per_fetch = (c3 - c2) * 1e6 / reports[2].r.ops.max(1) as f64;
        let floor_flow = sign + agree + seal;
        outln!(
            "trustee CPU per flow {:.0} us, floor {:.0} us (ES256 token signature {:.0} us + ECDH-ES with the guest's P-256 key {:.0} us + JWE {:.0} us): {:.2}x (target 3x)",
            per_flow,
            floor_flow,
            sign,
            agree,
            seal,
            per_flow / floor_flow
        );
        outln!(
            "trustee CPU per fetch {:.0} us, floor {:.0} us (the JWE): {:.2}x",
            per_fetch,
            seal,
            per_fetch / seal
        );
        // HTTP's own share: a flow is three requests, each costing at
        // least what a bare /healthz costs the server.
        if let (Some(b0), Some(b1)) = (cpu_b0, cpu_b1) {
            let per_request = (b1 - b0) * 1e6 / reports[0].r.ops.max(1) as f64;
            outln!(
                "  trustee CPU per bare request (GET /healthz) {per_request:.0} us: a flow's three requests {:.0} us; floor + HTTP {:.0} us, the rest {:.0} us ({:.2}x floor + HTTP)",
                3.0 * per_request,
                floor_flow + 3.0 * per_request,
                per_flow - floor_flow - 3.0 * per_request,
                per_flow / (floor_flow + 3.0 * per_request)
            );
        }
        // Where a flow's server time goes: the handlers' own (wall) time
        // per route, the rest being HTTP, scheduling and the runtime.
        let mut parts = vec![];
        let mut in_handlers = 0.0;
        for (route, (sum1, n1)) in &routes1 {
            let (sum0, n0) = routes0.get(route).copied().unwrap_or_default();
            let n = n1 - n0;
            if n > 0.0
                && (route.ends_with("/auth")
                    || route.ends_with("/attest")
                    || route.contains("/resource/"))
            {
                let us = (sum1 - sum0) * 1e6 / reports[1].r.ops.max(1) as f64;
                in_handlers += us;
                parts.push(format!("{route} {us:.0} us"));
            }
        }
        parts.sort();
        outln!(
            "  per flow, inside the handlers (wall time under load, includes waiting): {}; total {:.0} us",
            parts.join(", "),
            in_handlers
        );
    }
    if a.tee == "sample" {
        let (plain, large) = cookie_sizes(&http, &a.conn).await?;
        outln!("session cookie after attest: {plain} bytes; with a 64 KiB initdata: {large} bytes");
    }
    if reports.iter().any(|r| r.r.ops == 0) {
        bail!("a phase completed no operation");
    }
    Ok(())
}

/// The `kbs-session-id` cookie's size after a sample attestation, without
/// and with a 64 KiB initdata document (whose claims the token carries).
async fn cookie_sizes(http: &reqwest::Client, conn: &Connection) -> Result<(usize, usize)> {
    use cocoon_types::{HashAlgorithm, binding, jwe::TeeKeyPair};
    use serde_json::{Value, json};
    let cookie_of = |r: &reqwest::Response| -> Option<String> {
        let v = r.headers().get("set-cookie")?.to_str().ok()?;
        let kv = v.split(';').next()?;
        Some(kv.strip_prefix("kbs-session-id=")?.to_string())
    };
    let mut sizes = [0usize; 2];
    for (size, init) in sizes.iter_mut().zip([0usize, 64 * 1024]) {
        let r = http
            .post(conn.kbs("/auth"))
            .json(&json!({"version": "0.4.0", "tee": "sample", "extra-params": ""}))
            .send()
            .await?;
        let cookie = cookie_of(&r).context("auth set no session cookie")?;
        let nonce = r.json::<Value>().await?["nonce"]
            .as_str()
            .context("auth gave no nonce")?
            .to_string();
        let key = TeeKeyPair::generate_ec();
        let pk = key.public_jwk();
        let rd = binding::primary_report_data(HashAlgorithm::Sha384, &nonce, &pk, "")?;
        let init_data = (init > 0).then(|| {
            let body = format!(
                "version = \"0.1.0\"\nalgorithm = \"sha256\"\n\n[data]\n\"cdh.toml\" = \"\"\"\n[kbc]\nname = \"cc_kbc\"\nnote = \"{}\"\n\"\"\"\n",
                "x".repeat(init)
            );
            json!({"format": "toml", "body": body})
        });
        let b64 = base64::engine::general_purpose::STANDARD;
        let att = json!({
            "init-data": init_data,
            "runtime-data": {"nonce": nonce, "tee-pubkey": pk},
            "tee-evidence": {"primary_evidence": {"svn": "1", "report_data": base64::Engine::encode(&b64, rd)}, "additional_evidence": ""},
        });
        let r = http
            .post(conn.kbs("/attest"))
            .header("cookie", format!("kbs-session-id={cookie}"))
            .json(&att)
            .send()
            .await?;
        let r = check(r, "attesting for the cookie size").await?;
        *size = cookie_of(&r).context("attest set no session cookie")?.len();
    }
    Ok((sizes[0], sizes[1]))
}

/// A guest client for `tee` with a fresh TEE key pair.
fn sample_client(a: &KbsBenchArgs, url: &str, kbs_cert_pem: Option<Vec<u8>>) -> Result<KbsClient> {
    let attester = cocoon_attester::attester_for(&a.tee, &Default::default())?;
    Ok(KbsClient::new(
        url,
        Arc::from(attester),
        ClientOptions {
            kbs_cert_pem,
            insecure_http: a.insecure_http_kbs,
            ..ClientOptions::default()
        },
    )?)
}

/// Sets the benchmark resource to fresh random bytes when an admin key is
/// available; otherwise reads it once as the expected value.
async fn prepare_resource(
    a: &KbsBenchArgs,
    http: &reqwest::Client,
    path: &cocoon_types::resource::ResourcePath,
) -> Result<Vec<u8>> {
    let key_path = a.admin_key.clone().unwrap_or_else(|| {
        cocoon_kbs::server::DataPaths::new(&cocoon_kbs::default_data_dir()).admin_key
    });
    if key_path.exists() {
        let key = cocoon_kbs::admin::AdminSigningKey::from_file(&key_path)
            .with_context(|| format!("admin key {}", key_path.display()))?;
        let mut secret = vec![0u8; 32];
        rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut secret);
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let resp = http
            .post(a.conn.kbs(&format!("/resource/{path}")))
            .bearer_auth(key.token(now, cocoon_kbs::admin::CLI_TOKEN_LIFETIME_SECS))
            .body(secret.clone())
            .send()
            .await
            .with_context(|| format!("cannot reach the trustee at {}", a.conn.url))?;
        check(resp, "setting the benchmark resource").await?;
        return Ok(secret);
    }
    let c = sample_client(a, &a.conn.url, a.conn.cert_pem()?)?;
    Ok(c.get_resource(path)
        .await
        .context("no admin key to create the benchmark resource, and reading it failed")?
        .to_vec())
}
