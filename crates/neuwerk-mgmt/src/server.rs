//! The management HTTP server (axum): health, readiness, metrics and the
//! admin API; see the crate docs for the endpoints.

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use axum::body::Body;
use axum::extract::{Query, Request, State};
use axum::http::{header, HeaderValue, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use neuwerk_core::events::Event;
use neuwerk_core::time::monotonic_ns;
use serde::Deserialize;
use tokio::sync::{broadcast, watch};

use crate::bus::EventBus;
use crate::metrics::Metrics;
use crate::model::{Counters, GrantList, PacketCount, PolicyView, ReloadReport, Status};
use crate::wire::{grant_view, EventBody, EventFilter, EventLine};
use crate::Admin;

/// How often an idle event stream sends an empty line, so clients notice a
/// dead server and proxies keep the connection.
pub const DEFAULT_KEEPALIVE: Duration = Duration::from_secs(10);

/// What the server serves.
#[derive(Clone)]
pub struct Server {
    /// The daemon.
    pub admin: Arc<dyn Admin>,
    /// Userspace metrics.
    pub metrics: Arc<Metrics>,
    /// Events for `/api/v1/events`.
    pub bus: EventBus,
    /// When set, `Authorization: Bearer <token>` is required on `/api/*`
    /// and `/metrics`.
    pub token: Option<String>,
    /// Keepalive interval of event streams.
    pub keepalive: Duration,
}

impl Server {
    /// A server without a token and with [`DEFAULT_KEEPALIVE`].
    pub fn new(admin: Arc<dyn Admin>, metrics: Arc<Metrics>, bus: EventBus) -> Server {
        Server {
            admin,
            metrics,
            bus,
            token: None,
            keepalive: DEFAULT_KEEPALIVE,
        }
    }

    /// Requires `token` (when `Some`) on `/api/*` and `/metrics`.
    pub fn with_token(mut self, token: Option<String>) -> Server {
        self.token = token;
        self
    }
}

#[derive(Clone)]
struct AppState {
    server: Server,
    stopping: watch::Receiver<bool>,
}

/// Serves on `listener` until `shutdown` resolves; then open event streams
/// end and in-flight requests finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    server: Server,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> io::Result<()> {
    let (stop_tx, stopping) = watch::channel(false);
    let app = router(AppState { server, stopping });
    axum::serve(listener, app)
        .with_graceful_shutdown(async move {
            shutdown.await;
            let _ = stop_tx.send(true);
        })
        .await
}

fn router(state: AppState) -> Router {
    let protected = Router::new()
        .route("/metrics", get(metrics))
        .route("/api/v1/status", get(status))
        .route("/api/v1/grants", get(grants))
        .route("/api/v1/policy", get(policy))
        .route("/api/v1/policy/reload", post(reload))
        .route("/api/v1/events", get(events))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    Router::new()
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .merge(protected)
        .fallback(|| async { error(StatusCode::NOT_FOUND, "no such endpoint") })
        .with_state(state)
}

/// A JSON error response: `{"error": message}`.
struct ApiError(StatusCode, String);

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (self.0, Json(serde_json::json!({ "error": self.1 }))).into_response()
    }
}

fn error(code: StatusCode, message: impl Into<String>) -> Response {
    ApiError(code, message.into()).into_response()
}

/// Runs a (possibly blocking) [`Admin`] call off the runtime's workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> T + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f).await.map_err(|e| {
        ApiError(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("internal error: {e}"),
        )
    })
}

async fn auth(State(s): State<AppState>, req: Request, next: Next) -> Response {
    if let Some(token) = &s.server.token {
        let given = req
            .headers()
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.split_once(' '))
            .filter(|(scheme, _)| scheme.eq_ignore_ascii_case("bearer"))
            .map(|(_, t)| t.trim());
        if !given.is_some_and(|t| constant_time_eq(t.as_bytes(), token.as_bytes())) {
            let mut resp = error(StatusCode::UNAUTHORIZED, "token required or wrong");
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            return resp;
        }
    }
    next.run(req).await
}

