//! The PostgreSQL store, for replicas that share one database.
//!
//! The [`Store`] trait is synchronous (policies read reference values from
//! inside a Rego evaluation), so this store owns a small runtime of its
//! own: each call hands its query to that runtime and waits for the answer,
//! which never blocks the caller's runtime on itself. Every write returns
//! only after PostgreSQL committed it.
//!
//! Reads of the key-value table are cached in memory: a trigger on the
//! table sends `NOTIFY cocoon_kv` with the namespace on every change, so
//! every replica drops what a write on any replica made stale within the
//! notification's delivery time. The cache is only trusted while
//! notifications are seen to arrive (see [`listen_once`]); otherwise every
//! read goes to the database.

use crate::{Event, MakeRecords, Store, StoreError, now};
use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod};
use parking_lot::RwLock;
use std::collections::HashMap;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio_postgres::config::Host;
use tokio_postgres::error::SqlState;
use tokio_postgres::{AsyncMessage, Config, NoTls};
use tokio_postgres_rustls::MakeRustlsConnect;

/// How long one call may wait for a connection and its answer.
const CALL_TIMEOUT: Duration = Duration::from_secs(5);
/// While the database is unreachable, how often a probe checks whether it
/// is back (calls meanwhile fail at once).
const PROBE_EVERY: Duration = Duration::from_millis(500);
/// Connections in the pool.
const POOL_SIZE: usize = 16;
/// How long a notification this replica sends itself may take to come
/// back before the cache stops being trusted (one goes out at a time).
const LISTEN_PING: Duration = Duration::from_millis(750);
/// How soon after one comes back the next goes out: a change's
/// notification lost without a word is noticed within this plus
/// [`LISTEN_PING`], at some twenty round trips a second (sent back to back
/// they were thousands, a load on the database and the trustee).
const PROBE_GAP: Duration = Duration::from_millis(50);
/// Cached bytes at most; past it, reads are served but not kept.
const CACHE_BYTES: usize = 64 << 20;
/// The notification channel.
const CHANNEL: &str = "cocoon_kv";
/// The advisory lock that serializes schema migrations between replicas
/// starting at once.
const MIGRATION_LOCK: i64 = 0x636f_636f_6f6e_0001;

/// Schema migrations, applied in order once each; never edit a published one.
const MIGRATIONS: &[&str] = &[
    // 1: the key-value table with change notifications, the bounded event
    // logs and the audit chain.
    "CREATE TABLE kv (
         ns TEXT NOT NULL, key TEXT NOT NULL, value BYTEA NOT NULL,
         PRIMARY KEY (ns, key));
     CREATE TABLE events (
         id BIGSERIAL PRIMARY KEY, ns TEXT NOT NULL,
         at BIGINT NOT NULL, value BYTEA NOT NULL);
     CREATE INDEX events_ns ON events (ns, id);
     CREATE TABLE audit (seq BIGINT PRIMARY KEY, value BYTEA NOT NULL);
     CREATE FUNCTION cocoon_kv_notify() RETURNS trigger LANGUAGE plpgsql AS $$
     BEGIN
         IF TG_OP = 'DELETE' THEN
             PERFORM pg_notify('cocoon_kv', OLD.ns);
         ELSE
             PERFORM pg_notify('cocoon_kv', NEW.ns);
         END IF;
         RETURN NULL;
     END $$;
     CREATE TRIGGER kv_notify AFTER INSERT OR UPDATE OR DELETE ON kv
         FOR EACH ROW EXECUTE FUNCTION cocoon_kv_notify();",
    // 2: the ids of the audit batches written, each with its last record.
    "CREATE TABLE audit_batch (id TEXT PRIMARY KEY, seq BIGINT NOT NULL);",
];

/// PostgreSQL-backed [`Store`].
pub struct PgStore {
    runtime: Option<tokio::runtime::Runtime>,
    pool: Pool,
    cache: Arc<Cache>,
    breaker: Arc<Breaker>,
}

/// Whether the database is known to be unreachable. A call that cannot
/// open a connection or loses one opens it, and so do calls that get no
/// answer within [`CALL_TIMEOUT`] [`TIMEOUTS_TO_TRIP`] times in a row (one
/// slow statement under load does not); while open, calls fail at once ([`StoreError::Unavailable`]) instead
/// of each holding its caller's thread (an async worker of the trustee's)
/// for the timeout, and a probe on the store's runtime tries the database
/// every [`PROBE_EVERY`] and closes it when the database answers.
#[derive(Default)]
struct Breaker {
    open: parking_lot::Mutex<Option<Open>>,
    /// Calls without an answer since the last one that got one.
    timeouts: AtomicU64,
}

