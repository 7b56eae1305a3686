//! Comparing secrets (tokens) without leaking, through timing, how much of a guess was right.

/// String equality that takes as long for a near miss as for a far one (tokens).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}
