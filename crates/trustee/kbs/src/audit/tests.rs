//! The audit log against a real SQLite store: tampering of every kind,
//! including the consistent forgeries an attacker with write access to the
//! database but not the key could try.

use super::*;

fn store(dir: &std::path::Path) -> Arc<dyn Store> {
    Arc::new(cocoon_store::SqliteStore::open(&dir.join("db")).unwrap())
}

fn writer(store: Arc<dyn Store>, key: &ed25519_dalek::SigningKey, every: u64) -> Writer {
    Writer {
        store,
        key: key.clone(),
        every,
        next_due: AtomicU64::new(1),
        last_own: Default::default(),
        log_id: Default::default(),
        log_id_looked: Default::default(),
    }
}

fn release(i: u64) -> Entry {
    Entry::new(
        "release",
        serde_json::json!({"resource": format!("default/key/{i}")}),
    )
}

/// A log of `n` records, a checkpoint every `every`.
fn log(n: u64, every: u64) -> (Vec<(i64, Vec<u8>)>, ed25519_dalek::SigningKey) {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let key = ed25519_dalek::SigningKey::from_bytes(&[7; 32]);
    let w = writer(s.clone(), &key, every);
    w.write(&[Entry::new("start", serde_json::json!({}))], true)
        .unwrap();
    let rest: Vec<Entry> = (1..n).map(release).collect();
    w.write(&rest, false).unwrap();
    (s.audit_range(1, 10_000).unwrap(), key)
}

/// A record's `log_id`.
fn log_id_of(record: &[u8]) -> Option<String> {
    text(record).get("log_id")?.as_str().map(str::to_string)
}

fn text(r: &[u8]) -> Map<String, Value> {
    serde_json::from_slice(r).unwrap()
}

/// Re-chains records from index `from` on (what an attacker without the
/// key can do: recompute every `prev`), keeping each record's fields.
fn rechain(records: &mut [(i64, Vec<u8>)], from: usize) {
    for i in from..records.len() {
        let prev = sha256_hex(&records[i - 1].1);
        let mut m = text(&records[i].1);
        m.insert("prev".into(), prev.into());
        records[i].1 = serde_json::to_vec(&m).unwrap();
    }
}

#[test]
fn every_kind_of_tampering_is_found() {
    let (records, key) = log(12, 4);
    let vk = key.verifying_key();
    let ok = verify(&records, &vk, None).unwrap();
    assert_eq!(ok.records, 12);
    assert_eq!(ok.last_checkpoint.as_ref().map(|c| c.0), Some(9));
    assert_eq!(ok.next_due, Some(13));

    let mut changed = records.clone();
    changed[5].1 = String::from_utf8(changed[5].1.clone())
        .unwrap()
        .replace("default/key/5", "default/key/X")
        .into_bytes();
    let e = verify(&changed, &vk, None).unwrap_err();
    assert!(e.contains("record 7 does not follow record 6"), "{e}");
    // A checkpoint's own content is signed too.
    let mut cp = records.clone();
    cp[4].1 = String::from_utf8(cp[4].1.clone())
        .unwrap()
        .replace("default/key/4", "default/key/X")
        .into_bytes();
    let e = verify(&cp, &vk, None).unwrap_err();
    assert!(e.contains("checkpoint 5 is not signed"), "{e}");

    let mut deleted = records.clone();
    deleted.remove(6);
    assert!(
        verify(&deleted, &vk, None)
            .unwrap_err()
            .contains("record 7 is missing or out of order")
    );

    let mut inserted = records.clone();
    inserted.insert(3, (4, records[3].1.clone()));
    assert!(
        verify(&inserted, &vk, None)
            .unwrap_err()
            .contains("record 5 is missing or out of order")
    );

    let mut reordered = records.clone();
    reordered.swap(2, 3);
    assert!(
        verify(&reordered, &vk, None)
            .unwrap_err()
            .contains("record 3 is missing or out of order")
    );

    // Cut back past the last checkpoint: only an earlier verification's
    // anchor tells.
    let (cp, hash) = ok.last_checkpoint.clone().unwrap();
    let cut = records[..(cp as usize - 1)].to_vec();
    assert!(
        verify(&cut, &vk, None).is_ok(),
        "a shorter log is consistent in itself"
    );
    let e = verify(&cut, &vk, Some((cp, &hash))).unwrap_err();
    assert!(e.contains("cut back"), "{e}");

    // A checkpoint signed by another key.
    let other = ed25519_dalek::SigningKey::from_bytes(&[8; 32]).verifying_key();
    assert!(
        verify(&records, &other, None)
            .unwrap_err()
            .contains("checkpoint 1 is not signed")
    );

    // Not canonical: same meaning, other bytes (a space), or a key twice.
    let mut spaced = records.clone();
    spaced[2].1 = String::from_utf8(spaced[2].1.clone())
        .unwrap()
        .replacen(",", ", ", 1)
        .into_bytes();
    assert!(
        verify(&spaced, &vk, None)
            .unwrap_err()
            .contains("canonical")
    );
}

