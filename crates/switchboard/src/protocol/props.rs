//! Property tests of the frame decoder (`docs/protocol.md` §3, §5.5, §11).
//!
//! - No input makes [`decode_frame`] or [`decode_batch`] panic: arbitrary bytes and strings,
//!   JSON texts that `serde_json::Value` cannot even hold (duplicate keys, lone surrogate
//!   escapes, numbers out of every range), and nesting far deeper than any parser's stack.
//! - Every frame a client may send, encoded as §3 says (fields in any order, unknown fields,
//!   whitespace anywhere JSON allows it), decodes to the frame that was encoded.
//! - A batch decodes whole or not at all: it is accepted exactly when every one of its frames
//!   is, and then to the frames one by one.
//! - A payload above `max_message` is refused with `TooLarge`, one at or below it never is.
//!
//! Failures are not persisted to files (no `proptest-regressions` directory appears in CI);
//! each run prints its seed instead, and `PROPTEST_RNG_SEED=<seed>` replays it. A failure found
//! this way becomes an explicit test in the module above.

#![allow(clippy::unwrap_used)]

use std::hash::{BuildHasher, Hasher};

use proptest::prelude::*;
use proptest::test_runner::{Config, RngSeed};

use super::*;

/// `cases` cases (unless `PROPTEST_CASES` says otherwise), no failure files, and a seed that is
/// printed so that a failing run can be replayed.
fn config(cases: u32) -> Config {
    let mut config = Config {
        failure_persistence: None,
        ..Config::default()
    };
    if std::env::var_os("PROPTEST_CASES").is_none() {
        config.cases = cases;
    }
    if config.rng_seed == RngSeed::Random {
        let seed = std::collections::hash_map::RandomState::new()
            .build_hasher()
            .finish();
        config.rng_seed = RngSeed::Fixed(seed);
    }
    eprintln!(
        "proptest seed {}: replay with PROPTEST_RNG_SEED={0}",
        config.rng_seed
    );
    config
}

/// Characters that make text interesting: Korean, emoji (with joiners and variation selectors),
/// JSON's special characters, controls, and any scalar value at all.
fn any_char() -> impl Strategy<Value = char> {
    prop_oneof![
        3 => prop::sample::select(vec![
            '안', '녕', '하', '세', '요', '한', '글', '👋', '🎉', '🚀', '👨', '\u{200d}',
            '\u{fe0f}', '"', '\\', '/', '\n', '\t', '\r', '\u{0}', '\u{1f}', '\u{7f}',
            '\u{2028}', '\u{feff}', '\u{10ffff}', 'a', ' ',
        ]),
        1 => any::<char>(),
    ]
}

fn any_text(max: usize) -> impl Strategy<Value = String> {
    prop::collection::vec(any_char(), 0..max).prop_map(String::from_iter)
}

/// The text of a JSON string: well-formed, or broken in the ways a hostile client would try
/// (lone surrogates, bad escapes, raw control characters, no closing quote).
fn string_literal() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        4 => any_text(6).prop_map(|text| {
            let quoted = serde_json::to_string(&text).unwrap();
            quoted[1..quoted.len() - 1].to_string()
        }),
        1 => prop::sample::select(vec![
            "\\ud800", "\\udc00", "\\udbff\\udfff", "\\ud83d\\ude00", "\\ud83d", "\\ude00x",
            "\\u0000", "\\uZZZZ", "\\u12", "\\x", "\\", "\u{1}", "\n", "\\\"", "\\/",
        ])
        .prop_map(str::to_string),
    ];
    (prop::collection::vec(piece, 0..5), any::<u8>()).prop_map(|(pieces, end)| {
        let body = pieces.concat();
        if end < 8 {
            format!("\"{body}")
        } else {
            format!("\"{body}\"")
        }
    })
}

/// Numbers as text, in and out of every range, valid and not.
fn number_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<u64>().prop_map(|n| n.to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
        any::<f64>().prop_map(|n| n.to_string()),
        prop::sample::select(vec![
            "0",
            "1",
            "-0",
            "1.0",
            "1e0",
            "1E400",
            "1e999999",
            "-1",
            "01",
            "+1",
            ".5",
            "1.",
            "9007199254740991",
            "9007199254740992",
            "18446744073709551615",
            "18446744073709551616",
            "123456789012345678901234567890123456789012345678901234567890",
            "0.000000000000000000000000000001",
            "NaN",
            "Infinity",
            "-",
        ])
        .prop_map(str::to_string),
    ]
}

