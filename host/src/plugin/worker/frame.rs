//! The worker protocol: length-prefixed JSON frames over a Unix socket pair — a little-endian
//! `u32` length, then that many bytes of one JSON object. The first frame from the worker is
//! its [`Hello`]: the build's manifest, or the typed reason it did not load. Then the host sends
//! [`Request`]s and the worker answers each that has an `id` with a [`Reply`] carrying that id;
//! replies come in any order (calls run concurrently). `drop` and `cancel` have no reply.
//!
//! Strings the ABI already carries as JSON (arguments, results, events, the manifest) travel
//! as JSON strings inside the frame, untouched: the worker never parses what the plugin said.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

use crate::plugin::module::LoadError;

/// A frame larger than this is a protocol error (the worker is stopped). The worker never
/// sends one: a plugin's answer that would not fit becomes an error reply (see
/// [`Reply::bounded`]), so the host holds at most this much of any one answer.
pub(crate) const MAX_FRAME: usize = 16 * 1024 * 1024;

/// An agent instance's number inside one worker process.
pub(crate) type InstanceId = u64;

/// The worker's first frame.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Hello {
    /// The manifest's JSON, or why the build did not load — the same error an in-process load
    /// gives, so the operator reads the same message either way.
    pub(crate) manifest: Result<String, LoadError>,
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub(crate) enum Request {
    /// Run the factory; the reply is [`Answer::Instance`], or the factory's error.
    Instantiate { id: u64 },
    /// Run a tool; the reply is the `ToolResult` JSON the plugin returned.
    Call {
        id: u64,
        inst: InstanceId,
        tool: String,
        args: String,
    },
    /// A custom event; the reply is the JSON array of events to send back, or the plugin's
    /// error.
    Event {
        id: u64,
        inst: InstanceId,
        session: String,
        event: String,
    },
    /// Ask a running call of this instance to stop (the plugin API's cancel event, which the
    /// instance's event hook receives). No reply: the call itself still answers.
    Cancel { inst: InstanceId, event: String },
    /// The host no longer uses this instance. No reply.
    Drop { inst: InstanceId },
}

/// The answer to one request: what the plugin returned, or its error (or the worker's own
/// "no", such as an unknown instance) — nothing else.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct Reply {
    pub(crate) id: u64,
    pub(crate) result: Result<Answer, String>,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub(crate) enum Answer {
    /// A new instance's id (the answer to `instantiate`).
    Instance(InstanceId),
    /// The plugin's JSON (a tool result, the events a hook returned).
    Json(String),
}

impl Reply {
    pub(crate) fn json(id: u64, result: Result<String, String>) -> Reply {
        Reply {
            id,
            result: result.map(Answer::Json),
        }
    }

    /// This reply as one frame, or — if the plugin's answer would make it larger than
    /// [`MAX_FRAME`] — an error reply saying so (the answer is dropped, not copied).
    pub(crate) fn bounded(self) -> Vec<u8> {
        let size = match &self.result {
            Ok(Answer::Json(s)) | Err(s) => s.len(),
            Ok(Answer::Instance(_)) => 0,
        };
        // Escaping can make the frame larger than the string: checked again once encoded.
        let frame = if size <= MAX_FRAME {
            encode(&self)
        } else {
            Vec::new()
        };
        if !frame.is_empty() && frame.len() - 4 <= MAX_FRAME {
            return frame;
        }
        let what = if self.result.is_ok() {
            "answer"
        } else {
            "error"
        };
        encode(&Reply {
            id: self.id,
            result: Err(format!(
                "the plugin's {what} ({size} bytes) is over the {} MiB a worker may send; it was dropped",
                MAX_FRAME >> 20
            )),
        })
    }

    /// The plugin's JSON, or its error; an instance id where JSON was expected is a broken
    /// worker, reported as an error.
    pub(crate) fn into_json(self) -> Result<String, String> {
        match self.result? {
            Answer::Json(s) => Ok(s),
            Answer::Instance(n) => Err(format!("the worker answered with instance {n}, not JSON")),
        }
    }