/// Unanswered calls in a row that open the breaker.
const TIMEOUTS_TO_TRIP: u64 = 3;

struct Open {
    since: Instant,
    why: String,
}

impl Breaker {
    /// Refuses a call while open.
    fn admit(&self) -> Result<(), StoreError> {
        match &*self.open.lock() {
            None => Ok(()),
            Some(o) => Err(unavailable(format!(
                "PostgreSQL unreachable for {} s ({}); failing fast until a probe reaches it",
                o.since.elapsed().as_secs(),
                o.why
            ))),
        }
    }

    /// A call got no answer within [`CALL_TIMEOUT`].
    fn timed_out(self: &Arc<Self>, why: String, pool: &Pool) {
        if self.timeouts.fetch_add(1, Ordering::Relaxed) + 1 >= TIMEOUTS_TO_TRIP {
            self.trip(why, pool);
        }
    }

    /// A call got an answer (of any kind) from the database.
    fn answered(&self) {
        self.timeouts.store(0, Ordering::Relaxed);
    }

    /// Opens it (once) and starts the probe that will close it.
    fn trip(self: &Arc<Self>, why: String, pool: &Pool) {
        {
            let mut open = self.open.lock();
            if open.is_some() {
                return;
            }
            tracing::warn!(error = %why, "database unreachable: calls fail fast until it answers");
            *open = Some(Open {
                since: Instant::now(),
                why,
            });
        }
        let (breaker, pool) = (self.clone(), pool.clone());
        tokio::spawn(async move {
            loop {
                tokio::time::sleep(PROBE_EVERY).await;
                let probe = async {
                    let c = pool.get().await.ok()?;
                    c.simple_query("").await.ok()
                };
                if let Ok(Some(_)) = tokio::time::timeout(CALL_TIMEOUT, probe).await {
                    breaker.answered();
                    if let Some(o) = breaker.open.lock().take() {
                        tracing::info!(
                            after_secs = o.since.elapsed().as_secs(),
                            "database reachable again"
                        );
                    }
                    return;
                }
            }
        });
    }
}

/// Whether a statement's error means the connection, not the statement,
/// failed (closed, reset, the server shutting down or refusing sessions).
fn connection_lost(e: &tokio_postgres::Error) -> bool {
    match e.code() {
        None => {
            e.is_closed() || std::error::Error::source(e).is_some_and(|s| s.is::<std::io::Error>())
        }
        Some(code) => {
            let c = code.code();
            c.starts_with("08") || c.starts_with("57P")
        }
    }
}

impl std::fmt::Debug for PgStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PgStore{..}")
    }
}

/// What a connection string names, for messages and logs: user, hosts,
/// port and database, never the password or other options.
pub fn describe_database(url: &str) -> String {
    let Ok(c) = url.parse::<Config>() else {
        return "an unparsable connection string".into();
    };
    let hosts: Vec<String> = c
        .get_hosts()
        .iter()
        .map(|h| match h {
            Host::Tcp(name) => name.clone(),
            Host::Unix(dir) => dir.display().to_string(),
        })
        .collect();
    let port = c
        .get_ports()
        .first()
        .map(|p| format!(":{p}"))
        .unwrap_or_default();
    format!(
        "{}@{}{port}/{}",
        c.get_user().unwrap_or("(no user)"),
        hosts.join(","),
        c.get_dbname().unwrap_or("(default database)")
    )
}

/// The hosts a connection goes to in plain text must be this machine's:
/// policies would travel unprotected.
fn check_local(config: &Config) -> Result<(), StoreError> {
    let local = |name: &str| {
        name == "localhost"
            || name
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    };
    let far = config
        .get_hosts()
        .iter()
        .filter_map(|h| match h {
            Host::Tcp(name) if !local(name) => Some(name.clone()),
            _ => None,
        })
        .chain(
            config
                .get_hostaddrs()
                .iter()
                .filter(|ip| !ip.is_loopback())
                .map(|ip| ip.to_string()),
        )
        .next();
    match far {
        Some(host) => Err(StoreError::Backend(format!(
            "database host {host} is not on this machine: give the database's CA \
             (--database-ca) to connect over TLS, or connect over a Unix socket or loopback"
        ))),
        None => Ok(()),
    }
}