#[test]
fn an_incremental_verification_checks_from_the_anchor_on() {
    let (records, key) = log(12, 4);
    let vk = key.verifying_key();
    let (cp, hash) = verify(&records[..10], &vk, None)
        .unwrap()
        .last_checkpoint
        .unwrap();
    assert_eq!(cp, 9);
    let since = &records[8..];
    let v = verify_since(since, &vk, (cp, &hash)).unwrap();
    assert_eq!((v.records, v.next_due), (4, Some(13)));
    // A change after the anchor, to the anchor, or the anchor gone.
    let mut changed = since.to_vec();
    changed[2].1 = String::from_utf8(changed[2].1.clone())
        .unwrap()
        .replace("default/key/10", "default/key/X")
        .into_bytes();
    let e = verify_since(&changed, &vk, (cp, &hash)).unwrap_err();
    assert!(e.contains("record 12 does not follow record 11"), "{e}");
    // Records from after the anchor on: taken as a whole log, which
    // starts where no signed prune record says it may.
    let e = verify_since(&since[1..], &vk, (cp, &hash)).unwrap_err();
    assert!(
        e.contains("record 10 should be a signed checkpoint") && e.contains("record 9"),
        "{e}"
    );
    let e = verify_since(since, &vk, (cp, &"0".repeat(64))).unwrap_err();
    assert!(e.contains("is now another record"), "{e}");
    let e = verify_since(&[], &vk, (cp, &hash)).unwrap_err();
    assert!(e.contains("cut back"), "{e}");
    // A forged anchor (re-chained records after a changed one) is not signed.
    let mut forged = records.clone();
    forged[8].1 = String::from_utf8(forged[8].1.clone())
        .unwrap()
        .replace("default/key/8", "default/key/X")
        .into_bytes();
    rechain(&mut forged, 9);
    let e = verify_since(&forged[8..], &vk, (cp, &hash)).unwrap_err();
    assert!(e.contains("checkpoint 9 is not signed"), "{e}");
}

/// Two logs signed with one key: the checkpoints of one never verify as
/// part of the other, and a log pruned past an anchor still says which
/// log it is.
#[test]
fn checkpoints_name_their_log() {
    let (a, key) = log(12, 4);
    let (b, _) = log(12, 4);
    let vk = key.verifying_key();
    let (ida, idb) = (
        verify(&a, &vk, None).unwrap().log_id.unwrap(),
        verify(&b, &vk, None).unwrap().log_id.unwrap(),
    );
    assert_ne!(ida, idb);
    // b's records from checkpoint 9 on, re-chained onto a's first 8.
    let mut mixed: Vec<(i64, Vec<u8>)> = a[..8].to_vec();
    mixed.extend(b[8..].iter().cloned());
    let e = verify(&mixed, &vk, None).unwrap_err();
    assert!(e.contains("record 9 does not follow record 8"), "{e}");
    let v = verify_since(&b[8..], &vk, (9, &sha256_hex(&b[8].1))).unwrap();
    assert_eq!(v.log_id, Some(idb));
}

