//! The sans-IO core of the JDBC source: where a table's reading stands ([`Position`]), which
//! rows the next query asks for ([`Filter`], rendered to SQL by [`render`]), how far a result
//! moves the position ([`advance`]), and the Kafka Connect JDBC offset format.
//!
//! Timestamps are compared in one unit per table, the "domain" of its timestamp expression:
//! microseconds for PostgreSQL `timestamp`/`timestamptz` columns, milliseconds for integer
//! (epoch ms) columns and for SQLite TEXT timestamps (which SQLite's date functions resolve to
//! the millisecond).
//!
//! **Tie safety.** `timestamp+incrementing` orders by `(ts, id)` and resumes strictly after the
//! last `(ts, id)` emitted, so rows sharing a timestamp across a batch boundary are neither lost
//! nor repeated. `timestamp` alone has no tie-breaker: a batch that fills `batch.max.rows` never
//! ends in the middle of a timestamp. The rows of its last timestamp are dropped from the batch
//! (the next query, `ts > last emitted`, reads them whole); when every row of the batch shares one
//! timestamp, all rows of that timestamp are read in one extra query ([`Filter::TsEquals`]) and
//! emitted together, so that batch is larger than `batch.max.rows`.

use serde_json::{json, Value as Json};

use crate::jdbc::{Dialect, SqlValue};

/// The four modes of Kafka Connect JDBC.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Bulk,
    Incrementing,
    Timestamp,
    TimestampIncrementing,
}

impl Mode {
    pub(crate) fn parse(s: &str) -> Option<Mode> {
        Some(match s.trim() {
            "bulk" => Mode::Bulk,
            "incrementing" => Mode::Incrementing,
            "timestamp" => Mode::Timestamp,
            "timestamp+incrementing" => Mode::TimestampIncrementing,
            _ => return None,
        })
    }

    pub(crate) fn uses_timestamp(self) -> bool {
        matches!(self, Mode::Timestamp | Mode::TimestampIncrementing)
    }

    pub(crate) fn uses_incrementing(self) -> bool {
        matches!(self, Mode::Incrementing | Mode::TimestampIncrementing)
    }
}

/// The unit of a table's timestamp domain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum TsUnit {
    Micros,
    Millis,
}

impl TsUnit {
    /// A domain value from microseconds since the epoch (rounding down).
    pub(crate) fn to_domain(self, micros: i64) -> i64 {
        match self {
            TsUnit::Micros => micros,
            TsUnit::Millis => micros.div_euclid(1000),
        }
    }
}

/// The last row emitted: its timestamp (domain units) and incrementing id.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Position {
    pub ts: Option<i64>,
    pub id: Option<i64>,
}

/// Which rows a query asks for. `end` is the exclusive upper timestamp bound
/// (database now − `timestamp.delay.interval.ms`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Filter {
    /// Every row (bulk).
    All,
    /// `id > after`, by id.
    IdAfter { after: Option<i64> },
    /// `ts > after AND ts < end`, by ts.
    TsAfter { after: Option<i64>, end: i64 },
    /// `(ts, id) > after AND ts < end`, by ts then id.
    TsIdAfter { after: Option<(i64, i64)>, end: i64 },
    /// `ts = at`: every row of one timestamp (the timestamp-mode tie read; no limit).
    TsEquals { at: i64 },
}

/// The filter for the next query of a table in `mode` at `pos`.
pub(crate) fn next_filter(mode: Mode, pos: Position, end: i64) -> Filter {
    match mode {
        Mode::Bulk => Filter::All,
        Mode::Incrementing => Filter::IdAfter { after: pos.id },
        Mode::Timestamp => Filter::TsAfter { after: pos.ts, end },
        Mode::TimestampIncrementing => match (pos.ts, pos.id) {
            (Some(ts), Some(id)) => Filter::TsIdAfter { after: Some((ts, id)), end },
            // A timestamp-only offset (e.g. the mode was changed): every id of later timestamps.
            (Some(ts), None) => Filter::TsIdAfter { after: Some((ts, i64::MAX)), end },
            (None, _) => Filter::TsIdAfter { after: None, end },
        },
    }
}

