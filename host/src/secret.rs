//! Comparing secrets (tokens) without leaking, through timing, how much of a guess was right.

/// String equality that takes as long for a near miss as for a far one (tokens).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    constant_time_eq_bytes(a.as_bytes(), b.as_bytes())
}

/// The same for bytes (token digests).
pub fn constant_time_eq_bytes(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
