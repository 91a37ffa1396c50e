//! Both stores against the same expectations, and what only PostgreSQL
//! does: change notifications between handles, and an outage.

use cocoon_fixtures::postgres::Postgres;
use cocoon_store::{PgStore, SqliteStore, Store, StoreError};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// What every store must do; `a` and `b` are two handles on one database.
fn conformance(a: &dyn Store, b: &dyn Store) {
    assert_eq!(a.get("x", "k").unwrap(), None);
    a.put("x", "k", b"v1").unwrap();
    assert_eq!(a.get("x", "k").unwrap().as_deref(), Some(&b"v1"[..]));
    a.put("x", "k", b"v2").unwrap();
    assert_eq!(a.get("x", "k").unwrap().as_deref(), Some(&b"v2"[..]));
    assert!(!b.put_if_absent("x", "k", b"v3").unwrap());
    assert!(b.put_if_absent("x", "k2", b"").unwrap());
    assert_eq!(a.get("x", "k2").unwrap().as_deref(), Some(&b""[..]));
    // Byte order, whatever the database's collation.
    for k in ["b", "B", "a", "é", "a/b", "a-b", "Z9"] {
        a.put("order", k, k.as_bytes()).unwrap();
    }
    assert_eq!(
        b.list("order").unwrap(),
        vec!["B", "Z9", "a", "a-b", "a/b", "b", "é"]
    );
    assert!(a.list("empty").unwrap().is_empty());
    assert!(a.delete("x", "k").unwrap());
    assert!(!a.delete("x", "k").unwrap());
    assert_eq!(a.get("x", "k").unwrap(), None);
    // Binary values survive as they are.
    let all: Vec<u8> = (0..=255).collect();
    a.put("bin", "all", &all).unwrap();
    assert_eq!(b.get("bin", "all").unwrap().unwrap(), all);
    // Bounded event logs, newest first.
    for i in 0..10 {
        a.append("ev", format!("{i}").as_bytes(), 3).unwrap();
    }
    b.append("other", b"o", 3).unwrap();
    let r = b.recent("ev", 100).unwrap();
    assert_eq!(r.len(), 3);
    assert_eq!(r[0].value, b"9");
    assert_eq!(r[2].value, b"7");
    assert!(r[0].id > r[1].id && r[0].at > 0);
    assert_eq!(b.recent("other", 10).unwrap().len(), 1);
    b.ping().unwrap();
    // Where nothing may block, a call to the database fails at once (and
    // changes nothing), asking to run again elsewhere.
    use cocoon_types::inline::without_blocking;
    assert!(without_blocking(|| b.get("unread", "k")).is_none());
    assert!(without_blocking(|| a.put("unread", "k", b"v")).is_none());
    assert_eq!(a.get("unread", "k").unwrap(), None);
}

/// Four writers on two handles append audit batches at once: the numbers
/// run 1..=N with no gap, and every batch chains to the record truly
/// before it (the callback saw the real last record, also after losing a
/// race to another writer).
fn audit_under_contention(a: Arc<dyn Store>, b: Arc<dyn Store>) {
    assert_eq!(a.audit_last().unwrap(), None);
    let writers: Vec<_> = [a.clone(), b.clone(), a.clone(), b.clone()]
        .into_iter()
        .enumerate()
        .map(|(w, s)| {
            std::thread::spawn(move || {
                for i in 0..25 {
                    let n = 1 + (i % 3);
                    let id = format!("w{w}-{i}");
                    s.audit_append(Some(&id), &mut |last| {
                        let first = last.map_or(1, |(s, _)| s + 1);
                        let mut p = last.map_or("genesis".into(), |(_, v)| {
                            String::from_utf8_lossy(v).into_owned()
                        });
                        let mut out = vec![];
                        for j in 0..n {
                            out.push(format!("{} w{w} after[{p}]", first + j).into_bytes());
                            p = (first + j).to_string();
                        }
                        out
                    })
                    .unwrap();
                }
            })
        })
        .collect();
    for w in writers {
        w.join().unwrap();
    }
    let want: i64 = 4 * (0..25).map(|i| 1 + (i % 3)).sum::<i64>();
    assert_eq!(b.audit_last().unwrap(), Some(want));
    let rows = a.audit_range(1, 10_000).unwrap();
    assert_eq!(rows.len() as i64, want);
    let mut before = "genesis".to_string();
    for (i, (seq, v)) in rows.iter().enumerate() {
        assert_eq!(*seq, i as i64 + 1);
        let text = String::from_utf8(v.clone()).unwrap();
        assert!(text.starts_with(&format!("{seq} ")), "{text}");
        // A batch's first record names the whole previous record, the
        // others only its number.
        let after = &text[text.find("after[").unwrap() + 6..text.len() - 1];
        let prev_seq = i.to_string();
        assert!(
            after == before || after == prev_seq,
            "record {seq} chains to [{after}], not to [{before}]"
        );
        before = text;
    }
    assert_eq!(a.audit_range(want - 1, 10).unwrap().len(), 2);
    // An empty batch writes nothing.
    assert_eq!(a.audit_append(None, &mut |_| vec![]).unwrap(), 0);
    // A batch whose id was written is not written again, through either
    // handle; one without an id or with a new one is.
    let mut one = |_: Option<(i64, &[u8])>| vec![b"x".to_vec()];
    for s in [&a, &b] {
        assert_eq!(s.audit_append(Some("w2-7"), &mut one).unwrap(), 0);
    }
    assert_eq!(b.audit_last().unwrap(), Some(want));
    assert_eq!(a.audit_append(None, &mut one).unwrap(), want + 1);
    assert_eq!(b.audit_append(Some("new"), &mut one).unwrap(), want + 2);
    assert_eq!(a.audit_append(Some("new"), &mut one).unwrap(), 0);
    assert_eq!(a.audit_last().unwrap(), Some(want + 2));
}

