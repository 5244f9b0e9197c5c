//! The HTTP side of the protocol (§4.2, §5.2, §5.5, §12).

use std::time::Duration;

use serde_json::Value;

use super::http_error;
use crate::error::Error;
use crate::frame::{ClientFrame, OpenFrame, ServerFrame};
use crate::url::{Base, encode_component};

/// An HTTP client bound to one mount point `B` (for example `http://127.0.0.1:8080/realtime`).
///
/// Cheap to clone (the connection pool is shared). Every method performs exactly one request.
#[derive(Debug, Clone)]
pub struct Http {
    client: reqwest::Client,
    base: String,
    headers: Vec<(String, String)>,
    timeout: Option<Duration>,
}

/// A complete HTTP response, as returned by [`Http::request_raw`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawResponse {
    /// Status code.
    pub status: u16,
    /// Response headers (names in lowercase), in the order received.
    pub headers: Vec<(String, String)>,
    /// Body bytes.
    pub body: Vec<u8>,
}

impl RawResponse {
    /// The first header named `name` (case-insensitive).
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// The body as UTF-8 text (lossy).
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl Http {
    /// A client for mount point `base` (`http://host:port/path`, trailing slash optional) with a
    /// fresh connection pool.
    ///
    /// The base is not validated here; an unusable base makes every request fail.
    pub fn new(base: &str) -> Http {
        Http::with_client(base, reqwest::Client::new())
    }

    /// A client for mount point `base` that uses an existing `reqwest` client (to share a pool).
    pub fn with_client(base: &str, client: reqwest::Client) -> Http {
        let base = match Base::parse(base) {
            Ok(b) => b.http(),
            Err(_) => base.trim_end_matches('/').to_owned(),
        };
        Http {
            client,
            base,
            headers: Vec::new(),
            timeout: None,
        }
    }

    /// Sets (`Some`) or removes (`None`) the `Origin` header sent with every request.
    #[must_use]
    pub fn with_origin(mut self, origin: Option<&str>) -> Http {
        self.headers
            .retain(|(k, _)| !k.eq_ignore_ascii_case("origin"));
        if let Some(o) = origin {
            self.headers.push(("Origin".to_owned(), o.to_owned()));
        }
        self
    }

    /// Adds a header sent with every request.
    #[must_use]
    pub fn with_header(mut self, name: &str, value: &str) -> Http {
        self.headers.push((name.to_owned(), value.to_owned()));
        self
    }

    /// Sets a time-out for every request (none by default; long polls are held for `hold` ms).
    /// A request that times out fails with [`Error::Timeout`].
    #[must_use]
    pub fn with_timeout(mut self, timeout: Option<Duration>) -> Http {
        self.timeout = timeout;
        self
    }

    /// The mount point URL this client talks to.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `POST B/open?v=1`, body `{"auth": auth}` (or an empty body without `auth`).
    /// Returns the open frame of a `200` answer; other statuses become [`Error::Http`].
    pub async fn open(&self, auth: Option<&Value>) -> Result<OpenFrame, Error> {
        let body = match auth {
            Some(a) => serde_json::json!({ "auth": a }).to_string().into_bytes(),
            None => Vec::new(),
        };
        let ctype = auth.map(|_| "application/json");
        let resp = self.send("POST", "/open?v=1", ctype, Some(body)).await?;
        let resp = expect_json_ok(resp)?;
        let v: Value = serde_json::from_slice(&resp.body)
            .map_err(|e| Error::protocol(format!("open answer is not JSON: {e}")))?;
        match ServerFrame::from_json(&v)? {
            ServerFrame::Open(o) => Ok(o),
            other => Err(Error::protocol(format!(
                "open answer is not an open frame: {other:?}"
            ))),
        }
    }

    /// `GET B/poll?v=1&sid=SID&ack=ACK&wait=1|0`, without an attach number (as a client older
    /// than `att` does). Returns the frames of a `200` answer.
    pub async fn poll(&self, sid: &str, ack: u64, wait: bool) -> Result<Vec<ServerFrame>, Error> {
        self.poll_request(sid, ack, wait, None).await
    }

    /// `GET B/poll?v=1&sid=SID&ack=ACK&wait=1|0&att=ATT`: a poll with attach number `att`
    /// (protocol §9, "Ordering attaches"; a client raises it for every transport request).
    /// Returns the frames of a `200` answer; a stale poll gets `409 superseded`.
    pub async fn poll_att(
        &self,
        sid: &str,
        ack: u64,
        wait: bool,
        att: u64,
    ) -> Result<Vec<ServerFrame>, Error> {
        self.poll_request(sid, ack, wait, Some(att)).await
    }

    async fn poll_request(
        &self,
        sid: &str,
        ack: u64,
        wait: bool,
        att: Option<u64>,
    ) -> Result<Vec<ServerFrame>, Error> {
        let mut path = format!(
            "/poll?v=1&sid={}&ack={ack}&wait={}",
            encode_component(sid),
            u8::from(wait)
        );
        if let Some(att) = att {
            path.push_str(&format!("&att={att}"));
        }
        let resp = self.send("GET", &path, None, None).await?;
        let resp = expect_json_ok(resp)?;
        ServerFrame::parse_array(&resp.body)
    }

    /// `POST B/poll?v=1&sid=SID` with `frames` as a JSON array. Returns the frames of a `200`
    /// answer (an `ack`, maybe a `pong` and a `close`).
    pub async fn post(&self, sid: &str, frames: &[ClientFrame]) -> Result<Vec<ServerFrame>, Error> {
        self.post_raw(sid, ClientFrame::encode_array(frames).into_bytes())
            .await
    }

    /// `POST B/poll?v=1&sid=SID` with an arbitrary body (`Content-Type: application/json`).
    pub async fn post_raw(&self, sid: &str, body: Vec<u8>) -> Result<Vec<ServerFrame>, Error> {
        let path = format!("/poll?v=1&sid={}", encode_component(sid));
        let resp = self
            .send("POST", &path, Some("application/json"), Some(body))
            .await?;
        let resp = expect_json_ok(resp)?;
        ServerFrame::parse_array(&resp.body)
    }

    /// `GET B/sse?v=1&sid=SID&ack=ACK&att=ATT` (protocol §5.7): a stream of Server-Sent Events,
    /// resuming session `sid`. The stream is not bounded by this client's time-out (it goes on);
    /// a non-`200` answer becomes [`Error::Http`].
    pub async fn sse(&self, sid: &str, ack: u64, att: u64) -> Result<SseStream, Error> {
        let url = format!(
            "{}/sse?v=1&sid={}&ack={ack}&att={att}",
            self.base,
            encode_component(sid)
        );
        let mut req = self.client.get(url).header("Accept", "text/event-stream");
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        let resp = req.send().await.map_err(map_reqwest)?;
        let status = resp.status().as_u16();
        if status != 200 {
            let body = resp.bytes().await.map_err(map_reqwest)?;
            return Err(http_error(status, &body));
        }
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or("");
        if !ct.to_ascii_lowercase().starts_with("text/event-stream") {
            return Err(Error::protocol(format!(
                "200 answer with Content-Type {ct:?}, expected text/event-stream"
            )));
        }
        Ok(SseStream {
            response: resp,
            buffer: Vec::new(),
        })
    }

    /// `GET B<path_and_query>` (for example `"/client.js"` or `"/poll?v=2&sid=x"`): status and
    /// body, whatever the status.
    pub async fn get_raw(&self, path_and_query: &str) -> Result<(u16, Vec<u8>), Error> {
        let r = self.send("GET", path_and_query, None, None).await?;
        Ok((r.status, r.body))
    }

    /// Any request relative to the mount point, with extra headers (on top of the client's own)
    /// and an optional body. Returns the full response whatever the status.
    pub async fn request_raw(
        &self,
        method: &str,
        path_and_query: &str,
        headers: &[(&str, &str)],
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, Error> {
        let method = reqwest::Method::from_bytes(method.as_bytes())
            .map_err(|e| Error::InvalidUrl(format!("bad method {method:?}: {e}")))?;
        let mut req = self
            .client
            .request(method, format!("{}{}", self.base, path_and_query));
        for (k, v) in &self.headers {
            req = req.header(k.as_str(), v.as_str());
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        if let Some(t) = self.timeout {
            req = req.timeout(t);
        }
        if let Some(b) = body {
            req = req.body(b);
        }
        let resp = req.send().await.map_err(map_reqwest)?;
        let status = resp.status().as_u16();
        let headers = resp
            .headers()
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str().to_owned(),
                    String::from_utf8_lossy(v.as_bytes()).into_owned(),
                )
            })
            .collect();
        let body = resp.bytes().await.map_err(map_reqwest)?.to_vec();
        Ok(RawResponse {
            status,
            headers,
            body,
        })
    }