/// A writer takes the log's id from its first record only when that
/// record's signature holds.
#[test]
fn the_log_id_is_read_from_a_signed_record_only() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let key = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
    let w = writer(s.clone(), &key, 4);
    w.write(&[release(1)], true).unwrap();
    let vk = key.verifying_key();
    let id = signed_log_id(s.as_ref(), &vk).unwrap();
    assert_eq!(
        Some(id.clone()),
        log_id_of(&s.audit_range(1, 1).unwrap()[0].1)
    );
    let db = rusqlite::Connection::open(dir.path().join("db")).unwrap();
    db.execute(
        "UPDATE audit SET value = CAST(replace(CAST(value AS TEXT), ?1, 'ffffffffffffffffffffffffffffffff') AS BLOB) WHERE seq = 1",
        [&id],
    )
    .unwrap();
    assert_eq!(signed_log_id(s.as_ref(), &vk), None);
    let other = ed25519_dalek::SigningKey::from_bytes(&[9; 32]).verifying_key();
    assert_eq!(signed_log_id(s.as_ref(), &other), None);
}

/// A replica that looked for the log's id while the log was empty, and
/// then lost record 1 to another replica, still names the log in its
/// checkpoints.
#[test]
fn a_writer_that_saw_an_empty_log_learns_its_id_later() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let key = ed25519_dalek::SigningKey::from_bytes(&[8; 32]);
    let (a, b) = (writer(s.clone(), &key, 4), writer(s.clone(), &key, 4));
    b.learn_log_id().unwrap();
    a.write(&[release(1)], true).unwrap();
    b.write(&[release(2)], true).unwrap();
    let records = s.audit_range(1, 10).unwrap();
    let id = log_id_of(&records[0].1);
    assert!(id.is_some());
    assert_eq!(records.len(), 2);
    assert_eq!(log_id_of(&records[1].1), id);
}

#[test]
fn consistent_forgeries_without_the_key_are_found() {
    let (records, key) = log(12, 4);
    let vk = key.verifying_key();

    // Checkpoints stripped of their flag and signature, then a record
    // changed and the chain recomputed: the checkpoint before said where
    // the next must be.
    let mut stripped = records.clone();
    for r in stripped.iter_mut().skip(1) {
        let mut m = text(&r.1);
        for k in ["checkpoint", "sig", "next_checkpoint"] {
            m.remove(k);
        }
        r.1 = serde_json::to_vec(&m).unwrap();
    }
    let mut m = text(&stripped[6].1);
    m.insert("resource".into(), "default/key/forged".into());
    stripped[6].1 = serde_json::to_vec(&m).unwrap();
    rechain(&mut stripped, 1);
    let e = verify(&stripped, &vk, None).unwrap_err();
    assert!(e.contains("record 5 is not a signed checkpoint"), "{e}");

    // A whole new log that keeps record 1 (and its signature): the same.
    let mut replaced = records.clone();
    for (i, r) in replaced.iter_mut().enumerate().skip(1) {
        r.1 = serde_json::to_vec(&serde_json::json!({
            "kind": "admin", "prev": "", "route": "forged", "seq": i + 1, "time": 0
        }))
        .unwrap();
    }
    rechain(&mut replaced, 1);
    assert!(
        verify(&replaced, &vk, None)
            .unwrap_err()
            .contains("not a signed checkpoint")
    );

    // Record 1's signature copied onto another record 1.
    let mut other_first = records.clone();
    let mut m = text(&other_first[0].1);
    m.insert("kind".into(), "forged".into());
    other_first[0].1 = serde_json::to_vec(&m).unwrap();
    rechain(&mut other_first, 1);
    assert!(
        verify(&other_first, &vk, None)
            .unwrap_err()
            .contains("checkpoint 1 is not signed")
    );
}

