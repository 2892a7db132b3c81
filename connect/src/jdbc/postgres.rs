//! PostgreSQL through the sync `postgres` client. [`SqlValue`] implements `ToSql` and
//! `FromSql` for every type it maps, converting to what the server asks for (a parameter's type
//! comes from the prepared statement), so callers bind values without knowing column types.

use std::collections::HashMap;
use std::error::Error as StdError;

use bytes::{BufMut, BytesMut};
use postgres::types::{FromSql, IsNull, Kind, ToSql, Type};
use postgres::{Client, NoTls, Statement};

use super::sqlite::short;
use super::values::{format_date, format_time, parse_date, parse_time};
use super::{db_error_kind, format_timestamp_micros, parse_timestamp_micros, Column, Rows, SqlType, SqlValue};
use crate::error::Result;

type BoxError = Box<dyn StdError + Sync + Send>;

/// 2000-01-01 (PostgreSQL's epoch) in Unix microseconds and days.
const PG_EPOCH_MICROS: i64 = 946_684_800_000_000;
const PG_EPOCH_DAYS: i32 = 10_957;

/// How many prepared statements a connection keeps.
const STATEMENT_CACHE_MAX: usize = 128;

pub(super) struct PgDb {
    client: Client,
    statements: HashMap<String, Statement>,
    cursors: u64,
    /// The open cursor: its transaction is the connection's, so there is at most one.
    open_cursor: Option<String>,
}

pub(super) fn sql_type_of(ty: &Type) -> SqlType {
    match *ty {
        Type::BOOL => SqlType::Bool,
        Type::INT2 => SqlType::Int16,
        Type::INT4 => SqlType::Int32,
        Type::INT8 | Type::OID => SqlType::Int64,
        Type::FLOAT4 => SqlType::Float32,
        Type::FLOAT8 => SqlType::Float64,
        Type::NUMERIC => SqlType::Numeric,
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::UUID | Type::CHAR => SqlType::Text,
        Type::BYTEA => SqlType::Bytes,
        Type::TIMESTAMP | Type::TIMESTAMPTZ => SqlType::Timestamp,
        Type::DATE => SqlType::Date,
        Type::TIME => SqlType::Time,
        Type::JSON | Type::JSONB => SqlType::Json,
        _ if matches!(ty.kind(), Kind::Enum(_)) || ty.name() == "citext" => SqlType::Text,
        _ => SqlType::Unknown,
    }
}

impl PgDb {
    pub(super) fn open(url: &str, user: Option<&str>, password: Option<&str>) -> Result<PgDb> {
        let config = pg_config(url, user, password)?;
        let client = config.connect(NoTls).map_err(|e| pg_error(format!("connecting to {}", redact(url)), &e))?;
        Ok(PgDb { client, statements: HashMap::new(), cursors: 0, open_cursor: None })
    }

    pub(super) fn is_alive(&self) -> bool {
        !self.client.is_closed()
    }

    fn statement(&mut self, sql: &str) -> Result<Statement> {
        if let Some(s) = self.statements.get(sql) {
            return Ok(s.clone());
        }
        let stmt = self.client.prepare(sql).map_err(|e| pg_error(format!("preparing {}", short(sql)), &e))?;
        if self.statements.len() >= STATEMENT_CACHE_MAX {
            self.statements.clear();
        }
        self.statements.insert(sql.to_owned(), stmt.clone());
        Ok(stmt)
    }

    pub(super) fn query(&mut self, sql: &str, params: &[SqlValue]) -> Result<Rows> {
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
        let mut stmt = self.statement(sql)?;
        let mut result = self.client.query(&stmt, &refs);
        if result.as_ref().is_err_and(is_stale_plan) {
            // The table changed shape since the statement was prepared (ALTER TABLE on a
            // `SELECT *`): prepare it again for the new columns.
            self.statements.remove(sql);
            stmt = self.statement(sql)?;
            result = self.client.query(&stmt, &refs);
        }
        let rows = result.map_err(|e| pg_error(format!("running {}", short(sql)), &e))?;
        rows_of(&stmt, &rows).map_err(|e| pg_error(format!("reading the result of {}", short(sql)), &e))
    }

    pub(super) fn execute(&mut self, sql: &str, params: &[SqlValue]) -> Result<u64> {
        let refs: Vec<&SqlValue> = params.iter().collect();
        self.execute_refs(sql, &refs)
    }