/// Compares without an early exit, so timing does not reveal how much of
/// a guess was right (only the longer length shows).
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    let n = a.len().max(b.len());
    let mut diff = u8::from(a.len() != b.len());
    for i in 0..n {
        diff |= a.get(i).copied().unwrap_or(0) ^ b.get(i).copied().unwrap_or(0);
    }
    std::hint::black_box(diff) == 0
}

async fn readyz(State(s): State<AppState>) -> Result<Response, ApiError> {
    let admin = s.server.admin.clone();
    let r = blocking(move || admin.readiness()).await?;
    let code = if r.ready() {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    Ok((code, Json(r)).into_response())
}

async fn metrics(State(s): State<AppState>) -> Result<Response, ApiError> {
    let Server { admin, metrics, .. } = s.server;
    let text = blocking(move || {
        let kernel = admin.kernel_stats();
        let grants = admin.grants_active(monotonic_ns());
        metrics.render(kernel, grants)
    })
    .await?;
    let content_type = "application/openmetrics-text; version=1.0.0; charset=utf-8";
    Ok(([(header::CONTENT_TYPE, content_type)], text).into_response())
}

async fn status(State(s): State<AppState>) -> Result<Json<Status>, ApiError> {
    let Server { admin, metrics, .. } = s.server;
    Ok(Json(
        blocking(move || build_status(&*admin, &metrics)).await?,
    ))
}

fn build_status(admin: &dyn Admin, metrics: &Metrics) -> Status {
    let info = admin.info();
    let kernel = admin.kernel_stats();
    let mut packets: Vec<PacketCount> = Vec::new();
    for p in &kernel.packets {
        let network = p.network.as_deref().map(str::to_string);
        let verdict = p.verdict.name();
        match packets
            .iter_mut()
            .find(|c| c.network == network && c.protocol == p.protocol && c.verdict == verdict)
        {
            Some(c) => c.count += p.count,
            None => packets.push(PacketCount {
                network,
                protocol: p.protocol.to_string(),
                verdict: verdict.to_string(),
                count: p.count,
            }),
        }
    }
    packets.sort_by(|a, b| {
        (&a.network, &a.protocol, &a.verdict).cmp(&(&b.network, &b.protocol, &b.verdict))
    });
    Status {
        version: info.version,
        uptime_s: info.uptime_s,
        interfaces: info.interfaces,
        policy: info.policy,
        counters: Counters {
            packets,
            dns: metrics.dns_counts(),
            grants_active: admin.grants_active(monotonic_ns()),
            conntrack_entries: kernel.conntrack_entries,
            events_lost: kernel.events_lost,
        },
        ready: admin.readiness(),
    }
}

/// Query parameters; empty values mean "any".
#[derive(Debug, Default, Deserialize)]
struct Params {
    network: Option<String>,
    hostname: Option<String>,
    address: Option<String>,
    verdict: Option<String>,
    kind: Option<String>,
}

fn non_empty(v: Option<String>) -> Option<String> {
    v.filter(|s| !s.is_empty())
}

fn parse_address(v: Option<String>) -> Result<Option<IpAddr>, ApiError> {
    non_empty(v)
        .map(|a| {
            a.parse::<IpAddr>().map_err(|_| {
                ApiError(
                    StatusCode::BAD_REQUEST,
                    format!("`{a}` is not an IP address"),
                )
            })
        })
        .transpose()
}

async fn grants(
    State(s): State<AppState>,
    Query(p): Query<Params>,
) -> Result<Json<GrantList>, ApiError> {
    let address = parse_address(p.address)?;
    let network = non_empty(p.network);
    let hostname = non_empty(p.hostname).map(|h| h.trim_end_matches('.').to_ascii_lowercase());
    let admin = s.server.admin.clone();
    let list = blocking(move || {
        let now = monotonic_ns();
        let mut grants: Vec<_> = admin
            .grants()
            .iter()
            .filter(|g| network.as_deref().is_none_or(|n| *g.network == *n))
            .filter(|g| hostname.as_deref().is_none_or(|h| *g.hostname == *h))
            .filter(|g| address.is_none_or(|a| g.addr == a))
            .filter_map(|g| grant_view(g, now))
            .collect();
        grants.sort_by(|a, b| {
            (&a.network, &a.hostname, &a.address).cmp(&(&b.network, &b.hostname, &b.address))
        });
        GrantList { grants }
    })
    .await?;
    Ok(Json(list))
}

async fn policy(State(s): State<AppState>) -> Result<Json<PolicyView>, ApiError> {
    let admin = s.server.admin.clone();
    Ok(Json(blocking(move || admin.policy_text()).await?))
}

async fn reload(State(s): State<AppState>) -> Result<Json<ReloadReport>, ApiError> {
    let admin = s.server.admin.clone();
    match blocking(move || admin.reload()).await? {
        Ok(report) => Ok(Json(report)),
        Err(why) => Err(ApiError(StatusCode::UNPROCESSABLE_ENTITY, why)),
    }
}

async fn events(State(s): State<AppState>, Query(p): Query<Params>) -> Result<Response, ApiError> {
    let filter = EventFilter {
        network: non_empty(p.network),
        verdict: non_empty(p.verdict),
        address: parse_address(p.address)?,
        kind: non_empty(p.kind),
    };
    // Subscribed before the headers go out: once a client sees them, every
    // later event reaches it.
    let stream = EventStream {
        rx: s.server.bus.subscribe(),
        filter,
        keepalive: tokio::time::interval_at(
            tokio::time::Instant::now() + s.server.keepalive,
            s.server.keepalive,
        ),
        stopping: s.stopping,
    };
    let body = Body::from_stream(futures_util::stream::unfold(stream, EventStream::next));
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CACHE_CONTROL, "no-cache"),
        ],
        body,
    )
        .into_response())
}

