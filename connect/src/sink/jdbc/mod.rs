//! The JDBC-style sink (`JdbcSinkConnector`, alias `io.confluent.connect.jdbc.JdbcSinkConnector`):
//! writes records into tables of SQLite (`connection.url` = `sqlite:PATH`) or PostgreSQL
//! (`postgresql://…`), with Confluent's JDBC sink keys: `insert.mode` (insert, upsert, update),
//! `pk.mode` (none, kafka, record_key, record_value) and `pk.fields`, `fields.whitelist`,
//! `auto.create`, `auto.evolve`, `delete.enabled`, `table.name.format`, `batch.size`,
//! `max.retries`, `retry.backoff.ms`.
//!
//! **Shape.** [`row`] maps a record to a row (columns, values, types; with or without a Connect
//! schema), [`plan`] folds a chunk per key and groups rows by shape, [`sql`] writes the SQL per
//! dialect; all three are sans-IO. This file is the shell: it runs each `batch.size` chunk of a
//! `put` in ONE transaction (create/evolve the table, one statement per group, the offsets row
//! when exactly-once is on, commit), through [`conn`]. Without exactly-once the [`Writer`] runs on
//! a thread of its own one `put` behind ([`JdbcSinkTask`]), so the database's time and the
//! runtime's fetch and JSON conversion overlap.
//!
//! **Failures.** A record that cannot be written (not an object, no key, a missing key field, a
//! value its column refuses, a constraint) comes back as a failed record (the dead-letter queue
//! by `errors.tolerance`), and only that record: PostgreSQL chunks that hit such a row are
//! redone row by row under savepoints; SQLite rolls back only the failing statement. A database
//! that is down is retried `max.retries` times, `retry.backoff.ms` apart, reconnecting; then the
//! task fails with the database's error. A missing table without `auto.create`, or an upsert key
//! without a unique constraint, fails the task at once (the setup's fault).
//!
//! **Exactly once** (`exactly.once=true`): each chunk also upserts `(connector, topic,
//! partition, next_offset)` rows in `offsets.table.name` inside the same transaction. `open`
//! reads them and returns them as the start offsets, `put` drops records below them (the
//! consumer may deliver from an older group commit before the seek applies), and `pre_commit`
//! reports them: after a crash at any point each record's effect is in the table exactly once.
//! Offsets are keyed by where the record was read (`KafkaCoordinates`), not by the topic a
//! transform may have renamed it to (the table name comes from the latter). The offsets row is a
//! compare-and-set against the offset this task last saw: a COMMIT whose answer was lost or a
//! zombie task writing a reassigned partition makes it fail, and the chunk is redone after
//! re-reading the offsets. A connection is pinned from `BEGIN` to `COMMIT`: lost in between, the
//! attempt fails and the retry redoes the whole chunk on a new one.

mod conn;
mod plan;
mod row;
mod sql;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{mpsc, Arc};
use std::thread::JoinHandle;
use std::time::Duration;

use spate_client::TopicPartition;
use tracing::{info, warn};

use self::conn::{prepare_pg, Conn, DbError, Fault, PgColumn};
use self::plan::{plan, Group, InsertMode, Kind};
use self::row::{Cell, Op, PkMode, RowMapper, SqlType};
use self::sql::{Flavor, PgArray};
use crate::config::{ConfigDef, ConfigType, Importance, ParsedConfig, Props, Validator};
use crate::connector::{Connector, ConnectorType, FailedRecord, SinkTask, SinkTaskContext};
use crate::error::{ConnectError, Result};
use crate::record::ConnectRecord;

const CLASS: &str = "JdbcSinkConnector";

/// How long a connection attempt (and an SQLite lock wait) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The JDBC sink connector.
#[derive(Debug, Clone, Copy, Default)]
pub struct JdbcSinkConnector;

