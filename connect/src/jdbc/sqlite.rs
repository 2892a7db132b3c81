//! SQLite through rusqlite: values by storage class, coerced by the column's declared type.

use std::sync::mpsc::{sync_channel, Receiver, RecvTimeoutError};
use std::time::Duration;

use rusqlite::types::{ToSqlOutput, Value as Lite, ValueRef};
use rusqlite::{params_from_iter, Connection, OpenFlags};

use super::values::{format_date, format_time, format_timestamp_micros, parse_date, parse_time};
use super::{db_error, db_error_kind, parse_timestamp_micros, Column, Rows, SqlType, SqlValue};
use crate::error::Result;

impl rusqlite::ToSql for SqlValue {
    fn to_sql(&self) -> rusqlite::Result<ToSqlOutput<'_>> {
        Ok(match self {
            SqlValue::Null => ToSqlOutput::Owned(Lite::Null),
            SqlValue::Bool(b) => ToSqlOutput::Owned(Lite::Integer(i64::from(*b))),
            SqlValue::Int(i) => ToSqlOutput::Owned(Lite::Integer(*i)),
            SqlValue::Float(f) => ToSqlOutput::Owned(Lite::Real(*f)),
            SqlValue::Numeric(s) | SqlValue::Text(s) | SqlValue::Json(s) => {
                ToSqlOutput::Borrowed(ValueRef::Text(s.as_bytes()))
            }
            SqlValue::Bytes(b) => ToSqlOutput::Borrowed(ValueRef::Blob(b)),
            SqlValue::Timestamp(t) => ToSqlOutput::Owned(Lite::Text(format_timestamp_micros(*t))),
            SqlValue::Date(d) => ToSqlOutput::Owned(Lite::Text(format_date(*d))),
            SqlValue::Time(t) => ToSqlOutput::Owned(Lite::Text(format_time(*t))),
        })
    }
}

/// The logical type of an SQLite declared type, after SQLite's affinity rules (3.1 of the
/// datatype docs) with the date/time/bool/json names people use on top.
pub(super) fn declared_type(decl: Option<&str>) -> SqlType {
    let Some(decl) = decl else { return SqlType::Unknown };
    let d = decl.to_ascii_uppercase();
    if d.is_empty() {
        SqlType::Unknown
    } else if d.contains("BOOL") {
        SqlType::Bool
    } else if d.contains("INT") {
        SqlType::Int64
    } else if d.contains("DATETIME") || d.contains("TIMESTAMP") {
        SqlType::Timestamp
    } else if d == "DATE" {
        SqlType::Date
    } else if d == "TIME" {
        SqlType::Time
    } else if d.contains("JSON") {
        SqlType::Json
    } else if d.contains("CHAR") || d.contains("CLOB") || d.contains("TEXT") {
        SqlType::Text
    } else if d.contains("BLOB") {
        SqlType::Bytes
    } else if d.contains("REAL") || d.contains("FLOA") || d.contains("DOUB") {
        SqlType::Float64
    } else if d.contains("NUMERIC") || d.contains("DECIMAL") {
        SqlType::Numeric
    } else {
        SqlType::Unknown
    }
}

/// A stored value as a [`SqlValue`] of the column's type where it converts losslessly;
/// otherwise as stored (so the conversion to JSON can report the mismatch).
fn read_value(v: ValueRef<'_>, ty: SqlType) -> SqlValue {
    match (ty, v) {
        (_, ValueRef::Null) => SqlValue::Null,
        (SqlType::Bool, ValueRef::Integer(i)) => SqlValue::Bool(i != 0),
        (SqlType::Timestamp, ValueRef::Integer(ms)) => {
            ms.checked_mul(1000).map_or(SqlValue::Int(ms), SqlValue::Timestamp)
        }
        (SqlType::Timestamp, ValueRef::Text(t)) => {
            let s = String::from_utf8_lossy(t);
            parse_timestamp_micros(&s).map_or_else(|_| SqlValue::Text(s.into_owned()), SqlValue::Timestamp)
        }
        (SqlType::Date, ValueRef::Text(t)) => {
            let s = String::from_utf8_lossy(t);
            parse_date(&s).map_or_else(|| SqlValue::Text(s.into_owned()), SqlValue::Date)
        }
        (SqlType::Time, ValueRef::Text(t)) => {
            let s = String::from_utf8_lossy(t);
            parse_time(&s).map_or_else(|| SqlValue::Text(s.into_owned()), SqlValue::Time)
        }
        (SqlType::Json, ValueRef::Text(t)) => SqlValue::Json(String::from_utf8_lossy(t).into_owned()),
        (SqlType::Numeric, ValueRef::Integer(i)) => SqlValue::Numeric(i.to_string()),
        (SqlType::Numeric, ValueRef::Real(f)) if f.is_finite() => SqlValue::Numeric(f.to_string()),
        (_, ValueRef::Integer(i)) => SqlValue::Int(i),
        (_, ValueRef::Real(f)) => SqlValue::Float(f),
        (_, ValueRef::Text(t)) => SqlValue::Text(String::from_utf8_lossy(t).into_owned()),
        (_, ValueRef::Blob(b)) => SqlValue::Bytes(b.to_vec()),
    }
}

