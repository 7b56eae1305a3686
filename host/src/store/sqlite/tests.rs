//! The SQLite backend on real files: migration, counting, token scrubbing.

use super::*;

/// A fresh directory for a test's store.
fn fresh_dir(name: &str) -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("sqlite-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Writes a version-1 store at `path`: session `old` (no address) with events 1 and 2, and a
/// chunk of a session that is not stored.
fn write_v1_store(path: &std::path::Path) {
    let db = Connection::open(path).unwrap();
    db.execute_batch(
        "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
         CREATE TABLE sessions (id TEXT PRIMARY KEY, token_hash TEXT NOT NULL,
             settings TEXT NOT NULL, memory TEXT NOT NULL DEFAULT '', running_input TEXT,
             created INTEGER NOT NULL, last_active INTEGER NOT NULL);
         CREATE TABLE event_chunks (session TEXT NOT NULL, last_seq INTEGER NOT NULL,
             first_seq INTEGER NOT NULL, frames TEXT NOT NULL);
         CREATE INDEX event_chunks_session ON event_chunks (session, last_seq);
         INSERT INTO meta VALUES ('schema', 1);
         INSERT INTO sessions VALUES ('old', 'h', '', '', NULL, 0, strftime('%s','now'));
         INSERT INTO event_chunks VALUES ('old', 2, 1, 'first' || char(10) || 'second');
         INSERT INTO event_chunks VALUES ('gone', 1, 1, 'orphan');",
    )
    .unwrap();
}

/// A new session `id` made from `client`.
fn created(id: &str, client: &str) -> Op {
    Op::Create(Box::new(Created {
        id: id.into(),
        token_hash: "h".into(),
        settings: String::new(),
        client: client.into(),
        owner: None,
        agent: String::new(),
        at: now() * 1000,
    }))
}

#[test]
fn a_version_1_store_is_migrated_with_its_sessions_events() {
    let dir = fresh_dir("v1-events");
    let path = dir.join("s.db");
    write_v1_store(&path);
    let b = SqliteBackend::open(&path, Duration::from_secs(3600), 256 * 1024).unwrap();
    // Schema 5 keeps a session's events under its integer key: the old session's are read
    // back; events of no stored session are left behind.
    let old = load(&path, "old", Duration::from_secs(3600), None)
        .unwrap()
        .unwrap();
    assert_eq!(
        old.events,
        [(1, "first".to_string()), (2, "second".to_string())]
    );
    let rows: i64 =
        b.db.query_row("SELECT count(*) FROM event_chunks", [], |r| r.get(0))
            .unwrap();
    assert_eq!(rows, 1, "the chunk of no session is dropped");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_migrated_store_counts_sessions_per_address() {
    let dir = fresh_dir("v1-counts");
    let path = dir.join("s.db");
    write_v1_store(&path);
    let mut b = SqliteBackend::open(&path, Duration::from_secs(3600), 256 * 1024).unwrap();
    b.apply(&[
        created("a", "10.0.0.1"),
        created("b", "10.0.0.1"),
        created("c", "10.0.0.2"),
    ])
    .unwrap();
    let conn = std::sync::Mutex::new(None);
    assert_eq!(b.stored_counter().load(Ordering::Relaxed), 4);
    assert_eq!(count_of(&path, &conn, "10.0.0.1").unwrap(), 2);
    assert_eq!(count_of(&path, &conn, "10.0.0.2").unwrap(), 1);
    assert_eq!(
        count_of(&path, &conn, "").unwrap(),
        1,
        "the old session has no address"
    );
    let delete = |id: &str| Op::Delete {
        id: id.into(),
        owner: None,
    };
    b.apply(&[delete("a"), delete("nope")]).unwrap();
    assert_eq!(b.stored_counter().load(Ordering::Relaxed), 3);
    assert_eq!(count_of(&path, &conn, "10.0.0.1").unwrap(), 1);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn resume_tokens_written_by_an_earlier_version_are_scrubbed_on_open() {
    let dir = std::env::temp_dir().join(format!("sqlite-scrub-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("s.db");
    let token = "0123456789abcdef0123456789abcdef";
    {
        let b = SqliteBackend::open(&path, Duration::from_secs(3600), 256 * 1024).unwrap();
        let frames = format!(
            "{{\"event\":\"agent.session_created\",\"resume_token\":\"{token}\",\"agent\":{{}},\"session_id\":\"s\",\"seq\":1}}"
        );
        b.db.execute(
            "INSERT INTO event_chunks (session_key, last_seq, first_seq, frames) VALUES (1, 1, 1, ?1)",
            [frames],
        )
        .unwrap();
    }
    let b = SqliteBackend::open(&path, Duration::from_secs(3600), 256 * 1024).unwrap();
    let frames: String =
        b.db.query_row("SELECT frames FROM event_chunks", [], |r| r.get(0))
            .unwrap();
    assert!(
        frames.contains("agent.session_created") && !frames.contains(token),
        "{frames}"
    );
    drop(b);
    for f in ["s.db", "s.db-wal"] {
        let bytes = std::fs::read(dir.join(f)).unwrap_or_default();
        assert!(
            !bytes.windows(token.len()).any(|w| w == token.as_bytes()),
            "{f} still holds the token"
        );
    }
    let _ = std::fs::remove_dir_all(&dir);
}

/// The ops a session hands the store for `sent` (events 1..): a streamed piece in a block of
/// stored lines with the pieces after it (up to five, a model read's), any other event whole.
fn handed_over(id: &Arc<str>, sent: &[String]) -> Vec<Op> {
    use super::super::line::block;
    use super::super::Frames;
    let is_piece = |seq: u64| sent[seq as usize - 1].contains("partial_answer");
    let mut ops = Vec::new();
    let mut seq = 1u64;
    while seq as usize <= sent.len() {
        let first = seq;
        if !is_piece(seq) {
            let frame = sent[seq as usize - 1].clone();
            ops.push(Op::Events {
                id: id.clone(),
                first,
                frames: Frames::One(frame.into()),
            });
            seq += 1;
            continue;
        }
        while seq as usize <= sent.len() && seq < first + 5 && is_piece(seq) {
            seq += 1;
        }
        let read = &sent[first as usize - 1..seq as usize - 1];
        ops.push(Op::Events {
            id: id.clone(),
            first,
            frames: Frames::Short(block(read, id, first).into()),
        });
    }
    ops
}

#[test]
fn rows_of_stored_line_blocks_and_whole_frames_read_back_as_sent() {
    let dir = fresh_dir("blocks");
    let path = dir.join("s.db");
    let mut b = SqliteBackend::open(&path, Duration::from_secs(3600), 256 * 1024).unwrap();
    let id: Arc<str> = Arc::from("0b5e7d2a-1111-4222-8333-444455556666");
    // Seq 1 and 17 are other events (whole), the rest streamed pieces.
    let sent: Vec<String> = (1..=40u64)
        .map(|seq| match seq {
            1 | 17 => format!("[\"agent.thinking\",{seq}]"),
            _ => super::super::line::piece(
                &id,
                seq,
                &format!("piece {seq} é"),
                &format!("2026-12-03T19:{seq:02}:00.5Z"),
            ),
        })
        .collect();
    let mut ops = vec![created(&id, "")];
    ops.extend(handed_over(&id, &sent));
    // Batches of three ops: a session's row gathers blocks and events of several.
    for batch in ops.chunks(3) {
        b.apply(batch).unwrap();
    }
    let stored = load(&path, &id, Duration::from_secs(3600), None)
        .unwrap()
        .unwrap();
    let want: Vec<(u64, String)> = (1..).zip(sent).collect();
    assert_eq!(stored.events, want);
    let _ = std::fs::remove_dir_all(&dir);
}
