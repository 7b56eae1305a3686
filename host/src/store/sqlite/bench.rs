//! The SQLite writer alone on a token stream's writes, for comparing the store's own cost
//! between builds without the rest of the host, the model or the client in the measurement:
//!
//!   cargo test --release -p myagent-host --lib store_writer_cost -- --ignored --nocapture
//!
//! 300 sessions × 1,000 streamed pieces (frames as the session writes them, handed over ten at
//! a time as a model read's, already as stored lines — the session's `line::Encoder` writes
//! them, before the clock starts: that CPU is the session's, not counted here), in batches of
//! 100 ms at ~150,000 events/s (the unpaced compare's rate), a WAL checkpoint every ten batches
//! (once a second, as the writer does). Prints the writer thread's CPU time (user + system) per
//! event, and the bytes stored, for five rounds on fresh files: the backend alone (`apply`,
//! `tick`), then the whole store (`Store::events` from another thread, ten pieces of a session
//! at a time as a model read's, 100 ms of events at a time; the writer thread's channel,
//! batching and loop included).

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::super::FLUSH_EVERY;
use super::*;

const SESSIONS: usize = 300;
const PIECES: u64 = 1000;
const PER_BATCH: usize = 15_000;
/// Pieces a session hands the whole store at once (one model read's).
const PER_READ: u64 = 10;

/// The calling thread's CPU time (user and system).
fn thread_cpu() -> Duration {
    let mut u = std::mem::MaybeUninit::<libc::rusage>::uninit();
    // SAFETY: getrusage fills the struct it is given; RUSAGE_THREAD is the calling thread.
    let u = unsafe {
        libc::getrusage(libc::RUSAGE_THREAD, u.as_mut_ptr());
        u.assume_init()
    };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(u.ru_utime) + tv(u.ru_stime)
}

/// A streamed piece's frame, its content and timestamp moving on with the clock.
fn piece(id: &str, seq: u64, at: Instant) -> String {
    let ms = at.elapsed().as_millis() as u64 + 1_796_297_071_649;
    let ts = format!("2026-12-03T11:24:{:02}.{:03}Z", ms / 1000 % 60, ms % 1000);
    super::super::line::piece(id, seq, &format!("~{ms}{seq:03}|"), &ts)
}

/// The pieces of every session, a model read's at a time as a session hands them over
/// (`session/log/to_store.rs`): for each read, its first seq and each session's block of
/// stored lines.
fn reads(ids: &[Arc<str>], t0: Instant) -> Vec<(u64, Vec<String>)> {
    (2..PIECES + 2)
        .step_by(PER_READ as usize)
        .map(|first| {
            // As the session hands a read over: its stored lines, the first standing alone.
            let read = |id: &Arc<str>| {
                let n = PER_READ.min(PIECES + 2 - first);
                let pieces: Vec<String> = (first..first + n).map(|s| piece(id, s, t0)).collect();
                super::super::line::block(&pieces, id, first)
            };
            (first, ids.iter().map(read).collect())
        })
        .collect()
}

