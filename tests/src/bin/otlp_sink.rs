//! `otlp-sink`: the tests' OTLP/HTTP trace receiver as a process, for benchmarks
//! (`scripts/otel-bench.sh`). Prints `listening on 127.0.0.1:PORT`, then every 10 s how many
//! spans it has received, by encoding.

use std::time::Duration;

use myagent_tests::otlp::Otlp;

fn main() {
    let sink = Otlp::start();
    println!("listening on 127.0.0.1:{}", sink.port);
    loop {
        std::thread::sleep(Duration::from_secs(10));
        let spans = sink.spans();
        let json = spans
            .iter()
            .filter(|s| s.encoding == "application/json")
            .count();
        println!(
            "received {} spans ({} protobuf, {json} json)",
            spans.len(),
            spans.len() - json
        );
    }
}
