//! The PostgreSQL change-data-capture source (`PostgresCdcSource`, alias Debezium's
//! `io.debezium.connector.postgresql.PostgresConnector`): logical decoding with the built-in
//! `pgoutput` plugin, an initial snapshot consistent with the slot, and change events in
//! Debezium's envelope on topics `<topic.prefix>.<schema>.<table>`.
//!
//! **Delivery.** One task (a slot has one reader). Events are handed out in commit order, a
//! batch at a time (a large transaction spans batches); a batch's source offset (partition
//! `{"server": <prefix>}`) is set only where a transaction ends. The slot's confirmed LSN is advanced in
//! [`SourceTask::commit`], which the runtime calls after it stored the offsets, i.e. after
//! every event up to them was acknowledged by the broker: the slot never passes an
//! unacknowledged change, so a crash repeats at most the unacknowledged range and loses
//! nothing. A restart resumes from the slot and skips transactions at or before the stored
//! offset. A crash or a lost connection during the snapshot takes the snapshot again (its
//! rows may repeat).
//!
//! Layout: [`pgoutput`] (the message decoder), [`envelope`] (types → JSON, Debezium's
//! records and schemas), [`slot`] (offsets, the snapshot filter, the SQL and why the SQL-level
//! slot functions); this file holds the config, the connector and the task (the I/O).

pub mod envelope;
pub mod pgoutput;
pub mod slot;

use std::collections::{HashMap, VecDeque};
use std::sync::Arc;
use std::time::{Duration, Instant};

use postgres::types::{PgLsn, ToSql};
use postgres::{Client, NoTls, SimpleQueryMessage};
use regex::Regex;
use serde_json::{json, Value as Json};
use tracing::{info, warn};

use crate::config::{ConfigDef, ConfigType, Importance, Props, Validator};
use crate::connector::{Connector, ConnectorType, FailedRecord, SourceBatch, SourceTask, SourceTaskContext};
use crate::error::{ConnectError, Result};
use crate::record::{ConnectRecord, Value};

use envelope::{PgType, Table};
use pgoutput::{Datum, Message, Relation};
use slot::{Offset, SnapshotFilter, StartPlan};

const CLASS: &str = "PostgresCdcSource";

/// New changes asked for per peek (a peek returns whole transactions, so one large
/// transaction comes whole), as a multiple of `max.batch.size`. They are held undecoded.
const PEEK_BATCHES: usize = 8;

/// A table's key columns in index order: its primary key, else its replica identity index.
const KEY_SQL: &str = "SELECT a.attname::text FROM pg_index i JOIN pg_attribute a ON a.attrelid = i.indrelid \
    AND a.attnum = ANY(i.indkey) WHERE i.indexrelid = (SELECT indexrelid FROM pg_index \
    WHERE indrelid = $1 AND (indisprimary OR indisreplident) ORDER BY indisprimary DESC LIMIT 1) \
    ORDER BY array_position(i.indkey::int2[], a.attnum)";

/// A table's columns as pgoutput sends them (generated columns are not replicated in 15).
const COLUMNS_SQL: &str = "SELECT coalesce(string_agg(quote_ident(attname), ', ' ORDER BY attnum), '') \
    FROM pg_attribute WHERE attrelid = $1 AND attnum > 0 AND NOT attisdropped AND attgenerated = ''";

/// How often the slot lag is measured.
const LAG_CHECK_INTERVAL: Duration = Duration::from_secs(10);

/// The longest wait between reconnection attempts.
const RECONNECT_BACKOFF_MAX: Duration = Duration::from_secs(10);

/// The CDC connector plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct PostgresCdcSourceConnector;

fn check_regexes(v: &str) -> std::result::Result<(), String> {
    for p in v.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        Regex::new(p).map_err(|e| format!("{p} is not a regular expression: {e}"))?;
    }
    Ok(())
}

fn config_def() -> ConfigDef {
    ConfigDef::new()
        .define("connection.url", ConfigType::String, Some(""), Importance::High,
            "postgresql://user:password@host:port/dbname (as the JDBC connectors take it); when set, it replaces the database.* keys it names.")
        .in_group("Connection")
        .define("database.hostname", ConfigType::String, Some("localhost"), Importance::High, "PostgreSQL server host.")
        .in_group("Connection")
        .define("database.port", ConfigType::Int, Some("5432"), Importance::High, "PostgreSQL server port.")
        .with_validator(Validator::Range { min: 1.0, max: 65535.0 })
        .in_group("Connection")
        .define("database.user", ConfigType::String, Some("postgres"), Importance::High,
            "User with the REPLICATION attribute (and, for publication.autocreate.mode=all_tables, superuser or table owner).")
        .in_group("Connection")
        .define("database.password", ConfigType::Password, Some(""), Importance::High, "Password of database.user.")
        .in_group("Connection")
        .define("database.dbname", ConfigType::String, Some("postgres"), Importance::High, "The database to capture.")
        .in_group("Connection")
        .define("topic.prefix", ConfigType::String, None, Importance::High,
            "Logical server name: topics are <topic.prefix>.<schema>.<table>, and source.name and the source partition carry it.")
        .with_validator(Validator::NonEmpty)
        .define("slot.name", ConfigType::String, Some("debezium"), Importance::Medium,
            "The logical replication slot (pgoutput); created when missing.")
        .with_validator(Validator::NonEmpty)
        .define("publication.name", ConfigType::String, Some("dbz_publication"), Importance::Medium,
            "The publication pgoutput streams.")
        .with_validator(Validator::NonEmpty)
        .define("publication.autocreate.mode", ConfigType::String, Some("all_tables"), Importance::Medium,
            "all_tables: create the publication FOR ALL TABLES when missing; filtered: create it (or set its tables) for the tables table.include.list/table.exclude.list select; disabled: it must exist.")
        .with_validator(Validator::OneOf(&["all_tables", "filtered", "disabled"]))
        .define("table.include.list", ConfigType::List, Some(""), Importance::Medium,
            "Regular expressions matched against the whole <schema>.<table>; only matching tables are captured (empty: all).")
        .with_validator(Validator::Custom(check_regexes))
        .define("table.exclude.list", ConfigType::List, Some(""), Importance::Medium,
            "Regular expressions of <schema>.<table> not to capture.")
        .with_validator(Validator::Custom(check_regexes))
        .define("snapshot.mode", ConfigType::String, Some("initial"), Importance::Medium,
            "initial: snapshot the captured tables (op r) when no offset is stored, then stream; never: stream only; initial_only: snapshot, then stop capturing.")
        .with_validator(Validator::OneOf(&["initial", "never", "initial_only"]))
        .define("tombstones.on.delete", ConfigType::Boolean, Some("true"), Importance::Low,
            "Follow each delete event with a tombstone (null value) for the same key.")
        .define("max.batch.size", ConfigType::Int, Some("2048"), Importance::Low, "Events per batch at most.")
        .with_validator(Validator::Range { min: 1.0, max: 1_000_000.0 })
        .define("max.transaction.changes", ConfigType::Long, Some("4000000"), Importance::Low,
            "The most changes one transaction may have: its changes are held in memory (undecoded) until its events are handed out; a larger one fails the task with a message naming this key.")
        .with_validator(Validator::Range { min: 1.0, max: 9.0e18 })
        .define("poll.interval.ms", ConfigType::Long, Some("500"), Importance::Low,
            "How long to wait before asking the slot again after it had no new changes.")
        .with_validator(Validator::Range { min: 1.0, max: 3_600_000.0 })
        .define("slot.lag.warn.bytes", ConfigType::Long, Some("1073741824"), Importance::Low,
            "Log a warning when the slot holds back more WAL than this (pg_current_wal_lsn() - confirmed_flush_lsn); the spate_connect_cdc_slot_lag_bytes gauge reports it always.")
        .with_validator(Validator::Range { min: 0.0, max: 9.0e18 })
}

