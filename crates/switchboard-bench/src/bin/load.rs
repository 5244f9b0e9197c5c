//! `load`: the Switchboard benchmark harness.
//!
//! ```text
//! load [--quick | --full | --smoke] [--json PATH] [--only idle,fanout,echo,poll,storm,cluster,abuse,transports,memory,metrics] [--alloc LABELS] [--transport-clients N] [--sb-unbatched] [--read-buffer BYTES] [--heap DIR]
//! ```
//!
//! The `transports` scenario (issue 12) receives one room's broadcasts over WebSocket, Server-Sent
//! Events and long polling, one phase each: `load --quick --only transports` (about 20 s;
//! `--full`: 60 s phases, about 4 minutes). `--transport-clients N` sets its room size (default
//! 1,000 in both modes), for example to see the transports on a machine that is not saturated.
//!
//! The `memory` scenario (RSS after a burst of slow consumers, per allocator; about 12 minutes)
//! runs only when `--only` names it; `--alloc glibc,jemalloc-bg` limits it to some of its
//! allocator set-ups ([`switchboard_bench::memory::VARIANTS`]).
//!
//! Switchboard WebSocket clients ask for batches (`batch=1`) like the JavaScript and Rust
//! clients do; `--sb-unbatched` makes them take one frame per WebSocket message instead.
//! `--read-buffer BYTES` sets the read buffer of every client socket (default 32 KiB, see
//! [`switchboard_bench::proto::DEFAULT_READ_BUFFER`]).
//! `--heap DIR` runs the idle scenario's Switchboard servers as `sb_heap` (under dhat's heap
//! profiler), which write where every live byte was allocated to `DIR` (see `sb_heap`).
//!
//! Starts the server binaries found next to itself, runs the scenarios, prints one table per
//! scenario and writes all results as JSON to `PATH` (if given). `--smoke` runs tiny numbers and
//! exits with status 1 if any message was lost or duplicated or any server failed.
//!
//! The `cluster` scenario starts `redis-server` (from the `PATH`, or `$REDIS_SERVER`) on a free
//! port of 127.0.0.1 for each run, and stops it afterwards.

use std::process::ExitCode;
use std::time::Instant;

use serde_json::json;
use switchboard_bench::report::Table;
use switchboard_bench::scenarios::{self, Plan, Problems};
use switchboard_bench::{Error, sys};

/// The scenarios, in the order they run (`--only` picks some).
const SCENARIOS: [&str; 10] = [
    "idle",
    "fanout",
    "echo",
    "poll",
    "storm",
    "cluster",
    "abuse",
    "transports",
    "memory",
    "metrics",
];

/// The scenarios that run only when `--only` names them.
const OPT_IN: [&str; 2] = ["memory", "metrics"];

/// Parsed command line.
#[derive(Debug)]
struct Args {
    plan: Plan,
    json: Option<String>,
    only: Option<Vec<String>>,
    alloc: Option<Vec<String>>,
}

