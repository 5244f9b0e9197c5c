//! The wire protocol: frame encoding and decoding, with no I/O.
//!
//! `docs/protocol.md` is the specification; this module is its implementation on the server side.
//! Every frame is a JSON object with a type field `t`. Message frames are encoded in two parts so
//! that a message broadcast to many sessions is encoded once: the *tail* (event name and payload,
//! shared by every recipient) and the per-session prefix `{"t":"m","s":SEQ,`.

use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD as BASE64;
use bytes::Bytes;
use serde::Deserialize;
use serde_json::value::RawValue;

use crate::message::{Message, Payload};

/// The protocol version this crate speaks.
pub const VERSION: u32 = 1;

/// Largest sequence number or acknowledgement (2^53 − 1, the largest integer JavaScript represents
/// exactly).
pub const MAX_SEQ: u64 = (1 << 53) - 1;

/// Longest event name, in bytes.
pub const MAX_EVENT_LEN: usize = 128;

/// A message's event name and payload, encoded once as the tail of a message frame and shared
/// (reference-counted) by every session it is sent to.
///
/// One pointer wide: a session's buffer holds one per message, and a broadcast writes one into
/// every recipient's buffer, so the smaller the entry, the fewer cache lines a broadcast touches.
#[derive(Clone, Debug)]
pub(crate) struct EncodedMessage(Arc<Encoded>);

#[derive(Debug)]
struct Encoded {
    tail: Box<str>,
    payload_len: usize,
}

impl EncodedMessage {
    /// Encodes `message`.
    pub(crate) fn new(message: &Message) -> Self {
        let mut tail = String::with_capacity(message.payload_len() + 24);
        if let Some(id) = message.reply_to() {
            tail.push_str("\"p\":");
            write_decimal(&mut tail, id);
            tail.push(',');
        }
        if let Some(event) = message.event() {
            tail.push_str("\"e\":");
            write_json_string(&mut tail, event);
            tail.push(',');
        }
        match message.payload() {
            Payload::Json(raw) => {
                tail.push_str("\"d\":");
                tail.push_str(raw.get());
            }
            Payload::Binary(bytes) => {
                tail.push_str("\"b\":\"");
                BASE64.encode_string(bytes, &mut tail);
                tail.push('"');
            }
        }
        tail.push('}');
        Self(Arc::new(Encoded {
            tail: tail.into_boxed_str(),
            payload_len: message.payload_len(),
        }))
    }

    /// A message encoded elsewhere (another node of the cluster), from its tail and payload size.
    pub(crate) fn from_tail(tail: &str, payload_len: usize) -> Self {
        Self(Arc::new(Encoded {
            tail: tail.into(),
            payload_len,
        }))
    }

    /// The frame's tail: the event name and payload fields and the closing brace.
    fn tail(&self) -> &str {
        &self.0.tail
    }

    /// The frame's tail (see [`from_tail`](Self::from_tail)).
    pub(crate) fn tail_text(&self) -> &str {
        &self.0.tail
    }

    /// Bytes this message occupies in a session's buffer.
    pub(crate) fn buffered_len(&self) -> usize {
        self.0.tail.len()
    }

    /// Where the shared encoded bytes live (to check that recipients share one copy).
    #[cfg(test)]
    pub(crate) fn tail_ptr(&self) -> *const u8 {
        self.0.tail.as_ptr()
    }

    /// The payload size counted against the message size limit.
    pub(crate) fn payload_len(&self) -> usize {
        self.0.payload_len
    }
}

/// Appends the frame `{"t":"m","s":seq,<tail>` to `out`.
pub(crate) fn write_message_frame(out: &mut String, seq: u64, message: &EncodedMessage) {
    out.push_str("{\"t\":\"m\",\"s\":");
    write_decimal(out, seq);
    out.push(',');
    out.push_str(message.tail());
}

