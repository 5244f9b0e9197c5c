//! `sb_server_system`: [`switchboard_bench::sb_server`] on the system allocator (glibc's malloc on
//! Linux), for the memory scenario (`load --only memory`), which also runs it with glibc's
//! tunables in the environment (`MALLOC_ARENA_MAX`, `MALLOC_TRIM_THRESHOLD_`, `MALLOC_TOP_PAD_`).

use std::process::ExitCode;

fn main() -> ExitCode {
    switchboard_bench::sb_server::main()
}
