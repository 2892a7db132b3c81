//! The JDBC-style source (`JdbcSourceConnector`): polls tables (or one query) of SQLite or
//! PostgreSQL into topics, with Kafka Connect JDBC's keys, modes and offsets.
//!
//! * **Modes.** `bulk` reads the whole table every `poll.interval.ms` (through a cursor,
//!   `batch.max.rows` per poll); `incrementing` reads rows with `id > last id`; `timestamp`
//!   rows with `last ts < ts < now − timestamp.delay.interval.ms`; `timestamp+incrementing`
//!   rows with `(ts, id) > (last ts, last id)` and the same upper bound, ordered by `(ts, id)`.
//!   "now" is the database's clock. See [`position`] for the tie rules.
//! * **Records.** Topic = `topic.prefix` + table name (`topic.prefix` alone with `query`). The
//!   value is the row as a JSON object with the Connect struct schema of its columns as
//!   `value_schema` (so `JsonConverter` with `schemas.enable` writes the envelope); the key is a
//!   struct of the primary key columns (none when the table has no primary key, and for
//!   `query`). A row with a value that does not fit its column's type goes to the dead-letter
//!   path (`SourceBatch::failed`), the position moving past it.
//! * **Offsets.** Source partition `{"table": "<name>"}` or `{"query": "query"}`; offset
//!   `{"incrementing": n}`, `{"timestamp": ms, "timestamp_nanos": ns}` or all three, as Kafka
//!   Connect JDBC stores them (bulk stores none).
//! * **Failures.** A database error drops the connection; the task reconnects after
//!   `connection.backoff.ms` and fails (with the database's error) after `connection.attempts`
//!   failures in a row.

pub(crate) mod position;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Map, Value as Json};
use tracing::warn;

use crate::config::{ConfigDef, ConfigType, Importance, ParsedConfig, Props, Validator};
use crate::connector::{Connector, ConnectorType, FailedRecord, SourceBatch, SourceTask, SourceTaskContext};
use crate::error::{ConnectError, Result};
use crate::jdbc::{is_transient, struct_schema, Column, Cursor, Database, Dialect, Rows, SqlType, SqlValue};
use crate::record::{ConnectRecord, Value};

use position::{Filter, Mode, Position, QuerySpec, TsUnit, TS_EXTRA_COLUMN};

const CLASS: &str = "JdbcSourceConnector";

/// The most rows one timestamp may hold in `timestamp` mode (they are read in one query when
/// they fill a batch); beyond it the task fails and says to use `timestamp+incrementing`.
const MAX_TIE_ROWS: usize = 1_000_000;

/// The JDBC source connector plugin.
#[derive(Debug, Clone, Copy, Default)]
pub struct JdbcSourceConnector;

fn check_mode(v: &str) -> std::result::Result<(), String> {
    Mode::parse(v).map(|_| ()).ok_or_else(|| "must be bulk, incrementing, timestamp or timestamp+incrementing".into())
}

