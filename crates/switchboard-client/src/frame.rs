//! Frames of protocol §3: parsing and encoding.

use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;
use serde_json::{Map, Value};

use crate::error::Error;

/// Largest sequence number / acknowledgement value allowed by the protocol (2^53 − 1).
pub const MAX_SEQ: u64 = (1 << 53) - 1;

/// Largest event name in bytes (protocol §3.1).
pub const MAX_EVENT_LEN: usize = 128;

/// An application payload (protocol §3.1): JSON (text is a JSON string) or bytes.
#[derive(Debug, Clone, PartialEq)]
pub enum Payload {
    /// A JSON payload, carried in the `d` field. Text is `Json(Value::String(..))`.
    Json(Value),
    /// A binary payload, carried base64-encoded in the `b` field.
    Binary(Vec<u8>),
}

impl Payload {
    /// The payload's size as protocol §3.1 measures it against `max_message`: the length of the
    /// JSON text of `d`, or the number of decoded bytes of `b`.
    pub fn size(&self) -> usize {
        match self {
            Payload::Json(v) => v.to_string().len(),
            Payload::Binary(b) => b.len(),
        }
    }
}

/// One application message with an optional event name.
#[derive(Debug, Clone, PartialEq)]
pub struct Message {
    /// Event name (`e`), at most 128 bytes.
    pub event: Option<String>,
    /// The payload.
    pub payload: Payload,
    /// Sent as a request (`q`, protocol §3.1): the server's handler answers it with a message
    /// whose [`reply_to`](Message::reply_to) is this id. Unique among the client's requests.
    pub request: Option<u64>,
    /// On a message from the server: the id of the request it answers (`p`).
    pub reply_to: Option<u64>,
}

impl Message {
    /// A text message (a JSON string payload).
    pub fn text(text: &str) -> Message {
        Message::json(Value::String(text.to_owned()))
    }

    /// A JSON message.
    pub fn json(value: Value) -> Message {
        Message {
            event: None,
            payload: Payload::Json(value),
            request: None,
            reply_to: None,
        }
    }

    /// A binary message.
    pub fn binary(bytes: Vec<u8>) -> Message {
        Message {
            event: None,
            payload: Payload::Binary(bytes),
            request: None,
            reply_to: None,
        }
    }

    /// Sends it as the request of id `id` (1 to 2^53 − 1): the server's reply carries the id in
    /// [`reply_to`](Message::reply_to).
    #[must_use]
    pub fn with_request(mut self, id: u64) -> Message {
        self.request = Some(id);
        self
    }

    /// Sets the event name.
    #[must_use]
    pub fn with_event(mut self, event: &str) -> Message {
        self.event = Some(event.to_owned());
        self
    }

    /// The text, if the payload is a JSON string.
    pub fn as_text(&self) -> Option<&str> {
        match &self.payload {
            Payload::Json(Value::String(s)) => Some(s),
            _ => None,
        }
    }

    /// The JSON value, if the payload is JSON.
    pub fn as_json(&self) -> Option<&Value> {
        match &self.payload {
            Payload::Json(v) => Some(v),
            Payload::Binary(_) => None,
        }
    }

    /// The bytes, if the payload is binary.
    pub fn as_binary(&self) -> Option<&[u8]> {
        match &self.payload {
            Payload::Binary(b) => Some(b),
            Payload::Json(_) => None,
        }
    }

    /// The event name, if any.
    pub fn event(&self) -> Option<&str> {
        self.event.as_deref()
    }

    /// Encodes this message as an `m` frame with sequence number `seq`.
    pub fn to_frame_json(&self, seq: u64) -> Value {
        let mut map = Map::new();
        map.insert("t".into(), Value::from("m"));
        map.insert("s".into(), Value::from(seq));
        if let Some(e) = &self.event {
            map.insert("e".into(), Value::from(e.as_str()));
        }
        if let Some(q) = self.request {
            map.insert("q".into(), Value::from(q));
        }
        match &self.payload {
            Payload::Json(v) => {
                map.insert("d".into(), v.clone());
            }
            Payload::Binary(b) => {
                map.insert("b".into(), Value::from(STANDARD.encode(b)));
            }
        }
        Value::Object(map)
    }
}

