//! The database layer the JDBC-style source and sink share: one blocking [`Database`] handle
//! over SQLite (rusqlite, the embedded default) or PostgreSQL (the sync `postgres` client),
//! chosen by `connection.url`, plus the value model that crosses it.
//!
//! * [`SqlValue`] is one cell, read or written. [`SqlValue::to_json`] / [`SqlValue::from_json`]
//!   map it to and from the JSON a record carries; [`connect_schema`] gives the Kafka Connect
//!   schema of a column (the `JsonConverter` envelope's `schema` part).
//! * [`Dialect`] is the SQL text that differs between the two: identifier quoting,
//!   placeholders, type names, upsert.
//! * [`Database`] runs statements: `query`, `execute`, `execute_many` (one prepared statement,
//!   many rows), `insert_rows` (multi-row `VALUES` where that saves round trips), transactions,
//!   catalog reads (`list_tables`, `table_columns`, `primary_key`), `now_micros` (the database's
//!   clock) and a server-side [`Cursor`] for reading a result bigger than memory.
//!
//! Type mapping (column type → [`SqlType`] → JSON → Connect schema):
//!
//! | PostgreSQL | SQLite declared type | SqlType | JSON | Connect schema |
//! |---|---|---|---|---|
//! | boolean | BOOL, BOOLEAN | Bool | true/false | boolean |
//! | smallint | (none) | Int16 | number | int16 |
//! | integer | (none) | Int32 | number | int32 |
//! | bigint, oid | anything with INT | Int64 | number | int64 |
//! | real | (none) | Float32 | number | float |
//! | double precision | REAL, FLOA, DOUB | Float64 | number (NaN/±inf as a string) | double |
//! | numeric | NUMERIC, DECIMAL | Numeric | string, exact decimal text | string |
//! | text, varchar, char, name, uuid, enums | CHAR, CLOB, TEXT | Text | string | string |
//! | bytea | BLOB | Bytes | base64 string | bytes |
//! | timestamp, timestamptz | DATETIME, TIMESTAMP | Timestamp (µs UTC) | epoch ms | int64 `org.apache.kafka.connect.data.Timestamp` |
//! | date | DATE | Date (days) | epoch days | int32 `org.apache.kafka.connect.data.Date` |
//! | time | TIME | Time (µs) | ms of day | int32 `org.apache.kafka.connect.data.Time` |
//! | json, jsonb | JSON, JSONB | Json | string holding the JSON text | string `io.debezium.data.Json` |
//! | anything else | no declared type | Unknown | by value | by the first non-null value |
//!
//! SQLite stores timestamps as it is given them; this layer reads INTEGER values of a
//! TIMESTAMP/DATETIME column as epoch milliseconds and TEXT values as
//! `YYYY-MM-DD HH:MM:SS[.ffffff]` (UTC; a `T` separator and a `Z`/`+00:00` suffix are accepted),
//! and writes [`SqlValue::Timestamp`] as TEXT `YYYY-MM-DD HH:MM:SS.ffffff`.

mod postgres;
pub(crate) use postgres::pg_config;
mod sqlite;
mod values;

use std::time::Duration;

pub use values::{connect_schema, format_timestamp_micros, parse_timestamp_micros, struct_schema, SqlValue};

use crate::error::{ConnectError, Result};

/// The logical type of a column, the one both databases' types map onto.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SqlType {
    Bool,
    Int16,
    Int32,
    Int64,
    Float32,
    Float64,
    /// Exact decimal, carried as text.
    Numeric,
    Text,
    Bytes,
    /// Microseconds since the Unix epoch, UTC.
    Timestamp,
    /// Days since the Unix epoch.
    Date,
    /// Microseconds since midnight.
    Time,
    Json,
    /// No declared type (an SQLite expression column) or a type this layer does not map: the
    /// values decide.
    Unknown,
}

/// A column of a table or of a result.
#[derive(Debug, Clone, PartialEq)]
pub struct Column {
    pub name: String,
    pub sql_type: SqlType,
    /// The database's own name for the type (`int8`, `timestamptz`, SQLite's declared type).
    pub type_name: String,
    /// Whether NULL is allowed (true when unknown, as for result columns).
    pub nullable: bool,
}

/// A query result: columns and rows of values in column order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Rows {
    pub columns: Vec<Column>,
    pub rows: Vec<Vec<SqlValue>>,
}