/// The validated config.
#[derive(Debug, Clone)]
struct Settings {
    pg: postgres::Config,
    db: String,
    prefix: String,
    slot: String,
    publication: String,
    autocreate: String,
    include: Vec<Regex>,
    exclude: Vec<Regex>,
    snapshot_mode: String,
    tombstones: bool,
    max_batch: usize,
    max_txn_changes: u64,
    poll_interval: Duration,
    lag_warn_bytes: i64,
}

impl Settings {
    fn parse(props: &Props) -> Result<Settings> {
        let c = config_def().parse(props)?;
        let url = c.get_str("connection.url").unwrap_or("").trim();
        let mut pg: postgres::Config = if url.is_empty() {
            let mut pg = postgres::Config::new();
            pg.host(c.require_str("database.hostname")?)
                .port(c.get_i64("database.port")?.unwrap_or(5432) as u16)
                .user(c.require_str("database.user")?)
                .dbname(c.require_str("database.dbname")?);
            let pw = c.get_str("database.password").unwrap_or("");
            if !pw.is_empty() {
                pg.password(pw);
            }
            pg
        } else {
            let url = url.strip_prefix("jdbc:").unwrap_or(url);
            url.parse().map_err(|e| ConnectError::config("connection.url", format!("{url}: {e}")))?
        };
        pg.application_name("spate-cdc").connect_timeout(Duration::from_secs(10));
        let db = pg.get_dbname().map(str::to_owned).or_else(|| pg.get_user().map(str::to_owned)).unwrap_or_default();
        let regexes = |key: &str| -> Result<Vec<Regex>> {
            c.get_list(key)
                .iter()
                .map(|p| Regex::new(&format!("^(?:{p})$")).map_err(|e| ConnectError::config(key, e.to_string())))
                .collect()
        };
        Ok(Settings {
            pg,
            db,
            prefix: c.require_str("topic.prefix")?.trim().to_owned(),
            slot: c.require_str("slot.name")?.trim().to_owned(),
            publication: c.require_str("publication.name")?.trim().to_owned(),
            autocreate: c.require_str("publication.autocreate.mode")?.trim().to_owned(),
            include: regexes("table.include.list")?,
            exclude: regexes("table.exclude.list")?,
            snapshot_mode: c.require_str("snapshot.mode")?.trim().to_owned(),
            tombstones: c.get_bool("tombstones.on.delete")?.unwrap_or(true),
            max_batch: c.get_i64("max.batch.size")?.unwrap_or(2048) as usize,
            max_txn_changes: c.get_i64("max.transaction.changes")?.unwrap_or(4_000_000) as u64,
            poll_interval: Duration::from_millis(c.get_i64("poll.interval.ms")?.unwrap_or(500) as u64),
            lag_warn_bytes: c.get_i64("slot.lag.warn.bytes")?.unwrap_or(1 << 30),
        })
    }

    fn captured(&self, schema: &str, table: &str) -> bool {
        let name = format!("{schema}.{table}");
        (self.include.is_empty() || self.include.iter().any(|r| r.is_match(&name)))
            && !self.exclude.iter().any(|r| r.is_match(&name))
    }

    fn partition(&self) -> Json {
        json!({"server": self.prefix})
    }
}

impl Connector for PostgresCdcSourceConnector {
    fn class(&self) -> &'static str {
        CLASS
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["io.debezium.connector.postgresql.PostgresConnector"]
    }

    fn kind(&self) -> ConnectorType {
        ConnectorType::Source
    }

    fn config_def(&self) -> ConfigDef {
        config_def()
    }

    fn validate(&self, config: &Props) -> Vec<(String, String)> {
        match Settings::parse(config) {
            Ok(_) => Vec::new(),
            Err(ConnectError::Config { key, reason }) => vec![(key, reason)],
            Err(e) => vec![("connection.url".to_owned(), e.to_string())],
        }
    }

    /// One task: a replication slot has one reader.
    fn task_configs(&self, config: &Props, _max_tasks: usize) -> Result<Vec<Props>> {
        Ok(vec![config.clone()])
    }

    fn source_task(&self) -> Result<Box<dyn SourceTask>> {
        Ok(Box::new(PostgresCdcSourceTask::default()))
    }
}

fn quote_ident(s: &str) -> String {
    format!("\"{}\"", s.replace('"', "\"\""))
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}

/// What the queue between decoding and `poll` holds, in order.
#[derive(Debug)]
enum Item {
    Record(Box<ConnectRecord>),
    Failed(Box<FailedRecord>),
    /// The offset reached once everything before it is delivered (a transaction's end).
    Offset(Json),
}

/// The transaction being decoded.
#[derive(Debug)]
struct Txn {
    xid: u32,
    ts_us: i64,
    /// Already in the snapshot: decoded (relations still matter) but its events are not.
    skip: bool,
}

/// Turns decoded pgoutput messages into Debezium events, handed out as they are built (a large
/// transaction is never held whole as events) with the offset only at its Commit. Sans IO
/// except for the table lookup it is given (a new relation's key).
#[derive(Default)]
struct Assembler {
    /// Relation OID → the captured table (None: not captured).
    tables: HashMap<u32, Option<Arc<Table>>>,
    txn: Option<Txn>,
    last_commit_lsn: Option<u64>,
}

/// What the assembler needs to know about the task.
struct Ctx<'a> {
    server: &'a str,
    db: &'a str,
    tombstones: bool,
    /// Already emitted up to this commit end (skip transactions at or before it).
    emitted_lsn: u64,
    filter: Option<&'a SnapshotFilter>,
}

type Lookup<'a> = dyn FnMut(&Relation) -> Result<Option<Arc<Table>>> + 'a;