/// The `open` frame (protocol §3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OpenFrame {
    /// Protocol version spoken.
    pub v: u32,
    /// The session id (32 lowercase hex characters).
    pub sid: String,
    /// `true` when the transport attached to an existing session.
    pub resumed: bool,
    /// Highest client sequence number the server has received on this session.
    pub ack: u64,
    /// WebSocket heartbeat interval in ms.
    pub ping: u64,
    /// Long-poll hold time in ms.
    pub hold: u64,
    /// Resume window in ms.
    pub resume: u64,
    /// Largest payload in bytes.
    pub max_message: usize,
    /// Largest `POST` body in bytes.
    pub max_body: usize,
}

impl OpenFrame {
    /// `true` if `sid` has the documented form: 32 lowercase hexadecimal characters.
    pub fn sid_is_well_formed(&self) -> bool {
        self.sid.len() == 32
            && self
                .sid
                .bytes()
                .all(|c| c.is_ascii_digit() || (b'a'..=b'f').contains(&c))
    }

    fn to_json(&self) -> Value {
        serde_json::json!({
            "t": "open", "v": self.v, "sid": self.sid, "resumed": self.resumed, "ack": self.ack,
            "ping": self.ping, "hold": self.hold, "resume": self.resume,
            "max_message": self.max_message, "max_body": self.max_body,
        })
    }
}

/// A frame sent by the server. Non-exhaustive: the protocol grows by new frame types (§2).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ServerFrame {
    /// `open` (§3.3).
    Open(OpenFrame),
    /// `m` (§3.1).
    Msg {
        /// Sequence number.
        seq: u64,
        /// The message.
        message: Message,
    },
    /// `ack` (§3.2): the server has received every client message with `s <= a`.
    Ack(u64),
    /// `ping` (§3.4).
    Ping,
    /// `pong` (§3.4).
    Pong,
    /// `close` (§3.5): the session has ended.
    Close {
        /// Close code (§8).
        code: u16,
        /// Close reason.
        reason: String,
    },
    /// `error` (§3.6): a WebSocket frame from the client was rejected.
    Error {
        /// Error code of §7.
        code: String,
        /// Human-readable text.
        message: String,
    },
    /// A frame whose type `t` protocol version 1 does not define. Receivers ignore it (§3); its
    /// other fields are not looked at.
    Unknown {
        /// The frame's type.
        t: String,
    },
}