/// What a result of a query with `filter` (and `limit`) does: emit its first `emit` rows, move
/// to `pos`, and (`tie`) read every row of that timestamp before going on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Outcome {
    pub emit: usize,
    pub pos: Position,
    pub tie: Option<i64>,
}

/// How a result moves the position. `keys` are the rows' `(ts, id)` in result order (the
/// columns the mode does not use are `None`); `limit` the query's row limit.
pub(crate) fn advance(
    mode: Mode,
    filter: Filter,
    pos: Position,
    keys: &[(Option<i64>, Option<i64>)],
    limit: usize,
) -> Outcome {
    let last = |n: usize| -> Position {
        match n.checked_sub(1).and_then(|i| keys.get(i)) {
            Some((ts, id)) => Position { ts: ts.or(pos.ts), id: id.or(pos.id) },
            None => pos,
        }
    };
    match (mode, filter) {
        (Mode::Timestamp, Filter::TsAfter { .. }) if keys.len() >= limit && !keys.is_empty() => {
            let last_ts = keys[keys.len() - 1].0;
            let first_of_last = keys.iter().position(|(ts, _)| *ts == last_ts).unwrap_or(0);
            if first_of_last > 0 {
                Outcome { emit: first_of_last, pos: last(first_of_last), tie: None }
            } else {
                // One timestamp fills the whole batch: its rows may go on past the limit.
                Outcome { emit: 0, pos, tie: last_ts }
            }
        }
        _ => Outcome { emit: keys.len(), pos: last(keys.len()), tie: None },
    }
}

/// The parts of a table's queries that do not change between polls.
#[derive(Debug, Clone)]
pub(crate) struct QuerySpec {
    pub dialect: Dialect,
    /// What follows FROM: a quoted table, or `(query) AS "spate_query"`.
    pub from: String,
    /// The SQL expression compared as the timestamp (a quoted column, or an SQLite
    /// normalisation of it).
    pub ts_expr: Option<String>,
    /// Whether `ts_expr` is selected as an extra last column (it is not a plain column).
    pub ts_extra_column: bool,
    pub ts_unit: TsUnit,
    /// The quoted incrementing column.
    pub id_col: Option<String>,
}

/// The name of the extra column holding the normalised timestamp (never in a record).
pub(crate) const TS_EXTRA_COLUMN: &str = "__spate_ts";

impl QuerySpec {
    fn ts_param(&self, v: i64) -> SqlValue {
        match self.ts_unit {
            TsUnit::Micros => SqlValue::Timestamp(v),
            TsUnit::Millis => SqlValue::Int(v),
        }
    }
}