impl Assembler {
    /// Queues the events of `msg` on `out`; at a Commit not emitted before, returns the offset
    /// it reaches (the caller queues it after the events). `lsn`: the message's position as
    /// the peek reports it (for a change, its own WAL record's LSN: `source.lsn`).
    fn on_message(
        &mut self,
        msg: Message<'_>,
        lsn: u64,
        ctx: &Ctx<'_>,
        lookup: &mut Lookup<'_>,
        out: &mut VecDeque<Item>,
    ) -> Result<Option<Offset>> {
        match msg {
            Message::Begin { final_lsn, commit_ts_us, xid } => {
                let skip = ctx.filter.is_some_and(|f| f.contains(xid, final_lsn));
                self.txn = Some(Txn { xid, ts_us: commit_ts_us, skip });
            }
            Message::Commit { commit_lsn, end_lsn, commit_ts_us, .. } => {
                let Some(txn) = self.txn.take() else {
                    return Err(ConnectError::external(CLASS, "decoding the slot", "a commit without a begin"));
                };
                self.last_commit_lsn = Some(commit_lsn);
                // PEEK_SQL drops transactions emitted before on the server (their commit end is
                // only known here; `final_lsn` at Begin is not enough: an idle-advance position
                // may lie inside a commit record). Should one come anyway, no second offset.
                if end_lsn <= ctx.emitted_lsn {
                    return Ok(None);
                }
                let offset = Offset {
                    lsn: end_lsn,
                    lsn_commit: Some(commit_lsn),
                    tx_id: Some(txn.xid),
                    ts_usec: Some(commit_ts_us + pgoutput::PG_EPOCH_UNIX_MICROS),
                    snapshot: false,
                    last_snapshot_record: false,
                    // Keep the filter while a later transaction may still be one the snapshot saw.
                    filter: ctx.filter.filter(|f| end_lsn < f.until_lsn).cloned(),
                };
                return Ok(Some(offset));
            }
            Message::Origin { .. } | Message::Type { .. } => {}
            Message::Relation(rel) => {
                let table = lookup(&rel)?;
                self.tables.insert(rel.oid, table);
            }
            Message::Insert { relation, new } => {
                self.change(relation, lsn, ctx, out, |t, src, now, out| {
                    let after = t.row(&new.0)?;
                    out.push(envelope::event(t, "c", t.key_of(&after), None, Some(after), src, now));
                    Ok(())
                })?;
            }
            Message::Update { relation, old, new } => {
                self.change(relation, lsn, ctx, out, |t, src, now, out| {
                    let after = t.row(&new.0)?;
                    let before = old.as_ref().map(|(_, o)| t.row(&o.0)).transpose()?;
                    let new_key = t.key_of(&after);
                    let old_key = before.as_ref().and_then(|b| t.key_of(b));
                    match old_key {
                        // The primary key changed: Debezium emits a delete (and tombstone) for
                        // the old key and a create for the new one.
                        Some(k) if Some(&k) != new_key.as_ref() => {
                            out.push(envelope::event(t, "d", Some(k.clone()), before, None, src.clone(), now));
                            if ctx.tombstones {
                                out.push(envelope::tombstone(t, Some(k)));
                            }
                            out.push(envelope::event(t, "c", new_key, None, Some(after), src, now));
                        }
                        _ => out.push(envelope::event(t, "u", new_key, before, Some(after), src, now)),
                    }
                    Ok(())
                })?;
            }
            // With REPLICA IDENTITY DEFAULT the old tuple holds the key (other columns
            // null); with FULL, the whole row: `before` shows what the server sent.
            Message::Delete { relation, old: (_, old) } => {
                self.change(relation, lsn, ctx, out, |t, src, now, out| {
                    let before = t.row(&old.0)?;
                    let key = t.key_of(&before);
                    out.push(envelope::event(t, "d", key.clone(), Some(before), None, src, now));
                    if ctx.tombstones {
                        out.push(envelope::tombstone(t, key));
                    }
                    Ok(())
                })?;
            }
            Message::Truncate { relations, .. } => {
                for relation in relations {
                    self.change(relation, lsn, ctx, out, |t, src, now, out| {
                        out.push(envelope::event(t, "t", None, None, None, src, now));
                        Ok(())
                    })?;
                }
            }
        }
        Ok(None)
    }

    /// Builds the events of one change to `relation` into the open transaction; a row that
    /// does not convert becomes a failed record (dead-letter queue), not an error.
    fn change(
        &mut self,
        relation: u32,
        lsn: u64,
        ctx: &Ctx<'_>,
        out: &mut VecDeque<Item>,
        build: impl FnOnce(&Table, Json, i64, &mut Vec<ConnectRecord>) -> std::result::Result<(), String>,
    ) -> Result<()> {
        let Some(txn) = self.txn.as_mut() else {
            return Err(ConnectError::external(CLASS, "decoding the slot", "a change outside a transaction"));
        };
        if txn.skip {
            return Ok(());
        }
        let table = match self.tables.get(&relation) {
            Some(Some(t)) => t.clone(),
            Some(None) => return Ok(()),
            None => {
                return Err(ConnectError::external(
                    CLASS,
                    "decoding the slot",
                    format!("a change to relation {relation} before its Relation message"),
                ))
            }
        };
        let origin = envelope::Origin {
            server: ctx.server,
            db: ctx.db,
            ts_ms: (txn.ts_us + pgoutput::PG_EPOCH_UNIX_MICROS) / 1000,
            snapshot: "false",
            tx_id: Some(txn.xid as i64),
            last_commit_lsn: self.last_commit_lsn,
        };
        let src = envelope::source(&origin, &table, Some(lsn));
        let mut records = Vec::with_capacity(2);
        match build(&table, src, now_ms(), &mut records) {
            Ok(()) => out.extend(records.into_iter().map(|r| Item::Record(Box::new(r)))),
            Err(reason) => {
                let mut record = ConnectRecord::new(
                    table.topic.clone(),
                    Some(Value::Json(
                        json!({"lsn": lsn, "txId": txn.xid, "schema": table.schema, "table": table.name}),
                    )),
                );
                record.timestamp_ms = Some(origin.ts_ms);
                out.push_back(Item::Failed(Box::new(FailedRecord {
                    record,
                    error: Arc::new(ConnectError::external(
                        CLASS,
                        format!("decoding a row of {}.{} at LSN {}", table.schema, table.name, PgLsn::from(lsn)),
                        reason,
                    )),
                    stage: "TASK_POLL",
                    class_name: CLASS.to_owned(),
                })));
            }
        }
        Ok(())
    }
}

/// The snapshot in progress: one `REPEATABLE READ` transaction, one cursor at a time.
struct Snapshot {
    tables: VecDeque<(String, String)>,
    current: Option<Arc<Table>>,
    filter: SnapshotFilter,
    /// The slot's confirmed LSN when the snapshot started (its offsets' `lsn`).
    slot_lsn: u64,
    ts_ms: i64,
    /// The last row fetched, held back until we know whether it is the snapshot's last.
    held: Option<ConnectRecord>,
}

enum Phase {
    Snapshot(Box<Snapshot>),
    Stream,
    /// `snapshot.mode=initial_only` after its snapshot.
    Idle,
}

