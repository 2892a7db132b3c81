//! SQL text per dialect (sans-IO). Identifiers are always quoted (so any topic or field name is
//! a valid table or column name, and case is kept).
//!
//! PostgreSQL gets one statement per group of rows whatever its size: every column travels as
//! one array parameter and `UNNEST` turns the arrays back into rows (`INSERT … SELECT … FROM
//! UNNEST($1::int8[], $2::text[]) … ON CONFLICT … DO UPDATE`), so the statement text does not
//! depend on the row count (it is prepared once) and there is no 65,535-parameter limit. SQLite
//! runs one prepared single-row statement per row inside the transaction, which is its fast path
//! (no network, no parse per row).

use super::plan::{InsertMode, Kind};
use super::row::SqlType;

/// The SQL dialect of the target database.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flavor {
    Sqlite,
    Postgres,
}

/// `"name"` with embedded quotes doubled.
pub(crate) fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// A table name as `table.name.format` produced it: `schema.table` when it holds one dot
/// (PostgreSQL schemas), each part quoted; otherwise the whole name as one identifier.
pub(crate) fn table_ref(flavor: Flavor, name: &str) -> String {
    match (flavor, name.split_once('.')) {
        (Flavor::Postgres, Some((schema, table))) if !table.contains('.') => {
            format!("{}.{}", quote(schema), quote(table))
        }
        _ => quote(name),
    }
}

/// The type `auto.create`/`auto.evolve` declare.
pub(crate) fn ddl_type(flavor: Flavor, ty: &SqlType) -> String {
    let s = match (flavor, ty) {
        (_, SqlType::Other(name)) => return name.clone(),
        (Flavor::Postgres, SqlType::Int16) => "SMALLINT",
        (Flavor::Postgres, SqlType::Int32) => "INTEGER",
        (Flavor::Postgres, SqlType::Int64) => "BIGINT",
        (Flavor::Postgres, SqlType::Float32) => "REAL",
        (Flavor::Postgres, SqlType::Float64) => "DOUBLE PRECISION",
        (Flavor::Postgres, SqlType::Bytes) => "BYTEA",
        (Flavor::Postgres, SqlType::Json) => "JSONB",
        (Flavor::Sqlite, SqlType::Int16 | SqlType::Int32 | SqlType::Int64) => "INTEGER",
        (Flavor::Sqlite, SqlType::Float32 | SqlType::Float64) => "REAL",
        (Flavor::Sqlite, SqlType::Bytes) => "BLOB",
        (Flavor::Sqlite, SqlType::Json) => "TEXT",
        (_, SqlType::Boolean) => "BOOLEAN",
        (_, SqlType::Text) => "TEXT",
        (_, SqlType::Timestamp) => "TIMESTAMP",
        (_, SqlType::Date) => "DATE",
        (_, SqlType::Time) => "TIME",
        (_, SqlType::Decimal) => "NUMERIC",
    };
    s.to_owned()
}

/// The column type a database reports (`information_schema.columns.data_type` or `udt_name`
/// for PostgreSQL, the declared type for SQLite), for coercing values before a write.
pub(crate) fn type_from_db(flavor: Flavor, declared: &str) -> SqlType {
    let t = declared.trim().to_ascii_lowercase();
    if flavor == Flavor::Sqlite {
        // SQLite stores what it is given (type affinity); only PostgreSQL needs values coerced.
        return SqlType::Other(declared.to_owned());
    }
    let base = t.split('(').next().unwrap_or("").trim();
    match base {
        "smallint" | "int2" => SqlType::Int16,
        "integer" | "int" | "int4" | "serial" => SqlType::Int32,
        "bigint" | "int8" | "bigserial" => SqlType::Int64,
        "real" | "float4" => SqlType::Float32,
        "double precision" | "float8" => SqlType::Float64,
        "boolean" | "bool" => SqlType::Boolean,
        "text" | "character varying" | "varchar" | "character" | "char" | "bpchar" | "name" => SqlType::Text,
        "bytea" => SqlType::Bytes,
        "date" => SqlType::Date,
        "numeric" | "decimal" => SqlType::Decimal,
        "jsonb" => SqlType::Json,
        _ if base.starts_with("timestamp") => SqlType::Timestamp,
        _ if base.starts_with("time") => SqlType::Time,
        _ => SqlType::Other(declared.trim().to_owned()),
    }
}

/// How a column's values travel to PostgreSQL: the array parameter's element type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PgArray {
    Int8,
    Float8,
    Bool,
    Text,
    Bytea,
}

impl PgArray {
    fn name(self) -> &'static str {
        match self {
            PgArray::Int8 => "int8[]",
            PgArray::Float8 => "float8[]",
            PgArray::Bool => "bool[]",
            PgArray::Text => "text[]",
            PgArray::Bytea => "bytea[]",
        }
    }
}

