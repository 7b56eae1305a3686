//! The authentication middleware: tokens (on the upgrade request or the first message), the
//! browser `Origin` check (same-origin unless configured) and the `Host` check (DNS
//! rebinding). One place for every "may this request talk to us" decision.

use std::sync::Arc;

use hyper::header;
use hyper::Request;

pub(crate) use crate::secret::constant_time_eq;
use crate::session::principal::{Principal, Principals};

/// Who may connect.
pub struct Auth {
    principals: Arc<Principals>,
    /// Accepted `Origin` values; empty: same-origin (or a localhost page); `*`: any.
    allowed_origins: Vec<String>,
    /// Accepted `Host` names besides IP literals and `localhost`; `*`: any.
    allowed_hosts: Vec<String>,
}

/// What the upgrade request said about authentication.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Credentials {
    /// A valid token (its principal), or none is required (None: anonymous).
    Accepted(Option<Principal>),
    /// No token yet: the first message may carry one.
    Pending,
    /// A wrong token: answer `auth.error` and close.
    Refused,
}

impl Auth {
    pub fn new(
        principals: Arc<Principals>,
        allowed_origins: Vec<String>,
        allowed_hosts: Vec<String>,
    ) -> Auth {
        Auth {
            principals,
            allowed_origins,
            allowed_hosts,
        }
    }

    pub fn required(&self) -> bool {
        self.principals.required()
    }

    /// The principal `token` belongs to, if it is an accepted one (compared in constant time).
    pub fn authenticate(&self, token: &str) -> Option<Principal> {
        self.principals.authenticate(token)
    }

    /// Whether a browser page at `origin` may open a socket on a request for `host`.
    ///
    /// Browsers always send `Origin`; a request without one is not from a browser page (as in
    /// gorilla/websocket's check). Non-browser clients can claim any origin anyway: tokens are
    /// what keeps them out. Without a configured list, only the same origin (the page this host
    /// serves) and pages on localhost may connect: any other web page the user visits cannot
    /// use the agent through their browser (cross-site WebSocket hijacking).
    pub fn origin_allowed(&self, origin: Option<&str>, host: Option<&str>) -> bool {
        let Some(origin) = origin else {
            return true;
        };
        if self.allowed_origins.iter().any(|a| a == "*" || a == origin) {
            return true;
        }
        if !self.allowed_origins.is_empty() {
            return false;
        }
        let Some((scheme, authority)) = origin.split_once("://") else {
            return false;
        };
        let origin_authority = without_default_port(scheme, authority);
        if is_local(hostname(&origin_authority)) {
            return true;
        }
        host.is_some_and(|h| {
            let scheme_of_host = if scheme == "https" { "https" } else { "http" };
            without_default_port(scheme_of_host, h).eq_ignore_ascii_case(&origin_authority)
        })
    }

    /// Whether a request for `host` is for us: an IP literal, `localhost`, or a configured
    /// name. A DNS-rebinding page (its own name resolving to this machine) is refused.
    pub fn host_allowed(&self, host: Option<&str>) -> bool {
        let Some(host) = host else {
            return true; // HTTP/1.0 or a raw client: not a browser
        };
        let name = hostname(host);
        is_local(name)
            || name
                .trim_matches(|c| c == '[' || c == ']')
                .parse::<std::net::IpAddr>()
                .is_ok()
            || self
                .allowed_hosts
                .iter()
                .any(|a| a == "*" || a.eq_ignore_ascii_case(name))
    }

    /// Checks the token an upgrade request carries (`Authorization: Bearer` or `?token=`).
    pub fn check_request<B>(&self, req: &Request<B>) -> Credentials {
        if !self.required() {
            return Credentials::Accepted(None);
        }
        match request_token(req).map(|t| self.authenticate(&t)) {
            Some(Some(p)) => Credentials::Accepted(Some(p)),
            Some(None) => Credentials::Refused,
            None => Credentials::Pending,
        }
    }
}

/// The host part of `host[:port]` (IPv6 literals keep their brackets).
fn hostname(authority: &str) -> &str {
    if authority.starts_with('[') {
        return authority
            .split_once(']')
            .map_or(authority, |(h, _)| &authority[..h.len() + 1]);
    }
    authority.rsplit_once(':').map_or(authority, |(h, _)| h)
}