impl Rows {
    /// The text values of each row's first column (catalog queries that list names).
    pub(crate) fn first_texts(self) -> Vec<String> {
        self.rows
            .into_iter()
            .filter_map(|r| match r.into_iter().next() {
                Some(SqlValue::Text(s)) => Some(s),
                _ => None,
            })
            .collect()
    }

    /// The index of the column named `name` (exact, then case-insensitive).
    pub fn column_index(&self, name: &str) -> Option<usize> {
        self.columns
            .iter()
            .position(|c| c.name == name)
            .or_else(|| self.columns.iter().position(|c| c.name.eq_ignore_ascii_case(name)))
    }

    /// Columns whose type is [`SqlType::Unknown`] (an SQLite column without a declared type, or
    /// an expression) take the narrowest type that holds every non-null value of the batch:
    /// one type → it; integers and floats → Float64; booleans and integers → Int64; any other
    /// mix → Text (every value as a string), so a schema can be built and no valid row is a
    /// mismatch.
    pub fn infer_unknown_types(&mut self) {
        for (i, c) in self.columns.iter_mut().enumerate() {
            if c.sql_type == SqlType::Unknown {
                let mut ty = SqlType::Unknown;
                for v in self.rows.iter().map(|r| &r[i]).filter(|v| !matches!(v, SqlValue::Null)) {
                    ty = widen(ty, v.natural_type());
                    if ty == SqlType::Text {
                        break;
                    }
                }
                c.sql_type = ty;
            }
        }
    }
}

/// The narrowest type holding values of types `a` and `b` (see [`Rows::infer_unknown_types`]).
fn widen(a: SqlType, b: SqlType) -> SqlType {
    use SqlType::*;
    match (a, b) {
        (Unknown, t) | (t, Unknown) => t,
        (x, y) if x == y => x,
        (Int64 | Int32 | Int16, Float64 | Float32) | (Float64 | Float32, Int64 | Int32 | Int16) => Float64,
        (Bool, Int64) | (Int64, Bool) => Int64,
        _ => Text,
    }
}

/// Which database a URL names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dialect {
    Sqlite,
    Postgres,
}

