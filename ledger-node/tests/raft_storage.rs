//! The Raft storage of the ledger against openraft's own storage suite, and against the
//! single-node ledger: same commands, same bytes, same Merkle root.
//!
//! This is a test target of its own (not part of `tests/it`) because openraft's suite needs the
//! crate's concrete storage types and runs its own runtimes.
//!
//! `MEDLEDGER_LONG_TESTS=1` makes the snapshot test use a ledger of 50,000 entries.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command as Process, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use ledger_node::entry::{ComponentInput, DisclosureClass, EventInput, EventKind};
use ledger_node::ledger::{now_ms, prepare};
use ledger_node::raft::types::{Entry, LogId, SnapshotMeta, StorageError, Vote};
use ledger_node::raft::{open_storage, LogStore, RaftRequest, StateMachine, TypeConfig};
use ledger_node::store::AppendCommand;
use ledger_node::{ApplyOutcome, Command, Ledger, LedgerOptions, Store};
use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::testing::{log_id, StoreBuilder, Suite};
use openraft::{EntryPayload, Membership, RaftLogReader, RaftSnapshotBuilder, StoredMembership};
use tempfile::TempDir;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

struct SledBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = tempfile::tempdir().expect("tempdir");
        let (log, sm, _store) = open_storage(dir.path()).expect("open storage");
        Ok((dir, log, sm))
    }
}

#[test]
fn openraft_storage_suite() {
    if let Err(e) = Suite::test_all(SledBuilder) {
        panic!("openraft storage suite: {e}");
    }
}

fn event(i: u64) -> EventInput {
    let c = |name: &str, class, value: String| ComponentInput {
        name: name.into(),
        class,
        value,
    };
    EventInput {
        kind: if i.is_multiple_of(2) {
            EventKind::Calibration
        } else {
            EventKind::Repair
        },
        device_id: format!("udi-pump-{:03}", i % 37),
        occurred_at: Some("2025-03-01T08:30:00+01:00".into()),
        components: vec![
            c(
                "procedure",
                DisclosureClass::Maintenance,
                format!("\"calibration step {i}\""),
            ),
            c(
                "reading",
                DisclosureClass::Maintenance,
                format!(r#"{{"ml_per_h":{}.5}}"#, i % 500),
            ),
            c("ward", DisclosureClass::Patient, "\"ICU 3, bed 12\"".into()),
        ],
        corrects: None,
        event_id: Some(format!("evt-{i}")),
    }
}

/// `n` prepared commands, with a duplicate event id every 50 and a refused correction (of an
/// entry that does not exist yet) every 97.
fn commands(key: &SigningKey, node_id: u64, n: u64) -> Vec<Command> {
    let mut out = Vec::new();
    for i in 0..n {
        let mut e = event(i);
        if i % 50 == 49 {
            e.event_id = Some(format!("evt-{}", i - 10));
        }
        if i % 97 == 96 {
            e.corrects = Some(1_000_000);
        }
        let cmd: AppendCommand =
            prepare(e, "biomed:test", node_id, key, now_ms()).expect("prepare");
        out.push(Command::Append(cmd));
    }
    out
}

fn normal(term: u64, index: u64, commands: Vec<Command>) -> Entry {
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Normal(RaftRequest::new(commands)),
    }
}

fn membership(term: u64, index: u64, voters: &[u64]) -> Entry {
    let set: BTreeSet<u64> = voters.iter().copied().collect();
    Entry {
        log_id: log_id(term, 1, index),
        payload: EntryPayload::Membership(Membership::new(vec![set], None)),
    }
}

