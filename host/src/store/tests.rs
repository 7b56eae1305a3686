use super::*;

#[test]
fn passwords_in_store_urls_are_not_shown() {
    assert_eq!(
        redact_url("redis://:s3cret@db:6379/2"),
        "redis://:***@db:6379/2"
    );
    assert_eq!(
        redact_url("redis://app:s3cret@db:6379"),
        "redis://app:***@db:6379"
    );
    assert_eq!(redact_url("redis://db:6379"), "redis://db:6379");
}

const LOCAL: std::net::IpAddr = std::net::IpAddr::V4(std::net::Ipv4Addr::LOCALHOST);

fn opts() -> StoreOptions {
    StoreOptions {
        ttl: Duration::from_secs(3600),
        buffer_bytes: 64 << 20,
        ack_timeout: Duration::from_secs(1),
        events_bytes: 256 * 1024,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_session_round_trips_and_its_events_are_bounded() {
    let dir = std::env::temp_dir().join(format!("store-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let path = dir.join("sessions.db");
    let d = Store::open_sqlite(&path, &opts()).unwrap();
    d.create(new("s1", "tok", None));
    let sid: Arc<str> = Arc::from("s1");
    for seq in 1..=EVENTS_KEPT + 10 {
        d.events(&sid, seq, Frames::One(format!("{{\"seq\":{seq}}}").into()));
        if seq % 1000 == 0 {
            d.commit().await.unwrap(); // several chunks
        }
    }
    d.turn_start("s1", None, "\"hi\"".into(), None);
    d.commit().await.unwrap();
    let s = d.load("s1", None).await.unwrap().unwrap();
    assert_eq!(s.token_hash, hash_token("tok"));
    // Whole chunks are kept: at least the newest EVENTS_KEPT, in order, each with its seq.
    let n = s.events.len() as u64;
    assert!((EVENTS_KEPT..=EVENTS_KEPT + 1000).contains(&n), "{n}");
    assert_eq!(s.events.last().unwrap().0, EVENTS_KEPT + 10);
    for (seq, frame) in &s.events {
        assert_eq!(frame, &format!("{{\"seq\":{seq}}}"));
    }
    assert_eq!(s.running_input.as_deref(), Some("\"hi\""));
    d.delete("s1", None);
    assert!(d.flush_blocking(Duration::from_secs(5)));
    assert!(d.load("s1", None).await.unwrap().is_none());
    // Not a store: a clear error.
    std::fs::write(
        dir.join("junk.db"),
        b"this is not a database, just some text...",
    )
    .unwrap();
    let e = Store::open_sqlite(&dir.join("junk.db"), &opts())
        .err()
        .unwrap();
    assert!(matches!(e, StoreError::Corrupt { .. }), "{e}");
    assert!(e.to_string().contains("is not usable"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_does_not_wait_for_the_tick() {
    let dir = std::env::temp_dir().join(format!("store-ack-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = Store::open_sqlite(&dir.join("s.db"), &opts()).unwrap();
    // 20 acknowledgements one after the other: waiting for the writer's tick each time
    // would take 20 intervals (2 s); committing at once takes a few ms each.
    let t = std::time::Instant::now();
    for i in 0..20 {
        d.create(new(&format!("s{i}"), "h", None));
        d.commit().await.unwrap();
    }
    assert!(t.elapsed() < FLUSH_EVERY * 15, "{:?}", t.elapsed());
    assert!(d.load("s19", None).await.unwrap().is_some());
    let _ = std::fs::remove_dir_all(&dir);
}

fn new(id: &str, token: &str, owner: Option<&str>) -> NewSession {
    NewSession {
        id: id.into(),
        token_hash: hash_token(token),
        settings: "{}".into(),
        client: LOCAL,
        owner: owner.map(str::to_owned),
        agent: "weather-assistant".into(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_principal_lists_and_reads_only_its_own_sessions() {
    let dir = std::env::temp_dir().join(format!("store-list-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let d = Store::open_sqlite(&dir.join("s.db"), &opts()).unwrap();
    for i in 0..5 {
        d.create(new(&format!("a{i}"), "t", Some("alice")));
    }
    d.create(new("b0", "t", Some("bob")));
    d.create(new("anon", "t", None));
    d.turn_start(
        "a0",
        Some("alice"),
        "\"hi\"".into(),
        Some("What is the weather?".into()),
    );
    d.turn_start(
        "a0",
        Some("alice"),
        "\"again\"".into(),
        Some("ignored: set once".into()),
    );
    d.turn_end(
        "a0",
        Some("alice"),
        ("".into(), r#"{"input_tokens":7}"#.into()),
        "weather-assistant",
    );
    d.commit().await.unwrap();
    let first = d.list("alice", None, 3).await.unwrap();
    assert_eq!(first.len(), 3);
    let a0 = d.list("alice", None, 10).await.unwrap();
    assert_eq!(
        a0.len(),
        5,
        "bob's and the anonymous session are not alice's"
    );
    let entry = a0.iter().find(|l| l.id == "a0").unwrap();
    assert_eq!(entry.listing.title, "What is the weather?");
    assert_eq!((entry.listing.turns, entry.running), (1, false));
    assert_eq!(entry.listing.agent, "weather-assistant");
    assert!(entry.usage.contains("\"input_tokens\":7"));
    // Pages follow the cursor without repeating or skipping.
    let rest = d
        .list("alice", Some(Cursor::after(first.last().unwrap())), 10)
        .await
        .unwrap();
    let mut ids: Vec<String> = first.iter().chain(&rest).map(|l| l.id.clone()).collect();
    assert_eq!(ids.len(), 5);
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), 5);
    // Reading a session: the owner without its token; nobody else, token or not.
    let owner = |who: Option<&str>, token: Option<&str>| Access {
        token_hash: token.map(hash_token),
        owner: who.map(str::to_owned),
    };
    let s = d
        .load("a0", Some(owner(Some("alice"), None)))
        .await
        .unwrap();
    assert_eq!(s.unwrap().owner.as_deref(), Some("alice"));
    assert!(d
        .load("a0", Some(owner(Some("bob"), Some("t"))))
        .await
        .unwrap()
        .is_none());
    assert!(d
        .load("a0", Some(owner(None, Some("t"))))
        .await
        .unwrap()
        .is_none());
    assert!(d
        .load("anon", Some(owner(None, Some("t"))))
        .await
        .unwrap()
        .is_some());
    assert!(d
        .load("anon", Some(owner(Some("alice"), None)))
        .await
        .unwrap()
        .is_none());
    d.delete("a0", Some("alice"));
    d.commit().await.unwrap();
    assert_eq!(d.list("alice", None, 10).await.unwrap().len(), 4);
    let _ = std::fs::remove_dir_all(&dir);
}
