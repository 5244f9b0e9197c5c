//! `sb_server_mimalloc`: [`switchboard_bench::sb_server`] on mimalloc (the `mimalloc` crate, its
//! default v3), for the memory scenario (`load --only memory`); `MIMALLOC_*` variables in the
//! environment tune it.

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    switchboard_bench::sb_server::main()
}
