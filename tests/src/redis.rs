//! A Redis server of the tests' own (the store's shared backend, as production runs it): a
//! child `redis-server` on a free loopback port, killed, restarted empty or paused at will.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

/// A `redis-server` of our own on a free loopback port, without persistence; killed on drop.
/// `Redis::start` is None (and says why) where redis-server is not installed, unless
/// `MYAGENT_REQUIRE_REDIS=1` (CI) makes that a failure.
pub struct Redis {
    child: Child,
    port: u16,
}

impl Drop for Redis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Redis {
    /// None (with a message) where redis-server is not installed, unless CI requires it.
    pub fn start() -> Option<Redis> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        match serve_on(port) {
            Ok(child) => Some(Redis { child, port }),
            Err(e) => {
                if std::env::var("MYAGENT_REQUIRE_REDIS").as_deref() == Ok("1") {
                    panic!("redis-server is required (MYAGENT_REQUIRE_REDIS=1): {e}");
                }
                eprintln!("SKIPPED: redis-server not found ({e}); install it (apt-get install redis-server) to run the multi-host tests");
                None
            }
        }
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// Kills the server (as a crash would); [`Redis::restart`] brings an empty one back.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts a new, empty server on the same port (a Redis without persistence after a
    /// restart).
    pub fn restart(&mut self) {
        self.kill();
        self.child = serve_on(self.port).expect("redis-server");
    }

    /// SIGSTOP (`true`: a stalled server, connections accepted, nothing answered) or SIGCONT.
    pub fn pause(&self, stopped: bool) {
        crate::signal(self.child.id(), if stopped { 19 } else { 18 });
    }
}

/// A `redis-server` without persistence on `port`, once it accepts connections.
fn serve_on(port: u16) -> std::io::Result<Child> {
    let child = Command::new("redis-server")
        .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
        .args(["--save", "", "--appendonly", "no"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    let t0 = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "redis-server did not start"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    Ok(child)
}