/// The CDC task.
pub struct PostgresCdcSourceTask {
    s: Option<Settings>,
    connector: String,
    client: Option<Client>,
    phase: Phase,
    asm: Assembler,
    pending: VecDeque<Item>,
    /// Commit end of the last transaction queued (or the resume point).
    emitted_lsn: u64,
    filter: Option<SnapshotFilter>,
    /// The slot's confirmed LSN as far as we know.
    confirmed_lsn: u64,
    /// Peek rows of queued transactions the slot has not confirmed: (end LSN, rows).
    unconfirmed: VecDeque<(u64, u64)>,
    unconfirmed_rows: u64,
    /// Peeked rows not decoded yet, and the rows of the transaction being decoded.
    raw: VecDeque<postgres::Row>,
    txn_rows: u64,
    /// After an empty peek: not before this instant again.
    next_peek: Option<Instant>,
    next_lag_check: Instant,
    /// When an idle slot may next be moved to the end of the WAL.
    next_idle_advance: Instant,
    reconnect_at: Option<Instant>,
    backoff: Duration,
}

impl Default for PostgresCdcSourceTask {
    fn default() -> Self {
        PostgresCdcSourceTask {
            s: None,
            connector: String::new(),
            client: None,
            phase: Phase::Stream,
            asm: Assembler::default(),
            pending: VecDeque::new(),
            emitted_lsn: 0,
            filter: None,
            confirmed_lsn: 0,
            unconfirmed: VecDeque::new(),
            unconfirmed_rows: 0,
            raw: VecDeque::new(),
            txn_rows: 0,
            next_peek: None,
            next_lag_check: Instant::now(),
            next_idle_advance: Instant::now(),
            reconnect_at: None,
            backoff: Duration::from_millis(100),
        }
    }
}

fn pg_err(what: impl Into<String>, e: postgres::Error) -> ConnectError {
    let reason = match e.as_db_error() {
        Some(db) => format!("{} ({})", db.message(), db.code().code()),
        None => e.to_string(),
    };
    ConnectError::external(CLASS, what, reason)
}

impl PostgresCdcSourceTask {
    fn settings(&self) -> &Settings {
        self.s.as_ref().expect("started")
    }

    fn connect(s: &Settings) -> std::result::Result<Client, postgres::Error> {
        let mut c = s.pg.connect(NoTls)?;
        // The text forms envelope.rs parses.
        c.batch_execute(
            "SET DateStyle = ISO; SET TimeZone = 'UTC'; SET extra_float_digits = 3; \
             SET bytea_output = 'hex'; SET IntervalStyle = 'postgres'",
        )?;
        Ok(c)
    }

    fn client(&mut self) -> &mut Client {
        self.client.as_mut().expect("connected")
    }

    /// Creates the publication (per `publication.autocreate.mode`) and then the slot; the
    /// publication must exist before the slot or decoding from its start fails.
    ///
    /// `snapshot.mode=initial_only` never streams: no slot (one nobody reads would hold WAL
    /// forever). A slot that is missing while a streaming offset is stored is an error, not a
    /// new slot: the changes between that offset and a new slot's start are gone, and
    /// resuming would skip them silently.
    fn ensure_publication_and_slot(&mut self, stored: Option<&Offset>) -> Result<()> {
        let s = self.settings().clone();
        let client = self.client();
        let exists = client
            .query_opt("SELECT 1 FROM pg_publication WHERE pubname = $1", &[&s.publication])
            .map_err(|e| pg_err("reading pg_publication", e))?
            .is_some();
        let pub_q = quote_ident(&s.publication);
        match s.autocreate.as_str() {
            "disabled" if !exists => {
                return Err(ConnectError::config(
                    "publication.name",
                    format!("publication {} does not exist and publication.autocreate.mode is disabled", s.publication),
                ))
            }
            "all_tables" if !exists => {
                client
                    .batch_execute(&format!("CREATE PUBLICATION {pub_q} FOR ALL TABLES"))
                    .map_err(|e| pg_err("creating the publication (needs superuser)", e))?;
                info!(publication = %s.publication, "created publication for all tables");
            }
            "filtered" => {
                let rows = client
                    .query(
                        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace \
                         WHERE c.relkind IN ('r', 'p') AND n.nspname NOT IN ('pg_catalog', 'information_schema') \
                         AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1, 2",
                        &[],
                    )
                    .map_err(|e| pg_err("listing tables", e))?;
                let tables: Vec<String> = rows
                    .iter()
                    .filter(|r| s.captured(r.get(0), r.get(1)))
                    .map(|r| format!("{}.{}", quote_ident(r.get(0)), quote_ident(r.get(1))))
                    .collect();
                if tables.is_empty() {
                    return Err(ConnectError::config(
                        "table.include.list",
                        "no table matches; publication.autocreate.mode=filtered needs at least one",
                    ));
                }
                let verb = if exists { "ALTER PUBLICATION" } else { "CREATE PUBLICATION" };
                let set = if exists { "SET TABLE" } else { "FOR TABLE" };
                client
                    .batch_execute(&format!("{verb} {pub_q} {set} {}", tables.join(", ")))
                    .map_err(|e| pg_err("creating the publication", e))?;
            }
            _ => {}
        }
        let slot = client
            .query_opt(
                "SELECT plugin, database = current_database() FROM pg_replication_slots WHERE slot_name = $1",
                &[&s.slot],
            )
            .map_err(|e| pg_err("reading pg_replication_slots", e))?;
        match slot {
            Some(row) => {
                let plugin: Option<String> = row.get(0);
                let same_db: Option<bool> = row.get(1);
                if plugin.as_deref() != Some("pgoutput") || same_db != Some(true) {
                    return Err(ConnectError::config(
                        "slot.name",
                        format!("slot {} exists but is not a pgoutput slot of database {}", s.slot, s.db),
                    ));
                }
            }
            None if s.snapshot_mode == "initial_only" => {}
            None if stored.is_some_and(|o| !o.snapshot_unfinished()) => {
                let lsn = PgLsn::from(stored.map_or(0, |o| o.lsn));
                return Err(ConnectError::external(
                    CLASS,
                    format!("resuming from the stored offset (LSN {lsn})"),
                    format!(
                        "replication slot {} does not exist (dropped?): the changes since LSN {lsn} are lost from \
                         the WAL. Refusing to create a new slot and skip them; to start over with a new snapshot, \
                         delete this connector and create it under a new name (offsets are kept per connector)",
                        s.slot
                    ),
                ));
            }
            None => {
                client
                    .query_one("SELECT lsn FROM pg_create_logical_replication_slot($1, 'pgoutput')", &[&s.slot])
                    .map_err(|e| {
                        pg_err("creating the replication slot (needs REPLICATION and wal_level=logical)", e)
                    })?;
                info!(slot = %s.slot, "created logical replication slot");
            }
        }
        Ok(())
    }

