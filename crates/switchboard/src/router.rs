//! The axum router that exposes sessions over every transport, and the [`Switchboard`] that owns
//! them.

use std::convert::Infallible;
use std::fmt;
use std::future::{Future, Ready, ready};
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::extract::Request;
use axum::handler::Handler as _;
use axum::http::{HeaderMap, HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, get_service};
use futures_util::future::Either;
use tower_http::cors::{AllowOrigin, CorsLayer};
use tower_layer::Layer;
use tower_service::Service;

use crate::auth::AuthHook;
use crate::backend::Backend;
use crate::cluster;
use crate::config::{Builder, Config, Origins, UserCodec};
use crate::error::{ApiError, CloseReason, Rejected};
use crate::hub::Hub;
use crate::metrics::Refused;
use crate::mount::{Inner, Mounted};
use crate::session::Session;
use crate::transport;

/// The realtime server: configuration, sessions, rooms. Build it with [`Switchboard::builder`],
/// mount [`Switchboard::router`] in your axum app, and use [`Switchboard::hub`] to fan out.
///
/// Cheap to clone: clones share everything.
pub struct Switchboard<U = ()> {
    pub(crate) inner: Arc<Inner<U>>,
}

impl<U> Clone for Switchboard<U> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

impl<U> fmt::Debug for Switchboard<U> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Switchboard")
            .field("sessions", &self.inner.registry.len())
            .finish_non_exhaustive()
    }
}

impl<U: Clone + Send + Sync + 'static> Builder<U> {
    /// Builds the [`Switchboard`].
    pub fn build(mut self) -> Switchboard<U> {
        self.config.max_body = self.config.max_body.max(self.config.max_message * 2);
        self.config.metrics = Arc::new(crate::metrics::Metrics::new(self.recorder.clone()));
        if self.backend.is_some() && self.codec.is_none() {
            tracing::error!(
                "Builder::backend was called before Builder::authenticate: sessions of this node \
                 cannot be handed over to other nodes (WebSockets that land elsewhere are refused)"
            );
        }
        Switchboard::from_parts(self.config, self.auth, self.backend, self.codec)
    }
}

impl Switchboard<()> {
    /// Starts configuring a server. See [`Builder`] for every setting and its default.
    pub fn builder() -> Builder<()> {
        Builder::new()
    }
}

