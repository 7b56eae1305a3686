//! The web client (one self-contained page, no build step) served at `/`, with a
//! Content-Security-Policy naming its one inline script by hash.

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{self, HeaderValue};
use hyper::Response;
use sha2::Digest;

use super::reply::Body;

/// The page, compiled in.
pub(crate) const WEB_CLIENT: &str = include_str!("web/index.html");

/// `GET /`: the page with its security headers.
pub(crate) fn page() -> Response<Body> {
    let mut r = Response::new(Full::new(Bytes::from_static(WEB_CLIENT.as_bytes())).boxed_unsync());
    let h = r.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    // Only the page's own script runs, nothing frames it (no clickjacked Approve),
    // and it connects to this host only.
    if let Ok(csp) = HeaderValue::from_str(page_csp()) {
        h.insert(header::CONTENT_SECURITY_POLICY, csp);
    }
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    r
}

/// The web client's Content-Security-Policy: its one inline script by hash, its inline style,
/// images it makes from attachments, connections to this origin; no frames, plugins or forms.
fn page_csp() -> &'static str {
    static CSP: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    CSP.get_or_init(|| {
        let script = inline_script(WEB_CLIENT).unwrap_or_default();
        let hash = base64(&sha2::Sha256::digest(script.as_bytes()));
        format!(
            "default-src 'none'; script-src 'sha256-{hash}'; style-src 'unsafe-inline'; \
             img-src 'self' data: blob:; connect-src 'self'; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'"
        )
    })
}

/// The text of the page's one `<script>` element.
fn inline_script(page: &str) -> Option<&str> {
    let start = page.find("<script>")? + "<script>".len();
    let len = page[start..].find("</script>")?;
    Some(&page[start..start + len])
}

/// Standard base64 with padding (for the CSP hash).
fn base64(bytes: &[u8]) -> String {
    const A: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(*c.get(1).unwrap_or(&0)) << 8)
            | u32::from(*c.get(2).unwrap_or(&0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(A[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_page_csp_hashes_its_one_script() {
        assert_eq!(super::base64(b"f"), "Zg==");
        assert_eq!(super::base64(b"foobar"), "Zm9vYmFy");
        assert_eq!(super::base64(b"fooba"), "Zm9vYmE=");
        let script = super::inline_script(super::WEB_CLIENT).unwrap();
        assert!(script.len() > 1000 && !script.contains("</script>"));
        // Model output is rendered as nodes, never parsed as HTML.
        for sink in [
            "innerHTML",
            "outerHTML",
            "insertAdjacentHTML",
            "document.write",
            "eval(",
        ] {
            assert!(!script.contains(sink), "the page uses {sink}");
        }
        assert!(super::page_csp().contains("script-src 'sha256-"));
    }
}