/// Applies `cmds` through the state machine in Raft entries of varying sizes (group commit),
/// starting at log index `first`, after a blank and a membership entry. Returns the outcomes in
/// command order and the next free index.
async fn apply_in_groups(
    sm: &mut StateMachine,
    cmds: &[Command],
    first: u64,
) -> (Vec<ApplyOutcome>, u64) {
    let mut index = first;
    let head = vec![
        Entry {
            log_id: log_id(1, 1, index),
            payload: EntryPayload::Blank,
        },
        membership(1, index + 1, &[1, 2, 3]),
    ];
    index += 2;
    let r = sm.apply(head).await.expect("apply head");
    assert!(r.iter().all(|r| r.outcomes.is_empty()));
    let mut outcomes = Vec::new();
    let mut rest = cmds;
    let mut size = 1usize;
    while !rest.is_empty() {
        // Several entries per apply call, several commands per entry, sizes 1, 2, 3, ... 64.
        let mut entries = Vec::new();
        let mut expect = Vec::new();
        for _ in 0..3 {
            if rest.is_empty() {
                break;
            }
            let n = size.min(rest.len());
            entries.push(normal(1, index, rest[..n].to_vec()));
            expect.push(n);
            rest = &rest[n..];
            index += 1;
            size = size % 64 + 1;
        }
        let r = sm.apply(entries).await.expect("apply");
        assert_eq!(
            r.iter().map(|r| r.outcomes.len()).collect::<Vec<_>>(),
            expect
        );
        outcomes.extend(r.into_iter().flat_map(|r| r.outcomes));
    }
    (outcomes, index)
}

fn assert_same_ledger(a: &Store, b: &Store) {
    assert_eq!(a.size(), b.size());
    let size = a.size();
    assert_eq!(a.root(size).expect("root a"), b.root(size).expect("root b"));
    for seq in 0..size {
        assert_eq!(
            a.entry_bytes(seq).expect("a"),
            b.entry_bytes(seq).expect("b"),
            "entry {seq}"
        );
        assert_eq!(
            a.openings(seq).expect("a"),
            b.openings(seq).expect("b"),
            "openings {seq}"
        );
    }
    assert_eq!(a.node_keys().expect("a"), b.node_keys().expect("b"));
    for d in 0..37 {
        let dev = format!("udi-pump-{d:03}");
        assert_eq!(
            a.device_history(&dev, None, usize::MAX).expect("a"),
            b.device_history(&dev, None, usize::MAX).expect("b")
        );
    }
}

#[tokio::test]
async fn raft_apply_gives_the_single_node_ledger_bytes_and_root() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let ledger = Ledger::open(&tmp.path().join("single"), LedgerOptions::default())
        .await
        .expect("open ledger");
    let node_id = ledger.node_id();
    let key = ledger.signing_key().clone();
    let mut cmds = vec![Command::RegisterNode {
        node_id,
        public_key: key.verifying_key().to_bytes(),
    }];
    cmds.extend(commands(&key, node_id, 400));

    let mut single = Vec::new();
    for c in &cmds[1..] {
        single.push(ledger.submit(c.clone()).await.expect("submit"));
    }
    assert!(single
        .iter()
        .any(|o| matches!(o, ApplyOutcome::Duplicate { .. })));
    assert!(single
        .iter()
        .any(|o| matches!(o, ApplyOutcome::Refused { .. })));

    let (_log, mut sm, store) = open_storage(&tmp.path().join("raft")).expect("open storage");
    let (outcomes, next) = apply_in_groups(&mut sm, &cmds, 1).await;
    assert_eq!(outcomes[0], ApplyOutcome::NodeRegistered { node_id });
    assert_eq!(&outcomes[1..], single.as_slice());
    assert_same_ledger(ledger.store(), &store);
    assert!(store.size() > 300, "readers see applied entries at once");

    let (applied, mem) = sm.applied_state().await.expect("applied state");
    assert_eq!(applied, Some(log_id(1, 1, next - 1)));
    assert_eq!(mem.log_id(), &Some(log_id(1, 1, 2)));
}