fn config_def() -> ConfigDef {
    ConfigDef::new()
        .define(
            "connection.url",
            ConfigType::String,
            None,
            Importance::High,
            "The database: sqlite:PATH (a file, created if missing) or postgresql://[user[:password]@]host[:port]/db \
             (jdbc:postgresql:// and jdbc:sqlite: are accepted too).",
        )
        .with_validator(Validator::Custom(|v| conn::parse_url(v).map(|_| ())))
        .in_group("Connection")
        .define(
            "connection.user",
            ConfigType::String,
            Some(""),
            Importance::High,
            "PostgreSQL user (overrides the URL's).",
        )
        .in_group("Connection")
        .define(
            "connection.password",
            ConfigType::Password,
            Some(""),
            Importance::High,
            "PostgreSQL password (overrides the URL's).",
        )
        .in_group("Connection")
        .define(
            "insert.mode",
            ConfigType::String,
            Some("insert"),
            Importance::High,
            "insert: plain INSERT. upsert: INSERT … ON CONFLICT (primary key) DO UPDATE (needs a pk.mode). update: \
             UPDATE … WHERE primary key (rows that do not exist are not created).",
        )
        .with_validator(Validator::OneOf(&["insert", "upsert", "update"]))
        .in_group("Writes")
        .define(
            "pk.mode",
            ConfigType::String,
            Some("none"),
            Importance::High,
            "Where the primary key comes from. none: no key. kafka: the record's topic, partition and offset \
             (pk.fields names the three columns, default __connect_topic,__connect_partition,__connect_offset). \
             record_key: the record key (its fields, or the key itself when it is a primitive, named by the one \
             pk.fields entry). record_value: fields of the value (pk.fields; empty: all of them).",
        )
        .with_validator(Validator::OneOf(&["none", "kafka", "record_key", "record_value"]))
        .in_group("Data mapping")
        .define("pk.fields", ConfigType::List, Some(""), Importance::Medium, "The primary key columns (see pk.mode).")
        .in_group("Data mapping")
        .define(
            "fields.whitelist",
            ConfigType::List,
            Some(""),
            Importance::Medium,
            "Value fields to write (empty: all). Primary key fields are always written.",
        )
        .in_group("Data mapping")
        .define(
            "table.name.format",
            ConfigType::String,
            Some("${topic}"),
            Importance::Medium,
            "The table to write, ${topic} replaced by the record's topic. One dot on PostgreSQL means \
             schema.table.",
        )
        .with_validator(Validator::NonEmpty)
        .in_group("Data mapping")
        .define(
            "delete.enabled",
            ConfigType::Boolean,
            Some("false"),
            Importance::Medium,
            "Whether a record with a null value (a tombstone) deletes the row with its key. Needs \
             pk.mode=record_key. When false, tombstones are failed records (the dead-letter queue).",
        )
        .in_group("Writes")
        .define(
            "auto.create",
            ConfigType::Boolean,
            Some("false"),
            Importance::Medium,
            "Create a missing table (CREATE TABLE with the primary key; column types from the record's schema, or \
             inferred from its JSON values).",
        )
        .in_group("DDL support")
        .define(
            "auto.evolve",
            ConfigType::Boolean,
            Some("false"),
            Importance::Medium,
            "Add a nullable column (ALTER TABLE ADD COLUMN) for a field the table lacks. When false, such records \
             are failed records.",
        )
        .in_group("DDL support")
        .define(
            "batch.size",
            ConfigType::Int,
            Some("3000"),
            Importance::Medium,
            "Records per transaction: a put's records are written in chunks of this many, each chunk in one \
             transaction. A put holds at most the consumer's max.poll.records (consumer.override.max.poll.records).",
        )
        .with_validator(Validator::Range { min: 1.0, max: 1_000_000.0 })
        .in_group("Writes")
        .define(
            "max.retries",
            ConfigType::Int,
            Some("10"),
            Importance::Medium,
            "Retries of a chunk after a database error that is not the data's (connection lost, lock) before the \
             task fails.",
        )
        .with_validator(Validator::Range { min: 0.0, max: 1_000_000.0 })
        .in_group("Retries")
        .define(
            "retry.backoff.ms",
            ConfigType::Int,
            Some("3000"),
            Importance::Medium,
            "Wait between retries, in milliseconds.",
        )
        .with_validator(Validator::Range { min: 0.0, max: 86_400_000.0 })
        .in_group("Retries")
        .define(
            "exactly.once",
            ConfigType::Boolean,
            Some("false"),
            Importance::Medium,
            "Store each partition's next offset in offsets.table.name in the same transaction as the rows, and \
             resume from it: every record is applied exactly once, also across crashes.",
        )
        .in_group("Writes")
        .define(
            "offsets.table.name",
            ConfigType::String,
            Some("__spate_connect_offsets"),
            Importance::Low,
            "The table of the exactly-once offsets (connector, topic, partition, next_offset), created if missing.",
        )
        .with_validator(Validator::NonEmpty)
        .in_group("Writes")
}

/// The validated config.
#[derive(Debug, Clone)]
struct SinkConfig {
    url: String,
    user: String,
    password: String,
    insert_mode: InsertMode,
    pk_mode: PkMode,
    pk_fields: Vec<String>,
    whitelist: Vec<String>,
    table_format: String,
    delete_enabled: bool,
    auto_create: bool,
    auto_evolve: bool,
    batch_size: usize,
    max_retries: u32,
    retry_backoff: Duration,
    exactly_once: bool,
    offsets_table: String,
}

impl SinkConfig {
    fn parse(props: &Props) -> Result<SinkConfig> {
        let c: ParsedConfig = config_def().parse(props)?;
        let s = |k: &str| c.get_str(k).unwrap_or("").trim().to_owned();
        let insert_mode = match c.get_str("insert.mode") {
            Some("upsert") => InsertMode::Upsert,
            Some("update") => InsertMode::Update,
            _ => InsertMode::Insert,
        };
        let pk_mode = match c.get_str("pk.mode") {
            Some("kafka") => PkMode::Kafka,
            Some("record_key") => PkMode::RecordKey,
            Some("record_value") => PkMode::RecordValue,
            _ => PkMode::None,
        };
        let pk_fields = c.get_list("pk.fields");
        let delete_enabled = c.get_bool("delete.enabled")?.unwrap_or(false);
        if delete_enabled && pk_mode != PkMode::RecordKey {
            return Err(ConnectError::config("delete.enabled", "delete.enabled=true needs pk.mode=record_key"));
        }
        if insert_mode != InsertMode::Insert && pk_mode == PkMode::None {
            return Err(ConnectError::config(
                "pk.mode",
                "insert.mode=upsert and insert.mode=update need a primary key: set pk.mode",
            ));
        }
        if pk_mode == PkMode::Kafka && !(pk_fields.is_empty() || pk_fields.len() == 3) {
            return Err(ConnectError::config(
                "pk.fields",
                "pk.mode=kafka takes three column names (topic, partition, offset) or none",
            ));
        }
        Ok(SinkConfig {
            url: s("connection.url"),
            user: s("connection.user"),
            password: c.get_str("connection.password").unwrap_or("").to_owned(),
            insert_mode,
            pk_mode,
            pk_fields,
            whitelist: c.get_list("fields.whitelist"),
            table_format: s("table.name.format"),
            delete_enabled,
            auto_create: c.get_bool("auto.create")?.unwrap_or(false),
            auto_evolve: c.get_bool("auto.evolve")?.unwrap_or(false),
            batch_size: c.get_i64("batch.size")?.unwrap_or(3000).max(1) as usize,
            max_retries: c.get_i64("max.retries")?.unwrap_or(10).max(0) as u32,
            retry_backoff: Duration::from_millis(c.get_i64("retry.backoff.ms")?.unwrap_or(3000).max(0) as u64),
            exactly_once: c.get_bool("exactly.once")?.unwrap_or(false),
            offsets_table: s("offsets.table.name"),
        })
    }