impl ServerFrame {
    /// Parses one frame from its JSON text. Unknown fields are ignored, and so is a frame of an
    /// unknown type: it parses as [`ServerFrame::Unknown`].
    pub fn parse(text: &str) -> Result<ServerFrame, Error> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::protocol(format!("frame is not JSON: {e}")))?;
        ServerFrame::from_json(&v)
    }

    /// Parses one frame from a JSON value. Unknown fields are ignored; a frame of an unknown type
    /// is [`ServerFrame::Unknown`]. A value that is not an object, or has no string `t`, is an
    /// error.
    pub fn from_json(v: &Value) -> Result<ServerFrame, Error> {
        let map = v
            .as_object()
            .ok_or_else(|| Error::protocol("frame is not a JSON object"))?;
        match frame_type(map)? {
            "m" => {
                let (seq, message) = parse_msg(map)?;
                Ok(ServerFrame::Msg { seq, message })
            }
            "ack" => Ok(ServerFrame::Ack(parse_ack(map)?)),
            "ping" => Ok(ServerFrame::Ping),
            "pong" => Ok(ServerFrame::Pong),
            "open" => Ok(ServerFrame::Open(OpenFrame {
                v: u32::try_from(req_u64(map, "v")?)
                    .map_err(|_| Error::protocol("open: v out of range"))?,
                sid: req_str(map, "sid")?.to_owned(),
                resumed: map
                    .get("resumed")
                    .and_then(Value::as_bool)
                    .ok_or_else(|| Error::protocol("open: missing boolean field resumed"))?,
                ack: bounded(req_u64(map, "ack")?, "open: ack")?,
                ping: req_u64(map, "ping")?,
                hold: req_u64(map, "hold")?,
                resume: req_u64(map, "resume")?,
                max_message: req_usize(map, "max_message")?,
                max_body: req_usize(map, "max_body")?,
            })),
            "close" => Ok(ServerFrame::Close {
                code: u16::try_from(req_u64(map, "code")?)
                    .map_err(|_| Error::protocol("close: code out of range"))?,
                reason: opt_str(map, "reason")?.unwrap_or_default(),
            }),
            "error" => Ok(ServerFrame::Error {
                code: req_str(map, "code")?.to_owned(),
                message: opt_str(map, "message")?.unwrap_or_default(),
            }),
            other => Ok(ServerFrame::Unknown {
                t: other.to_owned(),
            }),
        }
    }

    /// Parses a JSON array of frames (the body of a poll answer, or a batched WebSocket message).
    pub fn parse_array(body: &[u8]) -> Result<Vec<ServerFrame>, Error> {
        let v: Value = serde_json::from_slice(body)
            .map_err(|e| Error::protocol(format!("body is not JSON: {e}")))?;
        let arr = v
            .as_array()
            .ok_or_else(|| Error::protocol("body is not a JSON array"))?;
        arr.iter().map(ServerFrame::from_json).collect()
    }

    /// Encodes this frame as JSON (useful for fake servers in tests).
    pub fn to_json(&self) -> Value {
        match self {
            ServerFrame::Open(o) => o.to_json(),
            ServerFrame::Msg { seq, message } => message.to_frame_json(*seq),
            ServerFrame::Ack(a) => serde_json::json!({"t": "ack", "a": a}),
            ServerFrame::Ping => serde_json::json!({"t": "ping"}),
            ServerFrame::Pong => serde_json::json!({"t": "pong"}),
            ServerFrame::Close { code, reason } => {
                serde_json::json!({"t": "close", "code": code, "reason": reason})
            }
            ServerFrame::Error { code, message } => {
                serde_json::json!({"t": "error", "code": code, "message": message})
            }
            ServerFrame::Unknown { t } => serde_json::json!({ "t": t }),
        }
    }
}

/// A frame sent by the client. Non-exhaustive: the protocol grows by new frame types (§2).
#[derive(Debug, Clone, PartialEq)]
#[non_exhaustive]
pub enum ClientFrame {
    /// `m` (§3.1).
    Msg {
        /// Sequence number.
        seq: u64,
        /// The message.
        message: Message,
    },
    /// `ack` (§3.2): the client has received every server message with `s <= a`.
    Ack(u64),
    /// `ping` (§3.4).
    Ping,
    /// `pong` (§3.4).
    Pong,
    /// `close` (§3.5): asks the server to end the session.
    Close,
    /// A frame whose type `t` protocol version 1 does not define (the server ignores it, §3).
    /// Encodes as `{"t": t}`.
    Unknown {
        /// The frame's type.
        t: String,
    },
}

impl ClientFrame {
    /// Shorthand for [`ClientFrame::Msg`].
    pub fn msg(seq: u64, message: Message) -> ClientFrame {
        ClientFrame::Msg { seq, message }
    }

