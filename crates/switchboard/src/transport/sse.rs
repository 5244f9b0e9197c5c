//! `GET /sse`: Server-Sent Events, a stream of the session's frames down one HTTP response
//! (`docs/protocol.md` §5.7). The client sends and acknowledges over `POST /poll`.
//!
//! Every frame is one event, its data the frame's JSON (which never holds a raw line break).
//! Message frames carry an event id, `<sid>.<seq>`, so that a browser that reconnects by itself
//! sends `Last-Event-ID` and resumes the right session at the right place even when the URL it
//! reconnects to opened the session. The stream ends, on purpose, with an event of its own name:
//! `superseded` (another transport took over), `moved` (the session went to another node) or
//! `recycle` (the stream has carried [`RECYCLE_BYTES`] or lasted [`RECYCLE_AFTER`]: the client
//! opens the next one, so that no intermediary's buffer or time-out is stretched).
//!
//! 100 ms after the opening chunk, one `ping` event goes in a write of its own: the probe, by which
//! a client tells a stream that an intermediary holds back after its first chunk.
//!
//! The stream is a body the connection pulls: while the client reads slowly, nothing is drained
//! ahead of it; while it is idle, a comment goes out every [`HEARTBEAT`] for the idle time-outs
//! on the way, and one [`NUDGE_AFTER`] a write of messages, for proxies that hand on the tail of
//! what they read only when more comes.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::time::Duration;

use axum::Extension;
use axum::body::{Body, Bytes};
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, Uri, header};
use axum::response::{IntoResponse, Response};
use tokio::time::{Instant, sleep_until};
use tracing::Instrument as _;

use crate::auth::Handshake;
use crate::error::ApiError;
use crate::mount::{Attached, Mounted};
use crate::protocol::{self, OpenInfo};
use crate::session::{Drain, Session, SessionId, TransportKind};
use crate::transport::Params;

/// The most time between two writes to an idle stream: below the 30 s after which common
/// proxies and load balancers cut an idle response.
pub(crate) const HEARTBEAT: Duration = Duration::from_secs(15);
/// A stream ends (`recycle`) once it has carried this many bytes...
pub(crate) const RECYCLE_BYTES: usize = 256 * 1024;
/// ...or lasted this long.
pub(crate) const RECYCLE_AFTER: Duration = Duration::from_secs(300);
/// About how many bytes of messages one chunk of the stream holds.
const CHUNK: usize = 64 * 1024;
/// How long the browser waits before reconnecting by itself (the `retry` field), in ms.
const RETRY_MS: u32 = 1000;
/// The probe `ping` event follows the opening chunk after this long, in a write of its own: a
/// client that gets the open event but not the ping is behind an intermediary that holds the
/// stream back (one that passes the first chunk and then collects small ones, as nginx does when
/// its response buffering is forced on), and moves to long polling.
const PROBE_AFTER: Duration = Duration::from_millis(100);
/// The probe event.
const PROBE: &str = "data: {\"t\":\"ping\"}\n\n";
/// A stream that has written messages and then gone quiet for this long gets one comment line,
/// the nudge. nginx with its response buffering forced on now and then keeps the tail of what it
/// read from us until our next write (seen: 1 run in about 17, the tail held until the heartbeat,
/// 15 s); the nudge is that next write, so the tail waits this long instead.
const NUDGE_AFTER: Duration = Duration::from_millis(50);

/// The `GET /sse` handler: resumes (`sid`, or the `Last-Event-ID` header) or opens a session,
/// attaches to it and streams its frames.
pub(crate) async fn stream<U: Clone + Send + Sync + 'static>(
    State(mounted): State<Mounted<U>>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    headers: HeaderMap,
    uri: Uri,
) -> Response {
    let peer = peer.map(|Extension(ConnectInfo(peer))| peer);
    match start(&mounted, peer, headers, uri).await {
        Ok(response) => response,
        Err(err) => {
            tracing::debug!(error = err.code, "event stream refused");
            err.into_response()
        }
    }
}

/// The last event id the browser saw, as `(sid, seq)`: `<32 hex digits>.<decimal>`.
fn last_event_id(headers: &HeaderMap) -> Option<(String, u64)> {
    let value = headers.get("last-event-id")?.to_str().ok()?;
    let (sid, seq) = value.trim().split_once('.')?;
    let seq: u64 = seq.parse().ok()?;
    (SessionId::parse(sid).is_some() && seq <= protocol::MAX_SEQ).then(|| (sid.to_string(), seq))
}