impl Dialect {
    /// `sqlite` or `postgresql`.
    pub fn name(self) -> &'static str {
        match self {
            Dialect::Sqlite => "sqlite",
            Dialect::Postgres => "postgresql",
        }
    }

    /// An identifier in double quotes (both databases), inner quotes doubled.
    pub fn quote_ident(self, name: &str) -> String {
        format!("\"{}\"", name.replace('"', "\"\""))
    }

    /// A possibly schema-qualified table name (`schema.table`), each part quoted.
    pub fn quote_table(self, name: &str) -> String {
        name.split('.').map(|p| self.quote_ident(p)).collect::<Vec<_>>().join(".")
    }

    /// The placeholder for the `n`th parameter, counting from 1: `?n` (SQLite) or `$n`.
    pub fn placeholder(self, n: usize) -> String {
        match self {
            Dialect::Sqlite => format!("?{n}"),
            Dialect::Postgres => format!("${n}"),
        }
    }

    /// Whether `(a, b) > (x, y)` row-value comparison works (SQLite ≥ 3.15 and PostgreSQL).
    pub fn supports_row_values(self) -> bool {
        true
    }

    /// The most parameters one statement may bind.
    pub fn max_params(self) -> usize {
        match self {
            Dialect::Sqlite => 32_766,
            Dialect::Postgres => 65_535,
        }
    }

    /// The column type to create for a logical type (`auto.create`, `auto.evolve`).
    pub fn type_name(self, ty: SqlType) -> &'static str {
        match (self, ty) {
            (Dialect::Sqlite, SqlType::Bool) => "BOOLEAN",
            (Dialect::Sqlite, SqlType::Int16 | SqlType::Int32 | SqlType::Int64) => "INTEGER",
            (Dialect::Sqlite, SqlType::Float32 | SqlType::Float64) => "REAL",
            (Dialect::Sqlite, SqlType::Numeric) => "NUMERIC",
            (Dialect::Sqlite, SqlType::Text | SqlType::Unknown) => "TEXT",
            (Dialect::Sqlite, SqlType::Bytes) => "BLOB",
            (Dialect::Sqlite, SqlType::Timestamp) => "TIMESTAMP",
            (Dialect::Sqlite, SqlType::Date) => "DATE",
            (Dialect::Sqlite, SqlType::Time) => "TIME",
            (Dialect::Sqlite, SqlType::Json) => "JSON",
            (Dialect::Postgres, SqlType::Bool) => "boolean",
            (Dialect::Postgres, SqlType::Int16) => "smallint",
            (Dialect::Postgres, SqlType::Int32) => "integer",
            (Dialect::Postgres, SqlType::Int64) => "bigint",
            (Dialect::Postgres, SqlType::Float32) => "real",
            (Dialect::Postgres, SqlType::Float64) => "double precision",
            (Dialect::Postgres, SqlType::Numeric) => "numeric",
            (Dialect::Postgres, SqlType::Text | SqlType::Unknown) => "text",
            (Dialect::Postgres, SqlType::Bytes) => "bytea",
            (Dialect::Postgres, SqlType::Timestamp) => "timestamptz",
            (Dialect::Postgres, SqlType::Date) => "date",
            (Dialect::Postgres, SqlType::Time) => "time",
            (Dialect::Postgres, SqlType::Json) => "jsonb",
        }
    }

    /// `INSERT INTO table (c1, …) VALUES (p1, …)` for one row.
    pub fn insert_sql(self, table: &str, columns: &[&str]) -> String {
        let (head, tail) = self.insert_parts(table, columns, &[], false);
        format!("{head} {}{tail}", self.values_row(columns.len(), 1))
    }

    /// An upsert of one row: `INSERT … ON CONFLICT (keys) DO UPDATE SET c = excluded.c` (the same
    /// text in SQLite ≥ 3.24 and PostgreSQL); `DO NOTHING` when every column is a key.
    pub fn upsert_sql(self, table: &str, columns: &[&str], keys: &[&str]) -> String {
        let (head, tail) = self.insert_parts(table, columns, keys, true);
        format!("{head} {}{tail}", self.values_row(columns.len(), 1))
    }

    /// The parts of a multi-row insert for [`Database::insert_rows`]: `head` is
    /// `INSERT INTO t (cols) VALUES`, `tail` the `ON CONFLICT …` clause (empty unless `upsert`).
    pub fn insert_parts(self, table: &str, columns: &[&str], keys: &[&str], upsert: bool) -> (String, String) {
        let cols = columns.iter().map(|c| self.quote_ident(c)).collect::<Vec<_>>().join(", ");
        let head = format!("INSERT INTO {} ({cols}) VALUES", self.quote_table(table));
        if !upsert {
            return (head, String::new());
        }
        let key_list = keys.iter().map(|c| self.quote_ident(c)).collect::<Vec<_>>().join(", ");
        let updates: Vec<String> = columns
            .iter()
            .filter(|c| !keys.contains(c))
            .map(|c| format!("{q} = excluded.{q}", q = self.quote_ident(c)))
            .collect();
        let tail = if updates.is_empty() {
            format!(" ON CONFLICT ({key_list}) DO NOTHING")
        } else {
            format!(" ON CONFLICT ({key_list}) DO UPDATE SET {}", updates.join(", "))
        };
        (head, tail)
    }

    /// `(p_first, p_first+1, …)` for a row of `n` columns.
    fn values_row(self, n: usize, first: usize) -> String {
        let ps: Vec<String> = (first..first + n).map(|i| self.placeholder(i)).collect();
        format!("({})", ps.join(", "))
    }
}

/// A parsed `connection.url`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ConnectionUrl {
    /// A database file (`:memory:` for a private in-memory database).
    Sqlite(String),
    /// A `postgresql://` URL as the `postgres` crate takes it.
    Postgres(String),
}

impl ConnectionUrl {
    /// Parses `sqlite:PATH`, `jdbc:sqlite:PATH`, `sqlite://PATH`, `postgresql://…`,
    /// `postgres://…` and `jdbc:postgresql://host:port/db[?user=…]`.
    pub fn parse(url: &str) -> Result<ConnectionUrl> {
        let url = url.trim();
        let rest = url.strip_prefix("jdbc:").unwrap_or(url);
        if let Some(path) = rest.strip_prefix("sqlite:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(ConnectError::config(
                    "connection.url",
                    "sqlite: needs a file path, e.g. sqlite:/var/db/app.db",
                ));
            }
            return Ok(ConnectionUrl::Sqlite(path.to_owned()));
        }
        if rest.starts_with("postgresql://") || rest.starts_with("postgres://") {
            return Ok(ConnectionUrl::Postgres(rest.to_owned()));
        }
        Err(ConnectError::config(
            "connection.url",
            format!("{url:?} is neither sqlite:PATH nor postgresql://host:port/db"),
        ))
    }

    /// The dialect of this URL.
    pub fn dialect(&self) -> Dialect {
        match self {
            ConnectionUrl::Sqlite(_) => Dialect::Sqlite,
            ConnectionUrl::Postgres(_) => Dialect::Postgres,
        }
    }
}