    pub(super) fn execute_refs(&mut self, sql: &str, params: &[&SqlValue]) -> Result<u64> {
        let stmt = self.statement(sql)?;
        let refs: Vec<&(dyn ToSql + Sync)> = params.iter().map(|p| *p as &(dyn ToSql + Sync)).collect();
        self.client.execute(&stmt, &refs).map_err(|e| {
            if is_stale_plan(&e) {
                // Not retried here (a write may be inside the caller's transaction, which this
                // error aborted); the caller's retry prepares it afresh.
                self.statements.remove(sql);
            }
            pg_error(format!("running {}", short(sql)), &e)
        })
    }

    pub(super) fn execute_batch(&mut self, sql: &str) -> Result<()> {
        self.client.batch_execute(sql).map_err(|e| pg_error(format!("running {}", short(sql)), &e))
    }

    pub(super) fn execute_many(&mut self, sql: &str, rows: &[Vec<SqlValue>]) -> Result<u64> {
        let stmt = self.statement(sql)?;
        let mut total = 0;
        for row in rows {
            let refs: Vec<&(dyn ToSql + Sync)> = row.iter().map(|p| p as &(dyn ToSql + Sync)).collect();
            total += self.client.execute(&stmt, &refs).map_err(|e| pg_error(format!("running {}", short(sql)), &e))?;
        }
        Ok(total)
    }

    pub(super) fn list_tables(&mut self) -> Result<Vec<String>> {
        let rows = self.query(
            "SELECT CASE WHEN table_schema = 'public' THEN table_name ELSE table_schema || '.' || table_name END \
             FROM information_schema.tables \
             WHERE table_schema NOT IN ('pg_catalog', 'information_schema') AND table_type IN ('BASE TABLE', 'VIEW') \
             ORDER BY table_schema, table_name",
            &[],
        )?;
        Ok(rows.first_texts())
    }

    pub(super) fn table_columns(&mut self, table: &str) -> Result<Vec<Column>> {
        let rows = self.query(
            "SELECT a.attname::text, a.atttypid::int8, format_type(a.atttypid, a.atttypmod), NOT a.attnotnull \
             FROM pg_attribute a WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped \
             ORDER BY a.attnum",
            &[SqlValue::Text(qualified(table))],
        )?;
        Ok(rows
            .rows
            .into_iter()
            .filter_map(|r| {
                let mut it = r.into_iter();
                let (
                    Some(SqlValue::Text(name)),
                    Some(SqlValue::Int(oid)),
                    Some(SqlValue::Text(type_name)),
                    Some(SqlValue::Bool(nullable)),
                ) = (it.next(), it.next(), it.next(), it.next())
                else {
                    return None;
                };
                let sql_type =
                    u32::try_from(oid).ok().and_then(Type::from_oid).map_or(SqlType::Unknown, |t| sql_type_of(&t));
                Some(Column { name, sql_type, type_name, nullable })
            })
            .collect())
    }

    pub(super) fn primary_key(&mut self, table: &str) -> Result<Vec<String>> {
        let rows = self.query(
            "SELECT a.attname::text FROM pg_index i \
             CROSS JOIN LATERAL unnest(i.indkey) WITH ORDINALITY AS k(attnum, ord) \
             JOIN pg_attribute a ON a.attrelid = i.indrelid AND a.attnum = k.attnum \
             WHERE i.indrelid = to_regclass($1) AND i.indisprimary ORDER BY k.ord",
            &[SqlValue::Text(qualified(table))],
        )?;
        Ok(rows.first_texts())
    }

    pub(super) fn cursor(&mut self, sql: &str) -> Result<String> {
        if let Some(open) = &self.open_cursor {
            // A second DECLARE would share the first one's transaction, and closing either
            // (CLOSE; COMMIT) would destroy the other.
            return Err(crate::ConnectError::Internal(format!(
                "a PostgreSQL cursor was opened while {open} is open on the same connection"
            )));
        }
        self.cursors += 1;
        let name = format!("spate_cursor_{}", self.cursors);
        self.execute_batch(&format!(
            "BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY; DECLARE {name} NO SCROLL CURSOR FOR {sql}"
        ))
        .inspect_err(|_| {
            let _ = self.client.batch_execute("ROLLBACK");
        })?;
        self.open_cursor = Some(name.clone());
        Ok(name)
    }