fn parse_args() -> Result<Args, Error> {
    let mut plan = Plan::quick();
    let mut transport_clients = None;
    let mut json = None;
    let mut only = None;
    let mut alloc = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => plan = Plan::quick(),
            "--full" => plan = Plan::full(),
            "--smoke" => plan = Plan::smoke(),
            "--json" => json = Some(args.next().ok_or("--json needs a path")?),
            "--sb-unbatched" => switchboard_bench::proto::set_switchboard_batching(false),
            "--heap" => {
                let dir = args.next().ok_or("--heap needs a directory")?;
                scenarios::set_heap_dir(dir.into());
            }
            "--transport-clients" => {
                let n = args.next().ok_or("--transport-clients needs a number")?;
                transport_clients = Some(
                    n.parse()
                        .map_err(|_| format!("--transport-clients: not a number: {n:?}"))?,
                );
            }
            "--read-buffer" => {
                let bytes = args.next().ok_or("--read-buffer needs a size in bytes")?;
                let bytes = bytes
                    .parse()
                    .map_err(|_| format!("--read-buffer: not a size in bytes: {bytes:?}"))?;
                switchboard_bench::proto::set_read_buffer(bytes);
            }
            "--alloc" => {
                let list = args.next().ok_or("--alloc needs a list")?;
                let labels: Vec<String> = list.split(',').map(str::to_owned).collect();
                let known = switchboard_bench::memory::VARIANTS.map(|v| v.label);
                if let Some(unknown) = labels.iter().find(|l| !known.contains(&l.as_str())) {
                    return Err(format!(
                        "--alloc: no allocator set-up {unknown:?} (there are {})",
                        known.join(", ")
                    )
                    .into());
                }
                alloc = Some(labels);
            }
            "--only" => {
                let list = args.next().ok_or("--only needs a list")?;
                let names: Vec<String> = list.split(',').map(str::to_owned).collect();
                if let Some(unknown) = names.iter().find(|n| !SCENARIOS.contains(&n.as_str())) {
                    return Err(format!(
                        "--only: no scenario {unknown:?} (there are {})",
                        SCENARIOS.join(", ")
                    )
                    .into());
                }
                only = Some(names);
            }
            "-h" | "--help" => {
                println!(
                    "usage: load [--quick | --full | --smoke] [--json PATH] [--only idle,fanout,echo,poll,storm,cluster,abuse,transports,memory,metrics] [--alloc LABELS] [--transport-clients N] [--sb-unbatched] [--read-buffer BYTES] [--heap DIR]"
                );
                std::process::exit(0);
            }
            other => return Err(format!("unknown argument {other:?}").into()),
        }
    }
    if let Some(n) = transport_clients {
        plan.transport_clients = n;
    }
    Ok(Args {
        plan,
        json,
        only,
        alloc,
    })
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("load: {e}");
            return ExitCode::from(2);
        }
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("load: cannot start the runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(run(args)) {
        Ok(true) => ExitCode::SUCCESS,
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            eprintln!("load: {e}");
            ExitCode::from(2)
        }
    }
}

/// Runs the selected scenarios; `Ok(false)` when a smoke run found problems.
async fn run(args: Args) -> Result<bool, Error> {
    let plan = args.plan;
    let nofile = sys::raise_nofile_limit()?;
    let _ = switchboard_bench::payload::epoch();
    eprintln!("load: mode {}, open-file limit {nofile}", plan.mode);
    let wanted = |s: &str| match &args.only {
        Some(only) => only.iter().any(|x| x == s),
        None => !OPT_IN.contains(&s),
    };
    let started = Instant::now();
    let mut problems = Problems::default();
    let mut tables: Vec<Table> = Vec::new();
    for name in SCENARIOS.into_iter().filter(|name| wanted(name)) {
        let new = match name {
            "idle" => vec![scenarios::idle(&plan, &mut problems).await],
            "fanout" => vec![scenarios::fanout(&plan, &mut problems).await],
            "echo" => vec![scenarios::echo(&plan, &mut problems).await],
            "poll" => vec![scenarios::long_poll(&plan, &mut problems).await],
            "storm" => vec![scenarios::storm(&plan, &mut problems).await],
            "abuse" => vec![switchboard_bench::abuse::abuse(&plan, &mut problems).await],
            "transports" => {
                vec![switchboard_bench::transports::transports(&plan, &mut problems).await]
            }
            "metrics" => vec![switchboard_bench::metrics_cost::metrics(&plan, &mut problems).await],
            "memory" => vec![
                switchboard_bench::memory::memory(&plan, &mut problems, args.alloc.as_deref())
                    .await,
            ],
            _ => scenarios::cluster(&plan, &mut problems).await,
        };
        for table in new {
            print!("{}", table.render());
            tables.push(table);
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
    println!("\nload: {} run finished in {elapsed:.1} s", plan.mode);
    if !problems.list.is_empty() {
        println!("problems:");
        for p in &problems.list {
            println!("  - {p}");
        }
    }
    if let Some(path) = args.json {
        let doc = json!({
            "mode": plan.mode,
            "elapsed_s": elapsed,
            "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
            "plan": format!("{plan:?}"),
            "problems": problems.list,
            "scenarios": tables.iter().map(Table::to_json).collect::<Vec<_>>(),
        });
        if let Some(dir) = std::path::Path::new(&path).parent()
            && !dir.as_os_str().is_empty()
        {
            std::fs::create_dir_all(dir)?;
        }
        std::fs::write(&path, serde_json::to_string_pretty(&doc)?)?;
        println!("results written to {path}");
    }
    Ok(plan.mode != "smoke" || problems.list.is_empty())
}
