//! How a chunk's frames are kept in `event_chunks.frames`: LZ4-compressed, as a BLOB (the
//! uncompressed length first, 4 bytes little-endian, then one LZ4 block). A token stream's
//! frames repeat their field names, session id and timestamp prefix, so a chunk shrinks about
//! tenfold and the store writes (and checkpoints) a tenth of the bytes. Rows written before
//! (schema 3 and older) hold the frames as TEXT and are read as they are.

use rusqlite::types::{FromSqlError, ValueRef};

/// A stored chunk never unpacks to more than this (a chunk is about `CHUNK_BYTES` plus one
/// event of at most `MAX_EVENT_BYTES`): a damaged length is an error, not an allocation.
const MAX_UNPACKED: usize = 64 << 20;

/// The stored form of `frames`.
pub(super) fn pack(frames: &str) -> Vec<u8> {
    lz4_flex::block::compress_prepend_size(frames.as_bytes())
}

/// The frames of a stored chunk, whichever form it was written in.
pub(super) fn unpack(stored: ValueRef<'_>) -> Result<String, FromSqlError> {
    match stored {
        ValueRef::Text(t) => {
            String::from_utf8(t.to_vec()).map_err(|e| FromSqlError::Other(e.into()))
        }
        ValueRef::Blob(b) => {
            let bad = |why: String| FromSqlError::Other(why.into());
            let (len, block) = b
                .split_first_chunk::<4>()
                .ok_or_else(|| bad("a stored event chunk is truncated".into()))?;
            let len = u32::from_le_bytes(*len) as usize;
            if len > MAX_UNPACKED {
                return Err(bad(format!(
                    "a stored event chunk claims {len} bytes (the most is {MAX_UNPACKED})"
                )));
            }
            let bytes = lz4_flex::block::decompress(block, len)
                .map_err(|e| bad(format!("a stored event chunk does not unpack: {e}")))?;
            String::from_utf8(bytes).map_err(|e| FromSqlError::Other(e.into()))
        }
        _ => Err(FromSqlError::InvalidType),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn packed_frames_unpack_to_the_same_text_and_old_text_rows_still_read() {
        let frames: String = (1..200)
            .map(|i| format!("{{\"event\":\"agent.partial_answer\",\"content\":\"tok{i} \",\"metadata\":{{\"step\":1,\"reset\":false}},\"session_id\":\"0b6f3c1e-9a7d-4d8e-b1f2-3c4d5e6f7a8b\",\"seq\":{i},\"timestamp\":\"2026-12-02T22:40:01.{:03}Z\"}}", i % 1000))
            .collect::<Vec<_>>()
            .join("\n");
        let packed = pack(&frames);
        assert!(
            packed.len() * 5 < frames.len(),
            "{} of {}",
            packed.len(),
            frames.len()
        );
        assert_eq!(unpack(ValueRef::Blob(&packed)).unwrap(), frames);
        assert_eq!(unpack(ValueRef::Text(b"{\"a\":1}")).unwrap(), "{\"a\":1}");
    }

    #[test]
    fn a_damaged_chunk_is_an_error() {
        let mut packed = pack("{\"event\":\"agent.ready\"}");
        assert!(unpack(ValueRef::Blob(&packed[..2])).is_err());
        packed[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(unpack(ValueRef::Blob(&packed)).is_err());
        let mut short = pack("{\"event\":\"agent.ready\"}");
        short.truncate(short.len() - 3);
        assert!(unpack(ValueRef::Blob(&short)).is_err());
        assert!(unpack(ValueRef::Integer(3)).is_err());
    }
}