fn columns_of(stmt: &rusqlite::Statement<'_>) -> Vec<Column> {
    stmt.columns()
        .map(|c| Column {
            name: c.name().to_owned(),
            sql_type: declared_type(c.decl_type()),
            type_name: c.decl_type().unwrap_or("").to_owned(),
            nullable: true,
        })
        .collect()
}

fn run_query(
    conn: &Connection,
    sql: &str,
    params: &[SqlValue],
    mut on_chunk: impl FnMut(Rows) -> bool,
    chunk_rows: usize,
) -> rusqlite::Result<()> {
    let mut stmt = conn.prepare_cached(sql)?;
    let mut rows = stmt.query(params_from_iter(params.iter()))?;
    // The columns are read after the first step: a cached statement whose table changed
    // (ALTER TABLE) is prepared again by SQLite during that step, and `SELECT *` then has the
    // new columns.
    let read_row = |row: &rusqlite::Row<'_>, types: &[SqlType]| -> rusqlite::Result<Vec<SqlValue>> {
        let mut values = Vec::with_capacity(types.len());
        for (i, ty) in types.iter().enumerate() {
            values.push(read_value(row.get_ref(i)?, *ty));
        }
        Ok(values)
    };
    let (columns, types, first) = match rows.next()? {
        Some(row) => {
            let columns = columns_of(row.as_ref());
            let types: Vec<SqlType> = columns.iter().map(|c| c.sql_type).collect();
            let first = read_row(row, &types)?;
            (columns, types, first)
        }
        None => {
            drop(rows);
            if chunk_rows == usize::MAX {
                on_chunk(Rows { columns: columns_of(&stmt), rows: Vec::new() });
            }
            return Ok(());
        }
    };
    let mut out = Rows { columns: columns.clone(), rows: vec![first] };
    loop {
        if out.rows.len() >= chunk_rows {
            let full = std::mem::replace(&mut out, Rows { columns: columns.clone(), rows: Vec::new() });
            if !on_chunk(full) {
                return Ok(());
            }
        }
        match rows.next()? {
            Some(row) => out.rows.push(read_row(row, &types)?),
            None => break,
        }
    }
    if !out.rows.is_empty() || chunk_rows == usize::MAX {
        on_chunk(out);
    }
    Ok(())
}

pub(super) struct SqliteDb {
    conn: Connection,
    path: String,
}

impl SqliteDb {
    pub(super) fn open(path: &str) -> Result<SqliteDb> {
        let conn = Connection::open(path).map_err(|e| lite_error(format!("opening SQLite database {path}"), e))?;
        // A writer in another process must not fail our reads at once: wait for its lock.
        conn.busy_timeout(Duration::from_secs(30)).map_err(|e| lite_error("setting the SQLite busy timeout", e))?;
        conn.set_prepared_statement_cache_capacity(64);
        Ok(SqliteDb { conn, path: path.to_owned() })
    }

    pub(super) fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<Rows> {
        let mut result = Rows::default();
        run_query(
            &self.conn,
            sql,
            params,
            |r| {
                result = r;
                true
            },
            usize::MAX,
        )
        .map_err(|e| lite_error(format!("running {}", short(sql)), e))?;
        Ok(result)
    }