fn is_local(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost") || host == "127.0.0.1" || host == "[::1]"
}

/// `authority` without `:80` for http or `:443` for https, lower-cased.
fn without_default_port(scheme: &str, authority: &str) -> String {
    let a = authority.to_ascii_lowercase();
    let default = if scheme == "https" || scheme == "wss" {
        ":443"
    } else {
        ":80"
    };
    a.strip_suffix(default).map(str::to_owned).unwrap_or(a)
}

/// The token a request carries: `Authorization: Bearer` or `?token=`.
fn request_token<B>(req: &Request<B>) -> Option<String> {
    if let Some(v) = req
        .headers()
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
    {
        if let Some(t) = v
            .strip_prefix("Bearer ")
            .or_else(|| v.strip_prefix("bearer "))
        {
            return Some(t.trim().to_owned());
        }
    }
    req.uri()
        .query()?
        .split('&')
        .find_map(|kv| kv.strip_prefix("token="))
        .map(percent_decode)
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                match u8::from_str_radix(std::str::from_utf8(&b[i + 1..i + 3]).unwrap_or("zz"), 16)
                {
                    Ok(v) => {
                        out.push(v);
                        i += 3;
                        continue;
                    }
                    Err(_) => out.push(b'%'),
                }
            }
            b'+' => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        assert_eq!(super::percent_decode("a%20b+c"), "a b c");
        assert_eq!(super::percent_decode("abc%"), "abc%");
        assert_eq!(super::percent_decode("%zz"), "%zz");
    }

    use std::sync::Arc;

    use crate::session::principal::{Principals, Table};

    fn none() -> Arc<Principals> {
        Arc::default()
    }

    #[test]
    fn tokens_and_origins() {
        let a = super::Auth::new(
            Arc::new(Principals::new(Table::from_tokens(&["s3cret"]))),
            vec!["https://ok.example".into()],
            vec![],
        );
        let ok = |t: &str| a.authenticate(t).is_some();
        assert!(ok("s3cret") && !ok("s3cre") && !ok("s3cret!"));
        let h = Some("agent.example");
        assert!(a.origin_allowed(None, h) && a.origin_allowed(Some("https://ok.example"), h));
        assert!(!a.origin_allowed(Some("https://evil.example"), h));
        // A configured list is exact: not even the same origin is implied.
        assert!(!a.origin_allowed(Some("https://agent.example"), h));
    }

    #[test]
    fn same_origin_by_default() {
        let a = super::Auth::new(none(), vec![], vec![]);
        assert!(a.origin_allowed(Some("http://127.0.0.1:8080"), Some("127.0.0.1:8080")));
        assert!(a.origin_allowed(Some("https://agent.example"), Some("agent.example:443")));
        assert!(a.origin_allowed(Some("http://localhost:3000"), Some("10.0.0.2:8080")));
        assert!(!a.origin_allowed(Some("https://evil.example"), Some("127.0.0.1:8080")));
        assert!(!a.origin_allowed(Some("http://10.0.0.2:9999"), Some("10.0.0.2:8080")));
        assert!(!a.origin_allowed(Some("null"), Some("127.0.0.1:8080")));
        let any = super::Auth::new(none(), vec!["*".into()], vec![]);
        assert!(any.origin_allowed(Some("https://evil.example"), Some("127.0.0.1:8080")));
    }

    #[test]
    fn hosts_are_ips_localhost_or_configured() {
        let a = super::Auth::new(none(), vec![], vec!["agent.example".into()]);
        for ok in [
            "127.0.0.1:8080",
            "localhost",
            "[::1]:80",
            "10.1.2.3",
            "Agent.example:8000",
        ] {
            assert!(a.host_allowed(Some(ok)), "{ok}");
        }
        assert!(!a.host_allowed(Some("evil.example:8080")));
        let any = super::Auth::new(none(), vec![], vec!["*".into()]);
        assert!(any.host_allowed(Some("evil.example")));
    }
}