fn config_def() -> ConfigDef {
    ConfigDef::new()
        .define(
            "connection.url",
            ConfigType::String,
            None,
            Importance::High,
            "The database: sqlite:PATH (also jdbc:sqlite:PATH) or postgresql://host:port/db (also postgres:// and \
             jdbc:postgresql://).",
        )
        .with_validator(Validator::NonEmpty)
        .in_group("Database")
        .define(
            "connection.user",
            ConfigType::String,
            Some(""),
            Importance::High,
            "PostgreSQL user (overrides the URL's).",
        )
        .in_group("Database")
        .define(
            "connection.password",
            ConfigType::Password,
            Some(""),
            Importance::High,
            "PostgreSQL password (overrides the URL's).",
        )
        .in_group("Database")
        .define(
            "connection.attempts",
            ConfigType::Int,
            Some("3"),
            Importance::Low,
            "Database failures in a row (connecting or querying) before the task fails; between them the task \
             reconnects after connection.backoff.ms.",
        )
        .with_validator(Validator::Range { min: 1.0, max: 1_000_000.0 })
        .in_group("Database")
        .define(
            "connection.backoff.ms",
            ConfigType::Long,
            Some("10000"),
            Importance::Low,
            "Wait before reconnecting after a database failure.",
        )
        .with_validator(Validator::Range { min: 0.0, max: 86_400_000.0 })
        .in_group("Database")
        .define(
            "mode",
            ConfigType::String,
            None,
            Importance::High,
            "bulk (the whole table each poll), incrementing (strictly increasing id column), timestamp (a \
             modification-time column), or timestamp+incrementing (both; the tie-safe choice).",
        )
        .with_validator(Validator::Custom(check_mode))
        .in_group("Mode")
        .define(
            "incrementing.column.name",
            ConfigType::String,
            Some(""),
            Importance::Medium,
            "The strictly increasing integer column (incrementing and timestamp+incrementing modes).",
        )
        .in_group("Mode")
        .define(
            "timestamp.column.name",
            ConfigType::String,
            Some(""),
            Importance::Medium,
            "The modification-time column (timestamp modes): PostgreSQL timestamp/timestamptz (UTC) or an integer \
             of epoch milliseconds; in SQLite an INTEGER of epoch milliseconds or TEXT \
             'YYYY-MM-DD HH:MM:SS[.ffffff]' in UTC (compared to the millisecond).",
        )
        .in_group("Mode")
        .define(
            "timestamp.delay.interval.ms",
            ConfigType::Long,
            Some("0"),
            Importance::High,
            "Rows are read only once their timestamp is this much older than the database's clock, so \
             transactions that commit late (with an older timestamp) within this delay are still read.",
        )
        .with_validator(Validator::Range { min: 0.0, max: 9.2e15 })
        .in_group("Mode")
        .define(
            "timestamp.initial",
            ConfigType::Long,
            Some("-2"),
            Importance::Low,
            "Without a stored offset, read timestamps after this epoch millisecond; -1 means the database's \
             current time; -2 (the default) means from the start.",
        )
        .in_group("Mode")
        .define(
            "table.whitelist",
            ConfigType::List,
            Some(""),
            Importance::Medium,
            "Tables to read (schema.table for PostgreSQL schemas other than public). Empty: every table not in \
             table.blacklist, listed when the connector starts.",
        )
        .in_group("Tables")
        .define("table.blacklist", ConfigType::List, Some(""), Importance::Medium, "Tables not to read.")
        .in_group("Tables")
        .define("table.include.list", ConfigType::List, Some(""), Importance::Low, "Alias of table.whitelist.")
        .in_group("Tables")
        .define("table.exclude.list", ConfigType::List, Some(""), Importance::Low, "Alias of table.blacklist.")
        .in_group("Tables")
        .define(
            "query",
            ConfigType::String,
            Some(""),
            Importance::Medium,
            "Read this SELECT instead of tables (one task). It is wrapped as SELECT * FROM (query) AS spate_query \
             WHERE …, so it may have its own WHERE clause; the mode's columns must be in its result.",
        )
        .in_group("Tables")
        .define(
            "topic.prefix",
            ConfigType::String,
            None,
            Importance::High,
            "Topic = prefix + table name; with query, the prefix is the whole topic name.",
        )
        .in_group("Connector")
        .define(
            "poll.interval.ms",
            ConfigType::Int,
            Some("5000"),
            Importance::High,
            "How often a table that had no new rows is queried again.",
        )
        .with_validator(Validator::Range { min: 1.0, max: 2_147_483_647.0 })
        .in_group("Connector")
        .define(
            "batch.max.rows",
            ConfigType::Int,
            Some("100"),
            Importance::Low,
            "Rows per query and per poll (timestamp mode may exceed it to keep one timestamp's rows together).",
        )
        .with_validator(Validator::Range { min: 1.0, max: 1_000_000.0 })
        .in_group("Connector")
        .define(
            "tables",
            ConfigType::List,
            Some(""),
            Importance::Low,
            "Set by the connector in each task's config: the tables that task reads.",
        )
        .in_group("Connector")
}

/// The validated config.
#[derive(Debug, Clone)]
struct JdbcSourceConfig {
    url: String,
    user: String,
    password: String,
    attempts: u32,
    backoff: Duration,
    mode: Mode,
    incrementing_column: Option<String>,
    timestamp_column: Option<String>,
    delay_ms: i64,
    timestamp_initial: i64,
    whitelist: Vec<String>,
    blacklist: Vec<String>,
    query: Option<String>,
    topic_prefix: String,
    poll_interval: Duration,
    batch_max_rows: usize,
    tables: Vec<String>,
}

impl JdbcSourceConfig {
    fn parse(props: &Props) -> Result<Self> {
        let c = config_def().parse(props)?;
        Self::from_parsed(&c)
    }

