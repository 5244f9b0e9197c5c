//! `sb_server`: the Switchboard server of the benchmark ([`switchboard_bench::sb_server`]), with
//! the allocator the chat example uses too (issue 11, "Memory goes back"; `docs/benchmarks.md`).

use std::process::ExitCode;

fn main() -> ExitCode {
    switchboard_bench::sb_server::main()
}