/// Appends `n` in decimal. (This runs once per frame per recipient; `write!` and its formatting
/// machinery cost several times as much.)
pub(crate) fn write_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut start = digits.len();
    loop {
        start -= 1;
        digits[start] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &digit in &digits[start..] {
        out.push(char::from(digit));
    }
}

/// The frame [`write_message_frame`] writes, as its own string.
pub(crate) fn message_frame(seq: u64, message: &EncodedMessage) -> String {
    // 14 bytes of prefix and comma, at most 16 digits.
    let mut frame = String::with_capacity(30 + message.buffered_len());
    write_message_frame(&mut frame, seq, message);
    frame
}

/// Frames written one after another into a JSON array: the body of a poll answer, or one
/// WebSocket message of a batching client (`docs/protocol.md` §5.1).
#[derive(Debug)]
pub(crate) struct FrameArray {
    text: String,
}

impl Default for FrameArray {
    fn default() -> Self {
        Self::new()
    }
}

impl FrameArray {
    /// An empty array; nothing is allocated until the first frame is added (a WebSocket task
    /// keeps one across its idle wait).
    pub(crate) fn new() -> Self {
        Self {
            text: String::new(),
        }
    }

    /// Whether no frame has been added.
    pub(crate) fn is_empty(&self) -> bool {
        self.text.is_empty()
    }

    /// Bytes written so far.
    pub(crate) fn len(&self) -> usize {
        self.text.len()
    }

    fn separate(&mut self) {
        if self.text.is_empty() {
            self.text.reserve(1024);
            self.text.push('[');
        } else {
            self.text.push(',');
        }
    }

    /// Adds the message frame of `message` with sequence number `seq`.
    pub(crate) fn push_message(&mut self, seq: u64, message: &EncodedMessage) {
        self.separate();
        write_message_frame(&mut self.text, seq, message);
    }

    /// Adds an encoded frame.
    pub(crate) fn push_frame(&mut self, frame: &str) {
        self.separate();
        self.text.push_str(frame);
    }

    /// The array's text.
    pub(crate) fn finish(mut self) -> String {
        if self.text.is_empty() {
            self.text.push('[');
        }
        self.text.push(']');
        self.text
    }
}

fn write_json_string(out: &mut String, s: &str) {
    // Serialising a &str cannot fail.
    out.push_str(&serde_json::to_string(s).unwrap_or_default());
}

/// The settings a client learns from the open frame.
#[derive(Clone, Debug)]
pub(crate) struct OpenInfo<'a> {
    pub(crate) sid: &'a str,
    pub(crate) resumed: bool,
    pub(crate) ack: u64,
    pub(crate) ping_ms: u64,
    pub(crate) hold_ms: u64,
    pub(crate) resume_ms: u64,
    pub(crate) max_message: usize,
    pub(crate) max_body: usize,
}

/// Encodes the open frame.
pub(crate) fn open_frame(info: &OpenInfo<'_>) -> String {
    format!(
        "{{\"t\":\"open\",\"v\":{VERSION},\"sid\":\"{}\",\"resumed\":{},\"ack\":{},\"ping\":{},\"hold\":{},\"resume\":{},\"max_message\":{},\"max_body\":{}}}",
        info.sid,
        info.resumed,
        info.ack,
        info.ping_ms,
        info.hold_ms,
        info.resume_ms,
        info.max_message,
        info.max_body
    )
}

/// Encodes an acknowledgement frame.
pub(crate) fn ack_frame(ack: u64) -> String {
    format!("{{\"t\":\"ack\",\"a\":{ack}}}")
}

/// The heartbeat request frame.
pub(crate) const PING_FRAME: &str = "{\"t\":\"ping\"}";
/// The heartbeat answer frame.
pub(crate) const PONG_FRAME: &str = "{\"t\":\"pong\"}";

/// Encodes a close frame.
pub(crate) fn close_frame(code: u16, reason: &str) -> String {
    let mut out = format!("{{\"t\":\"close\",\"code\":{code},\"reason\":");
    write_json_string(&mut out, reason);
    out.push('}');
    out
}