    /// The slot's confirmed LSN and its lag in bytes.
    fn slot_state(&mut self) -> Result<(u64, i64)> {
        let slot = self.settings().slot.clone();
        let row = self
            .client()
            .query_opt(slot::SLOT_SQL, &[&slot])
            .map_err(|e| pg_err("reading the slot", e))?
            .ok_or_else(|| ConnectError::external(CLASS, "reading the slot", format!("slot {slot} was dropped")))?;
        let lsn: Option<PgLsn> = row.get(0);
        let lag: Option<i64> = row.get(1);
        Ok((lsn.map_or(0, u64::from), lag.unwrap_or(0)))
    }

    fn check_lag(&mut self) -> Result<()> {
        if Instant::now() < self.next_lag_check || self.settings().snapshot_mode == "initial_only" {
            return Ok(());
        }
        self.next_lag_check = Instant::now() + LAG_CHECK_INTERVAL;
        let (_, lag) = self.slot_state()?;
        metrics::gauge!("spate_connect_cdc_slot_lag_bytes", "connector" => self.connector.clone()).set(lag as f64);
        let s = self.settings();
        if lag > s.lag_warn_bytes {
            warn!(connector = %self.connector, slot = %s.slot, lag_bytes = lag, threshold = s.lag_warn_bytes,
                "the replication slot holds back more WAL than slot.lag.warn.bytes: events are not being acknowledged (is the broker or the worker down?)");
        }
        Ok(())
    }

    /// The captured table `schema.name` with columns from a Relation message or the catalog.
    /// Its key, the same for snapshot and stream (so a row keeps its partition): the primary
    /// key, else the `REPLICA IDENTITY USING INDEX` index (what a delete's old tuple carries),
    /// else none.
    fn table(
        client: &mut Client,
        s: &Settings,
        oid: u32,
        schema: &str,
        name: &str,
        columns: Vec<(String, PgType)>,
    ) -> Result<Arc<Table>> {
        let key_columns: Vec<String> = client
            .query(KEY_SQL, &[&oid])
            .map_err(|e| pg_err(format!("reading the primary key of {schema}.{name}"), e))?
            .iter()
            .map(|r| r.get(0))
            .collect();
        let key = key_columns.iter().filter_map(|k| columns.iter().position(|(c, _)| c == k)).collect();
        Ok(Arc::new(Table::new(&s.prefix, schema, name, columns, key)))
    }

    // ---- snapshot ----

