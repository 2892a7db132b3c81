//! The sink's connection: SQLite (rusqlite) or PostgreSQL (the sync `postgres` client).
//!
//! The sink talks to the drivers directly rather than through `crate::jdbc::Database` for two
//! things that layer does not expose: array parameters (one `UNNEST` statement per group of
//! rows, the PostgreSQL fast path) and the driver's error codes, which decide whether a failure
//! is the record's (a constraint or a value the column refuses: the record goes to the
//! dead-letter queue), the configuration's (a missing table or key constraint: the task fails)
//! or passing (a lost connection, a lock: retried).

use std::collections::HashMap;
use std::time::Duration;

use postgres::types::ToSql;

use super::row::{date_text, time_text, timestamp_text, Cell};
use super::sql::{Flavor, PgArray};

/// Prepared PostgreSQL statements kept per connection, at most.
const STATEMENTS_MAX: usize = 256;

/// What kind of failure a database error is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Fault {
    /// The row's: a constraint or a value the column refuses.
    Data,
    /// Passing: connection lost, lock, serialization failure. Retried.
    Transient,
    /// The setup's: missing table, no unique constraint for the upsert key, bad SQL. Not retried.
    Fatal,
    /// Exactly-once: the stored offset of a partition is not the one this task wrote last (a
    /// commit whose answer was lost, or another task on the partition). The chunk is redone
    /// after re-reading the offsets, without what they show as written.
    Stale,
}

/// A database error with its kind.
#[derive(Debug, Clone)]
pub(crate) struct DbError {
    pub(crate) fault: Fault,
    pub(crate) message: String,
}

impl DbError {
    pub(crate) fn fatal(message: impl Into<String>) -> Self {
        DbError { fault: Fault::Fatal, message: message.into() }
    }

    pub(crate) fn transient(message: impl Into<String>) -> Self {
        DbError { fault: Fault::Transient, message: message.into() }
    }
}

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl From<postgres::Error> for DbError {
    fn from(e: postgres::Error) -> Self {
        let fault = match e.code().map(|c| c.code()) {
            // 21: cardinality ("ON CONFLICT DO UPDATE cannot affect row a second time"), 22: data
            // exception, 23: constraint, 54: program limit (index row too large, too many
            // columns), 42804: datatype mismatch. The row-by-row redo isolates the record.
            Some(c)
                if c.starts_with("21")
                    || c.starts_with("22")
                    || c.starts_with("23")
                    || c.starts_with("54")
                    || c == "42804" =>
            {
                Fault::Data
            }
            Some(c) if c.starts_with("42") || c.starts_with("0A") || c.starts_with("28") || c.starts_with("3D") => {
                Fault::Fatal
            }
            // Refused on our side before reaching the server: a value or a name the protocol
            // cannot carry (a NUL byte in a field name). The record's; retrying cannot help.
            None if !e.is_closed() && {
                let m = e.to_string();
                m.contains("serializ") || m.contains("encoding")
            } =>
            {
                Fault::Data
            }
            _ => Fault::Transient,
        };
        let message = match e.as_db_error() {
            Some(db) => format!(
                "{}: {}{}",
                db.code().code(),
                db.message(),
                db.detail().map(|d| format!(" ({d})")).unwrap_or_default()
            ),
            None => e.to_string(),
        };
        DbError { fault, message }
    }
}

impl From<rusqlite::Error> for DbError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode as C;
        let fault = match e.sqlite_error_code() {
            // Refused before reaching SQLite: a NUL in a name, a value that cannot be converted.
            None if matches!(e, rusqlite::Error::NulError(_) | rusqlite::Error::ToSqlConversionFailure(_)) => {
                Fault::Data
            }
            Some(C::ConstraintViolation | C::TypeMismatch | C::TooBig) => Fault::Data,
            Some(C::DatabaseBusy | C::DatabaseLocked | C::SystemIoFailure | C::OutOfMemory | C::DiskFull) => {
                Fault::Transient
            }
            _ => Fault::Fatal,
        };
        DbError { fault, message: e.to_string() }
    }
}

/// An open connection.
#[expect(clippy::large_enum_variant, reason = "one per task, never moved in a hot path")]
pub(crate) enum Conn {
    Sqlite(rusqlite::Connection),
    Postgres { client: postgres::Client, statements: HashMap<String, postgres::Statement> },
}

