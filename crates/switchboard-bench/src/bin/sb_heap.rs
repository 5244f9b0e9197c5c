//! `sb_heap`: `sb_server` under a heap profiler, to find where every byte of an idle session goes.
//!
//! ```text
//! sb_heap [--port N] [--serve axum|switchboard] --sessions N --out PATH
//! sb_heap --report PATH --sessions N [--top K]
//! ```
//!
//! The first form serves the same app as `sb_server` (defaults plus `allow_any_origin`, mounted
//! at `/rt`, every session in the room `"all"`) with [dhat](https://docs.rs/dhat)'s allocator, which
//! records the backtrace of every allocation. Once the server holds `--sessions` sessions and the
//! count has not moved for 3 s, it writes the live heap, grouped by allocation backtrace, to
//! `--out` (dhat's JSON; also readable with DHAT's viewer) and prints the heap's growth since
//! start divided by the sessions. Drive it with `load --only idle --heap DIR` (which starts it in
//! place of `sb_server` for each Switchboard row of the idle scenario), or with any client.
//!
//! The second form reads such a file and prints the allocation sites that are live about once per
//! session or more, largest first, as bytes per session, each with its backtrace (allocator
//! frames dropped). Frames are named only with debug line tables
//! (`CARGO_PROFILE_RELEASE_DEBUG=line-tables-only`).
//!
//! dhat counts the bytes asked for; the allocator rounds each block up (glibc: to 16 bytes, plus
//! 8 bytes of header), and the kernel counts only the pages touched (RSS), so the three figures
//! differ.

use std::process::ExitCode;
use std::time::Duration;

use axum::Router;
use switchboard::{Session, Switchboard};
use switchboard_bench::serve::{Serving, exit_code, flag_value, run_with};

#[global_allocator]
static ALLOC: dhat::Alloc = dhat::Alloc;

const USAGE: &str = "usage: sb_heap [--port N] [--serve axum|switchboard] --sessions N --out PATH\n       sb_heap --report PATH --sessions N [--top K]";

#[derive(Debug, Default)]
struct Args {
    port: u16,
    serve: Serving,
    sessions: usize,
    out: Option<String>,
    report: Option<String>,
    top: Option<usize>,
}

impl Args {
    fn parse() -> Result<Self, String> {
        let mut args = Args::default();
        let mut iter = std::env::args().skip(1);
        while let Some(arg) = iter.next() {
            match arg.as_str() {
                "--port" => args.port = flag_value(&arg, iter.next(), USAGE)?,
                "--serve" => args.serve = flag_value(&arg, iter.next(), USAGE)?,
                "--sessions" => args.sessions = flag_value(&arg, iter.next(), USAGE)?,
                "--out" => args.out = Some(flag_value(&arg, iter.next(), USAGE)?),
                "--report" => args.report = Some(flag_value(&arg, iter.next(), USAGE)?),
                "--top" => args.top = Some(flag_value(&arg, iter.next(), USAGE)?),
                "-h" | "--help" => return Err(USAGE.to_string()),
                other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
            }
        }
        if args.sessions == 0 {
            return Err(format!("--sessions is needed\n{USAGE}"));
        }
        if args.out.is_none() && args.report.is_none() {
            return Err(format!("--out or --report is needed\n{USAGE}"));
        }
        Ok(args)
    }
}

fn main() -> ExitCode {
    let args = match Args::parse() {
        Ok(args) => args,
        Err(usage) => return exit_code("sb_heap", Err(usage)),
    };
    if let Some(path) = &args.report {
        return match report(path, args.sessions, args.top.unwrap_or(40)) {
            Ok(()) => ExitCode::SUCCESS,
            Err(err) => {
                eprintln!("sb_heap: {err}");
                ExitCode::FAILURE
            }
        };
    }
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => return exit_code("sb_heap", Ok(Err(err))),
    };
    exit_code("sb_heap", Ok(runtime.block_on(serve(args))))
}

