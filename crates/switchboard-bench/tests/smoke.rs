//! Runs `load --smoke` (tiny numbers, every scenario, all three servers, the cluster scenario on a
//! `redis-server` it starts itself, the hostile-client scenario with phases of about a second, the
//! transports scenario with 20 clients) and asserts that it succeeds: every server starts, every
//! message arrives exactly once.

use std::process::Command;
use std::time::Instant;

#[test]
fn load_smoke_run_succeeds() {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_load"))
        .arg("--smoke")
        .output()
        .expect("cannot run the load binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "load --smoke failed ({}) after {:?}\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status,
        started.elapsed()
    );
    for table in [
        "1. idle memory",
        "2. fan-out",
        "3. echo round trip",
        "4. polling",
        "5. reconnect storm",
        "6a. cluster fan-out",
        "6b. broadcast latency",
        "6c. Redis work per message",
        "7. hostile clients",
        "9. transports",
    ] {
        assert!(stdout.contains(table), "no table {table:?} in\n{stdout}");
    }
}

/// The memory scenario (`load --only memory`, not part of `--smoke` itself) at tiny numbers, on
/// two of its allocator set-ups: every session fills, overflows and ends, and RSS is sampled.
#[test]
fn load_smoke_memory_run_succeeds() {
    let out = Command::new(env!("CARGO_BIN_EXE_load"))
        .args([
            "--smoke",
            "--only",
            "memory",
            "--alloc",
            "glibc,jemalloc-bg",
        ])
        .output()
        .expect("cannot run the load binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "load --smoke --only memory failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("7. memory after slow consumers end") && !stdout.contains("problems:"),
        "no clean memory table in\n{stdout}\n--- stderr\n{stderr}"
    );
}

/// The metrics scenario (`load --only metrics`, not part of `--smoke` itself) at tiny numbers:
/// `sb_server --metrics` records (a session it opened shows in its `/metrics`), and the fan-out
/// and echo run with the recorder and without, nothing lost.
#[test]
fn load_smoke_metrics_run_succeeds() {
    let out = Command::new(env!("CARGO_BIN_EXE_load"))
        .args(["--smoke", "--only", "metrics"])
        .output()
        .expect("cannot run the load binary");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "load --smoke --only metrics failed ({})\n--- stdout\n{stdout}\n--- stderr\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("metrics off and on") && !stdout.contains("problems:"),
        "no clean metrics table in\n{stdout}\n--- stderr\n{stderr}"
    );
}