async fn start<U: Clone + Send + Sync + 'static>(
    mounted: &Mounted<U>,
    peer: Option<SocketAddr>,
    headers: HeaderMap,
    uri: Uri,
) -> Result<Response, ApiError> {
    let params = Params::from_uri(&uri)?;
    let last = last_event_id(&headers);
    // `sid` names the session; without it, the one the browser's last event came from (its own
    // reconnect to the URL that opened the session). Its acknowledgement: the larger of `ack`
    // and that event's sequence number, when the event is of this session.
    let sid = params
        .sid
        .clone()
        .or_else(|| last.as_ref().map(|(sid, _)| sid.clone()));
    let (session, resumed, ack) = match sid {
        Some(sid) => {
            let session = find(mounted, &sid).await?;
            let seen = last
                .filter(|(last_sid, _)| last_sid.eq_ignore_ascii_case(&sid))
                .map_or(0, |(_, seq)| seq);
            let ack = params.ack.unwrap_or(0).max(seen);
            (session, true, ack)
        }
        None => {
            let auth = match &params.auth {
                Some(text) => serde_json::from_str::<Option<serde_json::Value>>(text)
                    .map_err(|err| ApiError::bad_request(format!("auth is not JSON: {err}")))?,
                None => None,
            };
            let session = mounted
                .open_session(Handshake {
                    headers,
                    uri,
                    auth,
                    transport: TransportKind::Sse,
                    peer,
                    client_addr: None,
                })
                .await?;
            (session, false, 0)
        }
    };
    let client_ack = session.shared.ack(ack);
    let span = tracing::info_span!(parent: &session.shared.span(), "sse");
    let attached =
        span.in_scope(|| mounted.attach_transport(&session, TransportKind::Sse, params.att()))?;
    let config = &session.shared.config;
    let open = protocol::open_frame(&OpenInfo {
        sid: &session.shared.sid.to_hex(),
        resumed,
        ack: session.shared.inbound_ack(),
        ping_ms: config.ping_interval.as_millis() as u64,
        hold_ms: config.poll_hold.as_millis() as u64,
        resume_ms: config.resume_window.as_millis() as u64,
        max_message: config.max_message,
        max_body: config.max_body,
    });
    let mut first = format!("retry: {RETRY_MS}\n");
    write_event(&mut first, &session, Some(client_ack), &open);
    let state = Stream {
        transport: attached,
        sent: client_ack,
        started: Instant::now(),
        written: first.len(),
        first: Some(first),
        probe_at: None,
        nudge_at: None,
        last_write: Instant::now(),
        done: false,
        span,
    };
    let body = Body::from_stream(futures_util::stream::unfold(state, |stream| {
        let span = stream.span.clone();
        next_chunk(stream).instrument(span)
    }));
    let mut response = (StatusCode::OK, body).into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // nginx buffers proxied responses unless told not to (`docs/deployment.md`).
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    Ok(response)
}

/// The session `sid` names: here, or (on a node of a cluster) taken over from the node that has
/// it, as a WebSocket does: a stream cannot be forwarded.
async fn find<U: Clone + Send + Sync + 'static>(
    mounted: &Mounted<U>,
    sid: &str,
) -> Result<Session<U>, ApiError> {
    match mounted.lookup(sid) {
        Ok(session) => Ok(session),
        Err(err) if err.code == "unknown_session" && mounted.inner.node.is_some() => {
            match SessionId::parse(sid) {
                Some(sid) => mounted.take_over(sid).await,
                None => Err(err),
            }
        }
        Err(err) => Err(err),
    }
}

/// Appends one event to `out`: `id: <sid>.<seq>` when `seq` is given, then the frame as data.
fn write_event<U>(out: &mut String, session: &Session<U>, seq: Option<u64>, frame: &str) {
    if let Some(seq) = seq {
        write_id(out, session, seq);
    }
    out.push_str("data: ");
    out.push_str(frame);
    out.push_str("\n\n");
}

fn write_id<U>(out: &mut String, session: &Session<U>, seq: u64) {
    out.push_str("id: ");
    out.push_str(&session.shared.sid.to_hex());
    out.push('.');
    protocol::write_decimal(out, seq);
    out.push('\n');
}

/// An event that ends the stream on purpose, with no data: `superseded`, `moved`, `recycle`.
fn end_event(out: &mut String, name: &str) {
    out.push_str("event: ");
    out.push_str(name);
    out.push_str("\ndata:\n\n");
}