impl<U: Clone + Send + Sync + 'static> Switchboard<U> {
    pub(crate) fn from_parts(
        config: Config,
        auth: AuthHook<U>,
        backend: Option<Arc<dyn Backend>>,
        codec: Option<UserCodec<U>>,
    ) -> Self {
        let inner = Arc::new(Inner::new(config, auth, backend, codec));
        if let Some(node) = &inner.node {
            node.backend
                .start(cluster::deliveries(Arc::downgrade(&inner)));
        }
        Self { inner }
    }

    /// The hub: rooms, broadcast and presence over this server's sessions.
    pub fn hub(&self) -> Hub<U> {
        Hub {
            registry: self.inner.registry.clone(),
            rooms: self.inner.rooms.clone(),
            max_message: self.inner.config.max_message,
            node: self.inner.node.clone(),
            codec: self.inner.user_codec,
        }
    }

    /// The number of sessions held right now.
    pub fn session_count(&self) -> usize {
        self.inner.registry.len()
    }

    /// The axum router to mount (with [`Router::nest`](https://docs.rs/axum/0.8/axum/struct.Router.html#method.nest)) at the path the client connects to.
    ///
    /// `on_session` runs once per new session, in its own task, with the session handle; when it
    /// returns, the session is closed (code 4000, reason `"closed"`) unless it has ended already.
    ///
    /// Routes, relative to the mount point (see `docs/protocol.md`): `GET /ws` (WebSocket),
    /// `GET /sse` (Server-Sent Events), `POST /open`, `GET /poll`, `POST /poll`, and
    /// `GET /client.js` (the JavaScript client).
    pub fn router<F, Fut>(&self, on_session: F) -> Router
    where
        F: Fn(Session<U>) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = ()> + Send + 'static,
    {
        let mounted = Mounted::new(self.inner.clone(), on_session);
        // The body limit only matters to the two handlers that read a body, so only they carry
        // it: a layer on the whole router would add a boxed future to every request, parked long
        // polls included.
        let limit = axum::extract::DefaultBodyLimit::max(self.inner.config.max_body);
        // On a node of a cluster, polls go through the cluster layer, which forwards those of
        // sessions that other nodes own; a single node routes them straight to the transport.
        let poll = match &self.inner.node {
            None => get_service(transport::longpoll::Receive {
                mounted: mounted.clone(),
            })
            .post(transport::poll::send::<U>.layer(limit)),
            Some(_) => get(cluster::receive::<U>).post(cluster::send::<U>.layer(limit)),
        };
        let api = Router::new()
            .route("/ws", get(transport::websocket::upgrade::<U>))
            .route("/sse", get(transport::sse::stream::<U>))
            .route(
                "/open",
                axum::routing::post(transport::poll::open::<U>.layer(limit)),
            )
            .route("/poll", poll)
            // A method an endpoint does not take gets a JSON error body like every other
            // refusal (`docs/protocol.md` §7), not axum's empty 405; axum still adds `Allow`.
            .method_not_allowed_fallback(method_not_allowed)
            .with_state(mounted);
        let api = CheckOriginLayer {
            config: self.inner.config.clone(),
        }
        .layer(api);
        match cors_layer(&self.inner.config.origins) {
            Some(cors) => mount_api(cors.layer(api)),
            None => mount_api(api),
        }
    }

    /// Ends every session with reason `shutdown` (close code 4004), refuses new ones, answers waiting
    /// polls, and waits (at most the configured grace period) until every transport has delivered
    /// its close frame and detached. Call it from the future you pass to axum's
    /// `with_graceful_shutdown`.
    ///
    /// On a node of a cluster, it first hands every live session over to the other nodes (within
    /// the grace period): their clients go on there with nothing lost, and only sessions no
    /// other node took are ended.
    pub async fn shutdown(&self) {
        self.inner.shutting_down.store(true, Ordering::SeqCst);
        let deadline = tokio::time::Instant::now() + self.inner.config.shutdown_grace;
        if let Some(node) = &self.inner.node {
            node.stop_forwarding();
            crate::handover::hand_over_all(&self.inner, node, deadline).await;
        }
        for session in self.inner.registry.all() {
            session.shared.close(CloseReason::Shutdown);
        }
        loop {
            let changed = self.inner.attached_changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            if self.inner.attached.load(Ordering::SeqCst) == 0 {
                break;
            }
            if tokio::time::timeout_at(deadline, changed).await.is_err() {
                tracing::warn!(
                    transports = self.inner.attached.load(Ordering::SeqCst),
                    "shutdown grace period over with transports still attached"
                );
                break;
            }
        }
        if let Some(node) = &self.inner.node {
            node.backend.stop().await;
        }
    }

    /// This node's id in its cluster, or `None` without a backend.
    pub fn node_id(&self) -> Option<&str> {
        self.inner.node.as_ref().map(|node| node.id())
    }
}

/// The answer to a method an endpoint does not take.
async fn method_not_allowed() -> Response {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "this endpoint does not take this method (see the Allow header)",
    )
    .into_response()
}

/// The router handed to the application: the API paths all go to `api` (the inner router, wrapped
/// once in the origin check and CORS), and `/client.js` is served as is.
///
/// The API is one service behind three paths rather than a router whose every route carries the
/// layers (`Router::layer`) because `axum::serve` clones the application's router deeply for each
/// connection and keeps the clone as long as the connection lives. With the layers on every route
/// and method fallback, that clone boxed the layer stack seven times: about 2.9 KiB per
/// connection, which a parked long poll holds for its whole life. Here the clone takes one box per
/// path, and the inner router is shared (`Router` is an `Arc`).
fn mount_api<S>(api: S) -> Router
where
    S: tower_service::Service<Request, Error = Infallible> + Clone + Send + Sync + 'static,
    S::Response: IntoResponse,
    S::Future: Send + 'static,
{
    Router::new()
        .route_service("/ws", api.clone())
        .route_service("/sse", api.clone())
        .route_service("/open", api.clone())
        .route_service("/poll", api)
        .route("/client.js", get(client_js))
}

/// Refuses requests whose `Origin` is not allowed (`docs/protocol.md` §13), and requests that
/// declare a body (`Content-Length`) larger than `max_body`, before reading it.
///
/// A plain tower layer rather than `middleware::from_fn`: the check is synchronous, so the
/// allowed request goes straight to the inner service and the only future left is the inner
/// one. A `from_fn` middleware boxes a future per request that keeps the request twice (its
/// argument and its local) plus a second boxed `Next::run` future, all held for as long as the
/// request runs: about 1.4 KiB for every parked long poll.
#[derive(Clone)]
struct CheckOriginLayer {
    config: Arc<Config>,
}