/// `connection.url` as the shared database layer reads it (`sqlite:PATH`, `jdbc:sqlite:PATH`,
/// `postgresql://…`, `postgres://…`, `jdbc:postgresql://…`), so the source and the sink accept the
/// same URLs.
pub(crate) fn parse_url(url: &str) -> Result<(Flavor, String), String> {
    match crate::jdbc::ConnectionUrl::parse(url) {
        Ok(crate::jdbc::ConnectionUrl::Sqlite(path)) => Ok((Flavor::Sqlite, path)),
        Ok(crate::jdbc::ConnectionUrl::Postgres(url)) => Ok((Flavor::Postgres, url)),
        Err(crate::ConnectError::Config { reason, .. }) => Err(reason),
        Err(e) => Err(e.to_string()),
    }
}

impl Conn {
    /// Connects. PostgreSQL sessions use UTC, so timestamps without an offset are UTC.
    pub(crate) fn open(url: &str, user: &str, password: &str, timeout: Duration) -> Result<Conn, DbError> {
        let (flavor, target) = parse_url(url).map_err(DbError::fatal)?;
        match flavor {
            Flavor::Sqlite => {
                let c = rusqlite::Connection::open(&target)?;
                c.busy_timeout(timeout)?;
                // WAL: readers (a source connector, a test) do not block the sink's writes.
                let _: String = c.query_row("PRAGMA journal_mode=WAL", [], |r| r.get(0))?;
                c.set_prepared_statement_cache_capacity(64);
                Ok(Conn::Sqlite(c))
            }
            Flavor::Postgres => {
                // The shared layer's client config: keepalives and a TCP user timeout (a
                // vanished server fails a statement in about a minute, not hours), the URL's own
                // settings winning.
                let mut config = crate::jdbc::pg_config(
                    &target,
                    (!user.is_empty()).then_some(user),
                    (!password.is_empty()).then_some(password),
                )
                .map_err(|e| DbError::fatal(e.to_string()))?;
                if !target.contains("connect_timeout") {
                    config.connect_timeout(timeout);
                }
                config.application_name("spate-jdbc-sink");
                let mut client = config.connect(postgres::NoTls)?;
                client.batch_execute("SET TIME ZONE 'UTC'")?;
                Ok(Conn::Postgres { client, statements: HashMap::new() })
            }
        }
    }

    pub(crate) fn flavor(&self) -> Flavor {
        match self {
            Conn::Sqlite(_) => Flavor::Sqlite,
            Conn::Postgres { .. } => Flavor::Postgres,
        }
    }

    /// Whether the connection is known to be gone (reconnect before retrying).
    pub(crate) fn is_closed(&self) -> bool {
        match self {
            Conn::Sqlite(_) => false,
            Conn::Postgres { client, .. } => client.is_closed(),
        }
    }

    /// Runs statements without parameters.
    pub(crate) fn batch(&mut self, sql: &str) -> Result<(), DbError> {
        match self {
            Conn::Sqlite(c) => c.execute_batch(sql)?,
            Conn::Postgres { client, .. } => client.batch_execute(sql)?,
        }
        Ok(())
    }

    /// Forgets prepared statements (after a rollback that may have undone the DDL they were
    /// planned against).
    pub(crate) fn forget_statements(&mut self) {
        match self {
            Conn::Sqlite(c) => c.flush_prepared_statement_cache(),
            Conn::Postgres { statements, .. } => statements.clear(),
        }
    }