    async fn send(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Result<RawResponse, Error> {
        let ct: Vec<(&str, &str)> = content_type
            .map(|c| vec![("Content-Type", c)])
            .unwrap_or_default();
        self.request_raw(method, path, &ct, body).await
    }
}

/// A stream of Server-Sent Events from `GET B/sse` (protocol §5.7), read one event at a time.
#[derive(Debug)]
pub struct SseStream {
    response: reqwest::Response,
    /// Bytes received and not parsed yet (a chunk may end anywhere, inside a character too).
    buffer: Vec<u8>,
}

/// One event of an [`SseStream`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    /// The `id` field, if the event has one.
    pub id: Option<String>,
    /// The `event` field (`superseded`, `moved`, `recycle`), `None` for frames.
    pub name: Option<String>,
    /// The data lines, joined with line breaks: a frame's JSON, or empty.
    pub data: String,
}

impl SseStream {
    /// The next event, comments and heartbeats skipped; `Ok(None)` when the stream has ended.
    pub async fn next(&mut self) -> Result<Option<SseEvent>, Error> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|pair| pair == b"\n\n") {
                let block: Vec<u8> = self.buffer.drain(..end + 2).collect();
                let block = String::from_utf8(block)
                    .map_err(|_| Error::protocol("an event that is not UTF-8"))?;
                if let Some(event) = parse_event(&block) {
                    return Ok(Some(event));
                }
                continue;
            }
            match self.response.chunk().await.map_err(map_reqwest)? {
                Some(chunk) => self.buffer.extend_from_slice(&chunk),
                None => return Ok(None),
            }
        }
    }
}