    fn from_parsed(c: &ParsedConfig) -> Result<Self> {
        let s = |k: &str| c.get_str(k).map(str::trim).unwrap_or("").to_owned();
        let opt = |k: &str| Some(s(k)).filter(|v| !v.is_empty());
        let num = |k: &str| -> Result<i64> { c.get_i64(k)?.ok_or_else(|| ConnectError::config(k, "missing")) };
        let mode = Mode::parse(&s("mode")).ok_or_else(|| ConnectError::config("mode", "unknown mode"))?;
        let mut whitelist = c.get_list("table.whitelist");
        whitelist.extend(c.get_list("table.include.list"));
        let mut blacklist = c.get_list("table.blacklist");
        blacklist.extend(c.get_list("table.exclude.list"));
        let cfg = JdbcSourceConfig {
            url: s("connection.url"),
            user: s("connection.user"),
            password: c.get_str("connection.password").unwrap_or("").to_owned(),
            attempts: num("connection.attempts")?.clamp(1, 1_000_000) as u32,
            backoff: Duration::from_millis(num("connection.backoff.ms")?.max(0) as u64),
            mode,
            incrementing_column: opt("incrementing.column.name"),
            timestamp_column: opt("timestamp.column.name"),
            delay_ms: num("timestamp.delay.interval.ms")?.max(0),
            timestamp_initial: num("timestamp.initial")?,
            whitelist,
            blacklist,
            query: opt("query"),
            topic_prefix: c.get_str("topic.prefix").unwrap_or("").to_owned(),
            poll_interval: Duration::from_millis(num("poll.interval.ms")?.max(1) as u64),
            batch_max_rows: num("batch.max.rows")?.clamp(1, 1_000_000) as usize,
            tables: c.get_list("tables"),
        };
        if let Some((key, reason)) = cfg.problems().into_iter().next() {
            return Err(ConnectError::config(key, reason));
        }
        Ok(cfg)
    }

    /// Cross-key checks.
    fn problems(&self) -> Vec<(String, String)> {
        let mut out = Vec::new();
        if let Err(ConnectError::Config { key, reason }) = crate::jdbc::ConnectionUrl::parse(&self.url) {
            out.push((key, reason));
        }
        if self.mode.uses_incrementing() && self.incrementing_column.is_none() {
            out.push((
                "incrementing.column.name".into(),
                format!("mode {:?} needs the incrementing column", self.mode),
            ));
        }
        if self.mode.uses_timestamp() && self.timestamp_column.is_none() {
            out.push(("timestamp.column.name".into(), format!("mode {:?} needs the timestamp column", self.mode)));
        }
        if self.query.is_some() && !self.whitelist.is_empty() {
            out.push(("query".into(), "set either query or table.whitelist, not both".into()));
        }
        if self.timestamp_column.as_deref().is_some_and(|t| t.contains(',')) {
            out.push((
                "timestamp.column.name".into(),
                "one column only (several, as COALESCE, are not supported)".into(),
            ));
        }
        out
    }

    fn open(&self) -> Result<Database> {
        Database::open(&self.url, Some(&self.user), Some(&self.password))
    }
}

impl Connector for JdbcSourceConnector {
    fn class(&self) -> &'static str {
        CLASS
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["io.confluent.connect.jdbc.JdbcSourceConnector", "JdbcSource"]
    }

    fn kind(&self) -> ConnectorType {
        ConnectorType::Source
    }

    fn config_def(&self) -> ConfigDef {
        config_def()
    }

    fn validate(&self, config: &Props) -> Vec<(String, String)> {
        match JdbcSourceConfig::parse(config) {
            Ok(_) => Vec::new(),
            Err(ConnectError::Config { key, reason }) => vec![(key, reason)],
            Err(e) => vec![("connection.url".into(), e.to_string())],
        }
    }

    fn task_configs(&self, config: &Props, max_tasks: usize) -> Result<Vec<Props>> {
        let cfg = JdbcSourceConfig::parse(config)?;
        if cfg.query.is_some() {
            return Ok(vec![config.clone()]);
        }
        let mut tables = if cfg.whitelist.is_empty() {
            let mut db = cfg.open()?;
            db.list_tables()?
        } else {
            cfg.whitelist.clone()
        };
        tables.retain(|t| !cfg.blacklist.contains(t));
        dedup_in_order(&mut tables);
        if tables.is_empty() {
            return Err(ConnectError::config("table.whitelist", "no tables to read (none listed, or all blacklisted)"));
        }
        let n = max_tasks.clamp(1, tables.len());
        let mut shares = vec![Vec::new(); n];
        for (i, t) in tables.into_iter().enumerate() {
            shares[i % n].push(t);
        }
        Ok(shares
            .into_iter()
            .map(|share| {
                let mut p = config.clone();
                p.insert("tables".into(), share.join(","));
                p
            })
            .collect())
    }

    fn source_task(&self) -> Result<Box<dyn SourceTask>> {
        Ok(Box::new(JdbcSourceTask::default()))
    }
}