/// The SQL text and parameters for `filter` with at most `limit` rows (no limit for
/// [`Filter::All`], which is read through a cursor, and [`Filter::TsEquals`]).
pub(crate) fn render(spec: &QuerySpec, filter: Filter, limit: usize) -> (String, Vec<SqlValue>) {
    let d = spec.dialect;
    let ts = spec.ts_expr.as_deref().unwrap_or("NULL");
    let id = spec.id_col.as_deref().unwrap_or("NULL");
    let select = match (&spec.ts_expr, spec.ts_extra_column) {
        (Some(expr), true) => format!("SELECT *, {expr} AS {} FROM {}", d.quote_ident(TS_EXTRA_COLUMN), spec.from),
        _ => format!("SELECT * FROM {}", spec.from),
    };
    let mut params = Vec::new();
    let mut p = |v: SqlValue| {
        params.push(v);
        d.placeholder(params.len())
    };
    let sql = match filter {
        Filter::All => select,
        Filter::IdAfter { after } => {
            let cond = match after {
                Some(a) => format!("{id} > {}", p(SqlValue::Int(a))),
                None => format!("{id} IS NOT NULL"),
            };
            format!("{select} WHERE {cond} ORDER BY {id} ASC LIMIT {limit}")
        }
        Filter::TsAfter { after, end } => {
            let upper = format!("{ts} < {}", p(spec.ts_param(end)));
            let cond = match after {
                Some(a) => format!("{ts} > {} AND {upper}", p(spec.ts_param(a))),
                None => upper,
            };
            format!("{select} WHERE {cond} ORDER BY {ts} ASC LIMIT {limit}")
        }
        Filter::TsIdAfter { after, end } => {
            let upper = format!("{ts} < {}", p(spec.ts_param(end)));
            let cond = match after {
                Some((a_ts, a_id)) if d.supports_row_values() => {
                    let pt = p(spec.ts_param(a_ts));
                    let pi = p(SqlValue::Int(a_id));
                    format!("({ts}, {id}) > ({pt}, {pi}) AND {upper}")
                }
                Some((a_ts, a_id)) => {
                    let pt = p(spec.ts_param(a_ts));
                    let pi = p(SqlValue::Int(a_id));
                    format!("({ts} > {pt} OR ({ts} = {pt} AND {id} > {pi})) AND {upper}")
                }
                None => format!("{id} IS NOT NULL AND {upper}"),
            };
            format!("{select} WHERE {cond} ORDER BY {ts} ASC, {id} ASC LIMIT {limit}")
        }
        Filter::TsEquals { at } => format!("{select} WHERE {ts} = {}", p(spec.ts_param(at))),
    };
    (sql, params)
}

/// The source offset Kafka Connect JDBC stores for a position: `{"incrementing": id}`,
/// `{"timestamp": ms, "timestamp_nanos": nanos-of-second}`, or all three.
pub(crate) fn offset_json(mode: Mode, unit: TsUnit, pos: Position) -> Option<Json> {
    let mut m = serde_json::Map::new();
    if mode.uses_timestamp() {
        let ts = pos.ts?;
        let micros = match unit {
            TsUnit::Micros => ts,
            TsUnit::Millis => ts.checked_mul(1000)?,
        };
        let second_micros = micros.div_euclid(1_000_000) * 1_000_000;
        m.insert("timestamp".into(), json!(micros.div_euclid(1000)));
        m.insert("timestamp_nanos".into(), json!((micros - second_micros) * 1000));
    }
    if mode.uses_incrementing() {
        if let Some(id) = pos.id {
            m.insert("incrementing".into(), json!(id));
        } else if !mode.uses_timestamp() {
            return None;
        }
    }
    Some(Json::Object(m))
}