    fn begin_snapshot(&mut self) -> Result<()> {
        let s = self.settings().clone();
        let (slot_lsn, _) = if s.snapshot_mode == "initial_only" { (0, 0) } else { self.slot_state()? };
        let client = self.client();
        client
            .batch_execute("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
            .map_err(|e| pg_err("starting the snapshot transaction", e))?;
        let row = client.query_one(slot::SNAPSHOT_SQL, &[]).map_err(|e| pg_err("taking the snapshot", e))?;
        let until: PgLsn = row.get(3);
        let filter = SnapshotFilter::parse(row.get(0), row.get(1), row.get(2), u64::from(until))
            .map_err(|e| ConnectError::external(CLASS, "reading pg_current_snapshot()", e))?;
        let tables: VecDeque<(String, String)> = client
            .query(
                "SELECT schemaname::text, tablename::text FROM pg_publication_tables WHERE pubname = $1 ORDER BY 1, 2",
                &[&s.publication],
            )
            .map_err(|e| pg_err("listing the publication's tables", e))?
            .iter()
            .map(|r| (r.get::<_, String>(0), r.get::<_, String>(1)))
            .filter(|(sc, t)| s.captured(sc, t))
            .collect();
        info!(connector = %self.connector, tables = tables.len(), "snapshot started");
        self.phase = Phase::Snapshot(Box::new(Snapshot {
            tables,
            current: None,
            filter,
            slot_lsn,
            ts_ms: now_ms(),
            held: None,
        }));
        Ok(())
    }

    fn snapshot_offset(snap: &Snapshot, last: bool) -> Json {
        Offset {
            lsn: snap.slot_lsn,
            snapshot: true,
            last_snapshot_record: last,
            filter: Some(snap.filter.clone()),
            ..Offset::default()
        }
        .to_json()
    }

    /// Fetches the next chunk of snapshot rows into `pending`. On an error the snapshot stays
    /// the phase, so a lost connection makes `poll` take the snapshot again from the start
    /// (rather than streaming with the rest of the snapshot silently missing).
    fn snapshot_step(&mut self) -> Result<()> {
        let Phase::Snapshot(mut snap) = std::mem::replace(&mut self.phase, Phase::Stream) else { return Ok(()) };
        match self.snapshot_chunk(&mut snap) {
            Ok(true) => {
                info!(connector = %self.connector, "snapshot finished");
                self.phase = if self.settings().snapshot_mode == "initial_only" { Phase::Idle } else { Phase::Stream };
                Ok(())
            }
            Ok(false) => {
                self.phase = Phase::Snapshot(snap);
                Ok(())
            }
            Err(e) => {
                self.phase = Phase::Snapshot(snap);
                Err(e)
            }
        }
    }

    /// One chunk of the snapshot; true once it is finished. Queues nothing before its I/O
    /// succeeded.
    fn snapshot_chunk(&mut self, snap: &mut Snapshot) -> Result<bool> {
        let s = self.settings().clone();
        let client = self.client.as_mut().expect("connected");
        if snap.current.is_none() {
            let Some((schema, name)) = snap.tables.pop_front() else {
                // Done: the held row is the last one; commit the read-only transaction.
                client.batch_execute("COMMIT").map_err(|e| pg_err("ending the snapshot", e))?;
                if let Some(mut r) = snap.held.take() {
                    if let Some(Value::Json(v)) = r.value.as_mut() {
                        v["source"]["snapshot"] = json!("last");
                    }
                    self.pending.push_back(Item::Record(Box::new(r)));
                }
                self.pending.push_back(Item::Offset(Self::snapshot_offset(snap, true)));
                self.emitted_lsn = snap.slot_lsn;
                self.filter = Some(snap.filter.clone());
                return Ok(true);
            };
            let qualified = format!("{}.{}", quote_ident(&schema), quote_ident(&name));
            let oid: u32 = client
                .query_one("SELECT $1::text::regclass::oid", &[&qualified])
                .map_err(|e| pg_err(format!("reading {schema}.{name}"), e))?
                .get(0);
            // Not `SELECT *`: generated columns are not in streamed events either.
            let list: String = client
                .query_one(COLUMNS_SQL, &[&oid])
                .map_err(|e| pg_err(format!("reading the columns of {schema}.{name}"), e))?
                .get(0);
            let select = format!("SELECT {list} FROM {qualified}");
            let stmt = client.prepare(&select).map_err(|e| pg_err(format!("reading {schema}.{name}"), e))?;
            let columns: Vec<(String, PgType)> =
                stmt.columns().iter().map(|c| (c.name().to_owned(), PgType::from_oid(c.type_().oid()))).collect();
            snap.current = Some(Self::table(client, &s, oid, &schema, &name, columns)?);
            client
                .batch_execute(&format!("DECLARE spate_snapshot NO SCROLL CURSOR FOR {select}"))
                .map_err(|e| pg_err(format!("reading {schema}.{name}"), e))?;
        }
        let table = snap.current.clone().expect("set above");
        let msgs = client
            .simple_query(&format!("FETCH {} FROM spate_snapshot", s.max_batch))
            .map_err(|e| pg_err(format!("reading {}.{}", table.schema, table.name), e))?;
        let mut n = 0usize;
        let mut datums: Vec<Datum<'_>> = Vec::with_capacity(table.columns.len());
        let origin = envelope::Origin {
            server: &s.prefix,
            db: &s.db,
            ts_ms: snap.ts_ms,
            snapshot: "true",
            tx_id: None,
            last_commit_lsn: None,
        };
        let src = envelope::source(&origin, &table, Some(snap.slot_lsn));
        let now = now_ms();
        for m in &msgs {
            let SimpleQueryMessage::Row(row) = m else { continue };
            n += 1;
            datums.clear();
            for i in 0..row.len() {
                datums.push(row.get(i).map_or(Datum::Null, |v| Datum::Text(v.as_bytes())));
            }
            let item = match table.row(&datums) {
                Ok(after) => Item::Record(Box::new(envelope::event(
                    &table,
                    "r",
                    table.key_of(&after),
                    None,
                    Some(after),
                    src.clone(),
                    now,
                ))),
                Err(reason) => Item::Failed(Box::new(FailedRecord {
                    record: ConnectRecord::new(
                        table.topic.clone(),
                        Some(Value::Json(json!({"schema": table.schema, "table": table.name, "snapshot": true}))),
                    ),
                    error: Arc::new(ConnectError::external(
                        CLASS,
                        format!("reading a row of {}.{} in the snapshot", table.schema, table.name),
                        reason,
                    )),
                    stage: "TASK_POLL",
                    class_name: CLASS.to_owned(),
                })),
            };
            match item {
                Item::Record(r) => {
                    if let Some(prev) = snap.held.replace(*r) {
                        self.pending.push_back(Item::Record(Box::new(prev)));
                    }
                }
                other => self.pending.push_back(other),
            }
        }
        if n < s.max_batch {
            client.batch_execute("CLOSE spate_snapshot").map_err(|e| pg_err("closing the snapshot cursor", e))?;
            snap.current = None;
        }
        if n > 0 {
            self.pending.push_back(Item::Offset(Self::snapshot_offset(snap, false)));
        }
        Ok(false)
    }

    // ---- streaming ----

    /// Peeks the next changes and queues the transactions not yet emitted.
    /// Peeks the next changes into `raw` (undecoded: a peeked row is ~100 bytes, its events
    /// several KiB, so only a batch's worth is built at a time). False: nothing new.
    fn fetch(&mut self) -> Result<bool> {
        let s = self.settings().clone();
        // The slot starts from its confirmed position: ask for what we hold unconfirmed plus
        // a chunk of new changes (the server drops the unconfirmed part, see PEEK_SQL).
        let mut want = self.unconfirmed_rows + (s.max_batch * PEEK_BATCHES) as u64;
        // Idle (everything emitted is confirmed): note the flushed WAL position first. If the
        // peek then finds nothing, no change of ours commits before it, so the slot may move
        // there — otherwise WAL written by other databases or by tables outside the
        // publication would pile up behind an idle slot (Debezium needs heartbeats for this).
        let idle_lsn = if self.unconfirmed.is_empty() && Instant::now() >= self.next_idle_advance {
            self.next_idle_advance = Instant::now() + LAG_CHECK_INTERVAL;
            let row = self
                .client()
                .query_one("SELECT pg_current_wal_flush_lsn()", &[])
                .map_err(|e| pg_err("reading the WAL position", e))?;
            Some(u64::from(row.get::<_, PgLsn>(0)))
        } else {
            None
        };
        loop {
            let limit = i32::try_from(want).unwrap_or(i32::MAX);
            let emitted = PgLsn::from(self.emitted_lsn);
            let rows = self.peek(&s, limit, emitted)?;
            let total: i64 = rows.first().map_or(0, |r| r.get(2));
            // Relation and Type messages always come; anything else is a new transaction.
            let new = rows.iter().any(|r| !matches!(r.get::<_, &[u8]>(1).first(), Some(b'R' | b'Y')));
            if new || (total as u64) < want {
                self.raw = rows.into();
            }
            if new {
                return Ok(true);
            }
            if (total as u64) < want {
                if let Some(lsn) = idle_lsn.filter(|&l| l > self.emitted_lsn) {
                    // An offset-only batch: the runtime stores it and `commit` moves the slot.
                    self.emitted_lsn = lsn;
                    if self.filter.as_ref().is_some_and(|f| lsn >= f.until_lsn) {
                        self.filter = None;
                    }
                    let offset = Offset { lsn, filter: self.filter.clone(), ..Offset::default() };
                    self.pending.push_back(Item::Offset(offset.to_json()));
                    self.unconfirmed.push_back((lsn, 0));
                    return Ok(true);
                }
                return Ok(!self.raw.is_empty());
            }
            // Everything peeked was already emitted: ask further.
            want = want.saturating_mul(2);
        }
    }

    /// Runs [`slot::PEEK_SQL`]. A peek returns whole transactions, held undecoded until their
    /// events are built a batch at a time: one with more than `max.transaction.changes`
    /// changes fails the task rather than the worker's memory.
    fn peek(&mut self, s: &Settings, limit: i32, emitted: PgLsn) -> Result<Vec<postgres::Row>> {
        use postgres::fallible_iterator::FallibleIterator as _;
        let what = || format!("peeking slot {}", s.slot);
        let params: [&dyn ToSql; 4] = [&s.slot, &limit, &s.publication, &emitted];
        let mut it = self.client().query_raw(slot::PEEK_SQL, params).map_err(|e| pg_err(what(), e))?;
        let mut rows = Vec::new();
        let mut in_txn = 0u64;
        while let Some(row) = it.next().map_err(|e| pg_err(what(), e))? {
            match row.get::<_, &[u8]>(1).first() {
                Some(b'B') => in_txn = 0,
                Some(b'R' | b'Y') => {}
                _ => in_txn += 1,
            }
            if in_txn > s.max_txn_changes {
                let lsn: PgLsn = row.get(0);
                return Err(ConnectError::config(
                    "max.transaction.changes",
                    format!(
                        "a transaction (change at LSN {lsn}) has more than {} changes, the most the task holds \
                         in memory (undecoded, roughly 200-300 bytes each plus the row's text); raise \
                         max.transaction.changes if the worker has the memory",
                        s.max_txn_changes
                    ),
                ));
            }
            rows.push(row);
        }
        Ok(rows)
    }

    /// Decodes peeked rows into events until a batch is queued. A batch may end inside a
    /// transaction (without an offset: offsets only at transaction ends), so a large
    /// transaction's events are built a batch at a time.
    fn drain_raw(&mut self) -> Result<()> {
        let s = self.settings().clone();
        while let Some(row) = self.raw.pop_front() {
            let lsn = u64::from(row.get::<_, PgLsn>(0));
            let data: &[u8] = row.get(1);
            let msg = pgoutput::decode(data).map_err(|e| ConnectError::external(CLASS, "decoding the slot", e))?;
            self.txn_rows += 1;
            let ctx = Ctx {
                server: &s.prefix,
                db: &s.db,
                tombstones: s.tombstones,
                emitted_lsn: self.emitted_lsn,
                filter: self.filter.as_ref(),
            };
            let client = self.client.as_mut().expect("connected");
            let mut lookup = |rel: &Relation| -> Result<Option<Arc<Table>>> {
                if !s.captured(&rel.namespace, &rel.name) {
                    return Ok(None);
                }
                let columns = rel.columns.iter().map(|c| (c.name.clone(), PgType::from_oid(c.type_oid))).collect();
                Self::table(client, &s, rel.oid, &rel.namespace, &rel.name, columns).map(Some)
            };
            if let Some(offset) = self.asm.on_message(msg, lsn, &ctx, &mut lookup, &mut self.pending)? {
                self.emitted_lsn = offset.lsn;
                if self.filter.as_ref().is_some_and(|f| offset.lsn >= f.until_lsn) {
                    self.filter = None;
                }
                self.pending.push_back(Item::Offset(offset.to_json()));
                self.unconfirmed.push_back((self.emitted_lsn, self.txn_rows));
                self.unconfirmed_rows += self.txn_rows;
                self.txn_rows = 0;
            }
            // Full: stop, but not just before a Commit (its offset belongs with this batch).
            let commit_next = self.raw.front().is_some_and(|r| r.get::<_, &[u8]>(1).first() == Some(&b'C'));
            if self.pending.len() >= s.max_batch && !commit_next {
                break;
            }
        }
        Ok(())
    }

    fn stream_step(&mut self) -> Result<bool> {
        if self.raw.is_empty() && !self.fetch()? {
            return Ok(false);
        }
        self.drain_raw()?;
        Ok(true)
    }

    fn take_batch(&mut self) -> SourceBatch {
        let max = self.settings().max_batch;
        let mut batch = SourceBatch::default();
        let mut offset = None;
        while let Some(item) = self.pending.front() {
            let full = batch.records.len() + batch.failed.len() >= max;
            if full && !matches!(item, Item::Offset(_)) {
                break;
            }
            match self.pending.pop_front().expect("front checked") {
                Item::Record(r) => batch.records.push(*r),
                Item::Failed(f) => batch.failed.push(*f),
                Item::Offset(o) => offset = Some(o),
            }
        }
        if let Some(o) = offset {
            batch.offsets.push((self.settings().partition(), o));
        }
        batch
    }

    /// A lost connection is re-established by the next `poll`s (the phase says what to take
    /// again); any other error fails the task.
    fn on_error(&mut self, e: ConnectError) -> Result<Option<SourceBatch>> {
        let lost = self.client.as_mut().is_none_or(|c| c.is_closed() || c.is_valid(Duration::from_secs(5)).is_err());
        if lost {
            warn!(connector = %self.connector, error = %e, "lost the PostgreSQL connection; reconnecting");
            self.client = None;
            // Peek again from the last transaction end queued: the undecoded rows may have
            // lost one (a Relation whose lookup failed), and a new decoding session sends
            // every Relation again. Events of a partly queued transaction repeat.
            self.raw.clear();
            self.asm.txn = None;
            self.txn_rows = 0;
            self.reconnect_at = Some(Instant::now() + self.backoff);
            return Ok(None);
        }
        Err(e)
    }

    fn step(&mut self) -> Result<bool> {
        match &self.phase {
            Phase::Snapshot(_) => self.snapshot_step().map(|_| true),
            Phase::Stream => self.stream_step(),
            Phase::Idle => Ok(false),
        }
    }
}

impl SourceTask for PostgresCdcSourceTask {
    fn start(&mut self, config: &Props, context: &SourceTaskContext) -> Result<()> {
        let s = Settings::parse(config)?;
        self.connector = context.connector.clone();
        let stored = context.offset(&s.partition()).as_ref().and_then(Offset::from_json);
        self.client = Some(Self::connect(&s).map_err(|e| pg_err(format!("connecting to database {}", s.db), e))?);
        self.s = Some(s.clone());
        self.ensure_publication_and_slot(stored.as_ref())?;
        let (confirmed, _) = if s.snapshot_mode == "initial_only" { (0, 0) } else { self.slot_state()? };
        self.confirmed_lsn = confirmed;
        match slot::start_plan(&s.snapshot_mode, stored.as_ref()) {
            StartPlan::Snapshot => self.begin_snapshot()?,
            StartPlan::Stream => {
                let o = stored.unwrap_or_default();
                // A stored offset is acknowledged: the slot may move there (a crash between
                // storing offsets and `commit` leaves it behind).
                self.emitted_lsn = o.lsn.max(confirmed);
                self.filter = o.filter.clone().filter(|f| self.emitted_lsn < f.until_lsn);
                if o.lsn > confirmed {
                    self.commit(&[(s.partition(), o.to_json())])?;
                }
                self.phase = if s.snapshot_mode == "initial_only" { Phase::Idle } else { Phase::Stream };
                info!(connector = %self.connector, slot = %s.slot, lsn = %PgLsn::from(self.emitted_lsn), "streaming from the slot");
            }
        }
        Ok(())
    }