/// Drops repeated names (anywhere in the list, not only neighbours), keeping the first.
fn dedup_in_order(names: &mut Vec<String>) {
    let mut seen = std::collections::HashSet::new();
    names.retain(|n| seen.insert(n.clone()));
}

/// The columns a batch's schemas were built from, the value schema and the key schema.
type SchemaCache = (Vec<Column>, Arc<Json>, Option<Arc<Json>>);

/// One table (or the query) a task reads.
struct TableReader {
    /// The table name, or "query".
    name: String,
    is_query: bool,
    topic: Arc<str>,
    partition: Json,
    /// Set up on first use (needs the database): the query parts and key columns.
    spec: Option<QuerySpec>,
    key_columns: Vec<String>,
    nullable: BTreeMap<String, bool>,
    pos: Position,
    /// A stored offset not yet turned into a position (needs the table's timestamp unit).
    stored_offset: Option<Json>,
    next_poll: Instant,
    /// Bulk on an SQLite table with a rowid: read in rowid pages ([`bulk_page`]), the last
    /// page's last rowid in `bulk_after` while a pass is under way.
    bulk_by_rowid: bool,
    bulk_after: Option<i64>,
    /// The timestamp column is PostgreSQL `timestamp` without time zone: "now" is the
    /// session's wall clock ([`Database::now_wall_clock_micros`]).
    ts_wall_clock: bool,
    cursor: Option<Cursor>,
    /// The schemas of the last batch and the columns they were built from.
    schema_cache: Option<SchemaCache>,
}

/// The running task.
#[derive(Default)]
pub struct JdbcSourceTask {
    cfg: Option<JdbcSourceConfig>,
    db: Option<Database>,
    tables: Vec<TableReader>,
    next_table: usize,
    failures: u32,
    reconnect_at: Option<Instant>,
}

impl JdbcSourceTask {
    fn cfg(&self) -> Result<&JdbcSourceConfig> {
        self.cfg.as_ref().ok_or_else(|| ConnectError::Internal("JDBC source task polled before start".into()))
    }

    /// Turns a database error into a retry (drop the connection, back off) or, after
    /// `connection.attempts` in a row, a task failure.
    fn on_db_error(&mut self, err: ConnectError) -> Result<Option<SourceBatch>> {
        let cfg = self.cfg()?;
        let (attempts, backoff) = (cfg.attempts, cfg.backoff);
        self.failures += 1;
        for t in &mut self.tables {
            t.cursor = None;
            t.spec = None;
        }
        self.db = None;
        if self.failures >= attempts {
            return Err(ConnectError::External {
                connector: CLASS.into(),
                what: format!(
                    "reading the database ({} failures in a row, connection.attempts = {attempts})",
                    self.failures
                ),
                reason: err.to_string(),
            });
        }
        warn!(error = %err, failures = self.failures, backoff_ms = backoff.as_millis() as u64,
            "JDBC source: database failure; reconnecting after connection.backoff.ms");
        self.reconnect_at = Some(Instant::now() + backoff);
        Ok(None)
    }