impl<S> Layer<S> for CheckOriginLayer {
    type Service = CheckOrigin<S>;

    fn layer(&self, inner: S) -> CheckOrigin<S> {
        CheckOrigin {
            inner,
            config: self.config.clone(),
        }
    }
}

/// The service of [`CheckOriginLayer`].
#[derive(Clone)]
struct CheckOrigin<S> {
    inner: S,
    config: Arc<Config>,
}

impl<S> Service<Request> for CheckOrigin<S>
where
    S: Service<Request, Response = Response, Error = Infallible>,
    S::Future: Unpin,
{
    type Response = Response;
    type Error = Infallible;
    type Future = Either<Counted<S::Future>, Ready<Result<Response, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request) -> Self::Future {
        if declared_too_large(request.headers(), self.config.max_body) {
            // Refused before a byte of the body is read: a client that declares 10 GB and sends
            // nothing gets its answer now, not when it gives up (`docs/protocol.md` §7).
            tracing::debug!(
                path = request.uri().path(),
                "request body declared too large"
            );
            return self.refuse(ApiError::too_large(
                "declared request body exceeds the size limit",
            ));
        }
        if let Some(hosts) = &self.config.hosts
            && !host_allowed(hosts, request.headers())
        {
            crate::logs::info_limited!(
                host = ?request.headers().get(header::HOST),
                path = request.uri().path(),
                "request for a host not in the allow-list refused"
            );
            return self.refuse(ApiError::host_not_allowed());
        }
        if origin_allowed(&self.config.origins, request.headers()) {
            Either::Left(Counted {
                inner: self.inner.call(request),
                config: self.config.clone(),
            })
        } else {
            crate::logs::info_limited!(
                origin = ?request.headers().get(header::ORIGIN),
                path = request.uri().path(),
                "request from a disallowed origin refused"
            );
            // The refusal is readable by the page that made the request (CORS headers for its
            // origin), so that its client can say why it cannot connect instead of seeing a
            // network error it cannot tell from a server that is down. It says nothing but that.
            let mut response = self.refusal(ApiError::origin_not_allowed());
            if let Some(origin) = request.headers().get(header::ORIGIN).cloned() {
                let headers = response.headers_mut();
                headers.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, origin);
                headers.insert(
                    header::ACCESS_CONTROL_ALLOW_CREDENTIALS,
                    HeaderValue::from_static("true"),
                );
                headers.append(header::VARY, HeaderValue::from_static("origin"));
            }
            Either::Right(ready(Ok(response)))
        }
    }
}

impl<S> CheckOrigin<S> {
    /// The answer `err`, counted in the metrics.
    fn refusal(&self, err: ApiError) -> Response {
        self.config.metrics.rejected(Refused::Request, err.code);
        err.into_response()
    }

    /// Answers with `err` at once, counted in the metrics.
    fn refuse<F>(&self, err: ApiError) -> Either<F, Ready<Result<Response, Infallible>>> {
        Either::Right(ready(Ok(self.refusal(err))))
    }
}

/// The future of a request the origin check let through: on the way out it counts a refusal
/// (a response an [`ApiError`] made) in the metrics.
pub(crate) struct Counted<F> {
    inner: F,
    config: Arc<Config>,
}

impl<F> Future for Counted<F>
where
    F: Future<Output = Result<Response, Infallible>> + Unpin,
{
    type Output = F::Output;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let output = std::task::ready!(std::pin::Pin::new(&mut self.inner).poll(cx));
        if let Ok(response) = &output
            && let Some(Rejected(code)) = response.extensions().get::<Rejected>()
        {
            self.config.metrics.rejected(Refused::Request, code);
        }
        Poll::Ready(output)
    }
}

/// Whether the request declares a body larger than `max` bytes. (A `Content-Length` that does
/// not parse is left to the HTTP layer, which refuses it.)
fn declared_too_large(headers: &HeaderMap, max: usize) -> bool {
    headers
        .get(header::CONTENT_LENGTH)
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.trim().parse::<u64>().ok())
        .is_some_and(|length| length > max as u64)
}