    pub(super) fn fetch(&mut self, name: &str, n: usize) -> Result<Rows> {
        self.query(&format!("FETCH FORWARD {n} FROM {name}"), &[])
    }

    pub(super) fn close_cursor(&mut self, name: &str) -> Result<()> {
        // The FETCH statements were prepared per cursor; drop them with it.
        self.statements.retain(|sql, _| !sql.ends_with(&format!(" FROM {name}")));
        if self.open_cursor.as_deref() == Some(name) {
            self.open_cursor = None;
        }
        self.execute_batch(&format!("CLOSE {name}; COMMIT"))
    }
}

/// The client config of `url`, with the connection checks a long-running task needs where the
/// URL does not set its own: without them a connection whose server vanished (host down, a
/// NAT or firewall dropping the flow) leaves a query waiting for the kernel's ~2 h keepalive
/// or ~15 min retransmission limit. Keepalive probes after 30 s idle, every 10 s, 3 missed →
/// closed; unacknowledged sent data → closed after 60 s (`tcp_user_timeout`). A slow query on
/// a live server is not cut short (its socket answers probes); no `statement_timeout` is set,
/// as a bulk cursor or a large batch may rightly run long.
pub(crate) fn pg_config(url: &str, user: Option<&str>, password: Option<&str>) -> Result<postgres::Config> {
    use std::time::Duration;
    let mut config: postgres::Config =
        url.parse().map_err(|e| crate::ConnectError::config("connection.url", format!("not a PostgreSQL URL: {e}")))?;
    if let Some(u) = user {
        config.user(u);
    }
    if let Some(p) = password {
        config.password(p);
    }
    if !url.contains("connect_timeout") {
        config.connect_timeout(Duration::from_secs(30));
    }
    if !url.contains("keepalives") {
        config.keepalives(true);
        config.keepalives_idle(Duration::from_secs(30));
        config.keepalives_interval(Duration::from_secs(10));
        config.keepalives_retries(3);
    }
    if !url.contains("tcp_user_timeout") {
        config.tcp_user_timeout(Duration::from_secs(60));
    }
    Ok(config)
}

/// A database error, marked transient by its kind or SQLSTATE class: 08 connection
/// exception, 53 insufficient resources, 57P01-57P03 shutdown / cannot connect now, 58 system
/// error, 40001 serialization failure, 40P01 deadlock; or a closed connection or an I/O error.
fn pg_error(what: String, e: &postgres::Error) -> crate::ConnectError {
    let transient = match e.code() {
        Some(code) => {
            let c = code.code();
            c.starts_with("08")
                || c.starts_with("53")
                || c.starts_with("58")
                || matches!(c, "57P01" | "57P02" | "57P03" | "40001" | "40P01")
        }
        None => e.is_closed() || e.source().is_some_and(|s| s.is::<std::io::Error>()),
    };
    db_error_kind(what, chain(e), transient)
}

/// SQLSTATE 0A000 "cached plan must not change result type": a prepared statement whose
/// result columns changed under it (ALTER TABLE).
fn is_stale_plan(e: &postgres::Error) -> bool {
    e.code() == Some(&postgres::error::SqlState::FEATURE_NOT_SUPPORTED)
}

/// The error with its causes: `postgres::Error` shows only the outermost ("error serializing
/// parameter 0") in `Display`.
fn chain(e: &dyn StdError) -> String {
    let mut s = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        s.push_str(": ");
        s.push_str(&cause.to_string());
        source = cause.source();
    }
    s
}

/// `schema.table` quoted for `to_regclass` (which parses its argument as SQL).
fn qualified(table: &str) -> String {
    table.split('.').map(|p| format!("\"{}\"", p.replace('"', "\"\""))).collect::<Vec<_>>().join(".")
}

/// The URL without its password, for messages.
fn redact(url: &str) -> String {
    match (url.find("://"), url.find('@')) {
        (Some(s), Some(at)) if at > s => match url[s + 3..at].find(':') {
            Some(colon) => format!("{}:***{}", &url[..s + 3 + colon], &url[at..]),
            None => url.to_owned(),
        },
        _ => url.to_owned(),
    }
}