    /// One step on one table: a batch, or `None` when it had nothing.
    fn step(&mut self, i: usize) -> Result<Option<SourceBatch>> {
        let cfg = self.cfg.clone().ok_or_else(|| ConnectError::Internal("not started".into()))?;
        let db = self.db.as_mut().ok_or_else(|| ConnectError::Internal("no connection".into()))?;
        let t = &mut self.tables[i];
        if t.spec.is_none() {
            prepare(db, &cfg, t)?;
        }
        let spec = t.spec.clone().ok_or_else(|| ConnectError::Internal("table not prepared".into()))?;
        let limit = cfg.batch_max_rows;
        if cfg.mode == Mode::Bulk && t.bulk_by_rowid {
            return bulk_page(db, &cfg, t, &spec);
        }
        if cfg.mode == Mode::Bulk {
            if t.cursor.is_none() {
                let (sql, _) = position::render(&spec, Filter::All, limit);
                t.cursor = Some(db.cursor(&sql, limit)?);
            }
            let chunk = match t.cursor.as_mut() {
                Some(c) => c.next_chunk(db)?,
                None => None,
            };
            return match chunk {
                Some(rows) => {
                    refresh_nullable(db, t, &rows)?;
                    Ok(Some(build_batch(t, &spec, rows, None)))
                }
                None => {
                    t.cursor = None;
                    t.next_poll = Instant::now() + cfg.poll_interval;
                    Ok(None)
                }
            };
        }
        let end = if cfg.mode.uses_timestamp() {
            spec.ts_unit.to_domain(db_now(db, t)?.saturating_sub(cfg.delay_ms.saturating_mul(1000)))
        } else {
            0
        };
        let filter = position::next_filter(cfg.mode, t.pos, end);
        let (sql, params) = position::render(&spec, filter, limit);
        let mut rows = db.query(&sql, &params)?;
        refresh_nullable(db, t, &rows)?;
        let keys = row_keys(&rows, &spec, cfg.mode, &t.name)?;
        let outcome = position::advance(cfg.mode, filter, t.pos, &keys, limit);
        let full = rows.rows.len() >= limit;
        if let Some(at) = outcome.tie {
            let (sql, params) = position::render(&spec, Filter::TsEquals { at }, limit);
            let capped = format!("{sql} LIMIT {}", MAX_TIE_ROWS + 1);
            rows = db.query(&capped, &params)?;
            if rows.rows.len() > MAX_TIE_ROWS {
                return Err(ConnectError::External {
                    connector: CLASS.into(),
                    what: format!("reading {}", t.name),
                    reason: format!(
                        "more than {MAX_TIE_ROWS} rows share one timestamp; use mode timestamp+incrementing"
                    ),
                });
            }
            t.pos = Position { ts: Some(at), id: None };
        } else {
            rows.rows.truncate(outcome.emit);
            t.pos = outcome.pos;
        }
        if !full {
            t.next_poll = Instant::now() + cfg.poll_interval;
        }
        if rows.rows.is_empty() {
            return Ok(None);
        }
        let offset = position::offset_json(cfg.mode, spec.ts_unit, t.pos);
        Ok(Some(build_batch(t, &spec, rows, offset)))
    }
}

/// Reads the table's columns and key, checks the mode's columns, and builds its query parts.
fn prepare(db: &mut Database, cfg: &JdbcSourceConfig, t: &mut TableReader) -> Result<()> {
    let dialect = db.dialect();
    let (from, columns) = if t.is_query {
        let q = cfg.query.clone().unwrap_or_default();
        let from = format!("({q}) AS {}", dialect.quote_ident("spate_query"));
        let probe = db.query(&format!("SELECT * FROM {from} LIMIT 0"), &[])?;
        (from, probe.columns)
    } else {
        let cols = db.table_columns(&t.name)?;
        if cols.is_empty() {
            return Err(ConnectError::external(
                CLASS,
                format!("reading table {}", t.name),
                "the table does not exist or has no columns",
            ));
        }
        t.key_columns = db.primary_key(&t.name)?;
        (dialect.quote_table(&t.name), cols)
    };
    t.nullable = columns.iter().map(|c| (c.name.clone(), c.nullable)).collect();
    // SQLite tables with a rowid (not views, not WITHOUT ROWID, no column shadowing the name)
    // are read in bulk by rowid pages.
    t.bulk_by_rowid = cfg.mode == Mode::Bulk
        && dialect == Dialect::Sqlite
        && !t.is_query
        && !columns.iter().any(|c| c.name.eq_ignore_ascii_case("_rowid_") || c.name == ROWID_COLUMN)
        && db.query(&format!("SELECT _rowid_ FROM {from} LIMIT 0"), &[]).is_ok();
    let find = |key: &str, name: &str| -> Result<Column> {
        columns
            .iter()
            .find(|c| c.name == name)
            .or_else(|| columns.iter().find(|c| c.name.eq_ignore_ascii_case(name)))
            .cloned()
            .ok_or_else(|| ConnectError::config(key, format!("{} has no column {name}", t.name)))
    };
    let id_col = match (&cfg.incrementing_column, cfg.mode.uses_incrementing()) {
        (Some(name), true) => {
            let c = find("incrementing.column.name", name)?;
            if !matches!(c.sql_type, SqlType::Int16 | SqlType::Int32 | SqlType::Int64 | SqlType::Unknown) {
                return Err(ConnectError::config(
                    "incrementing.column.name",
                    format!("{name} of {} is {} — the incrementing column must be an integer", t.name, c.type_name),
                ));
            }
            Some(dialect.quote_ident(&c.name))
        }
        _ => None,
    };
    let (ts_expr, ts_extra_column, ts_unit) = match (&cfg.timestamp_column, cfg.mode.uses_timestamp()) {
        (Some(name), true) => {
            let c = find("timestamp.column.name", name)?;
            let q = dialect.quote_ident(&c.name);
            match (dialect, c.sql_type) {
                (_, SqlType::Int16 | SqlType::Int32 | SqlType::Int64) => (Some(q), false, TsUnit::Millis),
                (Dialect::Postgres, SqlType::Timestamp) => {
                    // `timestamp` (without time zone) holds the writer's wall clock: the upper
                    // bound must be the same wall clock, not UTC, or the server's TimeZone
                    // shifts it by hours.
                    t.ts_wall_clock = c.type_name == "timestamp" || c.type_name.ends_with("without time zone");
                    (Some(q), false, TsUnit::Micros)
                }
                // SQLite stores what it is given: epoch ms integers or text; compare both as
                // epoch ms (SQLite's date functions resolve to the millisecond).
                (Dialect::Sqlite, _) => (
                    Some(format!(
                        "(CASE WHEN typeof({q}) IN ('integer', 'real') THEN CAST({q} AS INTEGER) \
                         ELSE CAST(round((julianday({q}) - 2440587.5) * 86400000.0) AS INTEGER) END)"
                    )),
                    true,
                    TsUnit::Millis,
                ),
                _ => {
                    return Err(ConnectError::config(
                        "timestamp.column.name",
                        format!(
                            "{name} of {} is {}; use timestamp, timestamptz or epoch-millisecond bigint",
                            t.name, c.type_name
                        ),
                    ))
                }
            }
        }
        _ => (None, false, TsUnit::Millis),
    };
    t.spec = Some(QuerySpec { dialect, from, ts_expr, ts_extra_column, ts_unit, id_col });
    if let Some(offset) = t.stored_offset.take() {
        t.pos = position::position_from_offset(cfg.mode, ts_unit, &offset)
            .map_err(|e| ConnectError::external(CLASS, format!("resuming {}", t.name), e))?;
    } else if t.pos == Position::default() && cfg.mode.uses_timestamp() && cfg.timestamp_initial != -2 {
        let initial_micros =
            if cfg.timestamp_initial == -1 { db_now(db, t)? } else { cfg.timestamp_initial.saturating_mul(1000) };
        t.pos.ts = Some(ts_unit.to_domain(initial_micros));
        if cfg.mode == Mode::TimestampIncrementing {
            t.pos.id = Some(i64::MAX);
        }
    }
    Ok(())
}