struct EventStream {
    rx: broadcast::Receiver<Arc<Event>>,
    filter: EventFilter,
    keepalive: tokio::time::Interval,
    stopping: watch::Receiver<bool>,
}

impl EventStream {
    /// The next chunk: a matching event's line, a `lost` line, or an empty
    /// keepalive line; `None` ends the stream (shutdown).
    async fn next(mut self) -> Option<(Result<Bytes, Infallible>, EventStream)> {
        let event = loop {
            let received = tokio::select! {
                _ = self.stopping.wait_for(|&stop| stop) => return None,
                _ = self.keepalive.tick() => None,
                r = self.rx.recv() => Some(r),
            };
            match received {
                None => return Some((Ok(Bytes::from_static(b"\n")), self)),
                Some(Ok(ev)) if self.filter.matches(&ev) => {
                    break EventLine::new(&ev, SystemTime::now(), monotonic_ns());
                }
                Some(Ok(_)) => continue,
                Some(Err(broadcast::error::RecvError::Lagged(count))) => {
                    break EventLine {
                        time: crate::wire::rfc3339_ms(SystemTime::now()),
                        body: EventBody::Lost { count },
                    };
                }
                Some(Err(broadcast::error::RecvError::Closed)) => return None,
            }
        };
        self.keepalive.reset();
        let mut line = serde_json::to_vec(&event).unwrap_or_default();
        line.push(b'\n');
        Some((Ok(Bytes::from(line)), self))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_lagging_subscriber_is_told_how_much_it_lost() {
        let bus = EventBus::new(4);
        let (_stop, stopping) = watch::channel(false);
        let ka = Duration::from_secs(60);
        let mut stream = EventStream {
            rx: bus.subscribe(),
            filter: EventFilter::default(),
            keepalive: tokio::time::interval_at(tokio::time::Instant::now() + ka, ka),
            stopping,
        };
        // Nothing is read while 10 events go into a 4-event buffer.
        for count in 0..10 {
            bus.publish(Event::Lost { count });
        }
        let mut counts = Vec::new();
        for _ in 0..5 {
            let (chunk, next) = stream.next().await.expect("open");
            let line: EventLine = serde_json::from_slice(&chunk.unwrap()).unwrap();
            let EventBody::Lost { count } = line.body else {
                panic!("{line:?}");
            };
            counts.push(count);
            stream = next;
        }
        assert_eq!(counts, [6, 6, 7, 8, 9], "6 skipped, then the last 4");
    }

    #[test]
    fn token_compare() {
        assert!(constant_time_eq(b"secret", b"secret"));
        assert!(!constant_time_eq(b"secret", b"secreT"));
        assert!(!constant_time_eq(b"secret", b"secret2"));
        assert!(!constant_time_eq(b"", b"secret"));
    }
}
