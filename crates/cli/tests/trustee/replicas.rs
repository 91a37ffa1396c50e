//! Trustee replicas on one PostgreSQL (Debian's, a throwaway cluster)
//! behind a round-robin proxy: flows that cross replicas, a policy change
//! on one enforced by the other, a replica killed during admin writes, and
//! the database restarted, then frozen, under load.

use super::*;
use cocoon_fixtures::postgres::Postgres;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::net::{TcpListener, TcpStream};

/// A plain TCP load balancer: each connection goes to the next backend in
/// turn (no stickiness), as a round-robin Service or HAProxy would send it.
struct RoundRobin {
    url: String,
    /// Connections handed to each backend.
    sent: Arc<Vec<AtomicUsize>>,
    task: tokio::task::JoinHandle<()>,
}

impl RoundRobin {
    async fn start(backends: Vec<String>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let sent: Arc<Vec<AtomicUsize>> =
            Arc::new(backends.iter().map(|_| AtomicUsize::new(0)).collect());
        let counts = sent.clone();
        let task = tokio::spawn(async move {
            let mut next = 0usize;
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                let i = next % backends.len();
                next += 1;
                counts[i].fetch_add(1, Ordering::Relaxed);
                let backend = backends[i].clone();
                tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(&backend).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
            }
        });
        Self { url, sent, task }
    }

    fn sent(&self) -> Vec<usize> {
        self.sent
            .iter()
            .map(|c| c.load(Ordering::Relaxed))
            .collect()
    }
}

impl Drop for RoundRobin {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_string()
}

/// A client that opens a new connection for every request, so the
/// round-robin proxy spreads one guest's requests over the replicas.
fn fresh_connections(url: &str) -> Raw {
    cocoon_kbs_client::install_crypto_provider();
    Raw {
        http: reqwest::Client::builder()
            .pool_max_idle_per_host(0)
            .timeout(Duration::from_secs(20))
            .build()
            .unwrap(),
        url: url.to_string(),
    }
}

/// One full flow (auth, attest, fetch) through `raw`: the released secret.
async fn flow(raw: &Raw, key: &TeeKeyPair, path: &str) -> Result<Vec<u8>, (u16, Value)> {
    let (cookie, nonce) = raw.auth().await;
    let r = raw
        .post("attest", &Raw::attestation(&nonce, key), Some(&cookie))
        .await;
    if r.status != 200 {
        return Err((r.status, r.body));
    }
    let cookie = r.cookie.unwrap_or(cookie);
    let r = raw
        .get(&format!("resource/{path}"), Some(&cookie), None)
        .await;
    if r.status != 200 {
        return Err((r.status, r.body));
    }
    let jwe: FlattenedJwe = serde_json::from_value(r.body).unwrap();
    Ok(key.decrypt(&jwe).unwrap().to_vec())
}

/// An admin write of one resource, straight over HTTP: the status, or 0
/// when no answer came (connection refused or cut).
async fn put_resource(
    http: &reqwest::Client,
    url: &str,
    token: &str,
    path: &str,
    body: &[u8],
) -> u16 {
    match http
        .post(format!("{url}/kbs/v0/resource/{path}"))
        .bearer_auth(token)
        .body(body.to_vec())
        .send()
        .await
    {
        Ok(r) => r.status().as_u16(),
        Err(_) => 0,
    }
}