/// The column a bulk page selects the rowid as (removed before the records are built).
const ROWID_COLUMN: &str = "__spate_rowid";

/// One page of an SQLite bulk pass, in rowid order after the last page's: each page is its own
/// statement, so no read lock is held between polls (a pass through a cursor would hold SQLite's
/// SHARED lock for the whole pass and block writers in rollback-journal mode). Not a snapshot:
/// rows written during the pass are read in whatever state their page finds them.
fn bulk_page(
    db: &mut Database,
    cfg: &JdbcSourceConfig,
    t: &mut TableReader,
    spec: &QuerySpec,
) -> Result<Option<SourceBatch>> {
    let limit = cfg.batch_max_rows;
    let sql = format!(
        "SELECT *, _rowid_ AS {col} FROM {from} WHERE _rowid_ > ?1 ORDER BY _rowid_ LIMIT {limit}",
        col = spec.dialect.quote_ident(ROWID_COLUMN),
        from = spec.from
    );
    let mut rows = db.query(&sql, &[SqlValue::Int(t.bulk_after.unwrap_or(i64::MIN))])?;
    if let Some(i) = rows.column_index(ROWID_COLUMN) {
        t.bulk_after = match rows.rows.last().map(|r| &r[i]) {
            Some(SqlValue::Int(last)) => Some(*last),
            _ => None,
        };
        rows.columns.remove(i);
        for r in &mut rows.rows {
            r.remove(i);
        }
    }
    if rows.rows.len() < limit {
        // The pass is over; the next starts from the first rowid after poll.interval.ms.
        t.bulk_after = None;
        t.next_poll = Instant::now() + cfg.poll_interval;
    }
    if rows.rows.is_empty() {
        return Ok(None);
    }
    refresh_nullable(db, t, &rows)?;
    Ok(Some(build_batch(t, spec, rows, None)))
}

/// The database's "now" in the timestamp column's own terms (see [`TableReader::ts_wall_clock`]).
fn db_now(db: &mut Database, t: &TableReader) -> Result<i64> {
    if t.ts_wall_clock {
        db.now_wall_clock_micros()
    } else {
        db.now_micros()
    }
}