    fn table_for(&self, topic: &str) -> String {
        self.table_format.replace("${topic}", topic)
    }
}

impl Connector for JdbcSinkConnector {
    fn class(&self) -> &'static str {
        CLASS
    }

    fn aliases(&self) -> &'static [&'static str] {
        &["io.confluent.connect.jdbc.JdbcSinkConnector", "JdbcSink"]
    }

    fn kind(&self) -> ConnectorType {
        ConnectorType::Sink
    }

    fn config_def(&self) -> ConfigDef {
        config_def()
    }

    fn validate(&self, config: &Props) -> Vec<(String, String)> {
        match SinkConfig::parse(config) {
            Err(ConnectError::Config { key, reason }) => vec![(key, reason)],
            _ => Vec::new(),
        }
    }

    /// `tasks.max` tasks: the consumer group spreads the partitions over them.
    fn task_configs(&self, config: &Props, max_tasks: usize) -> Result<Vec<Props>> {
        SinkConfig::parse(config)?;
        Ok(vec![config.clone(); max_tasks.max(1)])
    }

    fn sink_task(&self) -> Result<Box<dyn SinkTask>> {
        Ok(Box::new(JdbcSinkTask::Idle))
    }
}

/// A table's columns as the database has them (name, type for coercion).
type TableColumns = Vec<(String, SqlType)>;

/// Writes records synchronously: each `put` returns once its chunks are committed. The task
/// itself when `exactly.once` is on; otherwise it runs on a thread of its own behind
/// [`JdbcSinkTask`].
#[derive(Default)]
pub(crate) struct Writer {
    cfg: Option<Arc<SinkConfig>>,
    connector: String,
    conn: Option<Conn>,
    mapper: Option<RowMapper>,
    /// Tables seen in this transaction or an earlier committed one (cleared on rollback: it may
    /// have undone our DDL).
    tables: HashMap<String, TableColumns>,
    /// Exactly-once: the next offset stored in the database per partition.
    db_offsets: HashMap<(Arc<str>, i32), i64>,
    /// Between `BEGIN` and `COMMIT`: the connection is pinned (see [`Writer::conn`]).
    in_tx: bool,
    /// Set by the task's `stop` (from another thread when the writer has its own): retries end.
    stopping: Arc<AtomicBool>,
}

/// Redos of a chunk because the stored offsets moved under it, at most (each re-reads them
/// first, so a second one means another task keeps writing the same partition).
const STALE_REDOS_MAX: u32 = 10;

/// Records of one chunk, mapped and grouped by table.
struct Mapped {
    tables: Vec<(String, Vec<(u32, Op)>)>,
    offsets: Vec<((Arc<str>, i32), i64)>,
    failed: Vec<(u32, ConnectError)>,
}

impl Writer {
    fn cfg(&self) -> Result<Arc<SinkConfig>> {
        self.cfg.clone().ok_or_else(|| ConnectError::Internal("jdbc sink task used before start".into()))
    }

    /// The connection; (re)connects only outside a transaction. Inside one (from `BEGIN` to
    /// `COMMIT`) a lost connection is an error for the whole attempt: a new connection would run
    /// the rest of the chunk in autocommit and commit part of the transaction.
    fn conn(&mut self) -> Result<&mut Conn, DbError> {
        if self.in_tx {
            return match self.conn.as_mut() {
                Some(c) if !c.is_closed() => Ok(c),
                _ => Err(DbError::transient("the database connection was lost in the middle of a transaction")),
            };
        }
        if self.conn.as_ref().is_some_and(Conn::is_closed) {
            self.conn = None;
        }
        if self.conn.is_none() {
            let cfg = self.cfg.clone().ok_or_else(|| DbError::fatal("not started"))?;
            self.conn = Some(Conn::open(&cfg.url, &cfg.user, &cfg.password, CONNECT_TIMEOUT)?);
        }
        Ok(self.conn.as_mut().expect("opened above"))
    }

    fn db_failure(&self, what: &str, e: &DbError) -> ConnectError {
        ConnectError::external(&self.connector, what, e)
    }

    /// Runs `op` with the configured retries for passing failures (reconnecting).
    fn with_retries<T>(&mut self, what: &str, mut op: impl FnMut(&mut Self) -> Result<T, DbError>) -> Result<T> {
        let cfg = self.cfg()?;
        let mut attempt = 0;
        loop {
            match op(self) {
                Ok(v) => return Ok(v),
                Err(e) if e.fault == Fault::Transient && attempt < cfg.max_retries => {
                    attempt += 1;
                    warn!(connector = %self.connector, error = %e, attempt, "{what} failed; retrying (max.retries)");
                    self.reset_after_failure();
                    self.backoff(cfg.retry_backoff)?;
                }
                Err(e) => return Err(self.db_failure(&format!("{what} (after {attempt} retries)"), &e)),
            }
        }
    }

