//! The writer loop against a backend that fails on demand and records what it applied.

use super::super::{Acker, Created, Op, TurnEnded};
use super::*;
use std::sync::atomic::AtomicBool;
use std::sync::{Arc, Mutex as StdMutex};

/// A backend that fails while `down` and records what it applied (and, when asked, each
/// batch's ops apart).
struct Flaky {
    down: Arc<AtomicBool>,
    applied: Arc<StdMutex<Vec<String>>>,
    batches: Option<Arc<StdMutex<Vec<Vec<String>>>>>,
}

impl Backend for Flaky {
    fn apply(&mut self, batch: &[Op]) -> Result<(), StoreError> {
        if self.down.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("down".into()));
        }
        let mut a = self.applied.lock().unwrap();
        let before = a.len();
        for op in batch {
            match op {
                Op::Create(c) => a.push(format!("create {}", c.id)),
                Op::Events { id, first, frames } => {
                    for (seq, _) in crate::store::batch::Chunk::events(*first, frames.as_str()) {
                        a.push(format!("event {id} {seq}"));
                    }
                }
                Op::TurnEnd(t) => a.push(format!("end {}", t.id)),
                _ => {}
            }
        }
        if let Some(b) = &self.batches {
            b.lock().unwrap().push(a[before..].to_vec());
        }
        Ok(())
    }
}

type Started = (
    Arc<AtomicBool>,
    Arc<StdMutex<Vec<String>>>,
    Arc<State>,
    mpsc::Sender<Op>,
);

/// A writer over a store that is down, with a buffer of `limit` bytes.
fn start_down(limit: usize) -> Started {
    let down = Arc::new(AtomicBool::new(true));
    let applied = Arc::new(StdMutex::new(Vec::new()));
    let state = Arc::new(State::new("test".into(), limit));
    let (tx, rx) = mpsc::channel();
    let backend = Flaky {
        down: down.clone(),
        applied: applied.clone(),
        batches: None,
    };
    spawn(backend, rx, state.clone()).unwrap();
    (down, applied, state, tx)
}

fn event(seq: u64, bytes: usize) -> Op {
    event_of("s", seq, bytes)
}

fn event_of(id: &str, seq: u64, bytes: usize) -> Op {
    Op::Events {
        id: Arc::from(id),
        first: seq,
        frames: super::super::Frames::One("x".repeat(bytes).into()),
    }
}

/// An acknowledgement of `session`'s writes (every write with None), and its receiver.
fn ack(session: Option<&str>) -> (Op, mpsc::Receiver<()>) {
    let (tx, rx) = mpsc::channel();
    let op = Op::Ack(super::super::Ack {
        waiter: Acker::Blocking(tx),
        session: session.map(Arc::from),
    });
    (op, rx)
}

#[test]
fn a_session_s_acknowledgement_commits_its_writes_and_leaves_the_others_to_the_interval() {
    let applied = Arc::new(StdMutex::new(Vec::new()));
    let batches = Arc::new(StdMutex::new(Vec::new()));
    let state = Arc::new(State::new("test".into(), 64 << 20));
    let (tx, rx) = mpsc::channel();
    // Queued before the writer starts, so it finds them all at once, the acknowledgement
    // already asking for a commit.
    let (acked_a, a_done) = ack(Some("a"));
    for op in [event_of("a", 1, 10), event_of("b", 1, 10), acked_a] {
        state.queued(op.size());
        tx.send(op).unwrap();
    }
    state.wake_writer();
    let backend = Flaky {
        down: Arc::new(AtomicBool::new(false)),
        applied: applied.clone(),
        batches: Some(batches.clone()),
    };
    // A long interval: a's commit comes from its acknowledgement, not from the interval's end.
    spawn_every(backend, rx, state.clone(), Duration::from_secs(2)).unwrap();
    a_done.recv_timeout(Duration::from_secs(1)).unwrap();
    assert_eq!(*batches.lock().unwrap(), [vec!["event a 1".to_string()]]);
    // b's write is still counted as buffered when a's acknowledgement is answered.
    assert!(state.health().buffered_bytes > 0);
    // b's write follows at the interval's end, in a batch of its own.
    let t0 = std::time::Instant::now();
    while applied.lock().unwrap().len() < 2 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(
        *batches.lock().unwrap(),
        [vec!["event a 1".to_string()], vec!["event b 1".to_string()]]
    );
    assert_eq!(state.health().buffered_bytes, 0);
    // An acknowledgement of everything takes every session's writes with it.
    let (acked_all, all_done) = ack(None);
    for op in [event_of("b", 2, 10), event_of("a", 2, 10), acked_all] {
        state.queued(op.size());
        tx.send(op).unwrap();
    }
    state.wake_writer();
    all_done.recv_timeout(Duration::from_secs(10)).unwrap();
    let a = applied.lock().unwrap();
    assert!(
        a.ends_with(&["event b 2".to_string(), "event a 2".to_string()]),
        "{a:?}"
    );
}

