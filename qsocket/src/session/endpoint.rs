//! Endpoint URLs: `tcp://host:port`, `tls://host:port`, `udp://host:port`,
//! `ws://host:port/path` and `wss://host:port/path`.

use crate::Error;
use std::fmt;
use std::net::SocketAddr;

/// The transport a session runs over.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Transport {
    /// A TCP byte stream.
    Tcp,
    /// TLS over TCP (feature `tls`).
    Tls,
    /// UDP: one datagram per frame.
    Udp,
    /// WebSocket: one binary message per frame (feature `ws`).
    Ws,
    /// WebSocket over TLS (features `ws` and `tls`).
    Wss,
}

impl Transport {
    /// The URL scheme of this transport.
    pub fn scheme(self) -> &'static str {
        match self {
            Transport::Tcp => "tcp",
            Transport::Tls => "tls",
            Transport::Udp => "udp",
            Transport::Ws => "ws",
            Transport::Wss => "wss",
        }
    }

    /// Whether the transport is encrypted with TLS.
    pub fn is_tls(self) -> bool {
        matches!(self, Transport::Tls | Transport::Wss)
    }

    /// Whether the transport is a WebSocket.
    pub fn is_ws(self) -> bool {
        matches!(self, Transport::Ws | Transport::Wss)
    }
}

impl fmt::Display for Transport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.scheme())
    }
}

/// A parsed endpoint URL.
///
/// ```
/// use qsocket::session::{Endpoint, Transport};
/// let e: Endpoint = "ws://127.0.0.1:8080/chat".parse().unwrap();
/// assert_eq!(e.transport(), Transport::Ws);
/// assert_eq!(e.host(), "127.0.0.1");
/// assert_eq!(e.port(), 8080);
/// assert_eq!(e.path(), "/chat");
/// assert_eq!(e.to_string(), "ws://127.0.0.1:8080/chat");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Endpoint {
    transport: Transport,
    host: String,
    port: u16,
    path: String,
}

impl Endpoint {
    /// Parses an endpoint URL.
    pub fn parse(url: &str) -> Result<Self, Error> {
        let bad = |reason: &str| Error::InvalidEndpoint {
            url: url.to_string(),
            reason: reason.to_string(),
        };
        let (scheme, rest) = url
            .split_once("://")
            .ok_or_else(|| bad("expected scheme://host:port"))?;
        let transport = match scheme.to_ascii_lowercase().as_str() {
            "tcp" => Transport::Tcp,
            "tls" => Transport::Tls,
            "udp" => Transport::Udp,
            "ws" => Transport::Ws,
            "wss" => Transport::Wss,
            _ => return Err(bad("unknown scheme (expected tcp, tls, udp, ws or wss)")),
        };
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        if !transport.is_ws() && path != "/" {
            return Err(bad("only ws:// and wss:// endpoints have a path"));
        }
        let (host, port) = if let Some(stripped) = authority.strip_prefix('[') {
            // [v6]:port
            let (h, p) = stripped
                .split_once("]:")
                .ok_or_else(|| bad("expected [ipv6]:port"))?;
            (h, p)
        } else {
            authority
                .rsplit_once(':')
                .ok_or_else(|| bad("missing :port"))?
        };
        if host.is_empty() {
            return Err(bad("empty host"));
        }
        let port: u16 = port.parse().map_err(|_| bad("invalid port"))?;
        Ok(Endpoint {
            transport,
            host: host.to_string(),
            port,
            path: path.to_string(),
        })
    }

    /// An endpoint for a bound socket address.
    pub fn from_addr(transport: Transport, addr: SocketAddr, path: &str) -> Self {
        Endpoint {
            transport,
            host: addr.ip().to_string(),
            port: addr.port(),
            path: if transport.is_ws() {
                path.to_string()
            } else {
                "/".to_string()
            },
        }
    }

    /// The transport.
    pub fn transport(&self) -> Transport {
        self.transport
    }

    /// The host name or IP address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The WebSocket path (`/` for other transports).
    pub fn path(&self) -> &str {
        &self.path
    }

    /// `host:port` (IPv6 hosts in brackets), for resolving and connecting.
    pub fn authority(&self) -> String {
        if self.host.contains(':') {
            format!("[{}]:{}", self.host, self.port)
        } else {
            format!("{}:{}", self.host, self.port)
        }
    }

    pub(crate) async fn resolve(&self) -> Result<SocketAddr, Error> {
        let mut addrs = tokio::net::lookup_host(self.authority()).await?;
        addrs.next().ok_or_else(|| Error::InvalidEndpoint {
            url: self.to_string(),
            reason: "host resolved to no address".into(),
        })
    }
}

impl std::str::FromStr for Endpoint {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self, Error> {
        Endpoint::parse(s)
    }
}

impl fmt::Display for Endpoint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}://{}", self.transport, self.authority())?;
        if self.transport.is_ws() {
            f.write_str(&self.path)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        for (url, t) in [
            ("tcp://127.0.0.1:1", Transport::Tcp),
            ("tls://localhost:2", Transport::Tls),
            ("udp://127.0.0.1:3", Transport::Udp),
            ("ws://127.0.0.1:4/x", Transport::Ws),
            ("wss://localhost:5/y/z", Transport::Wss),
        ] {
            let e = Endpoint::parse(url).expect(url);
            assert_eq!(e.transport(), t);
            assert_eq!(e.to_string(), url);
        }
        let v6 = Endpoint::parse("tcp://[::1]:9").expect("v6");
        assert_eq!(v6.host(), "::1");
        assert_eq!(v6.authority(), "[::1]:9");
        assert_eq!(Endpoint::parse("ws://h:1").expect("ws").path(), "/");
    }

    #[test]
    fn rejects_bad_urls() {
        for url in [
            "127.0.0.1:1",
            "http://h:1",
            "tcp://h",
            "tcp://h:99999",
            "tcp://:1",
            "tcp://h:1/path",
            "tcp://[::1:1",
        ] {
            assert!(Endpoint::parse(url).is_err(), "{url} should be rejected");
        }
    }
}
