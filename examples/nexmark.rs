//! Nexmark on Spate: a generator of Nexmark's auction events (persons, auctions and bids in the
//! 1:3:46 mix, with the reference generator's field sets, sizes and id choices) producing into
//! one topic, and Nexmark queries written with the spate-streams DSL, run by `KafkaStreams`
//! against that topic. Prints events/s, end-to-end latency and peak RSS.
//!
//! ```text
//! cargo run --release -p spate-examples --example nexmark -- --bootstrap-server 127.0.0.1:9092 \
//!     --query q0|q0raw|q1|q2|q3|q5|q7|q8 [--events 2000000] [--partitions 2] [--event-rate 10000] \
//!     [--rate R] [--skip-generate] [--threads 1] [--grace-ms 2000] [--broker-pid PID] \
//!     [--set streams.key=value ...] [--sql]
//! ```
//!
//! `--sql` runs the query's SQL form instead (`nexmark_sql.rs`: continuous `INSERT INTO … SELECT`
//! statements on the same runtime; q0raw and q4 have none).
//!
//! Two kinds of run:
//! - Throughput (default): phase 1 generates `--events` into `nexmark-events` as fast as the
//!   producer goes (event time advancing `--event-rate` simulated events per second, ending
//!   before now); phase 2 starts the query with a fresh `application.id` and times it until
//!   every input event (and every record of its repartition topics) has been processed.
//!   Latency is not meaningful here (every record waits behind the backlog) and is not shown.
//! - Latency (`--rate R`): the query starts first; then `--events` are produced at `R` events/s
//!   with event time = the wall clock at production, and a consumer of the output topic records
//!   `receive wall clock - output record timestamp` per output record. For q0-q3 and q8 the
//!   output timestamp is the input event's time (its production time); for the windowed
//!   queries (q5, q7) it is the window's end - 1 ms, so their latency is measured from the end
//!   of the window to the result being readable, which includes the grace period.
//!
//! Queries (Nexmark's, as in the Beam and RisingWave suites):
//! - q0: every event passed through (decoded and re-encoded); q0raw: the bytes passed through
//!   undecoded, to tell the runtime's cost from JSON's.
//! - q1: bids with the price converted to euros (`price * 0.908`).
//! - q2: bids of auctions with `auction % 123 == 0` (auction, price).
//! - q3: auctions of category 10 joined with their seller when the seller lives in OR, ID or
//!   CA (person table keyed by id ⋈ auctions re-keyed by seller: a stream-table join, Kafka
//!   Streams' form of Nexmark's incremental join).
//! - q5: hot items: bids counted per auction over 10 s windows hopping every 2 s (final counts
//!   only), then per window the auction with the most bids (ties: the lowest auction id).
//! - q7: the highest bid per 10 s tumbling window (all bids grouped under one key).
//! - q8: persons joined with the auctions they open within 10 s (stream-stream join of persons
//!   by id and auctions re-keyed by seller, `JoinWindows` of 10 s: Kafka Streams' windows are
//!   sliding, where Nexmark's q8 uses tumbling windows of both sides).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context};
use rand::rngs::SmallRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};
use spate_client::admin::{AdminConfig, NewTopic, OffsetSpec};
use spate_client::protocol::ErrorCode;
use spate_client::{
    Admin, AutoOffsetReset, Consumer, ConsumerConfig, DeliveryFuture, Producer, ProducerConfig, ProducerRecord,
    TopicPartition,
};
use spate_streams::serdes::{BytesSerde, F64Serde, I64Serde, JsonSerde};
use spate_streams::window::{JoinWindows, TimeWindows};
use spate_streams::{
    Consumed, EmitStrategy, Grouped, KStream, KafkaStreams, Materialized, Produced, Repartitioned, StreamJoined,
    StreamsBuilder, StreamsConfig, StreamsState, Topology,
};

#[cfg(feature = "sql")]
mod nexmark_sql;

const EVENTS_TOPIC: &str = "nexmark-events";

// ---------------------------------------------------------------------------------------------
// The event model (Nexmark's Person, Auction and Bid; JSON field names as Beam's Nexmark).

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Person {
    id: i64,
    name: String,
    email_address: String,
    credit_card: String,
    city: String,
    state: String,
    date_time: i64,
    extra: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Auction {
    id: i64,
    item_name: String,
    description: String,
    initial_bid: i64,
    reserve: i64,
    date_time: i64,
    expires: i64,
    seller: i64,
    category: i64,
    extra: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "camelCase")]
struct Bid {
    auction: i64,
    bidder: i64,
    price: i64,
    channel: String,
    url: String,
    date_time: i64,
    extra: String,
}

/// One record of `nexmark-events`: `{"person":{…}}`, `{"auction":{…}}` or `{"bid":{…}}`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "lowercase")]
enum Event {
    Person(Person),
    Auction(Auction),
    Bid(Bid),
}

// ---------------------------------------------------------------------------------------------
// The generator: Beam's `NexmarkUtils`/`GeneratorConfig` defaults and id choices.

const PERSON_PROPORTION: u64 = 1;
const AUCTION_PROPORTION: u64 = 3;
const BID_PROPORTION: u64 = 46;
const PROPORTION_DENOMINATOR: u64 = PERSON_PROPORTION + AUCTION_PROPORTION + BID_PROPORTION;
const FIRST_PERSON_ID: i64 = 1000;
const FIRST_AUCTION_ID: i64 = 1000;
const FIRST_CATEGORY_ID: i64 = 10;
const NUM_CATEGORIES: i64 = 5;
/// Bids and auctions pick people among the most recent this many (`numActivePeople`).
const NUM_ACTIVE_PEOPLE: u64 = 1000;
/// Bids pick auctions among the most recent this many (`numInFlightAuctions`).
const NUM_IN_FLIGHT_AUCTIONS: u64 = 100;
/// Ids a little ahead of the newest, as the reference does (bids for auctions not yet seen).
const PERSON_ID_LEAD: u64 = 10;
const AUCTION_ID_LEAD: u64 = 10;
/// `hotAuctionRatio`, `hotBiddersRatio`, `hotSellersRatio`: 1 in N picks is uniform, the
/// others go to the hot auction / bidder / seller.
const HOT_AUCTION_RATIO: u64 = 2;
const HOT_BIDDER_RATIO: u64 = 4;
const HOT_SELLER_RATIO: u64 = 4;
/// The reference's grouping of hot ids: the hot one is the first of each batch of 100.
const HOT_BATCH: u64 = 100;
/// Average sizes (`avgPersonByteSize`, `avgAuctionByteSize`, `avgBidByteSize`): the `extra`
/// field pads each event to about this many bytes of field data.
const AVG_PERSON_BYTES: usize = 200;
const AVG_AUCTION_BYTES: usize = 500;
const AVG_BID_BYTES: usize = 100;
const CHANNELS: u64 = 10_000;
const HOT_CHANNELS: [&str; 4] = ["Google", "Facebook", "Baidu", "Apple"];
const FIRST_NAMES: [&str; 11] =
    ["Peter", "Paul", "Luke", "John", "Saul", "Vicky", "Kate", "Julie", "Sarah", "Deiter", "Walter"];
