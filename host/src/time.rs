//! The protocol's `timestamp`: ISO-8601 in UTC with milliseconds (`2026-11-30T08:15:02.417Z`),
//! as the MyAgent design's `datetime.now().isoformat()` — formatted by hand on the stack, one
//! per event, with no time-zone database.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A formatted instant: 24 ASCII bytes.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct Timestamp([u8; 24]);

/// Milliseconds since 1970 now.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

impl Timestamp {
    pub fn now() -> Timestamp {
        Timestamp::at(
            SystemTime::now()
                .duration_since(UNIX_EPOCH)
                .unwrap_or_default(),
        )
    }

    /// The instant `since_epoch` after 1970-01-01T00:00:00Z (years up to 9999).
    pub fn at(since_epoch: Duration) -> Timestamp {
        let secs = since_epoch.as_secs();
        let millis = since_epoch.subsec_millis();
        let (y, m, d) = civil_from_days((secs / 86_400) as i64);
        let sod = secs % 86_400;
        let mut b = *b"0000-00-00T00:00:00.000Z";
        let mut put = |at: usize, v: u64, width: usize| {
            let mut v = v;
            for i in (0..width).rev() {
                b[at + i] = b'0' + (v % 10) as u8;
                v /= 10;
            }
        };
        put(0, y.clamp(0, 9999) as u64, 4);
        put(5, m as u64, 2);
        put(8, d as u64, 2);
        put(11, sod / 3600, 2);
        put(14, sod / 60 % 60, 2);
        put(17, sod % 60, 2);
        put(20, millis as u64, 3);
        Timestamp(b)
    }

    /// Milliseconds since 1970 of a timestamp this type wrote (`2026-12-02T06:38:40.611Z`);
    /// None for any other text.
    pub fn parse_millis(s: &str) -> Option<u64> {
        let b = s.as_bytes();
        if b.len() != 24 || b[4] != b'-' || b[10] != b'T' || b[19] != b'.' || b[23] != b'Z' {
            return None;
        }
        let num = |r: std::ops::Range<usize>| s.get(r)?.parse::<u64>().ok();
        let (y, m, d) = (num(0..4)? as i64, num(5..7)? as u32, num(8..10)? as u32);
        let days = days_from_civil(y, m, d);
        let secs = num(11..13)? * 3600 + num(14..16)? * 60 + num(17..19)?;
        u64::try_from(days)
            .ok()
            .map(|days| (days * 86_400 + secs) * 1000 + num(20..23).unwrap_or(0))
    }

    pub fn as_str(&self) -> &str {
        // Only ASCII digits and separators are ever written.
        std::str::from_utf8(&self.0).unwrap_or("1970-01-01T00:00:00.000Z")
    }
}

impl std::fmt::Display for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::fmt::Debug for Timestamp {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl serde::Serialize for Timestamp {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

/// Year, month, day of the proleptic Gregorian calendar for days since 1970-01-01
/// (Howard Hinnant's `civil_from_days`).
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(y: i64, m: u32, d: u32) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = i64::from(if m > 2 { m - 3 } else { m + 9 });
    let doy = (153 * mp + 2) / 5 + i64::from(d) - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_back_what_it_writes() {
        for ms in [0u64, 951_782_400_005, 1_796_000_102_417, 4_102_444_799_999] {
            let t = Timestamp::at(Duration::from_millis(ms));
            assert_eq!(Timestamp::parse_millis(t.as_str()), Some(ms), "{t}");
        }
        assert_eq!(Timestamp::parse_millis("yesterday"), None);
    }

    #[test]
    fn formats_known_instants() {
        let at = |s: u64, ms: u64| Timestamp::at(Duration::from_millis(s * 1000 + ms)).to_string();
        assert_eq!(at(0, 0), "1970-01-01T00:00:00.000Z");
        assert_eq!(at(951_782_400, 5), "2000-02-29T00:00:00.005Z"); // a leap day
        assert_eq!(at(1_796_000_102, 417), "2026-11-30T00:55:02.417Z");
        assert_eq!(at(4_102_444_799, 999), "2099-12-31T23:59:59.999Z");
    }

    #[test]
    fn agrees_with_the_calendar_day_by_day() {
        // Walk 400 years of days: month and day always advance as the calendar does.
        let (mut y, mut m, mut d) = (1970i64, 1u32, 1u32);
        for day in 0..146_097i64 {
            assert_eq!(civil_from_days(day), (y, m, d), "day {day}");
            let leap = (y % 4 == 0 && y % 100 != 0) || y % 400 == 0;
            let len = [
                31,
                if leap { 29 } else { 28 },
                31,
                30,
                31,
                30,
                31,
                31,
                30,
                31,
                30,
                31,
            ][m as usize - 1];
            d += 1;
            if d > len {
                d = 1;
                m += 1;
                if m > 12 {
                    m = 1;
                    y += 1;
                }
            }
        }
    }
}