#[test]
fn a_start_does_not_sign_over_a_tail_that_no_longer_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let w = writer(s.clone(), &key, 4);
    w.write(&[Entry::new("start", serde_json::json!({}))], true)
        .unwrap();
    w.write(&(1..7).map(release).collect::<Vec<_>>(), false)
        .unwrap();
    // Untampered: the next start may go on, and knows when the next
    // checkpoint is due.
    let (due, log_id) = check_tail(s.as_ref(), &key.verifying_key())
        .unwrap()
        .unwrap();
    assert_eq!(due, 9);
    // Checkpoint 5 names the log as record 1 does.
    let records = s.audit_range(1, 10).unwrap();
    assert_eq!(log_id, log_id_of(&records[0].1));
    assert_eq!(log_id_of(&records[4].1), log_id);
    assert!(log_id.is_some());
    // Record 6 (after checkpoint 5) changed while the trustee was down.
    let db = rusqlite::Connection::open(dir.path().join("db")).unwrap();
    let six: Vec<u8> = db
        .query_row("SELECT value FROM audit WHERE seq = 6", [], |r| r.get(0))
        .unwrap();
    let mut m = text(&six);
    m.insert("resource".into(), "default/key/forged".into());
    db.execute(
        "UPDATE audit SET value = ?1 WHERE seq = 6",
        [serde_json::to_vec(&m).unwrap()],
    )
    .unwrap();
    drop(db);
    let e = check_tail(s.as_ref(), &key.verifying_key()).unwrap_err();
    assert!(e.contains("record 7 does not follow record 6"), "{e}");
}

/// Replicas with other checkpoint intervals: each keeps the promise of
/// the checkpoint before its records, since a writer that follows
/// another's record starts with a checkpoint of its own.
#[test]
fn replicas_with_other_checkpoint_intervals_keep_each_others_promises() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let open = || Arc::new(cocoon_store::SqliteStore::open(&path).unwrap()) as Arc<dyn Store>;
    let (short, long) = (writer(open(), &key, 3), writer(open(), &key, 50));
    let entries = |n: u64| (0..n).map(release).collect::<Vec<_>>();
    short.write(&entries(1), true).unwrap(); // 1, promises 4
    short.write(&entries(2), false).unwrap(); // 2-3
    long.write(&entries(4), false).unwrap(); // 4-7, promises 54
    short.write(&entries(4), false).unwrap(); // 8-11, 11 promises 14
    long.write(&entries(1), false).unwrap(); // 12, promises 62
    long.write(&entries(2), false).unwrap(); // 13-14: after its own, no checkpoint
    let records = short.store.audit_range(1, 100).unwrap();
    let checkpoints: Vec<i64> = records
        .iter()
        .filter(|(_, r)| text(r).get("checkpoint") == Some(&Value::Bool(true)))
        .map(|(s, _)| *s)
        .collect();
    assert_eq!(checkpoints, [1, 4, 8, 11, 12]);
    let v = verify(&records, &key.verifying_key(), None).unwrap();
    assert_eq!((v.records, v.next_due), (14, Some(62)));
}

/// A writer's last record lost in a database fail-over, and its number
/// written again by another writer: that record is not taken for the
/// first writer's own, whose next batch starts with a checkpoint.
#[test]
fn a_record_of_the_same_number_by_another_writer_is_not_taken_for_ones_own() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let key = ed25519_dalek::SigningKey::from_bytes(&[4; 32]);
    let open = || Arc::new(cocoon_store::SqliteStore::open(&path).unwrap()) as Arc<dyn Store>;
    let (a, b) = (writer(open(), &key, 50), writer(open(), &key, 3));
    a.write(&[release(1)], true).unwrap(); // 1, promises 51
    a.write(&[release(2), release(3)], false).unwrap(); // 2-3
    // Record 3 is lost; b writes its own record 3, promising 6.
    let db = rusqlite::Connection::open(&path).unwrap();
    db.execute("DELETE FROM audit WHERE seq = 3", []).unwrap();
    b.write(&[release(30)], false).unwrap();
    a.write(&[release(4), release(5), release(6)], false)
        .unwrap(); // 4-6
    let records = a.store.audit_range(1, 100).unwrap();
    assert_eq!(
        text(&records[3].1).get("checkpoint"),
        Some(&Value::Bool(true))
    );
    verify(&records, &key.verifying_key(), None).unwrap();
}