    /// After a failed transaction: roll back (if the connection still works) and forget what it
    /// may have undone.
    fn reset_after_failure(&mut self) {
        self.in_tx = false;
        if let Some(c) = self.conn.as_mut() {
            if c.batch("ROLLBACK").is_err() && c.flavor() == Flavor::Postgres {
                self.conn = None;
            } else {
                c.forget_statements();
            }
        }
        self.tables.clear();
    }

    fn read_offsets(&mut self) -> Result<(), DbError> {
        let cfg = self.cfg.clone().ok_or_else(|| DbError::fatal("not started"))?;
        let connector = self.connector.clone();
        let conn = self.conn()?;
        let flavor = conn.flavor();
        let rows = conn.read_offsets(&sql::select_offsets(flavor, &cfg.offsets_table), &connector)?;
        self.db_offsets = rows.into_iter().map(|(t, p, o)| ((Arc::from(t.as_str()), p), o)).collect();
        Ok(())
    }

    /// Writes one chunk in one transaction; returns the records that could not be written.
    fn write_chunk(&mut self, records: &[ConnectRecord]) -> Result<Vec<FailedRecord>> {
        let cfg = self.cfg()?;
        let mut isolate = false;
        let mut attempt = 0;
        let mut stale = 0;
        // Exactly-once: the stored offsets must be read again before the next write (after a
        // failure the commit may have happened with only its answer lost). A failed read is a
        // reason to retry, never to write with what we believed before.
        let mut reread = false;
        loop {
            let result = if reread { self.read_offsets() } else { Ok(()) };
            let result = result.and_then(|()| {
                reread = false;
                self.attempt(&cfg, records, isolate)
            });
            match result {
                Ok(failed) => return Ok(failed),
                Err(e) => {
                    self.reset_after_failure();
                    match e.fault {
                        // A row the database refused inside a multi-row statement: redo the
                        // chunk row by row to find it (and only it).
                        Fault::Data if !isolate => isolate = true,
                        Fault::Stale if stale < STALE_REDOS_MAX => {
                            stale += 1;
                            warn!(connector = %self.connector, error = %e, "stored offsets moved; re-reading them and redoing the batch");
                            reread = true;
                        }
                        Fault::Transient if attempt < cfg.max_retries => {
                            attempt += 1;
                            warn!(connector = %self.connector, error = %e, attempt, "writing a batch failed; retrying (max.retries)");
                            self.backoff(cfg.retry_backoff)?;
                            reread = cfg.exactly_once;
                        }
                        _ => {
                            return Err(self.db_failure(
                                &format!("writing {} records (after {attempt} retries)", records.len()),
                                &e,
                            ))
                        }
                    }
                }
            }
        }
    }

    /// Waits `d` between retries, in slices, giving up when the task is stopping.
    fn backoff(&self, d: Duration) -> Result<()> {
        let until = std::time::Instant::now() + d;
        loop {
            if self.stopping.load(Ordering::Relaxed) {
                return Err(ConnectError::Stopping);
            }
            let now = std::time::Instant::now();
            if now >= until {
                return Ok(());
            }
            std::thread::sleep((until - now).min(Duration::from_millis(100)));
        }
    }

    /// Maps the chunk's records to operations per table (dropping those already stored when
    /// exactly-once is on).
    fn map(&mut self, cfg: &SinkConfig, records: &[ConnectRecord]) -> Mapped {
        let mut m = Mapped { tables: Vec::new(), offsets: Vec::new(), failed: Vec::new() };
        let mapper = self.mapper.get_or_insert_with(|| {
            RowMapper::new(cfg.pk_mode, cfg.pk_fields.clone(), cfg.whitelist.clone(), cfg.delete_enabled)
        });
        let mut last_topic: Option<Arc<str>> = None;
        let mut table_idx = 0;
        for (i, r) in records.iter().enumerate() {
            if let Some(k) = &r.kafka {
                // Offsets are the consumer's: keyed by where the record was read, not by the
                // topic a transform (RegexRouter) may have renamed it to.
                let tp = (k.topic.clone(), k.partition);
                if cfg.exactly_once && self.db_offsets.get(&tp).is_some_and(|&stored| k.offset < stored) {
                    continue;
                }
                match m.offsets.iter_mut().find(|(t, _)| *t == tp) {
                    Some((_, next)) => *next = (*next).max(k.offset + 1),
                    None => m.offsets.push((tp, k.offset + 1)),
                }
            }
            if last_topic.as_ref() != Some(&r.topic) {
                let table = cfg.table_for(&r.topic);
                table_idx = match m.tables.iter().position(|(t, _)| *t == table) {
                    Some(i) => i,
                    None => {
                        m.tables.push((table, Vec::new()));
                        m.tables.len() - 1
                    }
                };
                last_topic = Some(r.topic.clone());
            }
            match mapper.map(r) {
                Ok(op) => m.tables[table_idx].1.push((i as u32, op)),
                Err(reason) => {
                    m.failed.push((i as u32, ConnectError::Conversion { what: "value", converter: CLASS, reason }))
                }
            }
        }
        m
    }

