//! The live feed over HTTP (issue 18, ADR 0037): `GET /v1/feed` as Server-Sent Events,
//! and single-use stream tickets for browsers (`POST /v1/feed/tickets`).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use axum::Json;
use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use chronicle_domain::{Actor, Role};
use chronicle_eventstore::feed::{FeedPosition, PositionError};
use chronicle_projections::feed::{
    CatchUp, CatchUpError, Feed, Filter, Frame, Ready, Subscription, Viewer,
};
use chronicle_projections::metrics;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::AppState;
use crate::auth::Principal;
use crate::extract::ApiQuery;
use crate::problem::AppError;
use crate::routes::reads::database;

/// The feed of this process and the streams it holds open, per principal.
pub struct LiveFeed {
    pub feed: Arc<Feed>,
    open: Mutex<HashMap<String, usize>>,
    shutdown: CancellationToken,
}

impl LiveFeed {
    pub fn new(feed: Arc<Feed>, shutdown: CancellationToken) -> Arc<Self> {
        Arc::new(Self {
            feed,
            open: Mutex::new(HashMap::new()),
            shutdown,
        })
    }

    /// Counts a stream of `subject` in, within the limits.
    fn admit(self: &Arc<Self>, subject: &str) -> Result<OpenStream, AppError> {
        let settings = self.feed.settings();
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let total: usize = open.values().sum();
        if total >= settings.max_subscribers {
            return Err(AppError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "overloaded",
                "this instance holds as many feed streams as it may; retry shortly",
            )
            .with_retry_after(5));
        }
        let mine = open.entry(subject.to_owned()).or_default();
        if *mine >= settings.per_principal {
            return Err(AppError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_streams",
                format!(
                    "at most {} feed streams per principal are open at once; close one first",
                    settings.per_principal
                ),
            )
            .with_retry_after(5));
        }
        *mine += 1;
        metrics::FEED_SUBSCRIBERS.inc();
        Ok(OpenStream {
            live: self.clone(),
            subject: subject.to_owned(),
        })
    }
}

/// One open stream, counted until dropped.
struct OpenStream {
    live: Arc<LiveFeed>,
    subject: String,
}

impl Drop for OpenStream {
    fn drop(&mut self) {
        let mut open = self.live.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.subject) {
            *count -= 1;
            if *count == 0 {
                open.remove(&self.subject);
            }
        }
        metrics::FEED_SUBSCRIBERS.dec();
    }
}

/// `?aggregate_type=&aggregate_id=&after=&ticket=`.
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct FeedParams {
    /// Only events of this aggregate type (`Account`, `Booking`, `Payment`,
    /// `Subscription`, `Subject`).
    pub aggregate_type: Option<String>,
    /// Only events of this aggregate.
    pub aggregate_id: Option<Uuid>,
    /// Resume after this point (an event's `id`); `Last-Event-ID` wins when both are
    /// given. Without either, the stream starts now.
    pub after: Option<String>,
    /// A stream ticket from `POST /v1/feed/tickets`, instead of an `Authorization`
    /// header (for `EventSource`). Used once.
    pub ticket: Option<String>,
}

/// One event as the feed sends it: `id` (the point to resume after it), `event` (the
/// event type) and `data`, this envelope. Besides events the stream carries comments
/// (heartbeats, each with an `id` line) and, when Chronicle ends it (a subscriber too
/// slow to follow, a shutdown), one `event: resume` whose `data` says why and whose `id`
/// is the point to resume from.
#[derive(Serialize, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct FeedEnvelope {
    pub event_id: Uuid,
    pub global_position: i64,
    pub aggregate_type: String,
    pub aggregate_id: String,
    pub sequence: i64,
    pub event_type: String,
    pub event_version: String,
    pub recorded_at: DateTime<Utc>,
    /// The event's fields (personal fields sealed, as stored).
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
    /// `actor`, `correlation_id`, `causation_id`, `request_id`.
    #[schema(value_type = Object)]
    pub metadata: serde_json::Value,
}

/// The `data` of the final `event: resume`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct ResumeNotice {
    /// `slow` (the subscriber fell behind), `shutdown`, or `unavailable` (history could
    /// not be read).
    pub reason: &'static str,
    /// The point to resume from (also the event's `id`).
    pub after: String,
}

fn problem(status: StatusCode, code: &'static str, detail: impl Into<String>) -> AppError {
    AppError::new(status, code, detail)
}

fn expired(detail: impl Into<String>) -> AppError {
    problem(StatusCode::GONE, "feed_position_expired", detail)
}

