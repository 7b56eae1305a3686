//! The hand reader of the common token line (`wire::plain_text`) against the full reader: a line
//! read by hand must mean exactly what it means to `Chunk`.

use super::super::*;

/// Token lines in the key orders and with the extra fields providers send (written for this
/// test in the shapes of OpenAI, Mistral, Ollama, vLLM, Qwen; and whitespace between tokens).
const PLAIN: &[&str] = &[
    r#"{"id":"chatcmpl-1","object":"chat.completion.chunk","created":1700000000,"model":"gpt-4o","system_fingerprint":"fp_1","choices":[{"index":0,"delta":{"content":" sunny"},"logprobs":null,"finish_reason":null}]}"#,
    r#"{"id":"5319","object":"chat.completion.chunk","created":1700000001,"model":"small","choices":[{"index":0,"delta":{"content":", "},"finish_reason":null,"logprobs":null}]}"#,
    r#"{"id":"chatcmpl-2","object":"chat.completion.chunk","created":1,"model":"q:7b","system_fingerprint":"fp_o","choices":[{"index":0,"delta":{"role":"assistant","content":" is"},"finish_reason":null}]}"#,
    r#"{"id":"chatcmpl-3","object":"chat.completion.chunk","created":2,"model":"m/L","choices":[{"index":0,"delta":{"content":","},"logprobs":null,"finish_reason":null,"token_ids":null}]}"#,
    r#"{"choices":[{"delta":{"content":" The Fest"},"finish_reason":null,"index":0,"logprobs":null}],"object":"chat.completion.chunk","usage":null,"created":3,"system_fingerprint":null,"model":"q","id":"c-4"}"#,
    r#"{"id":"chatcmpl-fake","object":"chat.completion.chunk","created":0,"model":"fake","choices":[{"index":0,"delta":{"content":"tok3 "},"finish_reason":null}],"usage":null}"#,
    r#" { "choices" : [ { "delta" : { "content" : "Zürich ☀" } , "index" : 0 } ] , "created" : -1.5e+3 } "#,
    r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":""}}],"x":true,"y":false}"#,
    r#"{"choices":[{"index":0,"delta":{"role":"assistant","content":null,"tool_calls":null}}],"error":null}"#,
    r#"{"choices":[{"delta":{"content":"a","reasoning":null,"reasoning_content":null,"reasoning_details":null}}],"x_groq":null}"#,
];

/// Lines the hand reader must leave to the full reader (each means something more, or is bad).
const OTHER: &[&str] = &[
    r#"{"choices":[{"index":0,"delta":{"content":"line\nbreak"},"finish_reason":null}]}"#,
    r#"{"choices":[{"index":0,"delta":{"reasoning_content":" the"}}]}"#,
    r#"{"choices":[{"index":0,"delta":{"reasoning":" user","channel":"analysis"}}]}"#,
    r#"{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],"usage":null}"#,
    r#"{"choices":[{"index":0,"delta":{"content":"lo"},"finish_reason":"stop"}]}"#,
    r#"{"choices":[],"usage":{"prompt_tokens":10,"completion_tokens":5}}"#,
    r#"{"choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"a","function":{"name":"f","arguments":""}}]}}]}"#,
    r#"{"error":{"code":400,"message":"Token limit reached"},"choices":[]}"#,
    r#"{"choices":[{"index":0,"delta":{"content":"a"}},{"index":1,"delta":{"content":"b"}}]}"#,
    r#"{"choices":[{"index":1,"delta":{"content":"b"}}]}"#,
    r#"{"choices":[{"index":0,"delta":{"content":"a","content":"b"}}]}"#,
    r#"{"choices":[{"index":0,"message":{"content":"whole"}}]}"#,
    r#"{"choices":[{"index":0,"delta":{"content":[{"type":"text","text":"parts"}]}}]}"#,
    r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"x_groq":{"usage":{"prompt_tokens":1}}}"#,
    r#"{"choices":[{"index":0,"delta":{"content":"a"}}],"prompt_filter_results":[]}"#,
    r#"{"object":"chat.completion.chunk"}"#,
    r#"{"choices":[{"index":0,"delta":{"content":"a"}}]} trailing"#,
];

/// What reading one line does: the deltas it reports, and the answer and error after it.
fn effect(data: &str, by_hand: bool) -> String {
    let mut p = StreamParser::default();
    let mut deltas = Vec::new();
    let mut on = |d: Delta<'_>| deltas.push(format!("{d:?}"));
    let r = if by_hand {
        p.line_done(format!("data: {data}").as_bytes(), &mut on)
    } else {
        p.full(data.trim(), &mut on) // as `line_done` hands it over
    };
    let end = r.and_then(|_| p.finish_with(&mut on));
    format!("{deltas:?} {end:?}")
}

fn same(data: &str) -> bool {
    let (hand, full) = (effect(data, true), effect(data, false));
    assert_eq!(hand, full, "the two readers differ on {data}");
    plain_text(data.trim()).is_some()
}

#[test]
fn provider_token_lines_are_read_by_hand_and_mean_what_the_full_reader_reads() {
    for line in PLAIN {
        assert!(same(line), "not read by hand: {line}");
    }
    assert_eq!(plain_text(PLAIN[0]), Some(Some(" sunny")));
    assert_eq!(plain_text(PLAIN[6].trim()), Some(Some("Zürich ☀")));
    assert_eq!(plain_text(PLAIN[8]), Some(None));
    for line in OTHER {
        assert!(!same(line), "read by hand, but it means more: {line}");
    }
}

#[test]
fn every_one_byte_change_of_a_line_means_the_same_to_both_readers() {
    let (mut lines, mut by_hand) = (0, 0);
    for line in PLAIN.iter().chain(OTHER) {
        for i in 0..line.len() {
            if !line.is_char_boundary(i) {
                continue;
            }
            let rest = &line[i..];
            let next = rest.chars().next().map_or(0, char::len_utf8);
            let mut variants = vec![format!("{}{}", &line[..i], &rest[next..])];
            for c in [
                "\"", "\\", "{", "}", "[", "]", ",", ":", " ", "0", "1", "n", "x", "-", "e", ".",
                "\u{1}",
            ] {
                variants.push(format!("{}{c}{}", &line[..i], &rest[next..]));
                variants.push(format!("{}{c}{}", &line[..i], rest));
            }
            for v in variants {
                lines += 1;
                by_hand += usize::from(same(&v));
            }
        }
    }
    // Not vacuous: many changed lines still take the hand path (and agree), many do not.
    assert!(
        by_hand > 1000 && by_hand < lines / 2,
        "{by_hand} of {lines} read by hand"
    );
}