    pub(super) fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<u64> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| lite_error(format!("preparing {}", short(sql)), e))?;
        stmt.execute(params_from_iter(params.iter()))
            .map(|n| n as u64)
            .map_err(|e| lite_error(format!("running {}", short(sql)), e))
    }

    pub(super) fn execute_batch(&mut self, sql: &str) -> Result<()> {
        self.conn.execute_batch(sql).map_err(|e| lite_error(format!("running {}", short(sql)), e))
    }

    pub(super) fn execute_many(&mut self, sql: &str, rows: &[Vec<SqlValue>]) -> Result<u64> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(|e| lite_error(format!("preparing {}", short(sql)), e))?;
        let mut total = 0u64;
        for row in rows {
            total += stmt
                .execute(params_from_iter(row.iter()))
                .map_err(|e| lite_error(format!("running {}", short(sql)), e))? as u64;
        }
        Ok(total)
    }

    pub(super) fn list_tables(&mut self) -> Result<Vec<String>> {
        let rows = self.query(
            "SELECT name FROM sqlite_master WHERE type IN ('table', 'view') AND name NOT LIKE 'sqlite\\_%' ESCAPE '\\' ORDER BY name",
            &[],
        )?;
        Ok(rows.first_texts())
    }

    pub(super) fn table_columns(&mut self, table: &str) -> Result<Vec<Column>> {
        let rows = self.query(
            "SELECT name, type, \"notnull\", pk FROM pragma_table_info(?1)",
            &[SqlValue::Text(table.to_owned())],
        )?;
        Ok(rows
            .rows
            .into_iter()
            .filter_map(|r| {
                let mut it = r.into_iter();
                let (Some(SqlValue::Text(name)), ty, Some(SqlValue::Int(notnull)), Some(SqlValue::Int(pk))) =
                    (it.next(), it.next(), it.next(), it.next())
                else {
                    return None;
                };
                let type_name = match ty {
                    Some(SqlValue::Text(t)) => t,
                    _ => String::new(),
                };
                // An INTEGER PRIMARY KEY is the rowid: never NULL, whatever it declares.
                let nullable = notnull == 0 && !(pk > 0 && type_name.eq_ignore_ascii_case("INTEGER"));
                Some(Column { name, sql_type: declared_type(Some(&type_name)), type_name, nullable })
            })
            .collect())
    }

    pub(super) fn primary_key(&mut self, table: &str) -> Result<Vec<String>> {
        let rows = self.query(
            "SELECT name FROM pragma_table_info(?1) WHERE pk > 0 ORDER BY pk",
            &[SqlValue::Text(table.to_owned())],
        )?;
        Ok(rows.first_texts())
    }

    pub(super) fn cursor(&mut self, sql: &str, chunk_rows: usize) -> Result<SqliteCursor> {
        if self.path == ":memory:" || self.path.is_empty() {
            // A second connection would see another, empty, database.
            let rows = self.query(sql, &[])?;
            let (tx, rx) = sync_channel(1);
            let _ = tx.send(Ok(rows));
            return Ok(SqliteCursor { rx: Some(rx) });
        }
        let reader =
            Connection::open_with_flags(&self.path, OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX)
                .map_err(|e| lite_error(format!("opening SQLite database {} for reading", self.path), e))?;
        let _ = reader.busy_timeout(Duration::from_secs(30));
        let (tx, rx) = sync_channel::<Result<Rows>>(1);
        let sql = sql.to_owned();
        std::thread::Builder::new()
            .name("jdbc-sqlite-cursor".into())
            .spawn(move || {
                let result = run_query(&reader, &sql, &[], |chunk| tx.send(Ok(chunk)).is_ok(), chunk_rows);
                if let Err(e) = result {
                    let _ = tx.send(Err(lite_error("reading through an SQLite cursor", e)));
                }
            })
            .map_err(|e| db_error("starting the SQLite cursor thread", e))?;
        Ok(SqliteCursor { rx: Some(rx) })
    }
}

/// Chunks from a reader thread; dropping the receiver stops the thread at its next send.
pub(super) struct SqliteCursor {
    rx: Option<Receiver<Result<Rows>>>,
}

impl SqliteCursor {
    pub(super) fn next_chunk(&mut self, timeout: Duration) -> Result<Option<Rows>> {
        let Some(rx) = &self.rx else { return Ok(None) };
        match rx.recv_timeout(timeout) {
            Ok(Ok(rows)) => Ok(Some(rows)),
            Ok(Err(e)) => Err(e),
            Err(RecvTimeoutError::Disconnected) => Ok(None),
            Err(RecvTimeoutError::Timeout) => {
                Err(db_error_kind("reading through an SQLite cursor", "no rows within 600 s", true))
            }
        }
    }

    pub(super) fn close(&mut self) {
        self.rx = None;
    }
}

/// A database error, marked transient when SQLite says busy, locked, I/O error or cannot
/// open (another process holds a lock, the disk hiccupped).
pub(super) fn lite_error(what: impl Into<String>, e: rusqlite::Error) -> crate::ConnectError {
    use rusqlite::ErrorCode;
    let transient = matches!(
        e.sqlite_error_code(),
        Some(ErrorCode::DatabaseBusy | ErrorCode::DatabaseLocked | ErrorCode::SystemIoFailure | ErrorCode::CannotOpen)
    );
    db_error_kind(what, e, transient)
}

/// The start of a statement, for error messages.
pub(super) fn short(sql: &str) -> String {
    let s = sql.trim();
    if s.len() <= 120 {
        return s.to_owned();
    }
    let cut = (0..=120).rev().find(|i| s.is_char_boundary(*i)).unwrap_or(0);
    format!("{}…", &s[..cut])
}
