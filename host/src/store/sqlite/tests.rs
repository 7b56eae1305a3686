//! The SQLite backend on real files: migration, counting, token scrubbing.

use super::*;

#[test]
fn a_version_1_store_is_migrated_and_counts_sessions_per_address() {
    let dir = std::env::temp_dir().join(format!("sqlite-v1-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("s.db");
    {
        let db = Connection::open(&path).unwrap();
        db.execute_batch(
            "CREATE TABLE meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL);
             CREATE TABLE sessions (id TEXT PRIMARY KEY, token_hash TEXT NOT NULL,
                 settings TEXT NOT NULL, memory TEXT NOT NULL DEFAULT '', running_input TEXT,
                 created INTEGER NOT NULL, last_active INTEGER NOT NULL);
             CREATE TABLE event_chunks (session TEXT NOT NULL, last_seq INTEGER NOT NULL,
                 first_seq INTEGER NOT NULL, frames TEXT NOT NULL);
             CREATE INDEX event_chunks_session ON event_chunks (session, last_seq);
             INSERT INTO meta VALUES ('schema', 1);
             INSERT INTO sessions VALUES ('old', 'h', '{}', '', NULL, 0, strftime('%s','now'));
             INSERT INTO event_chunks VALUES ('old', 2, 1, '{\"a\":1}' || char(10) || '{\"b\":2}');
             INSERT INTO event_chunks VALUES ('gone', 1, 1, '{\"c\":3}');",
        )
        .unwrap();
    }
    let mut b = SqliteBackend::open(&path, Duration::from_secs(3600), 256 * 1024).unwrap();
    // Schema 5 keeps a session's events under its integer key: the old session's are read
    // back; events of no stored session are left behind.
    let old = load(&path, "old", Duration::from_secs(3600), None)
        .unwrap()
        .unwrap();
    assert_eq!(
        old.events,
        [(1, "{\"a\":1}".to_string()), (2, "{\"b\":2}".to_string())]
    );
    let rows: i64 =
        b.db.query_row("SELECT count(*) FROM event_chunks", [], |r| r.get(0))
            .unwrap();
    assert_eq!(rows, 1, "the chunk of no session is dropped");
    let create = |id: &str, client: &str| {
        Op::Create(Box::new(Created {
            id: id.into(),
            token_hash: "h".into(),
            settings: "{}".into(),
            client: client.into(),
            owner: None,
            agent: String::new(),
            at: now() * 1000,
        }))
    };
    b.apply(&[
        create("a", "10.0.0.1"),
        create("b", "10.0.0.1"),
        create("c", "10.0.0.2"),
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
    b.apply(&[
        Op::Delete {
            id: "a".into(),
            owner: None,
        },
        Op::Delete {
            id: "nope".into(),
            owner: None,
        },
    ])
    .unwrap();
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

#[test]
fn rows_of_stored_line_blocks_and_whole_frames_read_back_as_sent() {
    use super::super::line::{piece, Encoder};
    use super::super::Frames;
    let dir = std::env::temp_dir().join(format!("sqlite-blocks-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("s.db");
    let mut b = SqliteBackend::open(&path, Duration::from_secs(3600), 256 * 1024).unwrap();
    let id: Arc<str> = Arc::from("0b5e7d2a-1111-4222-8333-444455556666");
    let create = Op::Create(Box::new(Created {
        id: id.to_string(),
        token_hash: "h".into(),
        settings: "{}".into(),
        client: String::new(),
        owner: None,
        agent: String::new(),
        at: now() * 1000,
    }));
    let sent: Vec<String> = (1..=40)
        .map(|seq| match seq {
            1 | 17 => format!("{{\"event\":\"agent.thinking\",\"seq\":{seq}}}"),
            _ => piece(
                &id,
                seq,
                &format!("piece {seq} é"),
                &format!("2026-12-03T19:{seq:02}:00.5Z"),
            ),
        })
        .collect();
    // Seq 1 and 17 go whole (lone events), the pieces between in blocks of up to five (model
    // reads); batches of three ops, so a session's row gathers blocks and events of several.
    let mut ops = vec![create];
    let mut seq = 1u64;
    while seq <= 40 {
        let frame = &sent[seq as usize - 1];
        if !frame.contains("partial_answer") {
            ops.push(Op::Events {
                id: id.clone(),
                first: seq,
                frames: Frames::Lines(frame.clone()),
            });
            seq += 1;
            continue;
        }
        let mut encoder = Encoder::default();
        let mut block = String::new();
        let first = seq;
        while seq <= 40 && seq < first + 5 && sent[seq as usize - 1].contains("partial_answer") {
            if seq > first {
                block.push('\n');
            }
            encoder.push(&mut block, &sent[seq as usize - 1], &id, seq);
            seq += 1;
        }
        ops.push(Op::Events {
            id: id.clone(),
            first,
            frames: Frames::Short(block),
        });
    }
    for batch in ops.chunks(3) {
        b.apply(batch).unwrap();
    }
    let stored = load(&path, &id, Duration::from_secs(3600), None)
        .unwrap()
        .unwrap();
    let got: Vec<(u64, String)> = stored.events;
    let want: Vec<(u64, String)> = (1..).zip(sent).collect();
    assert_eq!(got, want);
    let _ = std::fs::remove_dir_all(&dir);
}
