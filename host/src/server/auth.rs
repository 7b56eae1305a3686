//! The authentication middleware: tokens (on the upgrade request or the first message) and the
//! browser `Origin` check. One place for both halves of the check.

use hyper::header;
use hyper::Request;

/// Who may connect.
pub struct Auth {
    tokens: Vec<String>,
    allowed_origins: Vec<String>,
}

/// What the upgrade request said about authentication.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Credentials {
    /// A valid token, or none is required.
    Accepted,
    /// No token yet: the first message may carry one.
    Pending,
    /// A wrong token: answer `auth.error` and close.
    Refused,
}

impl Auth {
    pub fn new(tokens: Vec<String>, allowed_origins: Vec<String>) -> Auth {
        Auth {
            tokens,
            allowed_origins,
        }
    }

    pub fn required(&self) -> bool {
        !self.tokens.is_empty()
    }

    pub fn token_count(&self) -> usize {
        self.tokens.len()
    }

    /// True when `token` is one of the accepted ones (compared in constant time).
    pub fn accepts(&self, token: &str) -> bool {
        self.tokens.iter().any(|k| constant_time_eq(k, token))
    }

    /// Browsers always send `Origin`; a request without one is not from a browser page (as in
    /// gorilla/websocket's check). Non-browser clients can claim any origin anyway: tokens are
    /// what keeps them out.
    pub fn origin_allowed(&self, origin: Option<&str>) -> bool {
        self.allowed_origins.is_empty()
            || origin.map_or(true, |o| self.allowed_origins.iter().any(|a| a == o))
    }

    /// Checks the token an upgrade request carries (`Authorization: Bearer` or `?token=`).
    pub fn check_request<B>(&self, req: &Request<B>) -> Credentials {
        if !self.required() {
            return Credentials::Accepted;
        }
        match request_token(req) {
            Some(t) if self.accepts(&t) => Credentials::Accepted,
            Some(_) => Credentials::Refused,
            None => Credentials::Pending,
        }
    }
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

/// String equality that takes as long for a near miss as for a far one (tokens).
pub fn constant_time_eq(a: &str, b: &str) -> bool {
    a.len() == b.len()
        && a.bytes()
            .zip(b.bytes())
            .fold(0u8, |acc, (x, y)| acc | (x ^ y))
            == 0
}

#[cfg(test)]
mod tests {
    #[test]
    fn percent_decoding() {
        assert_eq!(super::percent_decode("a%20b+c"), "a b c");
        assert_eq!(super::percent_decode("abc%"), "abc%");
        assert_eq!(super::percent_decode("%zz"), "%zz");
    }

    #[test]
    fn tokens_and_origins() {
        let a = super::Auth::new(vec!["s3cret".into()], vec!["https://ok.example".into()]);
        assert!(a.accepts("s3cret") && !a.accepts("s3cre") && !a.accepts("s3cret!"));
        assert!(a.origin_allowed(None) && a.origin_allowed(Some("https://ok.example")));
        assert!(!a.origin_allowed(Some("https://evil.example")));
    }
}