fn unavailable(e: impl std::fmt::Display) -> StoreError {
    StoreError::Unavailable(e.to_string())
}

/// Connection failures, a server shutting down or out of resources are
/// worth a retry ([`StoreError::Unavailable`]); anything else is a fault.
fn classify(e: tokio_postgres::Error) -> StoreError {
    let transient = match e.code() {
        None => true,
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("57P")
                || code == &SqlState::T_R_SERIALIZATION_FAILURE
                || code == &SqlState::T_R_DEADLOCK_DETECTED
                || code == &SqlState::QUERY_CANCELED
                || code == &SqlState::READ_ONLY_SQL_TRANSACTION
                || code == &SqlState::LOCK_NOT_AVAILABLE
        }
    };
    if transient {
        StoreError::Unavailable(format!("PostgreSQL: {}", described(&e)))
    } else {
        StoreError::Backend(format!("PostgreSQL: {}", described(&e)))
    }
}

/// The error with its causes ("error performing TLS handshake: invalid
/// peer certificate: UnknownIssuer"); a server's error already says it all.
fn described(e: &tokio_postgres::Error) -> String {
    let mut text = e.to_string();
    if e.as_db_error().is_none() {
        let mut cause = std::error::Error::source(e);
        while let Some(c) = cause {
            text.push_str(": ");
            text.push_str(&c.to_string());
            cause = c.source();
        }
    }
    text
}

fn pool_error(e: deadpool_postgres::PoolError) -> StoreError {
    match e {
        deadpool_postgres::PoolError::Backend(e) => classify(e),
        other => unavailable(format!("PostgreSQL: {other}")),
    }
}

/// TLS to the database, verified against the owner's CA.
fn tls_config(ca_pem: &[u8]) -> Result<MakeRustlsConnect, StoreError> {
    let bad = |d: String| StoreError::Backend(format!("the database CA: {d}"));
    let mut roots = rustls::RootCertStore::empty();
    let mut reader = ca_pem;
    for cert in rustls_pemfile::certs(&mut reader) {
        let cert = cert.map_err(|e| bad(format!("not PEM certificates: {e}")))?;
        roots
            .add(cert)
            .map_err(|e| bad(format!("a certificate is not usable as a root: {e}")))?;
    }
    if roots.is_empty() {
        return Err(bad("no certificate in it".into()));
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| bad(e.to_string()))?
    .with_root_certificates(roots)
    .with_no_client_auth();
    Ok(MakeRustlsConnect::new(config))
}

impl PgStore {
    /// Connects to `url` (`postgres://user:password@host:port/db`, or
    /// `host=/run/postgresql dbname=...`), applies the schema migrations the
    /// database lacks, and starts listening for changes. Without TLS, the
    /// database must be on this machine (a Unix socket or loopback).
    pub fn connect(url: &str) -> Result<Self, StoreError> {
        Self::open(url, None)
    }

    /// [`Self::connect`] over TLS: the server's certificate must chain to
    /// a certificate in `ca_pem` and name the connection string's host.
    /// Any host may be used then.
    pub fn connect_tls(url: &str, ca_pem: &[u8]) -> Result<Self, StoreError> {
        Self::open(url, Some(tls_config(ca_pem)?))
    }

