//! Metrics through the [`metrics`] facade: the application picks the exporter (Prometheus,
//! StatsD, OpenTelemetry…) by installing a recorder, or hands one to
//! [`Builder::metrics_recorder`](crate::Builder::metrics_recorder).
//!
//! Every metric, its unit and its labels are listed in `docs/deployment.md` ("Metrics"). Labels
//! take a few fixed values only (a transport, a close reason, an error code): never a session id,
//! a session key or a room name.
//!
//! The handles of the metrics counted on hot paths (messages and bytes, sessions, attaches, the
//! buffer depth) are registered once, when the server is built, so counting is an atomic add on
//! the exporter's side and nothing at all without a recorder. Rare events (refusals by code,
//! time-outs, forwarded requests) are registered when they happen.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use metrics::{Counter, Gauge, Histogram, Key, KeyName, Label, Level, Metadata, Recorder, Unit};

use crate::error::CloseReason;
use crate::session::TransportKind;

/// The transports in the order the JavaScript client prefers them (best first): a move to a
/// later one is a fallback, to an earlier one an upgrade.
const TRANSPORTS: [TransportKind; 4] = [
    TransportKind::WebSocket,
    TransportKind::Sse,
    TransportKind::LongPoll,
    TransportKind::ShortPoll,
];

/// The label value of the `transport` label for a session that has not attached a transport yet.
const NO_TRANSPORT: &str = "none";

/// The close reasons as the `reason` label gives them (in [`reason_index`]'s order).
const REASONS: [&str; 7] = [
    "closed",
    "client_closed",
    "expired",
    "overflow",
    "shutdown",
    "protocol_error",
    "handed_over",
];

const METADATA: Metadata<'static> = Metadata::new("switchboard", Level::INFO, Some(module_path!()));

/// Where the metrics go: the global recorder (`metrics::set_global_recorder`, or an exporter's
/// `install`), or the one given to the builder.
#[derive(Clone, Default)]
pub(crate) enum Source {
    /// The recorder installed globally (if none: nothing is recorded).
    #[default]
    Global,
    /// The recorder given to [`Builder::metrics_recorder`](crate::Builder::metrics_recorder).
    Given(Arc<dyn Recorder + Send + Sync>),
}

impl Source {
    fn with<T>(&self, f: impl FnOnce(&dyn Recorder) -> T) -> T {
        match self {
            Source::Global => metrics::with_recorder(f),
            Source::Given(recorder) => f(recorder.as_ref()),
        }
    }

    fn counter(&self, name: &'static str, labels: Vec<Label>) -> Counter {
        self.with(|r| r.register_counter(&Key::from_parts(name, labels), &METADATA))
    }

    fn gauge(&self, name: &'static str, labels: Vec<Label>) -> Gauge {
        self.with(|r| r.register_gauge(&Key::from_parts(name, labels), &METADATA))
    }

    fn histogram(&self, name: &'static str) -> Histogram {
        self.with(|r| r.register_histogram(&Key::from_static_name(name), &METADATA))
    }
}

fn transport_label(kind: TransportKind) -> Vec<Label> {
    vec![Label::from_static_parts("transport", kind.as_str())]
}

fn per_transport(source: &Source, name: &'static str) -> [Counter; 4] {
    TRANSPORTS.map(|kind| source.counter(name, transport_label(kind)))
}

/// Counters for every move between two different transports (`from`, `to`), by their indexes.
fn moves(source: &Source, name: &'static str, upgrade: bool) -> Vec<Counter> {
    let mut counters = Vec::with_capacity(16);
    for (from_index, from) in TRANSPORTS.iter().enumerate() {
        for (to_index, to) in TRANSPORTS.iter().enumerate() {
            let counter = if (to_index < from_index) == upgrade && to_index != from_index {
                source.counter(
                    name,
                    vec![
                        Label::from_static_parts("from", from.as_str()),
                        Label::from_static_parts("to", to.as_str()),
                    ],
                )
            } else {
                Counter::noop()
            };
            counters.push(counter);
        }
    }
    counters
}

fn index(kind: TransportKind) -> usize {
    match kind {
        TransportKind::WebSocket => 0,
        TransportKind::Sse => 1,
        TransportKind::LongPoll => 2,
        TransportKind::ShortPoll => 3,
    }
}