    fn attempt(
        &mut self,
        cfg: &SinkConfig,
        records: &[ConnectRecord],
        isolate: bool,
    ) -> Result<Vec<FailedRecord>, DbError> {
        let Mapped { tables, offsets, mut failed } = self.map(cfg, records);
        self.in_tx = false;
        let conn = self.conn()?;
        // SQLite: take the write lock now (two writers serialize here, not fail at the upgrade).
        conn.batch(if conn.flavor() == Flavor::Sqlite { "BEGIN IMMEDIATE" } else { "BEGIN" })?;
        self.in_tx = true;
        for (table, mut ops) in tables {
            self.coerce_keys(&table, &mut ops)?;
            for group in plan(cfg.insert_mode, ops) {
                self.write_group(cfg, &table, group, isolate, &mut failed)?;
            }
        }
        if cfg.exactly_once && !offsets.is_empty() {
            let connector = self.connector.clone();
            let expected: Vec<Cell> =
                offsets.iter().map(|(tp, _)| self.db_offsets.get(tp).map_or(Cell::Null, |o| Cell::Int(*o))).collect();
            let conn = self.conn()?;
            let sql = sql::upsert_offset(conn.flavor(), &cfg.offsets_table);
            for ((tp, next), expected) in offsets.iter().zip(expected) {
                let params = [
                    Cell::Text(connector.clone()),
                    Cell::Text(tp.0.to_string()),
                    Cell::Int(i64::from(tp.1)),
                    Cell::Int(*next),
                    expected,
                ];
                // Fencing: the row is locked by the write; it moves only from what we read.
                if conn.execute_scalars(&sql, &params)? != 1 {
                    return Err(DbError {
                        fault: Fault::Stale,
                        message: format!(
                            "the stored offset of {}-{} is not the one this task expects (a commit whose answer \
                             was lost, or another task writing the partition)",
                            tp.0, tp.1
                        ),
                    });
                }
            }
        }
        self.conn()?.batch("COMMIT")?;
        self.in_tx = false;
        if cfg.exactly_once {
            self.db_offsets.extend(offsets);
        }
        failed.sort_by_key(|(i, _)| *i);
        Ok(failed
            .into_iter()
            .map(|(i, e)| FailedRecord {
                record: records[i as usize].clone(),
                error: Arc::new(e),
                stage: "TASK_PUT",
                class_name: CLASS.to_owned(),
            })
            .collect())
    }

    /// Runs a group's DDL. An error that is the records' (a name or a column count the database
    /// refuses) comes back as `Some(reason)` where the transaction survives it (row by row on
    /// PostgreSQL, under a savepoint; SQLite rolls back only the statement); otherwise it is
    /// the attempt's error (on PostgreSQL the chunk is then redone row by row).
    fn ddl(&mut self, sql: &str, isolate: bool) -> Result<Option<String>, DbError> {
        let conn = self.conn()?;
        match conn.flavor() {
            Flavor::Postgres if !isolate => conn.batch(sql).map(|()| None),
            Flavor::Postgres => {
                conn.batch("SAVEPOINT spate_ddl")?;
                match conn.batch(sql) {
                    Ok(()) => conn.batch("RELEASE SAVEPOINT spate_ddl").map(|()| None),
                    Err(e) if e.fault == Fault::Data => {
                        conn.batch("ROLLBACK TO SAVEPOINT spate_ddl")?;
                        Ok(Some(e.message))
                    }
                    Err(e) => Err(e),
                }
            }
            Flavor::Sqlite => match conn.batch(sql) {
                Err(e) if e.fault == Fault::Data => Ok(Some(e.message)),
                r => r.map(|()| None),
            },
        }
    }

