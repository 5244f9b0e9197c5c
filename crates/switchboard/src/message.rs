//! Application messages: what flows through a session in either direction.
//!
//! A [`Message`] carries one payload, either JSON (text is a JSON string) or raw bytes, and an optional
//! event name. Incoming JSON is kept as the exact text the client sent (no parse tree is built until the
//! application asks for a typed value), so forwarding a message costs one copy of its bytes.

use bytes::Bytes;
use serde::{Serialize, de::DeserializeOwned};
use serde_json::value::RawValue;

/// The payload of a [`Message`].
#[derive(Clone, Debug)]
pub enum Payload {
    /// A JSON value, kept as its JSON text. Text messages are JSON strings.
    Json(Box<RawValue>),
    /// A byte string. On the wire it travels base64-encoded (see `docs/protocol.md`).
    Binary(Bytes),
}

/// One application message, sent by the server or received from a client.
///
/// ```
/// use switchboard::Message;
///
/// let greeting = Message::text("안녕하세요 👋");
/// assert_eq!(greeting.as_text().as_deref(), Some("안녕하세요 👋"));
///
/// let typed = Message::json(&serde_json::json!({"x": 1})).unwrap().with_event("move");
/// assert_eq!(typed.event(), Some("move"));
///
/// let blob = Message::binary(vec![0u8, 159, 255]);
/// assert_eq!(blob.as_bytes().map(|b| b.to_vec()), Some(vec![0u8, 159, 255]));
/// ```
#[derive(Clone, Debug)]
pub struct Message {
    event: Option<Box<str>>,
    payload: Payload,
    pairing: Pairing,
}

/// What pairs a request with its reply (`docs/protocol.md` §3.1).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
enum Pairing {
    #[default]
    None,
    /// A client's request, with its id: the client waits for a reply.
    Request(u64),
    /// The reply to the client's request of this id.
    Reply(u64),
}

impl Message {
    /// A text message (a JSON string on the wire).
    pub fn text(text: impl AsRef<str>) -> Self {
        // Serialising a `&str` cannot fail.
        let raw = serde_json::value::to_raw_value(text.as_ref())
            .unwrap_or_else(|_| RawValue::NULL.to_owned());
        Self::from_payload(Payload::Json(raw))
    }

    /// A JSON message from any serialisable value.
    ///
    /// Fails only when `value` cannot be represented as JSON (for example a map with non-string keys).
    pub fn json<T: Serialize + ?Sized>(value: &T) -> Result<Self, serde_json::Error> {
        Ok(Self::from_payload(Payload::Json(
            serde_json::value::to_raw_value(value)?,
        )))
    }

    /// A message from JSON text that is already encoded. Fails if `json` is not valid JSON.
    pub fn raw_json(json: impl Into<String>) -> Result<Self, serde_json::Error> {
        Ok(Self::from_payload(Payload::Json(RawValue::from_string(
            json.into(),
        )?)))
    }

    /// A binary message.
    pub fn binary(bytes: impl Into<Bytes>) -> Self {
        Self::from_payload(Payload::Binary(bytes.into()))
    }

    /// A message with the given payload and no event name.
    pub fn from_payload(payload: Payload) -> Self {
        Self {
            event: None,
            payload,
            pairing: Pairing::None,
        }
    }

    /// Sets the event name (see [`Session::emit`](crate::Session::emit)).
    pub fn with_event(mut self, event: impl Into<String>) -> Self {
        self.event = Some(event.into().into_boxed_str());
        self
    }

    /// The event name, if the message has one.
    pub fn event(&self) -> Option<&str> {
        self.event.as_deref()
    }

    /// The payload.
    pub fn payload(&self) -> &Payload {
        &self.payload
    }

    /// The payload as JSON text, if it is JSON.
    pub fn as_json_str(&self) -> Option<&str> {
        match &self.payload {
            Payload::Json(raw) => Some(raw.get()),
            Payload::Binary(_) => None,
        }
    }

    /// The payload as a string, if it is a JSON string.
    pub fn as_text(&self) -> Option<String> {
        let raw = self.as_json_str()?;
        if raw.starts_with('"') {
            serde_json::from_str(raw).ok()
        } else {
            None
        }
    }

    /// The payload bytes, if it is binary.
    pub fn as_bytes(&self) -> Option<&Bytes> {
        match &self.payload {
            Payload::Binary(bytes) => Some(bytes),
            Payload::Json(_) => None,
        }
    }

    /// Decodes a JSON payload into `T`. Fails for binary payloads and for JSON of another shape.
    pub fn decode<T: DeserializeOwned>(&self) -> Result<T, serde_json::Error> {
        match &self.payload {
            Payload::Json(raw) => serde_json::from_str(raw.get()),
            Payload::Binary(_) => Err(serde::de::Error::custom(
                "binary payload where JSON was expected",
            )),
        }
    }

    /// The id of the client's request, if the client sent this message as one (the JavaScript
    /// client's `conn.request(…)`) and waits for a reply: answer it with
    /// [`Session::reply`](crate::Session::reply). `None` for an ordinary message.
    pub fn request_id(&self) -> Option<u64> {
        match self.pairing {
            Pairing::Request(id) => Some(id),
            _ => None,
        }
    }

    /// The id of the client's request this message answers, if it is a reply (see
    /// [`Session::reply`](crate::Session::reply)).
    pub fn reply_to(&self) -> Option<u64> {
        match self.pairing {
            Pairing::Reply(id) => Some(id),
            _ => None,
        }
    }

    /// The same message, as the client's request of id `id`.
    pub(crate) fn into_request(mut self, id: u64) -> Self {
        self.pairing = Pairing::Request(id);
        self
    }

    /// The same message, as the reply to the client's request of id `id`.
    pub(crate) fn into_reply(mut self, id: u64) -> Self {
        self.pairing = Pairing::Reply(id);
        self
    }

    /// The size of the payload as counted against the message size limit: the JSON text, or the
    /// raw bytes.
    pub fn payload_len(&self) -> usize {
        match &self.payload {
            Payload::Json(raw) => raw.get().len(),
            Payload::Binary(bytes) => bytes.len(),
        }
    }
}

impl From<&str> for Message {
    fn from(text: &str) -> Self {
        Message::text(text)
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Message::text(text)
    }
}

impl From<Bytes> for Message {
    fn from(bytes: Bytes) -> Self {
        Message::binary(bytes)
    }
}

impl From<Vec<u8>> for Message {
    fn from(bytes: Vec<u8>) -> Self {
        Message::binary(bytes)
    }
}

impl From<serde_json::Value> for Message {
    fn from(value: serde_json::Value) -> Self {
        let raw =
            serde_json::value::to_raw_value(&value).unwrap_or_else(|_| RawValue::NULL.to_owned());
        Message::from_payload(Payload::Json(raw))
    }
}
