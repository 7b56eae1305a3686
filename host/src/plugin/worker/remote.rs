//! Agent instances living in a worker, and one request's life: its reply, its timeout, and —
//! given up while running — the cancel and the hang watchdog.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use super::frame::{InstanceId, Reply, Request};
use super::process::{Conn, NotSent};
use super::{lock, Worker, HANG_GRACE};
use crate::metrics::Metrics;
use crate::plugin::error::{HostError, HostErrorKind};

/// An agent instance living in a worker; re-created on a restarted process when next used.
pub struct RemoteInstance {
    worker: Arc<Worker>,
    /// (process epoch, instance id in that process).
    bound: tokio::sync::Mutex<Option<(u64, InstanceId)>>,
    last: Mutex<Option<(Weak<Conn>, InstanceId)>>,
}

impl RemoteInstance {
    /// A new instance from the build's factory. `Ok(Err(message))`: the factory said no.
    pub async fn create(
        worker: &Arc<Worker>,
        timeout: Duration,
    ) -> Result<Result<RemoteInstance, String>, HostError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let fail = |kind| HostError {
            plugin: worker.tag.clone(),
            kind,
        };
        let conn = worker.conn(deadline).await.map_err(fail)?;
        match instantiate(&conn, deadline, timeout).await.map_err(fail)? {
            Ok(id) => Ok(Ok(RemoteInstance {
                worker: worker.clone(),
                bound: tokio::sync::Mutex::new(Some((conn.epoch, id))),
                last: Mutex::new(Some((Arc::downgrade(&conn), id))),
            })),
            Err(e) => Ok(Err(e)),
        }
    }

    /// The process and this instance's id in it, re-creating the instance on a new process.
    async fn bind(
        &self,
        deadline: tokio::time::Instant,
        timeout: Duration,
    ) -> Result<(Arc<Conn>, u64), HostErrorKind> {
        let conn = self.worker.conn(deadline).await?;
        let mut bound = self.bound.lock().await;
        if let Some((epoch, id)) = *bound {
            if epoch == conn.epoch {
                return Ok((conn, id));
            }
        }
        match instantiate(&conn, deadline, timeout).await? {
            Ok(id) => {
                *bound = Some((conn.epoch, id));
                *lock(&self.last) = Some((Arc::downgrade(&conn), id));
                Ok((conn, id))
            }
            Err(e) => Err(HostErrorKind::Crashed(format!(
                "the plugin's factory failed on its restarted worker: {e}"
            ))),
        }
    }

    /// Runs tool `name` with `payload` (what crosses the ABI). `cancel`: the event that asks a
    /// cooperative tool to stop, sent when the call is given up.
    pub async fn call_tool(
        &self,
        name: &str,
        payload: String,
        timeout: Duration,
        metrics: &Arc<Metrics>,
        cancel: Option<String>,
    ) -> Result<String, HostErrorKind> {
        let tool = name.to_owned();
        self.request(timeout, Some(name), Some(metrics), cancel, |id, inst| {
            Request::Call {
                id,
                inst,
                tool,
                args: payload,
            }
        })
        .await?
        .map_err(HostErrorKind::Crashed)
    }

    /// A custom event for the plugin's hook: `Ok(Ok(json))` the events it returned.
    pub async fn handle_event(
        &self,
        session_id: &str,
        event_json: String,
        timeout: Duration,
    ) -> Result<Result<String, String>, HostErrorKind> {
        let session = session_id.to_owned();
        self.request(timeout, None, None, None, |id, inst| Request::Event {
            id,
            inst,
            session,
            event: event_json,
        })
        .await
    }

    /// One request to this instance (`make` gets the call id and the instance id) on its
    /// worker, within `timeout`: the reply's text, or the plugin's error.
    async fn request(
        &self,
        timeout: Duration,
        tool: Option<&str>,
        metrics: Option<&Arc<Metrics>>,
        cancel: Option<String>,
        make: impl FnOnce(u64, u64) -> Request,
    ) -> Result<Result<String, String>, HostErrorKind> {
        let deadline = tokio::time::Instant::now() + timeout;
        let (conn, inst) = self.bind(deadline, timeout).await?;
        let reply = exchange(
            &conn,
            |id| make(id, inst),
            tool,
            deadline,
            timeout,
            metrics,
            cancel.map(|event| (inst, event)),
        )
        .await?;
        Ok(reply.into_json())
    }
}