fn ledger_size() -> u64 {
    if std::env::var_os("MEDLEDGER_LONG_TESTS").is_some_and(|v| v == "1") {
        50_000
    } else {
        3_000
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshot_installs_the_whole_ledger_on_another_node() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::from_bytes(&[7u8; 32]);
    let n = ledger_size();
    let mut cmds = vec![Command::RegisterNode {
        node_id: 1,
        public_key: key.verifying_key().to_bytes(),
    }];
    cmds.extend(commands(&key, 1, n + 20));
    let more = cmds.split_off(cmds.len() - 20);

    let (_log_a, mut sm_a, store_a) = open_storage(&tmp.path().join("a")).expect("open a");
    let t = Instant::now();
    let (_, next) = apply_in_groups(&mut sm_a, &cmds, 1).await;
    eprintln!("applied {n} events in {:?}", t.elapsed());

    // The follower already has an older prefix of the ledger, which the snapshot replaces.
    let (_log_b, mut sm_b, store_b) = open_storage(&tmp.path().join("b")).expect("open b");
    apply_in_groups(&mut sm_b, &cmds[..cmds.len() / 3], 1).await;
    assert!(store_b.size() < store_a.size());

    // Peak memory from here to the end of the install (VmHWM, reset by clear_refs 5).
    let mem_before = proc_status_kb("VmRSS");
    let _ = std::fs::write("/proc/self/clear_refs", "5");
    let t = Instant::now();
    let snap = sm_a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let bytes = snap.snapshot.metadata().await.expect("metadata").len();
    eprintln!("built a snapshot of {bytes} bytes in {:?}", t.elapsed());
    assert_eq!(snap.meta.last_log_id, Some(log_id(1, 1, next - 1)));
    let current = sm_a
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("a snapshot");
    assert_eq!(current.meta, snap.meta);

    // Sent as openraft sends it: read from the leader's snapshot file in chunks, written into
    // the file the follower receives into.
    let t = Instant::now();
    let mut rx = sm_b.begin_receiving_snapshot().await.expect("begin");
    let mut src = current.snapshot;
    let mut chunk = vec![0u8; 64 * 1024];
    let mut sent = 0u64;
    loop {
        let n = src.read(&mut chunk).await.expect("read snapshot");
        if n == 0 {
            break;
        }
        rx.write_all(&chunk[..n]).await.expect("write chunk");
        sent += n as u64;
    }
    rx.shutdown().await.expect("shutdown");
    assert_eq!(sent, bytes);
    sm_b.install_snapshot(&snap.meta, rx)
        .await
        .expect("install");
    eprintln!(
        "installed it in {:?}; memory while building, sending and installing: peak {} KiB, {} KiB \
         before",
        t.elapsed(),
        proc_status_kb("VmHWM"),
        mem_before
    );

    assert_same_ledger(&store_a, &store_b);
    assert_eq!(
        sm_b.applied_state().await.expect("b"),
        sm_a.applied_state().await.expect("a")
    );
    assert_eq!(
        store_b.find_event_id("evt-5").expect("find"),
        store_a.find_event_id("evt-5").expect("find")
    );

    // Applying goes on from the snapshot on both nodes with the same result.
    let entry = |i| vec![normal(2, next + i, more[i as usize * 10..][..10].to_vec())];
    for i in 0..2 {
        let ra = sm_a.apply(entry(i)).await.expect("apply a");
        let rb = sm_b.apply(entry(i)).await.expect("apply b");
        assert_eq!(ra, rb);
    }
    assert_same_ledger(&store_a, &store_b);

    // The installed snapshot is what the follower serves from now on, also after a restart.
    let meta = snap.meta.clone();
    let root = store_b.root(store_b.size()).expect("root");
    let size = store_b.size();
    drop((sm_b, store_b, _log_b));
    let (_log_b, mut sm_b, store_b) = reopen(&tmp.path().join("b"));
    let current = sm_b
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("a snapshot");
    assert_eq!(current.meta, meta);
    assert_eq!(store_b.size(), size);
    assert_eq!(store_b.root(size).expect("root"), root);
}

#[tokio::test]
async fn a_damaged_snapshot_is_refused() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::from_bytes(&[9u8; 32]);
    let cmds = commands(&key, 1, 30);
    let (_log_a, mut sm_a, _store_a) = open_storage(&tmp.path().join("a")).expect("open a");
    apply_in_groups(&mut sm_a, &cmds, 1).await;
    let snap = sm_a
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");

    let (_log_b, mut sm_b, store_b) = open_storage(&tmp.path().join("b")).expect("open b");
    let mut bytes = Vec::new();
    let mut src = snap.snapshot;
    src.read_to_end(&mut bytes).await.expect("read snapshot");
    let mid = bytes.len() / 2;
    bytes[mid] ^= 1;
    let mut rx = sm_b.begin_receiving_snapshot().await.expect("begin");
    rx.write_all(&bytes).await.expect("write");
    assert!(sm_b.install_snapshot(&snap.meta, rx).await.is_err());
    assert_eq!(
        store_b.size(),
        0,
        "nothing of the damaged snapshot was installed"
    );
    assert!(sm_b
        .get_current_snapshot()
        .await
        .expect("current")
        .is_none());
}