/// Object keys: mostly the fields of §3 (so that objects look like frames), repeated at will.
fn key_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["t", "s", "a", "e", "d", "b", "x", "T"])
            .prop_map(|key| format!("\"{key}\"")),
        1 => string_literal(),
    ]
}

/// Frame types: the client's, the server's, and others.
fn type_literal() -> impl Strategy<Value = String> {
    prop_oneof![
        3 => prop::sample::select(vec![
            "m", "ack", "ping", "pong", "close", "open", "error", "", "M", "sub", "m ",
        ])
        .prop_map(|t| format!("\"{t}\"")),
        1 => string_literal(),
        1 => number_literal(),
    ]
}

/// JSON-like text, possibly invalid: what a `serde_json::Value` cannot represent included.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        prop::sample::select(vec![
            "null", "true", "false", "[]", "{}", "", "nul", "]", "{"
        ])
        .prop_map(str::to_string),
        number_literal(),
        string_literal(),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6)
                .prop_map(|items| format!("[{}]", items.join(","))),
            prop::collection::vec((key_literal(), inner.clone()), 0..6).prop_map(|members| {
                let members: Vec<String> = members
                    .into_iter()
                    .map(|(key, value)| format!("{key}:{value}"))
                    .collect();
                format!("{{{}}}", members.join(","))
            }),
            // Frame-shaped objects, with a type first or not, and fields repeated.
            (
                type_literal(),
                prop::collection::vec((key_literal(), inner), 0..5),
                any::<bool>()
            )
                .prop_map(|(t, members, t_first)| {
                    let mut fields: Vec<String> = members
                        .into_iter()
                        .map(|(key, value)| format!("{key}:{value}"))
                        .collect();
                    let at = if t_first { 0 } else { fields.len() };
                    fields.insert(at, format!("\"t\":{t}"));
                    format!("{{{}}}", fields.join(","))
                }),
        ]
    })
}

/// `serde_json::Value` trees: big and small numbers, Korean and emoji strings, objects whose
/// keys are mostly the fields of §3.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<u64>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        any_text(12).prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 48, 6, |inner| {
        let key = prop_oneof![
            3 => prop::sample::select(vec!["t", "s", "a", "e", "d", "b", "x"])
                .prop_map(str::to_string),
            1 => any_text(6),
        ];
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(key, inner, 0..6)
                .prop_map(|map| Value::Object(map.into_iter().collect())),
        ]
    })
}

/// Nesting deeper than any recursion limit: arrays, objects, and both inside frames.
fn deep_text() -> impl Strategy<Value = String> {
    (1usize..50_000, 0u8..4).prop_map(|(depth, shape)| {
        let nested = match shape {
            0 | 2 => format!("{}{}", "[".repeat(depth), "]".repeat(depth)),
            _ => format!("{}1{}", "{\"x\":".repeat(depth), "}".repeat(depth)),
        };
        match shape {
            0 | 1 => nested,
            2 => format!("{{\"t\":\"m\",\"s\":1,\"d\":{nested}}}"),
            _ => format!("{{\"t\":\"future\",\"x\":{nested}}}"),
        }
    })
}

/// Which kind of frame a decoded frame is, to compare a batch with its frames one by one.
fn kind(frame: &ClientFrame) -> String {
    match frame {
        ClientFrame::Message { seq, message } => format!(
            "m {seq} {:?} {:?} {:?}",
            message.event(),
            message.as_json_str(),
            message.as_bytes()
        ),
        ClientFrame::Ack(a) => format!("ack {a}"),
        ClientFrame::Ping => "ping".into(),
        ClientFrame::Pong => "pong".into(),
        ClientFrame::Close => "close".into(),
        ClientFrame::Unknown => "unknown".into(),
    }
}

fn error_kind(err: &FrameError) -> &'static str {
    match err {
        FrameError::Malformed(_) => "malformed",
        FrameError::TooLarge { .. } => "too large",
    }
}