/// The position a stored offset stands for (fields the mode does not use are ignored; a
/// malformed offset is an error naming it).
pub(crate) fn position_from_offset(mode: Mode, unit: TsUnit, offset: &Json) -> Result<Position, String> {
    let mut pos = Position::default();
    if mode.uses_incrementing() {
        pos.id = match offset.get("incrementing") {
            None | Some(Json::Null) => None,
            Some(v) => {
                Some(v.as_i64().ok_or_else(|| format!("stored offset {offset} has a non-integer incrementing"))?)
            }
        };
    }
    if mode.uses_timestamp() {
        if let Some(ms) = offset.get("timestamp").filter(|v| !v.is_null()) {
            let ms = ms.as_i64().ok_or_else(|| format!("stored offset {offset} has a non-integer timestamp"))?;
            let micros = match offset.get("timestamp_nanos").and_then(Json::as_i64) {
                Some(nanos) if (0..1_000_000_000).contains(&nanos) => ms.div_euclid(1000) * 1_000_000 + nanos / 1000,
                _ => ms.saturating_mul(1000),
            };
            pos.ts = Some(unit.to_domain(micros));
        }
    }
    Ok(pos)
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn spec(dialect: Dialect, unit: TsUnit, extra: bool) -> QuerySpec {
        QuerySpec {
            dialect,
            from: "\"t\"".into(),
            ts_expr: Some(if extra { "norm(\"ts\")".into() } else { "\"ts\"".into() }),
            ts_extra_column: extra,
            ts_unit: unit,
            id_col: Some("\"id\"".into()),
        }
    }

    #[test]
    fn sql_per_dialect_and_mode() {
        let pg = spec(Dialect::Postgres, TsUnit::Micros, false);
        let (sql, params) = render(&pg, Filter::TsIdAfter { after: Some((10, 3)), end: 99 }, 100);
        assert_eq!(sql, "SELECT * FROM \"t\" WHERE (\"ts\", \"id\") > ($2, $3) AND \"ts\" < $1 ORDER BY \"ts\" ASC, \"id\" ASC LIMIT 100");
        assert_eq!(params, vec![SqlValue::Timestamp(99), SqlValue::Timestamp(10), SqlValue::Int(3)]);
        let (sql, params) = render(&pg, Filter::TsIdAfter { after: None, end: 99 }, 5);
        assert_eq!(
            sql,
            "SELECT * FROM \"t\" WHERE \"id\" IS NOT NULL AND \"ts\" < $1 ORDER BY \"ts\" ASC, \"id\" ASC LIMIT 5"
        );
        assert_eq!(params.len(), 1);
        let lite = spec(Dialect::Sqlite, TsUnit::Millis, true);
        let (sql, params) = render(&lite, Filter::TsAfter { after: Some(7), end: 9 }, 10);
        assert_eq!(
            sql,
            "SELECT *, norm(\"ts\") AS \"__spate_ts\" FROM \"t\" WHERE norm(\"ts\") > ?2 AND norm(\"ts\") < ?1 ORDER BY norm(\"ts\") ASC LIMIT 10"
        );
        assert_eq!(params, vec![SqlValue::Int(9), SqlValue::Int(7)]);
        let (sql, _) = render(&lite, Filter::TsEquals { at: 7 }, 10);
        assert_eq!(sql, "SELECT *, norm(\"ts\") AS \"__spate_ts\" FROM \"t\" WHERE norm(\"ts\") = ?1");
        let (sql, params) = render(&lite, Filter::IdAfter { after: Some(4) }, 3);
        assert!(sql.ends_with("WHERE \"id\" > ?1 ORDER BY \"id\" ASC LIMIT 3"), "{sql}");
        assert_eq!(params, vec![SqlValue::Int(4)]);
        let (sql, params) = render(&lite, Filter::All, 3);
        assert!(sql.ends_with("FROM \"t\"") && params.is_empty(), "{sql}");
    }

    #[test]
    fn offsets_use_kafka_connect_jdbc_fields_and_round_trip() {
        let pos = Position { ts: Some(1_700_000_000_123_456), id: Some(9) };
        let o = offset_json(Mode::TimestampIncrementing, TsUnit::Micros, pos).unwrap();
        assert_eq!(o, json!({"timestamp": 1_700_000_000_123i64, "timestamp_nanos": 123_456_000, "incrementing": 9}));
        assert_eq!(position_from_offset(Mode::TimestampIncrementing, TsUnit::Micros, &o).unwrap(), pos);
        let ms = Position { ts: Some(-1_500), id: None };
        let o = offset_json(Mode::Timestamp, TsUnit::Millis, ms).unwrap();
        assert_eq!(o, json!({"timestamp": -1500, "timestamp_nanos": 500_000_000}));
        assert_eq!(position_from_offset(Mode::Timestamp, TsUnit::Millis, &o).unwrap(), ms);
        assert_eq!(
            offset_json(Mode::Incrementing, TsUnit::Micros, Position { ts: None, id: Some(3) }).unwrap(),
            json!({"incrementing": 3})
        );
        assert!(position_from_offset(Mode::Incrementing, TsUnit::Micros, &json!({"incrementing": "x"})).is_err());
    }

    #[test]
    fn a_full_timestamp_batch_is_cut_at_a_timestamp_boundary() {
        let keys = |ts: &[i64]| ts.iter().map(|t| (Some(*t), None)).collect::<Vec<_>>();
        let f = Filter::TsAfter { after: None, end: 100 };
        let out = advance(Mode::Timestamp, f, Position::default(), &keys(&[1, 2, 2, 3, 3]), 5);
        assert_eq!(out, Outcome { emit: 3, pos: Position { ts: Some(2), id: None }, tie: None });
        let out = advance(Mode::Timestamp, f, Position::default(), &keys(&[4, 4, 4]), 3);
        assert_eq!(out, Outcome { emit: 0, pos: Position::default(), tie: Some(4) });
        let out = advance(Mode::Timestamp, f, Position::default(), &keys(&[4, 4]), 3);
        assert_eq!(out.emit, 2);
    }

    /// The tables as the database would answer `filter`: the model of the SQL in [`render`].
    fn model_query(rows: &[(i64, i64)], filter: Filter, limit: usize) -> Vec<(i64, i64)> {
        let mut hit: Vec<(i64, i64)> = rows
            .iter()
            .copied()
            .filter(|&(ts, id)| match filter {
                Filter::All => true,
                Filter::IdAfter { after } => after.is_none_or(|a| id > a),
                Filter::TsAfter { after, end } => after.is_none_or(|a| ts > a) && ts < end,
                Filter::TsIdAfter { after, end } => after.is_none_or(|a| (ts, id) > a) && ts < end,
                Filter::TsEquals { at } => ts == at,
            })
            .collect();
        match filter {
            Filter::IdAfter { .. } => hit.sort_by_key(|r| r.1),
            // Within one timestamp the database may return any order: reverse ids to say so.
            Filter::TsAfter { .. } => hit.sort_by_key(|r| (r.0, std::cmp::Reverse(r.1))),
            _ => hit.sort(),
        }
        if !matches!(filter, Filter::TsEquals { .. } | Filter::All) {
            hit.truncate(limit);
        }
        hit
    }

    /// Polls the model until it returns nothing; what was emitted, in order.
    fn drain(mode: Mode, rows: &[(i64, i64)], limit: usize, end: i64) -> Vec<(i64, i64)> {
        let mut pos = Position::default();
        let mut out = Vec::new();
        for _ in 0..10_000 {
            let filter = next_filter(mode, pos, end);
            let result = model_query(rows, filter, limit);
            let keys: Vec<_> = result
                .iter()
                .map(|&(ts, id)| (mode.uses_timestamp().then_some(ts), mode.uses_incrementing().then_some(id)))
                .collect();
            let o = advance(mode, filter, pos, &keys, limit);
            out.extend_from_slice(&result[..o.emit]);
            pos = o.pos;
            if let Some(at) = o.tie {
                let tie = model_query(rows, Filter::TsEquals { at }, limit);
                out.extend_from_slice(&tie);
                pos.ts = Some(at);
            } else if result.is_empty() {
                return out;
            }
        }
        panic!("no progress: {pos:?}");
    }

    proptest! {
        #[test]
        fn no_row_is_lost_or_repeated(
            ts in proptest::collection::vec(0i64..6, 0..60),
            limit in 1usize..8,
            end in 0i64..8,
        ) {
            // Unique ids, timestamps with many ties.
            let rows: Vec<(i64, i64)> = ts.iter().enumerate().map(|(i, t)| (*t, (i as i64 * 7919) % 1000)).collect();
            let mut rows = rows;
            rows.sort_by_key(|r| r.1);
            rows.dedup_by_key(|r| r.1);
            let visible = |r: &&(i64, i64)| r.0 < end;

            let got = drain(Mode::TimestampIncrementing, &rows, limit, end);
            let mut want: Vec<_> = rows.iter().filter(visible).copied().collect();
            want.sort();
            prop_assert_eq!(&got, &want, "timestamp+incrementing");

            let mut got = drain(Mode::Timestamp, &rows, limit, end);
            prop_assert!(got.windows(2).all(|w| w[0].0 <= w[1].0), "timestamp order");
            got.sort();
            prop_assert_eq!(&got, &want, "timestamp");

            let got = drain(Mode::Incrementing, &rows, limit, end);
            let mut want: Vec<_> = rows.clone();
            want.sort_by_key(|r| r.1);
            prop_assert_eq!(got, want, "incrementing");
        }
    }
}