    /// Encodes this frame as a JSON value.
    pub fn to_json(&self) -> Value {
        match self {
            ClientFrame::Msg { seq, message } => message.to_frame_json(*seq),
            ClientFrame::Ack(a) => serde_json::json!({"t": "ack", "a": a}),
            ClientFrame::Ping => serde_json::json!({"t": "ping"}),
            ClientFrame::Pong => serde_json::json!({"t": "pong"}),
            ClientFrame::Close => serde_json::json!({"t": "close"}),
            ClientFrame::Unknown { t } => serde_json::json!({ "t": t }),
        }
    }

    /// Encodes this frame as JSON text.
    pub fn to_text(&self) -> String {
        self.to_json().to_string()
    }

    /// Encodes a list of frames as a JSON array text (a `POST B/poll` body).
    pub fn encode_array(frames: &[ClientFrame]) -> String {
        Value::Array(frames.iter().map(ClientFrame::to_json).collect()).to_string()
    }

    /// Parses a client frame from its JSON text (useful for fake servers in tests).
    pub fn parse(text: &str) -> Result<ClientFrame, Error> {
        let v: Value = serde_json::from_str(text)
            .map_err(|e| Error::protocol(format!("frame is not JSON: {e}")))?;
        ClientFrame::from_json(&v)
    }

    /// Parses a client frame from a JSON value. Unknown fields are ignored; a frame of an unknown
    /// type is [`ClientFrame::Unknown`].
    pub fn from_json(v: &Value) -> Result<ClientFrame, Error> {
        let map = v
            .as_object()
            .ok_or_else(|| Error::protocol("frame is not a JSON object"))?;
        match frame_type(map)? {
            "m" => {
                let (seq, message) = parse_msg(map)?;
                Ok(ClientFrame::Msg { seq, message })
            }
            "ack" => Ok(ClientFrame::Ack(parse_ack(map)?)),
            "ping" => Ok(ClientFrame::Ping),
            "pong" => Ok(ClientFrame::Pong),
            "close" => Ok(ClientFrame::Close),
            other => Ok(ClientFrame::Unknown {
                t: other.to_owned(),
            }),
        }
    }
}

fn frame_type(map: &Map<String, Value>) -> Result<&str, Error> {
    map.get("t")
        .and_then(Value::as_str)
        .ok_or_else(|| Error::protocol("frame has no string field t"))
}

fn parse_msg(map: &Map<String, Value>) -> Result<(u64, Message), Error> {
    let seq = req_u64(map, "s")?;
    if seq == 0 || seq > MAX_SEQ {
        return Err(Error::protocol(format!(
            "m: s = {seq} out of range 1..=2^53-1"
        )));
    }
    let event = opt_str(map, "e")?;
    if let Some(e) = &event
        && e.len() > MAX_EVENT_LEN
    {
        return Err(Error::protocol("m: event name longer than 128 bytes"));
    }
    let payload = match (map.get("d"), map.get("b")) {
        (Some(d), None) => Payload::Json(d.clone()),
        (None, Some(b)) => {
            let b = b
                .as_str()
                .ok_or_else(|| Error::protocol("m: b is not a string"))?;
            Payload::Binary(
                STANDARD
                    .decode(b)
                    .map_err(|e| Error::protocol(format!("m: b is not standard base64: {e}")))?,
            )
        }
        (Some(_), Some(_)) => return Err(Error::protocol("m: both d and b present")),
        (None, None) => return Err(Error::protocol("m: neither d nor b present")),
    };
    let reply_to = match map.get("p") {
        None => None,
        Some(_) => Some(bounded(req_u64(map, "p")?, "m: p")?),
    };
    Ok((
        seq,
        Message {
            event,
            payload,
            request: None,
            reply_to,
        },
    ))
}

fn parse_ack(map: &Map<String, Value>) -> Result<u64, Error> {
    bounded(req_u64(map, "a")?, "ack: a")
}

fn bounded(v: u64, what: &str) -> Result<u64, Error> {
    if v > MAX_SEQ {
        Err(Error::protocol(format!("{what} = {v} larger than 2^53-1")))
    } else {
        Ok(v)
    }
}