/// The state of one stream between chunks.
struct Stream<U> {
    transport: Attached<U>,
    /// The highest sequence number written (or acknowledged when the stream started).
    sent: u64,
    started: Instant,
    /// Bytes written so far (for recycling).
    written: usize,
    /// The opening chunk (`retry` and the open frame), until it is taken.
    first: Option<String>,
    /// When the probe `ping` is due, once the opening chunk has been taken and until the probe
    /// has been written.
    probe_at: Option<Instant>,
    /// When the nudge is due: set by a write of messages, cleared by any later write.
    nudge_at: Option<Instant>,
    last_write: Instant,
    /// The last chunk has been taken.
    done: bool,
    /// The stream's span, a child of its session's.
    span: tracing::Span,
}

/// The next chunk of the stream: what the session has released after `sent`, a heartbeat, or
/// the end.
async fn next_chunk<U: Clone + Send + Sync + 'static>(
    mut stream: Stream<U>,
) -> Option<(Result<Bytes, Infallible>, Stream<U>)> {
    if let Some(first) = stream.first.take() {
        stream.probe_at = Some(Instant::now() + PROBE_AFTER);
        return Some((Ok(Bytes::from(first)), stream));
    }
    if stream.done {
        return None;
    }
    let session = stream.transport.session().clone();
    let shared = &session.shared;
    loop {
        let notified = shared.outbound.notified();
        tokio::pin!(notified);
        notified.as_mut().enable();
        let mut out = String::new();
        let drained = shared.drain(
            stream.transport.generation(),
            stream.sent,
            CHUNK,
            |seq, message| {
                write_id(&mut out, &session, seq);
                out.push_str("data: ");
                protocol::write_message_frame(&mut out, seq, message);
                out.push_str("\n\n");
            },
        );
        let wake_at = match drained {
            Drain::Superseded => {
                end_event(&mut out, "superseded");
                stream.done = true;
                None
            }
            Drain::Moved => {
                end_event(&mut out, "moved");
                stream.done = true;
                None
            }
            Drain::Ready { last, close } => {
                if let Some(last) = last {
                    stream.sent = last;
                }
                if let Some(reason) = close {
                    write_event(
                        &mut out,
                        &session,
                        None,
                        &protocol::close_frame(reason.code(), reason.reason()),
                    );
                    stream.done = true;
                }
                None
            }
            Drain::Idle { wake_at } => wake_at.map(Instant::from_std),
        };
        let now = Instant::now();
        if !stream.done && stream.probe_at.is_some_and(|at| now >= at) {
            stream.probe_at = None;
            out.push_str(PROBE);
        }
        if !out.is_empty() {
            stream.written += out.len();
            if !stream.done
                && (stream.written >= RECYCLE_BYTES || now >= stream.started + RECYCLE_AFTER)
            {
                end_event(&mut out, "recycle");
                stream.done = true;
            }
            stream.last_write = now;
            stream.nudge_at = (!stream.done).then_some(now + NUDGE_AFTER);
            return Some((Ok(Bytes::from(out)), stream));
        }
        let heartbeat = stream.nudge_at.unwrap_or(stream.last_write + HEARTBEAT);
        let recycle = stream.started + RECYCLE_AFTER;
        let timer = [Some(heartbeat), Some(recycle), wake_at, stream.probe_at]
            .into_iter()
            .flatten()
            .min()
            .unwrap_or(heartbeat);
        tokio::select! {
            _ = &mut notified => continue,
            _ = sleep_until(timer) => {}
        }
        let now = Instant::now();
        if stream.probe_at.is_some_and(|at| now >= at) {
            continue;
        }
        if now >= recycle {
            let mut out = String::new();
            end_event(&mut out, "recycle");
            stream.done = true;
            return Some((Ok(Bytes::from(out)), stream));
        }
        if now >= heartbeat {
            stream.last_write = now;
            stream.nudge_at = None;
            stream.written += 3;
            return Some((Ok(Bytes::from_static(b":\n\n")), stream));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn last_event_ids_parse_only_in_their_own_shape() {
        let sid = "0123456789abcdef0123456789abcdef";
        let mut headers = HeaderMap::new();
        assert_eq!(last_event_id(&headers), None);
        for (value, expected) in [
            (format!("{sid}.17"), Some((sid.to_string(), 17))),
            (format!(" {sid}.0 "), Some((sid.to_string(), 0))),
            (format!("{sid}.-1"), None),
            (format!("{sid}.9007199254740992"), None),
            (format!("{sid}17"), None),
            ("zz.1".to_string(), None),
            (String::new(), None),
        ] {
            headers.insert(
                "last-event-id",
                HeaderValue::from_str(&value).unwrap_or(HeaderValue::from_static("x")),
            );
            assert_eq!(last_event_id(&headers), expected, "{value:?}");
        }
    }
}
