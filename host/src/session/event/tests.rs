use super::*;
use bytes::BytesMut;

#[test]
fn the_name_of_an_encoded_frame_is_read_back() {
    let frame = ServerEvent::Ready.frame_in_session("s", 7);
    assert_eq!(
        ServerEvent::name_of_frame(&frame).as_deref(),
        Some(ServerEvent::Ready.name())
    );
    let other = ServerEvent::Interrupted { reason: None }.frame_in_session("s", 8);
    assert_eq!(
        ServerEvent::name_of_frame(&other).as_deref(),
        Some("agent.interrupted")
    );
    assert_eq!(ServerEvent::name_of_frame("not json"), None);
}

#[test]
fn every_event_and_error_code_is_documented_and_named_as_it_serializes() {
    let doc = include_str!("../../../../docs/protocol.md");
    // Each event has a row in the "Server → client" table.
    let table = doc
        .split("## Server → client")
        .nth(1)
        .unwrap()
        .split("\n## ")
        .next()
        .unwrap();
    for name in ServerEvent::NAMES {
        let row = format!("\n| `{name}` |");
        assert!(
            table.contains(&row),
            "docs/protocol.md's server table has no row for `{name}`"
        );
    }
    for code in ErrorCode::ALL {
        assert!(
            doc.contains(&format!("`{code}`")),
            "docs/protocol.md does not document error code `{code}`"
        );
        let json = serde_json::to_value(code).unwrap();
        assert_eq!(json, code.as_str());
    }
    let samples = [
        ServerEvent::SessionClosed,
        ServerEvent::Ready,
        ServerEvent::error(ErrorCode::RunFailed, "x"),
        ServerEvent::AuthError {
            error: "Invalid token".into(),
        },
    ];
    for e in samples {
        let v: Value = serde_json::from_str(e.frame().as_str()).unwrap();
        assert_eq!(v["event"], e.name());
        let ts = v["timestamp"].as_str().unwrap();
        assert!(
            ts.len() == 24 && ts.ends_with('Z') && ts.as_bytes()[10] == b'T',
            "{ts}"
        );
    }
    let v: Value =
        serde_json::from_str(ServerEvent::Ready.frame_in_session("s1", 7).as_str()).unwrap();
    assert_eq!(
        (v["session_id"].as_str(), v["seq"].as_u64()),
        (Some("s1"), Some(7))
    );
    let v: Value = serde_json::from_str(
        ServerEvent::error(ErrorCode::InvalidJson, "bad")
            .frame_about(None)
            .as_str(),
    )
    .unwrap();
    assert!(v["session_id"].is_null() && v.as_object().unwrap().contains_key("session_id"));
    assert_eq!(v["code"], "invalid_json");
}

/// The hand-appended context fields give exactly the bytes a flattened wrapper struct did.
#[test]
fn frames_are_byte_identical_to_a_flattened_wrapper() {
    #[derive(Serialize)]
    struct Frame<'a> {
        #[serde(flatten)]
        event: &'a ServerEvent,
        #[serde(skip_serializing_if = "Option::is_none")]
        session_id: Option<Option<&'a str>>,
        #[serde(skip_serializing_if = "Option::is_none")]
        seq: Option<u64>,
        timestamp: &'a str,
    }
    let events = [
        ServerEvent::Ready,
        ServerEvent::PartialAnswer {
            content: "a \"quoted\" \\ piece\n".into(),
            metadata: AnswerMeta {
                step: 2,
                reset: false,
            },
        },
        ServerEvent::error(ErrorCode::InvalidJson, "bad"),
        ServerEvent::SessionCreated {
            resume_token: Some("t".into()),
            agent: AgentInfo {
                name: "n".into(),
                version: "1".into(),
                generation: None,
                tools: Some(vec!["x".into()]),
            },
            agent_config: None,
        },
    ];
    for e in &events {
        for (sid, seq) in [
            (None, None),
            (Some(None), None),
            (Some(Some("s-1")), Some(7)),
        ] {
            let ours = e.encode(sid, seq);
            let v: Value = serde_json::from_str(ours.as_str()).unwrap();
            let ts = v["timestamp"].as_str().unwrap().to_owned();
            let theirs = serde_json::to_string(&Frame {
                event: e,
                session_id: sid,
                seq,
                timestamp: &ts,
            })
            .unwrap();
            assert_eq!(ours.as_str(), theirs);
        }
    }
}

/// Frames encoded in a session's arena are the bytes `frame_in_session` gives, and follow one
/// another in one block (one allocation for many frames) until it runs short; a frame larger
/// than a block is whole.
#[test]
fn frames_in_an_arena_share_its_block_and_are_the_same_bytes() {
    let piece = |content: &str| ServerEvent::PartialAnswer {
        content: content.into(),
        metadata: AnswerMeta {
            step: 1,
            reset: false,
        },
    };
    let without_time = |f: &Utf8Bytes| {
        let mut v: Value = serde_json::from_str(f.as_str()).unwrap();
        v.as_object_mut().unwrap().remove("timestamp").unwrap();
        v
    };
    let mut arena = BytesMut::new();
    let frames: Vec<Utf8Bytes> = (1..=5u64)
        .map(|seq| piece(&format!("piece {seq} \"é\"")).frame_in_arena(&mut arena, "s-1", seq))
        .collect();
    for (i, f) in frames.iter().enumerate() {
        let seq = i as u64 + 1;
        let plain = piece(&format!("piece {seq} \"é\"")).frame_in_session("s-1", seq);
        assert_eq!(without_time(f), without_time(&plain));
        assert_eq!(f.len(), plain.len());
    }
    for pair in frames.windows(2) {
        let end = pair[0].as_str().as_ptr() as usize + pair[0].len();
        assert_eq!(
            end,
            pair[1].as_str().as_ptr() as usize,
            "frames share one block"
        );
    }
    let big = piece(&"x".repeat(3 * ARENA_BLOCK)).frame_in_arena(&mut arena, "s-1", 6);
    assert_eq!(
        without_time(&big)["content"].as_str().unwrap().len(),
        3 * ARENA_BLOCK
    );
    let after = piece("after").frame_in_arena(&mut arena, "s-1", 7);
    assert_eq!(without_time(&after)["seq"], 7);
}