#[test]
fn failed_writes_are_kept_in_order_and_written_when_the_store_is_back() {
    let (down, applied, state, tx) = start_down(64 << 20);
    let send = |op: Op| {
        state.queued(op.size());
        tx.send(op).unwrap();
    };
    send(Op::Create(Box::new(Created {
        id: "s".into(),
        token_hash: "h".into(),
        settings: "{}".into(),
        client: "127.0.0.1".into(),
        owner: None,
        agent: String::new(),
        at: 0,
    })));
    send(event(1, 10));
    let (ack, acked) = mpsc::channel();
    send(Op::Ack(Acker::Blocking(ack).into()));
    state.wake_writer();
    assert!(
        acked.recv_timeout(Duration::from_millis(600)).is_err(),
        "not while down"
    );
    assert_eq!(state.health().state, "degraded");
    assert!(state.health().buffered_bytes > 0);
    send(event(2, 10));
    send(Op::TurnEnd(Box::new(TurnEnded {
        id: "s".into(),
        memory: "m".into(),
        usage: String::new(),
        agent: String::new(),
        owner: None,
        at: 0,
    })));
    down.store(false, Ordering::SeqCst);
    acked.recv_timeout(Duration::from_secs(10)).unwrap();
    let (ack, acked) = mpsc::channel();
    send(Op::Ack(Acker::Blocking(ack).into()));
    state.wake_writer();
    acked.recv_timeout(Duration::from_secs(10)).unwrap();
    assert_eq!(
        *applied.lock().unwrap(),
        ["create s", "event s 1", "event s 2", "end s"]
    );
    let h = state.health();
    assert_eq!((h.state, h.buffered_bytes, h.dropped_events), ("ok", 0, 0));
}

#[test]
fn past_the_bound_events_go_before_records_and_every_drop_is_counted() {
    let (down, applied, state, tx) = start_down(1 << 20);
    // 40 records of 40 KiB and 400 events of 10 KiB: ~5.6 MiB against a 1 MiB bound.
    for i in 0..40u64 {
        let op = Op::TurnEnd(Box::new(TurnEnded {
            id: format!("r{i}"),
            memory: "m".repeat(40 << 10),
            usage: String::new(),
            agent: String::new(),
            owner: None,
            at: 0,
        }));
        state.queued(op.size());
        tx.send(op).unwrap();
        for j in 0..10 {
            let op = event(i * 10 + j + 1, 10 << 10);
            state.queued(op.size());
            tx.send(op).unwrap();
        }
    }
    // Wait until the writer has taken everything in (and applied its bound).
    let t0 = std::time::Instant::now();
    while state.health().dropped_events < 400 && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let h = state.health();
    assert!(h.buffered_bytes <= 1 << 20, "{h:?}");
    assert_eq!(
        h.dropped_events, 400,
        "every event dropped before any record: {h:?}"
    );
    assert!(h.dropped_records > 0 && h.dropped_records < 40, "{h:?}");
    down.store(false, Ordering::SeqCst);
    let (ack, acked) = mpsc::channel();
    tx.send(Op::Ack(Acker::Blocking(ack).into())).unwrap();
    state.wake_writer();
    acked.recv_timeout(Duration::from_secs(10)).unwrap();
    let a = applied.lock().unwrap();
    // The newest records are the ones kept.
    assert_eq!(a.last().map(String::as_str), Some("end r39"));
    assert_eq!(a.len() as u64 + h.dropped_records, 40);
}