fn reason_index(reason: &CloseReason) -> usize {
    match reason {
        CloseReason::Closed(_) => 0,
        CloseReason::ClientClosed => 1,
        CloseReason::Expired => 2,
        CloseReason::Overflow => 3,
        CloseReason::Shutdown => 4,
        CloseReason::ProtocolError(_) => 5,
        CloseReason::HandedOver => 6,
    }
}

/// How a session came to this node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Origin {
    /// A client opened it.
    Client,
    /// Another node of the cluster handed it over.
    Handover,
}

/// What a refusal refused (the `kind` label of `switchboard_rejected_total`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refused {
    /// An HTTP request, answered with an error (`docs/protocol.md` §7).
    Request,
    /// A client frame on a WebSocket, answered with a close code.
    Frame,
}

/// The metrics of one server (see the module documentation).
pub(crate) struct Metrics {
    source: Source,
    /// Open sessions by the transport they last attached (index 4: none yet).
    sessions: [Gauge; 5],
    attached: [Gauge; 4],
    opened: [Counter; 2],
    ended: [Counter; 7],
    attaches: [Counter; 4],
    takeovers: [Counter; 4],
    /// By `from * 4 + to`.
    fallbacks: Vec<Counter>,
    upgrades: Vec<Counter>,
    messages_out: [Counter; 4],
    bytes_out: [Counter; 4],
    messages_in: [Counter; 4],
    bytes_in: [Counter; 4],
    buffer_depth: Histogram,
    inbound_waits: Counter,
}