fn rows_of(stmt: &Statement, rows: &[postgres::Row]) -> std::result::Result<Rows, postgres::Error> {
    let columns: Vec<Column> = stmt
        .columns()
        .iter()
        .map(|c| Column {
            name: c.name().to_owned(),
            sql_type: sql_type_of(c.type_()),
            type_name: c.type_().name().to_owned(),
            nullable: true,
        })
        .collect();
    let mut out = Vec::with_capacity(rows.len());
    for row in rows {
        let mut values = Vec::with_capacity(columns.len());
        for i in 0..columns.len() {
            values.push(row.try_get::<_, SqlValue>(i)?);
        }
        out.push(values);
    }
    Ok(Rows { columns, rows: out })
}

fn conversion(v: &SqlValue, ty: &Type) -> BoxError {
    format!("cannot store {} in a column of type {}", v.describe(), ty.name()).into()
}

fn as_i64(v: &SqlValue, ty: &Type) -> std::result::Result<i64, BoxError> {
    match v {
        SqlValue::Int(i) => Ok(*i),
        SqlValue::Bool(b) => Ok(i64::from(*b)),
        SqlValue::Float(f) if f.fract() == 0.0 && f.abs() < 9.2e18 => Ok(*f as i64),
        SqlValue::Text(s) | SqlValue::Numeric(s) => s.trim().parse::<i64>().map_err(|_| conversion(v, ty)),
        _ => Err(conversion(v, ty)),
    }
}

fn as_f64(v: &SqlValue, ty: &Type) -> std::result::Result<f64, BoxError> {
    match v {
        SqlValue::Int(i) => Ok(*i as f64),
        SqlValue::Float(f) => Ok(*f),
        SqlValue::Text(s) | SqlValue::Numeric(s) => s.trim().parse::<f64>().map_err(|_| conversion(v, ty)),
        _ => Err(conversion(v, ty)),
    }
}

/// The value as text for text-like columns.
fn as_text(v: &SqlValue, ty: &Type) -> std::result::Result<String, BoxError> {
    Ok(match v {
        SqlValue::Text(s) | SqlValue::Numeric(s) | SqlValue::Json(s) => s.clone(),
        SqlValue::Bool(b) => b.to_string(),
        SqlValue::Int(i) => i.to_string(),
        SqlValue::Float(f) => f.to_string(),
        SqlValue::Timestamp(t) => format_timestamp_micros(*t),
        SqlValue::Date(d) => format_date(*d),
        SqlValue::Time(t) => format_time(*t),
        SqlValue::Bytes(b) => String::from_utf8(b.clone()).map_err(|_| conversion(v, ty))?,
        SqlValue::Null => return Err(conversion(v, ty)),
    })
}

fn as_timestamp(v: &SqlValue, ty: &Type) -> std::result::Result<i64, BoxError> {
    match v {
        SqlValue::Timestamp(t) => Ok(*t),
        // A bare number for a timestamp column is epoch milliseconds, as Connect's Timestamp.
        SqlValue::Int(ms) => ms.checked_mul(1000).ok_or_else(|| conversion(v, ty)),
        SqlValue::Date(d) => Ok(i64::from(*d) * 86_400_000_000),
        SqlValue::Text(s) => parse_timestamp_micros(s).map_err(Into::into),
        _ => Err(conversion(v, ty)),
    }
}