const LAST_NAMES: [&str; 9] = ["Shultz", "Abrams", "Spencer", "White", "Bartels", "Walton", "Smith", "Jones", "Noris"];
const US_STATES: [&str; 6] = ["AZ", "CA", "ID", "OR", "WA", "WY"];
const US_CITIES: [&str; 10] =
    ["Phoenix", "Los Angeles", "San Francisco", "Boise", "Portland", "Bend", "Redmond", "Seattle", "Kent", "Cheyenne"];

/// Where event time starts and how fast it advances.
#[derive(Debug, Clone, Copy)]
struct Generator {
    base_time_ms: i64,
    /// Simulated events per second of event time (Nexmark's `firstEventRate`).
    events_per_second: u64,
}

#[expect(
    clippy::unnecessary_min_or_max,
    reason = "the reference's formula, for any person proportion; with Nexmark's 1 it is always 0"
)]
fn last_base0_person_id(event_id: u64) -> u64 {
    let epoch = event_id / PROPORTION_DENOMINATOR;
    let offset = (event_id % PROPORTION_DENOMINATOR).min(PERSON_PROPORTION - 1);
    epoch * PERSON_PROPORTION + offset
}

fn last_base0_auction_id(event_id: u64) -> u64 {
    let mut epoch = event_id / PROPORTION_DENOMINATOR;
    let mut offset = event_id % PROPORTION_DENOMINATOR;
    if offset < PERSON_PROPORTION {
        // The auctions of the previous epoch are the latest.
        if epoch == 0 {
            return 0;
        }
        epoch -= 1;
        offset = AUCTION_PROPORTION - 1;
    } else if offset >= PERSON_PROPORTION + AUCTION_PROPORTION {
        offset = AUCTION_PROPORTION - 1;
    } else {
        offset -= PERSON_PROPORTION;
    }
    epoch * AUCTION_PROPORTION + offset
}

fn next_base0_person_id(event_id: u64, rng: &mut SmallRng) -> u64 {
    let num_people = last_base0_person_id(event_id) + 1;
    let active = num_people.min(NUM_ACTIVE_PEOPLE);
    num_people - active + rng.random_range(0..active + PERSON_ID_LEAD)
}

fn next_base0_auction_id(event_id: u64, rng: &mut SmallRng) -> u64 {
    let max_auction = last_base0_auction_id(event_id);
    let min_auction = max_auction.saturating_sub(NUM_IN_FLIGHT_AUCTIONS);
    min_auction + rng.random_range(0..max_auction - min_auction + 1 + AUCTION_ID_LEAD)
}

/// A string of 3 to `max_len - 1` letters with an occasional `special` (Beam's `nextString`).
fn next_string(rng: &mut SmallRng, max_len: usize, special: char) -> String {
    let len = 3 + rng.random_range(0..max_len - 3);
    (0..len)
        .map(|_| if rng.random_range(0..13) == 0 { special } else { char::from(b'a' + rng.random_range(0..26u8)) })
        .collect()
}

fn next_exact_string(rng: &mut SmallRng, len: usize) -> String {
    (0..len).map(|_| char::from(b'a' + rng.random_range(0..26u8))).collect()
}

/// Padding that brings an event of `current` bytes to about `average` (±20%, Beam's
/// `nextExtra`).
fn next_extra(rng: &mut SmallRng, current: usize, average: usize) -> String {
    if current > average {
        return String::new();
    }
    let desired = average - current;
    let delta = (desired as f64 * 0.2).round() as usize;
    let size = desired - delta + if delta == 0 { 0 } else { rng.random_range(0..2 * delta) };
    next_exact_string(rng, size)
}

/// Prices in cents, log-uniform from $1 to $1M (Beam's `PriceGenerator`).
fn next_price(rng: &mut SmallRng) -> i64 {
    (10f64.powf(rng.random::<f64>() * 6.0) * 100.0).round() as i64
}

fn base_url(rng: &mut SmallRng) -> String {
    format!(
        "https://www.nexmark.com/{}/{}/{}/item.htm?query=1",
        next_string(rng, 5, '_'),
        next_string(rng, 5, '_'),
        next_string(rng, 5, '_')
    )
}

impl Generator {
    fn timestamp_ms(&self, event_id: u64) -> i64 {
        let offset_us = u128::from(event_id) * 1_000_000 / u128::from(self.events_per_second);
        self.base_time_ms + (offset_us / 1000) as i64
    }