/// Two handles on one new SQLite file, as two replicas open it (the
/// directory goes with the first value).
fn two_sqlite_handles() -> (tempfile::TempDir, SqliteStore, SqliteStore) {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("store.db");
    let a = SqliteStore::open(&path).unwrap();
    let b = SqliteStore::open(&path).unwrap();
    (dir, a, b)
}

#[test]
fn sqlite_conformance_and_audit() {
    let (_dir, a, b) = two_sqlite_handles();
    conformance(&a, &b);
    audit_under_contention(Arc::new(a), Arc::new(b));
}

/// SQLite keeps resource reads for a moment: served from memory (without
/// touching the file) until `FRESH` has passed, replaced at once by the
/// handle's own writes, and another handle's writes seen once it passed.
/// No other namespace is kept.
#[test]
fn sqlite_keeps_resource_reads_briefly() {
    use cocoon_store::SQLITE_FRESH as FRESH;
    use cocoon_store::ns::RESOURCES;
    use cocoon_types::inline::without_blocking;
    let (_dir, a, b) = two_sqlite_handles();
    let from_memory =
        |s: &SqliteStore, key: &str| without_blocking(|| s.get(RESOURCES, key)).map(|r| r.unwrap());
    // Reads `key`, then finds the same value kept in memory (tried again
    // in the rare case that FRESH passed in between on a busy machine).
    let read_and_kept = |s: &SqliteStore, key: &str| loop {
        let t = Instant::now();
        let v = s.get(RESOURCES, key).unwrap();
        let m = from_memory(s, key);
        if t.elapsed() < FRESH {
            assert_eq!(m, Some(v.clone()), "a read of {key} was not kept");
            return v;
        }
    };
    // Nothing kept before a read; an absent resource is kept as absent.
    assert_eq!(
        from_memory(&a, "r"),
        None,
        "read from memory before any read"
    );
    assert_eq!(read_and_kept(&a, "r"), None);
    // The handle's own writes replace what it kept at once (put, delete,
    // put_if_absent), each time over a value it had just kept.
    a.put(RESOURCES, "r", b"v1").unwrap();
    assert_eq!(a.get(RESOURCES, "r").unwrap().as_deref(), Some(&b"v1"[..]));
    assert_eq!(read_and_kept(&b, "r").as_deref(), Some(&b"v1"[..]));
    assert!(b.delete(RESOURCES, "r").unwrap());
    assert_eq!(
        b.get(RESOURCES, "r").unwrap(),
        None,
        "own delete not seen at once"
    );
    assert_eq!(read_and_kept(&b, "r"), None);
    assert!(b.put_if_absent(RESOURCES, "r", b"v2").unwrap());
    assert_eq!(b.get(RESOURCES, "r").unwrap().as_deref(), Some(&b"v2"[..]));
    // Another handle's writes are seen once what was kept expired; past
    // FRESH a kept read is not used, the file is asked again.
    eventually("another handle's write is never seen", || {
        a.get(RESOURCES, "r").unwrap().as_deref() == Some(&b"v2"[..])
    });
    std::thread::sleep(FRESH);
    assert_eq!(from_memory(&a, "r"), None, "a kept read used past FRESH");
    // With reads going on beside them, a read right after each write gets
    // what it wrote. (The race the epoch guards, a read of the old value
    // kept after the write's invalidation, has a window too narrow to hit
    // here; this catches a write that invalidates nothing.)
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|sc| {
        sc.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                a.get(RESOURCES, "race").unwrap();
            }
        });
        for i in 0..300u32 {
            let v = i.to_le_bytes();
            a.put(RESOURCES, "race", &v).unwrap();
            assert_eq!(a.get(RESOURCES, "race").unwrap().as_deref(), Some(&v[..]));
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
    });
    // Other namespaces always go to the file.
    a.put(cocoon_store::ns::KEYS, "k", b"x").unwrap();
    assert_eq!(
        a.get(cocoon_store::ns::KEYS, "k").unwrap().as_deref(),
        Some(&b"x"[..])
    );
    assert_eq!(
        without_blocking(|| a.get(cocoon_store::ns::KEYS, "k")).map(|r| r.unwrap()),
        None
    );
}