    /// Coerces the key cells to the existing table's column types before the plan folds per key,
    /// so keys that the column makes equal (1, "1", 1.0 into an integer key) fold together
    /// (PostgreSQL refuses one statement that touches a row twice). Keys that do not fit are
    /// left as they are: the write refuses them.
    fn coerce_keys(&mut self, table: &str, ops: &mut [(u32, Op)]) -> Result<(), DbError> {
        if ops.is_empty() || self.conn()?.flavor() != Flavor::Postgres {
            return Ok(());
        }
        let Some(existing) = self.table_columns(table)? else { return Ok(()) };
        let mut last: Option<(Arc<row::Columns>, Vec<Option<SqlType>>)> = None;
        for (_, op) in ops.iter_mut() {
            let row = op.row_mut();
            let types = match &last {
                Some((cols, types)) if Arc::ptr_eq(cols, &row.cols) => types,
                _ => {
                    let types = row.cols.names[..row.cols.pk_len]
                        .iter()
                        .map(|name| {
                            existing
                                .iter()
                                .find(|(n, _)| n == name)
                                .or_else(|| existing.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)))
                                .map(|(_, t)| t.clone())
                        })
                        .collect();
                    &last.insert((row.cols.clone(), types)).1
                }
            };
            for (cell, ty) in row.cells.iter_mut().zip(types) {
                let Some(ty) = ty else { continue };
                if let Ok(c) = cell.clone().coerce(ty) {
                    *cell = c;
                }
            }
        }
        Ok(())
    }

    /// The table's columns, read once per transaction (`None`: it does not exist).
    fn table_columns(&mut self, table: &str) -> Result<Option<TableColumns>, DbError> {
        if let Some(cols) = self.tables.get(table) {
            return Ok(Some(cols.clone()));
        }
        let conn = self.conn()?;
        let flavor = conn.flavor();
        let Some(cols) = conn.table_columns(table)? else { return Ok(None) };
        let cols: TableColumns = cols
            .into_iter()
            .map(|(n, t)| {
                let ty = sql::type_from_db(flavor, &t);
                (n, ty)
            })
            .collect();
        self.tables.insert(table.to_owned(), cols.clone());
        Ok(Some(cols))
    }

    fn write_group(
        &mut self,
        cfg: &SinkConfig,
        table: &str,
        mut g: Group,
        isolate: bool,
        failed: &mut Vec<(u32, ConnectError)>,
    ) -> Result<(), DbError> {
        let flavor = self.conn()?.flavor();
        let pk_len = g.cols.pk_len;
        let refuse = |failed: &mut Vec<(u32, ConnectError)>, sources: &[u32], reason: &str| {
            for s in sources {
                failed.push((*s, ConnectError::external(CLASS, format!("writing to table {table}"), reason)));
            }
        };
        let mut existing = match self.table_columns(table)? {
            Some(cols) => cols,
            None if g.kind == Kind::Delete => return Ok(()),
            None if !cfg.auto_create => {
                return Err(DbError::fatal(format!(
                    "table {table} does not exist and auto.create=false (create it, or set auto.create=true)"
                )))
            }
            None => {
                let cols: Vec<(&str, SqlType)> =
                    g.cols.names.iter().enumerate().map(|(i, n)| (n.as_str(), column_type(&g, i))).collect();
                if let Some(why) = self.ddl(&sql::create_table(flavor, table, &cols, pk_len), isolate)? {
                    let sources: Vec<u32> = g.sources.iter().flatten().copied().collect();
                    refuse(failed, &sources, &format!("creating the table: {why}"));
                    return Ok(());
                }
                info!(connector = %self.connector, %table, "created table (auto.create)");
                self.tables.remove(table);
                self.table_columns(table)?
                    .ok_or_else(|| DbError::fatal(format!("table {table} vanished after CREATE")))?
            }
        };
        // Resolve each column against the table: its spelling and type there.
        let mut names: Vec<String> = Vec::with_capacity(g.cols.names.len());
        let mut types: Vec<SqlType> = Vec::with_capacity(g.cols.names.len());
        let mut dropped: Vec<usize> = Vec::new();
        for (i, name) in g.cols.names.iter().enumerate() {
            let found = existing
                .iter()
                .find(|(n, _)| n == name)
                .or_else(|| existing.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)));
            if let Some((n, t)) = found {
                names.push(n.clone());
                types.push(t.clone());
            } else if i >= pk_len && g.rows.iter().all(|r| r[i] == Cell::Null) {
                // Null everywhere: the same as not writing the column.
                dropped.push(i);
            } else if cfg.auto_evolve {
                let ty = column_type(&g, i);
                let ddl = sql::add_column(flavor, table, name, &ty);
                let ddl = match flavor {
                    // Two tasks may evolve the same table at once.
                    Flavor::Postgres => ddl.replacen("ADD COLUMN", "ADD COLUMN IF NOT EXISTS", 1),
                    Flavor::Sqlite => ddl,
                };
                if let Some(why) = self.ddl(&ddl, isolate)? {
                    let sources: Vec<u32> = g.sources.iter().flatten().copied().collect();
                    refuse(failed, &sources, &format!("adding column {name}: {why}"));
                    return Ok(());
                }
                info!(connector = %self.connector, %table, column = %name, "added column (auto.evolve)");
                self.tables.remove(table);
                existing = self.table_columns(table)?.unwrap_or_default();
                let ty = existing.iter().find(|(n, _)| n == name).map_or(ty, |(_, t)| t.clone());
                names.push(name.clone());
                types.push(ty);
            } else {
                let sources: Vec<u32> = g.sources.iter().flatten().copied().collect();
                refuse(failed, &sources, &format!("the table has no column {name} and auto.evolve=false"));
                return Ok(());
            }
        }
        if !dropped.is_empty() {
            for row in &mut g.rows {
                for &i in dropped.iter().rev() {
                    row.remove(i);
                }
            }
        }
        let name_refs: Vec<&str> = names.iter().map(String::as_str).collect();
        match flavor {
            Flavor::Sqlite => {
                let Some(sql) = sql::sqlite_statement(cfg.insert_mode, g.kind, table, &name_refs, pk_len) else {
                    return Ok(());
                };
                let refused = self.conn()?.sqlite_rows(&sql, &g.rows)?;
                for (row, e) in refused {
                    refuse(failed, &g.sources[row], &e.message);
                }
            }
            Flavor::Postgres => {
                let transports: Vec<(PgArray, Option<String>)> = types.iter().map(sql::pg_transport).collect();
                let arrays: Vec<PgArray> = transports.iter().map(|t| t.0).collect();
                let casts: Vec<Option<String>> = transports.into_iter().map(|t| t.1).collect();
                let Some(sql) = sql::pg_statement(cfg.insert_mode, g.kind, table, &name_refs, pk_len, &arrays, &casts)
                else {
                    return Ok(());
                };
                // Coerce every row to the table's types; rows that do not fit fail alone.
                let mut rows: Vec<Vec<Cell>> = Vec::with_capacity(g.rows.len());
                let mut sources: Vec<Vec<u32>> = Vec::with_capacity(g.rows.len());
                for (row, src) in g.rows.into_iter().zip(g.sources) {
                    let coerced: Result<Vec<Cell>, String> = row
                        .into_iter()
                        .enumerate()
                        .map(|(i, c)| {
                            c.coerce(&types[i])
                                .and_then(|c| prepare_pg(arrays[i], c))
                                .map_err(|e| format!("column {}: {e}", names[i]))
                        })
                        .collect();
                    match coerced {
                        Ok(r) => {
                            rows.push(r);
                            sources.push(src);
                        }
                        Err(e) => refuse(failed, &src, &e),
                    }
                }
                if rows.is_empty() {
                    return Ok(());
                }
                let conn = self.conn()?;
                if !isolate {
                    let cols = to_columns(&arrays, rows);
                    let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
                        cols.iter().map(PgColumn::as_param).collect();
                    conn.pg_execute(&sql, &params)?;
                } else {
                    for (row, src) in rows.into_iter().zip(sources) {
                        conn.batch("SAVEPOINT spate_row")?;
                        let cols = to_columns(&arrays, vec![row]);
                        let params: Vec<&(dyn postgres::types::ToSql + Sync)> =
                            cols.iter().map(PgColumn::as_param).collect();
                        match conn.pg_execute(&sql, &params) {
                            Ok(_) => conn.batch("RELEASE SAVEPOINT spate_row")?,
                            Err(e) if e.fault == Fault::Data => {
                                conn.batch("ROLLBACK TO SAVEPOINT spate_row")?;
                                refuse(failed, &src, &e.message);
                            }
                            Err(e) => return Err(e),
                        }
                    }
                }
            }
        }
        Ok(())
    }
}