    /// The new instance's id, or the factory's error.
    pub(crate) fn into_instance(self) -> Result<InstanceId, String> {
        match self.result? {
            Answer::Instance(n) => Ok(n),
            Answer::Json(_) => Err("the worker answered with JSON, not an instance id".into()),
        }
    }
}

/// `msg` as one frame (length prefix included).
pub(crate) fn encode(msg: &impl Serialize) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    // Serializing these plain structs into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, msg);
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out
}

/// Writes one frame (blocking).
pub(crate) fn write_frame(w: &mut impl Write, msg: &impl Serialize) -> std::io::Result<()> {
    w.write_all(&encode(msg))
}

/// Reads one frame (blocking); `None` at a clean end of stream.
pub(crate) fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
    let mut len = [0u8; 4];
    match r.read_exact(&mut len) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = u32::from_le_bytes(len) as usize;
    if len > MAX_FRAME {
        return Err(too_big(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf)?;
    Ok(Some(buf))
}

/// Reads one frame; `None` at a clean end of stream.
pub(crate) async fn read_frame_async(
    r: &mut (impl AsyncRead + Unpin),
) -> std::io::Result<Option<Vec<u8>>> {
    let len = match r.read_u32_le().await {
        Ok(n) => n as usize,
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    };
    if len > MAX_FRAME {
        return Err(too_big(len));
    }
    let mut buf = vec![0u8; len];
    r.read_exact(&mut buf).await?;
    Ok(Some(buf))
}

fn too_big(len: usize) -> std::io::Error {
    std::io::Error::new(
        std::io::ErrorKind::InvalidData,
        format!("a frame of {len} bytes is over the {MAX_FRAME}-byte limit"),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_a_short_stream_is_an_error() {
        let req = Request::Call {
            id: 7,
            inst: 2,
            tool: "echo".into(),
            args: r#"{"text":"x"}"#.into(),
        };
        let bytes = encode(&req);
        let mut r = &bytes[..];
        let back: Request = serde_json::from_slice(&read_frame(&mut r).unwrap().unwrap()).unwrap();
        assert!(matches!(back, Request::Call { id: 7, inst: 2, .. }));
        assert!(read_frame(&mut r).unwrap().is_none());
        let mut short = &bytes[..bytes.len() - 1];
        assert!(read_frame(&mut short).is_err());
        let mut huge = &(u32::MAX).to_le_bytes()[..];
        assert!(read_frame(&mut huge).is_err());
    }

    #[test]
    fn replies_and_hellos_are_typed_on_the_wire() {
        let back = |r: &Reply| -> Reply { serde_json::from_slice(&encode(r)[4..]).unwrap() };
        assert_eq!(
            back(&Reply::json(3, Ok("{}".into()))).into_json(),
            Ok("{}".into())
        );
        assert_eq!(
            back(&Reply::json(3, Err("no".into()))).into_json(),
            Err("no".into())
        );
        let inst = Reply {
            id: 1,
            result: Ok(Answer::Instance(9)),
        };
        assert_eq!(back(&inst).into_instance(), Ok(9));
        assert!(back(&inst).into_json().is_err());
        // A reply with both or neither is not a reply.
        assert!(serde_json::from_str::<Reply>(r#"{"id":1}"#).is_err());
        assert!(serde_json::from_str::<Reply>(
            r#"{"id":1,"result":{"Ok":{"json":"a"},"Err":"b"}}"#
        )
        .is_err());
        let hello = Hello {
            manifest: Err(LoadError::ApiVersion { plugin: 1, host: 2 }),
        };
        let hello: Hello = serde_json::from_slice(&encode(&hello)[4..]).unwrap();
        assert!(matches!(
            hello.manifest,
            Err(LoadError::ApiVersion { plugin: 1, host: 2 })
        ));
        let cancel = Request::Cancel {
            inst: 4,
            event: "{}".into(),
        };
        let cancel: Request = serde_json::from_slice(&encode(&cancel)[4..]).unwrap();
        assert!(matches!(cancel, Request::Cancel { inst: 4, .. }));
    }
}
