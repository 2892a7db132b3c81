//! The topologies of the spate-streams examples, shared by the example programs and by the
//! end-to-end tests (so the tests check exactly what the examples run).

use std::time::Duration;

use serde::{Deserialize, Serialize};
use spate_streams::serdes::{I64Serde, JsonSerde, StringSerde};
use spate_streams::window::{JoinWindows, SessionWindows, TimeWindows};
use spate_streams::{
    Consumed, EmitStrategy, Grouped, Materialized, Produced, StreamJoined, StreamsBuilder, StreamsError, Topology,
};

/// Kafka's WordCountDemo: lines from `input`, lower-cased and split on non-word characters,
/// counted per word into the store `counts`; every count update goes to `output` as key =
/// word (UTF-8), value = count (8-byte big-endian, Kafka's LongSerializer).
pub fn wordcount(input: &str, output: &str) -> Result<Topology, StreamsError> {
    let builder = StreamsBuilder::new();
    builder
        .stream(&[input], Consumed::with(StringSerde, StringSerde))
        .flat_map_values(|line: String| {
            line.to_lowercase()
                .split(|c: char| !(c.is_alphanumeric() || c == '_'))
                .filter(|w| !w.is_empty())
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .group_by(|_, word| word.clone(), Grouped::with(StringSerde, StringSerde))
        .count(Materialized::named("counts"))?
        .to_stream()
        .to(output, Produced::with(StringSerde, I64Serde));
    builder.build()
}

/// A page view, as `pageviews` carries it (JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct PageView {
    pub user: String,
    pub page: String,
}

/// One final count per page and window, as `pageview-counts` carries it (JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct PageViewCount {
    pub page: String,
    pub window_start: i64,
    pub window_end: i64,
    pub count: i64,
}

/// Tumbling-window page view counts with final results only: `pageviews` (key user, JSON
/// value) re-keyed by page (a repartition), counted per `window` with `grace`, one record per
/// (page, window) to `output` when the window closes.
pub fn pageview_counts(input: &str, output: &str, window: Duration, grace: Duration) -> Result<Topology, StreamsError> {
    let builder = StreamsBuilder::new();
    builder
        .stream(&[input], Consumed::with(StringSerde, JsonSerde::<PageView>::new()))
        .group_by(
            |_, view| view.page.clone(),
            Grouped::with(StringSerde, JsonSerde::<PageView>::new()).with_name("pageviews-by-page"),
        )
        .windowed_by(TimeWindows::of_size_with_grace(window, grace)?)
        .emit_strategy(EmitStrategy::OnWindowClose)
        .count(Materialized::named("pageview-counts-store"))?
        .to_stream()
        .map(|windowed, count| {
            let page = windowed.key.clone();
            let value = PageViewCount {
                page: windowed.key,
                window_start: windowed.window.start_ms,
                window_end: windowed.window.end_ms,
                count,
            };
            (page, value)
        })
        .to(output, Produced::with(StringSerde, JsonSerde::<PageViewCount>::new()));
    builder.build()
}

/// An order or a payment: JSON objects keyed by order id; only what the join needs is typed.
pub type Json = serde_json::Value;

/// Orders joined with their payments within `window`: matches to `paid`, orders that found no
/// payment by the time their window closed to `unpaid` (left join, null side).
pub fn orders_payments(
    orders: &str,
    payments: &str,
    paid: &str,
    unpaid: &str,
    window: Duration,
) -> Result<Topology, StreamsError> {
    let builder = StreamsBuilder::new();
    let orders = builder.stream(&[orders], Consumed::with(StringSerde, JsonSerde::<Json>::new()));
    let payments = builder.stream(&[payments], Consumed::with(StringSerde, JsonSerde::<Json>::new()));
    let joined = orders.left_join(
        &payments,
        |order: &Json, payment: Option<&Json>| serde_json::json!({"order": order, "payment": payment}),
        JoinWindows::of_time_difference_with_no_grace(window)?,
        StreamJoined::with(StringSerde, JsonSerde::<Json>::new(), JsonSerde::<Json>::new())
            .with_store_name("orders-payments-join"),
    )?;
    let branches = joined.split().branch("paid", |_, v: &Json| !v["payment"].is_null()).default_branch("unpaid");
    branches["paid"].to(paid, Produced::with(StringSerde, JsonSerde::<Json>::new()));
    branches["unpaid"]
        .map_values(|v: Json| v["order"].clone())
        .to(unpaid, Produced::with(StringSerde, JsonSerde::<Json>::new()));
    builder.build()
}

/// Clicks (key user, JSON) enriched with the user's row of the `users` table (compacted topic,
/// key user, JSON); clicks of unknown users get `"user": null`.
pub fn enrich_clicks(clicks: &str, users: &str, output: &str) -> Result<Topology, StreamsError> {
    let builder = StreamsBuilder::new();
    let users = builder.table(
        users,
        Consumed::with(StringSerde, JsonSerde::<Json>::new()),
        Materialized::named("users-store"),
    )?;
    builder
        .stream(&[clicks], Consumed::with(StringSerde, JsonSerde::<Json>::new()))
        .left_join_table(&users, |click: &Json, user: Option<&Json>| serde_json::json!({"click": click, "user": user}))?
        .to(output, Produced::with(StringSerde, JsonSerde::<Json>::new()));
    builder.build()
}

/// A session's summary, as `session_activity` writes it (JSON).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionSummary {
    pub user: String,
    pub session_start: i64,
    pub session_end: i64,
    pub events: i64,
}

/// Sessions per user with an inactivity `gap`: every update of a session goes to `output`
/// (key user); a session merged into a larger one is retracted with a tombstone.
pub fn session_activity(input: &str, output: &str, gap: Duration) -> Result<Topology, StreamsError> {
    let builder = StreamsBuilder::new();
    builder
        .stream(&[input], Consumed::with(StringSerde, StringSerde))
        .group_by_key(Grouped::with(StringSerde, StringSerde))
        .windowed_by_session(SessionWindows::of_inactivity_gap_with_no_grace(gap)?)
        .count(Materialized::named("sessions"))?
        .to_change_stream()
        .map(|windowed, count: Option<i64>| {
            let summary = count.map(|events| SessionSummary {
                user: windowed.key.clone(),
                session_start: windowed.window.start_ms,
                session_end: windowed.window.end_ms,
                events,
            });
            (windowed.key, summary)
        })
        .to(
            output,
            Produced::with(StringSerde, spate_streams::serdes::NullableSerde(JsonSerde::<SessionSummary>::new())),
        );
    builder.build()
}