async fn serve(args: Args) -> std::io::Result<()> {
    let out = args.out.clone().unwrap_or_default();
    let profiler = dhat::Profiler::builder()
        .file_name(&out)
        .trim_backtraces(Some(64))
        .build();
    let mut builder = Switchboard::builder().allow_any_origin();
    if args.serve == Serving::Switchboard {
        // As `sb_server --serve switchboard`.
        builder = builder
            .sessions_per_address(usize::MAX)
            .open_rate_per_address(0, 1);
    }
    let realtime = builder.build();
    let app = Router::new().nest("/rt", realtime.router(on_session));
    let base = dhat::HeapStats::get();
    let wanted = args.sessions;
    tokio::spawn(async move {
        let mut last = 0;
        let mut stable = 0;
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let now = realtime.session_count();
            stable = if now == last { stable + 1 } else { 0 };
            last = now;
            if now >= wanted && stable >= 30 {
                break;
            }
        }
        let stats = dhat::HeapStats::get();
        let grown = stats.curr_bytes as f64 - base.curr_bytes as f64;
        eprintln!(
            "sb_heap: {last} sessions: heap {} B in {} blocks (at start {} B in {} blocks): \
             {:.0} B and {:.1} blocks per session; writing {out}",
            stats.curr_bytes,
            stats.curr_blocks,
            base.curr_bytes,
            base.curr_blocks,
            grown / last as f64,
            (stats.curr_blocks as f64 - base.curr_blocks as f64) / last as f64,
        );
        drop(profiler);
    });
    run_with(args.serve, args.port, app, || {}).await
}

async fn on_session(session: Session) {
    if session.join("all").is_err() {
        return;
    }
    while let Some(message) = session.recv().await {
        if message.as_text().is_some_and(|text| text.starts_with("e|")) {
            session.send(message).ok();
        }
    }
}

/// One allocation site of a dhat file.
struct Site {
    bytes: u64,
    blocks: u64,
    frames: Vec<String>,
}

/// Prints the sites live about once per session or more (at least half as many blocks as
/// sessions), largest first, in bytes per session.
fn report(path: &str, sessions: usize, top: usize) -> Result<(), switchboard_bench::Error> {
    let doc: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(path)?)?;
    let ftbl: Vec<&str> = doc["ftbl"]
        .as_array()
        .ok_or("no ftbl")?
        .iter()
        .map(|f| f.as_str().unwrap_or(""))
        .collect();
    let mut sites: Vec<Site> = doc["pps"]
        .as_array()
        .ok_or("no pps")?
        .iter()
        .map(|pp| Site {
            bytes: pp["eb"].as_u64().unwrap_or(0),
            blocks: pp["ebk"].as_u64().unwrap_or(0),
            frames: pp["fs"]
                .as_array()
                .map(|fs| {
                    fs.iter()
                        .filter_map(|f| f.as_u64())
                        .filter_map(|f| ftbl.get(f as usize))
                        .map(|f| short_frame(f))
                        .filter(|f| !boring(f))
                        .collect()
                })
                .unwrap_or_default(),
        })
        .filter(|site| site.bytes > 0)
        .collect();
    sites.sort_by_key(|site| std::cmp::Reverse(site.bytes));
    let n = sessions as f64;
    let total: u64 = sites.iter().map(|s| s.bytes).sum();
    let per_session: Vec<&Site> = sites
        .iter()
        .filter(|s| s.blocks as f64 >= n * 0.5)
        .collect();
    let counted: u64 = per_session.iter().map(|s| s.bytes).sum();
    println!(
        "{path}: {total} B live in all; {} sites with >= {} blocks: {counted} B, {:.0} B per session",
        per_session.len(),
        sessions / 2,
        counted as f64 / n,
    );
    for site in per_session.iter().take(top) {
        println!(
            "\n{:>8.1} B/session  {:>6.2} blocks/session  {:>6.0} B/block",
            site.bytes as f64 / n,
            site.blocks as f64 / n,
            site.bytes as f64 / site.blocks.max(1) as f64
        );
        for frame in site.frames.iter().take(14) {
            println!("      {frame}");
        }
    }
    Ok(())
}

/// A frame without its address, its generic arguments, and with its path shortened to the
/// crate's.
fn short_frame(frame: &str) -> String {
    let frame = frame.split_once(": ").map_or(frame, |(_, rest)| rest);
    let (name, place) = match frame.rfind(" (") {
        Some(at) => frame.split_at(at),
        None => (frame, ""),
    };
    let mut short = String::new();
    let mut depth = 0;
    for c in name.chars() {
        match c {
            '<' => {
                if depth == 0 {
                    short.push_str("<…>");
                }
                depth += 1;
            }
            '>' => depth -= 1,
            _ if depth == 0 => short.push(c),
            _ => {}
        }
    }
    let place = place
        .trim_start_matches(" (")
        .trim_end_matches(')')
        .rsplit_once("/src/")
        .map_or(place.to_string(), |(head, tail)| {
            let krate = head.rsplit('/').next().unwrap_or("");
            format!(" ({krate}/{tail})")
        });
    format!("{short}{place}")
}

/// Allocator and standard-library plumbing, which says nothing about who allocated.
fn boring(frame: &str) -> bool {
    [
        "(dhat-",
        "(alloc/",
        "(src/raw_vec/",
        "(src/vec/",
        "(src/string.rs",
        "(core/",
        "(src/boxed",
    ]
    .iter()
    .any(|b| frame.contains(b))
}