    fn poll(&mut self, timeout: Duration) -> Result<Option<SourceBatch>> {
        if !self.pending.is_empty() {
            return Ok(Some(self.take_batch()));
        }
        if self.client.is_none() {
            let at = self.reconnect_at.unwrap_or_else(Instant::now);
            let now = Instant::now();
            if now < at {
                std::thread::sleep((at - now).min(timeout));
                return Ok(None);
            }
            let s = self.settings().clone();
            match Self::connect(&s) {
                Ok(c) => {
                    info!(connector = %self.connector, "reconnected to PostgreSQL");
                    self.client = Some(c);
                    self.backoff = Duration::from_millis(100);
                    self.reconnect_at = None;
                    // A snapshot's transaction died with the connection: take it again.
                    if matches!(self.phase, Phase::Snapshot(_)) {
                        if let Err(e) = self.begin_snapshot() {
                            return self.on_error(e);
                        }
                    }
                }
                Err(e) => {
                    warn!(connector = %self.connector, error = %e, "reconnecting to PostgreSQL failed");
                    self.backoff = (self.backoff * 2).min(RECONNECT_BACKOFF_MAX);
                    self.reconnect_at = Some(Instant::now() + self.backoff);
                    return Ok(None);
                }
            }
        }
        if let Some(at) = self.next_peek {
            let now = Instant::now();
            if now < at {
                std::thread::sleep((at - now).min(timeout));
                return Ok(None);
            }
        }
        if let Err(e) = self.check_lag() {
            warn!(connector = %self.connector, error = %e, "cannot measure the slot lag");
        }
        if let Err(e) = self.step() {
            return self.on_error(e);
        }
        if self.pending.is_empty() {
            if matches!(self.phase, Phase::Stream | Phase::Idle) {
                self.next_peek = Some(Instant::now() + self.settings().poll_interval);
            }
            return Ok(None);
        }
        self.next_peek = None;
        Ok(Some(self.take_batch()))
    }