    /// The columns of `table` with their declared types, in table order; `None` when the
    /// table does not exist. `table` is as [`super::sql::table_ref`] reads it.
    pub(crate) fn table_columns(&mut self, table: &str) -> Result<Option<Vec<(String, String)>>, DbError> {
        let cols: Vec<(String, String)> = match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare("SELECT name, type FROM pragma_table_info(?1)")?;
                let rows = stmt.query_map([table], |r| Ok((r.get::<_, String>(0)?, r.get::<_, String>(1)?)))?;
                rows.collect::<Result<_, _>>()?
            }
            Conn::Postgres { client, .. } => {
                // The relation INSERT would resolve (search_path, or the schema given), and each
                // column's full type as SQL spells it (`format_type`: `mood`, `citext`,
                // `integer[]`, `numeric(10,2)`), which the statements cast to; the
                // information_schema's data_type says only USER-DEFINED or ARRAY for those.
                let rel = super::sql::table_ref(Flavor::Postgres, table);
                let rows = client.query(
                    "SELECT a.attname::text, format_type(a.atttypid, a.atttypmod) FROM pg_attribute a \
                     WHERE a.attrelid = to_regclass($1::text) AND a.attnum > 0 AND NOT a.attisdropped \
                     ORDER BY a.attnum",
                    &[&rel],
                )?;
                rows.iter().map(|r| (r.get(0), r.get(1))).collect()
            }
        };
        Ok((!cols.is_empty()).then_some(cols))
    }

    /// Runs `sql` once per row (SQLite). Rows the database refuses for their data come back as
    /// `(row index, error)`; SQLite rolls back only the failed statement, so the transaction
    /// goes on.
    pub(crate) fn sqlite_rows(&mut self, sql: &str, rows: &[Vec<Cell>]) -> Result<Vec<(usize, DbError)>, DbError> {
        let Conn::Sqlite(c) = self else { return Err(DbError::fatal("sqlite_rows on PostgreSQL")) };
        let mut stmt = match c.prepare_cached(sql) {
            Ok(s) => s,
            Err(e) => {
                let e = DbError::from(e);
                // A name the statement cannot carry: every row of the group is refused.
                return match e.fault {
                    Fault::Data => Ok((0..rows.len()).map(|i| (i, e.clone())).collect()),
                    _ => Err(e),
                };
            }
        };
        let mut refused = Vec::new();
        for (i, row) in rows.iter().enumerate() {
            if let Err(e) = stmt.execute(rusqlite::params_from_iter(row.iter())) {
                let e = DbError::from(e);
                if e.fault != Fault::Data {
                    return Err(e);
                }
                refused.push((i, e));
            }
        }
        Ok(refused)
    }

    /// Runs a PostgreSQL statement with the given array parameters; rows affected.
    pub(crate) fn pg_execute(&mut self, sql: &str, params: &[&(dyn ToSql + Sync)]) -> Result<u64, DbError> {
        let Conn::Postgres { client, statements } = self else {
            return Err(DbError::fatal("pg_execute on SQLite"));
        };
        let stmt = match statements.get(sql) {
            Some(s) => s.clone(),
            None => {
                let s = client.prepare(sql)?;
                // Shapes come from the records (schemaless field sets): bound what is kept.
                if statements.len() >= STATEMENTS_MAX {
                    statements.clear();
                }
                statements.insert(sql.to_owned(), s.clone());
                s
            }
        };
        Ok(client.execute(&stmt, params)?)
    }

    /// Runs `sql` with scalar parameters (offsets bookkeeping).
    pub(crate) fn execute_scalars(&mut self, sql: &str, params: &[Cell]) -> Result<u64, DbError> {
        match self {
            Conn::Sqlite(c) => Ok(c.prepare_cached(sql)?.execute(rusqlite::params_from_iter(params.iter()))? as u64),
            Conn::Postgres { .. } => {
                let owned: Vec<Box<dyn ToSql + Sync>> = params
                    .iter()
                    .map(|p| -> Box<dyn ToSql + Sync> {
                        match p {
                            Cell::Int(v) => Box::new(*v),
                            Cell::Text(s) => Box::new(s.clone()),
                            _ => Box::new(None::<i64>),
                        }
                    })
                    .collect();
                let refs: Vec<&(dyn ToSql + Sync)> = owned.iter().map(|b| b.as_ref()).collect();
                self.pg_execute(sql, &refs)
            }
        }
    }

    /// The stored offsets of `connector`: (topic, partition, next offset).
    pub(crate) fn read_offsets(&mut self, sql: &str, connector: &str) -> Result<Vec<(String, i32, i64)>, DbError> {
        match self {
            Conn::Sqlite(c) => {
                let mut stmt = c.prepare(sql)?;
                let rows = stmt.query_map([connector], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))?;
                Ok(rows.collect::<Result<_, _>>()?)
            }
            Conn::Postgres { client, .. } => {
                let rows = client.query(sql, &[&connector])?;
                Ok(rows.iter().map(|r| (r.get(0), r.get(1), r.get(2))).collect())
            }
        }
    }
}