/// After ALTER TABLE ADD COLUMN the result has a column the table's catalog read did not: read
/// the catalog again so the new column's schema says whether it is optional.
fn refresh_nullable(db: &mut Database, t: &mut TableReader, rows: &Rows) -> Result<()> {
    if !t.is_query && rows.columns.iter().any(|c| c.name != TS_EXTRA_COLUMN && !t.nullable.contains_key(&c.name)) {
        t.nullable = db.table_columns(&t.name)?.into_iter().map(|c| (c.name, c.nullable)).collect();
    }
    Ok(())
}

/// The `(ts, id)` of each row, in the timestamp domain.
fn row_keys(rows: &Rows, spec: &QuerySpec, mode: Mode, table: &str) -> Result<Vec<(Option<i64>, Option<i64>)>> {
    let ts_idx = if !mode.uses_timestamp() {
        None
    } else if spec.ts_extra_column {
        rows.column_index(TS_EXTRA_COLUMN)
    } else {
        spec.ts_expr.as_deref().and_then(|q| rows.column_index(&unquote(q)))
    };
    let id_idx = if mode.uses_incrementing() {
        spec.id_col.as_deref().and_then(|q| rows.column_index(&unquote(q)))
    } else {
        None
    };
    let bad = |what: &str, v: &SqlValue| {
        ConnectError::external(
            CLASS,
            format!("reading {table}"),
            format!("the {what} column holds {}, not a comparable value", v.describe()),
        )
    };
    rows.rows
        .iter()
        .map(|r| {
            let ts = match ts_idx.map(|i| &r[i]) {
                None => None,
                Some(SqlValue::Int(v)) => Some(*v),
                Some(SqlValue::Timestamp(us)) => Some(spec.ts_unit.to_domain(*us)),
                Some(v) => return Err(bad("timestamp", v)),
            };
            let id = match id_idx.map(|i| &r[i]) {
                None => None,
                Some(SqlValue::Int(v)) => Some(*v),
                Some(v) => return Err(bad("incrementing", v)),
            };
            Ok((ts, id))
        })
        .collect()
}

fn unquote(q: &str) -> String {
    q.strip_prefix('"').and_then(|s| s.strip_suffix('"')).map_or_else(|| q.to_owned(), |s| s.replace("\"\"", "\""))
}

/// Records (and failures) for `rows`, with the table's offset after them.
fn build_batch(t: &mut TableReader, spec: &QuerySpec, mut rows: Rows, offset: Option<Json>) -> SourceBatch {
    if spec.ts_extra_column {
        if let Some(i) = rows.column_index(TS_EXTRA_COLUMN) {
            rows.columns.remove(i);
            for r in &mut rows.rows {
                r.remove(i);
            }
        }
    }
    rows.infer_unknown_types();
    for c in &mut rows.columns {
        c.nullable = t.nullable.get(&c.name).copied().unwrap_or(true);
    }
    let key_idx: Vec<usize> = t.key_columns.iter().filter_map(|k| rows.column_index(k)).collect();
    let cached = matches!(&t.schema_cache, Some((cols, _, _)) if *cols == rows.columns);
    if !cached {
        let value_schema = Arc::new(struct_schema(&t.name, &rows.columns));
        let key_schema = (!key_idx.is_empty() && key_idx.len() == t.key_columns.len()).then(|| {
            let cols: Vec<Column> = key_idx.iter().map(|i| rows.columns[*i].clone()).collect();
            Arc::new(struct_schema(&format!("{}.Key", t.name), &cols))
        });
        t.schema_cache = Some((rows.columns.clone(), value_schema, key_schema));
    }
    let Some((_, value_schema, key_schema)) = t.schema_cache.clone() else { return SourceBatch::default() };
    let mut batch =
        SourceBatch { records: Vec::with_capacity(rows.rows.len()), offsets: Vec::new(), failed: Vec::new() };
    for row in rows.rows {
        let mut obj = Map::with_capacity(row.len());
        let mut error = None;
        for (c, v) in rows.columns.iter().zip(&row) {
            let j = v.to_json(c.sql_type).unwrap_or_else(|e| {
                error.get_or_insert_with(|| format!("column {}: {e}", c.name));
                v.to_json(SqlType::Unknown).unwrap_or(Json::Null)
            });
            obj.insert(c.name.clone(), j);
        }
        let key = key_schema.as_ref().map(|_| {
            Json::Object(
                key_idx
                    .iter()
                    .map(|i| {
                        (rows.columns[*i].name.clone(), obj.get(&rows.columns[*i].name).cloned().unwrap_or(Json::Null))
                    })
                    .collect(),
            )
        });
        let mut record = ConnectRecord::new(t.topic.clone(), Some(Value::Json(Json::Object(obj))));
        record.key = key.map(Value::Json);
        record.key_schema = key_schema.clone();
        record.value_schema = Some(value_schema.clone());
        match error {
            None => batch.records.push(record),
            Some(reason) => batch.failed.push(FailedRecord {
                record,
                error: Arc::new(ConnectError::external(CLASS, format!("converting a row of {}", t.name), reason)),
                stage: "TASK_POLL",
                class_name: CLASS.into(),
            }),
        }
    }
    if let Some(o) = offset {
        batch.offsets.push((t.partition.clone(), o));
    }
    batch
}

