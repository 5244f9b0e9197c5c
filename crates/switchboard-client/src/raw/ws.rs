//! The WebSocket side of the protocol (§4.1, §5.1).

use std::collections::VecDeque;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use serde_json::Value;
use tokio::net::TcpStream;
use tokio_tungstenite::WebSocketStream;
use tokio_tungstenite::tungstenite::client::IntoClientRequest as _;
use tokio_tungstenite::tungstenite::http::{HeaderName, HeaderValue};
use tokio_tungstenite::tungstenite::{self, Message as WsMessage};

use super::http_error;
use crate::error::Error;
use crate::frame::{ClientFrame, OpenFrame, ServerFrame};
use crate::url::{Base, encode_component};

/// One WebSocket connection to `B/ws`, over a plain TCP stream owned by this value.
///
/// The connections [`connect`](WsConn::connect) opens ask for batches (`batch=1`, §5.1): the
/// server then sends JSON arrays of frames, and [`recv`](WsConn::recv) hands them out one frame
/// at a time. Single-frame messages (a server or a raw connection without batching) work alike.
#[derive(Debug)]
pub struct WsConn {
    ws: WebSocketStream<TcpStream>,
    /// Frames of the last batch not yet returned by `recv`.
    pending: VecDeque<ServerFrame>,
    closed: bool,
}

impl WsConn {
    /// Opens `GET B/ws?v=1&batch=1[&sid=SID&ack=ACK][&auth=URL-encoded JSON]` and reads the first
    /// frame, which must be `open`.
    ///
    /// With `sid` the session is resumed (`ack` is sent only then); without it a new session is
    /// opened and `auth` is sent. `origin` sets the `Origin` header.
    ///
    /// Errors: a refused upgrade gives [`Error::Http`] (e.g. `403 origin_not_allowed`); a close
    /// instead of the open frame (`4401`, `4404`, `4503`, ...) gives [`Error::WsClosed`].
    pub async fn connect(
        base: &str,
        sid: Option<&str>,
        ack: u64,
        auth: Option<&Value>,
        origin: Option<&str>,
    ) -> Result<(WsConn, OpenFrame), Error> {
        let headers: Vec<(&str, &str)> = origin.map(|o| vec![("Origin", o)]).unwrap_or_default();
        WsConn::connect_with(base, sid, ack, auth, &headers).await
    }