    fn open(url: &str, tls: Option<MakeRustlsConnect>) -> Result<Self, StoreError> {
        let mut config: Config = url.parse().map_err(|e| {
            StoreError::Backend(format!(
                "the database option is not a PostgreSQL connection string \
                 (postgres://user:password@host/db, or host=... dbname=...): {e}"
            ))
        })?;
        use tokio_postgres::config::SslMode;
        match (&tls, config.get_ssl_mode()) {
            (None, SslMode::Require) => {
                return Err(StoreError::Backend(
                    "sslmode=require without the database's CA: TLS that does not verify \
                     the server proves nothing; give the CA (--database-ca) or connect over \
                     a Unix socket or a loopback address"
                        .into(),
                ));
            }
            (None, _) => check_local(&config)?,
            (Some(_), SslMode::Disable) => {
                return Err(StoreError::Backend(
                    "sslmode=disable contradicts the database CA given: drop one".into(),
                ));
            }
            (Some(_), _) => {
                if config
                    .get_hosts()
                    .iter()
                    .any(|h| !matches!(h, Host::Tcp(_)))
                {
                    return Err(StoreError::Backend(
                        "TLS to the database needs a TCP host (a Unix socket has none)".into(),
                    ));
                }
                // Never fall back to plain text.
                config.ssl_mode(SslMode::Require);
            }
        }
        // A server that accepts the connection and then says nothing (a
        // frozen host) must not hold a connection attempt forever.
        if config.get_connect_timeout().is_none() {
            config.connect_timeout(CALL_TIMEOUT);
        }
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("cocoon-postgres")
            .enable_all()
            .build()
            .map_err(|e| StoreError::Backend(format!("store runtime: {e}")))?;
        let manager_config = ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        };
        let manager = match &tls {
            Some(t) => Manager::from_config(config.clone(), t.clone(), manager_config),
            None => Manager::from_config(config.clone(), NoTls, manager_config),
        };
        let pool = Pool::builder(manager)
            .max_size(POOL_SIZE)
            .runtime(deadpool_postgres::Runtime::Tokio1)
            .wait_timeout(Some(CALL_TIMEOUT))
            .create_timeout(Some(CALL_TIMEOUT))
            .recycle_timeout(Some(CALL_TIMEOUT))
            .build()
            .map_err(|e| StoreError::Backend(format!("PostgreSQL pool: {e}")))?;
        let cache = Arc::new(Cache::default());
        let store = Self {
            runtime: Some(runtime),
            pool,
            cache,
            breaker: Arc::default(),
        };
        let pool = store.pool.clone();
        store
            .call(async move { migrate(&pool).await })
            .map_err(|e| match e {
                StoreError::Unavailable(d) => StoreError::Unavailable(format!(
                    "cannot reach the database {}: {d}",
                    describe_database(url)
                )),
                other => other,
            })?;
        store
            .runtime()
            .spawn(listen(config, tls, store.pool.clone(), store.cache.clone()));
        Ok(store)
    }

    fn runtime(&self) -> &tokio::runtime::Runtime {
        self.runtime.as_ref().expect("runtime lives until drop")
    }

    /// Runs `f` on the store's runtime and waits for it, at most
    /// [`CALL_TIMEOUT`].
    fn call<T: Send + 'static>(
        &self,
        f: impl Future<Output = Result<T, StoreError>> + Send + 'static,
    ) -> Result<T, StoreError> {
        crate::may_wait()?;
        let (tx, rx) = std::sync::mpsc::sync_channel(1);
        let (breaker, pool) = (self.breaker.clone(), self.pool.clone());
        self.runtime().spawn(async move {
            let out = match tokio::time::timeout(CALL_TIMEOUT, f).await {
                Ok(out) => out,
                Err(_) => {
                    let why = format!("PostgreSQL did not answer within {CALL_TIMEOUT:?}");
                    breaker.timed_out(why.clone(), &pool);
                    Err(unavailable(why))
                }
            };
            let _ = tx.send(out);
        });
        rx.recv()
            .map_err(|_| unavailable("the store's runtime stopped"))?
    }

    /// One statement on a pooled connection.
    fn query<T, F, Fut>(&self, run: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        self.pool_call(run)?.map_err(classify)
    }

    /// Like [`Self::query`], but hands the statement's own error back so
    /// the caller can tell a lost race from a failure.
    fn pool_call<T, F, Fut>(&self, run: F) -> Result<Result<T, tokio_postgres::Error>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(deadpool_postgres::Client) -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, tokio_postgres::Error>> + Send + 'static,
    {
        self.breaker.admit()?;
        let (pool, breaker) = (self.pool.clone(), self.breaker.clone());
        self.call(async move {
            let client = match pool.get().await {
                Ok(c) => c,
                // Every connection busy: the database is slow, not away.
                Err(
                    e @ deadpool_postgres::PoolError::Timeout(deadpool_postgres::TimeoutType::Wait),
                ) => {
                    return Err(pool_error(e));
                }
                Err(e) => {
                    let e = pool_error(e);
                    breaker.trip(e.to_string(), &pool);
                    return Err(e);
                }
            };
            let out = run(client).await;
            match &out {
                Err(e) if connection_lost(e) => {
                    breaker.trip(format!("PostgreSQL: {}", described(e)), &pool)
                }
                _ => breaker.answered(),
            }
            Ok(out)
        })
    }
}