/// Who the stream is for: a ticket's principal, or the bearer token's.
async fn viewer_of(
    state: &AppState,
    params: &FeedParams,
    principal: Result<Principal, AppError>,
) -> Result<Actor, AppError> {
    match &params.ticket {
        Some(ticket) => redeem(state, ticket).await,
        None => principal.map(|p| p.0),
    }
}

/// Live events the caller may see, as Server-Sent Events (`text/event-stream`).
///
/// A client sees the events of its own accounts, bookings, payments and subscriptions;
/// admins and auditors see all. An event is sent once the read models applied it, so a
/// query with its `global_position` as `min_position` answers at once. Each event's `id`
/// is a point in Kafka's order (every partition's next offset): reconnecting with
/// `Last-Event-ID` (or `?after=`) delivers exactly the events missed, on any instance.
#[utoipa::path(get, path = "/v1/feed", tag = "feed", params(FeedParams,
        ("Last-Event-ID" = Option<String>, Header, description = "Resume after this event's id")),
    responses(
        (status = 200, content_type = "text/event-stream", body = FeedEnvelope,
            description = "`id:` resume point, `event:` event type, `data:` the envelope; \
                           `: keep-alive` comments with an `id:`; a final `event: resume` \
                           (data: ResumeNotice) when Chronicle ends the stream"),
        (status = 400, content_type = "application/problem+json", body = crate::docs::Problem,
            description = "`invalid_feed_position`: not a point this feed issued"),
        (status = 401, content_type = "application/problem+json", body = crate::docs::Problem,
            description = "no token, or a ticket unknown, used or expired"),
        (status = 410, content_type = "application/problem+json", body = crate::docs::Problem,
            description = "`feed_position_expired`: the point is older than the feed keeps"),
        (status = 422, content_type = "application/problem+json", body = crate::docs::Problem),
        (status = 429, content_type = "application/problem+json", body = crate::docs::Problem,
            description = "`too_many_streams` for this principal"),
        (status = 503, content_type = "application/problem+json", body = crate::docs::Problem,
            description = "the feed is starting, or too many streams or resumes; `Retry-After`"),
    ),
    security(("bearer" = [])))]
pub async fn feed(
    State(state): State<AppState>,
    headers: HeaderMap,
    principal: Result<Principal, AppError>,
    ApiQuery(params): ApiQuery<FeedParams>,
) -> Result<Response, AppError> {
    let live = state.feed.clone();
    let feed = live.feed.clone();
    let from = headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .map(str::trim)
        .filter(|v| !v.is_empty())
        .or(params.after.as_deref())
        .map(|text| {
            feed.decode(text).map_err(|error| match error {
                PositionError::Malformed => AppError::bad_request(
                    "invalid_feed_position",
                    "not a point of this feed (an event's id)",
                ),
                PositionError::OtherLayout => {
                    expired("the point was issued for another layout of the topics; start afresh")
                }
            })
        })
        .transpose()?;
    // The point is read before the principal: a malformed one must not spend a ticket.
    let actor = viewer_of(&state, &params, principal).await?;
    let viewer = Viewer {
        sees_all: actor.has(Role::Admin) || actor.has(Role::Auditor),
        subject: actor.subject.clone(),
    };
    let filter = Filter {
        aggregate_type: params.aggregate_type.clone(),
        aggregate_id: params.aggregate_id.map(|id| id.to_string()),
    };
    let open = live.admit(&actor.subject)?;
    feed.ready()
        .await
        .map_err(|error| AppError::unavailable(&error).with_retry_after(1))?;
    // The retention holds wherever a point is served from: this instance's memory or
    // Kafka (where the catch-up checks it).
    if let Some(from) = &from
        && let Some(sent) = feed.hub.first_sent_after(from)
        && sent
            < chronicle_eventstore::clock::now().timestamp_millis()
                - feed.settings().retention.as_millis() as i64
    {
        return Err(expired(format!(
            "the events after this point are older than the feed's retention ({})",
            chronicle_projections::feed::hours(feed.settings().retention)
        )));
    }
    let subscription = feed
        .hub
        .subscribe(viewer, filter, from)
        .map_err(|error| AppError::unavailable(&error))?;
    // A point older than the buffer is read from Kafka; whether Kafka still holds it is
    // answered now, as a status, not later as silence.
    let mut stream = Stream::new(&live, subscription, open);
    match stream.subscription.take_ready() {
        Ready::Behind(upto) => {
            stream.catch_up = Some(
                feed.catch_up(stream.subscription.position(), &upto)
                    .await
                    .map_err(refusal)?,
            )
        }
        Ready::Frames(frames) => stream.pending = frames,
        Ready::Cut => {}
    }
    Ok(sse(stream))
}

