//! A session's event stream `myagent:events:{id}`: one entry per write batch — [`entry`]'s
//! `seq` of its first event and `frames`, one a line — trimmed to about [`ENTRIES_KEPT`]
//! entries; written by the writer's batches, read by a resume and by a host following a turn.

use super::super::batch::Chunk;
use super::super::health::State;
use super::super::StoreError;
use super::{events_key, lease_key};

/// Stream entries kept per session (`MAXLEN ~`): an entry is one session's events of one
/// write batch, so at least this many of its newest events are kept.
const ENTRIES_KEPT: u64 = 1024;

/// An event stream entry's fields.
pub(super) mod entry {
    pub(crate) const SEQ: &str = "seq";
    pub(crate) const FRAMES: &str = "frames";
}

/// A session's events of one batch as one stream entry.
pub(super) fn xadd(p: &mut redis::Pipeline, c: &Chunk) {
    p.cmd("XADD")
        .arg(events_key(&c.id))
        .arg("MAXLEN")
        .arg("~")
        .arg(ENTRIES_KEPT)
        .arg("*")
        .arg(entry::SEQ)
        .arg(c.first)
        .arg(entry::FRAMES)
        .arg(&c.frames)
        .ignore();
}

/// A stream entry as written: `seq` of its first event and the frames.
pub(crate) fn xadd_at(p: &mut redis::Pipeline, key: &str, id: &str, first: u64, frames: &str) {
    p.cmd("XADD")
        .arg(key)
        .arg(id)
        .arg(entry::SEQ)
        .arg(first)
        .arg(entry::FRAMES)
        .arg(frames)
        .ignore();
}

/// One stream entry: its id, the `seq` of its first event and its frames.
pub(crate) fn decode_entry(v: &redis::Value) -> Result<(String, u64, String), String> {
    let redis::Value::Array(parts) = v else {
        return Err("not an array".into());
    };
    let (Some(id), Some(redis::Value::Array(kv))) = (parts.first(), parts.get(1)) else {
        return Err("not an [id, fields] pair".into());
    };
    let id: String = redis::from_redis_value(id.clone()).map_err(|e| format!("entry id: {e}"))?;
    let (mut first, mut frames) = (None, None);
    for pair in kv.chunks(2) {
        let [k, v] = pair else {
            return Err(format!("entry {id}: odd field list"));
        };
        let k: String =
            redis::from_redis_value(k.clone()).map_err(|e| format!("entry {id}: {e}"))?;
        match k.as_str() {
            entry::SEQ => {
                let s: String =
                    redis::from_redis_value(v.clone()).map_err(|e| format!("entry {id}: {e}"))?;
                first = Some(
                    s.parse::<u64>()
                        .map_err(|_| format!("entry {id}: seq {s:?}"))?,
                );
            }
            entry::FRAMES => {
                frames = Some(
                    redis::from_redis_value::<String>(v.clone())
                        .map_err(|e| format!("entry {id}: frames: {e}"))?,
                )
            }
            _ => {}
        }
    }
    match (first, frames) {
        (Some(first), Some(frames)) => Ok((id, first, frames)),
        _ => Err(format!("entry {id}: no `seq` or no `frames`")),
    }
}

/// What following a stream reads: whether the turn's lease is held, and the new events as
/// (stream entry id, seq, frame).
pub type Followed = (bool, Vec<(String, u64, String)>);

/// Events of session `id` after stream entry `after` (`None`: from the start), oldest first
/// and each `seq` once (a retried batch may have landed twice), as (entry id, seq, frame); and
/// whether its turn's lease is still held (by any host).
pub(crate) fn events_after(
    c: &mut redis::Connection,
    id: &str,
    after: Option<&str>,
    state: &State,
) -> redis::RedisResult<Followed> {
    let start = match after {
        Some(entry) => format!("({entry}"),
        None => "-".to_owned(),
    };
    let entries: redis::Value = redis::cmd("XRANGE")
        .arg(events_key(id))
        .arg(start)
        .arg("+")
        .query(c)?;
    let mut out: Vec<(String, u64, String)> = Vec::new();
    if let redis::Value::Array(entries) = entries {
        for e in &entries {
            match decode_entry(e) {
                Ok((entry_id, first, frames)) => {
                    for (seq, f) in Chunk::events(first, &frames) {
                        if out.last().is_none_or(|(_, last, _)| seq > *last) {
                            out.push((entry_id.clone(), seq, f.to_owned()));
                        }
                    }
                }
                Err(why) => {
                    state
                        .bad_entries
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let e = StoreError::BadEntry {
                        session: id.to_owned(),
                        reason: why,
                    };
                    tracing::warn!(error = %e, "skipping a stored event entry");
                }
            }
        }
    }
    let leased: bool = redis::cmd("EXISTS").arg(lease_key(id)).query(c)?;
    Ok((leased, out))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_stream_entries_are_errors_not_silence() {
        use redis::Value as V;
        let s = |t: &str| V::BulkString(t.as_bytes().to_vec());
        let good = V::Array(vec![
            s("1-0"),
            V::Array(vec![s("seq"), s("3"), s("frames"), s("a\nb")]),
        ]);
        assert_eq!(
            decode_entry(&good).unwrap(),
            ("1-0".into(), 3, "a\nb".into())
        );
        for bad in [
            V::Array(vec![
                s("1-0"),
                V::Array(vec![s("seq"), s("x"), s("frames"), s("a")]),
            ]),
            V::Array(vec![s("1-0"), V::Array(vec![s("frames"), s("a")])]),
            V::Array(vec![s("1-0"), V::Array(vec![s("seq")])]),
            s("junk"),
        ] {
            assert!(decode_entry(&bad).is_err(), "{bad:?}");
        }
    }
}