enum Backend {
    Sqlite(sqlite::SqliteDb),
    Postgres(Box<postgres::PgDb>),
}

/// An open connection. Blocking; one per task thread.
pub struct Database {
    backend: Backend,
    url: ConnectionUrl,
}

/// The error for a failed database call: whose fault is the database's (or the SQL's).
pub(crate) fn db_error(what: impl Into<String>, err: impl std::fmt::Display) -> ConnectError {
    ConnectError::external("jdbc", what, err)
}

/// Ends the reason of a database error that a new connection (or a later try) may not meet:
/// the connection was lost, the server is shutting down or out of resources, a lock was busy,
/// a serialization failure. Set from the driver's error kind and SQLSTATE, never from the text.
const TRANSIENT_NOTE: &str = " (transient)";

/// [`db_error`], marked transient when `transient` (see [`is_transient`]).
pub(crate) fn db_error_kind(what: impl Into<String>, err: impl std::fmt::Display, transient: bool) -> ConnectError {
    if transient {
        ConnectError::external("jdbc", what, format!("{err}{TRANSIENT_NOTE}"))
    } else {
        db_error(what, err)
    }
}

/// Whether `e` is a database error that a reconnect may cure (connection lost, server
/// shutting down or out of resources, SQLite busy/locked or I/O, serialization failure or
/// deadlock), as classified by the driver's error kind and SQLSTATE.
pub fn is_transient(e: &ConnectError) -> bool {
    matches!(e, ConnectError::External { connector, reason, .. } if connector == "jdbc" && reason.ends_with(TRANSIENT_NOTE))
}

impl Database {
    /// Opens `url` (see [`ConnectionUrl::parse`]). `user`/`password` (`connection.user`,
    /// `connection.password`) apply to PostgreSQL and override the URL's; empty means unset.
    pub fn open(url: &str, user: Option<&str>, password: Option<&str>) -> Result<Database> {
        let parsed = ConnectionUrl::parse(url)?;
        let user = user.filter(|u| !u.is_empty());
        let password = password.filter(|p| !p.is_empty());
        let backend = match &parsed {
            ConnectionUrl::Sqlite(path) => Backend::Sqlite(sqlite::SqliteDb::open(path)?),
            ConnectionUrl::Postgres(u) => Backend::Postgres(Box::new(postgres::PgDb::open(u, user, password)?)),
        };
        Ok(Database { backend, url: parsed })
    }

    /// The dialect of the connected database.
    pub fn dialect(&self) -> Dialect {
        self.url.dialect()
    }

    /// The parsed URL it was opened with.
    pub fn url(&self) -> &ConnectionUrl {
        &self.url
    }

    /// Whether the connection still works as far as the client knows (PostgreSQL: the socket
    /// is open). A `false` means: drop this handle and open a new one.
    pub fn is_alive(&self) -> bool {
        match &self.backend {
            Backend::Sqlite(_) => true,
            Backend::Postgres(p) => p.is_alive(),
        }
    }

    /// Runs a query and returns all its rows. Use [`Database::cursor`] for results that may not
    /// fit in memory.
    pub fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<Rows> {
        match &mut self.backend {
            Backend::Sqlite(s) => s.query(sql, params),
            Backend::Postgres(p) => p.query(sql, params),
        }
    }

    /// Runs one statement; returns the rows affected.
    pub fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<u64> {
        match &mut self.backend {
            Backend::Sqlite(s) => s.execute(sql, params),
            Backend::Postgres(p) => p.execute(sql, params),
        }
    }

    /// Runs several `;`-separated statements without parameters (DDL, scripts).
    pub fn execute_batch(&mut self, sql: &str) -> Result<()> {
        match &mut self.backend {
            Backend::Sqlite(s) => s.execute_batch(sql),
            Backend::Postgres(p) => p.execute_batch(sql),
        }
    }