impl Drop for RemoteInstance {
    fn drop(&mut self) {
        let Some((conn, inst)) = lock(&self.last).take() else {
            return;
        };
        let Some(conn) = conn.upgrade().filter(|c| c.is_alive()) else {
            return;
        };
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move { conn.send_only(Request::Drop { inst }).await });
        }
    }
}

async fn instantiate(
    conn: &Arc<Conn>,
    deadline: tokio::time::Instant,
    timeout: Duration,
) -> Result<Result<InstanceId, String>, HostErrorKind> {
    let reply = exchange(
        conn,
        |id| Request::Instantiate { id },
        None,
        deadline,
        timeout,
        None,
        None,
    )
    .await?;
    Ok(reply.into_instance())
}

/// One request and its reply, at most until `deadline`. A request given up (timeout, or this
/// future dropped because the run was cancelled) is left to finish; if it has not by
/// `deadline` + [`HANG_GRACE`], the worker is stopped as hung.
async fn exchange(
    conn: &Arc<Conn>,
    make: impl FnOnce(u64) -> Request,
    tool: Option<&str>,
    deadline: tokio::time::Instant,
    timeout: Duration,
    metrics: Option<&Arc<Metrics>>,
    cancel: Option<(InstanceId, String)>,
) -> Result<Reply, HostErrorKind> {
    let (id, rx) = conn
        .request(make, tool, deadline)
        .await
        .map_err(|e| match e {
            NotSent::Gone(why) => HostErrorKind::Crashed(why),
            NotSent::Busy(why) => HostErrorKind::Busy(why),
            NotSent::TimedOut => HostErrorKind::TimedOut(timeout),
        })?;
    let mut guard = GiveUp {
        conn: conn.clone(),
        id,
        done: false,
        deadline,
        timeout,
        what: match tool {
            Some(t) => format!("tool `{t}`"),
            None => "a call into the plugin".into(),
        },
        metrics: metrics.cloned(),
        cancel,
    };
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(Ok(Ok(reply))) => {
            guard.done = true;
            Ok(reply)
        }
        Ok(Ok(Err(crash))) => {
            guard.done = true;
            Err(HostErrorKind::WorkerDied(crash))
        }
        Ok(Err(_)) => {
            guard.done = true;
            Err(HostErrorKind::WorkerDied(
                "the plugin worker went away".into(),
            ))
        }
        Err(_) => Err(HostErrorKind::TimedOut(timeout)),
    }
}

/// Dropped before its reply came: the call was given up.
struct GiveUp {
    conn: Arc<Conn>,
    id: u64,
    done: bool,
    deadline: tokio::time::Instant,
    timeout: Duration,
    what: String,
    metrics: Option<Arc<Metrics>>,
    cancel: Option<(InstanceId, String)>,
}

impl Drop for GiveUp {
    fn drop(&mut self) {
        if self.done {
            return;
        }
        {
            let mut pending = lock(&self.conn.pending);
            let Some(p) = pending.get_mut(&self.id) else {
                return; // answered meanwhile
            };
            if let Some(m) = &self.metrics {
                m.tools_abandoned.inc();
                m.tools_abandoned_total.inc();
                p.abandoned = Some(m.clone());
            }
        }
        tracing::info!(call = %self.what, "call given up while running; asked to stop");
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return;
        };
        let (conn, id, at) = (
            self.conn.clone(),
            self.id,
            self.deadline.max(tokio::time::Instant::now()) + HANG_GRACE,
        );
        let cancel = self.cancel.take();
        let why = format!(
            "{} did not return within its {} ms timeout (+{} s grace), so its worker was stopped",
            self.what,
            self.timeout.as_millis(),
            HANG_GRACE.as_secs()
        );
        rt.spawn(async move {
            if let Some((inst, event)) = cancel {
                conn.send_only(Request::Cancel { inst, event }).await;
            }
            tokio::time::sleep_until(at).await;
            if lock(&conn.pending).contains_key(&id) {
                conn.kill(Some(why));
            }
        });
    }
}
