//! The worker protocol: length-prefixed JSON frames over a Unix socket pair — a little-endian
//! `u32` length, then that many bytes of one JSON object. The host sends [`Request`]s, the
//! worker answers each (except `drop`) with a [`Reply`] carrying the request's `id`; replies
//! come in any order (calls run concurrently). The first frame from the worker is the hello:
//! id 0, `ok` the manifest JSON or `err` why the build did not load.
//!
//! Strings the ABI already carries as JSON (arguments, results, events, the manifest) travel
//! as JSON strings inside the frame, untouched: the worker never parses what the plugin said.

use std::io::{Read, Write};

use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt};

/// A frame larger than this is a protocol error (the worker is stopped). Tool outputs are
/// truncated by the host long before this; it only bounds a broken peer.
pub const MAX_FRAME: usize = 256 * 1024 * 1024;

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Run the factory; `ok` is the new instance's id (decimal).
    Instantiate { id: u64 },
    /// Run a tool; `ok` is the `ToolResult` JSON the plugin returned.
    Call {
        id: u64,
        inst: u64,
        tool: String,
        args: String,
    },
    /// A custom event (or the reserved cancel event); `ok` is the JSON array of events to send
    /// back, `err` the plugin's error.
    Event {
        id: u64,
        inst: u64,
        session: String,
        event: String,
    },
    /// The host no longer uses this instance. No reply.
    Drop { inst: u64 },
}

#[derive(Debug, Serialize, Deserialize)]
pub struct Reply {
    pub id: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ok: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub err: Option<String>,
}

impl Reply {
    /// `ok`'s text, or `err`'s (the plugin's or the worker's own no).
    pub fn into_result(self) -> Result<String, String> {
        match self {
            Reply { ok: Some(out), .. } => Ok(out),
            Reply { err, .. } => Err(err.unwrap_or_default()),
        }
    }
}

/// `msg` as one frame (length prefix included).
pub fn encode(msg: &impl Serialize) -> Vec<u8> {
    let mut out = vec![0u8; 4];
    // Serializing these plain structs into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut out, msg);
    let len = (out.len() - 4) as u32;
    out[..4].copy_from_slice(&len.to_le_bytes());
    out
}

/// Writes one frame (blocking).
pub fn write_frame(w: &mut impl Write, msg: &impl Serialize) -> std::io::Result<()> {
    w.write_all(&encode(msg))
}

/// Reads one frame (blocking); `None` at a clean end of stream.
pub fn read_frame(r: &mut impl Read) -> std::io::Result<Option<Vec<u8>>> {
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
pub async fn read_frame_async(
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
}