/// One event block (its lines, without the blank line that ends it) as the HTML standard's
/// event stream parsing reads it; `None` for a block without data (a comment, a `retry`).
fn parse_event(block: &str) -> Option<SseEvent> {
    let mut event = SseEvent {
        id: None,
        name: None,
        data: String::new(),
    };
    let mut has_data = false;
    for line in block.lines() {
        if line.is_empty() || line.starts_with(':') {
            continue;
        }
        let (field, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match field {
            "id" => event.id = Some(value.to_owned()),
            "event" => event.name = Some(value.to_owned()),
            "data" => {
                if has_data {
                    event.data.push('\n');
                }
                event.data.push_str(value);
                has_data = true;
            }
            _ => {}
        }
    }
    has_data.then_some(event)
}

/// Turns a non-200 answer into [`Error::Http`] and checks the content type of a 200 answer.
fn expect_json_ok(resp: RawResponse) -> Result<RawResponse, Error> {
    if resp.status != 200 {
        return Err(http_error(resp.status, &resp.body));
    }
    let ct = resp.header("content-type").unwrap_or("");
    if !ct.to_ascii_lowercase().starts_with("application/json") {
        return Err(Error::protocol(format!(
            "200 answer with Content-Type {ct:?}, expected application/json"
        )));
    }
    Ok(resp)
}

fn map_reqwest(e: reqwest::Error) -> Error {
    if e.is_timeout() {
        Error::Timeout
    } else {
        // include the source chain: reqwest's own Display is terse
        let mut msg = e.to_string();
        let mut src = std::error::Error::source(&e);
        while let Some(s) = src {
            msg.push_str(": ");
            msg.push_str(&s.to_string());
            src = s.source();
        }
        Error::Io(msg)
    }
}