/// Encodes an error frame (WebSocket only).
pub(crate) fn error_frame(code: &str, message: &str) -> String {
    serde_json::json!({"t": "error", "code": code, "message": message}).to_string()
}

/// A frame sent by a client.
#[derive(Debug)]
pub(crate) enum ClientFrame {
    /// An application message with its client sequence number.
    Message { seq: u64, message: Message },
    /// Cumulative acknowledgement of server messages.
    Ack(u64),
    /// Heartbeat request.
    Ping,
    /// Heartbeat answer.
    Pong,
    /// Request to end the session.
    Close,
    /// A frame of a type protocol version 1 does not define: ignored, so that the protocol can
    /// grow (`docs/protocol.md` §3).
    Unknown,
}

/// Why a client frame was rejected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum FrameError {
    /// Not a valid frame; the text says what is wrong.
    Malformed(String),
    /// A payload larger than the message size limit.
    TooLarge { len: usize, max: usize },
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Malformed(why) => write!(f, "malformed frame: {why}"),
            FrameError::TooLarge { len, max } => {
                write!(f, "payload of {len} bytes exceeds the limit of {max} bytes")
            }
        }
    }
}

fn malformed(why: impl Into<String>) -> FrameError {
    FrameError::Malformed(why.into())
}

#[derive(Deserialize)]
struct RawFrame<'a> {
    #[serde(borrow)]
    t: Cow<'a, str>,
    #[serde(default)]
    s: Option<u64>,
    #[serde(default)]
    a: Option<u64>,
    #[serde(default)]
    q: Option<u64>,
    #[serde(default, borrow)]
    e: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "present")]
    d: Option<&'a RawValue>,
    #[serde(default, borrow)]
    b: Option<Cow<'a, str>>,
}

/// Keeps a present `null` as `Some(null)` instead of `None`.
fn present<'de, D>(deserializer: D) -> Result<Option<&'de RawValue>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    <&'de RawValue>::deserialize(deserializer).map(Some)
}

/// The frame types a client may send in protocol version 1.
const CLIENT_FRAME_TYPES: [&str; 5] = ["m", "ack", "ping", "pong", "close"];

/// Just the type of a frame, whatever its other fields hold.
#[derive(Deserialize)]
struct FrameType<'a> {
    #[serde(borrow)]
    t: Cow<'a, str>,
}

/// Decodes one client frame.
///
/// A JSON object with a string `t` that version 1 does not define is [`ClientFrame::Unknown`],
/// whatever its other fields hold; anything else that does not decode is malformed.
pub(crate) fn decode_frame(text: &str, max_message: usize) -> Result<ClientFrame, FrameError> {
    match serde_json::from_str::<RawFrame<'_>>(text) {
        Ok(raw) => from_raw(raw, max_message),
        // Only on this (rare) path is the frame parsed a second time: a frame of a later type
        // may give the fields of version 1 other types.
        Err(err) => match serde_json::from_str::<FrameType<'_>>(text) {
            Ok(frame) if !CLIENT_FRAME_TYPES.contains(&frame.t.as_ref()) => {
                Ok(ClientFrame::Unknown)
            }
            _ => Err(malformed(format!("not a valid frame object: {err}"))),
        },
    }
}

/// Decodes a JSON array of client frames (a POST body). Either every frame is valid, or an error
/// is returned and nothing is decoded.
pub(crate) fn decode_batch(
    body: &[u8],
    max_message: usize,
) -> Result<Vec<ClientFrame>, FrameError> {
    if let Ok(raws) = serde_json::from_slice::<Vec<RawFrame<'_>>>(body) {
        return raws
            .into_iter()
            .map(|raw| from_raw(raw, max_message))
            .collect();
    }
    // Something in the body is not a frame of version 1: decode frame by frame, to tell a frame
    // of an unknown type (ignored) from a malformed one, and to say which one is wrong.
    let frames: Vec<&RawValue> = serde_json::from_slice(body)
        .map_err(|err| malformed(format!("body is not a JSON array of frames: {err}")))?;
    frames
        .iter()
        .enumerate()
        .map(|(index, frame)| {
            decode_frame(frame.get(), max_message).map_err(|err| match err {
                FrameError::Malformed(why) => malformed(format!("frame {index}: {why}")),
                too_large => too_large,
            })
        })
        .collect()
}

