//! What recording the metrics costs (issue 14): `load --quick --only metrics`.
//!
//! Each round runs the fan-out of scenario 2 against the floor, Switchboard without a recorder
//! and Switchboard with a Prometheus recorder installed (`sb_server --metrics`), in an order that
//! rotates from round to round, then the echo of scenario 3 against Switchboard without and
//! with. Reported: the median over the rounds of each ratio that matters (Switchboard's
//! deliveries/s and server CPU per delivery against the floor's of the same round, and the echo's
//! p99 and server CPU), with metrics off and on, and how much on changes it. Before the rounds, a
//! check that `--metrics` really records: a session opened against it shows in its `/metrics`.

use crate::Error;
use crate::report::Table;
use crate::scenarios::{Echo, FanOut, Plan, Problems, echo_on, fanout_on};
use crate::server::{Kind, Server};

/// The three fan-out servers of a round.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fan {
    Floor,
    Off,
    On,
}

async fn start(fan: Fan) -> Result<Server, Error> {
    match fan {
        Fan::Floor => Server::start(Kind::Floor, &[]).await,
        Fan::Off => Server::start(Kind::Switchboard, &[]).await,
        Fan::On => Server::start(Kind::Switchboard, &["--metrics"]).await,
    }
}

/// A session opened against `sb_server --metrics` is counted in its `/metrics`.
async fn recording() -> Result<(), Error> {
    let server = start(Fan::On).await?;
    let http = reqwest::Client::new();
    let base = format!("http://127.0.0.1:{}", server.port());
    let opened = http.post(format!("{base}/rt/open?v=1")).send().await?;
    let text = http
        .get(format!("{base}/metrics"))
        .send()
        .await?
        .text()
        .await?;
    server.stop().await;
    if !opened.status().is_success() {
        return Err(format!("POST /rt/open answered {}", opened.status()).into());
    }
    if !text.contains(r#"switchboard_sessions_opened_total{origin="client"} 1"#) {
        return Err(format!("the opened session is not in /metrics:\n{text}").into());
    }
    Ok(())
}

fn median(mut values: Vec<f64>) -> Option<f64> {
    values.retain(|v| v.is_finite());
    if values.is_empty() {
        return None;
    }
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    Some(if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    })
}

/// The spread of `values`, as `min–max`.
fn spread(values: &[f64]) -> String {
    let finite = values.iter().copied().filter(|v| v.is_finite());
    let min = finite.clone().fold(f64::INFINITY, f64::min);
    let max = finite.fold(f64::NEG_INFINITY, f64::max);
    format!("{min:.3}–{max:.3}")
}

/// The scenario (see the module documentation).
pub async fn metrics(plan: &Plan, problems: &mut Problems) -> Table {
    let rounds = if plan.mode == "smoke" { 1 } else { 5 };
    let (n, m) = (plan.fanout_clients, plan.fanout_messages);
    let (c, r, s) = (plan.echo_conns, plan.echo_rate, plan.echo_secs);
    let mut t = Table::new(
        "metrics",
        &format!(
            "metrics off and on: fan-out ({n} clients, {m} broadcasts) and echo ({c} connections, {r} msg/s, {s} s), median of {rounds} rounds"
        ),
        &["metrics off", "metrics on", "on ÷ off"],
    );
    t.ratios = false;
    if let Err(err) = recording().await {
        problems.add(format!(
            "metrics: sb_server --metrics does not record: {err}"
        ));
    }
    let mut rate = (Vec::new(), Vec::new());
    let mut cpu = (Vec::new(), Vec::new());
    let mut p99 = (Vec::new(), Vec::new());
    let mut echo_cpu = (Vec::new(), Vec::new());
    let orders = [
        [Fan::Floor, Fan::Off, Fan::On],
        [Fan::On, Fan::Floor, Fan::Off],
        [Fan::Off, Fan::On, Fan::Floor],
    ];
    for round in 0..rounds {
        let mut runs: Vec<(Fan, FanOut)> = Vec::new();
        for fan in orders[round % orders.len()] {
            eprintln!("[metrics] round {}: fan-out, {}", round + 1, label(fan));
            let run = match start(fan).await {
                Ok(server) => fanout_on(server, n, m, plan.phase_limit()).await,
                Err(err) => Err(err),
            };
            if let Some(run) = problems.keep(format!("metrics fan-out {}", label(fan)), run) {
                if run.lost > 0 || run.dups > 0 {
                    problems.add(format!(
                        "metrics fan-out {}: {} lost, {} doubled",
                        label(fan),
                        run.lost,
                        run.dups
                    ));
                }
                runs.push((fan, run));
            }
        }
        let of = |fan| runs.iter().find(|(f, _)| *f == fan).map(|(_, run)| *run);
        if let (Some(floor), Some(off), Some(on)) = (of(Fan::Floor), of(Fan::Off), of(Fan::On)) {
            rate.0.push(off.rate / floor.rate);
            rate.1.push(on.rate / floor.rate);
            cpu.0.push(off.cpu_per_m / floor.cpu_per_m);
            cpu.1.push(on.cpu_per_m / floor.cpu_per_m);
        }
        let mut echoes: Vec<(Fan, Echo)> = Vec::new();
        let order = if round % 2 == 0 {
            [Fan::Off, Fan::On]
        } else {
            [Fan::On, Fan::Off]
        };
        for fan in order {
            eprintln!("[metrics] round {}: echo, {}", round + 1, label(fan));
            let run = match start(fan).await {
                Ok(server) => echo_on(server, c, r, s).await,
                Err(err) => Err(err),
            };
            if let Some(run) = problems.keep(format!("metrics echo {}", label(fan)), run) {
                if run.lost > 0 {
                    problems.add(format!("metrics echo {}: {} lost", label(fan), run.lost));
                }
                echoes.push((fan, run));
            }
        }
        let of = |fan| echoes.iter().find(|(f, _)| *f == fan).map(|(_, run)| *run);
        if let (Some(off), Some(on)) = (of(Fan::Off), of(Fan::On)) {
            p99.0.push(off.p99);
            p99.1.push(on.p99);
            echo_cpu.0.push(off.cpu);
            echo_cpu.1.push(on.cpu);
        }
    }
    let mut row = |metric: &str, unit: &str, decimals, (off, on): (Vec<f64>, Vec<f64>)| {
        let (off_median, on_median) = (median(off.clone()), median(on.clone()));
        let change = match (off_median, on_median) {
            (Some(off), Some(on)) if off > 0.0 => Some(on / off),
            _ => None,
        };
        t.row(metric, unit, decimals, vec![off_median, on_median, change]);
        if !off.is_empty() {
            t.note(format!(
                "{metric}: off {}, on {} over the rounds",
                spread(&off),
                spread(&on)
            ));
        }
    };
    row("fan-out deliveries/s, Switchboard ÷ floor", "×", 3, rate);
    row(
        "fan-out server CPU per delivery, Switchboard ÷ floor",
        "×",
        3,
        cpu,
    );
    row("echo round trip p99", "ms", 3, p99);
    row("echo server CPU", "s", 3, echo_cpu);
    t.note("metrics on: sb_server --metrics, a Prometheus recorder (metrics-exporter-prometheus) installed before the server is built, as in the chat example; off: no recorder.");
    t.note("each fan-out ratio divides by the floor's run of the same round; the order of the three servers rotates from round to round.");
    t
}

fn label(fan: Fan) -> &'static str {
    match fan {
        Fan::Floor => "floor",
        Fan::Off => "switchboard, metrics off",
        Fan::On => "switchboard, metrics on",
    }
}
