//! A WebSocket client speaking the protocol, for tests and the load generator.

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite::Message;

type WsStream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// A WebSocket client speaking the protocol.
pub struct Client {
    pub ws: WsStream,
    /// Every event received, in order.
    pub seen: Vec<Value>,
}

impl Client {
    pub async fn connect(url: &str) -> Client {
        let (ws, _) = tokio_tungstenite::connect_async(url)
            .await
            .expect("websocket connect");
        Client {
            ws,
            seen: Vec::new(),
        }
    }

    pub async fn connect_req(
        req: tokio_tungstenite::tungstenite::handshake::client::Request,
    ) -> Result<Client, tokio_tungstenite::tungstenite::Error> {
        let (ws, _) = tokio_tungstenite::connect_async(req).await?;
        Ok(Client {
            ws,
            seen: Vec::new(),
        })
    }

    pub async fn send(&mut self, v: Value) {
        self.ws
            .send(Message::text(v.to_string()))
            .await
            .expect("send");
    }

    pub async fn send_raw(&mut self, m: Message) {
        self.ws.send(m).await.expect("send");
    }

    /// Next event (JSON text frame), or None on close / timeout.
    pub async fn recv_timeout(&mut self, t: Duration) -> Option<Value> {
        loop {
            let msg = tokio::time::timeout(t, self.ws.next()).await.ok()??.ok()?;
            match msg {
                Message::Text(text) => {
                    let v: Value =
                        serde_json::from_str(text.as_str()).expect("server sent invalid JSON");
                    self.seen.push(v.clone());
                    return Some(v);
                }
                Message::Close(_) => return None,
                _ => continue,
            }
        }
    }

    pub async fn recv(&mut self) -> Value {
        self.recv_timeout(Duration::from_secs(10))
            .await
            .expect("expected an event before timeout/close")
    }

    /// Receives until an event named `name` (returned); panics on timeout.
    pub async fn until(&mut self, name: &str) -> Value {
        loop {
            let v = self
                .recv_timeout(Duration::from_secs(15))
                .await
                .unwrap_or_else(|| {
                    panic!(
                        "connection closed or timed out waiting for {name}; seen: {:#?}",
                        self.seen
                    )
                });
            if v["event"] == name {
                return v;
            }
        }
    }

    /// Receives until one of `names`.
    pub async fn until_any(&mut self, names: &[&str]) -> Value {
        loop {
            let v = self
                .recv_timeout(Duration::from_secs(15))
                .await
                .unwrap_or_else(|| panic!("closed waiting for {names:?}; seen: {:#?}", self.seen));
            if names.iter().any(|n| v["event"] == *n) {
                return v;
            }
        }
    }

    /// Connects to `url` and resumes session `sid`; returns the client and the answer (the
    /// `agent.session_resumed` header or an `agent.error`).
    pub async fn resume(url: &str, sid: &str, token: &str, last_seq: u64) -> (Client, Value) {
        let mut c = Client::connect(url).await;
        c.send(json!({"event": "user.resume_session", "session_id": sid, "resume_token": token, "last_seq": last_seq, "capabilities": ["tool_approval"]}))
            .await;
        let e = c.until_any(&["agent.session_resumed", "agent.error"]).await;
        (c, e)
    }

    /// Connects, reads `system.connected`, creates a session; returns (client, session_id, token).
    pub async fn with_session(url: &str) -> (Client, String, String) {
        let mut c = Client::connect(url).await;
        let hello = c.recv().await;
        assert_eq!(hello["event"], "system.connected");
        let (sid, token) = c.create_session().await;
        (c, sid, token)
    }

    pub async fn create_session(&mut self) -> (String, String) {
        // This test client answers approvals (a design-document client does not declare it).
        self.send(json!({"event": "user.create_session", "timestamp": 0, "capabilities": ["tool_approval"]}))
            .await;
        let created = self.until("agent.session_created").await;
        (
            created["session_id"].as_str().unwrap().to_owned(),
            created["resume_token"].as_str().unwrap().to_owned(),
        )
    }

    pub async fn ask(&mut self, session_id: &str, content: &str) {
        self.send(json!({"event": "user.message", "session_id": session_id, "content": content, "timestamp": 0})).await;
    }

    /// Skips frames until the server's close frame; returns its code (None if the stream ends
    /// without one or nothing arrives for `idle`).
    pub async fn close_code(&mut self, idle: Duration) -> Option<u16> {
        loop {
            match tokio::time::timeout(idle, self.ws.next()).await {
                Ok(Some(Ok(Message::Close(Some(f))))) => return Some(u16::from(f.code)),
                Ok(Some(Ok(_))) => continue,
                _ => return None,
            }
        }
    }

    /// Events seen so far named `name`.
    pub fn named(&self, name: &str) -> Vec<&Value> {
        named(&self.seen, name)
    }

    /// Every frame up to the turn's `agent.ready`, in order.
    pub async fn turn(&mut self) -> Vec<Value> {
        let mut frames = Vec::new();
        loop {
            let e = self.recv().await;
            let done = e["event"] == "agent.ready";
            frames.push(e);
            if done {
                return frames;
            }
        }
    }
}

/// The events in `events` named `name`.
pub fn named<'a>(events: &'a [Value], name: &str) -> Vec<&'a Value> {
    events.iter().filter(|v| v["event"] == name).collect()
}

/// Fault tests' witness: a session on its own connection whose whole answer must arrive, in
/// order, with no error, whatever happens to other sessions meanwhile.
pub const BYSTANDER_CHUNKS: usize = 150;

/// Starts a session on its own connection streaming `BYSTANDER_CHUNKS` chunks 10 ms apart (1.5 s).
pub async fn bystander(url: &str) -> tokio::task::JoinHandle<()> {
    let (mut c, sid, _) = Client::with_session(url).await;
    c.ask(&sid, &format!("bench:{BYSTANDER_CHUNKS}@10")).await;
    c.until("agent.partial_answer").await;
    tokio::spawn(async move {
        let fin = c.until("agent.final_answer").await;
        let text = fin["content"].as_str().unwrap();
        assert_eq!(
            text.matches('~').count(),
            BYSTANDER_CHUNKS,
            "the bystander's answer is incomplete"
        );
        let streamed: String = c
            .named("agent.partial_answer")
            .iter()
            .map(|e| e["content"].as_str().unwrap())
            .collect();
        assert_eq!(
            streamed, text,
            "the bystander's stream lost or repeated a chunk"
        );
        assert!(
            c.named("agent.error").is_empty(),
            "the bystander saw an error: {:?}",
            c.named("agent.error")
        );
    })
}