impl Metrics {
    /// The metrics of a new server, recorded by `source`'s recorder.
    pub(crate) fn new(source: Source) -> Self {
        describe(&source);
        let gauge = |value: &'static str| {
            source.gauge(
                "switchboard_sessions",
                vec![Label::from_static_parts("transport", value)],
            )
        };
        // In the order of `TRANSPORTS`, then none.
        let sessions = [
            gauge("websocket"),
            gauge("sse"),
            gauge("longpoll"),
            gauge("poll"),
            gauge(NO_TRANSPORT),
        ];
        let origin = |value: &'static str| {
            source.counter(
                "switchboard_sessions_opened_total",
                vec![Label::from_static_parts("origin", value)],
            )
        };
        Self {
            sessions,
            attached: TRANSPORTS
                .map(|kind| source.gauge("switchboard_transports_attached", transport_label(kind))),
            opened: [origin("client"), origin("handover")],
            ended: REASONS.map(|reason| {
                source.counter(
                    "switchboard_sessions_ended_total",
                    vec![Label::from_static_parts("reason", reason)],
                )
            }),
            attaches: per_transport(&source, "switchboard_transport_attaches_total"),
            takeovers: per_transport(&source, "switchboard_transport_takeovers_total"),
            fallbacks: moves(&source, "switchboard_transport_fallbacks_total", false),
            upgrades: moves(&source, "switchboard_transport_upgrades_total", true),
            messages_out: per_transport(&source, "switchboard_messages_out_total"),
            bytes_out: per_transport(&source, "switchboard_bytes_out_total"),
            messages_in: per_transport(&source, "switchboard_messages_in_total"),
            bytes_in: per_transport(&source, "switchboard_bytes_in_total"),
            buffer_depth: source.histogram("switchboard_buffer_depth"),
            inbound_waits: source.counter("switchboard_inbound_waits_total", Vec::new()),
            source,
        }
    }

    /// A session was opened here (by a client, or handed over from another node).
    pub(crate) fn session_opened(&self, origin: Origin) {
        self.opened[origin as usize].increment(1);
        self.sessions[4].increment(1.0);
    }

    /// A session ended, having last attached `last` (if any).
    pub(crate) fn session_ended(&self, reason: &CloseReason, last: Option<TransportKind>) {
        self.ended[reason_index(reason)].increment(1);
        self.sessions[last.map_or(4, index)].decrement(1.0);
    }

    /// A session that was never closed was dropped (its opening failed half-way): it no longer
    /// counts as open.
    pub(crate) fn session_dropped(&self, last: Option<TransportKind>) {
        self.sessions[last.map_or(4, index)].decrement(1.0);
    }

    /// A transport of `kind` attached to a session whose last transport was `last`, taking over
    /// from an attached one if `takeover`; `open`: the session has not ended (an ended one may
    /// still get a transport, for its close frame, and no longer counts among the sessions).
    pub(crate) fn attached(
        &self,
        kind: TransportKind,
        last: Option<TransportKind>,
        takeover: bool,
        open: bool,
    ) {
        let to = index(kind);
        self.attaches[to].increment(1);
        self.attached[to].increment(1.0);
        if takeover {
            self.takeovers[to].increment(1);
        }
        if last == Some(kind) || !open {
            return;
        }
        let from = last.map_or(4, index);
        self.sessions[from].decrement(1.0);
        self.sessions[to].increment(1.0);
        if from < 4 {
            if to < from {
                self.upgrades[from * 4 + to].increment(1);
            } else {
                self.fallbacks[from * 4 + to].increment(1);
            }
        }
    }

    /// A transport of `kind` detached (or was taken over).
    pub(crate) fn detached(&self, kind: TransportKind) {
        self.attached[index(kind)].decrement(1.0);
    }

    /// `messages` messages of `bytes` payload bytes were handed to a transport of `kind`.
    pub(crate) fn sent(&self, kind: TransportKind, messages: u64, bytes: u64) {
        self.messages_out[index(kind)].increment(messages);
        self.bytes_out[index(kind)].increment(bytes);
    }

    /// A client message of `bytes` payload bytes, carried by a transport of `kind`, was delivered
    /// to the application.
    pub(crate) fn received(&self, kind: TransportKind, bytes: usize) {
        self.messages_in[index(kind)].increment(1);
        self.bytes_in[index(kind)].increment(bytes as u64);
    }

    /// A client message waited for room in the application's inbound queue.
    pub(crate) fn inbound_wait(&self) {
        self.inbound_waits.increment(1);
    }

    /// One session's outbound buffer held `messages` messages (sampled by the reaper).
    pub(crate) fn buffer_depth(&self, messages: usize) {
        self.buffer_depth.record(messages as f64);
    }

    /// A request or frame was refused with error `code`.
    pub(crate) fn rejected(&self, what: Refused, code: &'static str) {
        let kind = match what {
            Refused::Request => "request",
            Refused::Frame => "frame",
        };
        self.source
            .counter(
                "switchboard_rejected_total",
                vec![
                    Label::from_static_parts("kind", kind),
                    Label::from_static_parts("code", code),
                ],
            )
            .increment(1);
    }

    /// A transport of `kind` was dropped because its client was silent too long.
    pub(crate) fn heartbeat_timeout(&self, kind: TransportKind) {
        self.source
            .counter(
                "switchboard_heartbeat_timeouts_total",
                transport_label(kind),
            )
            .increment(1);
    }

    /// A transport of `kind` was dropped because a write stalled.
    pub(crate) fn write_timeout(&self, kind: TransportKind) {
        self.source
            .counter("switchboard_write_timeouts_total", transport_label(kind))
            .increment(1);
    }

    /// A new session was refused by a limit per client address (`limit`: `sessions` or
    /// `open_rate`).
    pub(crate) fn address_refusal(&self, limit: &'static str) {
        self.source
            .counter(
                "switchboard_address_refusals_total",
                vec![Label::from_static_parts("limit", limit)],
            )
            .increment(1);
    }

    /// A request for a session another node owns was forwarded there, with `outcome`
    /// (`answered`, `failed` or `busy`), in `took`.
    pub(crate) fn forwarded(&self, outcome: &'static str, took: Duration) {
        self.source
            .counter(
                "switchboard_forwarded_total",
                vec![Label::from_static_parts("outcome", outcome)],
            )
            .increment(1);
        self.source
            .histogram("switchboard_forward_duration_seconds")
            .record(took.as_secs_f64());
    }
}

impl Default for Metrics {
    /// Metrics that record nothing (until the builder makes the real ones).
    fn default() -> Self {
        Self {
            source: Source::Global,
            sessions: std::array::from_fn(|_| Gauge::noop()),
            attached: std::array::from_fn(|_| Gauge::noop()),
            opened: std::array::from_fn(|_| Counter::noop()),
            ended: std::array::from_fn(|_| Counter::noop()),
            attaches: std::array::from_fn(|_| Counter::noop()),
            takeovers: std::array::from_fn(|_| Counter::noop()),
            fallbacks: vec![Counter::noop(); 16],
            upgrades: vec![Counter::noop(); 16],
            messages_out: std::array::from_fn(|_| Counter::noop()),
            bytes_out: std::array::from_fn(|_| Counter::noop()),
            messages_in: std::array::from_fn(|_| Counter::noop()),
            bytes_in: std::array::from_fn(|_| Counter::noop()),
            buffer_depth: Histogram::noop(),
            inbound_waits: Counter::noop(),
        }
    }
}