/// The whole-or-nothing rule for a batch of `frames` (each a JSON text): the batch is accepted
/// exactly when every frame is, then decodes to the same frames, and otherwise fails as its
/// first failing frame does.
fn assert_batch_is_its_frames(frames: &[String], max_message: usize) -> Result<(), TestCaseError> {
    let body = format!("[{}]", frames.join(","));
    let one_by_one: Vec<_> = frames
        .iter()
        .map(|frame| decode_frame(frame, max_message))
        .collect();
    // Only a batch of valid JSON values says anything: `[1,` + `]` is not an array of frames.
    let valid_json = frames
        .iter()
        .all(|frame| serde_json::from_str::<&RawValue>(frame).is_ok());
    let batch = decode_batch(body.as_bytes(), max_message);
    if !valid_json {
        return Ok(());
    }
    match batch {
        Ok(decoded) => {
            prop_assert_eq!(decoded.len(), frames.len());
            for (frame, alone) in decoded.iter().zip(&one_by_one) {
                match alone {
                    Ok(alone) => prop_assert_eq!(kind(frame), kind(alone)),
                    Err(err) => prop_assert!(false, "batch accepted a frame refused alone: {err}"),
                }
            }
        }
        Err(err) => {
            let first = one_by_one.iter().find_map(|result| result.as_ref().err());
            prop_assert!(
                first.is_some(),
                "batch refused ({err}) but every frame is valid"
            );
            prop_assert_eq!(error_kind(&err), error_kind(first.unwrap()));
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn arbitrary_bytes_never_panic(body in prop::collection::vec(any::<u8>(), 0..512), max in 0usize..256) {
        let _ = decode_batch(&body, max);
        if let Ok(text) = std::str::from_utf8(&body) {
            let _ = decode_frame(text, max);
        }
    }

    #[test]
    fn arbitrary_strings_never_panic(text in any_text(256), max in 0usize..256) {
        let _ = decode_frame(&text, max);
        let _ = decode_batch(text.as_bytes(), max);
        let _ = decode_batch(format!("[{text}]").as_bytes(), max);
    }

    #[test]
    fn arbitrary_json_texts_never_panic_and_batches_are_their_frames(
        frames in prop::collection::vec(json_text(), 0..6),
        max in 0usize..128,
    ) {
        for frame in &frames {
            let _ = decode_frame(frame, max);
        }
        assert_batch_is_its_frames(&frames, max)?;
    }

    #[test]
    fn arbitrary_json_values_never_panic_and_unknown_types_are_ignored(
        value in json_value(),
        t in any_text(8),
        max in 0usize..128,
    ) {
        let text = value.to_string();
        let _ = decode_frame(&text, max);
        let _ = decode_batch(text.as_bytes(), max);
        // Any object whose `t` is a string version 1 does not define is ignored, whatever its
        // other fields hold (§3).
        if let serde_json::Value::Object(mut object) = value {
            object.insert("t".into(), serde_json::Value::String(t.clone()));
            let text = serde_json::Value::Object(object).to_string();
            let decoded = decode_frame(&text, max);
            if !CLIENT_FRAME_TYPES.contains(&t.as_str()) {
                prop_assert!(matches!(decoded, Ok(ClientFrame::Unknown)), "{text}: {decoded:?}");
            }
        }
    }
}

proptest! {
    #![proptest_config(config(64))]

    #[test]
    fn deep_nesting_never_overflows_the_stack(text in deep_text()) {
        let _ = decode_frame(&text, 1 << 20);
        let _ = decode_batch(text.as_bytes(), 1 << 20);
        let _ = decode_batch(format!("[{text}]").as_bytes(), 1 << 20);
    }
}

// ---- valid frames round-trip ---------------------------------------------------------------

/// A client frame of §3, as the model the encoder works from.
#[derive(Clone, Debug)]
enum Frame {
    Message {
        seq: u64,
        event: Option<String>,
        payload: Payload,
    },
    Ack(u64),
    Ping,
    Pong,
    Close,
    /// A type version 1 does not define, with fields that mean nothing (or the wrong thing).
    Unknown(String, Vec<(String, String)>),
}

#[derive(Clone, Debug)]
enum Payload {
    /// Text: a JSON string.
    Text(String),
    /// Any JSON value, as the exact text sent (insignificant whitespace included).
    Json(String),
    Binary(Vec<u8>),
}

fn sequence_number() -> impl Strategy<Value = u64> {
    prop_oneof![
        1 => Just(1u64),
        1 => Just(MAX_SEQ),
        4 => 1..=MAX_SEQ,
        4 => 1u64..1000,
    ]
}

/// An event name of at most 128 bytes (often exactly 128, in three-byte Hangul).
fn event_name() -> impl Strategy<Value = String> {
    prop_oneof![
        any_text(40).prop_map(|text| {
            let mut end = text.len().min(MAX_EVENT_LEN);
            while !text.is_char_boundary(end) {
                end -= 1;
            }
            text[..end].to_string()
        }),
        Just(format!("{}xy", "채".repeat(42))),
    ]
}

fn payload() -> impl Strategy<Value = Payload> {
    prop_oneof![
        any_text(64).prop_map(Payload::Text),
        (json_value(), any::<bool>()).prop_map(|(value, pretty)| {
            Payload::Json(if pretty {
                serde_json::to_string_pretty(&value).unwrap()
            } else {
                value.to_string()
            })
        }),
        prop::collection::vec(any::<u8>(), 0..300).prop_map(Payload::Binary),
    ]
}

fn frame() -> impl Strategy<Value = Frame> {
    let unknown_type = any_text(8).prop_filter("a type version 1 does not define", |t| {
        !CLIENT_FRAME_TYPES.contains(&t.as_str())
    });
    let unknown_field = (
        prop::sample::select(vec!["s", "a", "d", "b", "e", "x"]).prop_map(str::to_string),
        prop_oneof![
            json_value().prop_map(|value| value.to_string()),
            Just("\"%%%\"".to_string())
        ],
    );
    prop_oneof![
        4 => (sequence_number(), prop::option::of(event_name()), payload())
            .prop_map(|(seq, event, payload)| Frame::Message { seq, event, payload }),
        2 => (0..=MAX_SEQ).prop_map(Frame::Ack),
        1 => Just(Frame::Ping),
        1 => Just(Frame::Pong),
        1 => Just(Frame::Close),
        1 => (unknown_type, prop::collection::vec(unknown_field, 0..4))
            .prop_map(|(t, fields)| Frame::Unknown(t, fields)),
    ]
}

fn json_string(text: &str) -> String {
    serde_json::to_string(text).unwrap()
}

impl Frame {
    /// The frame's fields as §3 writes them, in their canonical order.
    fn fields(&self) -> Vec<(String, String)> {
        let field = |name: &str, value: String| (name.to_string(), value);
        match self {
            Frame::Message {
                seq,
                event,
                payload,
            } => {
                let mut fields = vec![field("t", json_string("m")), field("s", seq.to_string())];
                if let Some(event) = event {
                    fields.push(field("e", json_string(event)));
                }
                fields.push(match payload {
                    Payload::Text(text) => field("d", json_string(text)),
                    Payload::Json(json) => field("d", json.clone()),
                    Payload::Binary(bytes) => field("b", json_string(&BASE64.encode(bytes))),
                });
                fields
            }
            Frame::Ack(a) => vec![field("t", json_string("ack")), field("a", a.to_string())],
            Frame::Ping => vec![field("t", json_string("ping"))],
            Frame::Pong => vec![field("t", json_string("pong"))],
            Frame::Close => vec![field("t", json_string("close"))],
            Frame::Unknown(t, fields) => {
                let mut all = vec![field("t", json_string(t))];
                all.extend(fields.iter().cloned());
                all
            }
        }
    }

    /// Checks that `decoded` is this frame.
    fn check(&self, decoded: &ClientFrame) -> Result<(), TestCaseError> {
        match (self, decoded) {
            (
                Frame::Message {
                    seq,
                    event,
                    payload,
                },
                ClientFrame::Message { seq: got, message },
            ) => {
                prop_assert_eq!(seq, got);
                prop_assert_eq!(event.as_deref(), message.event());
                match payload {
                    Payload::Text(text) => {
                        let quoted = json_string(text);
                        prop_assert_eq!(Some(quoted.as_str()), message.as_json_str());
                        let decoded = message.as_text();
                        prop_assert_eq!(Some(text), decoded.as_ref());
                    }
                    Payload::Json(json) => {
                        prop_assert_eq!(Some(json.as_str()), message.as_json_str());
                        prop_assert_eq!(json.len(), message.payload_len());
                    }
                    Payload::Binary(bytes) => {
                        prop_assert_eq!(Some(&bytes[..]), message.as_bytes().map(|b| &b[..]));
                    }
                }
            }
            (Frame::Ack(a), ClientFrame::Ack(got)) => prop_assert_eq!(a, got),
            (Frame::Ping, ClientFrame::Ping)
            | (Frame::Pong, ClientFrame::Pong)
            | (Frame::Close, ClientFrame::Close)
            | (Frame::Unknown(..), ClientFrame::Unknown) => {}
            (expected, got) => prop_assert!(false, "expected {expected:?}, decoded {got:?}"),
        }
        Ok(())
    }
}

/// How a frame is written: its fields in some order, fields it does not know added, and JSON
/// whitespace around every token.
#[derive(Clone, Debug)]
struct Layout {
    order: Vec<usize>,
    extra: Vec<(String, String)>,
    spaces: Vec<&'static str>,
}

fn layout() -> impl Strategy<Value = Layout> {
    let extra_field = (
        prop_oneof![
            Just("future".to_string()),
            Just("v".to_string()),
            any_text(6).prop_filter("not a field of §3", |name| {
                !["t", "s", "a", "e", "d", "b"].contains(&name.as_str())
            }),
        ],
        json_value().prop_map(|value| value.to_string()),
    );
    (
        Just((0..8).collect::<Vec<usize>>()).prop_shuffle(),
        prop::collection::vec(extra_field, 0..3),
        prop::collection::vec(
            prop::sample::select(vec!["", " ", "\n", "\t", "\r\n  "]),
            64,
        ),
    )
        .prop_map(|(order, extra, spaces)| Layout {
            order,
            extra,
            spaces,
        })
}

impl Layout {
    fn encode(&self, frame: &Frame) -> String {
        let mut fields = frame.fields();
        // Unknown fields with distinct names (a repeated field is malformed JSON for a frame).
        for (name, value) in &self.extra {
            if !fields.iter().any(|(known, _)| known == name) {
                fields.push((name.clone(), value.clone()));
            }
        }
        let mut order: Vec<usize> = self
            .order
            .iter()
            .copied()
            .filter(|&i| i < fields.len())
            .collect();
        order.extend(self.order.len()..fields.len());
        let mut space = self.spaces.iter().cycle();
        let mut out = String::from(*space.next().unwrap());
        out.push('{');
        for (n, &i) in order.iter().enumerate() {
            if n > 0 {
                out.push(',');
            }
            let (name, value) = &fields[i];
            out.push_str(space.next().unwrap());
            out.push_str(&json_string(name));
            out.push_str(space.next().unwrap());
            out.push(':');
            out.push_str(space.next().unwrap());
            out.push_str(value);
            out.push_str(space.next().unwrap());
        }
        out.push('}');
        out.push_str(space.next().unwrap());
        out
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn every_valid_frame_round_trips(frame in frame(), layout in layout()) {
        let text = layout.encode(&frame);
        let decoded = decode_frame(&text, 1 << 20);
        prop_assert!(decoded.is_ok(), "{text}: {decoded:?}");
        frame.check(&decoded.unwrap())?;
    }

    #[test]
    fn a_batch_of_valid_frames_round_trips_in_order(
        frames in prop::collection::vec((frame(), layout()), 0..8),
    ) {
        let texts: Vec<String> = frames.iter().map(|(frame, layout)| layout.encode(frame)).collect();
        let body = format!(" [{}] ", texts.join(" ,"));
        let decoded = decode_batch(body.as_bytes(), 1 << 20);
        prop_assert!(decoded.is_ok(), "{body}: {decoded:?}");
        let decoded = decoded.unwrap();
        prop_assert_eq!(decoded.len(), frames.len());
        for ((frame, _), decoded) in frames.iter().zip(&decoded) {
            frame.check(decoded)?;
        }
    }
}

// ---- whole or nothing -----------------------------------------------------------------------

/// Ways to break a valid frame (each makes it malformed or its payload too large).
fn broken_frame() -> impl Strategy<Value = String> {
    let mut broken: Vec<String> = [
        r#"{"t":"m","s":0,"d":1}"#,
        r#"{"t":"m","s":1.0,"d":1}"#,
        r#"{"t":"m","s":1e0,"d":1}"#,
        r#"{"t":"m","s":-0,"d":1}"#,
        r#"{"t":"m","s":"1","d":1}"#,
        r#"{"t":"m","s":9007199254740992,"d":1}"#,
        r#"{"t":"m","s":1}"#,
        r#"{"t":"m","d":1}"#,
        r#"{"t":"m","s":1,"d":1,"b":"AA=="}"#,
        r#"{"t":"m","s":1,"b":"%%%"}"#,
        r#"{"t":"m","s":1,"b":"AA"}"#,
        r#"{"t":"m","s":1,"d":1,"e":7}"#,
        r#"{"t":"m","t":"m","s":1,"d":1}"#,
        r#"{"t":"ack"}"#,
        r#"{"t":"ack","a":-1}"#,
        r#"{"t":"ack","a":9007199254740992}"#,
        r#"{"t":7}"#,
        r#"{"s":1,"d":1}"#,
        r#"[]"#,
        r#""ping""#,
        r#"null"#,
        // A payload above the limit used below (64 bytes).
        r#"{"t":"m","s":1,"d":"0123456789012345678901234567890123456789012345678901234567890123"}"#,
    ]
    .map(str::to_string)
    .to_vec();
    broken.push(format!(
        r#"{{"t":"m","s":1,"e":"{}","d":1}}"#,
        "e".repeat(129)
    ));
    prop::sample::select(broken)
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn a_batch_is_accepted_whole_or_refused_whole(
        frames in prop::collection::vec(
            prop_oneof![
                3 => (frame(), layout()).prop_map(|(frame, layout)| layout.encode(&frame)),
                1 => broken_frame(),
            ],
            0..8,
        ),
    ) {
        assert_batch_is_its_frames(&frames, 64)?;
        let body = format!("[{}]", frames.join(","));
        let broken = frames.iter().any(|frame| decode_frame(frame, 64).is_err());
        prop_assert_eq!(decode_batch(body.as_bytes(), 64).is_err(), broken);
    }
}

// ---- size limits ----------------------------------------------------------------------------

/// How a payload of an exact size is written.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// Base64 of that many bytes.
    Binary,
    /// A JSON string of that many bytes of JSON text, mostly three-byte Hangul.
    Text,
    /// A JSON array whose insignificant whitespace makes up the size.
    Spaces,
}

/// The `d` or `b` field of a payload of exactly `len` bytes, or `None` if the shape cannot be
/// that small.
fn payload_field(shape: Shape, len: usize, seed: u8) -> Option<String> {
    match shape {
        Shape::Binary => {
            let bytes: Vec<u8> = (0..len).map(|i| (i as u8).wrapping_mul(seed)).collect();
            Some(format!("\"b\":\"{}\"", BASE64.encode(bytes)))
        }
        Shape::Text => {
            let inner = len.checked_sub(2)?;
            let mut text = "한".repeat(inner / 3);
            text.push_str(&"x".repeat(inner % 3));
            Some(format!("\"d\":\"{text}\""))
        }
        Shape::Spaces => {
            let inner = len.checked_sub(2)?;
            Some(format!("\"d\":[{}]", " ".repeat(inner)))
        }
    }
}

proptest! {
    #![proptest_config(config(512))]

    #[test]
    fn a_payload_above_max_message_is_too_large_and_at_or_below_never(
        max in 0usize..700,
        delta in prop_oneof![-4i64..=4, -700i64..700],
        shape in prop::sample::select(vec![Shape::Binary, Shape::Text, Shape::Spaces]),
        seed in any::<u8>(),
        others in prop::collection::vec((frame(), layout()), 0..3),
    ) {
        let Ok(len) = usize::try_from(max as i64 + delta) else {
            return Ok(());
        };
        let Some(field) = payload_field(shape, len, seed) else {
            return Ok(());
        };
        let text = format!("{{\"t\":\"m\",\"s\":1, {field} }}");
        let decoded = decode_frame(&text, max);
        if len > max {
            match decoded {
                Err(FrameError::TooLarge { len: got, max: limit }) => {
                    prop_assert_eq!(limit, max);
                    prop_assert!(got > max);
                    if !matches!(shape, Shape::Binary) {
                        prop_assert_eq!(got, len);
                    }
                }
                other => prop_assert!(false, "{len} > {max} bytes but {other:?}"),
            }
        } else {
            match decoded {
                Ok(ClientFrame::Message { message, .. }) => prop_assert_eq!(message.payload_len(), len),
                other => prop_assert!(false, "{len} <= {max} bytes but {other:?}"),
            }
        }
        // The same in a batch of valid small frames: refused whole with TooLarge, or accepted.
        let mut texts: Vec<String> = others
            .iter()
            .filter(|(frame, _)| match frame {
                Frame::Message { payload, .. } => match payload {
                    Payload::Text(text) => json_string(text).len() <= max,
                    Payload::Json(json) => json.len() <= max,
                    Payload::Binary(bytes) => bytes.len() <= max,
                },
                _ => true,
            })
            .map(|(frame, layout)| layout.encode(frame))
            .collect();
        let at = seed as usize % (texts.len() + 1);
        texts.insert(at, text);
        let batch = decode_batch(format!("[{}]", texts.join(",")).as_bytes(), max);
        if len > max {
            prop_assert!(matches!(batch, Err(FrameError::TooLarge { .. })), "{batch:?}");
        } else {
            prop_assert!(batch.is_ok(), "{batch:?}");
        }
    }
}