impl PgStore {
    /// One statement that changes `ns`/`key` (`$1`, `$2`, and `value` as
    /// `$3` when given): the rows it touched. This replica's cache of `ns`
    /// is dropped whatever the outcome (a timeout may still have committed).
    fn modify(
        &self,
        sql: &'static str,
        ns: &str,
        key: &str,
        value: Option<&[u8]>,
    ) -> Result<u64, StoreError> {
        let (n, k, v) = (ns.to_string(), key.to_string(), value.map(<[u8]>::to_vec));
        let r = self.query(move |c| async move {
            let st = c.prepare_cached(sql).await?;
            match &v {
                Some(v) => c.execute(&st, &[&n, &k, v]).await,
                None => c.execute(&st, &[&n, &k]).await,
            }
        });
        self.cache.invalidate(ns);
        r
    }
}

impl Drop for PgStore {
    fn drop(&mut self) {
        // The store may be dropped inside another runtime, where waiting
        // for this one to stop is not allowed.
        if let Some(rt) = self.runtime.take() {
            rt.shutdown_background();
        }
    }
}

async fn migrate(pool: &Pool) -> Result<(), StoreError> {
    let mut client = pool.get().await.map_err(pool_error)?;
    let tx = client.transaction().await.map_err(classify)?;
    tx.execute("SELECT pg_advisory_xact_lock($1)", &[&MIGRATION_LOCK])
        .await
        .map_err(classify)?;
    tx.batch_execute("CREATE TABLE IF NOT EXISTS cocoon_schema (version INTEGER NOT NULL)")
        .await
        .map_err(classify)?;
    let have: i32 = tx
        .query_opt("SELECT max(version) FROM cocoon_schema", &[])
        .await
        .map_err(classify)?
        .and_then(|r| r.get::<_, Option<i32>>(0))
        .unwrap_or(0);
    let known = MIGRATIONS.len() as i32;
    if have > known {
        return Err(StoreError::Backend(format!(
            "the database has schema version {have}, newer than this trustee knows ({known}): \
             run the newer trustee, or restore a backup of the older schema"
        )));
    }
    for (i, sql) in MIGRATIONS.iter().enumerate().skip(have as usize) {
        tx.batch_execute(sql).await.map_err(classify)?;
        tx.execute(
            "INSERT INTO cocoon_schema (version) VALUES ($1)",
            &[&(i as i32 + 1)],
        )
        .await
        .map_err(classify)?;
        tracing::info!(version = i + 1, "database schema migrated");
    }
    tx.commit().await.map_err(classify)
}

/// Keeps a `LISTEN` connection up and the cache in step with it. While
/// the database is away, attempts back off to one every 2 s (and a log
/// line each).
async fn listen(config: Config, tls: Option<MakeRustlsConnect>, pool: Pool, cache: Arc<Cache>) {
    let mut pause = Duration::from_millis(100);
    loop {
        let began = Instant::now();
        match listen_once(&config, tls.as_ref(), &pool, &cache).await {
            Ok(()) => tracing::warn!("database notification connection closed; reconnecting"),
            Err(e) => {
                tracing::warn!(error = %e, "database notification connection failed; reconnecting")
            }
        }
        cache.disable();
        pause = if began.elapsed() > Duration::from_secs(10) {
            Duration::from_millis(100)
        } else {
            (pause * 2).min(Duration::from_secs(2))
        };
        tokio::time::sleep(pause).await;
    }
}

/// The payload prefix of the notifications a replica sends itself to prove
/// that notifications from other sessions arrive. Not a namespace.
const PROBE: &str = "\u{1}probe:";

/// Drives a connection, handing its notifications (sender's backend PID,
/// payload) to `tx`, until it closes.
fn drive<S, T>(
    mut connection: tokio_postgres::Connection<S, T>,
    tx: tokio::sync::mpsc::UnboundedSender<(i32, String)>,
) -> tokio::task::JoinHandle<()>
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    T: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    tokio::spawn(async move {
        loop {
            match std::future::poll_fn(|cx| connection.poll_message(cx)).await {
                Some(Ok(AsyncMessage::Notification(n))) => {
                    if tx.send((n.process_id(), n.payload().to_string())).is_err() {
                        return;
                    }
                }
                Some(Ok(_)) => {}
                Some(Err(_)) | None => return,
            }
        }
    })
}