impl rusqlite::ToSql for Cell {
    fn to_sql(&self) -> rusqlite::Result<rusqlite::types::ToSqlOutput<'_>> {
        use rusqlite::types::{ToSqlOutput as O, Value, ValueRef};
        let text = |r: Result<String, String>| {
            r.map(|s| O::Owned(Value::Text(s))).map_err(|e| rusqlite::Error::ToSqlConversionFailure(e.into()))
        };
        Ok(match self {
            Cell::Null => O::Owned(Value::Null),
            Cell::Int(v) => O::Owned(Value::Integer(*v)),
            Cell::Float(v) => O::Owned(Value::Real(*v)),
            Cell::Bool(b) => O::Owned(Value::Integer(i64::from(*b))),
            Cell::Text(s) | Cell::Decimal(s) | Cell::Json(s) => O::Borrowed(ValueRef::Text(s.as_bytes())),
            Cell::Bytes(b) => O::Borrowed(ValueRef::Blob(b)),
            Cell::TimestampMs(ms) => return text(timestamp_text(*ms)),
            Cell::DateDays(d) => return text(date_text(*d)),
            Cell::TimeMs(ms) => return text(time_text(*ms)),
        })
    }
}

/// One column of a PostgreSQL group as an array parameter.
pub(crate) enum PgColumn {
    Int8(Vec<Option<i64>>),
    Float8(Vec<Option<f64>>),
    Bool(Vec<Option<bool>>),
    Text(Vec<Option<String>>),
    Bytea(Vec<Option<Vec<u8>>>),
}

impl PgColumn {
    pub(crate) fn with_capacity(kind: PgArray, n: usize) -> Self {
        match kind {
            PgArray::Int8 => PgColumn::Int8(Vec::with_capacity(n)),
            PgArray::Float8 => PgColumn::Float8(Vec::with_capacity(n)),
            PgArray::Bool => PgColumn::Bool(Vec::with_capacity(n)),
            PgArray::Text => PgColumn::Text(Vec::with_capacity(n)),
            PgArray::Bytea => PgColumn::Bytea(Vec::with_capacity(n)),
        }
    }

    /// Appends a value made ready by [`prepare_pg`] (anything else is written as NULL, which
    /// cannot happen: `prepare_pg` refuses it first).
    pub(crate) fn push(&mut self, cell: Cell) {
        match (self, cell) {
            (PgColumn::Int8(v), Cell::Int(x)) => v.push(Some(x)),
            (PgColumn::Float8(v), Cell::Float(x)) => v.push(Some(x)),
            (PgColumn::Bool(v), Cell::Bool(x)) => v.push(Some(x)),
            (PgColumn::Bytea(v), Cell::Bytes(x)) => v.push(Some(x)),
            (PgColumn::Text(v), Cell::Text(s)) => v.push(Some(s)),
            (PgColumn::Int8(v), _) => v.push(None),
            (PgColumn::Float8(v), _) => v.push(None),
            (PgColumn::Bool(v), _) => v.push(None),
            (PgColumn::Text(v), _) => v.push(None),
            (PgColumn::Bytea(v), _) => v.push(None),
        }
    }

    pub(crate) fn as_param(&self) -> &(dyn ToSql + Sync) {
        match self {
            PgColumn::Int8(v) => v,
            PgColumn::Float8(v) => v,
            PgColumn::Bool(v) => v,
            PgColumn::Text(v) => v,
            PgColumn::Bytea(v) => v,
        }
    }
}

/// A coerced cell in the form its column's array takes: text-transported kinds as text.
pub(crate) fn prepare_pg(kind: PgArray, cell: Cell) -> Result<Cell, String> {
    Ok(match (kind, cell) {
        (_, Cell::Null) => Cell::Null,
        (PgArray::Int8, c @ Cell::Int(_))
        | (PgArray::Float8, c @ Cell::Float(_))
        | (PgArray::Bool, c @ Cell::Bool(_))
        | (PgArray::Bytea, c @ Cell::Bytes(_))
        | (PgArray::Text, c @ Cell::Text(_)) => c,
        (PgArray::Text, Cell::Decimal(s) | Cell::Json(s)) => Cell::Text(s),
        (PgArray::Text, Cell::TimestampMs(ms)) => Cell::Text(timestamp_text(ms)?),
        (PgArray::Text, Cell::DateDays(d)) => Cell::Text(date_text(d)?),
        (PgArray::Text, Cell::TimeMs(ms)) => Cell::Text(time_text(ms)?),
        (PgArray::Text, Cell::Int(x)) => Cell::Text(x.to_string()),
        (PgArray::Text, Cell::Float(x)) => Cell::Text(x.to_string()),
        (PgArray::Text, Cell::Bool(x)) => Cell::Text(x.to_string()),
        (k, c) => return Err(format!("a {c:?} value does not fit a {k:?} array")),
    })
}