#[test]
fn two_replicas_on_one_database_keep_one_chain() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let key = ed25519_dalek::SigningKey::from_bytes(&[9; 32]);
    let first = writer(
        Arc::new(cocoon_store::SqliteStore::open(&path).unwrap()),
        &key,
        7,
    );
    first
        .write(&[Entry::new("start", serde_json::json!({}))], true)
        .unwrap();
    let writers: Vec<_> = [3, 7]
        .into_iter()
        .map(|every| {
            Arc::new(writer(
                Arc::new(cocoon_store::SqliteStore::open(&path).unwrap()),
                &key,
                every,
            ))
        })
        .collect();
    for w in &writers {
        w.next_due.store(8, Ordering::Relaxed);
    }
    let threads: Vec<_> = writers
        .iter()
        .enumerate()
        .map(|(i, w)| {
            let w = w.clone();
            std::thread::spawn(move || {
                for n in 0..50 {
                    w.write(
                        &[Entry::new(
                            "admin",
                            serde_json::json!({"replica": i, "n": n}),
                        )],
                        false,
                    )
                    .unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    let records = writers[0].store.audit_range(1, 1000).unwrap();
    assert_eq!(records.len(), 101);
    let v = verify(&records, &key.verifying_key(), None).unwrap();
    // Every checkpoint names the log, the other writers' too.
    for (seq, r) in &records {
        if text(r).get("checkpoint").is_some() {
            assert_eq!(log_id_of(r), v.log_id, "checkpoint {seq}");
        }
    }
}

/// The first audit append commits and then reports the database
/// unavailable, as an answer lost after the commit does.
struct LostAnswer {
    lost: std::sync::atomic::AtomicBool,
}

impl crate::test_store::Twist for LostAnswer {
    fn after_audit_append(&self) -> Result<(), StoreError> {
        if !self.lost.swap(true, Ordering::SeqCst) {
            return Err(StoreError::Unavailable("no answer after the commit".into()));
        }
        Ok(())
    }
}

#[tokio::test]
async fn a_batch_committed_before_its_answer_was_lost_is_not_written_again() {
    let dir = tempfile::tempdir().unwrap();
    let inner = store(dir.path());
    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let start = Entry::new("start", serde_json::json!({}));
    // The start checkpoint goes through (and uses up nothing); the first
    // batch of the writer then commits without an answer.
    let flaky = Arc::new(crate::test_store::Twisted {
        inner: inner.clone(),
        twist: LostAnswer {
            lost: std::sync::atomic::AtomicBool::new(true),
        },
    });
    let log = AuditLog::start(flaky.clone(), key.clone(), 100, start, false).unwrap();
    flaky.twist.lost.store(false, Ordering::SeqCst);
    for i in 0..5 {
        log.record(release(i));
    }
    assert!(
        log.flush(Duration::from_secs(10)).await,
        "records still pending"
    );
    assert!(
        flaky.twist.lost.load(Ordering::SeqCst),
        "the lost answer never happened"
    );
    let records = inner.audit_range(1, 100).unwrap();
    let resources: Vec<String> = records
        .iter()
        .filter_map(|(_, r)| text(r).get("resource").map(|v| v.to_string()))
        .collect();
    assert_eq!(resources.len(), 5, "each record once: {resources:?}");
    let tagged = records
        .iter()
        .filter(|(_, r)| text(r).contains_key("batch"))
        .count();
    assert_eq!(tagged, 1, "one batch, tagged once");
    verify(&records, &key.verifying_key(), None).unwrap();

    // A batch that really failed is written on the next try, and one
    // that is there already is not, even behind other writers' records.
    let w = writer(inner.clone(), &key, 100);
    let other = writer(inner.clone(), &key, 100);
    let id = "00112233445566778899aabbccddeeff";
    w.write_batch(&[release(9)], id, true).unwrap();
    let after = inner.audit_range(1, 100).unwrap();
    assert_eq!(after.len(), records.len() + 1);
    for n in 0..3 {
        w.write_batch(&[release(9)], id, true).unwrap();
        assert_eq!(inner.audit_range(1, 100).unwrap().len(), after.len() + n);
        other.write(&[release(20 + n as u64)], false).unwrap();
    }
    let end = inner.audit_range(1, 100).unwrap();
    let nines = end
        .iter()
        .filter(|(_, r)| text(r).get("resource") == Some(&Value::from("default/key/9")))
        .count();
    assert_eq!(nines, 1, "the batch once");
    // After the refused tries, its next batch, behind the other writer's
    // record, starts with a checkpoint.
    w.write_batch(&[release(30)], "ffeeddccbbaa99887766554433221100", false)
        .unwrap();
    let last = inner.audit_range(1, 100).unwrap().pop().unwrap();
    assert_eq!(text(&last.1).get("checkpoint"), Some(&Value::Bool(true)));
    verify(
        &inner.audit_range(1, 100).unwrap(),
        &key.verifying_key(),
        None,
    )
    .unwrap();
}

#[tokio::test]
async fn a_pruned_log_verifies_and_one_cut_further_does_not() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let key = ed25519_dalek::SigningKey::from_bytes(&[3; 32]);
    let vk = key.verifying_key();
    let start = || Entry::new("start", serde_json::json!({}));
    let audit = AuditLog::start(s.clone(), key.clone(), 4, start(), false).unwrap();
    // 1 (the start), 2-12; checkpoints at 1, 5 and 9.
    let rest: Vec<Entry> = (1..12).map(release).collect();
    audit.writer.write(&rest, false).unwrap();
    let whole = s.audit_range(1, 100).unwrap();
    let (cp9, hash9) = verify(&whole, &vk, None).unwrap().last_checkpoint.unwrap();
    assert_eq!(cp9, 9);
    // Before record 7: the newest checkpoint at or before it is 5.
    assert_eq!(audit.prune(7).unwrap(), (5, 4));
    let pruned = s.audit_range(1, 100).unwrap();
    assert_eq!(pruned[0].0, 5);
    let prune = text(&pruned.last().unwrap().1);
    assert_eq!(prune.get("kind"), Some(&Value::from("prune")));
    assert_eq!(prune.get("checkpoint"), Some(&Value::Bool(true)));
    let v = verify(&pruned, &vk, None).unwrap();
    assert_eq!((v.records, v.prunes.as_slice()), (9, &[5][..]));
    // An anchor pruned away is gone with the records before 5; one after
    // is still checked.
    verify(&pruned, &vk, Some((1, &"0".repeat(64)))).unwrap();
    verify(&pruned, &vk, Some((cp9, &hash9))).unwrap();
    let e = verify(&pruned, &vk, Some((cp9, &"0".repeat(64)))).unwrap_err();
    assert!(e.contains("is now another record"), "{e}");
    // Nothing before the first record, or no checkpoint at all: refused.
    for before in [5, 3, 0] {
        assert!(
            matches!(audit.prune(before), Err(PruneError::Nothing(_))),
            "{before}"
        );
    }
    // A restart on the pruned log checks its tail and starts.
    AuditLog::start(s.clone(), key.clone(), 4, start(), false).unwrap();
    // Records removed beyond what the signed prune record says, or
    // without one: found.
    s.audit_prune(9).unwrap();
    let e = verify(&s.audit_range(1, 100).unwrap(), &vk, None).unwrap_err();
    assert!(
        e.contains("starts at record 9") && e.contains("no signed prune record"),
        "{e}"
    );
    let (records, key) = log(12, 4);
    let e = verify(&records[4..], &key.verifying_key(), None).unwrap_err();
    assert!(e.contains("starts at record 5"), "{e}");
}

#[tokio::test]
async fn a_log_that_does_not_verify_is_not_pruned() {
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let key = ed25519_dalek::SigningKey::from_bytes(&[6; 32]);
    let vk = key.verifying_key();
    let start = Entry::new("start", serde_json::json!({}));
    let audit = AuditLog::start(s.clone(), key.clone(), 1000, start, false).unwrap();
    // 9,000 records: what is kept is read in more than one page.
    let rest: Vec<Entry> = (1..9000).map(release).collect();
    audit.writer.write(&rest, false).unwrap();
    let whole = s.audit_range(1, 10_000).unwrap();
    verify(&whole, &vk, None).unwrap();
    let anchor = sha256_hex(&whole[1000].1); // checkpoint 1001
    // A record after the checkpoint changed, or one marked a checkpoint
    // without a signature: nothing is removed.
    let db = rusqlite::Connection::open(dir.path().join("db")).unwrap();
    let swap = |seq: i64, from: &str, to: &str| {
        db.execute(
            "UPDATE audit SET value = CAST(replace(CAST(value AS TEXT), ?2, ?3) AS BLOB) WHERE seq = ?1",
            rusqlite::params![seq, from, to],
        )
        .unwrap();
    };
    swap(6000, "default/key/5999", "default/key/X");
    let e = audit.prune(1500).unwrap_err().to_string();
    assert!(e.contains("does not verify from checkpoint 1001"), "{e}");
    swap(6000, "default/key/X", "default/key/5999");
    swap(2400, "\"kind\"", "\"checkpoint\":true,\"kind\"");
    let e = audit.prune(2500).unwrap_err().to_string();
    assert!(e.contains("checkpoint 2400 has no valid signature"), "{e}");
    swap(2400, "\"checkpoint\":true,\"kind\"", "\"kind\"");
    assert_eq!(s.audit_last().unwrap(), Some(9000));
    // Whole again: pruned (what is kept read in two pages), then pruned
    // past the anchor of an earlier verification, which an incremental
    // verification then takes as the whole log.
    assert_eq!(audit.prune(1500).unwrap(), (1001, 1000));
    let v = verify_since(&s.audit_range(1, 10_000).unwrap(), &vk, (1001, &anchor)).unwrap();
    assert_eq!(v.prunes, [1001]);
    assert_eq!(audit.prune(8500).unwrap(), (8001, 7000));
    let kept = s.audit_range(1, 10_000).unwrap();
    let v = verify_since(&kept, &vk, (1001, &anchor)).unwrap();
    assert_eq!(v.prunes, [1001, 8001]);
    // Cut further by hand: the incremental verification says so.
    s.audit_prune(8002).unwrap();
    let e = verify_since(&s.audit_range(1, 10_000).unwrap(), &vk, (1001, &anchor)).unwrap_err();
    assert!(
        e.contains("record 8002 should be a signed checkpoint") && e.contains("record 1001"),
        "{e}"
    );
}

#[test]
fn long_texts_are_cut_and_reserved_keys_ignored() {
    let e = Entry::new(
        "denial",
        serde_json::json!({"reason": "x".repeat(10_000), "seq": 99, "checkpoint": true, "details": vec!["y"; 100]}),
    );
    assert!(e.fields["reason"].as_str().unwrap().len() <= MAX_TEXT + 3);
    assert_eq!(e.fields["details"].as_array().unwrap().len(), 32);
    let dir = tempfile::tempdir().unwrap();
    let s = store(dir.path());
    let key = ed25519_dalek::SigningKey::from_bytes(&[1; 32]);
    let w = writer(s.clone(), &key, 100);
    w.write(&[Entry::new("start", serde_json::json!({})), e], true)
        .unwrap();
    let records = s.audit_range(1, 10).unwrap();
    let r = text(&records[1].1);
    assert_eq!(r["seq"], 2);
    assert!(r.get("checkpoint").is_none());
    verify(&records, &key.verifying_key(), None).unwrap();
}
