//! What the three benchmark servers (`sb_server`, `floor`, `peer`) share, so that they differ only
//! in the work they do: the command line, and serving an app the way `load` expects.

use std::process::ExitCode;
use std::str::FromStr;

use axum::Router;
use axum::serve::ListenerExt as _;
use tokio::io::AsyncWriteExt as _;

/// The value following `flag` on the command line, parsed; the error text ends with `usage`.
pub fn flag_value<T: FromStr>(flag: &str, value: Option<String>, usage: &str) -> Result<T, String> {
    let value = value.ok_or_else(|| format!("{flag} needs a value\n{usage}"))?;
    value
        .parse()
        .map_err(|_| format!("{flag}: invalid value {value:?}\n{usage}"))
}

/// Parses a command line that takes only `--port N` (default 0: ephemeral).
pub fn port_only(usage: &str) -> Result<u16, String> {
    let mut port = 0;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = flag_value(&arg, args.next(), usage)?,
            "-h" | "--help" => return Err(usage.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{usage}")),
        }
    }
    Ok(port)
}

/// Parses a command line that takes `--port N` (default 0: ephemeral) and `--redis URL` (default:
/// none, a single node).
pub fn port_and_redis(usage: &str) -> Result<(u16, Option<String>), String> {
    let mut port = 0;
    let mut redis = None;
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--port" => port = flag_value(&arg, args.next(), usage)?,
            "--redis" => redis = Some(flag_value(&arg, args.next(), usage)?),
            "-h" | "--help" => return Err(usage.to_string()),
            other => return Err(format!("unknown argument {other:?}\n{usage}")),
        }
    }
    Ok((port, redis))
}

/// The exit code for a parsed command line's outcome and the server's: 2 for a bad command line
/// (the message is printed), 1 for a server error, 0 otherwise.
pub fn exit_code(name: &str, outcome: Result<std::io::Result<()>, String>) -> ExitCode {
    match outcome {
        Ok(Ok(())) => ExitCode::SUCCESS,
        Ok(Err(err)) => {
            eprintln!("{name}: {err}");
            ExitCode::FAILURE
        }
        Err(usage) => {
            eprintln!("{usage}");
            ExitCode::from(2)
        }
    }
}

/// Queue of connections the kernel completes before the server accepts them.
/// `TcpListener::bind` asks for 128, and when a reconnect storm of hundreds of clients overflows
/// that queue the kernel drops their SYNs, which are sent again only after a second: a 1 s stall
/// that measures the backlog, not the server. Every server of the benchmark uses the same value.
pub const BACKLOG: u32 = 4096;

fn listen(port: u16) -> std::io::Result<tokio::net::TcpListener> {
    let socket = tokio::net::TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(std::net::SocketAddr::from((
        std::net::Ipv4Addr::LOCALHOST,
        port,
    )))?;
    socket.listen(BACKLOG)
}

/// Serves `app` on 127.0.0.1:`port` (listen backlog [`BACKLOG`]) the way the harness expects: TCP_NODELAY on every accepted
/// connection (small realtime frames must not wait for the peer's delayed ACK; every server of the
/// benchmark does the same), `listening on ADDR` printed and flushed once ready, and the process
/// exits when its stdin reaches EOF (after calling `at_exit`, e.g. to print a counter), so a
/// harness that dies cannot leak it.
pub async fn run(
    port: u16,
    app: Router,
    at_exit: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    run_with(Serving::Axum, port, app, at_exit).await
}

/// Which HTTP serving loop a server binary uses (`--serve axum|switchboard`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Serving {
    /// `axum::serve(listener, app)`: what the benchmark has always used.
    #[default]
    Axum,
    /// `switchboard::serve(listener, app)` with its defaults, except a connection limit of
    /// [`SWITCHBOARD_MAX_CONNECTIONS`] so that the 10,000-session runs fit.
    Switchboard,
}

impl FromStr for Serving {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "axum" => Ok(Serving::Axum),
            "switchboard" => Ok(Serving::Switchboard),
            other => Err(format!("no serving loop {other:?} (axum, switchboard)")),
        }
    }
}

/// The connection limit of [`Serving::Switchboard`] (its default, 10,000, is what a 10,000-session
/// run needs plus the load generator's spare connections).
pub const SWITCHBOARD_MAX_CONNECTIONS: usize = 100_000;

/// [`run`], served by `serving`.
pub async fn run_with(
    serving: Serving,
    port: u16,
    app: Router,
    at_exit: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    let listener = listen(port)?;
    announce(listener.local_addr()?, at_exit).await?;
    match serving {
        Serving::Axum => {
            let listener = listener.tap_io(|tcp| {
                tcp.set_nodelay(true).ok();
            });
            axum::serve(listener, app).await
        }
        // TCP_NODELAY is switchboard::serve's default.
        Serving::Switchboard => {
            switchboard::serve(listener, app)
                .max_connections(SWITCHBOARD_MAX_CONNECTIONS)
                .await
        }
    }
}

/// Like [`run`], but served by [`switchboard::serve`](fn@switchboard::serve) with its default connection limits
/// (header and body time-outs, header size, connection limit with idle shedding; it sets
/// TCP_NODELAY itself) instead of `axum::serve`: the server "hardened as recommended".
pub async fn run_hardened(
    port: u16,
    app: Router,
    at_exit: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    let listener = listen(port)?;
    announce(listener.local_addr()?, at_exit).await?;
    switchboard::serve(listener, app).await
}

/// Prints and flushes `listening on ADDR`, and exits the process (after `at_exit`) when stdin
/// reaches EOF.
async fn announce(
    addr: std::net::SocketAddr,
    at_exit: impl FnOnce() + Send + 'static,
) -> std::io::Result<()> {
    let mut stdout = tokio::io::stdout();
    stdout
        .write_all(format!("listening on {addr}\n").as_bytes())
        .await?;
    stdout.flush().await?;
    tokio::spawn(async {
        tokio::io::copy(&mut tokio::io::stdin(), &mut tokio::io::sink())
            .await
            .ok();
        at_exit();
        std::process::exit(0);
    });
    Ok(())
}