fn req_u64(map: &Map<String, Value>, key: &str) -> Result<u64, Error> {
    map.get(key)
        .and_then(Value::as_u64)
        .ok_or_else(|| Error::protocol(format!("missing or non-integer field {key}")))
}

fn req_usize(map: &Map<String, Value>, key: &str) -> Result<usize, Error> {
    usize::try_from(req_u64(map, key)?)
        .map_err(|_| Error::protocol(format!("field {key} out of range")))
}

fn req_str<'a>(map: &'a Map<String, Value>, key: &str) -> Result<&'a str, Error> {
    map.get(key)
        .and_then(Value::as_str)
        .ok_or_else(|| Error::protocol(format!("missing or non-string field {key}")))
}

fn opt_str(map: &Map<String, Value>, key: &str) -> Result<Option<String>, Error> {
    match map.get(key) {
        None => Ok(None),
        Some(Value::String(s)) => Ok(Some(s.clone())),
        Some(_) => Err(Error::protocol(format!("field {key} is not a string"))),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn parses_message_with_korean_and_emoji() {
        let f = ServerFrame::parse(r#"{"t":"m","s":12,"e":"chat","d":{"text":"안녕하세요 👋"}}"#)
            .unwrap();
        let ServerFrame::Msg { seq, message } = f else {
            panic!("not a message")
        };
        assert_eq!(seq, 12);
        assert_eq!(message.event(), Some("chat"));
        assert_eq!(message.as_json().unwrap()["text"], "안녕하세요 👋");
    }

    #[test]
    fn text_round_trip() {
        let m = Message::text("안녕 🎉 \"quoted\" \u{0}");
        let f = ClientFrame::msg(1, m.clone());
        let text = f.to_text();
        assert_eq!(ClientFrame::parse(&text).unwrap(), f);
        let ServerFrame::Msg { message, .. } = ServerFrame::parse(&text).unwrap() else {
            panic!()
        };
        assert_eq!(message.as_text(), Some("안녕 🎉 \"quoted\" \u{0}"));
        assert_eq!(message, m);
    }

    #[test]
    fn binary_base64_round_trip() {
        let f = ServerFrame::parse(r#"{"t":"m","s":13,"b":"AAEC/w=="}"#).unwrap();
        let ServerFrame::Msg { seq: 13, message } = f else {
            panic!()
        };
        assert_eq!(message.as_binary(), Some(&[0u8, 1, 2, 255][..]));
        assert_eq!(message.event(), None);

        let all: Vec<u8> = (0..=255).collect();
        for len in [0, 1, 2, 3, 4, 255, 256] {
            let m = Message::binary(all[..len].to_vec()).with_event("bin");
            let v = ClientFrame::msg(7, m.clone()).to_json();
            let b = v["b"].as_str().unwrap();
            assert_eq!(b.len() % 4, 0, "padded standard base64");
            assert!(v.get("d").is_none());
            assert_eq!(
                ServerFrame::from_json(&v).unwrap(),
                ServerFrame::Msg { seq: 7, message: m }
            );
        }
        // the example of protocol §14
        let f = ServerFrame::parse(r#"{"t":"m","s":2,"b":"3q2+7w=="}"#).unwrap();
        assert_eq!(
            f,
            ServerFrame::Msg {
                seq: 2,
                message: Message::binary(vec![0xde, 0xad, 0xbe, 0xef])
            }
        );
    }

    #[test]
    fn rejects_bad_base64() {
        assert!(ServerFrame::parse(r#"{"t":"m","s":1,"b":"3q2-7w=="}"#).is_err());
        assert!(ServerFrame::parse(r#"{"t":"m","s":1,"b":"AAEC/w"}"#).is_err());
        assert!(ServerFrame::parse(r#"{"t":"m","s":1,"b":5}"#).is_err());
    }

    #[test]
    fn exactly_one_of_d_and_b() {
        assert!(ServerFrame::parse(r#"{"t":"m","s":1}"#).is_err());
        assert!(ServerFrame::parse(r#"{"t":"m","s":1,"d":1,"b":"AA=="}"#).is_err());
        // null is a JSON value, so "d": null is present
        let f = ServerFrame::parse(r#"{"t":"m","s":1,"d":null}"#).unwrap();
        assert_eq!(
            f,
            ServerFrame::Msg {
                seq: 1,
                message: Message::json(Value::Null)
            }
        );
    }

    #[test]
    fn sequence_bounds() {
        assert!(ServerFrame::parse(r#"{"t":"m","s":0,"d":1}"#).is_err());
        assert!(ServerFrame::parse(r#"{"t":"m","s":-1,"d":1}"#).is_err());
        assert!(ServerFrame::parse(r#"{"t":"m","s":1.5,"d":1}"#).is_err());
        assert!(ServerFrame::parse(r#"{"t":"m","s":"1","d":1}"#).is_err());
        assert!(ServerFrame::parse(r#"{"t":"m","s":9007199254740991,"d":1}"#).is_ok());
        assert!(ServerFrame::parse(r#"{"t":"m","s":9007199254740992,"d":1}"#).is_err());
        assert_eq!(
            ServerFrame::parse(r#"{"t":"ack","a":0}"#).unwrap(),
            ServerFrame::Ack(0)
        );
        assert!(ServerFrame::parse(r#"{"t":"ack"}"#).is_err());
    }

    #[test]
    fn unknown_fields_ignored_and_order_irrelevant() {
        let f = ServerFrame::parse(r#"{"x":[1,2],"a":5,"t":"ack","future":{"y":1}}"#).unwrap();
        assert_eq!(f, ServerFrame::Ack(5));
        let f = ServerFrame::parse(r#"{"d":"hi","zz":true,"s":3,"t":"m"}"#).unwrap();
        assert_eq!(
            f,
            ServerFrame::Msg {
                seq: 3,
                message: Message::text("hi")
            }
        );
        assert_eq!(
            ServerFrame::parse(r#"{"t":"ping","n":1}"#).unwrap(),
            ServerFrame::Ping
        );
    }

    #[test]
    fn parses_open_close_error() {
        let open = r#"{"t":"open","v":1,"sid":"0123456789abcdef0123456789abcdef","resumed":false,"ack":0,
            "ping":25000,"hold":20000,"resume":30000,"max_message":65536,"max_body":1048576,"extra":1}"#;
        let ServerFrame::Open(o) = ServerFrame::parse(open).unwrap() else {
            panic!()
        };
        assert!(o.sid_is_well_formed());
        assert_eq!(
            (o.v, o.ack, o.ping, o.hold, o.resume),
            (1, 0, 25000, 20000, 30000)
        );
        assert_eq!((o.max_message, o.max_body), (65536, 1048576));
        assert_eq!(
            ServerFrame::from_json(&ServerFrame::Open(o.clone()).to_json()).unwrap(),
            ServerFrame::Open(o)
        );
        assert!(ServerFrame::parse(r#"{"t":"open","v":1,"sid":"x"}"#).is_err());

        assert_eq!(
            ServerFrame::parse(r#"{"t":"close","code":4000,"reason":"kicked by moderator"}"#)
                .unwrap(),
            ServerFrame::Close {
                code: 4000,
                reason: "kicked by moderator".into()
            }
        );
        assert_eq!(
            ServerFrame::parse(r#"{"t":"error","code":"malformed_frame","message":"bad"}"#)
                .unwrap(),
            ServerFrame::Error {
                code: "malformed_frame".into(),
                message: "bad".into()
            }
        );
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "[]",
            "1",
            "{}",
            r#"{"t":1}"#,
            r#"{"s":1,"d":1}"#,
            "null",
            "{\"t\":\"m\"",
        ] {
            assert!(ServerFrame::parse(bad).is_err(), "{bad}");
        }
        assert!(ServerFrame::parse_array(br#"[{"t":"ping"},1]"#).is_err());
    }

    #[test]
    fn frames_of_unknown_types_parse_as_unknown_whatever_their_fields() {
        for (text, t) in [
            (r#"{"t":"nope"}"#, "nope"),
            (
                r#"{"t":"sub","s":"room","a":[1],"d":1,"b":"%%%","code":"x"}"#,
                "sub",
            ),
            (r#"{"t":"M","s":1,"d":1}"#, "M"),
        ] {
            assert_eq!(
                ServerFrame::parse(text).unwrap(),
                ServerFrame::Unknown { t: t.into() }
            );
            assert_eq!(
                ClientFrame::parse(text).unwrap(),
                ClientFrame::Unknown { t: t.into() }
            );
        }
        // "open" and "error" are server frames only.
        assert_eq!(
            ClientFrame::parse(r#"{"t":"open"}"#).unwrap(),
            ClientFrame::Unknown { t: "open".into() }
        );
        let frames =
            ServerFrame::parse_array(br#"[{"t":"later","s":"x"},{"t":"m","s":1,"d":2}]"#).unwrap();
        assert_eq!(frames[0], ServerFrame::Unknown { t: "later".into() });
        assert!(matches!(frames[1], ServerFrame::Msg { seq: 1, .. }));
        assert_eq!(
            ClientFrame::Unknown { t: "later".into() }.to_json(),
            json!({"t": "later"})
        );
    }

    #[test]
    fn sequence_numbers_must_be_written_as_integers() {
        for bad in [
            r#"{"t":"m","s":1.0,"d":1}"#,
            r#"{"t":"m","s":1e0,"d":1}"#,
            r#"{"t":"m","s":-0,"d":1}"#,
            r#"{"t":"ack","a":3.0}"#,
        ] {
            assert!(ServerFrame::parse(bad).is_err(), "{bad}");
            assert!(ClientFrame::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn client_frame_encoding() {
        assert_eq!(ClientFrame::Ack(3).to_json(), json!({"t":"ack","a":3}));
        assert_eq!(ClientFrame::Ping.to_json(), json!({"t":"ping"}));
        assert_eq!(ClientFrame::Pong.to_json(), json!({"t":"pong"}));
        assert_eq!(ClientFrame::Close.to_json(), json!({"t":"close"}));
        let m = Message::json(json!({"text":"🎉"})).with_event("chat");
        assert_eq!(
            ClientFrame::msg(1, m).to_json(),
            json!({"t":"m","s":1,"e":"chat","d":{"text":"🎉"}})
        );
        let arr = ClientFrame::encode_array(&[
            ClientFrame::msg(1, Message::text("안녕")),
            ClientFrame::Ping,
        ]);
        let v: Value = serde_json::from_str(&arr).unwrap();
        assert_eq!(v, json!([{"t":"m","s":1,"d":"안녕"},{"t":"ping"}]));
    }

    #[test]
    fn parse_array_body() {
        let body = r#"[{"t":"m","s":1,"e":"chat","d":{"text":"🎉"}},{"t":"m","s":2,"d":"hi"},{"t":"close","code":4001,"reason":"client_closed"}]"#;
        let frames = ServerFrame::parse_array(body.as_bytes()).unwrap();
        assert_eq!(frames.len(), 3);
        assert!(matches!(frames[2], ServerFrame::Close { code: 4001, .. }));
        assert!(ServerFrame::parse_array(b"{}").is_err());
        assert!(ServerFrame::parse_array(b"[]").unwrap().is_empty());
    }

    #[test]
    fn payload_size() {
        assert_eq!(Payload::Json(Value::String("안".into())).size(), 5); // quotes + 3 bytes
        assert_eq!(Payload::Binary(vec![0; 10]).size(), 10);
    }
}