fn refusal(error: CatchUpError) -> AppError {
    match error {
        CatchUpError::Expired(detail) => expired(detail),
        CatchUpError::Busy => AppError::new(
            StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many resumes are reading history now; retry shortly",
        )
        .with_retry_after(2),
        other => AppError::unavailable(&other).with_retry_after(2),
    }
}

fn sse(stream: Stream) -> Response {
    let body = Body::from_stream(futures::stream::unfold(stream, |mut stream| async move {
        let chunk = stream.next_chunk().await?;
        Some((Ok::<_, std::convert::Infallible>(chunk), stream))
    }));
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/event-stream"),
    );
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    // Proxies that buffer responses (nginx) would hold events back.
    headers.insert("x-accel-buffering", HeaderValue::from_static("no"));
    response
}

/// One subscriber's stream: its cursor, a catch-up from Kafka when its point was older
/// than the buffer, and the timers.
struct Stream {
    feed: Arc<Feed>,
    subscription: Subscription,
    catch_up: Option<CatchUp>,
    pending: Vec<Frame>,
    /// `retry:` and the starting point, sent first.
    opening: Option<String>,
    heartbeat: tokio::time::Interval,
    shutdown: CancellationToken,
    ended: bool,
    _open: OpenStream,
}

impl Stream {
    fn new(live: &Arc<LiveFeed>, subscription: Subscription, open: OpenStream) -> Self {
        let settings = live.feed.settings();
        let mut heartbeat = tokio::time::interval_at(
            tokio::time::Instant::now() + settings.heartbeat,
            settings.heartbeat,
        );
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let opening = format!(
            "retry: {}\n: connected\nid: {}\n\n",
            settings.retry.as_millis(),
            subscription.position().encode()
        );
        Self {
            feed: live.feed.clone(),
            subscription,
            catch_up: None,
            pending: Vec::new(),
            opening: Some(opening),
            heartbeat,
            shutdown: live.shutdown.clone(),
            ended: false,
            _open: open,
        }
    }

    /// Ends the stream with the point to resume from.
    fn end(&mut self, reason: &'static str) -> Bytes {
        self.ended = true;
        metrics::FEED_DROPPED.with_label_values(&[reason]).inc();
        let after = self.subscription.position().encode();
        let data = serde_json::to_string(&ResumeNotice {
            reason,
            after: after.clone(),
        })
        .unwrap_or_default();
        Bytes::from(format!("event: resume\nid: {after}\ndata: {data}\n\n"))
    }

    /// The next bytes to send; `None` once ended.
    async fn next_chunk(&mut self) -> Option<Bytes> {
        if self.ended {
            return None;
        }
        let mut text = self.opening.take().unwrap_or_default();
        loop {
            if !self.pending.is_empty() {
                write_frames(&mut text, std::mem::take(&mut self.pending));
            }
            if !text.is_empty() {
                return Some(Bytes::from(text));
            }
            if self.shutdown.is_cancelled() {
                return Some(self.end("shutdown"));
            }
            if let Some(catch_up) = &mut self.catch_up {
                match catch_up.next().await {
                    Ok(Some(items)) => {
                        let mut frames = Vec::new();
                        self.subscription.take(&items, &mut frames);
                        self.pending = frames;
                    }
                    Ok(None) => self.catch_up = None,
                    Err(error) => {
                        tracing::warn!(%error, "a feed resume could not read history");
                        return Some(self.end("unavailable"));
                    }
                }
                continue;
            }
            match self.subscription.take_ready() {
                Ready::Frames(frames) if !frames.is_empty() => {
                    self.pending = frames;
                    continue;
                }
                Ready::Frames(_) => {}
                Ready::Cut => return Some(self.end("slow")),
                Ready::Behind(upto) => {
                    // The buffer moved on while this stream read history: read on.
                    return match self.start_catch_up(&upto).await {
                        Ok(()) => continue,
                        Err(_) => Some(self.end("unavailable")),
                    };
                }
            }
            tokio::select! {
                _ = self.shutdown.cancelled() => return Some(self.end("shutdown")),
                _ = self.heartbeat.tick() => {
                    let id = self.subscription.idle_position();
                    return Some(Bytes::from(format!(": keep-alive\nid: {id}\n\n")));
                }
                _ = self.subscription.changed() => {}
            }
        }
    }

    async fn start_catch_up(&mut self, upto: &FeedPosition) -> Result<(), CatchUpError> {
        let catch_up = self
            .feed
            .catch_up(self.subscription.position(), upto)
            .await?;
        self.catch_up = Some(catch_up);
        Ok(())
    }
}

