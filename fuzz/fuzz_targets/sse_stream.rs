//! The model stream parser (`llm::sse::StreamParser`): any bytes give an answer or an error,
//! never a panic, and the result does not depend on how the bytes were split into reads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use myagent_host::llm::sse::StreamParser;
use myagent_host::llm::Delta;

fn run(chunks: &[&[u8]]) -> (String, Result<String, String>) {
    let mut p = StreamParser::default();
    let mut deltas = String::new();
    let mut on_delta = |d: Delta<'_>| match d {
        Delta::Text(t) => deltas.push_str(t),
        Delta::Reasoning(t) => {
            deltas.push('~');
            deltas.push_str(t)
        }
        Delta::ToolCalls => deltas.push('#'),
        Delta::Pause => {}
    };
    for c in chunks {
        match p.feed(c, &mut on_delta) {
            Ok(true) => break,
            Ok(false) => {}
            Err(e) => return (deltas, Err(e.to_string())),
        }
    }
    let r = p.finish().map(|r| format!("{r:?}")).map_err(|e| e.to_string());
    (deltas, r)
}

fuzz_target!(|data: &[u8]| {
    if data.is_empty() {
        return;
    }
    let split = data[0] as usize % data.len();
    let body = &data[1..];
    let split = split.min(body.len());
    let whole = run(&[body]);
    let parts = run(&[&body[..split], &body[split..]]);
    assert_eq!(whole, parts, "result depends on the read boundary at {split}");
});