/// Row-major cells into one array per column.
fn to_columns(arrays: &[PgArray], rows: Vec<Vec<Cell>>) -> Vec<PgColumn> {
    let mut cols: Vec<PgColumn> = arrays.iter().map(|a| PgColumn::with_capacity(*a, rows.len())).collect();
    for row in rows {
        for (col, cell) in cols.iter_mut().zip(row) {
            col.push(cell);
        }
    }
    cols
}

/// The type to declare for column `i` of a group: the schema's, else inferred from the values
/// (integers and floats together make a float column; other mixes, and all nulls, text).
fn column_type(g: &Group, i: usize) -> SqlType {
    if let Some(t) = &g.cols.types[i] {
        return t.clone();
    }
    let mut ty: Option<SqlType> = None;
    for row in &g.rows {
        let Some(t) = row.get(i).and_then(Cell::inferred_type) else { continue };
        ty = Some(match ty {
            None => t,
            Some(prev) if prev == t => prev,
            Some(SqlType::Int64 | SqlType::Float64) if matches!(t, SqlType::Int64 | SqlType::Float64) => {
                SqlType::Float64
            }
            Some(_) => SqlType::Text,
        });
    }
    ty.unwrap_or(SqlType::Text)
}

impl SinkTask for Writer {
    fn start(&mut self, config: &Props, context: &SinkTaskContext) -> Result<()> {
        let cfg = Arc::new(SinkConfig::parse(config)?);
        self.connector = context.connector.clone();
        self.cfg = Some(cfg.clone());
        self.mapper = None;
        self.with_retries("connecting to the database", |t| t.conn().map(|_| ()))?;
        if cfg.exactly_once {
            self.with_retries("creating the offsets table", |t| {
                let conn = t.conn()?;
                let sql = sql::create_offsets_table(conn.flavor(), &cfg.offsets_table);
                conn.batch(&sql)
            })?;
        }
        Ok(())
    }

    fn open(&mut self, partitions: &[TopicPartition]) -> Result<BTreeMap<TopicPartition, i64>> {
        let cfg = self.cfg()?;
        if !cfg.exactly_once {
            return Ok(BTreeMap::new());
        }
        self.with_retries("reading the stored offsets", Writer::read_offsets)?;
        Ok(partitions
            .iter()
            .filter_map(|tp| {
                let key = (Arc::from(tp.topic.as_str()), tp.partition);
                self.db_offsets.get(&key).map(|o| (tp.clone(), *o))
            })
            .collect())
    }

    fn put(&mut self, records: Vec<ConnectRecord>) -> Result<Vec<FailedRecord>> {
        let cfg = self.cfg()?;
        let mut failed = Vec::new();
        for chunk in records.chunks(cfg.batch_size) {
            failed.extend(self.write_chunk(chunk)?);
        }
        Ok(failed)
    }

    /// Every chunk is committed before `put` returns: nothing is buffered.
    fn flush(&mut self) -> Result<()> {
        Ok(())
    }

    fn pre_commit(&mut self, current: &BTreeMap<TopicPartition, i64>) -> Result<BTreeMap<TopicPartition, i64>> {
        if !self.cfg()?.exactly_once {
            return Ok(current.clone());
        }
        Ok(current
            .iter()
            .map(|(tp, o)| {
                let key = (Arc::from(tp.topic.as_str()), tp.partition);
                (tp.clone(), self.db_offsets.get(&key).copied().unwrap_or(*o))
            })
            .collect())
    }

    fn stop(&mut self) {
        self.conn = None;
    }
}

/// The JDBC sink's task. Without `exactly.once` the writes run on a thread of their own, one
/// `put` behind: while the database takes one batch, the runtime reads and converts the next
/// (the two costs overlap instead of adding up). A batch's failed records are then handed back
/// by a later `put`; until they are, `pre_commit` holds their partitions' offsets below them, so
/// a crash replays them rather than losing them. With `exactly.once` the writer is the task
/// itself (its offsets live in the database and must match what was written).
pub(crate) enum JdbcSinkTask {
    Idle,
    Direct(Box<Writer>),
    Pipelined(Pipe),
}

/// The handle of a writer thread.
pub(crate) struct Pipe {
    jobs: Option<mpsc::SyncSender<Vec<ConnectRecord>>>,
    done: mpsc::Receiver<Result<Vec<FailedRecord>>>,
    in_flight: usize,
    /// Failed records of finished writes, for the next `put` to return.
    pending: Vec<FailedRecord>,
    /// A write failed (the task fails with it; later calls repeat why).
    broken: Option<String>,
    thread: Option<JoinHandle<()>>,
    /// The writer's: set on stop so a write retrying against a dead database gives up.
    stopping: Arc<AtomicBool>,
}

/// Batches handed to the writer thread and not yet finished, at most (bounds memory to this
/// many `put`s besides the one being converted).
const IN_FLIGHT_MAX: usize = 1;