/// Waits until the trustee's `/readyz` answers `want`.
async fn wait_ready(url: &str, want: u16, failure: &str) {
    let since = Instant::now();
    loop {
        let got = reqwest::get(format!("{url}/readyz"))
            .await
            .map(|r| r.status().as_u16())
            .unwrap_or(0);
        if got == want {
            return;
        }
        assert!(since.elapsed() < Duration::from_secs(30), "{failure}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Two guests running full flows against one trustee in a loop, counting
/// answers by status; a 503 must say "retry later".
struct Load {
    statuses: Arc<std::sync::Mutex<std::collections::BTreeMap<u16, usize>>>,
    stop: Arc<std::sync::atomic::AtomicBool>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Load {
    fn start(url: &str) -> Self {
        let statuses: Arc<std::sync::Mutex<std::collections::BTreeMap<u16, usize>>> =
            Arc::default();
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let mut tasks = vec![];
        for _ in 0..2 {
            let (statuses, stop, url) = (statuses.clone(), stop.clone(), url.to_string());
            let key = TeeKeyPair::generate_ec();
            tasks.push(tokio::spawn(async move {
                let raw = Raw::new(&url);
                while !stop.load(Ordering::Relaxed) {
                    let status = match flow(&raw, &key, "default/key/r").await {
                        Ok(v) => {
                            assert_eq!(v, b"replica-secret");
                            200
                        }
                        Err((s, body)) => {
                            if s == 503 {
                                assert!(body.to_string().contains("retry later"), "{body}");
                            }
                            s
                        }
                    };
                    *statuses.lock().unwrap().entry(status).or_default() += 1;
                }
            }));
        }
        Self {
            statuses,
            stop,
            tasks,
        }
    }

    /// Waits (up to 30 s) until a guest got `status`: the database stays
    /// away until the load has met its outage, however slow this machine.
    async fn wait_for(&self, status: u16, what: &str) {
        let since = Instant::now();
        while self
            .statuses
            .lock()
            .unwrap()
            .get(&status)
            .copied()
            .unwrap_or(0)
            == 0
        {
            assert!(
                since.elapsed() < Duration::from_secs(30),
                "no {status} {what}: {:?}",
                self.statuses.lock().unwrap()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Once `more` flows have succeeded from now on, stops the guests and
    /// returns the counts: some 503s, and nothing but 200 and 503.
    async fn finish_after_successes(self, more: usize) -> std::collections::BTreeMap<u16, usize> {
        let ok = || {
            self.statuses
                .lock()
                .unwrap()
                .get(&200)
                .copied()
                .unwrap_or(0)
        };
        let (before, since) = (ok(), Instant::now());
        while ok() < before + more {
            assert!(
                since.elapsed() < Duration::from_secs(30),
                "flows did not recover"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.stop.store(true, Ordering::Relaxed);
        for t in self.tasks {
            t.await.unwrap();
        }
        let statuses = self.statuses.lock().unwrap().clone();
        assert!(statuses.get(&503).copied().unwrap_or(0) > 0, "{statuses:?}");
        assert!(
            statuses.keys().all(|s| *s == 200 || *s == 503),
            "only 200 and 503 while the database is away: {statuses:?}"
        );
        statuses
    }
}

fn admin_token(t: &TrusteeProc) -> String {
    let key = cocoon_kbs::admin::AdminSigningKey::from_file(&t.admin_key()).unwrap();
    key.token(unix_now(), 600)
}

#[tokio::test(flavor = "multi_thread")]
async fn replicas_on_postgres_share_state_survive_a_kill_and_a_database_outage() {
    let mut pg = Postgres::start_new();
    let db = pg.database("trustee");
    let dir = tempfile::tempdir().unwrap();
    let a = TrusteeProc::start(&dir.path().join("a"), &["--database", &db]);
    // Replica B shares A's key-encryption, admin and audit keys, as the
    // replicas of one deployment mount the same Secrets.
    let shared = |f: &str| a.data_dir.join(f).to_str().unwrap().to_string();
    let b_args = [
        "--database".to_string(),
        db.clone(),
        "--kek-file".into(),
        shared("kek.key"),
        "--admin-public-key".into(),
        shared("admin-key.pub.pem"),
        "--audit-key".into(),
        shared("audit-key.pem"),
    ];
    let b_args: Vec<&str> = b_args.iter().map(String::as_str).collect();
    let b = TrusteeProc::start(&dir.path().join("b"), &b_args);
    let lb = RoundRobin::start(vec![host_port(&a.url), host_port(&b.url)]).await;
    let raw = fresh_connections(&lb.url);
    let key = TeeKeyPair::generate_ec();

    // 1. Full flows across replicas: each request lands on the other one.
    let secret = write(dir.path(), "s", b"replica-secret");
    ok(&a.admin(&[
        "set-resource",
        "kbs:///default/key/r",
        "--file",
        secret.to_str().unwrap(),
    ]));
    for _ in 0..6 {
        assert_eq!(
            flow(&raw, &key, "default/key/r").await.unwrap(),
            b"replica-secret"
        );
    }
    let sent = lb.sent();
    assert!(
        sent[0] >= 9 && sent[1] >= 9,
        "both replicas served: {sent:?}"
    );

    // 2. A policy change on A is enforced by B within a second: B keeps
    // serving a session it holds until its policy says no.
    let (cookie, _) = Raw::new(&b.url).attest(&key).await;
    let deny = write(
        dir.path(),
        "deny.rego",
        b"package policy\nimport rego.v1\ndefault allow := false\n",
    );
    let to_b = Raw::new(&b.url);
    assert_eq!(
        to_b.get("resource/default/key/r", Some(&cookie), None)
            .await
            .status,
        200
    );
    ok(&a.admin(&["set-policy", "resource", "--file", deny.to_str().unwrap()]));
    let changed = Instant::now();
    loop {
        let r = to_b
            .get("resource/default/key/r", Some(&cookie), None)
            .await;
        if r.status == 403 {
            break;
        }
        assert_eq!(r.status, 200, "{:?}", r.body);
        assert!(
            changed.elapsed() < Duration::from_secs(1),
            "replica B still released the secret 1 s after A changed the policy"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    println!(
        "policy change on A enforced by B after {:?}",
        changed.elapsed()
    );
    let allow = write(
        dir.path(),
        "allow.rego",
        b"package policy\nimport rego.v1\ndefault allow := true\n",
    );
    ok(&a.admin(&["set-policy", "resource", "--file", allow.to_str().unwrap()]));

    // 3. kill -9 of replica B during 1,000 admin writes (four writers):
    // the writes fail over to A, and every write either replica
    // acknowledged is in the database afterwards.
    let http = reqwest::Client::builder()
        .timeout(Duration::from_secs(20))
        .build()
        .unwrap();
    let token = admin_token(&a);
    let acked = Arc::new(std::sync::Mutex::new(Vec::<usize>::new()));
    let done = Arc::new(AtomicUsize::new(0));
    let by_b = Arc::new(AtomicUsize::new(0));
    let mut writers = vec![];
    for w in 0..4 {
        let (http, token, acked, done, by_b) = (
            http.clone(),
            token.clone(),
            acked.clone(),
            done.clone(),
            by_b.clone(),
        );
        let (url_a, url_b) = (a.url.clone(), b.url.clone());
        writers.push(tokio::spawn(async move {
            for i in (w..1000).step_by(4) {
                let path = format!("default/kill/{i}");
                let body = format!("value-{i}");
                let mut status = put_resource(&http, &url_b, &token, &path, body.as_bytes()).await;
                if status == 200 {
                    by_b.fetch_add(1, Ordering::Relaxed);
                } else {
                    // B is gone: the client retries on A.
                    status = put_resource(&http, &url_a, &token, &path, body.as_bytes()).await;
                }
                if status == 200 {
                    acked.lock().unwrap().push(i);
                }
                done.fetch_add(1, Ordering::Relaxed);
            }
        }));
    }
    while done.load(Ordering::Relaxed) < 300 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let b_log = b.stop(); // SIGKILL
    for w in writers {
        w.await.unwrap();
    }
    let acked = acked.lock().unwrap().clone();
    assert!(
        acked.len() >= 990,
        "only {} of 1000 writes acknowledged",
        acked.len()
    );
    let stored = pg.psql(
        "trustee",
        "SELECT key FROM kv WHERE ns = 'resources' AND key LIKE 'default/kill/%'",
    );
    let stored: std::collections::HashSet<&str> = stored.lines().collect();
    for i in &acked {
        assert!(
            stored.contains(format!("default/kill/{i}").as_str()),
            "acknowledged write {i} is missing after the kill"
        );
    }
    // What is stored is the value written, sealed.
    for i in [acked[0], acked[acked.len() / 2], acked[acked.len() - 1]] {
        assert_eq!(
            flow(&Raw::new(&a.url), &key, &format!("default/kill/{i}"))
                .await
                .unwrap(),
            format!("value-{i}").as_bytes()
        );
    }
    assert!(!b_log.contains("value-"), "a secret in replica B's log");
    let by_b = by_b.load(Ordering::Relaxed);
    assert!(
        (250..1000).contains(&by_b),
        "B acknowledged {by_b} before it was killed"
    );
    println!(
        "{} of 1000 writes acknowledged ({by_b} by replica B before its kill -9, the rest by A); all present",
        acked.len()
    );

    // 4. PostgreSQL restarted under load: A answers 503 (retry later),
    // never 500, and recovers without a restart of its own.
    let load = Load::start(&a.url);
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.stop();
    wait_ready(&a.url, 503, "/readyz stayed ready").await;
    load.wait_for(503, "while PostgreSQL was down").await;
    pg.start();
    wait_ready(&a.url, 200, "/readyz never recovered").await;
    let statuses = load.finish_after_successes(3).await;
    println!("statuses while PostgreSQL restarted: {statuses:?}");

    // 5. PostgreSQL frozen (SIGSTOP: the kernel still accepts connections,
    // nothing answers): the calls in flight give up after their timeout,
    // later ones fail at once with 503 instead of each holding a worker
    // thread for the timeout, the trustee keeps answering, and it recovers
    // when the database answers again.
    let load = Load::start(&a.url);
    tokio::time::sleep(Duration::from_millis(500)).await;
    pg.freeze();
    wait_ready(&a.url, 503, "/readyz stayed ready with the database frozen").await;
    let asked = Instant::now();
    let health = reqwest::get(format!("{}/healthz", a.url)).await.unwrap();
    assert_eq!(health.status().as_u16(), 200);
    println!(
        "/healthz with the database frozen answered in {:?}",
        asked.elapsed()
    );
    load.wait_for(503, "while PostgreSQL was frozen").await;
    pg.thaw();
    wait_ready(&a.url, 200, "/readyz never recovered after the freeze").await;
    let statuses = load.finish_after_successes(3).await;
    println!("statuses while PostgreSQL was frozen: {statuses:?}");
    // Both replicas wrote one audit chain, and it verifies.
    let text = ok(&audit(
        &a,
        &["verify", "--public-key", &shared("audit-key.pub.pem")],
    ));
    assert!(text.contains("audit log verifies"), "{text}");
    let log = a.stop();
    assert!(
        !log.contains("replica-secret"),
        "a secret in replica A's log"
    );
    assert!(
        log.contains("failing fast until a probe reaches it"),
        "no call failed fast while the database was frozen:\n{log}"
    );
    assert!(
        log.contains("database reachable again"),
        "the probe never saw the database back:\n{log}"
    );
}
