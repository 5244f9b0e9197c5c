//! Load generator and benchmark harness for Switchboard.
//!
//! The `load` binary starts each server binary of this crate (`sb_server`, `floor`, `peer`, found
//! next to its own executable), drives it with many clients from the same process and reports
//! the servers side by side:
//!
//! 1. idle memory per session (WebSocket, and parked long polls for Switchboard);
//! 2. fan-out of back-to-back broadcasts to one room;
//! 3. open-loop echo round trips;
//! 4. polling: long polling with and without low-priority coalescing, and short polling
//!    (Switchboard);
//! 5. a reconnect storm with resume (Switchboard);
//! 6. a cluster of two nodes on one Redis: fan-out against socketioxide with its Redis adapter,
//!    cross-node broadcast latency, and Redis commands and bytes per message (issue 10);
//! 7. hostile clients (issue 11): slowloris, an idle-connection flood and a session flood against
//!    Switchboard hardened and unprotected, with a normal client's success and round trip.
//! 8. memory after a burst of slow consumers has ended, per allocator (issue 11; run only when
//!    asked for, `load --only memory`);
//! 9. transports (issue 12): one room of 1,000 clients at 50 broadcasts/s over WebSocket, Server-Sent
//!    Events and long polling, one after the other: latency, HTTP requests and server CPU per
//!    delivered message, and whether every client got every message once and in order.
//!
//! Modules:
//!
//! - [`sb_server`]: the Switchboard server the `sb_server*` binaries run;
//! - [`sys`]: server RSS and CPU from `/proc`, the open-file limit;
//! - [`serve`]: what the three server binaries share (command line, serving);
//! - [`server`]: starting and stopping the server binaries ([`server::Kind`]);
//! - [`proto`]: the three wire protocols as one client [`proto::Driver`];
//! - [`payload`]: timestamped, indexed benchmark payloads;
//! - [`stats`]: shared latency histograms;
//! - [`clients`]: client tasks (WebSocket, long and short polling) and their counters;
//! - [`redis`]: a `redis-server` of the harness's own and its `INFO` counters;
//! - [`scenarios`]: scenarios 1–6 and the sizes of every scenario ([`scenarios::Plan`]);
//! - [`abuse`]: scenario 7 (its own module);
//! - [`memory`]: scenario 8 and the allocator set-ups it compares;
//! - [`transports`]: scenario 9, with its SSE and long-polling clients;
//! - [`report`]: tables and JSON.

pub mod abuse;
pub mod clients;
pub mod memory;
pub mod metrics_cost;
pub mod payload;
pub mod proto;
pub mod redis;
pub mod report;
pub mod sb_server;
pub mod scenarios;
pub mod serve;
pub mod server;
pub mod stats;
pub mod sys;
pub mod transports;

/// The error type of the harness: anything printable.
pub type Error = Box<dyn std::error::Error + Send + Sync>;