    /// Advances the slot to the stored offset: every event before it is acknowledged.
    fn commit(&mut self, offsets: &[(Json, Json)]) -> Result<()> {
        let Some(s) = self.s.as_ref() else { return Ok(()) };
        let partition = s.partition();
        let slot = s.slot.clone();
        let Some(o) = offsets.iter().find(|(p, _)| *p == partition).and_then(|(_, o)| Offset::from_json(o)) else {
            return Ok(());
        };
        if o.lsn <= self.confirmed_lsn {
            return Ok(());
        }
        let Some(client) = self.client.as_mut() else {
            // Disconnected: the next commit (or the restart) advances it.
            return Ok(());
        };
        if let Err(e) = client.query(slot::ADVANCE_SQL, &[&slot, &PgLsn::from(o.lsn)]) {
            let err = pg_err(format!("advancing slot {slot}"), e);
            warn!(connector = %self.connector, error = %err, "cannot confirm the slot position; the next commit retries");
            return Ok(());
        }
        self.confirmed_lsn = o.lsn;
        while self.unconfirmed.front().is_some_and(|(lsn, _)| *lsn <= o.lsn) {
            let (_, rows) = self.unconfirmed.pop_front().expect("front checked");
            self.unconfirmed_rows = self.unconfirmed_rows.saturating_sub(rows);
        }
        Ok(())
    }

    fn stop(&mut self) {
        if let Some(c) = self.client.take() {
            let _ = c.close();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::pgoutput::{Column, Tuple};
    use super::*;

    fn relation() -> Relation {
        let col = |name: &str, key: bool, type_oid: u32| Column { key, name: name.into(), type_oid, type_modifier: -1 };
        Relation {
            oid: 42,
            namespace: "public".into(),
            name: "t".into(),
            replica_identity: b'd',
            columns: vec![col("id", true, 23), col("v", false, 25)],
        }
    }

    fn lookup(rel: &Relation) -> Result<Option<Arc<Table>>> {
        let columns = rel.columns.iter().map(|c| (c.name.clone(), PgType::from_oid(c.type_oid))).collect();
        Ok(Some(Arc::new(Table::new("srv", &rel.namespace, &rel.name, columns, vec![0]))))
    }

    fn ctx(filter: Option<&SnapshotFilter>, emitted_lsn: u64) -> Ctx<'_> {
        Ctx { server: "srv", db: "db", tombstones: true, emitted_lsn, filter }
    }

    /// A finished transaction: its events and where it leaves the slot.
    struct Done {
        items: Vec<Item>,
        offset: Offset,
    }

    fn run(asm: &mut Assembler, msgs: Vec<Message<'_>>, ctx: &Ctx<'_>) -> Vec<Done> {
        let mut out = VecDeque::new();
        let mut done = Vec::new();
        for (i, m) in msgs.into_iter().enumerate() {
            if let Some(offset) = asm.on_message(m, i as u64, ctx, &mut lookup, &mut out).unwrap() {
                done.push(Done { items: out.drain(..).collect(), offset });
            }
        }
        assert!(out.is_empty(), "events of a transaction that was not emitted");
        done
    }

    fn txn<'a>(xid: u32, end_lsn: u64, changes: Vec<Message<'a>>) -> Vec<Message<'a>> {
        let mut v = vec![Message::Begin { final_lsn: end_lsn - 8, commit_ts_us: 0, xid }];
        v.extend(changes);
        v.push(Message::Commit { flags: 0, commit_lsn: end_lsn - 8, end_lsn, commit_ts_us: 0 });
        v
    }

    #[test]
    fn whole_transactions_with_their_offset_and_bad_rows_as_failures() {
        let mut asm = Assembler::default();
        let mut msgs = vec![Message::Relation(relation())];
        msgs.extend(txn(
            7,
            100,
            vec![
                Message::Insert { relation: 42, new: Tuple(vec![Datum::Text(b"1"), Datum::Text(b"a")]) },
                Message::Insert { relation: 42, new: Tuple(vec![Datum::Text(b"not a number"), Datum::Null]) },
                Message::Delete {
                    relation: 42,
                    old: (pgoutput::OldKind::Key, Tuple(vec![Datum::Text(b"1"), Datum::Null])),
                },
            ],
        ));
        let done = run(&mut asm, msgs, &ctx(None, 0));
        assert_eq!(done.len(), 1);
        let kinds: Vec<&str> = done[0]
            .items
            .iter()
            .map(|i| match i {
                Item::Record(r) if r.value.is_none() => "tombstone",
                Item::Record(_) => "record",
                Item::Failed(_) => "failed",
                Item::Offset(_) => "offset",
            })
            .collect();
        assert_eq!(kinds, ["record", "failed", "record", "tombstone"]);
        assert_eq!((done[0].offset.lsn, done[0].offset.lsn_commit, done[0].offset.tx_id), (100, Some(92), Some(7)));
        let Item::Failed(f) = &done[0].items[1] else { panic!() };
        assert!(f.error.to_string().contains("column id"), "{}", f.error);
        assert_eq!(f.stage, "TASK_POLL");
    }

    #[test]
    fn snapshot_visible_transactions_are_skipped() {
        let insert = || vec![Message::Insert { relation: 42, new: Tuple(vec![Datum::Text(b"1"), Datum::Null]) }];
        let mut asm = Assembler::default();
        let filter = SnapshotFilter { xmin: 10, xmax: 20, xip: vec![15], until_lsn: 500 };
        let mut msgs = vec![Message::Relation(relation())];
        msgs.extend(txn(12, 200, insert())); // visible in the snapshot: offset only
        msgs.extend(txn(15, 300, insert())); // in progress at the snapshot: emitted
        msgs.extend(txn(13, 600, insert())); // commits after the snapshot's WAL position: emitted
        let done = run(&mut asm, msgs, &ctx(Some(&filter), 100));
        let summary: Vec<(u64, usize, bool)> =
            done.iter().map(|d| (d.offset.lsn, d.items.len(), d.offset.filter.is_some())).collect();
        assert_eq!(summary, [(200, 0, true), (300, 1, true), (600, 1, false)]);
    }

    #[test]
    fn a_change_to_an_unknown_relation_is_an_error() {
        let mut asm = Assembler::default();
        let c = ctx(None, 0);
        let mut out = VecDeque::new();
        asm.on_message(Message::Begin { final_lsn: 1, commit_ts_us: 0, xid: 1 }, 1, &c, &mut lookup, &mut out).unwrap();
        let m = Message::Insert { relation: 9, new: Tuple(vec![]) };
        assert!(asm.on_message(m, 2, &c, &mut lookup, &mut out).is_err());
    }
}