    /// Runs one statement once per row of parameters with a single prepared statement (no
    /// transaction of its own: wrap it in one for speed and atomicity). Returns the sum of rows
    /// affected. On PostgreSQL each row is a round trip; prefer [`Database::insert_rows`] for
    /// inserts and upserts.
    pub fn execute_many(&mut self, sql: &str, rows: &[Vec<SqlValue>]) -> Result<u64> {
        match &mut self.backend {
            Backend::Sqlite(s) => s.execute_many(sql, rows),
            Backend::Postgres(p) => p.execute_many(sql, rows),
        }
    }

    /// Inserts (or upserts) many rows: `head` and `tail` as from [`Dialect::insert_parts`],
    /// each row holding one value per column. SQLite runs a prepared single-row statement per
    /// row; PostgreSQL sends multi-row `VALUES` lists (as many rows per statement as the
    /// parameter limit allows), so a batch is a few round trips. With an upsert tail, a key must
    /// not appear twice in `rows` (PostgreSQL refuses to update a row twice in one statement):
    /// keep the last record per key.
    pub fn insert_rows(&mut self, head: &str, tail: &str, columns: usize, rows: &[Vec<SqlValue>]) -> Result<u64> {
        if columns == 0 {
            return Err(ConnectError::Internal("insert_rows needs at least one column".into()));
        }
        if let Some(bad) = rows.iter().find(|r| r.len() != columns) {
            return Err(ConnectError::Internal(format!(
                "insert_rows: a row has {} values for {columns} columns",
                bad.len()
            )));
        }
        let dialect = self.dialect();
        match &mut self.backend {
            Backend::Sqlite(s) => {
                let sql = format!("{head} {}{tail}", dialect.values_row(columns, 1));
                s.execute_many(&sql, rows)
            }
            Backend::Postgres(p) => {
                let per_stmt = (dialect.max_params() / columns).clamp(1, 1000);
                let mut total = 0;
                for chunk in rows.chunks(per_stmt) {
                    let values: Vec<String> =
                        (0..chunk.len()).map(|r| dialect.values_row(columns, r * columns + 1)).collect();
                    let sql = format!("{head} {}{tail}", values.join(", "));
                    let params: Vec<&SqlValue> = chunk.iter().flatten().collect();
                    total += p.execute_refs(&sql, &params)?;
                }
                Ok(total)
            }
        }
    }

    /// Starts a transaction.
    pub fn begin(&mut self) -> Result<()> {
        self.execute_batch("BEGIN")
    }

    /// Commits the open transaction.
    pub fn commit(&mut self) -> Result<()> {
        self.execute_batch("COMMIT")
    }

    /// Rolls the open transaction back.
    pub fn rollback(&mut self) -> Result<()> {
        self.execute_batch("ROLLBACK")
    }

    /// Runs `f` in a transaction: committed when it returns `Ok`, rolled back on `Err`.
    pub fn transaction<T>(&mut self, f: impl FnOnce(&mut Database) -> Result<T>) -> Result<T> {
        self.begin()?;
        match f(self) {
            Ok(v) => {
                self.commit()?;
                Ok(v)
            }
            Err(e) => {
                // The original error is the one worth reporting; a failed rollback on a dead
                // connection adds nothing.
                let _ = self.rollback();
                Err(e)
            }
        }
    }

    /// Base tables (and views) the user can read: `schema.table` for PostgreSQL schemas other
    /// than `public`, bare names otherwise. SQLite's own `sqlite_*` tables are left out.
    pub fn list_tables(&mut self) -> Result<Vec<String>> {
        match &mut self.backend {
            Backend::Sqlite(s) => s.list_tables(),
            Backend::Postgres(p) => p.list_tables(),
        }
    }

    /// The columns of `table` (possibly `schema.table`), in table order; empty when the table
    /// does not exist.
    pub fn table_columns(&mut self, table: &str) -> Result<Vec<Column>> {
        match &mut self.backend {
            Backend::Sqlite(s) => s.table_columns(table),
            Backend::Postgres(p) => p.table_columns(table),
        }
    }

    /// The primary key columns of `table`, in key order; empty when it has none.
    pub fn primary_key(&mut self, table: &str) -> Result<Vec<String>> {
        match &mut self.backend {
            Backend::Sqlite(s) => s.primary_key(table),
            Backend::Postgres(p) => p.primary_key(table),
        }
    }