impl ToSql for SqlValue {
    fn to_sql(&self, ty: &Type, out: &mut BytesMut) -> std::result::Result<IsNull, BoxError> {
        if matches!(self, SqlValue::Null) {
            return Ok(IsNull::Yes);
        }
        match *ty {
            Type::BOOL => out.put_u8(match self {
                SqlValue::Bool(b) => u8::from(*b),
                SqlValue::Text(s) => match s.trim().to_ascii_lowercase().as_str() {
                    "true" | "t" | "1" | "yes" | "on" => 1,
                    "false" | "f" | "0" | "no" | "off" => 0,
                    _ => return Err(conversion(self, ty)),
                },
                other => u8::from(as_i64(other, ty)? != 0),
            }),
            Type::INT2 => out.put_i16(i16::try_from(as_i64(self, ty)?).map_err(|_| conversion(self, ty))?),
            Type::INT4 => out.put_i32(i32::try_from(as_i64(self, ty)?).map_err(|_| conversion(self, ty))?),
            Type::INT8 => out.put_i64(as_i64(self, ty)?),
            Type::OID => out.put_u32(u32::try_from(as_i64(self, ty)?).map_err(|_| conversion(self, ty))?),
            Type::FLOAT4 => out.put_f32(as_f64(self, ty)? as f32),
            Type::FLOAT8 => out.put_f64(as_f64(self, ty)?),
            Type::NUMERIC => {
                let text = match self {
                    SqlValue::Int(i) => i.to_string(),
                    SqlValue::Float(f) if f.is_nan() => "NaN".to_owned(),
                    SqlValue::Float(f) if f.is_finite() => f.to_string(),
                    SqlValue::Numeric(s) | SqlValue::Text(s) => s.trim().to_owned(),
                    _ => return Err(conversion(self, ty)),
                };
                encode_numeric(&text, out).map_err(|_| conversion(self, ty))?;
            }
            Type::BYTEA => match self {
                SqlValue::Bytes(b) => out.put_slice(b),
                other => out.put_slice(as_text(other, ty)?.as_bytes()),
            },
            Type::TIMESTAMP | Type::TIMESTAMPTZ => out.put_i64(as_timestamp(self, ty)?.saturating_sub(PG_EPOCH_MICROS)),
            Type::DATE => {
                let days = match self {
                    SqlValue::Date(d) => *d,
                    SqlValue::Text(s) => parse_date(s).ok_or_else(|| conversion(self, ty))?,
                    other => i32::try_from(as_timestamp(other, ty)?.div_euclid(86_400_000_000))
                        .map_err(|_| conversion(self, ty))?,
                };
                out.put_i32(days.saturating_sub(PG_EPOCH_DAYS));
            }
            Type::TIME => out.put_i64(match self {
                SqlValue::Time(t) => *t,
                SqlValue::Text(s) => parse_time(s).ok_or_else(|| conversion(self, ty))?,
                // Connect's Time: milliseconds of the day.
                SqlValue::Int(ms) => ms.checked_mul(1000).ok_or_else(|| conversion(self, ty))?,
                _ => return Err(conversion(self, ty)),
            }),
            Type::JSON | Type::JSONB => {
                let text = match self {
                    SqlValue::Json(s) => s.clone(),
                    // Text that is not a JSON document becomes a JSON string.
                    SqlValue::Text(s) => {
                        if serde_json::from_str::<serde_json::Value>(s).is_ok() {
                            s.clone()
                        } else {
                            serde_json::Value::String(s.clone()).to_string()
                        }
                    }
                    SqlValue::Bool(b) => b.to_string(),
                    SqlValue::Int(i) => i.to_string(),
                    SqlValue::Float(f) => {
                        serde_json::Number::from_f64(*f).map_or_else(|| "null".to_owned(), |n| n.to_string())
                    }
                    SqlValue::Numeric(s) => s.clone(),
                    other => serde_json::Value::String(as_text(other, ty)?).to_string(),
                };
                if *ty == Type::JSONB {
                    out.put_u8(1);
                }
                out.put_slice(text.as_bytes());
            }
            Type::UUID => {
                let text = as_text(self, ty)?;
                let u = uuid::Uuid::parse_str(text.trim()).map_err(|_| conversion(self, ty))?;
                out.put_slice(u.as_bytes());
            }
            // Text, varchar, char, name, unknown, enums, citext: all take UTF-8 text as binary.
            _ => out.put_slice(as_text(self, ty)?.as_bytes()),
        }
        Ok(IsNull::No)
    }

    fn accepts(_ty: &Type) -> bool {
        // Every type is attempted; one this value cannot become fails at bind time with a
        // message naming both.
        true
    }

    postgres::types::to_sql_checked!();
}

fn be<const N: usize>(raw: &[u8]) -> std::result::Result<[u8; N], BoxError> {
    raw.try_into().map_err(|_| format!("expected {N} bytes, got {}", raw.len()).into())
}

