//! Requests a client can repeat cost a bounded number of log lines (issue 11, item 3): thousands
//! of refused POSTs, opens and cross-site requests write a line per kind every 10 s, not a line
//! each, and the server keeps serving meanwhile.
#![allow(clippy::unwrap_used)]

mod common;

use common::{Captured, TEXTS, TestServer};
use serde_json::json;
use switchboard::Switchboard;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repeated_bad_requests_cost_a_line_per_kind_not_a_line_each() {
    let captured = Captured::default();
    let writer = captured.clone();
    // INFO, as the guide recommends for production; global, because the server's tasks run on
    // every worker thread. This file holds this one test, so the log is its own.
    let subscriber = tracing_subscriber::fmt()
        .with_ansi(false)
        .with_max_level(tracing::Level::INFO)
        .with_writer(move || writer.clone())
        .finish();
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let realtime = Switchboard::builder().open_rate_per_address(1, 1).build();
    let server = TestServer::start_served(realtime, |serve| serve).await;
    let http = reqwest::Client::new();
    let sid = common::open(&http, &server.base).await;
    const EACH: usize = 500;
    let mut statuses = std::collections::BTreeMap::new();
    for i in 0..EACH {
        // A malformed batch, a cross-site request, an open over the address's rate.
        let (status, _) = common::post(
            &http,
            &server.base,
            &sid,
            format!("[{{\"t\":\"m\",\"s\":{i}"),
        )
        .await;
        *statuses.entry(("malformed", status.as_u16())).or_insert(0) += 1;
        let status = http
            .post(format!("{}/open?v=1", server.base))
            .header("origin", "https://evil.example")
            .send()
            .await
            .unwrap()
            .status();
        *statuses.entry(("origin", status.as_u16())).or_insert(0) += 1;
        let status = http
            .post(format!("{}/open?v=1", server.base))
            .send()
            .await
            .unwrap()
            .status();
        *statuses.entry(("open", status.as_u16())).or_insert(0) += 1;
    }
    println!("{statuses:?}");
    assert_eq!(statuses[&("malformed", 400)], EACH);
    assert_eq!(statuses[&("origin", 403)], EACH);
    assert!(statuses[&("open", 429)] >= EACH - 20);
    // The session still works, with Korean text.
    let body = json!([{"t": "m", "s": 1, "d": TEXTS[0]}]).to_string();
    let (status, answer) = common::post(&http, &server.base, &sid, body).await;
    assert_eq!((status.as_u16(), answer[0]["a"].as_u64()), (200, Some(1)));

    let log = String::from_utf8_lossy(&captured.0.lock().unwrap()).into_owned();
    let lines = log.lines().count();
    println!(
        "{lines} log lines for {} refused requests:\n{log}",
        3 * EACH
    );
    // One line per kind while the test runs (it takes less than the 10 s budget period; if it
    // ever takes longer, one more line per kind per period).
    for kind in ["POST refused", "disallowed origin", "session open refused"] {
        let count = log.lines().filter(|line| line.contains(kind)).count();
        assert!(
            (1..=3).contains(&count),
            "{count} lines of {kind:?}:\n{log}"
        );
    }
    assert!(lines <= 12, "{lines} log lines:\n{log}");
}
