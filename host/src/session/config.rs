//! How sessions behave: caps, resume, replay, double texting. No `Default`: the CLI's
//! `args.rs` holds each default once.

use std::time::Duration;

use super::event::OnBusy;

/// Sessions: caps, resume, replay.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Sessions alive at once (attached or waiting for a resume), over all clients.
    pub max_sessions: usize,
    /// Sessions per client address at most (0: no limit).
    pub max_sessions_per_ip: usize,
    pub max_sessions_per_connection: usize,
    /// Bytes of past events kept per session for resume (with per-event overhead).
    pub replay_buffer_bytes: usize,
    /// Bytes of past events kept by all sessions together.
    pub replay_budget_bytes: usize,
    /// How long a session (and its run) outlives its connection, waiting for a resume.
    pub resume_window: Duration,
    /// Double texting: what a message does while its session runs, unless it says (`on_busy`).
    pub on_busy: OnBusy,
    /// Which image URLs a message's content parts may carry to the model (`--image-urls`).
    pub image_urls: ImageUrls,
    /// Messages one session may send a minute (each may start a model call); 0: no limit.
    pub max_runs_per_minute: u32,
    /// Messages one client address may send a minute, over its sessions; 0: no limit.
    pub max_runs_per_minute_per_ip: u32,
    /// Sessions the store may hold (they outlive memory for `--session-ttl`); 0: no limit.
    pub max_stored_sessions: u64,
    /// The same for the sessions one client address made.
    pub max_stored_sessions_per_ip: u64,
    /// Who may connect and the tiers their quotas come from (empty: anonymous, no tokens).
    pub principals: std::sync::Arc<super::principal::Principals>,
}

/// Which image URLs the host passes on to the model provider. The host never fetches them; a
/// self-hosted model server might, from inside the operator's network.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum ImageUrls {
    /// Only `data:` URLs (the image itself).
    Data,
    /// `data:` and http(s) URLs whose host is not loopback, private or link-local.
    #[default]
    Public,
    /// Any URL.
    Any,
}

impl ImageUrls {
    /// Why `content` may not go to the model, if it may not.
    pub fn check(self, content: &crate::llm::Content) -> Result<(), String> {
        for url in content.image_urls() {
            if url.starts_with("data:") || self == ImageUrls::Any {
                continue;
            }
            let refused = self == ImageUrls::Data || !is_public_http(url);
            if refused {
                let shown: String = url.chars().take(80).collect();
                return Err(format!(
                    "image URL {shown:?} is not allowed on this server (--image-urls {}): send the image as a data: URL{}",
                    if self == ImageUrls::Data { "data" } else { "public" },
                    if self == ImageUrls::Data { "" } else { ", or a public http(s) URL" }
                ));
            }
        }
        Ok(())
    }
}

/// An http(s) URL whose host is a name or a public address (not loopback, private, link-local,
/// unspecified or shared, nor `localhost`). Names are not resolved.
fn is_public_http(url: &str) -> bool {
    let Some(rest) = url
        .strip_prefix("https://")
        .or_else(|| url.strip_prefix("http://"))
    else {
        return false;
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or("");
    let host = authority.rsplit('@').next().unwrap_or("");
    let host = match host.strip_prefix('[') {
        Some(v6) => v6.split(']').next().unwrap_or(""),
        None => host.split(':').next().unwrap_or(""),
    };
    let host = host.trim_end_matches('.').to_ascii_lowercase();
    if host.is_empty() || host == "localhost" || host.ends_with(".localhost") {
        return false;
    }
    match host.parse::<std::net::IpAddr>() {
        Ok(ip) => is_public_ip(ip),
        // Numbers in the forms `inet_aton` also reads (`127.1`, `2130706433`, `0x7f.1`): refused.
        Err(_) => !host.split('.').all(|l| {
            let hex = l
                .strip_prefix("0x")
                .filter(|h| h.chars().all(|c| c.is_ascii_hexdigit()));
            !l.is_empty() && (l.chars().all(|c| c.is_ascii_digit()) || hex.is_some())
        }),
    }
}

fn is_public_ip(ip: std::net::IpAddr) -> bool {
    match ip {
        std::net::IpAddr::V4(v4) => {
            let o = v4.octets();
            !(v4.is_loopback()
                || v4.is_private()
                || v4.is_link_local()
                || v4.is_unspecified()
                || v4.is_broadcast()
                || o[0] == 0
                || (o[0] == 100 && (64..128).contains(&o[1])))
        }
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => is_public_ip(std::net::IpAddr::V4(v4)),
            None => {
                let s = v6.segments();
                !(v6.is_loopback()
                    || v6.is_unspecified()
                    || (s[0] & 0xfe00) == 0xfc00
                    || (s[0] & 0xffc0) == 0xfe80)
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::Content;

    fn img(url: &str) -> Content {
        Content::Parts(vec![crate::llm::Part::ImageUrl {
            image_url: crate::llm::ImageUrl {
                url: url.into(),
                detail: None,
            },
        }])
    }

    #[test]
    fn private_and_local_image_urls_are_refused_by_default() {
        let p = ImageUrls::Public;
        for bad in [
            "http://127.0.0.1:6379/",
            "http://169.254.169.254/latest/meta-data/",
            "http://10.0.0.5/x.png",
            "http://192.168.1.1/x.png",
            "http://[::1]/x.png",
            "http://[::ffff:127.0.0.1]/x.png",
            "http://[fd00::1]/x.png",
            "http://localhost:8080/x.png",
            "http://user@127.0.0.1/x.png",
            "http://127.1/x.png",
            "http://0x7f000001/x.png",
            "ftp://example.com/x.png",
            "file:///etc/passwd",
        ] {
            assert!(p.check(&img(bad)).is_err(), "{bad}");
        }
        for good in [
            "https://example.com/cat.png",
            "https://cafe.be/x.png",
            "http://93.184.216.34/x.png",
            "data:image/png;base64,AA==",
        ] {
            assert!(p.check(&img(good)).is_ok(), "{good}");
        }
        assert!(ImageUrls::Data
            .check(&img("https://example.com/cat.png"))
            .is_err());
        assert!(ImageUrls::Any.check(&img("http://127.0.0.1/")).is_ok());
        assert!(p.check(&Content::Text("http://127.0.0.1/".into())).is_ok());
    }
}