/// A leader's snapshot: `n` events (signed with key `key`) applied on a node in `dir`, built.
/// Returns its metadata, its bytes and the commands applied.
async fn leader_snapshot(dir: &Path, key: u8, n: u64) -> (SnapshotMeta, Vec<u8>, Vec<Command>) {
    let key = SigningKey::from_bytes(&[key; 32]);
    let mut cmds = vec![Command::RegisterNode {
        node_id: 1,
        public_key: key.verifying_key().to_bytes(),
    }];
    cmds.extend(commands(&key, 1, n));
    let (_log, mut sm, _store) = open_storage(dir).expect("open leader");
    apply_in_groups(&mut sm, &cmds, 1).await;
    let snap = sm
        .get_snapshot_builder()
        .await
        .build_snapshot()
        .await
        .expect("build");
    let mut bytes = Vec::new();
    let mut src = snap.snapshot;
    src.read_to_end(&mut bytes).await.expect("read snapshot");
    (snap.meta, bytes, cmds)
}

/// A crash after the store switched to a received snapshot and before `raft-snapshot.recv` was
/// renamed left the store newer than the snapshot file, which openraft's start-up cannot agree
/// with (its core panics). The open completes the rename; a partial receive is left alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_install_cut_short_before_its_rename_is_completed_at_open() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (snap, bytes, _) = leader_snapshot(&tmp.path().join("a"), 11, 40).await;

    let b = tmp.path().join("b");
    let (log_b, mut sm_b, store_b) = open_storage(&b).expect("open b");
    // A partial receive: nothing changes at the next open.
    let mut rx = sm_b.begin_receiving_snapshot().await.expect("begin");
    rx.write_all(&bytes[..bytes.len() / 2])
        .await
        .expect("write");
    rx.shutdown().await.expect("shutdown");
    drop((rx, sm_b, store_b, log_b));
    let (log_b, mut sm_b, store_b) = reopen(&b);
    assert!(b.join("raft-snapshot.recv").exists());
    assert!(sm_b
        .get_current_snapshot()
        .await
        .expect("current")
        .is_none());
    // A whole one, installed; then the state a crash before the rename leaves.
    let mut rx = sm_b.begin_receiving_snapshot().await.expect("begin");
    rx.write_all(&bytes).await.expect("write");
    rx.shutdown().await.expect("shutdown");
    sm_b.install_snapshot(&snap, rx).await.expect("install");
    let size = store_b.size();
    std::fs::rename(b.join("raft-snapshot.bin"), b.join("raft-snapshot.recv")).expect("undo");
    drop((sm_b, store_b, log_b));
    let (_log_b, mut sm_b, store_b) = reopen(&b);
    assert!(!b.join("raft-snapshot.recv").exists());
    let current = sm_b
        .get_current_snapshot()
        .await
        .expect("current")
        .expect("the received snapshot is the current one");
    assert_eq!(current.meta, snap);
    assert_eq!(
        sm_b.applied_state().await.expect("applied").0,
        snap.last_log_id
    );
    assert_eq!(store_b.size(), size);
}

/// What openraft's start-up makes of the storage (`StorageHelper::get_initial_state`, which also
/// purges and builds as it sees fit) holds up to its state validation: the log is purged no
/// further than the snapshot (or, without one, than what is committed), and the snapshot is
/// committed. Where this failed, the Raft core panicked at start. Returns the last purged log id.
async fn assert_raft_starts(log: &mut LogStore, sm: &mut StateMachine) -> Option<LogId> {
    let state = openraft::StorageHelper::new(log, sm)
        .get_initial_state()
        .await
        .expect("openraft's initial state");
    let purged = log
        .get_log_state()
        .await
        .expect("log state")
        .last_purged_log_id;
    let snapshot = state.snapshot_meta.last_log_id;
    match snapshot {
        Some(s) => assert!(
            purged <= Some(s),
            "log purged to {purged:?}, snapshot at {s}"
        ),
        None => assert!(
            purged <= state.committed,
            "log purged to {purged:?} without a snapshot, committed {:?}",
            state.committed
        ),
    }
    assert!(
        snapshot <= state.committed,
        "snapshot {snapshot:?} not committed"
    );
    purged
}