async fn listen_once(
    config: &Config,
    tls: Option<&MakeRustlsConnect>,
    pool: &Pool,
    cache: &Cache,
) -> Result<(), String> {
    let silent = || format!("no answer within {CALL_TIMEOUT:?}");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<(i32, String)>();
    let (client, mut driver) = match tls {
        Some(t) => {
            let (client, connection) =
                tokio::time::timeout(CALL_TIMEOUT, config.connect(t.clone()))
                    .await
                    .map_err(|_| silent())?
                    .map_err(|e| described(&e))?;
            (client, drive(connection, tx))
        }
        None => {
            let (client, connection) = tokio::time::timeout(CALL_TIMEOUT, config.connect(NoTls))
                .await
                .map_err(|_| silent())?
                .map_err(|e| described(&e))?;
            (client, drive(connection, tx))
        }
    };
    let setup = async {
        client.batch_execute(&format!("LISTEN {CHANNEL}")).await?;
        client
            .query_one("SELECT pg_backend_pid()", &[])
            .await
            .map(|r| r.get::<_, i32>(0))
    };
    let listener = match tokio::time::timeout(CALL_TIMEOUT, setup).await {
        Ok(Ok(pid)) => pid,
        Ok(Err(e)) => {
            driver.abort();
            return Err(e.to_string());
        }
        Err(_) => {
            driver.abort();
            return Err(silent());
        }
    };
    let mut nonce = [0u8; 8];
    rand_core::RngCore::fill_bytes(&mut rand_core::OsRng, &mut nonce);
    let nonce = u64::from_le_bytes(nonce);
    // Probes go out from a pooled connection, another session than the
    // listening one (PostgreSQL hands a session its own notifications
    // whatever a pooler does), one at a time, the next PROBE_GAP after one
    // returns. The cache is trusted from the first probe that comes back
    // (every change after LISTEN reaches `rx`) until one takes longer than
    // LISTEN_PING. Invalidations never wait behind a probe.
    let send = |count: u64| {
        let token = format!("{nonce:016x}:{count}");
        let payload = format!("{PROBE}{token}");
        let pool = pool.clone();
        tokio::spawn(async move {
            if let Ok(c) = pool.get().await {
                let _ = c
                    .execute("SELECT pg_notify($1, $2)", &[&CHANNEL, &payload])
                    .await;
            }
        });
        (token, Instant::now())
    };
    let mut count = 1u64;
    let mut sent = send(count);
    let mut outstanding = true;
    let mut trusted = false;
    let mut tick = tokio::time::interval(PROBE_GAP);
    let outcome = loop {
        tokio::select! {
            msg = rx.recv() => match msg {
                Some((pid, p)) => match p.strip_prefix(PROBE) {
                    Some(token) => {
                        if pid != listener && token == sent.0 {
                            if !trusted {
                                cache.enable();
                                trusted = true;
                            }
                            outstanding = false;
                        }
                    }
                    None => cache.invalidate(&p),
                },
                None => break Ok(()),
            },
            _ = tick.tick() => {
                if !outstanding {
                    count += 1;
                    sent = send(count);
                    outstanding = true;
                } else if sent.1.elapsed() >= LISTEN_PING {
                    if trusted {
                        tracing::warn!("database notifications stopped arriving; reads bypass the cache");
                    }
                    break Ok(());
                }
            }
            _ = &mut driver => break Ok(()),
        }
    };
    driver.abort();
    outcome
}

/// Values and key lists read from the key-value table, by namespace.
#[derive(Default)]
struct Cache {
    enabled: AtomicBool,
    /// Changes with every invalidation: a read that started before one
    /// must not store what it read.
    epoch: AtomicU64,
    bytes: AtomicUsize,
    spaces: RwLock<HashMap<String, Space>>,
}

#[derive(Default)]
struct Space {
    values: HashMap<String, Option<Vec<u8>>>,
    keys: Option<Vec<String>>,
    bytes: usize,
}

impl Cache {
    fn enable(&self) {
        let mut spaces = self.spaces.write();
        spaces.clear();
        self.bytes.store(0, Ordering::Relaxed);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.enabled.store(true, Ordering::SeqCst);
    }

    fn disable(&self) {
        self.enabled.store(false, Ordering::SeqCst);
        self.epoch.fetch_add(1, Ordering::SeqCst);
        self.spaces.write().clear();
        self.bytes.store(0, Ordering::Relaxed);
    }

    fn invalidate(&self, ns: &str) {
        let mut spaces = self.spaces.write();
        self.epoch.fetch_add(1, Ordering::SeqCst);
        if let Some(space) = spaces.remove(ns) {
            self.bytes.fetch_sub(space.bytes, Ordering::Relaxed);
        }
    }

    /// The epoch to pass to [`Cache::keep`], or `None` while the cache is off.
    fn begin(&self) -> Option<u64> {
        let epoch = self.epoch.load(Ordering::SeqCst);
        self.enabled.load(Ordering::SeqCst).then_some(epoch)
    }