fn from_raw(raw: RawFrame<'_>, max_message: usize) -> Result<ClientFrame, FrameError> {
    match raw.t.as_ref() {
        "m" => {
            let seq = raw.s.ok_or_else(|| malformed("message frame without s"))?;
            if seq == 0 || seq > MAX_SEQ {
                return Err(malformed("s must be between 1 and 2^53-1"));
            }
            let payload = match (raw.d, raw.b) {
                (Some(d), None) => {
                    let len = d.get().len();
                    if len > max_message {
                        return Err(FrameError::TooLarge {
                            len,
                            max: max_message,
                        });
                    }
                    Payload::Json(d.to_owned())
                }
                (None, Some(b)) => {
                    // Reject before decoding if even the encoded text is far too large.
                    if b.len() / 4 * 3 > max_message + 3 {
                        return Err(FrameError::TooLarge {
                            len: b.len() / 4 * 3,
                            max: max_message,
                        });
                    }
                    let bytes = BASE64
                        .decode(b.as_bytes())
                        .map_err(|err| malformed(format!("b is not valid base64: {err}")))?;
                    if bytes.len() > max_message {
                        return Err(FrameError::TooLarge {
                            len: bytes.len(),
                            max: max_message,
                        });
                    }
                    Payload::Binary(Bytes::from(bytes))
                }
                _ => return Err(malformed("a message frame needs exactly one of d and b")),
            };
            let mut message = Message::from_payload(payload);
            if let Some(event) = raw.e {
                if event.len() > MAX_EVENT_LEN {
                    return Err(malformed("event name longer than 128 bytes"));
                }
                message = message.with_event(event.into_owned());
            }
            if let Some(id) = raw.q {
                if id == 0 || id > MAX_SEQ {
                    return Err(malformed("q must be between 1 and 2^53-1"));
                }
                message = message.into_request(id);
            }
            Ok(ClientFrame::Message { seq, message })
        }
        "ack" => {
            let a = raw.a.ok_or_else(|| malformed("ack frame without a"))?;
            if a > MAX_SEQ {
                return Err(malformed("a must be at most 2^53-1"));
            }
            Ok(ClientFrame::Ack(a))
        }
        "ping" => Ok(ClientFrame::Ping),
        "pong" => Ok(ClientFrame::Pong),
        "close" => Ok(ClientFrame::Close),
        _ => Ok(ClientFrame::Unknown),
    }
}

