//! Minimal URL handling: percent-encoding of query components and splitting a mount URL.

use crate::error::Error;

/// Percent-encodes `s` for use as a query component: every byte except the RFC 3986 unreserved
/// characters (`A-Z a-z 0-9 - . _ ~`) becomes `%XX`.
pub(crate) fn encode_component(s: &str) -> String {
    const HEX: &[u8; 16] = b"0123456789ABCDEF";
    let mut out = String::with_capacity(s.len());
    for &b in s.as_bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(char::from(b));
        } else {
            out.push('%');
            out.push(char::from(HEX[usize::from(b >> 4)]));
            out.push(char::from(HEX[usize::from(b & 15)]));
        }
    }
    out
}

/// A mount point split into its parts.
#[derive(Debug, Clone)]
pub(crate) struct Base {
    /// `host:port` (port defaulted to 80).
    pub(crate) authority: String,
    /// The `Host` header value as written in the URL.
    pub(crate) host_header: String,
    /// Path prefix without trailing slash (may be empty).
    pub(crate) path: String,
}

impl Base {
    /// Parses `http://host[:port][/path]` (or `ws://...`).
    pub(crate) fn parse(base: &str) -> Result<Base, Error> {
        let rest = base
            .strip_prefix("http://")
            .or_else(|| base.strip_prefix("ws://"))
            .ok_or_else(|| {
                Error::InvalidUrl(format!(
                    "{base}: only http:// and ws:// mount points are supported"
                ))
            })?;
        let (authority, path) = match rest.find(['/', '?', '#']) {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, ""),
        };
        if path.contains(['?', '#']) {
            return Err(Error::InvalidUrl(format!(
                "{base}: the mount point must not have a query or fragment"
            )));
        }
        if authority.is_empty() || authority.contains('@') {
            return Err(Error::InvalidUrl(format!("{base}: bad host")));
        }
        let has_port = match authority.rfind(':') {
            Some(i) => !authority[i..].contains(']'),
            None => false,
        };
        let full = if has_port {
            authority.to_owned()
        } else {
            format!("{authority}:80")
        };
        Ok(Base {
            authority: full,
            host_header: authority.to_owned(),
            path: path.trim_end_matches('/').to_owned(),
        })
    }

    /// `http://authority/path`
    pub(crate) fn http(&self) -> String {
        format!("http://{}{}", self.host_header, self.path)
    }

    /// `ws://authority/path`
    pub(crate) fn ws(&self) -> String {
        format!("ws://{}{}", self.host_header, self.path)
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn encodes() {
        assert_eq!(encode_component("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(
            encode_component(r#"{"t":"안 +&="}"#),
            "%7B%22t%22%3A%22%EC%95%88%20%2B%26%3D%22%7D"
        );
    }

    #[test]
    fn parses_base() {
        let b = Base::parse("http://127.0.0.1:8080/realtime/").unwrap();
        assert_eq!(b.authority, "127.0.0.1:8080");
        assert_eq!(b.path, "/realtime");
        assert_eq!(b.ws(), "ws://127.0.0.1:8080/realtime");
        let b = Base::parse("http://localhost").unwrap();
        assert_eq!(b.authority, "localhost:80");
        assert_eq!(b.http(), "http://localhost");
        let b = Base::parse("http://[::1]/x").unwrap();
        assert_eq!(b.authority, "[::1]:80");
        let b = Base::parse("http://[::1]:9/x").unwrap();
        assert_eq!(b.authority, "[::1]:9");
        assert!(Base::parse("https://x").is_err());
        assert!(Base::parse("http://x/y?z").is_err());
    }
}