/// openraft purges its log up to a received snapshot as soon as it hands the snapshot to the
/// state machine, without waiting for the install. The install's flush (or any other, here a
/// vote's) made that purge durable before the store switched to the snapshot, and a power cut in
/// between brought the node back with its log purged beyond its snapshot: its Raft core panicked
/// at start (the power-loss round `power_cut_during_snapshot_install`). The purge now waits for
/// the install and is written right after it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_purge_of_a_snapshot_install_waits_for_the_install() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let (snap, bytes, cmds) = leader_snapshot(&tmp.path().join("a"), 13, 60).await;
    let upto = snap.last_log_id.expect("snapshot log id");

    // The follower holds the first three entries of the log (from index 0, as openraft's
    // start-up expects of a log never purged) and applied them.
    let b = tmp.path().join("b");
    let head = vec![
        Entry {
            log_id: log_id(1, 1, 0),
            payload: EntryPayload::Blank,
        },
        membership(1, 1, &[1, 2, 3]),
        normal(1, 2, cmds[..1].to_vec()),
    ];
    {
        let (mut log_b, mut sm_b, _store_b) = open_storage(&b).expect("open b");
        log_b.blocking_append(head.clone()).await.expect("append");
        sm_b.apply(head.clone()).await.expect("apply");
        let mut rx = sm_b.begin_receiving_snapshot().await.expect("begin");
        rx.write_all(&bytes).await.expect("write");
        rx.shutdown().await.expect("shutdown");
        // As openraft does: the purge at once, the install later; something is flushed, then
        // the power goes before the install ran.
        log_b.purge(upto).await.expect("purge");
        log_b
            .save_vote(&Vote::new_committed(2, 1))
            .await
            .expect("vote");
    }
    let (mut log_b, mut sm_b, _store_b) = reopen(&b);
    assert_eq!(
        assert_raft_starts(&mut log_b, &mut sm_b).await,
        None,
        "the purge was written before its install"
    );

    // Received again and installed: the purge follows the install.
    let mut rx = sm_b.begin_receiving_snapshot().await.expect("begin");
    rx.write_all(&bytes).await.expect("write");
    rx.shutdown().await.expect("shutdown");
    log_b.purge(upto).await.expect("purge");
    sm_b.install_snapshot(&snap, rx).await.expect("install");
    let state = log_b.get_log_state().await.expect("state");
    assert_eq!(state.last_purged_log_id, Some(upto));
    assert!(read_all(&mut log_b).await.is_empty());
    log_b
        .save_vote(&Vote::new_committed(3, 1))
        .await
        .expect("vote");
    drop((log_b, sm_b, _store_b));
    let (mut log_b, mut sm_b, _store_b) = reopen(&b);
    assert_eq!(assert_raft_starts(&mut log_b, &mut sm_b).await, Some(upto));
}

/// A `kB` field of `/proc/self/status` (0 where there is none).
fn proc_status_kb(field: &str) -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
                .and_then(|v| v.split_whitespace().next()?.parse().ok())
        })
        .unwrap_or(0)
}

/// Opens the storage in `dir` again after the previous handles were dropped: sled's own threads
/// may hold the database's lock for a moment after the last handle goes, so poll with a deadline.
fn reopen(dir: &Path) -> (LogStore, StateMachine, Arc<Store>) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        match open_storage(dir) {
            Ok(s) => return s,
            Err(e) if Instant::now() < deadline => {
                eprintln!("reopen: {e}; retrying");
                std::thread::sleep(Duration::from_millis(20));
            }
            Err(e) => panic!("reopen {}: {e}", dir.display()),
        }
    }
}