fn round(dir: &std::path::Path) -> (Duration, u64, u64) {
    let path = dir.join("s.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let mut b = SqliteBackend::open(&path, Duration::from_secs(3600), 256 * 1024).unwrap();
    let ids: Vec<Arc<str>> = (0..SESSIONS)
        .map(|i| Arc::from(format!("{i:08x}-534f-4355-8f70-b3ffc1f9db1a")))
        .collect();
    let creates: Vec<Op> = ids
        .iter()
        .map(|id| {
            Op::Create(Box::new(Created {
                id: id.to_string(),
                token_hash: "h".into(),
                settings: "{}".into(),
                client: "127.0.0.1".into(),
                owner: None,
                agent: "weather".into(),
                at: now() * 1000,
            }))
        })
        .collect();
    b.apply(&creates).unwrap();
    // The frames are made before the clock starts: the host's sessions make them, not the writer.
    let t0 = Instant::now();
    let mut batches: Vec<Vec<Op>> = vec![Vec::new()];
    for (first, row) in reads(&ids, t0) {
        for (id, frames) in ids.iter().zip(row) {
            if batches
                .last()
                .is_some_and(|b| b.len() * PER_READ as usize >= PER_BATCH)
            {
                batches.push(Vec::new());
            }
            if let Some(b) = batches.last_mut() {
                b.push(Op::Events {
                    id: id.clone(),
                    first,
                    frames: super::super::Frames::Short(frames.into()),
                });
            }
        }
    }
    let events = (SESSIONS as u64) * PIECES;
    let cpu = thread_cpu();
    for (i, batch) in batches.iter().enumerate() {
        b.apply(batch).unwrap();
        if i % 10 == 9 {
            b.last_checkpoint = Instant::now() - CHECKPOINT_EVERY;
        }
        b.tick().unwrap();
    }
    let spent = thread_cpu() - cpu;
    let stored: i64 =
        b.db.query_row("SELECT sum(length(frames)) FROM event_chunks", [], |r| {
            r.get(0)
        })
        .unwrap();
    (spent, events, stored as u64)
}

/// CPU time of each of this process's threads named `name`, by thread id (user + system, from
/// /proc): a round's writer is told from the one of the round before, which may still be
/// finishing.
fn named_thread_cpu(name: &str) -> std::collections::HashMap<std::ffi::OsString, Duration> {
    let tick = Duration::from_secs(1) / 100; // USER_HZ
    let mut total = std::collections::HashMap::new();
    for task in std::fs::read_dir("/proc/self/task")
        .into_iter()
        .flatten()
        .flatten()
    {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != name {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let fields: Vec<&str> = stat
            .rsplit(')')
            .next()
            .unwrap_or("")
            .split_whitespace()
            .collect();
        let n = |i: usize| {
            fields
                .get(i)
                .and_then(|f| f.parse::<u32>().ok())
                .unwrap_or(0)
        };
        // utime, stime (fields 14 and 15 of the line)
        total.insert(task.file_name(), tick * (n(11) + n(12)));
    }
    total
}

/// The same stream through the whole store: the writer thread's CPU time.
fn whole(dir: &std::path::Path) -> (Duration, u64) {
    let path = dir.join("w.db");
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let opts = super::super::StoreOptions {
        ttl: Duration::from_secs(3600),
        buffer_bytes: 64 << 20,
        ack_timeout: Duration::from_secs(1),
        events_bytes: 256 * 1024,
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let before = named_thread_cpu("session-store");
    let store = super::super::Store::open_sqlite(&path, &opts).unwrap();
    let ids: Vec<Arc<str>> = (0..SESSIONS)
        .map(|i| Arc::from(format!("{i:08x}-534f-4355-8f70-b3ffc1f9db1a")))
        .collect();
    for id in &ids {
        store.create(super::super::NewSession {
            id: id.to_string(),
            token_hash: "h".into(),
            settings: "{}".into(),
            client: std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST),
            owner: None,
            agent: "weather".into(),
        });
    }
    rt.block_on(store.commit()).unwrap();
    let t0 = Instant::now();
    let cpu = named_thread_cpu("session-store");
    // Events handed over since the last pause: every PER_BATCH, wait for the next interval.
    let mut since_pause = 0;
    let mut next = Instant::now();
    for (first, row) in reads(&ids, t0) {
        for (id, frames) in ids.iter().zip(row) {
            since_pause += frames.split('\n').count();
            store.events(id, first, super::super::Frames::Short(frames.into()));
            if since_pause >= PER_BATCH {
                since_pause -= PER_BATCH;
                next += FLUSH_EVERY;
                std::thread::sleep(next.saturating_duration_since(Instant::now()));
            }
        }
    }
    let sent = SESSIONS * PIECES as usize; // every piece of every session
    rt.block_on(store.commit()).unwrap();
    // This round's writer: the thread that was not there before the store opened.
    let spent = named_thread_cpu("session-store")
        .into_iter()
        .filter(|(tid, _)| !before.contains_key(tid))
        .map(|(tid, t)| t.saturating_sub(cpu.get(&tid).copied().unwrap_or_default()))
        .sum();
    drop(store);
    (spent, sent as u64)
}

/// Runs `round` five times, printing each (with what it adds) and the median and best.
fn five(name: &str, mut round: impl FnMut() -> (Duration, u64, String)) {
    let mut per_event = Vec::new();
    for r in 0..5 {
        let (cpu, events, more) = round();
        let us = cpu.as_secs_f64() * 1e6 / events as f64;
        println!(
            "{name}, round {r}: {events} events{more}, writer CPU {:.0} ms = {us:.2} µs/event",
            cpu.as_secs_f64() * 1e3
        );
        per_event.push(us);
    }
    per_event.sort_by(f64::total_cmp);
    println!(
        "store_writer_cost: {name}, median {:.2} µs/event, best {:.2}",
        per_event[2], per_event[0]
    );
}

#[test]
#[ignore = "a benchmark: run with --release -- --ignored --nocapture"]
fn store_writer_cost() {
    let dir = std::env::temp_dir().join(format!("store-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    five("the backend", || {
        let (cpu, events, stored) = round(&dir);
        (
            cpu,
            events,
            format!(", {:.1} MB stored", stored as f64 / 1e6),
        )
    });
    five("the whole store", || {
        let (cpu, events) = whole(&dir);
        (cpu, events, String::new())
    });
    let _ = std::fs::remove_dir_all(&dir);
}
