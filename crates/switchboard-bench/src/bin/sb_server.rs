//! `sb_server`: the Switchboard server of the benchmark ([`switchboard_bench::sb_server`]), on the
//! allocator the chat example uses too: jemalloc with background threads, which gives memory
//! freed after a burst back to the system within about 10 s (issue 11, "Memory goes back";
//! `docs/benchmarks.md`, "Memory after sessions end").

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    switchboard_bench::sb_server::main()
}