async fn read_all(log: &mut LogStore) -> Vec<Entry> {
    log.try_get_log_entries(..).await.expect("read log")
}

#[tokio::test]
async fn reopening_keeps_vote_log_committed_and_applied_state() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let key = SigningKey::from_bytes(&[3u8; 32]);
    let cmds = commands(&key, 1, 40);
    let entries: Vec<Entry> = vec![
        Entry {
            log_id: log_id(1, 1, 1),
            payload: EntryPayload::Blank,
        },
        membership(1, 2, &[1, 2]),
        normal(1, 3, cmds[..20].to_vec()),
        normal(2, 4, cmds[20..].to_vec()),
    ];
    let vote = Vote::new_committed(2, 1);
    let (root, size, membership_state);
    {
        let (mut log, mut sm, store) = open_storage(tmp.path()).expect("open");
        log.blocking_append(entries.clone()).await.expect("append");
        log.save_vote(&vote).await.expect("vote");
        log.save_committed(Some(log_id(1, 1, 3)))
            .await
            .expect("committed");
        sm.apply(entries[..3].to_vec()).await.expect("apply");
        root = store.root(store.size()).expect("root");
        size = store.size();
        membership_state = sm.applied_state().await.expect("state").1;
        assert_eq!(size, 20);
    }
    let (mut log, mut sm, store) = reopen(tmp.path());
    assert_eq!(log.read_vote().await.expect("vote"), Some(vote));
    assert_eq!(
        log.read_committed().await.expect("committed"),
        Some(log_id(1, 1, 3))
    );
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_log_id, Some(log_id(2, 1, 4)));
    assert_eq!(state.last_purged_log_id, None);
    assert_eq!(read_all(&mut log).await, entries);
    let (applied, mem) = sm.applied_state().await.expect("applied");
    assert_eq!(applied, Some(log_id(1, 1, 3)));
    assert_eq!(mem, membership_state);
    assert_eq!(
        mem,
        StoredMembership::new(
            Some(log_id(1, 1, 2)),
            Membership::new(vec![[1u64, 2].into_iter().collect()], None)
        )
    );
    assert_eq!(store.size(), size);
    assert_eq!(store.root(size).expect("root"), root);

    // Purge and truncate survive a reopen too.
    log.purge(log_id(1, 1, 2)).await.expect("purge");
    log.truncate(log_id(2, 1, 4)).await.expect("truncate");
    drop((log, sm, store));
    let (mut log, _sm, _store) = reopen(tmp.path());
    let state = log.get_log_state().await.expect("log state");
    assert_eq!(state.last_purged_log_id, Some(log_id(1, 1, 2)));
    assert_eq!(state.last_log_id, Some(log_id(1, 1, 3)));
    assert_eq!(read_all(&mut log).await, entries[2..3].to_vec());
}

const CHILD_DIR: &str = "MEDLEDGER_RAFT_KILL_CHILD_DIR";

/// Appends entries one by one and prints each index once openraft's callback has acknowledged
/// it, until killed: the child half of `acknowledged_appends_survive_kill_9`.
fn kill_9_child(dir: &Path) {
    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async move {
        let (mut log, _sm, _store) = open_storage(dir).expect("open");
        let key = SigningKey::from_bytes(&[5u8; 32]);
        let cmds = commands(&key, 1, 8);
        for index in 1u64.. {
            log.blocking_append(vec![normal(1, index, cmds.clone())])
                .await
                .expect("append");
            println!("acked {index}");
        }
    });
}