#[cfg(test)]
mod props;

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn frame(seq: u64, message: &Message) -> String {
        message_frame(seq, &EncodedMessage::new(message))
    }

    #[test]
    fn sequence_numbers_are_written_in_decimal() {
        for n in [0, 1, 9, 10, 99, 100, 12_345, MAX_SEQ, u64::MAX] {
            let mut out = String::from("x");
            write_decimal(&mut out, n);
            assert_eq!(out, format!("x{n}"));
        }
    }

    #[test]
    fn message_frames_are_valid_json_and_round_trip() {
        let text = Message::text("안녕하세요 👋 \"quoted\"\n").with_event("채팅");
        let json: serde_json::Value = serde_json::from_str(&frame(7, &text)).unwrap();
        assert_eq!(json["t"], "m");
        assert_eq!(json["s"], 7);
        assert_eq!(json["e"], "채팅");
        assert_eq!(json["d"], "안녕하세요 👋 \"quoted\"\n");

        let decoded = decode_frame(&frame(7, &text), 1024).unwrap();
        match decoded {
            ClientFrame::Message { seq, message } => {
                assert_eq!(seq, 7);
                assert_eq!(message.event(), Some("채팅"));
                assert_eq!(message.as_text().unwrap(), "안녕하세요 👋 \"quoted\"\n");
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn binary_payloads_round_trip_through_base64() {
        let bytes: Vec<u8> = (0..=255u8).collect();
        let text = frame(1, &Message::binary(bytes.clone()));
        match decode_frame(&text, 1024).unwrap() {
            ClientFrame::Message { message, .. } => {
                assert_eq!(message.as_bytes().unwrap().as_ref(), &bytes[..])
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn null_payload_is_a_payload() {
        match decode_frame(r#"{"t":"m","s":1,"d":null}"#, 16).unwrap() {
            ClientFrame::Message { message, .. } => assert_eq!(message.as_json_str(), Some("null")),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn malformed_frames_are_rejected_with_a_reason() {
        for bad in [
            "",
            "[]",
            "{}",
            r#"{"t":"m","d":1}"#,
            r#"{"t":"m","s":0,"d":1}"#,
            r#"{"t":"m","s":1}"#,
            r#"{"t":"m","s":1,"d":1,"b":"AA=="}"#,
            r#"{"t":"m","s":1,"b":"%%%"}"#,
            r#"{"t":"ack"}"#,
            r#"{"t":"m","s":1.0,"d":1}"#,
            r#"{"t":"m","s":1e0,"d":1}"#,
            r#"{"t":"m","s":-0,"d":1}"#,
            r#"{"t":"m","s":"1","d":1}"#,
            r#"{"t":"ack","a":2.0}"#,
            r#"{"t":1}"#,
            r#"{"s":1,"d":1}"#,
            r#"{"t":"m","t":"m","s":1,"d":1}"#,
            "null",
            "\"m\"",
        ] {
            assert!(
                matches!(decode_frame(bad, 64), Err(FrameError::Malformed(_))),
                "{bad:?} was accepted"
            );
        }
    }

    #[test]
    fn frames_of_unknown_types_are_ignored_whatever_their_fields() {
        for future in [
            r#"{"t":"bogus"}"#,
            r#"{"t":"sub","s":"room","a":[1],"d":1,"b":"%%%","e":7}"#,
            r#"{"t":"M","s":1,"d":1}"#,
            r#"{"t":""}"#,
        ] {
            assert!(
                matches!(decode_frame(future, 64), Ok(ClientFrame::Unknown)),
                "{future:?} was not ignored"
            );
        }
        let batch = br#"[{"t":"m","s":1,"d":1},{"t":"sub","s":"room"},{"t":"ping"}]"#;
        let frames = decode_batch(batch, 64).unwrap();
        assert!(matches!(
            frames[..],
            [
                ClientFrame::Message { seq: 1, .. },
                ClientFrame::Unknown,
                ClientFrame::Ping
            ]
        ));
        // One malformed frame still rejects the whole body, and the error says which one.
        let bad = br#"[{"t":"sub","s":"room"},{"t":"m","s":"1","d":1}]"#;
        match decode_batch(bad, 64) {
            Err(FrameError::Malformed(why)) => assert!(why.starts_with("frame 1:"), "{why}"),
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn unknown_fields_are_ignored() {
        assert!(matches!(
            decode_frame(r#"{"x":[1,2],"t":"ack","a":3,"future":true}"#, 16),
            Ok(ClientFrame::Ack(3))
        ));
    }

    #[test]
    fn oversized_payloads_are_rejected() {
        let big = format!(r#"{{"t":"m","s":1,"d":"{}"}}"#, "x".repeat(100));
        assert!(matches!(
            decode_frame(&big, 50),
            Err(FrameError::TooLarge { .. })
        ));
        let batch = format!("[{big}]");
        assert!(matches!(
            decode_batch(batch.as_bytes(), 50),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn close_frame_escapes_reason() {
        let json: serde_json::Value =
            serde_json::from_str(&close_frame(4000, "bye \"now\" 👋")).unwrap();
        assert_eq!(json["code"], 4000);
        assert_eq!(json["reason"], "bye \"now\" 👋");
    }
}