/// The array type a column of `ty` travels in, and the cast from it (types sent as text).
pub(crate) fn pg_transport(ty: &SqlType) -> (PgArray, Option<String>) {
    match ty {
        SqlType::Int16 | SqlType::Int32 | SqlType::Int64 => (PgArray::Int8, None),
        SqlType::Float32 | SqlType::Float64 => (PgArray::Float8, None),
        SqlType::Boolean => (PgArray::Bool, None),
        SqlType::Text => (PgArray::Text, None),
        SqlType::Bytes => (PgArray::Bytea, None),
        // timestamptz: a string with an offset keeps it; one without is UTC (the session's
        // time zone); assigning to a `timestamp` column then gives the UTC wall-clock time.
        SqlType::Timestamp => (PgArray::Text, Some("timestamptz".to_owned())),
        SqlType::Date => (PgArray::Text, Some("date".to_owned())),
        SqlType::Time => (PgArray::Text, Some("time".to_owned())),
        SqlType::Decimal => (PgArray::Text, Some("numeric".to_owned())),
        SqlType::Json => (PgArray::Text, Some("jsonb".to_owned())),
        SqlType::Other(name) => {
            // The database's own spelling of the type (`format_type`, identifiers quoted where
            // needed): the text is cast to it (enums, citext, hstore, domains, arrays all take
            // text input). Anything odd is left uncast (the database then refuses the rows,
            // which go to the dead-letter queue).
            let safe = !name.is_empty()
                && name.chars().all(|c| c.is_ascii_alphanumeric() || " _().,[]\"".contains(c))
                && name.chars().filter(|&c| c == '"').count() % 2 == 0
                && name.chars().next().is_some_and(|c| c.is_ascii_alphabetic() || c == '_' || c == '"');
            (PgArray::Text, safe.then(|| name.clone()))
        }
    }
}

/// `CREATE TABLE IF NOT EXISTS` with the primary key (the first `pk_len` columns, NOT NULL);
/// other columns are nullable.
pub(crate) fn create_table(flavor: Flavor, table: &str, cols: &[(&str, SqlType)], pk_len: usize) -> String {
    let mut sql = format!("CREATE TABLE IF NOT EXISTS {} (", table_ref(flavor, table));
    for (i, (name, ty)) in cols.iter().enumerate() {
        if i > 0 {
            sql.push_str(", ");
        }
        sql.push_str(&quote(name));
        sql.push(' ');
        sql.push_str(&ddl_type(flavor, ty));
        if i < pk_len {
            sql.push_str(" NOT NULL");
        }
    }
    if pk_len > 0 {
        sql.push_str(", PRIMARY KEY (");
        sql.push_str(&quoted_list(cols[..pk_len].iter().map(|(n, _)| *n)));
        sql.push(')');
    }
    sql.push(')');
    sql
}

/// `ALTER TABLE … ADD COLUMN` (nullable).
pub(crate) fn add_column(flavor: Flavor, table: &str, name: &str, ty: &SqlType) -> String {
    format!("ALTER TABLE {} ADD COLUMN {} {}", table_ref(flavor, table), quote(name), ddl_type(flavor, ty))
}

fn quoted_list<'a>(names: impl Iterator<Item = &'a str>) -> String {
    names.map(quote).collect::<Vec<_>>().join(", ")
}

/// The single-row statement SQLite runs per row: parameters `?1…?n` in column order (the
/// primary key's first `pk_len`). `None` when there is nothing to run (an update of key
/// columns only).
pub(crate) fn sqlite_statement(
    mode: InsertMode,
    kind: Kind,
    table: &str,
    names: &[&str],
    pk_len: usize,
) -> Option<String> {
    let t = table_ref(Flavor::Sqlite, table);
    let p = |i: usize| format!("?{}", i + 1);
    let key_match =
        || names[..pk_len].iter().enumerate().map(|(i, n)| format!("{} = {}", quote(n), p(i))).collect::<Vec<_>>();
    if kind == Kind::Delete {
        return Some(format!("DELETE FROM {t} WHERE {}", key_match().join(" AND ")));
    }
    match mode {
        InsertMode::Insert | InsertMode::Upsert => {
            let mut sql = format!(
                "INSERT INTO {t} ({}) VALUES ({})",
                quoted_list(names.iter().copied()),
                (0..names.len()).map(p).collect::<Vec<_>>().join(", ")
            );
            if mode == InsertMode::Upsert {
                sql.push_str(&on_conflict(names, pk_len, "excluded"));
            }
            Some(sql)
        }
        InsertMode::Update => {
            if names.len() == pk_len {
                return None;
            }
            let set: Vec<String> =
                names.iter().enumerate().skip(pk_len).map(|(i, n)| format!("{} = {}", quote(n), p(i))).collect();
            Some(format!("UPDATE {t} SET {} WHERE {}", set.join(", "), key_match().join(" AND ")))
        }
    }
}