/// The test binary runs itself again as the child (this same test, with the data directory in an
/// environment variable), kills it with SIGKILL once it has acknowledged 150 appends, and checks
/// that every acknowledged entry is on disk without a hole.
#[test]
fn acknowledged_appends_survive_kill_9() {
    if let Some(dir) = std::env::var_os(CHILD_DIR) {
        kill_9_child(Path::new(&dir));
        return;
    }
    let tmp = tempfile::tempdir().expect("tempdir");
    let exe = std::env::current_exe().expect("test binary");
    let mut child = Process::new(exe)
        .args([
            "--exact",
            "acknowledged_appends_survive_kill_9",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_DIR, tmp.path())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn child");
    let stdout = child.stdout.take().expect("piped stdout");
    let mut lines = BufReader::new(stdout).lines();
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut acked = 0u64;
    while acked < 150 {
        assert!(Instant::now() < deadline, "child acknowledged only {acked}");
        match lines.next() {
            Some(Ok(l)) => {
                if let Some(i) = l.strip_prefix("acked ") {
                    acked = i.parse().expect("index");
                }
            }
            Some(Err(e)) => panic!("reading the child: {e}"),
            None => panic!("child exited after acknowledging {acked}"),
        }
    }
    child.kill().expect("kill -9");
    child.wait().expect("reap");

    let rt = tokio::runtime::Runtime::new().expect("runtime");
    rt.block_on(async {
        let (mut log, _sm, _store) = open_storage(tmp.path()).expect("reopen after kill -9");
        let entries = read_all(&mut log).await;
        assert!(
            entries.len() as u64 >= acked,
            "{} entries on disk, {acked} acknowledged",
            entries.len()
        );
        for (i, e) in entries.iter().enumerate() {
            let want: LogId = log_id(1, 1, i as u64 + 1);
            assert_eq!(e.log_id, want, "no hole in the log");
        }
    });
}

mod cluster {
    //! A real openraft cluster over this storage, its nodes talking through direct calls in one
    //! process (the network is the gateway's; here only the storage is under test).

    use std::collections::{BTreeMap, HashMap};
    use std::sync::{Arc, Mutex};

    use openraft::error::{InstallSnapshotError, RPCError, RaftError, RemoteError, Unreachable};
    use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
    use openraft::raft::{
        AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest,
        InstallSnapshotResponse, VoteRequest, VoteResponse,
    };
    use openraft::{BasicNode, Config, SnapshotPolicy};

    use super::*;
    use ledger_node::raft::types::Raft;

    type Nodes = Arc<Mutex<HashMap<u64, Raft>>>;

    #[derive(Clone)]
    struct Net(Nodes);

    struct Conn {
        target: u64,
        nodes: Nodes,
    }

    impl Conn {
        #[allow(clippy::result_large_err)] // openraft's own error type
        fn raft<E: std::error::Error>(&self) -> Result<Raft, RPCError<u64, BasicNode, E>> {
            let nodes = self.nodes.lock().expect("nodes lock");
            nodes.get(&self.target).cloned().ok_or_else(|| {
                let e = std::io::Error::other(format!("node {} is down", self.target));
                RPCError::Unreachable(Unreachable::new(&e))
            })
        }
    }

    impl RaftNetworkFactory<TypeConfig> for Net {
        type Network = Conn;
        async fn new_client(&mut self, target: u64, _node: &BasicNode) -> Conn {
            Conn {
                target,
                nodes: self.0.clone(),
            }
        }
    }

    impl RaftNetwork<TypeConfig> for Conn {
        async fn append_entries(
            &mut self,
            rpc: AppendEntriesRequest<TypeConfig>,
            _option: RPCOption,
        ) -> Result<AppendEntriesResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
            let raft = self.raft()?;
            raft.append_entries(rpc)
                .await
                .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
        }

        async fn install_snapshot(
            &mut self,
            rpc: InstallSnapshotRequest<TypeConfig>,
            _option: RPCOption,
        ) -> Result<
            InstallSnapshotResponse<u64>,
            RPCError<u64, BasicNode, RaftError<u64, InstallSnapshotError>>,
        > {
            let raft = self.raft()?;
            raft.install_snapshot(rpc)
                .await
                .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
        }

        async fn vote(
            &mut self,
            rpc: VoteRequest<u64>,
            _option: RPCOption,
        ) -> Result<VoteResponse<u64>, RPCError<u64, BasicNode, RaftError<u64>>> {
            let raft = self.raft()?;
            raft.vote(rpc)
                .await
                .map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e)))
        }
    }

    async fn start(id: u64, dir: &Path, nodes: &Nodes) -> (Raft, Arc<Store>) {
        let config = Config {
            heartbeat_interval: 100,
            election_timeout_min: 400,
            election_timeout_max: 800,
            // Snapshot and purge often, so that a late learner can only catch up by snapshot.
            snapshot_policy: SnapshotPolicy::LogsSinceLast(50),
            max_in_snapshot_log_to_keep: 0,
            purge_batch_size: 1,
            ..Default::default()
        };
        let config = Arc::new(config.validate().expect("config"));
        let (log, sm, store) = reopen(dir);
        let raft = Raft::new(id, config, Net(nodes.clone()), log, sm)
            .await
            .expect("start raft");
        nodes.lock().expect("nodes").insert(id, raft.clone());
        (raft, store)
    }

    fn node(id: u64) -> BasicNode {
        BasicNode::new(format!("node-{id}"))
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicates_and_catches_up_a_learner_by_snapshot() {
        let tmp = tempfile::tempdir().expect("tempdir");
        let nodes: Nodes = Arc::default();
        let (r1, s1) = start(1, &tmp.path().join("1"), &nodes).await;
        let (r2, s2) = start(2, &tmp.path().join("2"), &nodes).await;
        let members: BTreeMap<u64, BasicNode> = [(1, node(1)), (2, node(2))].into();
        r1.initialize(members).await.expect("initialize");
        let timeout = Some(Duration::from_secs(30));
        let m = r1
            .wait(timeout)
            .metrics(|m| m.current_leader.is_some(), "a leader")
            .await
            .expect("a leader");
        let leader = match m.current_leader {
            Some(2) => r2.clone(),
            _ => r1.clone(),
        };

        let key = SigningKey::from_bytes(&[21u8; 32]);
        let mut cmds = vec![Command::RegisterNode {
            node_id: 1,
            public_key: key.verifying_key().to_bytes(),
        }];
        cmds.extend(commands(&key, 1, 300));
        let mut outcomes = Vec::new();
        for chunk in cmds.chunks(3) {
            let resp = leader
                .client_write(RaftRequest::new(chunk.to_vec()))
                .await
                .expect("client write");
            assert_eq!(resp.data.outcomes.len(), chunk.len());
            outcomes.extend(resp.data.outcomes);
        }
        assert_eq!(outcomes[0], ApplyOutcome::NodeRegistered { node_id: 1 });

        // The leader has snapshotted and purged its log by now.
        let m = leader
            .wait(timeout)
            .metrics(|m| m.purged.is_some() && m.snapshot.is_some(), "purged")
            .await
            .expect("log purged after a snapshot");
        assert!(m.purged.expect("purged").index > 1);

        // A new node can only catch up by snapshot, then follows the log.
        let (r3, s3) = start(3, &tmp.path().join("3"), &nodes).await;
        leader
            .add_learner(3, node(3), true)
            .await
            .expect("add learner");
        let more = commands(&key, 1, 310).split_off(300);
        // The log id of the write itself: the leader's metrics may not show it applied yet when
        // the answer arrives, and waiting for an older index would compare the stores too soon.
        let last = leader
            .client_write(RaftRequest::new(more))
            .await
            .expect("write after the learner joined")
            .log_id;
        for r in [&r1, &r2, &r3] {
            r.wait(timeout)
                .applied_index_at_least(Some(last.index), "caught up")
                .await
                .expect("caught up");
        }
        let m3 = r3.metrics().borrow().clone();
        assert!(m3.snapshot.is_some(), "the learner installed a snapshot");
        assert_same_ledger(&s1, &s2);
        assert_same_ledger(&s1, &s3);
        assert_eq!(
            s1.size(),
            300 - 6 - 3 + 10,
            "duplicates and refusals are not entries"
        );

        // A restarted node comes back with its state from disk.
        r3.shutdown().await.expect("shutdown 3");
        nodes.lock().expect("nodes").remove(&3);
        drop((r3, s3));
        let (r3, s3) = start(3, &tmp.path().join("3"), &nodes).await;
        r3.wait(timeout)
            .applied_index_at_least(Some(last.index), "restarted")
            .await
            .expect("restarted node applied");
        assert_same_ledger(&s1, &s3);

        for r in [r1, r2, r3] {
            r.shutdown().await.expect("shutdown");
        }
    }
}