impl SourceTask for JdbcSourceTask {
    fn start(&mut self, config: &Props, context: &SourceTaskContext) -> Result<()> {
        let cfg = JdbcSourceConfig::parse(config)?;
        let stored = context.offsets.offsets();
        let offset_of = |p: &Json| stored.iter().find(|(sp, _)| sp == p).map(|(_, o)| o.clone());
        let now = Instant::now();
        let reader = |name: String, is_query: bool, topic: String, partition: Json| TableReader {
            stored_offset: offset_of(&partition).filter(|o| !o.is_null()),
            name,
            is_query,
            topic: Arc::from(topic.as_str()),
            partition,
            spec: None,
            key_columns: Vec::new(),
            nullable: BTreeMap::new(),
            pos: Position::default(),
            next_poll: now,
            ts_wall_clock: false,
            bulk_by_rowid: false,
            bulk_after: None,
            cursor: None,
            schema_cache: None,
        };
        self.tables = if cfg.query.is_some() {
            vec![reader("query".into(), true, cfg.topic_prefix.clone(), json!({"query": "query"}))]
        } else {
            let mut tables = if cfg.tables.is_empty() { cfg.whitelist.clone() } else { cfg.tables.clone() };
            dedup_in_order(&mut tables);
            if tables.is_empty() {
                return Err(ConnectError::config("tables", "the task has no tables (table.whitelist or query)"));
            }
            tables
                .into_iter()
                .map(|name| {
                    let topic = format!("{}{name}", cfg.topic_prefix);
                    let partition = json!({"table": name});
                    reader(name, false, topic, partition)
                })
                .collect()
        };
        self.cfg = Some(cfg);
        Ok(())
    }

    fn poll(&mut self, timeout: Duration) -> Result<Option<SourceBatch>> {
        let deadline = Instant::now() + timeout;
        loop {
            let now = Instant::now();
            if let Some(at) = self.reconnect_at {
                if now < at {
                    std::thread::sleep(at.min(deadline).saturating_duration_since(now));
                    return Ok(None);
                }
                self.reconnect_at = None;
            }
            if self.db.is_none() {
                match self.cfg()?.open() {
                    Ok(db) => self.db = Some(db),
                    Err(e) => return self.on_db_error(e),
                }
            }
            let n = self.tables.len();
            // A bulk pass in progress is finished before another table's starts: a PostgreSQL
            // cursor lives in a transaction of this connection, one at a time.
            let due = self
                .tables
                .iter()
                .position(|t| t.cursor.is_some())
                .or_else(|| (0..n).map(|k| (self.next_table + k) % n).find(|&i| self.tables[i].next_poll <= now));
            if let Some(i) = due {
                self.next_table = (i + 1) % n;
                match self.step(i) {
                    Ok(Some(batch)) => {
                        self.failures = 0;
                        return Ok(Some(batch));
                    }
                    Ok(None) => {
                        self.failures = 0;
                        continue;
                    }
                    Err(e @ ConnectError::Config { .. }) => return Err(e),
                    Err(e) if self.db.as_ref().is_some_and(Database::is_alive) && !is_transient(&e) => {
                        // A live connection refusing the query (missing table or column, too
                        // many tied rows) will refuse it again: report it now.
                        return Err(e);
                    }
                    Err(e) => return self.on_db_error(e),
                }
            }
            let next = self.tables.iter().map(|t| t.next_poll).min().unwrap_or(deadline);
            if now >= deadline {
                return Ok(None);
            }
            std::thread::sleep(next.min(deadline).saturating_duration_since(now).max(Duration::from_millis(1)));
        }
    }

    fn stop(&mut self) {
        if let Some(db) = self.db.as_mut() {
            for t in &mut self.tables {
                if let Some(mut c) = t.cursor.take() {
                    let _ = c.close(db);
                }
            }
        }
        self.db = None;
    }
}

#[cfg(test)]
mod tests;