fn on_conflict(names: &[&str], pk_len: usize, excluded: &str) -> String {
    let keys = quoted_list(names[..pk_len].iter().copied());
    if names.len() == pk_len {
        return format!(" ON CONFLICT ({keys}) DO NOTHING");
    }
    let set: Vec<String> = names[pk_len..].iter().map(|n| format!("{q} = {excluded}.{q}", q = quote(n))).collect();
    format!(" ON CONFLICT ({keys}) DO UPDATE SET {}", set.join(", "))
}

/// The PostgreSQL statement for a whole group: `arrays[i]`/`casts[i]` from [`pg_transport`]
/// of column `i`'s type; parameter `$i+1` is column `i`'s array. `None` when there is nothing
/// to run (an update of key columns only).
pub(crate) fn pg_statement(
    mode: InsertMode,
    kind: Kind,
    table: &str,
    names: &[&str],
    pk_len: usize,
    arrays: &[PgArray],
    casts: &[Option<String>],
) -> Option<String> {
    let t = table_ref(Flavor::Postgres, table);
    let unnest = format!(
        "UNNEST({}) AS u({})",
        arrays.iter().enumerate().map(|(i, a)| format!("${}::{}", i + 1, a.name())).collect::<Vec<_>>().join(", "),
        (0..names.len()).map(|i| format!("c{i}")).collect::<Vec<_>>().join(", ")
    );
    let val = |i: usize| match &casts[i] {
        Some(c) => format!("u.c{i}::{c}"),
        None => format!("u.c{i}"),
    };
    let key_match =
        || (0..pk_len).map(|i| format!("t.{} = {}", quote(names[i]), val(i))).collect::<Vec<_>>().join(" AND ");
    if kind == Kind::Delete {
        return Some(format!("DELETE FROM {t} AS t USING {unnest} WHERE {}", key_match()));
    }
    match mode {
        InsertMode::Insert | InsertMode::Upsert => {
            let mut sql = format!(
                "INSERT INTO {t} ({}) SELECT {} FROM {unnest}",
                quoted_list(names.iter().copied()),
                (0..names.len()).map(val).collect::<Vec<_>>().join(", ")
            );
            if mode == InsertMode::Upsert {
                sql.push_str(&on_conflict(names, pk_len, "EXCLUDED"));
            }
            Some(sql)
        }
        InsertMode::Update => {
            if names.len() == pk_len {
                return None;
            }
            let set: Vec<String> = (pk_len..names.len()).map(|i| format!("{} = {}", quote(names[i]), val(i))).collect();
            Some(format!("UPDATE {t} AS t SET {} FROM {unnest} WHERE {}", set.join(", "), key_match()))
        }
    }
}

/// The offsets table of the exactly-once option: where each partition's next offset is stored
/// in the same transaction as the rows.
pub(crate) fn create_offsets_table(flavor: Flavor, table: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {} (\"connector\" TEXT NOT NULL, \"topic\" TEXT NOT NULL, \
         \"partition\" INTEGER NOT NULL, \"next_offset\" BIGINT NOT NULL, \
         PRIMARY KEY (\"connector\", \"topic\", \"partition\"))",
        table_ref(flavor, table)
    )
}

/// Upserts one partition's next offset if the stored one is what this task expects (a
/// compare-and-set: 0 rows affected = the stored offset moved). Parameters connector, topic,
/// partition, next_offset, expected (NULL: no row expected).
pub(crate) fn upsert_offset(flavor: Flavor, table: &str) -> String {
    let params = match flavor {
        Flavor::Sqlite => "?1, ?2, ?3, ?4",
        Flavor::Postgres => "$1, $2, $3::int8, $4",
    };
    let expected = match flavor {
        Flavor::Sqlite => "?5",
        Flavor::Postgres => "$5::int8",
    };
    format!(
        "INSERT INTO {} AS o (\"connector\", \"topic\", \"partition\", \"next_offset\") VALUES ({params}) \
         ON CONFLICT (\"connector\", \"topic\", \"partition\") DO UPDATE SET \"next_offset\" = \
         excluded.\"next_offset\" WHERE o.\"next_offset\" = {expected}",
        table_ref(flavor, table)
    )
}

/// Reads a connector's stored offsets: parameter connector; columns topic, partition, next_offset.
pub(crate) fn select_offsets(flavor: Flavor, table: &str) -> String {
    let p = match flavor {
        Flavor::Sqlite => "?1",
        Flavor::Postgres => "$1",
    };
    format!(
        "SELECT \"topic\", \"partition\", \"next_offset\" FROM {} WHERE \"connector\" = {p}",
        table_ref(flavor, table)
    )
}
