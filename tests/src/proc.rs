//! Child processes the tests start (hosts, fake-llm, servers): their output collected line by
//! line, waits for a line, signals.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Sends signal `sig` to process `pid` (one of ours).
pub fn signal(pid: u32, sig: i32) {
    extern "C" {
        #[link_name = "kill"]
        fn libc_kill(pid: i32, sig: i32) -> i32;
    }
    // SAFETY: kill(2) with a pid we spawned and a valid signal number.
    unsafe {
        libc_kill(pid as i32, sig);
    }
}

/// A running child process, killed on drop; its stdout and stderr lines are collected.
pub struct Proc {
    pub child: Child,
    pub lines: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// The thread reading stderr (it ends when the child's stderr closes).
    stderr_reader: Option<std::thread::JoinHandle<()>>,
}

impl Proc {
    pub fn spawn(mut cmd: Command) -> Proc {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn");
        let lines = Arc::new(Mutex::new(Vec::new()));
        let stderr = Arc::new(Mutex::new(Vec::new()));
        let out = child.stdout.take().unwrap();
        let err = child.stderr.take().unwrap();
        let l2 = lines.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(out).lines().map_while(Result::ok) {
                l2.lock().unwrap().push(line);
            }
        });
        let e2 = stderr.clone();
        let stderr_reader = std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(Result::ok) {
                if std::env::var_os("MYAGENT_TEST_VERBOSE").is_some() {
                    eprintln!("[child] {line}");
                }
                e2.lock().unwrap().push(line);
            }
        });
        Proc {
            child,
            lines,
            stderr,
            stderr_reader: Some(stderr_reader),
        }
    }

    /// Waits for a stdout line containing `needle`; returns it.
    pub fn wait_line(&self, needle: &str, timeout: Duration) -> String {
        wait_for(&self.lines, needle, timeout).unwrap_or_else(|| {
            panic!(
                "no line containing {needle:?} within {timeout:?}\nstdout: {:?}\nstderr: {:?}",
                self.lines.lock().unwrap(),
                self.stderr.lock().unwrap()
            )
        })
    }

    /// Waits for a stderr line containing `needle` (a line the host logged may reach this
    /// process a moment after an answer it gave over HTTP); returns it.
    pub fn wait_stderr(&self, needle: &str, timeout: Duration) -> String {
        wait_for(&self.stderr, needle, timeout).unwrap_or_else(|| {
            panic!(
                "no stderr line containing {needle:?} within {timeout:?}\nstderr: {}",
                self.stderr_text()
            )
        })
    }

    /// [`Proc::wait_stderr`] for async tests, for a line containing every one of `needles`:
    /// the runtime keeps running meanwhile (a client's connection task this test still needs,
    /// e.g. to close a dropped stream's socket).
    pub async fn wait_stderr_async(&self, needles: &[&str], timeout: Duration) -> String {
        let deadline = std::time::Instant::now() + timeout;
        loop {
            let found = self
                .stderr
                .lock()
                .unwrap()
                .iter()
                .find(|l| needles.iter().all(|n| l.contains(n)))
                .cloned();
            if let Some(l) = found {
                return l;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no stderr line containing {needles:?} within {timeout:?}\nstderr: {}",
                self.stderr_text()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// Waits for the child to exit and its stderr to be read to the end; returns all of it.
    pub fn exit_stderr(&mut self) -> String {
        let _ = self.child.wait();
        if let Some(r) = self.stderr_reader.take() {
            let _ = r.join();
        }
        self.stderr_text()
    }

    pub fn stderr_text(&self) -> String {
        self.stderr.lock().unwrap().join("\n")
    }

    pub fn stdout_text(&self) -> String {
        self.lines.lock().unwrap().join("\n")
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Asks the child to end (SIGTERM) and waits up to `timeout` for it; true if it ended. For
    /// servers whose children must end with them (nginx's master stops its workers on SIGTERM;
    /// the SIGKILL of the drop would leave them running).
    pub fn terminate(&mut self, timeout: Duration) -> bool {
        signal(self.pid(), 15);
        let deadline = std::time::Instant::now() + timeout;
        loop {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            if std::time::Instant::now() > deadline {
                return false;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// The first of `lines` containing `needle`, waiting up to `timeout` for it.
fn wait_for(lines: &Mutex<Vec<String>>, needle: &str, timeout: Duration) -> Option<String> {
    let deadline = std::time::Instant::now() + timeout;
    loop {
        if let Some(l) = lines.lock().unwrap().iter().find(|l| l.contains(needle)) {
            return Some(l.clone());
        }
        if std::time::Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