impl<'a> FromSql<'a> for SqlValue {
    fn from_sql(ty: &Type, raw: &'a [u8]) -> std::result::Result<Self, BoxError> {
        Ok(match *ty {
            Type::BOOL => SqlValue::Bool(raw.first().is_some_and(|b| *b != 0)),
            Type::INT2 => SqlValue::Int(i64::from(i16::from_be_bytes(be(raw)?))),
            Type::INT4 => SqlValue::Int(i64::from(i32::from_be_bytes(be(raw)?))),
            Type::INT8 => SqlValue::Int(i64::from_be_bytes(be(raw)?)),
            Type::OID => SqlValue::Int(i64::from(u32::from_be_bytes(be(raw)?))),
            Type::FLOAT4 => SqlValue::Float(f64::from(f32::from_be_bytes(be(raw)?))),
            Type::FLOAT8 => SqlValue::Float(f64::from_be_bytes(be(raw)?)),
            Type::NUMERIC => SqlValue::Numeric(decode_numeric(raw)?),
            Type::BYTEA => SqlValue::Bytes(raw.to_vec()),
            Type::TIMESTAMP | Type::TIMESTAMPTZ => {
                SqlValue::Timestamp(i64::from_be_bytes(be(raw)?).saturating_add(PG_EPOCH_MICROS))
            }
            Type::DATE => SqlValue::Date(i32::from_be_bytes(be(raw)?).saturating_add(PG_EPOCH_DAYS)),
            Type::TIME => SqlValue::Time(i64::from_be_bytes(be(raw)?)),
            Type::JSON => SqlValue::Json(std::str::from_utf8(raw)?.to_owned()),
            Type::JSONB => SqlValue::Json(std::str::from_utf8(raw.get(1..).unwrap_or_default())?.to_owned()),
            Type::UUID => SqlValue::Text(uuid::Uuid::from_bytes(be(raw)?).to_string()),
            Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME | Type::CHAR | Type::UNKNOWN => {
                SqlValue::Text(std::str::from_utf8(raw)?.to_owned())
            }
            // Enums, citext, xml and the like send UTF-8 text; other types' binary forms are
            // their own (interval, arrays, ranges…) and come as raw bytes: cast such columns
            // to text in a `query` to read them as text.
            _ if matches!(ty.kind(), Kind::Enum(_)) || matches!(ty.name(), "citext" | "xml" | "ltree" | "unknown") => {
                SqlValue::Text(std::str::from_utf8(raw)?.to_owned())
            }
            _ => SqlValue::Bytes(raw.to_vec()),
        })
    }

    fn from_sql_null(_ty: &Type) -> std::result::Result<Self, BoxError> {
        Ok(SqlValue::Null)
    }

    fn accepts(_ty: &Type) -> bool {
        true
    }
}

/// PostgreSQL's binary NUMERIC: ndigits, weight (of the first base-10000 digit), sign, dscale,
/// then the base-10000 digits.
fn decode_numeric(raw: &[u8]) -> std::result::Result<String, BoxError> {
    if raw.len() < 8 {
        return Err("numeric value too short".into());
    }
    let ndigits = u16::from_be_bytes([raw[0], raw[1]]) as usize;
    let weight = i16::from_be_bytes([raw[2], raw[3]]) as i32;
    let sign = u16::from_be_bytes([raw[4], raw[5]]);
    let dscale = u16::from_be_bytes([raw[6], raw[7]]) as usize;
    match sign {
        0xC000 => return Ok("NaN".into()),
        0xD000 => return Ok("Infinity".into()),
        0xF000 => return Ok("-Infinity".into()),
        _ => {}
    }
    if raw.len() < 8 + 2 * ndigits {
        return Err("numeric value truncated".into());
    }
    let digits: Vec<u16> = (0..ndigits).map(|i| u16::from_be_bytes([raw[8 + 2 * i], raw[9 + 2 * i]])).collect();
    let mut int_part = String::new();
    for i in 0..=weight.max(-1) {
        let d = digits.get(i as usize).copied().unwrap_or(0);
        if int_part.is_empty() {
            if d != 0 || i == weight {
                int_part.push_str(&d.to_string());
            }
        } else {
            int_part.push_str(&format!("{d:04}"));
        }
    }
    if int_part.is_empty() {
        int_part.push('0');
    }
    let mut frac = String::new();
    if dscale > 0 {
        let mut i = weight + 1;
        while frac.len() < dscale {
            let d = if i < 0 { 0 } else { digits.get(i as usize).copied().unwrap_or(0) };
            frac.push_str(&format!("{d:04}"));
            i += 1;
        }
        frac.truncate(dscale);
    }
    let mut s = String::new();
    if sign == 0x4000 {
        s.push('-');
    }
    s.push_str(&int_part);
    if !frac.is_empty() {
        s.push('.');
        s.push_str(&frac);
    }
    Ok(s)
}

