//! `ListTasks`: the caller's tasks, newest first — filtered by context, state and the time of
//! their last status — paged, with history and artifacts as asked.

use serde_json::{json, Value};

use super::rpc::RpcError;
use super::task::{lock, State};
use super::{history_length, Ctx, Reply};

/// Tasks a page holds by default, and at most.
const PAGE: u64 = 50;
const PAGE_MAX: u64 = 100;

impl Ctx<'_> {
    pub(super) fn list(self, p: &Value) -> Result<Reply, RpcError> {
        let context = p["contextId"].as_str();
        let status = match p["status"].as_str() {
            None | Some("TASK_STATE_UNSPECIFIED") => None,
            Some(s) => Some(
                State::parse(s).ok_or_else(|| RpcError::params(format!("unknown status {s}")))?,
            ),
        };
        let size = match p.get("pageSize").filter(|v| !v.is_null()) {
            None => PAGE,
            Some(v) => v
                .as_u64()
                .filter(|n| (1..=PAGE_MAX).contains(n))
                .ok_or_else(|| RpcError::params(format!("`pageSize` is 1 to {PAGE_MAX}")))?,
        } as usize;
        if p.get("historyLength")
            .is_some_and(|v| !v.is_null() && v.as_u64().is_none())
        {
            return Err(RpcError::params(
                "`historyLength` is a non-negative integer",
            ));
        }
        let after = match p["statusTimestampAfter"].as_str() {
            None => None,
            Some(t) => Some(utc_millis(t).ok_or_else(|| {
                RpcError::params(format!(
                    "`statusTimestampAfter` {t:?} is not an RFC 3339 time"
                ))
            })?),
        };
        let from: usize = match p["pageToken"].as_str().filter(|t| !t.is_empty()) {
            None => 0,
            Some(t) => t.parse().map_err(|_| {
                RpcError::params("`pageToken` is the nextPageToken of an earlier page")
            })?,
        };
        let all = self.tasks().list(self.client.user(), |t| {
            context.is_none_or(|c| t.context_id == c)
                && status.is_none_or(|s| t.state == s)
                && after.as_deref().is_none_or(|a| t.status_at.as_str() >= a)
        });
        let with_artifacts = p["includeArtifacts"].as_bool().unwrap_or(false);
        let page: Vec<Value> = all
            .iter()
            .skip(from)
            .take(size)
            .map(|t| {
                let mut v = lock(t).to_json(history_length(p));
                if !with_artifacts {
                    v.as_object_mut().map(|o| o.remove("artifacts"));
                }
                v
            })
            .collect();
        let next = if from + page.len() < all.len() {
            (from + page.len()).to_string()
        } else {
            String::new()
        };
        Ok(Reply::Json(
            json!({"tasks": page, "nextPageToken": next, "pageSize": size, "totalSize": all.len()}),
        ))
    }
}

/// An RFC 3339 time in UTC (`Z` or `+00:00`) as the host writes times
/// (`2026-12-02T04:57:01.123Z`, so that they compare as strings); None if it is not one.
fn utc_millis(t: &str) -> Option<String> {
    let (date_time, zone) = if let Some(dt) = t.strip_suffix('Z') {
        (dt, "")
    } else {
        t.split_at_checked(t.len().checked_sub(6)?)?
    };
    if !matches!(zone, "" | "+00:00" | "-00:00") {
        return None;
    }
    let (secs, frac) = date_time.split_once('.').unwrap_or((date_time, ""));
    let b = secs.as_bytes();
    let shape = b.len() == 19
        && b.iter().enumerate().all(|(i, c)| match i {
            4 | 7 => *c == b'-',
            10 => *c == b'T' || *c == b't',
            13 | 16 => *c == b':',
            _ => c.is_ascii_digit(),
        });
    if !shape || !frac.bytes().all(|c| c.is_ascii_digit()) {
        return None;
    }
    let ms: String = frac.chars().chain("000".chars()).take(3).collect();
    Some(format!("{}T{}.{ms}Z", &secs[..10], &secs[11..]))
}

#[cfg(test)]
mod tests {
    #[test]
    fn times_read_as_the_host_writes_them() {
        let t = super::utc_millis;
        assert_eq!(
            t("2026-12-02T04:57:01.123456+00:00").as_deref(),
            Some("2026-12-02T04:57:01.123Z")
        );
        assert_eq!(
            t("2026-12-02T04:57:01Z").as_deref(),
            Some("2026-12-02T04:57:01.000Z")
        );
        assert_eq!(
            t("2026-12-02T04:57:01.5Z").as_deref(),
            Some("2026-12-02T04:57:01.500Z")
        );
        assert_eq!(t("yesterday"), None);
        assert_eq!(t("2026-12-02T04:57:01+02:00"), None);
    }
}