/// Polls `f` until it holds, failing after 10 s with `what`.
fn eventually(what: &str, mut f: impl FnMut() -> bool) -> Duration {
    let start = Instant::now();
    while !f() {
        assert!(start.elapsed() < Duration::from_secs(10), "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
    start.elapsed()
}

#[test]
fn postgres_conformance_audit_notifications_and_outage() {
    let mut pg = Postgres::start_new();
    let url = pg.database("cocoon");
    let a = PgStore::connect(&url).unwrap();
    // A second replica starting on the migrated schema changes nothing.
    let b = PgStore::connect(&url).unwrap();
    assert_eq!(
        pg.psql(
            "cocoon",
            "SELECT string_agg(version::text, ',' ORDER BY version) FROM cocoon_schema"
        )
        .trim(),
        "1,2"
    );
    conformance(&a, &b);

    // A change on one handle reaches the other's cache.
    a.put("policies", "p", b"old").unwrap();
    assert_eq!(
        b.get("policies", "p").unwrap().as_deref(),
        Some(&b"old"[..])
    );
    assert_eq!(b.list("policies").unwrap(), vec!["p"]);
    // Cached now; a change made behind both handles' backs (plain SQL)
    // reaches them through the trigger as well.
    pg.psql(
        "cocoon",
        "UPDATE kv SET value = 'sql' WHERE ns = 'policies' AND key = 'p'",
    );
    let took = eventually("a change never reached the other handle", || {
        b.get("policies", "p").unwrap().as_deref() == Some(&b"sql"[..])
    });
    println!("a change reached the other handle in {took:?}");
    a.put("policies", "q", b"new").unwrap();
    eventually("a key list stayed stale", || {
        b.list("policies").unwrap() == vec!["p", "q"]
    });
    assert!(a.delete("policies", "q").unwrap());
    eventually("a delete never reached the other handle", || {
        b.get("policies", "q").unwrap().is_none()
    });

    // The database goes away: calls fail as unavailable (never a stale
    // cached answer once the notification connection is gone), and the
    // same handles work again once it is back.
    pg.stop();
    eventually("reads still answered with the database down", || {
        match b.get("policies", "p") {
            Err(StoreError::Unavailable(m)) => {
                assert!(m.contains("PostgreSQL"), "{m}");
                true
            }
            Ok(_) => false,
            Err(e) => panic!("a database outage must be Unavailable, got {e:?}"),
        }
    });
    assert!(matches!(a.ping(), Err(StoreError::Unavailable(_))));
    assert!(matches!(
        a.put("policies", "x", b"x"),
        Err(StoreError::Unavailable(_))
    ));
    pg.start();
    let took = eventually("the store did not reconnect", || {
        a.ping().is_ok() && b.ping().is_ok()
    });
    println!("reconnected {took:?} after the restart");
    a.put("policies", "p", b"after").unwrap();
    eventually("stale after the reconnect", || {
        b.get("policies", "p").unwrap().as_deref() == Some(&b"after"[..])
    });
    drop((a, b));

    // A clean database for the audit chain under contention.
    let url = pg.database("audit");
    let a: Arc<dyn Store> = Arc::new(PgStore::connect(&url).unwrap());
    let b: Arc<dyn Store> = Arc::new(PgStore::connect(&url).unwrap());
    audit_under_contention(a, b);
}

#[test]
fn postgres_refusals_are_clear_and_hide_the_password() {
    let err = PgStore::connect("postgres://u:hunter2@127.0.0.1:1/db").unwrap_err();
    let msg = err.to_string();
    assert!(matches!(err, StoreError::Unavailable(_)), "{msg}");
    assert!(!msg.contains("hunter2"), "{msg}");
    assert!(msg.contains("u@127.0.0.1:1/db"), "{msg}");
    // The key-value form names its password too.
    let err = PgStore::connect("host=127.0.0.1 port=1 user=u password=hunter2 dbname=db")
        .unwrap_err()
        .to_string();
    assert!(
        !err.contains("hunter2") && err.contains("u@127.0.0.1:1/db"),
        "{err}"
    );
    // Plain text to another machine is refused: policies would travel
    // unprotected.
    for far in [
        "postgres://u:pw@db.example.com/x",
        "host=10.1.2.3 user=u dbname=x",
        "host=localhost hostaddr=192.0.2.7 user=u dbname=x",
    ] {
        let err = PgStore::connect(far).unwrap_err().to_string();
        assert!(
            err.contains("is not on this machine") && err.contains("--database-ca"),
            "{far}: {err}"
        );
        assert!(!err.contains("pw"), "{err}");
    }
    let err = PgStore::connect("not a url at all=")
        .unwrap_err()
        .to_string();
    assert!(err.contains("not a PostgreSQL connection string"), "{err}");
    let err = PgStore::connect("postgres://u:pw@127.0.0.1/db?sslmode=require")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("without the database's CA") && err.contains("--database-ca"),
        "{err}"
    );
    // A database of schema 1 (audit records, no batch ids) is brought up
    // to date at start, its records kept.
    let pg = Postgres::start_new();
    let url = pg.database("older");
    let s = PgStore::connect(&url).unwrap();
    s.audit_append(None, &mut |_| vec![b"r1".to_vec()]).unwrap();
    drop(s);
    pg.psql(
        "older",
        "DROP TABLE audit_batch; DELETE FROM cocoon_schema WHERE version > 1",
    );
    let s = PgStore::connect(&url).unwrap();
    assert_eq!(
        pg.psql("older", "SELECT max(version) FROM cocoon_schema")
            .trim(),
        "2"
    );
    assert_eq!(
        s.audit_append(Some("b"), &mut |_| vec![b"r2".to_vec()])
            .unwrap(),
        2
    );
    assert_eq!(
        s.audit_append(Some("b"), &mut |_| vec![b"r3".to_vec()])
            .unwrap(),
        0
    );
    assert_eq!(s.audit_range(1, 10).unwrap().len(), 2);
    drop(s);
    // A database from a newer trustee is refused, not downgraded.
    let url = pg.database("newer");
    PgStore::connect(&url).unwrap();
    pg.psql("newer", "INSERT INTO cocoon_schema (version) VALUES (99)");
    let err = PgStore::connect(&url).unwrap_err().to_string();
    assert!(
        err.contains("schema version 99, newer than this trustee"),
        "{err}"
    );
}

/// A CA and a server certificate it signs for `names`.
fn ca_and_server(names: &[&str]) -> (String, String, String) {
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "database test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let server =
        rcgen::CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())
            .unwrap()
            .signed_by(&key, &ca_cert, &ca_key)
            .unwrap();
    (ca_cert.pem(), server.pem(), key.serialize_pem())
}