impl Pipe {
    fn start(mut writer: Writer) -> Result<Pipe> {
        let stopping = writer.stopping.clone();
        let (jobs, job_rx) = mpsc::sync_channel::<Vec<ConnectRecord>>(IN_FLIGHT_MAX);
        let (done_tx, done) = mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("jdbc-sink-{}", writer.connector))
            .spawn(move || {
                for records in job_rx {
                    let result = writer.put(records);
                    let failed = result.is_err();
                    if done_tx.send(result).is_err() || failed {
                        break;
                    }
                }
                writer.stop();
            })
            .map_err(|e| ConnectError::Internal(format!("cannot start the jdbc sink writer thread: {e}")))?;
        Ok(Pipe {
            jobs: Some(jobs),
            done,
            in_flight: 0,
            pending: Vec::new(),
            broken: None,
            thread: Some(thread),
            stopping,
        })
    }

    fn check(&self) -> Result<()> {
        match &self.broken {
            Some(why) => Err(ConnectError::Internal(format!("the jdbc sink writer failed earlier: {why}"))),
            None => Ok(()),
        }
    }

    /// Takes one finished result, waiting for it when `block`; false when none was there.
    fn collect_one(&mut self, block: bool) -> Result<bool> {
        if self.in_flight == 0 {
            return Ok(false);
        }
        let result = if block {
            self.done.recv().map_err(|_| "the writer thread is gone".to_owned())
        } else {
            match self.done.try_recv() {
                Ok(r) => Ok(r),
                Err(mpsc::TryRecvError::Empty) => return Ok(false),
                Err(mpsc::TryRecvError::Disconnected) => Err("the writer thread is gone".to_owned()),
            }
        };
        self.in_flight -= 1;
        match result {
            Ok(Ok(mut failed)) => {
                self.pending.append(&mut failed);
                Ok(true)
            }
            Ok(Err(e)) => {
                self.broken = Some(e.to_string());
                Err(e)
            }
            Err(why) => {
                self.broken = Some(why.clone());
                Err(ConnectError::Internal(why))
            }
        }
    }

    /// Waits until every batch handed over is written.
    fn drain(&mut self) -> Result<()> {
        self.check()?;
        while self.collect_one(true)? {}
        Ok(())
    }

    fn put(&mut self, records: Vec<ConnectRecord>) -> Result<Vec<FailedRecord>> {
        self.check()?;
        while self.collect_one(false)? {}
        while self.in_flight >= IN_FLIGHT_MAX {
            self.collect_one(true)?;
        }
        if !records.is_empty() {
            let jobs = self.jobs.as_ref().ok_or(ConnectError::Stopping)?;
            jobs.send(records).map_err(|_| ConnectError::Internal("the jdbc sink writer thread is gone".into()))?;
            self.in_flight += 1;
        }
        Ok(std::mem::take(&mut self.pending))
    }

    fn pre_commit(&mut self, current: &BTreeMap<TopicPartition, i64>) -> Result<BTreeMap<TopicPartition, i64>> {
        self.drain()?;
        let mut safe = current.clone();
        // Failed records not yet handed back: their offsets (and later ones) stay uncommitted.
        for f in &self.pending {
            if let Some(k) = &f.record.kafka {
                if let Some(o) = safe.get_mut(&TopicPartition::new(k.topic.to_string(), k.partition)) {
                    *o = (*o).min(k.offset);
                }
            }
        }
        Ok(safe)
    }

    fn stop(&mut self) {
        self.stopping.store(true, Ordering::Relaxed);
        self.jobs = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl SinkTask for JdbcSinkTask {
    fn start(&mut self, config: &Props, context: &SinkTaskContext) -> Result<()> {
        let mut writer = Writer::default();
        writer.start(config, context)?;
        let exactly_once = writer.cfg()?.exactly_once;
        *self = if exactly_once {
            JdbcSinkTask::Direct(Box::new(writer))
        } else {
            JdbcSinkTask::Pipelined(Pipe::start(writer)?)
        };
        Ok(())
    }

    fn open(&mut self, partitions: &[TopicPartition]) -> Result<BTreeMap<TopicPartition, i64>> {
        match self {
            JdbcSinkTask::Direct(w) => w.open(partitions),
            _ => Ok(BTreeMap::new()),
        }
    }

    /// Partitions taken away: their records in flight are written first.
    fn close(&mut self, _partitions: &[TopicPartition]) -> Result<()> {
        match self {
            JdbcSinkTask::Pipelined(p) => p.drain(),
            _ => Ok(()),
        }
    }

    fn put(&mut self, records: Vec<ConnectRecord>) -> Result<Vec<FailedRecord>> {
        match self {
            JdbcSinkTask::Direct(w) => w.put(records),
            JdbcSinkTask::Pipelined(p) => p.put(records),
            JdbcSinkTask::Idle => Err(ConnectError::Internal("jdbc sink task used before start".into())),
        }
    }

    fn flush(&mut self) -> Result<()> {
        match self {
            JdbcSinkTask::Pipelined(p) => p.drain(),
            _ => Ok(()),
        }
    }

    fn pre_commit(&mut self, current: &BTreeMap<TopicPartition, i64>) -> Result<BTreeMap<TopicPartition, i64>> {
        match self {
            JdbcSinkTask::Direct(w) => w.pre_commit(current),
            JdbcSinkTask::Pipelined(p) => p.pre_commit(current),
            JdbcSinkTask::Idle => Ok(current.clone()),
        }
    }

    fn stop(&mut self) {
        match self {
            JdbcSinkTask::Direct(w) => w.stop(),
            JdbcSinkTask::Pipelined(p) => p.stop(),
            JdbcSinkTask::Idle => {}
        }
    }
}