    fn value(&self, ns: &str, key: &str) -> Option<Option<Vec<u8>>> {
        if !self.enabled.load(Ordering::SeqCst) {
            return None;
        }
        self.spaces.read().get(ns)?.values.get(key).cloned()
    }

    fn keys(&self, ns: &str) -> Option<Vec<String>> {
        if !self.enabled.load(Ordering::SeqCst) {
            return None;
        }
        self.spaces.read().get(ns)?.keys.clone()
    }

    fn keep(&self, epoch: Option<u64>, ns: &str, size: usize, put: impl FnOnce(&mut Space)) {
        let Some(epoch) = epoch else { return };
        let mut spaces = self.spaces.write();
        // Checked under the lock invalidations take: a change seen since
        // the read began makes what was read possibly stale.
        if !self.enabled.load(Ordering::SeqCst)
            || self.epoch.load(Ordering::SeqCst) != epoch
            || self.bytes.load(Ordering::Relaxed) + size > CACHE_BYTES
        {
            return;
        }
        let space = spaces.entry(ns.to_string()).or_default();
        put(space);
        space.bytes += size;
        self.bytes.fetch_add(size, Ordering::Relaxed);
    }
}

impl Store for PgStore {
    fn get(&self, ns: &str, key: &str) -> Result<Option<Vec<u8>>, StoreError> {
        if let Some(hit) = self.cache.value(ns, key) {
            return Ok(hit);
        }
        let epoch = self.cache.begin();
        let (n, k) = (ns.to_string(), key.to_string());
        let value = self.query(move |c| async move {
            let st = c
                .prepare_cached("SELECT value FROM kv WHERE ns = $1 AND key = $2")
                .await?;
            Ok(c.query_opt(&st, &[&n, &k]).await?.map(|r| r.get(0)))
        })?;
        let size = key.len() + value.as_ref().map_or(0, Vec::len) + 64;
        self.cache.keep(epoch, ns, size, |s| {
            s.values.insert(key.to_string(), value.clone());
        });
        Ok(value)
    }

    fn put(&self, ns: &str, key: &str, value: &[u8]) -> Result<(), StoreError> {
        self.modify(
            "INSERT INTO kv (ns, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (ns, key) DO UPDATE SET value = EXCLUDED.value",
            ns,
            key,
            Some(value),
        )
        .map(|_| ())
    }

    fn put_if_absent(&self, ns: &str, key: &str, value: &[u8]) -> Result<bool, StoreError> {
        let n = self.modify(
            "INSERT INTO kv (ns, key, value) VALUES ($1, $2, $3)
             ON CONFLICT (ns, key) DO NOTHING",
            ns,
            key,
            Some(value),
        )?;
        Ok(n == 1)
    }

    fn delete(&self, ns: &str, key: &str) -> Result<bool, StoreError> {
        let n = self.modify("DELETE FROM kv WHERE ns = $1 AND key = $2", ns, key, None)?;
        Ok(n > 0)
    }

    fn list(&self, ns: &str) -> Result<Vec<String>, StoreError> {
        if let Some(keys) = self.cache.keys(ns) {
            return Ok(keys);
        }
        let epoch = self.cache.begin();
        let n = ns.to_string();
        // Byte order, as the embedded store sorts.
        let keys: Vec<String> = self.query(move |c| async move {
            let st = c
                .prepare_cached("SELECT key FROM kv WHERE ns = $1 ORDER BY key COLLATE \"C\"")
                .await?;
            Ok(c.query(&st, &[&n])
                .await?
                .iter()
                .map(|r| r.get(0))
                .collect())
        })?;
        let size = keys.iter().map(|k| k.len() + 24).sum::<usize>() + 64;
        self.cache
            .keep(epoch, ns, size, |s| s.keys = Some(keys.clone()));
        Ok(keys)
    }