impl fmt::Debug for Metrics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let source = match self.source {
            Source::Global => "global",
            Source::Given(_) => "given",
        };
        f.debug_struct("Metrics")
            .field("recorder", &source)
            .finish()
    }
}

/// Gives every metric its unit and description (what an exporter prints as `# HELP`).
fn describe(source: &Source) {
    const COUNTERS: &[(&str, Unit, &str)] = &[
        (
            "switchboard_sessions_opened_total",
            Unit::Count,
            "Sessions opened on this node, by origin (client: opened by a client; handover: moved here from another node).",
        ),
        (
            "switchboard_sessions_ended_total",
            Unit::Count,
            "Sessions ended on this node, by close reason.",
        ),
        (
            "switchboard_transport_attaches_total",
            Unit::Count,
            "Transports attached to a session, by kind (every long or short poll attaches).",
        ),
        (
            "switchboard_transport_takeovers_total",
            Unit::Count,
            "Attaches that took over from a transport still attached, by the new transport's kind.",
        ),
        (
            "switchboard_transport_fallbacks_total",
            Unit::Count,
            "Sessions whose transport changed to a less preferred kind, by from and to.",
        ),
        (
            "switchboard_transport_upgrades_total",
            Unit::Count,
            "Sessions whose transport changed to a more preferred kind, by from and to.",
        ),
        (
            "switchboard_messages_out_total",
            Unit::Count,
            "Messages handed to a transport to write to its client, by transport (a message sent again after a reconnect counts again).",
        ),
        (
            "switchboard_bytes_out_total",
            Unit::Bytes,
            "Payload bytes of the messages in switchboard_messages_out_total, by transport.",
        ),
        (
            "switchboard_messages_in_total",
            Unit::Count,
            "Client messages delivered to the application (duplicates not counted), by transport.",
        ),
        (
            "switchboard_bytes_in_total",
            Unit::Bytes,
            "Payload bytes of the messages in switchboard_messages_in_total, by transport.",
        ),
        (
            "switchboard_inbound_waits_total",
            Unit::Count,
            "Client messages that waited for room in the application's inbound queue (back-pressure).",
        ),
        (
            "switchboard_rejected_total",
            Unit::Count,
            "Requests (kind=request) and WebSocket frames (kind=frame) refused, by error code.",
        ),
        (
            "switchboard_heartbeat_timeouts_total",
            Unit::Count,
            "Transports dropped because their client was silent for the ping interval plus the ping timeout.",
        ),
        (
            "switchboard_write_timeouts_total",
            Unit::Count,
            "Transports dropped because a write stalled for the write timeout.",
        ),
        (
            "switchboard_address_refusals_total",
            Unit::Count,
            "New sessions refused by a limit per client address, by limit (sessions, open_rate).",
        ),
        (
            "switchboard_forwarded_total",
            Unit::Count,
            "Requests forwarded to the node of the cluster that owns their session, by outcome (answered, failed, busy).",
        ),
    ];
    const GAUGES: &[(&str, Unit, &str)] = &[
        (
            "switchboard_sessions",
            Unit::Count,
            "Open sessions, by the transport each last attached (none: not attached yet).",
        ),
        (
            "switchboard_transports_attached",
            Unit::Count,
            "Transports attached right now, by kind (longpoll: long polls parked).",
        ),
    ];
    const HISTOGRAMS: &[(&str, Unit, &str)] = &[
        (
            "switchboard_buffer_depth",
            Unit::Count,
            "Messages in a session's outbound buffer not yet acknowledged by its client, sampled for every session once a reaper pass (about once a second).",
        ),
        (
            "switchboard_forward_duration_seconds",
            Unit::Seconds,
            "Time from forwarding a request to another node until its answer.",
        ),
    ];
    source.with(|recorder| {
        for (name, unit, help) in COUNTERS {
            recorder.describe_counter(KeyName::from_const_str(name), Some(*unit), (*help).into());
        }
        for (name, unit, help) in GAUGES {
            recorder.describe_gauge(KeyName::from_const_str(name), Some(*unit), (*help).into());
        }
        for (name, unit, help) in HISTOGRAMS {
            recorder.describe_histogram(KeyName::from_const_str(name), Some(*unit), (*help).into());
        }
    });
}