/// Whether the `Host` header names one of `hosts` (see [`Builder::allowed_hosts`]).
fn host_allowed(hosts: &[String], headers: &HeaderMap) -> bool {
    let Some(host) = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .map(str::to_ascii_lowercase)
    else {
        return false;
    };
    // The name without its port: `example.com:80` → `example.com`, `[::1]:80` → `[::1]`.
    let name = match host.rfind(':') {
        Some(colon) if !host[colon..].contains(']') => &host[..colon],
        _ => host.as_str(),
    };
    hosts
        .iter()
        .any(|allowed| *allowed == host || *allowed == name)
}

fn origin_allowed(origins: &Origins, headers: &HeaderMap) -> bool {
    let Some(origin) = headers.get(header::ORIGIN) else {
        return true;
    };
    let Ok(origin) = origin.to_str() else {
        return false;
    };
    let origin = origin.trim_end_matches('/').to_ascii_lowercase();
    match origins {
        Origins::Any => return true,
        Origins::List(list) if list.contains(&origin) => return true,
        _ => {}
    }
    // The server's own origin: the Origin's host[:port] equals the Host header.
    let host = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .map(str::to_ascii_lowercase);
    let authority = origin
        .strip_prefix("http://")
        .or_else(|| origin.strip_prefix("https://"));
    matches!((authority, host), (Some(authority), Some(host)) if authority == host)
}

fn cors_layer(origins: &Origins) -> Option<CorsLayer> {
    let allow = match origins {
        Origins::SameOrigin => return None,
        Origins::Any => AllowOrigin::mirror_request(),
        Origins::List(list) => AllowOrigin::list(
            list.iter()
                .filter_map(|origin| HeaderValue::from_str(origin).ok()),
        ),
    };
    Some(
        CorsLayer::new()
            .allow_origin(allow)
            .allow_methods([Method::GET, Method::POST])
            .allow_headers([header::CONTENT_TYPE])
            .allow_credentials(true)
            .max_age(Duration::from_secs(3600)),
    )
}

/// The JavaScript client, served at `GET <mount>/client.js`.
const CLIENT_JS: &str = include_str!("../assets/switchboard.js");

fn client_etag() -> &'static str {
    static ETAG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    ETAG.get_or_init(|| {
        // FNV-1a: stable across builds and processes, unlike the std hasher.
        let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
        for byte in CLIENT_JS.bytes() {
            hash ^= u64::from(byte);
            hash = hash.wrapping_mul(0x0100_0000_01b3);
        }
        format!("\"{hash:016x}\"")
    })
}

/// Whether an `If-None-Match` field (all its lines) matches the current entity tag `etag`, per
/// RFC 9110 §13.1.2: `*` matches, and a listed tag matches by weak comparison (`W/"x"` matches
/// `"x"`). A field that does not parse matches nothing.
fn if_none_match(headers: &HeaderMap, etag: &str) -> bool {
    let mut lines = headers.get_all(header::IF_NONE_MATCH).iter().peekable();
    if lines.peek().is_none() {
        return false;
    }
    let opaque = etag.strip_prefix("W/").unwrap_or(etag);
    let mut tags = Vec::new();
    for line in lines {
        let Ok(line) = line.to_str() else {
            return false;
        };
        if line.trim() == "*" {
            return true;
        }
        match entity_tags(line) {
            Some(list) => tags.extend(list),
            None => return false,
        }
    }
    tags.contains(&opaque)
}

/// The opaque tags (quotes included, `W/` dropped) of a list of entity tags, `None` if it is not
/// one (RFC 9110 §8.8.3: `entity-tag = [ "W/" ] DQUOTE *etagc DQUOTE`, in a comma-separated list
/// that may have empty elements).
fn entity_tags(list: &str) -> Option<Vec<&str>> {
    let mut tags = Vec::new();
    let mut rest = list.trim_start_matches([' ', '\t', ',']);
    while !rest.is_empty() {
        let quoted = rest.strip_prefix("W/").unwrap_or(rest);
        let body = quoted.strip_prefix('"')?;
        let end = body.find('"')?;
        let tag = &quoted[..end + 2];
        if !tag[1..tag.len() - 1]
            .bytes()
            .all(|b| b == 0x21 || (0x23..=0x7e).contains(&b) || b >= 0x80)
        {
            return None;
        }
        tags.push(tag);
        rest = quoted[end + 2..].trim_start_matches([' ', '\t']);
        if !rest.is_empty() {
            rest = rest.strip_prefix(',')?.trim_start_matches([' ', '\t', ',']);
        }
    }
    Some(tags)
}