#[test]
fn postgres_over_tls_verifies_the_server() {
    let mut pg = Postgres::start_new();
    let url = pg.database("tls");
    let (ca, cert, key) = ca_and_server(&["localhost", "127.0.0.1"]);
    pg.enable_tls(&cert, &key);

    // The owner's CA and a host the certificate names: TLS, every session.
    let store = PgStore::connect_tls(&url, ca.as_bytes()).unwrap();
    store.put("ns", "k", b"over tls").unwrap();
    assert_eq!(
        store.get("ns", "k").unwrap().as_deref(),
        Some(&b"over tls"[..])
    );
    let plain = pg.psql(
        "tls",
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = 'tls' AND a.backend_type = 'client backend' AND NOT s.ssl \
         AND a.application_name <> 'psql'",
    );
    let tls = pg.psql(
        "tls",
        "SELECT count(*) FROM pg_stat_ssl s JOIN pg_stat_activity a USING (pid) \
         WHERE a.datname = 'tls' AND s.ssl",
    );
    assert_eq!(plain.trim(), "0", "a store session in plain text");
    assert!(
        tls.trim().parse::<u32>().unwrap() >= 1,
        "no TLS session: {tls}"
    );
    drop(store);

    // Another CA, or a certificate for another name: refused, saying why.
    let (other_ca, _, _) = ca_and_server(&["localhost"]);
    let err = PgStore::connect_tls(&url, other_ca.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");
    let (ca2, cert2, key2) = ca_and_server(&["db.example.com"]);
    pg.enable_tls(&cert2, &key2);
    let err = PgStore::connect_tls(&url, ca2.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.to_lowercase().contains("certificate"), "{err}");

    // Settings that contradict TLS, and a CA file that holds none.
    let err = PgStore::connect_tls(&format!("{url}?sslmode=disable"), ca2.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.contains("sslmode=disable contradicts"), "{err}");
    let err = PgStore::connect_tls("host=/run/postgresql dbname=x", ca2.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.contains("needs a TCP host"), "{err}");
    let err = PgStore::connect_tls(&url, b"not pem")
        .unwrap_err()
        .to_string();
    assert!(err.contains("no certificate"), "{err}");
}