    fn append(&self, ns: &str, value: &[u8], keep: usize) -> Result<i64, StoreError> {
        let (n, v) = (ns.to_string(), value.to_vec());
        let keep = keep as i64;
        self.query(move |c| async move {
            let st = c
                .prepare_cached(
                    "WITH ins AS (
                         INSERT INTO events (ns, at, value) VALUES ($1, $2, $3) RETURNING id),
                     old AS (
                         DELETE FROM events
                         WHERE ns = $1 AND id <= (SELECT id FROM ins) - $4)
                     SELECT id FROM ins",
                )
                .await?;
            Ok(c.query_one(&st, &[&n, &now(), &v, &keep]).await?.get(0))
        })
    }

    fn recent(&self, ns: &str, limit: usize) -> Result<Vec<Event>, StoreError> {
        let n = ns.to_string();
        let limit = limit as i64;
        self.query(move |c| async move {
            let st = c
                .prepare_cached(
                    "SELECT id, at, value FROM events WHERE ns = $1 ORDER BY id DESC LIMIT $2",
                )
                .await?;
            Ok(c.query(&st, &[&n, &limit])
                .await?
                .iter()
                .map(|r| Event {
                    id: r.get(0),
                    at: r.get(1),
                    value: r.get(2),
                })
                .collect())
        })
    }

    fn audit_append(
        &self,
        batch: Option<&str>,
        make: &mut MakeRecords<'_>,
    ) -> Result<i64, StoreError> {
        // Optimistic: read the last record, make the batch after it, insert
        // the batch (and its id) in one statement. The sequence number is
        // the primary key, so when another writer got there first the
        // insert fails as a whole and the batch is made again after the
        // new last record; when the batch's id is there, it was written.
        for _ in 0..100 {
            let last: Option<(i64, Vec<u8>)> = self.query(move |c| async move {
                let st = c
                    .prepare_cached("SELECT seq, value FROM audit ORDER BY seq DESC LIMIT 1")
                    .await?;
                Ok(c.query_opt(&st, &[]).await?.map(|r| (r.get(0), r.get(1))))
            })?;
            let first = last.as_ref().map_or(1, |(s, _)| s + 1);
            let values = make(last.as_ref().map(|(s, v)| (*s, v.as_slice())));
            if values.is_empty() {
                return Ok(0);
            }
            let seqs: Vec<i64> = (first..first + values.len() as i64).collect();
            let end = *seqs.last().expect("non-empty");
            let id = batch.map(str::to_string);
            let inserted = self.pool_call(move |c| async move {
                match id {
                    None => {
                        let st = c
                            .prepare_cached(
                                "INSERT INTO audit (seq, value)
                                 SELECT * FROM unnest($1::BIGINT[], $2::BYTEA[])",
                            )
                            .await?;
                        c.execute(&st, &[&seqs, &values]).await
                    }
                    Some(id) => {
                        let st = c
                            .prepare_cached(
                                "WITH a AS (
                                     INSERT INTO audit (seq, value)
                                     SELECT * FROM unnest($1::BIGINT[], $2::BYTEA[])
                                     RETURNING seq)
                                 INSERT INTO audit_batch (id, seq) SELECT $3, max(seq) FROM a",
                            )
                            .await?;
                        c.execute(&st, &[&seqs, &values, &id]).await
                    }
                }
            })?;
            match inserted {
                Ok(_) => return Ok(end),
                Err(e) if e.code() == Some(&SqlState::UNIQUE_VIOLATION) => {
                    let constraint = e.as_db_error().and_then(|d| d.constraint());
                    if constraint == Some("audit_batch_pkey") {
                        return Ok(0);
                    }
                    continue;
                }
                Err(e) => return Err(classify(e)),
            }
        }
        Err(unavailable(
            "the audit log is contended: 100 attempts lost to other writers",
        ))
    }

    fn audit_prune(&self, before: i64) -> Result<u64, StoreError> {
        // One statement, so one transaction.
        self.query(move |c| async move {
            let st = c
                .prepare_cached(
                    "WITH b AS (DELETE FROM audit_batch WHERE seq < $1)
                     DELETE FROM audit WHERE seq < $1",
                )
                .await?;
            c.execute(&st, &[&before]).await
        })
    }

    fn audit_last(&self) -> Result<Option<i64>, StoreError> {
        self.query(move |c| async move {
            Ok(c.query_one("SELECT max(seq) FROM audit", &[]).await?.get(0))
        })
    }

    fn audit_range(&self, from: i64, limit: usize) -> Result<Vec<(i64, Vec<u8>)>, StoreError> {
        let limit = limit as i64;
        self.query(move |c| async move {
            let st = c
                .prepare_cached(
                    "SELECT seq, value FROM audit WHERE seq >= $1 ORDER BY seq LIMIT $2",
                )
                .await?;
            Ok(c.query(&st, &[&from, &limit])
                .await?
                .iter()
                .map(|r| (r.get(0), r.get(1)))
                .collect())
        })
    }

    fn ping(&self) -> Result<(), StoreError> {
        self.query(move |c| async move { c.simple_query("").await.map(|_| ()) })
    }
}