    /// Event `event_id` and its key (person id, auction id, or a bid's auction id), as the
    /// reference generator makes it from a random source seeded by the id.
    fn event(&self, event_id: u64) -> (i64, Event) {
        let mut rng = SmallRng::seed_from_u64(event_id);
        let rng = &mut rng;
        let ts = self.timestamp_ms(event_id);
        let offset = event_id % PROPORTION_DENOMINATOR;
        if offset < PERSON_PROPORTION {
            let id = last_base0_person_id(event_id) as i64 + FIRST_PERSON_ID;
            let name = format!(
                "{} {}",
                FIRST_NAMES[rng.random_range(0..FIRST_NAMES.len())],
                LAST_NAMES[rng.random_range(0..LAST_NAMES.len())]
            );
            let email_address = format!("{}@{}.com", next_string(rng, 7, ' '), next_string(rng, 5, ' '));
            let credit_card =
                (0..4).map(|_| format!("{:04}", rng.random_range(0..10_000))).collect::<Vec<_>>().join(" ");
            let city = US_CITIES[rng.random_range(0..US_CITIES.len())].to_string();
            let state = US_STATES[rng.random_range(0..US_STATES.len())].to_string();
            let current = 8 + name.len() + email_address.len() + credit_card.len() + city.len() + state.len() + 8;
            let extra = next_extra(rng, current, AVG_PERSON_BYTES);
            let person = Person { id, name, email_address, credit_card, city, state, date_time: ts, extra };
            (id, Event::Person(person))
        } else if offset < PERSON_PROPORTION + AUCTION_PROPORTION {
            let id = last_base0_auction_id(event_id) as i64 + FIRST_AUCTION_ID;
            let seller = if rng.random_range(0..HOT_SELLER_RATIO) > 0 {
                (last_base0_person_id(event_id) / HOT_BATCH) * HOT_BATCH
            } else {
                next_base0_person_id(event_id, rng)
            } as i64
                + FIRST_PERSON_ID;
            let category = FIRST_CATEGORY_ID + rng.random_range(0..NUM_CATEGORIES);
            let initial_bid = next_price(rng);
            // Auctions last about twice the time `NUM_IN_FLIGHT_AUCTIONS` new auctions take.
            let events_for_auctions = NUM_IN_FLIGHT_AUCTIONS * PROPORTION_DENOMINATOR / AUCTION_PROPORTION;
            let horizon_ms = (self.timestamp_ms(event_id + events_for_auctions) - ts).max(1);
            let expires = ts + 1 + rng.random_range(0..2 * horizon_ms);
            let item_name = next_string(rng, 20, ' ');
            let description = next_string(rng, 100, ' ');
            let reserve = initial_bid + next_price(rng);
            let current = 8 + item_name.len() + description.len() + 8 * 6;
            let extra = next_extra(rng, current, AVG_AUCTION_BYTES);
            let auction = Auction {
                id,
                item_name,
                description,
                initial_bid,
                reserve,
                date_time: ts,
                expires,
                seller,
                category,
                extra,
            };
            (id, Event::Auction(auction))
        } else {
            let auction = if rng.random_range(0..HOT_AUCTION_RATIO) > 0 {
                (last_base0_auction_id(event_id) / HOT_BATCH) * HOT_BATCH
            } else {
                next_base0_auction_id(event_id, rng)
            } as i64
                + FIRST_AUCTION_ID;
            let bidder = if rng.random_range(0..HOT_BIDDER_RATIO) > 0 {
                (last_base0_person_id(event_id) / HOT_BATCH) * HOT_BATCH + 1
            } else {
                next_base0_person_id(event_id, rng)
            } as i64
                + FIRST_PERSON_ID;
            let price = next_price(rng);
            let (channel, url) = if rng.random_range(0..2) == 0 {
                let i = rng.random_range(0..HOT_CHANNELS.len());
                (HOT_CHANNELS[i].to_string(), format!("https://www.nexmark.com/hot/{i}/item.htm?query=1"))
            } else {
                let channel = rng.random_range(0..CHANNELS);
                (format!("channel-{channel}"), format!("{}&channel_id={}", base_url(rng), channel.reverse_bits() >> 32))
            };
            let current = 8 * 4 + channel.len() + url.len();
            let extra = next_extra(rng, current, AVG_BID_BYTES);
            (auction, Event::Bid(Bid { auction, bidder, price, channel, url, date_time: ts, extra }))
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Query outputs.

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Q1Out {
    auction: i64,
    bidder: i64,
    price: f64,
    date_time: i64,
    extra: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Q2Out {
    auction: i64,
    price: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Q3Out {
    name: String,
    city: String,
    state: String,
    id: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct AuctionCount {
    auction: i64,
    count: i64,
    window_start: i64,
    window_end: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Q7Out {
    auction: i64,
    price: i64,
    bidder: i64,
    date_time: i64,
    extra: String,
    window_start: i64,
    window_end: i64,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Q8Out {
    id: i64,
    name: String,
    reserve: i64,
}

// ---------------------------------------------------------------------------------------------
// Progress: counters that say when a run is done.

/// Records seen at the source, and before and after each repartition topic: the input is fully
/// processed once the source has seen every event and each repartition topic's records have all
/// been read back.
#[derive(Default)]
struct Progress {
    source: Arc<AtomicU64>,
    stages: Vec<(Arc<AtomicU64>, Arc<AtomicU64>)>,
}

fn counting<K: spate_streams::Data, V: spate_streams::Data>(
    stream: &KStream<K, V>,
    counter: &Arc<AtomicU64>,
) -> KStream<K, V> {
    let counter = counter.clone();
    stream.peek(move |_, _| {
        counter.fetch_add(1, Ordering::Relaxed);
    })
}

impl Progress {
    fn snapshot(&self) -> Vec<u64> {
        let mut s = vec![self.source.load(Ordering::Relaxed)];
        for (before, after) in &self.stages {
            s.push(before.load(Ordering::Relaxed));
            s.push(after.load(Ordering::Relaxed));
        }
        s
    }

    fn complete(snapshot: &[u64], events: u64) -> bool {
        snapshot[0] >= events && snapshot[1..].chunks(2).all(|c| c[1] >= c[0])
    }

    /// Writes `stream` through the repartition topic `name`, counting records on both sides.
    fn repartition<K: spate_streams::Data, V: spate_streams::Data>(
        &mut self,
        stream: &KStream<K, V>,
        repartitioned: Repartitioned<K, V>,
    ) -> KStream<K, V> {
        let (before, after) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
        let out = counting(&counting(stream, &before).repartition(repartitioned), &after);
        self.stages.push((before, after));
        out
    }
}

// ---------------------------------------------------------------------------------------------
// The queries.

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Query {
    Q0,
    /// q0 without decoding: the record's bytes passed through (the runtime's own cost).
    Q0Raw,
    Q1,
    Q2,
    Q3,
    Q4,
    Q5,
    Q7,
    Q8,
}

impl Query {
    fn parse(s: &str) -> anyhow::Result<Query> {
        Ok(match s {
            "q0" => Query::Q0,
            "q0raw" => Query::Q0Raw,
            "q1" => Query::Q1,
            "q2" => Query::Q2,
            "q3" => Query::Q3,
            "q4" => Query::Q4,
            "q5" => Query::Q5,
            "q7" => Query::Q7,
            "q8" => Query::Q8,
            other => bail!("unknown query '{other}': expected q0, q0raw, q1, q2, q3, q4, q5, q7 or q8"),
        })
    }

    fn name(self) -> &'static str {
        match self {
            Query::Q0 => "q0",
            Query::Q0Raw => "q0raw",
            Query::Q1 => "q1",
            Query::Q2 => "q2",
            Query::Q3 => "q3",
            Query::Q4 => "q4",
            Query::Q5 => "q5",
            Query::Q7 => "q7",
            Query::Q8 => "q8",
        }
    }
}

fn bids(events: &KStream<i64, Event>) -> KStream<i64, Bid> {
    events.flat_map_values(|e| match e {
        Event::Bid(b) => Some(b),
        _ => None,
    })
}

fn persons(events: &KStream<i64, Event>) -> KStream<i64, Person> {
    events.flat_map_values(|e| match e {
        Event::Person(p) => Some(p),
        _ => None,
    })
}

fn auctions(events: &KStream<i64, Event>) -> KStream<i64, Auction> {
    events.flat_map_values(|e| match e {
        Event::Auction(a) => Some(a),
        _ => None,
    })
}

/// The query's topology, reading `nexmark-events` and writing `output`, with the counters that
/// tell when it is done.
fn topology(query: Query, output: &str, grace: Duration) -> anyhow::Result<(Topology, Progress)> {
    let builder = StreamsBuilder::new();
    let mut progress = Progress::default();
    if query == Query::Q0Raw {
        counting(&builder.stream(&[EVENTS_TOPIC], Consumed::with(BytesSerde, BytesSerde)), &progress.source)
            .to(output, Produced::with(BytesSerde, BytesSerde));
        return Ok((builder.build()?, progress));
    }
    let events = counting(
        &builder.stream(&[EVENTS_TOPIC], Consumed::with(I64Serde, JsonSerde::<Event>::new())),
        &progress.source,
    );
    match query {
        // Built above, without the decoding source.
        Query::Q0Raw => {}
        Query::Q0 => events.to(output, Produced::with(I64Serde, JsonSerde::<Event>::new())),
        Query::Q1 => bids(&events)
            .map_values(|b| Q1Out {
                auction: b.auction,
                bidder: b.bidder,
                price: b.price as f64 * 0.908,
                date_time: b.date_time,
                extra: b.extra,
            })
            .to(output, Produced::with(I64Serde, JsonSerde::<Q1Out>::new())),
        Query::Q2 => bids(&events)
            .filter(|_, b| b.auction % 123 == 0)
            .map_values(|b| Q2Out { auction: b.auction, price: b.price })
            .to(output, Produced::with(I64Serde, JsonSerde::<Q2Out>::new())),
        Query::Q3 => {
            // The table of sellers of interest, keyed by person id (as the input is). The
            // persons go through a repartition topic of their own although their key does not
            // change: written when spate-streams refused a sub-topology reading a repartition
            // topic it writes itself (it no longer does); kept so the figures stay comparable.
            let sellers = persons(&events).filter(|_, p| matches!(p.state.as_str(), "OR" | "ID" | "CA"));
            let sellers = progress
                .repartition(
                    &sellers,
                    Repartitioned::with(I64Serde, JsonSerde::<Person>::new()).with_name("q3-persons-by-id"),
                )
                .group_by_key(Grouped::with(I64Serde, JsonSerde::<Person>::new()))
                .reduce(|_, newer| newer, Materialized::named("q3-persons").in_memory())?;
            let by_seller = auctions(&events).filter(|_, a| a.category == 10).select_key(|_, a| a.seller);
            let by_seller = progress.repartition(
                &by_seller,
                Repartitioned::with(I64Serde, JsonSerde::<Auction>::new()).with_name("q3-auctions-by-seller"),
            );
            by_seller
                .join_table(&sellers, |a: &Auction, p: &Person| Q3Out {
                    name: p.name.clone(),
                    city: p.city.clone(),
                    state: p.state.clone(),
                    id: a.id,
                })?
                .to(output, Produced::with(I64Serde, JsonSerde::<Q3Out>::new()));
        }
        Query::Q5 => {
            let counts = bids(&events)
                .group_by_key(Grouped::with(I64Serde, JsonSerde::<Bid>::new()))
                .windowed_by(
                    TimeWindows::of_size_with_grace(Duration::from_secs(10), grace)?
                        .advance_by(Duration::from_secs(2))?,
                )
                .emit_strategy(EmitStrategy::OnWindowClose)
                .count(Materialized::named("q5-counts").in_memory())?
                .to_stream()
                .map(|w, count| {
                    let c = AuctionCount {
                        auction: w.key,
                        count,
                        window_start: w.window.start_ms,
                        window_end: w.window.end_ms,
                    };
                    // One key for all: the second aggregation sees every window's counts.
                    (0i64, c)
                });
            let counts = progress.repartition(
                &counts,
                Repartitioned::with(I64Serde, JsonSerde::<AuctionCount>::new()).with_name("q5-counts-by-window"),
            );
            // Each count's timestamp is its window's end - 1, so 2 s tumbling windows hold
            // exactly one hopping window's counts.
            counts
                .group_by_key(Grouped::with(I64Serde, JsonSerde::<AuctionCount>::new()))
                .windowed_by(TimeWindows::of_size_with_grace(Duration::from_secs(2), grace)?)
                .emit_strategy(EmitStrategy::OnWindowClose)
                .reduce(
                    |a, b| if (b.count, -b.auction) > (a.count, -a.auction) { b } else { a },
                    Materialized::named("q5-max").in_memory(),
                )?
                .to_stream()
                .map(|_, c| (c.auction, c))
                .to(output, Produced::with(I64Serde, JsonSerde::<AuctionCount>::new()));
        }
        Query::Q4 => {
            // Each auction's closing price: its highest bid between its start and its expiry.
            // Auctions and bids are both keyed by auction id in `nexmark-events`, so they join
            // without a repartition; auctions last well under a second of event time here
            // (twice the time 100 new auctions take), so a 1 s join window holds every bid
            // that can win. Then the average closing price per category: a re-grouped table,
            // where an auction's new closing price replaces its old one in the average. The
            // category stage's internal repartition is not among the progress counters, so the
            // figure stops when the closing prices are done.
            let closing = auctions(&events)
                .join(
                    &bids(&events),
                    |a: &Auction, b: &Bid| {
                        let in_time = b.date_time >= a.date_time && b.date_time <= a.expires;
                        (a.category, if in_time { b.price } else { -1 })
                    },
                    JoinWindows::of_time_difference_and_grace(Duration::from_secs(1), grace)?,
                    StreamJoined::with(I64Serde, JsonSerde::<Auction>::new(), JsonSerde::<Bid>::new()),
                )?
                .filter(|_, (_, price)| *price >= 0)
                .group_by_key(Grouped::with(I64Serde, JsonSerde::<(i64, i64)>::new()))
                .reduce(|a, b| if b.1 > a.1 { b } else { a }, Materialized::named("q4-closing").in_memory())?;
            closing
                .group_by(
                    |_, (category, price)| (*category, *price),
                    Grouped::with(I64Serde, I64Serde).with_name("q4-by-category"),
                )
                .aggregate(
                    || (0i64, 0i64),
                    |_, price, (sum, n)| (sum + price, n + 1),
                    |_, price, (sum, n)| (sum - price, n - 1),
                    Materialized::named("q4-average").with_value_serde(JsonSerde::<(i64, i64)>::new()).in_memory(),
                )?
                .to_stream()
                .map_values(|(sum, n)| if n > 0 { sum as f64 / n as f64 } else { 0.0 })
                .to(output, Produced::with(I64Serde, F64Serde));
        }
        Query::Q7 => {
            let all = bids(&events).select_key(|_, _| 0i64);
            let all =
                progress.repartition(&all, Repartitioned::with(I64Serde, JsonSerde::<Bid>::new()).with_name("q7-bids"));
            all.group_by_key(Grouped::with(I64Serde, JsonSerde::<Bid>::new()))
                .windowed_by(TimeWindows::of_size_with_grace(Duration::from_secs(10), grace)?)
                .emit_strategy(EmitStrategy::OnWindowClose)
                .reduce(|a, b| if b.price > a.price { b } else { a }, Materialized::named("q7-max").in_memory())?
                .to_stream()
                .map(|w, b| {
                    let out = Q7Out {
                        auction: b.auction,
                        price: b.price,
                        bidder: b.bidder,
                        date_time: b.date_time,
                        extra: b.extra,
                        window_start: w.window.start_ms,
                        window_end: w.window.end_ms,
                    };
                    (b.auction, out)
                })
                .to(output, Produced::with(I64Serde, JsonSerde::<Q7Out>::new()));
        }
        Query::Q8 => {
            let by_seller = auctions(&events).select_key(|_, a| a.seller);
            let by_seller = progress.repartition(
                &by_seller,
                Repartitioned::with(I64Serde, JsonSerde::<Auction>::new()).with_name("q8-auctions-by-seller"),
            );
            // Persons through a repartition topic of their own, as in q3 (see there).
            let persons = progress.repartition(
                &persons(&events),
                Repartitioned::with(I64Serde, JsonSerde::<Person>::new()).with_name("q8-persons-by-id"),
            );
            persons
                .join(
                    &by_seller,
                    |p: &Person, a: &Auction| Q8Out { id: p.id, name: p.name.clone(), reserve: a.reserve },
                    JoinWindows::of_time_difference_and_grace(Duration::from_secs(10), grace)?,
                    StreamJoined::with(I64Serde, JsonSerde::<Person>::new(), JsonSerde::<Auction>::new()),
                )?
                .to(output, Produced::with(I64Serde, JsonSerde::<Q8Out>::new()));
        }
    }
    Ok((builder.build()?, progress))
}

// ---------------------------------------------------------------------------------------------
// The driver.

struct Args {
    bootstrap_server: String,
    query: Query,
    events: u64,
    partitions: i32,
    event_rate: u64,
    rate: Option<u64>,
    skip_generate: bool,
    threads: usize,
    grace: Duration,
    broker_pid: Option<u32>,
    timeout: Duration,
    streams_settings: Vec<(String, String)>,
    /// Run the query's SQL form (`nexmark_sql.rs`) instead of the DSL's.
    sql: bool,
}

impl Args {
    fn parse() -> anyhow::Result<Args> {
        let mut a = Args {
            bootstrap_server: "127.0.0.1:9092".into(),
            query: Query::Q0,
            events: 2_000_000,
            partitions: 2,
            event_rate: 10_000,
            rate: None,
            skip_generate: false,
            threads: 1,
            grace: Duration::from_secs(2),
            broker_pid: None,
            timeout: Duration::from_secs(300),
            streams_settings: Vec::new(),
            sql: false,
        };
        let mut args = std::env::args().skip(1);
        while let Some(arg) = args.next() {
            let mut value = || args.next().with_context(|| format!("{arg} needs a value"));
            match arg.as_str() {
                "--bootstrap-server" => a.bootstrap_server = value()?,
                "--query" => a.query = Query::parse(&value()?)?,
                "--events" => a.events = value()?.replace('_', "").parse()?,
                "--partitions" => a.partitions = value()?.parse()?,
                "--event-rate" => a.event_rate = value()?.replace('_', "").parse()?,
                "--rate" => a.rate = Some(value()?.replace('_', "").parse()?),
                "--skip-generate" => a.skip_generate = true,
                "--sql" => a.sql = true,
                "--threads" => a.threads = value()?.parse()?,
                "--grace-ms" => a.grace = Duration::from_millis(value()?.parse()?),
                "--broker-pid" => a.broker_pid = Some(value()?.parse()?),
                "--timeout-s" => a.timeout = Duration::from_secs(value()?.parse()?),
                "--set" => {
                    let kv = value()?;
                    let (k, v) = kv.split_once('=').with_context(|| format!("--set {kv}: expected key=value"))?;
                    a.streams_settings.push((k.to_string(), v.to_string()));
                }
                other => bail!("unknown argument {other}"),
            }
        }
        if a.events == 0 || a.event_rate == 0 || a.rate == Some(0) || a.partitions < 1 {
            bail!("--events, --event-rate, --rate and --partitions must be at least 1");
        }
        if a.rate.is_some() && a.skip_generate {
            bail!("--rate produces while the query runs; it cannot be combined with --skip-generate");
        }
        Ok(a)
    }
}

fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}

/// `VmHWM` (peak resident set) of a process, in KiB.
fn peak_rss_kib(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmHWM:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// Deletes `topic` if it exists and creates it empty.
async fn recreate_topic(admin: &Admin, topic: &str, partitions: i32) -> anyhow::Result<()> {
    let _ = admin.delete_topics(&[topic]).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match admin.create_topic(NewTopic::new(topic, partitions, 1)).await {
            Ok(()) => return Ok(()),
            Err(e) if e.code() == Some(ErrorCode::TOPIC_ALREADY_EXISTS) && Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Err(e) => return Err(e).with_context(|| format!("creating topic {topic}")),
        }
    }
}

async fn end_offsets_sum(admin: &Admin, topic: &str) -> anyhow::Result<u64> {
    let description = admin.describe_topics(&[topic]).await?.remove(0);
    let wanted: Vec<(TopicPartition, OffsetSpec)> =
        description.partitions.iter().map(|p| (TopicPartition::new(topic, p.partition), OffsetSpec::Latest)).collect();
    let offsets = admin.list_offsets(&wanted).await?;
    Ok(offsets.values().map(|o| o.offset.max(0) as u64).sum())
}

/// Sends events `0..count` of `generator`; `pace` spreads them at that many per second with
/// event time = the wall clock at sending (latency runs). Every delivery is checked.
async fn produce(
    bootstrap: &str,
    generator: Generator,
    count: u64,
    pace: Option<u64>,
) -> anyhow::Result<(Duration, u64)> {
    let producer = Producer::new(ProducerConfig {
        bootstrap_servers: vec![bootstrap.to_string()],
        client_id: "nexmark-generator".into(),
        linger_ms: 5,
        batch_size: 256 * 1024,
        ..ProducerConfig::default()
    })
    .await?;
    let started = Instant::now();
    let mut in_flight: std::collections::VecDeque<DeliveryFuture> = std::collections::VecDeque::new();
    let mut bytes = 0u64;
    for id in 0..count {
        if let Some(rate) = pace {
            let due = Duration::from_secs_f64(id as f64 / rate as f64);
            let elapsed = started.elapsed();
            if due > elapsed + Duration::from_millis(1) {
                tokio::time::sleep(due - elapsed).await;
            }
        }
        let (key, event) = generator.event(id);
        let timestamp_ms = if pace.is_some() { now_ms() } else { generator.timestamp_ms(id) };
        let event = if pace.is_some() { with_time(event, timestamp_ms) } else { event };
        let value = serde_json::to_vec(&event)?;
        bytes += value.len() as u64 + 8;
        let record = ProducerRecord::new(value).with_key(key.to_be_bytes().to_vec()).with_timestamp_ms(timestamp_ms);
        in_flight.push_back(producer.send(EVENTS_TOPIC, record).await?);
        while in_flight.len() > 100_000 {
            in_flight.pop_front().expect("non-empty").await.context("producing an event")?;
        }
    }
    producer.flush().await?;
    for f in in_flight {
        f.await.context("producing an event")?;
    }
    let elapsed = started.elapsed();
    producer.close().await?;
    Ok((elapsed, bytes))
}

/// The event with its time set to `ms` (latency runs stamp events when they are sent).
fn with_time(event: Event, ms: i64) -> Event {
    match event {
        Event::Person(p) => Event::Person(Person { date_time: ms, ..p }),
        Event::Auction(a) => {
            let length = a.expires - a.date_time;
            Event::Auction(Auction { date_time: ms, expires: ms + length, ..a })
        }
        Event::Bid(b) => Event::Bid(Bid { date_time: ms, ..b }),
    }
}

/// The producer's line of a latency run (nothing for a throughput run).
fn print_latency_run(produced: Option<(Duration, u64)>, events: u64, rate: Option<u64>) {
    if let Some((produce_time, _)) = produced {
        println!(
            "latency run: {events} events produced at {:.0} events/s (target {}) with event time = send time",
            events as f64 / produce_time.as_secs_f64(),
            rate.unwrap_or(0)
        );
    }
}

/// Ends a run's producer and latency consumer (either absent in a throughput run): the
/// producer's time and bytes, and the latency histogram once results still on their way to the
/// output topic have had a second to arrive.
async fn finish_live_run(
    producing: Option<tokio::task::JoinHandle<anyhow::Result<(Duration, u64)>>>,
    latency: Option<tokio::task::JoinHandle<anyhow::Result<hdrhistogram::Histogram<u64>>>>,
    stop_latency: &std::sync::atomic::AtomicBool,
) -> anyhow::Result<(Option<(Duration, u64)>, Option<hdrhistogram::Histogram<u64>>)> {
    let produced = match producing {
        Some(p) => Some(p.await??),
        None => None,
    };
    let histogram = match latency {
        Some(task) => {
            tokio::time::sleep(Duration::from_secs(1)).await;
            stop_latency.store(true, Ordering::Release);
            Some(task.await??)
        }
        None => None,
    };
    Ok((produced, histogram))
}

/// Reads `topic` from the beginning until `stop`, recording `receive time - record timestamp`
/// in milliseconds.
async fn measure_latency(
    bootstrap: String,
    topic: String,
    stop: Arc<std::sync::atomic::AtomicBool>,
) -> anyhow::Result<hdrhistogram::Histogram<u64>> {
    let consumer = Consumer::new(ConsumerConfig {
        bootstrap_servers: vec![bootstrap],
        auto_offset_reset: AutoOffsetReset::Earliest,
        fetch_max_wait_ms: 50,
        max_poll_records: 10_000,
        ..ConsumerConfig::default()
    })
    .await?;
    let metadata = consumer.cluster().topic(&topic).await?;
    consumer
        .assign(metadata.partitions.iter().map(|p| TopicPartition::new(topic.as_str(), p.partition)).collect())
        .await?;
    let mut histogram = hdrhistogram::Histogram::<u64>::new(3)?;
    while !stop.load(Ordering::Acquire) {
        let records = consumer.poll(Duration::from_millis(100)).await?;
        let now = now_ms();
        for r in records {
            histogram.record((now - r.timestamp_ms).max(0) as u64)?;
        }
    }
    let _ = consumer.close().await;
    Ok(histogram)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse()?;
    let query = args.query;
    let output = format!("nexmark-{}-out", query.name());
    let admin =
        Admin::new(AdminConfig { bootstrap_servers: vec![args.bootstrap_server.clone()], ..AdminConfig::default() })
            .await?;

    // Phase 1 (throughput runs): the input, produced as fast as the producer goes, with event
    // time ending a second before now so that a later latency run's events are not late.
    let mut events = args.events;
    if args.rate.is_none() {
        if args.skip_generate {
            events = end_offsets_sum(&admin, EVENTS_TOPIC).await.context("--skip-generate needs nexmark-events")?;
            println!("reusing {events} events of {EVENTS_TOPIC}");
        } else {
            recreate_topic(&admin, EVENTS_TOPIC, args.partitions).await?;
            let span_ms = (u128::from(events) * 1000 / u128::from(args.event_rate)) as i64;
            let generator = Generator { base_time_ms: now_ms() - span_ms - 1000, events_per_second: args.event_rate };
            let (elapsed, bytes) = produce(&args.bootstrap_server, generator, events, None).await?;
            println!(
                "generated {events} events ({:.1} MiB, {:.0} B/event, {:.1} s of event time) in {:.2} s: {:.0} events/s, {:.1} MiB/s",
                bytes as f64 / 1048576.0,
                bytes as f64 / events as f64,
                span_ms as f64 / 1000.0,
                elapsed.as_secs_f64(),
                events as f64 / elapsed.as_secs_f64(),
                bytes as f64 / 1048576.0 / elapsed.as_secs_f64()
            );
        }
    } else {
        recreate_topic(&admin, EVENTS_TOPIC, args.partitions).await?;
    }
    recreate_topic(&admin, &output, args.partitions).await?;

    // Phase 2: the query. Peak RSS from here on only.
    let rss_reset = std::fs::write("/proc/self/clear_refs", "5").is_ok();
    if args.sql {
        return run_sql(&args, &admin, events, &output, rss_reset).await;
    }
    let (topology, progress) = topology(query, &output, args.grace)?;
    let state_dir = std::env::temp_dir().join(format!("nexmark-state-{}", std::process::id()));
    let app_id = format!("nexmark-{}-{}-{}", query.name(), std::process::id(), now_ms());
    let mut config = StreamsConfig::new(&app_id, &args.bootstrap_server)
        .set("commit.interval.ms", "1000")?
        .set("num.stream.threads", &args.threads.to_string())?
        .set("state.dir", state_dir.to_str().context("temp dir is not UTF-8")?)?;
    for (k, v) in &args.streams_settings {
        config = config.set(k, v)?;
    }
    let mut streams = KafkaStreams::new(topology, config)?;

    let stop_latency = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let latency = args
        .rate
        .map(|_| tokio::spawn(measure_latency(args.bootstrap_server.clone(), output.clone(), stop_latency.clone())));

    let started = Instant::now();
    streams.start()?;
    let mut producing = None;
    let mut first_record: Option<Instant> = None;
    if let Some(rate) = args.rate {
        // Let the group form before the clock that matters starts.
        let wait = Instant::now() + Duration::from_secs(3);
        while Instant::now() < wait {
            check_running(&streams)?;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let generator = Generator { base_time_ms: now_ms(), events_per_second: rate };
        let bootstrap = args.bootstrap_server.clone();
        producing = Some(tokio::spawn(async move { produce(&bootstrap, generator, events, Some(rate)).await }));
    }
    let measured_from = if args.rate.is_some() { Instant::now() } else { started };
    let mut last = Vec::new();
    let mut last_report = Instant::now();
    let done_at = loop {
        check_running(&streams)?;
        let snapshot = progress.snapshot();
        if first_record.is_none() && snapshot[0] > 0 {
            first_record = Some(Instant::now());
        }
        if Progress::complete(&snapshot, events) && snapshot == last {
            break Instant::now();
        }
        if started.elapsed() > args.timeout {
            bail!(
                "not done within {:?}: counters (source, then before/after each repartition) {snapshot:?}",
                args.timeout
            );
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            eprintln!(
                "  {:.0} s: counters (source, then before/after each repartition) {snapshot:?}",
                started.elapsed().as_secs_f64()
            );
            last_report = Instant::now();
        }
        last = snapshot;
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    let elapsed = done_at - measured_from;
    let since_first = first_record.map(|f| done_at - f);
    let (produced, histogram) = finish_live_run(producing, latency, &stop_latency).await?;
    let peak_kib = peak_rss_kib("self").unwrap_or(0);
    let metrics = streams.metrics();
    let dropped_late = metrics.dropped_late.load(Ordering::Relaxed);
    let processed = metrics.records_processed.load(Ordering::Relaxed);
    let commits = metrics.commits.load(Ordering::Relaxed);
    streams.close()?;
    let _ = std::fs::remove_dir_all(&state_dir);
    let outputs = end_offsets_sum(&admin, &output).await?;

    let events_per_s = events as f64 / elapsed.as_secs_f64();
    println!();
    print_latency_run(produced, events, args.rate);
    println!(
        "{query:?}: {events} events processed in {:.2} s{}; {processed} records through the topology, {outputs} output records, {dropped_late} dropped late, {commits} commits",
        elapsed.as_secs_f64(),
        since_first.map(|d| format!(" ({:.2} s from the first record)", d.as_secs_f64())).unwrap_or_default()
    );
    let (p50, p99, max) = match &histogram {
        Some(h) if !h.is_empty() => (
            format!("{} ms", h.value_at_quantile(0.5)),
            format!("{} ms", h.value_at_quantile(0.99)),
            format!("{} ms", h.max()),
        ),
        Some(_) => ("no output".into(), "no output".into(), "-".into()),
        None => ("n/a (backlog)".into(), "n/a (backlog)".into(), "-".into()),
    };
    let broker_peak = args.broker_pid.and_then(|pid| peak_rss_kib(&pid.to_string()));
    let mut table = BTreeMap::new();
    table.insert("1 query", query.name().to_string());
    table.insert("2 events", events.to_string());
    table.insert("3 events/s", format!("{events_per_s:.0}"));
    table.insert("4 p50", p50);
    table.insert("5 p99", p99);
    table.insert("6 max", max);
    table.insert(
        "7 peak RSS MiB",
        format!("{:.0}{}", peak_kib as f64 / 1024.0, if rss_reset { "" } else { " (incl. generation)" }),
    );
    table.insert(
        "8 broker peak RSS MiB",
        broker_peak.map(|k| format!("{:.0}", k as f64 / 1024.0)).unwrap_or_else(|| "-".into()),
    );
    println!("| {} |", table.keys().map(|k| &k[2..]).collect::<Vec<_>>().join(" | "));
    println!("|{}", table.keys().map(|_| "---|").collect::<String>());
    println!("| {} |", table.values().cloned().collect::<Vec<_>>().join(" | "));
    Ok(())
}

/// Phase 2 with the query's SQL form: its continuous statements run in this process, timed
/// as the DSL's run is (throughput from the start, latency from a consumer of the output).
#[cfg(feature = "sql")]
async fn run_sql(args: &Args, admin: &Admin, events: u64, output: &str, rss_reset: bool) -> anyhow::Result<()> {
    let query = args.query;
    let stages = nexmark_sql::stages(query, output, args.grace)?;
    if args.rate.is_some() && stages.iter().any(|s| s.after_previous) {
        bail!("{query:?}'s SQL form runs its stages one after the other: measure its throughput (no --rate)");
    }
    nexmark_sql::prepare_topics(admin, &stages, args.partitions).await?;
    for s in &stages {
        println!("{}:", s.name);
        for statement in &s.statements {
            println!("  {statement};");
        }
    }
    let stop_latency = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let latency = args.rate.map(|_| {
        tokio::spawn(measure_latency(args.bootstrap_server.clone(), output.to_string(), stop_latency.clone()))
    });
    let input_done = Arc::new(std::sync::atomic::AtomicBool::new(args.rate.is_none()));
    let mut producing = None;
    let on_started = || {
        if let Some(rate) = args.rate {
            let generator = Generator { base_time_ms: now_ms(), events_per_second: rate };
            let bootstrap = args.bootstrap_server.clone();
            let done = input_done.clone();
            producing = Some(tokio::spawn(async move {
                let produced = produce(&bootstrap, generator, events, Some(rate)).await;
                done.store(true, Ordering::Release);
                produced
            }));
        }
    };
    let warmup = if args.rate.is_some() { Duration::from_secs(3) } else { Duration::ZERO };
    let run = nexmark_sql::run(
        admin,
        &args.bootstrap_server,
        &stages,
        &args.streams_settings,
        args.timeout,
        warmup,
        on_started,
        || input_done.load(Ordering::Acquire),
    )
    .await?;
    let (produced, histogram) = finish_live_run(producing, latency, &stop_latency).await?;
    let peak_kib = peak_rss_kib("self").unwrap_or(0);
    let outputs = end_offsets_sum(admin, output).await?;
    for (app_id, description) in &run.descriptions {
        eprintln!("{app_id}:\n{description}");
    }
    println!();
    print_latency_run(produced, events, args.rate);
    println!(
        "{query:?} (SQL, {} continuous quer{}): {events} events processed in {:.2} s{}; {} records through the queries, {outputs} output records, {} dropped late, {} commits",
        stages.len(),
        if stages.len() == 1 { "y" } else { "ies" },
        run.elapsed_from_start.as_secs_f64(),
        run.elapsed_from_first.map(|d| format!(" ({:.2} s from the first record)", d.as_secs_f64())).unwrap_or_default(),
        run.records_processed,
        run.dropped_late,
        run.commits,
    );
    let quantile = |q: f64| match &histogram {
        Some(h) if !h.is_empty() => format!("{} ms", h.value_at_quantile(q)),
        Some(_) => "no output".into(),
        None => "n/a (backlog)".into(),
    };
    println!("| query | events | events/s | p50 | p99 | peak RSS MiB |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} (SQL) | {events} | {:.0} | {} | {} | {:.0}{} |",
        query.name(),
        events as f64 / run.elapsed_from_start.as_secs_f64(),
        quantile(0.5),
        quantile(0.99),
        peak_kib as f64 / 1024.0,
        if rss_reset { "" } else { " (incl. generation)" }
    );
    Ok(())
}

#[cfg(not(feature = "sql"))]
async fn run_sql(_: &Args, _: &Admin, _: u64, _: &str, _: bool) -> anyhow::Result<()> {
    bail!("--sql needs the example built with its `sql` feature (the default)")
}

fn check_running(streams: &KafkaStreams) -> anyhow::Result<()> {
    match streams.state() {
        StreamsState::Error(e) => bail!("the streams application stopped: {e}"),
        StreamsState::NotRunning => bail!("the streams application is not running"),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mix_is_one_person_three_auctions_forty_six_bids() {
        let g = Generator { base_time_ms: 0, events_per_second: 10_000 };
        let mut counts = [0; 3];
        for id in 0..5_000 {
            match g.event(id).1 {
                Event::Person(_) => counts[0] += 1,
                Event::Auction(_) => counts[1] += 1,
                Event::Bid(_) => counts[2] += 1,
            }
        }
        assert_eq!(counts, [100, 300, 4600]);
    }

    #[test]
    fn bids_refer_to_auctions_and_people_that_exist_or_are_about_to() {
        let g = Generator { base_time_ms: 0, events_per_second: 10_000 };
        let (mut max_auction, mut max_person) = (FIRST_AUCTION_ID - 1, FIRST_PERSON_ID - 1);
        for id in 0..20_000 {
            match g.event(id) {
                (k, Event::Person(p)) => {
                    assert_eq!(k, p.id);
                    assert_eq!(p.id, max_person + 1, "person ids are dense");
                    max_person = p.id;
                }
                (k, Event::Auction(a)) => {
                    assert_eq!(k, a.id);
                    assert_eq!(a.id, max_auction + 1, "auction ids are dense");
                    assert!(a.seller <= max_person + PERSON_ID_LEAD as i64);
                    assert!((10..15).contains(&a.category));
                    max_auction = a.id;
                }
                (k, Event::Bid(b)) => {
                    assert_eq!(k, b.auction);
                    assert!(b.auction <= max_auction + AUCTION_ID_LEAD as i64 + 1);
                    assert!(b.auction >= max_auction - NUM_IN_FLIGHT_AUCTIONS as i64 - 1);
                    assert!(b.bidder <= max_person + PERSON_ID_LEAD as i64 + 1);
                }
            }
        }
    }

    #[test]
    fn event_time_advances_at_the_event_rate_and_sizes_are_near_the_reference() {
        let g = Generator { base_time_ms: 1_000, events_per_second: 10_000 };
        assert_eq!(g.timestamp_ms(0), 1_000);
        assert_eq!(g.timestamp_ms(10_000), 2_000);
        let mut bytes = [0usize; 3];
        let mut n = [0usize; 3];
        for id in 0..5_000 {
            let (_, e) = g.event(id);
            let i = match &e {
                Event::Person(_) => 0,
                Event::Auction(_) => 1,
                Event::Bid(_) => 2,
            };
            bytes[i] += serde_json::to_vec(&e).unwrap().len();
            n[i] += 1;
        }
        let avg: Vec<usize> = bytes.iter().zip(n).map(|(b, n)| b / n).collect();
        // JSON adds field names to the reference's field bytes.
        assert!((200..400).contains(&avg[0]), "person {avg:?}");
        assert!((500..700).contains(&avg[1]), "auction {avg:?}");
        assert!((100..250).contains(&avg[2]), "bid {avg:?}");
    }

    #[test]
    fn events_round_trip_as_tagged_json() {
        let g = Generator { base_time_ms: 0, events_per_second: 10_000 };
        for id in 0..100 {
            let (_, e) = g.event(id);
            let json = serde_json::to_string(&e).unwrap();
            assert!(
                json.starts_with("{\"person\":") || json.starts_with("{\"auction\":") || json.starts_with("{\"bid\":")
            );
            assert_eq!(serde_json::from_str::<Event>(&json).unwrap(), e);
        }
    }

    #[test]
    fn every_query_builds() {
        for q in [Query::Q0, Query::Q0Raw, Query::Q1, Query::Q2, Query::Q3, Query::Q4, Query::Q5, Query::Q7, Query::Q8]
        {
            topology(q, "out", Duration::from_secs(2)).unwrap_or_else(|e| panic!("{q:?}: {e}"));
        }
    }
}
