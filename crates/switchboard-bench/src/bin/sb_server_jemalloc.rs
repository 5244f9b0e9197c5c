//! `sb_server_jemalloc`: [`switchboard_bench::sb_server`] on jemalloc (`tikv-jemallocator`), for
//! the memory scenario (`load --only memory`); `_RJEM_MALLOC_CONF` in the environment configures
//! it (the crate prefixes jemalloc's symbols, and so its `MALLOC_CONF`, with `_rjem_`).

use std::process::ExitCode;

#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fn main() -> ExitCode {
    switchboard_bench::sb_server::main()
}