    /// Like [`connect`](WsConn::connect), with arbitrary extra request headers (for example
    /// `Origin` or `Cookie`) instead of only `origin`.
    pub async fn connect_with(
        base: &str,
        sid: Option<&str>,
        ack: u64,
        auth: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(WsConn, OpenFrame), Error> {
        WsConn::connect_request(base, sid, ack, None, auth, headers).await
    }

    /// Like [`connect_with`](WsConn::connect_with), with attach number `att` (`&att=ATT`,
    /// protocol §9, "Ordering attaches"; a client raises it for every transport request). A
    /// stale socket is closed `4100` instead of the open frame: [`Error::WsClosed`].
    pub async fn connect_att(
        base: &str,
        sid: Option<&str>,
        ack: u64,
        att: u64,
        auth: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(WsConn, OpenFrame), Error> {
        WsConn::connect_request(base, sid, ack, Some(att), auth, headers).await
    }

    async fn connect_request(
        base: &str,
        sid: Option<&str>,
        ack: u64,
        att: Option<u64>,
        auth: Option<&Value>,
        headers: &[(&str, &str)],
    ) -> Result<(WsConn, OpenFrame), Error> {
        let mut query = String::from("v=1&batch=1");
        if let Some(sid) = sid {
            query.push_str(&format!("&sid={}&ack={ack}", encode_component(sid)));
        }
        if let Some(att) = att {
            query.push_str(&format!("&att={att}"));
        }
        if let Some(auth) = auth {
            query.push_str("&auth=");
            query.push_str(&encode_component(&auth.to_string()));
        }
        WsConn::connect_query(base, &query, headers).await
    }

    async fn connect_query(
        base: &str,
        query: &str,
        headers: &[(&str, &str)],
    ) -> Result<(WsConn, OpenFrame), Error> {
        let mut conn = WsConn::connect_raw(base, &format!("/ws?{query}"), headers).await?;
        loop {
            match conn.recv().await? {
                ServerFrame::Open(open) => return Ok((conn, open)),
                // Frames of unknown types are ignored wherever they come (protocol §3).
                ServerFrame::Unknown { .. } => {}
                other => {
                    return Err(Error::protocol(format!(
                        "first WebSocket frame is not open: {other:?}"
                    )));
                }
            }
        }
    }

    /// Performs the WebSocket upgrade of `B<path_and_query>` (e.g. `"/ws?v=2"`) with extra
    /// request headers, without reading anything. For crafting unusual requests.
    pub async fn connect_raw(
        base: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
    ) -> Result<WsConn, Error> {
        let base = Base::parse(base)?;
        let url = format!("{}{}", base.ws(), path_and_query);
        let mut request = url
            .as_str()
            .into_client_request()
            .map_err(|e| Error::InvalidUrl(format!("{url}: {e}")))?;
        for (k, v) in headers {
            let name = HeaderName::try_from(*k)
                .map_err(|e| Error::InvalidUrl(format!("bad header name {k:?}: {e}")))?;
            let value = HeaderValue::try_from(*v)
                .map_err(|e| Error::InvalidUrl(format!("bad header value {v:?}: {e}")))?;
            request.headers_mut().append(name, value);
        }
        let stream = TcpStream::connect(base.authority.as_str())
            .await
            .map_err(Error::io)?;
        stream.set_nodelay(true).map_err(Error::io)?;
        match tokio_tungstenite::client_async(request, stream).await {
            Ok((ws, _response)) => Ok(WsConn {
                ws,
                pending: VecDeque::new(),
                closed: false,
            }),
            Err(tungstenite::Error::Http(resp)) => {
                let status = resp.status().as_u16();
                let body = resp.body().clone().unwrap_or_default();
                Err(http_error(status, &body))
            }
            Err(e) => Err(Error::io(format!("WebSocket handshake failed: {e}"))),
        }
    }

    /// Sends each frame as its own text message and flushes once at the end.
    pub async fn send(&mut self, frames: &[ClientFrame]) -> Result<(), Error> {
        for f in frames {
            self.ws
                .feed(WsMessage::text(f.to_text()))
                .await
                .map_err(map_ws_err)?;
        }
        self.ws.flush().await.map_err(map_ws_err)
    }

    /// Sends an arbitrary text message (for malformed-input tests).
    pub async fn send_raw_text(&mut self, text: &str) -> Result<(), Error> {
        self.ws
            .send(WsMessage::text(text.to_owned()))
            .await
            .map_err(map_ws_err)
    }

    /// Sends a binary WebSocket message (which the protocol forbids: the server answers with an
    /// error frame).
    pub async fn send_raw_binary(&mut self, bytes: Vec<u8>) -> Result<(), Error> {
        self.ws
            .send(WsMessage::binary(bytes))
            .await
            .map_err(map_ws_err)
    }

    /// Receives the next protocol frame (of a batch, the next one in it). WebSocket-level pings
    /// are answered automatically and pongs skipped.
    ///
    /// A WebSocket close gives `Err(Error::WsClosed { code: Some(code), reason })`; a connection
    /// that ends without a close frame gives `Err(Error::WsClosed { code: None, .. })`. A text
    /// message that is neither a valid frame nor an array of valid frames gives
    /// [`Error::Protocol`] (the connection stays usable).
    ///
    /// Cancel-safe: dropping the future loses nothing.
    pub async fn recv(&mut self) -> Result<ServerFrame, Error> {
        loop {
            if let Some(frame) = self.pending.pop_front() {
                return Ok(frame);
            }
            if self.closed {
                return Err(Error::WsClosed {
                    code: None,
                    reason: "connection already closed".into(),
                });
            }
            match self.ws.next().await {
                Some(Ok(WsMessage::Text(text))) if text.as_str().starts_with('[') => {
                    self.pending = ServerFrame::parse_array(text.as_bytes())?.into();
                }
                Some(Ok(WsMessage::Text(text))) => return ServerFrame::parse(text.as_str()),
                Some(Ok(WsMessage::Binary(_))) => {
                    return Err(Error::protocol("server sent a binary WebSocket message"));
                }
                Some(Ok(WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_))) => {
                    // tungstenite queued the pong; it goes out with the next read or write
                }
                Some(Ok(WsMessage::Close(frame))) => {
                    self.closed = true;
                    // let tungstenite complete the close handshake
                    let _ = tokio::time::timeout(Duration::from_millis(200), self.ws.flush()).await;
                    return Err(match frame {
                        Some(f) => Error::WsClosed {
                            code: Some(u16::from(f.code)),
                            reason: f.reason.as_str().to_owned(),
                        },
                        None => Error::WsClosed {
                            code: Some(1005),
                            reason: String::new(),
                        },
                    });
                }
                Some(Err(e)) => {
                    self.closed = true;
                    return Err(Error::WsClosed {
                        code: None,
                        reason: e.to_string(),
                    });
                }
                None => {
                    self.closed = true;
                    return Err(Error::WsClosed {
                        code: None,
                        reason: "connection ended".into(),
                    });
                }
            }
        }
    }

    /// [`recv`](WsConn::recv) with a time-out: `Ok(None)` if nothing arrived within `d`.
    pub async fn recv_timeout(&mut self, d: Duration) -> Result<Option<ServerFrame>, Error> {
        match tokio::time::timeout(d, self.recv()).await {
            Ok(r) => r.map(Some),
            Err(_) => Ok(None),
        }
    }

    /// Kills the connection without any goodbye: sets `SO_LINGER` to 0 and drops the socket, so
    /// the kernel sends a TCP RST and no WebSocket close frame goes out.
    pub fn drop_abruptly(self) {
        let _ = self.ws.get_ref().set_zero_linger();
        drop(self);
    }

    /// Performs the WebSocket close handshake (close code 1000) and waits (up to 5 s) for the
    /// server's answer. Does NOT send the protocol `close` frame: the session stays alive.
    pub async fn close(mut self) -> Result<(), Error> {
        if self.closed {
            return Ok(());
        }
        self.ws.close(None).await.map_err(map_ws_err)?;
        let drain = async {
            while let Some(r) = self.ws.next().await {
                if r.is_err() {
                    break;
                }
            }
        };
        tokio::time::timeout(Duration::from_secs(5), drain)
            .await
            .map_err(|_| Error::Timeout)
    }

    /// The local address of the TCP connection.
    pub fn local_addr(&self) -> Result<std::net::SocketAddr, Error> {
        self.ws.get_ref().local_addr().map_err(Error::io)
    }
}

fn map_ws_err(e: tungstenite::Error) -> Error {
    match e {
        tungstenite::Error::ConnectionClosed | tungstenite::Error::AlreadyClosed => {
            Error::WsClosed {
                code: None,
                reason: e.to_string(),
            }
        }
        other => Error::io(other),
    }
}