/// Writes events as SSE frames, timing each from the relay.
fn write_frames(text: &mut String, frames: Vec<Frame>) {
    let now = chronicle_eventstore::clock::now().timestamp_millis();
    for frame in frames {
        text.push_str("id: ");
        text.push_str(&frame.id);
        text.push_str("\nevent: ");
        text.push_str(&frame.event.event_type);
        text.push_str("\ndata: ");
        text.push_str(&frame.event.data);
        text.push_str("\n\n");
        metrics::FEED_EVENTS_SENT.inc();
        if let Some(sent) = frame.event.sent_at_ms {
            metrics::FEED_DELIVERY_LAG.observe((now - sent).max(0) as f64 / 1000.0);
        }
    }
}

/// A stream ticket.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Ticket {
    /// Pass as `GET /v1/feed?ticket=`; valid once, until `expires_at`.
    pub ticket: String,
    pub expires_at: DateTime<Utc>,
}

fn ticket_hash(ticket: &str) -> Vec<u8> {
    Sha256::digest(ticket.as_bytes()).to_vec()
}

/// A single-use ticket to open the feed without an `Authorization` header (browsers'
/// `EventSource` cannot send one). It stands for the caller, roles included.
#[utoipa::path(post, path = "/v1/feed/tickets", tag = "feed",
    responses((status = 201, body = Ticket), crate::docs::QueryErrors), security(("bearer" = [])))]
pub async fn ticket(
    State(state): State<AppState>,
    principal: Principal,
) -> Result<Response, AppError> {
    // 244 random bits from the operating system's generator (two version-4 UUIDs).
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(Uuid::new_v4().as_bytes());
    bytes.extend_from_slice(Uuid::new_v4().as_bytes());
    let ticket = URL_SAFE_NO_PAD.encode(bytes);
    let ttl = state.feed.feed.settings().ticket_ttl;
    let expires_at = chronicle_eventstore::clock::now()
        + chrono::Duration::from_std(ttl).unwrap_or(chrono::Duration::seconds(60));
    let roles: Vec<&str> = principal.0.roles.iter().map(|r| r.as_str()).collect();
    let mut tx = state.pool.begin().await.map_err(database)?;
    sqlx::query("DELETE FROM feed_tickets WHERE expires_at < now()")
        .execute(&mut *tx)
        .await
        .map_err(database)?;
    sqlx::query(
        "INSERT INTO feed_tickets (ticket_hash, subject, roles, expires_at) VALUES ($1, $2, $3, $4)",
    )
    .bind(ticket_hash(&ticket))
    .bind(&principal.0.subject)
    .bind(&roles)
    .bind(expires_at)
    .execute(&mut *tx)
    .await
    .map_err(database)?;
    tx.commit().await.map_err(database)?;
    Ok((StatusCode::CREATED, Json(Ticket { ticket, expires_at })).into_response())
}

/// The principal a ticket stands for; the ticket is spent.
async fn redeem(state: &AppState, ticket: &str) -> Result<Actor, AppError> {
    let row: Option<(String, Vec<String>, DateTime<Utc>)> = sqlx::query_as(
        "DELETE FROM feed_tickets WHERE ticket_hash = $1 RETURNING subject, roles, expires_at",
    )
    .bind(ticket_hash(ticket))
    .fetch_optional(&state.pool)
    .await
    .map_err(database)?;
    let Some((subject, roles, expires_at)) = row else {
        return Err(AppError::unauthorized("unknown or used stream ticket"));
    };
    if expires_at <= chronicle_eventstore::clock::now() {
        return Err(AppError::unauthorized("the stream ticket has expired"));
    }
    let roles = roles
        .iter()
        .filter_map(|r| Role::parse(r))
        .filter(|r| *r != Role::System);
    tracing::Span::current().record("principal", subject.as_str());
    Ok(Actor::new(subject, roles))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_written_as_server_sent_events() {
        use chronicle_projections::feed::FeedEvent;
        let mut text = String::new();
        write_frames(
            &mut text,
            vec![Frame {
                id: "v1.AQ".into(),
                event: Arc::new(FeedEvent {
                    global_position: 1,
                    aggregate_type: "Booking".into(),
                    aggregate_id: "b".into(),
                    event_type: "BookingRequested".into(),
                    owner: None,
                    data: "{\"a\":1}".into(),
                    sent_at_ms: None,
                }),
            }],
        );
        assert_eq!(
            text,
            "id: v1.AQ\nevent: BookingRequested\ndata: {\"a\":1}\n\n"
        );
    }

    #[test]
    fn tickets_are_stored_as_hashes() {
        assert_eq!(ticket_hash("t").len(), 32);
        assert_ne!(ticket_hash("t"), b"t".to_vec());
    }
}