    /// The database's current time, microseconds since the Unix epoch (UTC). On PostgreSQL the
    /// wall clock (`clock_timestamp()`), not the transaction's start.
    pub fn now_micros(&mut self) -> Result<i64> {
        let sql = match self.dialect() {
            // julianday('now') has millisecond resolution in SQLite.
            Dialect::Sqlite => "SELECT CAST(round((julianday('now') - 2440587.5) * 86400000.0) AS INTEGER) * 1000",
            Dialect::Postgres => "SELECT (extract(epoch FROM clock_timestamp()) * 1000000)::int8",
        };
        let rows = self.query(sql, &[])?;
        match rows.rows.first().and_then(|r| r.first()) {
            Some(SqlValue::Int(v)) => Ok(*v),
            other => Err(db_error("reading the database clock", format!("unexpected result {other:?}"))),
        }
    }

    /// The database's current time as a `timestamp without time zone` column holds it: on
    /// PostgreSQL the wall clock of the session's `TimeZone` read as if it were UTC (what
    /// `now()` stores in such a column, and how this layer reads one); on SQLite, whose
    /// timestamps are UTC, [`Database::now_micros`].
    pub fn now_wall_clock_micros(&mut self) -> Result<i64> {
        if self.dialect() == Dialect::Sqlite {
            return self.now_micros();
        }
        let rows = self.query("SELECT (extract(epoch FROM clock_timestamp()::timestamp) * 1000000)::int8", &[])?;
        match rows.rows.first().and_then(|r| r.first()) {
            Some(SqlValue::Int(v)) => Ok(*v),
            other => Err(db_error("reading the database clock", format!("unexpected result {other:?}"))),
        }
    }

    /// The database's current time in milliseconds since the Unix epoch.
    pub fn now_ms(&mut self) -> Result<i64> {
        Ok(self.now_micros()?.div_euclid(1000))
    }

    /// Opens a cursor over `sql` (no parameters) that hands out the result `chunk_rows` rows at
    /// a time, so a whole-table read needs bounded memory. PostgreSQL: a `DECLARE … CURSOR` in
    /// a transaction of this connection (run nothing else on it until the cursor is closed).
    /// SQLite: a reader on a second connection to the same file, on a thread of its own, with a
    /// one-chunk channel (an in-memory database reads everything at once).
    pub fn cursor(&mut self, sql: &str, chunk_rows: usize) -> Result<Cursor> {
        let chunk_rows = chunk_rows.max(1);
        let inner = match &mut self.backend {
            Backend::Sqlite(s) => CursorInner::Sqlite(s.cursor(sql, chunk_rows)?),
            Backend::Postgres(p) => CursorInner::Postgres(p.cursor(sql)?),
        };
        Ok(Cursor { inner, chunk_rows, done: false })
    }
}

enum CursorInner {
    Sqlite(sqlite::SqliteCursor),
    Postgres(String),
}

/// A result read in chunks; see [`Database::cursor`].
pub struct Cursor {
    inner: CursorInner,
    chunk_rows: usize,
    done: bool,
}

impl Cursor {
    /// The next chunk (at most `chunk_rows` rows), or `None` at the end.
    pub fn next_chunk(&mut self, db: &mut Database) -> Result<Option<Rows>> {
        if self.done {
            return Ok(None);
        }
        let rows = match (&mut self.inner, &mut db.backend) {
            (CursorInner::Sqlite(c), _) => c.next_chunk(Duration::from_secs(600))?,
            (CursorInner::Postgres(name), Backend::Postgres(p)) => Some(p.fetch(name, self.chunk_rows)?),
            (CursorInner::Postgres(_), Backend::Sqlite(_)) => {
                return Err(ConnectError::Internal("a PostgreSQL cursor used with an SQLite database".into()))
            }
        };
        match rows {
            Some(r) if !r.rows.is_empty() => Ok(Some(r)),
            _ => {
                self.close(db)?;
                Ok(None)
            }
        }
    }

    /// Ends the cursor early (or again: a no-op).
    pub fn close(&mut self, db: &mut Database) -> Result<()> {
        if self.done {
            return Ok(());
        }
        self.done = true;
        match (&mut self.inner, &mut db.backend) {
            (CursorInner::Sqlite(c), _) => {
                c.close();
                Ok(())
            }
            (CursorInner::Postgres(name), Backend::Postgres(p)) => p.close_cursor(name),
            _ => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests;