/// Encodes decimal text (`-123.4500`, `1e5`, `NaN`) as binary NUMERIC.
fn encode_numeric(text: &str, out: &mut BytesMut) -> std::result::Result<(), ()> {
    if text.eq_ignore_ascii_case("nan") {
        out.put_slice(&[0, 0, 0, 0, 0xC0, 0, 0, 0]);
        return Ok(());
    }
    let (negative, body) = match text.strip_prefix('-') {
        Some(b) => (true, b),
        None => (false, text.strip_prefix('+').unwrap_or(text)),
    };
    let (mantissa, exp) = match body.find(['e', 'E']) {
        Some(p) => (&body[..p], body[p + 1..].parse::<i32>().map_err(|_| ())?),
        None => (body, 0),
    };
    let (int_digits, frac_digits) = match mantissa.find('.') {
        Some(p) => (&mantissa[..p], &mantissa[p + 1..]),
        None => (mantissa, ""),
    };
    if int_digits.is_empty() && frac_digits.is_empty()
        || !int_digits.bytes().chain(frac_digits.bytes()).all(|b| b.is_ascii_digit())
        || exp.abs() > 1000
    {
        return Err(());
    }
    // All digits and the position of the decimal point within them, after the exponent.
    let all: Vec<u8> = int_digits.bytes().chain(frac_digits.bytes()).map(|b| b - b'0').collect();
    let point = int_digits.len() as i32 + exp;
    let dscale = (frac_digits.len() as i32 - exp).max(0) as u16;
    // Align to base-10000 groups: pad left so the point falls on a group boundary.
    let pad_left = (4 - point.rem_euclid(4)) % 4;
    let mut padded: Vec<u8> = std::iter::repeat_n(0u8, pad_left as usize).chain(all).collect();
    let point_padded = point + pad_left;
    while !padded.len().is_multiple_of(4) {
        padded.push(0);
    }
    let mut groups: Vec<u16> =
        padded.chunks(4).map(|c| c.iter().fold(0u16, |acc, d| acc * 10 + u16::from(*d))).collect();
    let mut weight = point_padded / 4 - 1;
    while groups.first() == Some(&0) {
        groups.remove(0);
        weight -= 1;
    }
    while groups.last() == Some(&0) {
        groups.pop();
    }
    if groups.is_empty() {
        weight = 0;
    }
    if groups.len() > u16::MAX as usize || weight.abs() > i16::MAX as i32 {
        return Err(());
    }
    out.put_u16(groups.len() as u16);
    out.put_i16(weight as i16);
    out.put_u16(if negative && !groups.is_empty() { 0x4000 } else { 0 });
    out.put_u16(dscale);
    for g in groups {
        out.put_u16(g);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numeric_round_trips_through_the_binary_form() {
        for (input, expected) in [
            ("0", "0"),
            ("1", "1"),
            ("-1", "-1"),
            ("12345.6789", "12345.6789"),
            ("0.0001", "0.0001"),
            ("-0.5", "-0.5"),
            ("100000000", "100000000"),
            ("123.4500", "123.4500"),
            ("1e5", "100000"),
            ("1.5e-3", "0.0015"),
            ("99999999999999999999.000000001", "99999999999999999999.000000001"),
            ("NaN", "NaN"),
        ] {
            let mut buf = BytesMut::new();
            encode_numeric(input, &mut buf).unwrap_or_else(|()| panic!("{input}"));
            assert_eq!(decode_numeric(&buf).unwrap(), expected, "{input}");
        }
        assert!(encode_numeric("12a", &mut BytesMut::new()).is_err());
        assert!(encode_numeric("", &mut BytesMut::new()).is_err());
    }

    #[test]
    fn connections_probe_a_vanished_server() {
        let c = pg_config("postgresql://h:5/db", Some("u"), None).unwrap();
        assert!(c.get_keepalives());
        assert_eq!(c.get_keepalives_idle(), std::time::Duration::from_secs(30));
        assert_eq!(c.get_tcp_user_timeout(), Some(&std::time::Duration::from_secs(60)));
        assert_eq!(c.get_user(), Some("u"));
        // The URL's own settings win.
        let c = pg_config("postgresql://h:5/db?keepalives_idle=300&tcp_user_timeout=5", None, None).unwrap();
        assert_eq!(c.get_keepalives_idle(), std::time::Duration::from_secs(300));
        assert_eq!(c.get_tcp_user_timeout(), Some(&std::time::Duration::from_secs(5)));
    }

    #[test]
    fn passwords_are_redacted() {
        assert_eq!(redact("postgresql://u:secret@h:5/db"), "postgresql://u:***@h:5/db");
        assert_eq!(redact("postgresql://h:5/db"), "postgresql://h:5/db");
    }
}