async fn client_js(headers: HeaderMap) -> Response {
    let etag = client_etag();
    let fresh = if_none_match(&headers, etag);
    let cache = [
        (header::ETAG, etag.to_string()),
        (header::CACHE_CONTROL, "public, max-age=3600".to_string()),
    ];
    if fresh {
        return (StatusCode::NOT_MODIFIED, cache).into_response();
    }
    (
        cache,
        [(header::CONTENT_TYPE, "text/javascript; charset=utf-8")],
        CLIENT_JS,
    )
        .into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(origin: Option<&str>, host: &str) -> HeaderMap {
        let mut map = HeaderMap::new();
        map.insert(
            header::HOST,
            HeaderValue::from_str(host).unwrap_or(HeaderValue::from_static("x")),
        );
        if let Some(origin) = origin {
            map.insert(
                header::ORIGIN,
                HeaderValue::from_str(origin).unwrap_or(HeaderValue::from_static("x")),
            );
        }
        map
    }

    fn if_none_match_headers(lines: &[&str]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for line in lines {
            map.append(
                header::IF_NONE_MATCH,
                HeaderValue::from_str(line).unwrap_or(HeaderValue::from_static("x")),
            );
        }
        map
    }

    #[test]
    fn if_none_match_uses_weak_comparison_and_star_matches() {
        let etag = "\"0123abcd\"";
        for matching in [
            &["\"0123abcd\""][..],
            &["W/\"0123abcd\""],
            &["*"],
            &[" * "],
            &["\"other\", W/\"0123abcd\""],
            &["\"a,b\" , ,\"0123abcd\","],
            &["\"other\"", "W/\"0123abcd\""],
        ] {
            assert!(
                if_none_match(&if_none_match_headers(matching), etag),
                "{matching:?}"
            );
        }
        for not_matching in [
            &[][..],
            &["\"other\""],
            &["0123abcd"],
            &["w/\"0123abcd\""],
            &["\"0123ABCD\""],
            &["\"0123abcd"],
            &["\"other\" \"0123abcd\""],
            &["*, \"other\""],
        ] {
            assert!(
                !if_none_match(&if_none_match_headers(not_matching), etag),
                "{not_matching:?}"
            );
        }
    }

    #[test]
    fn same_origin_is_the_default() {
        let same = Origins::SameOrigin;
        assert!(origin_allowed(&same, &headers(None, "a.test")));
        assert!(origin_allowed(
            &same,
            &headers(Some("https://a.test"), "a.test")
        ));
        assert!(origin_allowed(
            &same,
            &headers(Some("http://A.test:8080"), "a.test:8080")
        ));
        assert!(!origin_allowed(
            &same,
            &headers(Some("https://evil.test"), "a.test")
        ));
        assert!(!origin_allowed(&same, &headers(Some("null"), "a.test")));
    }

    #[test]
    fn allowed_hosts_match_with_any_port_or_the_listed_one() {
        let hosts: Vec<String> = ["localhost", "[::1]", "chat.example:8443"]
            .map(String::from)
            .to_vec();
        for allowed in [
            "localhost",
            "LOCALHOST:3000",
            "[::1]:3000",
            "[::1]",
            "chat.example:8443",
        ] {
            assert!(host_allowed(&hosts, &headers(None, allowed)), "{allowed}");
        }
        for refused in [
            "evil.example",
            "evil.example:3000",
            "chat.example",
            "chat.example:443",
            "localhost.evil.example",
            "[::2]:3000",
        ] {
            assert!(!host_allowed(&hosts, &headers(None, refused)), "{refused}");
        }
        assert!(!host_allowed(&hosts, &HeaderMap::new()));
    }

    #[test]
    fn listed_origins_are_allowed() {
        let list = Origins::List(vec!["https://app.test".into()]);
        assert!(origin_allowed(
            &list,
            &headers(Some("https://app.test"), "api.test")
        ));
        assert!(!origin_allowed(
            &list,
            &headers(Some("https://other.test"), "api.test")
        ));
        assert!(origin_allowed(
            &Origins::Any,
            &headers(Some("https://other.test"), "api.test")
        ));
    }
}
