//! What a continuous statement asks for, from its SQL alone (sans-IO): the output topic, the
//! source table, the window table function (`TUMBLE`/`HOP`/`SESSION`) and its arguments, the
//! group-key expressions, and the user's `SELECT` rewritten to read one micro-batch (or one
//! closed window's rows) from the table [`INPUT_TABLE`] instead of the topic.

use datafusion::sql::sqlparser::ast::{
    BinaryOperator, DateTimeField, Expr, FunctionArg, FunctionArgExpr, GroupByExpr, Ident, JoinConstraint,
    JoinOperator, ObjectName, ObjectNamePart, OrderBy, OrderByExpr, OrderByKind, OrderByOptions, Query, SelectItem,
    SetExpr, Statement, TableAlias, TableFactor, TableObject, Value,
};
use datafusion::sql::sqlparser::dialect::GenericDialect;
use datafusion::sql::sqlparser::keywords::Keyword;
use datafusion::sql::sqlparser::parser::Parser;
use datafusion::sql::sqlparser::tokenizer::{Token, Tokenizer};

use crate::{SqlPosition, StreamsError};

/// The table a rewritten query reads: the decoded rows of one micro-batch or window.
pub(crate) const INPUT_TABLE: &str = "__spate_input";
/// The table a stream-table join reads: the joined table's rows matching one micro-batch.
pub(crate) const LOOKUP_TABLE: &str = "__spate_lookup";
/// Hidden output column holding a windowed query's `PARTITION BY` value (the output key).
pub(crate) const PARTITION_KEY_COLUMN: &str = "__spate_partition_key";
/// Hidden output columns holding the group key (`__spate_key_0`, …), stripped from the value.
pub(crate) const KEY_COLUMN_PREFIX: &str = "__spate_key_";
/// Hidden output column holding the source record's key in a stateless query.
pub(crate) const SOURCE_KEY_COLUMN: &str = "__spate_source_key";
/// Hidden output column holding the source record's timestamp in a stateless query.
pub(crate) const SOURCE_TS_COLUMN: &str = "__spate_source_ts";
/// Hidden output column holding the window's end in a windowed query (the output timestamp).
pub(crate) const WINDOW_END_COLUMN: &str = "__spate_window_end";
/// The columns a window function adds.
pub(crate) const WINDOW_START: &str = "window_start";
pub(crate) const WINDOW_END: &str = "window_end";

/// A window table function of Flink/RisingWave.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// `TUMBLE(t, ts, size)`: `[start, start + size)`, starts multiples of size.
    Tumble { size_ms: i64 },
    /// `HOP(t, ts, slide, size)`: windows of `size` starting every `slide`.
    Hop { slide_ms: i64, size_ms: i64 },
    /// `SESSION(t, ts, gap)`: per group key, records closer than `gap` share a window.
    Session { gap_ms: i64 },
}

/// A group-by expression of a windowed query, other than `window_start`/`window_end`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct GroupKey {
    /// The SQL text of the expression.
    pub sql: String,
    /// Its field name in the output key's JSON object: the column name for a column, else the
    /// expression's text.
    pub name: String,
}

/// An analysed continuous statement.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ContinuousPlan {
    /// `INSERT INTO <out_topic>`.
    pub out_topic: String,
    /// The table the query reads (a topic, or a `CREATE TABLE` name).
    pub source_table: String,
    /// The window function, with its time column; None: a stateless query.
    pub window: Option<(WindowSpec, String)>,
    /// Group keys (windowed queries): they decide the repartitioning and the output key.
    pub group_keys: Vec<GroupKey>,
    /// The user's SELECT reading [`INPUT_TABLE`], with the hidden key columns appended.
    pub select_sql: String,
    /// The name the SELECT gives the source table's rows (its alias, else its name).
    pub source_alias: String,
    /// A stream-table join: `JOIN table ON <stream expression> = table._key`.
    pub lookup: Option<LookupJoin>,
    /// An interval join of two topics: `JOIN b ON a.k = b.k AND b.t BETWEEN a.t + lo AND a.t + hi`.
    pub interval: Option<IntervalJoin>,
    /// `PARTITION BY expr`: the output key is that expression's value as text (in a stateless
    /// query it replaces the source key; in a windowed one, the group key's JSON).
    pub partition_by: Option<String>,
}

/// An interval join (Flink's, Kafka Streams' `JoinWindows`): records of the source `a` and the
/// joined topic `b` with equal keys and `b`'s time within `[a's time + lower, a's time + upper]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct IntervalJoin {
    /// The joined table (a topic, or a `CREATE TABLE` name) and the name the query gives its rows.
    pub table: String,
    pub table_alias: String,
    /// The key expressions of each side, pairwise equal (SQL over each side's alias).
    pub left_keys: Vec<String>,
    pub right_keys: Vec<String>,
    /// The time columns of each side.
    pub left_time: String,
    pub right_time: String,
    pub lower_ms: i64,
    pub upper_ms: i64,
}

/// Hidden column numbering the pairs of an interval join (added to both sides' rows).
pub(crate) const PAIR_COLUMN: &str = "__spate_pair";
/// Hidden output column carrying a result row's pair number.
pub(crate) const PAIR_OUT_COLUMN: &str = "__spate_pair_out";

/// A stream-table join of a stateless query (Kafka Streams' KStream-GlobalKTable join): every
/// instance holds the table's topic whole, latest value per key, and each stream record meets
/// the row whose key equals its key expression.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct LookupJoin {
    /// The joined table (a topic, or a `CREATE TABLE` name).
    pub table: String,
    /// The stream-side expression of `ON <expr> = table._key` (SQL over the source's alias).
    pub stream_key_sql: String,
    /// LEFT JOIN: records without a table row are kept, with NULL table columns.
    pub left: bool,
}

fn plan_error(message: impl Into<String>) -> StreamsError {
    StreamsError::SqlPlan { message: message.into(), position: None }
}

fn plan_error_at(message: impl Into<String>, span: datafusion::sql::sqlparser::tokenizer::Span) -> StreamsError {
    let position = (span.start.line > 0).then_some(SqlPosition { line: span.start.line, column: span.start.column });
    StreamsError::SqlPlan { message: message.into(), position }
}

/// Parses and checks `sql`, one `INSERT INTO topic SELECT …` statement.
pub(crate) fn analyze(sql: &str) -> Result<ContinuousPlan, StreamsError> {
    let (sql, partition_by) = split_partition_by(sql)?;
    let statements = Parser::parse_sql(&GenericDialect {}, sql).map_err(|e| plan_error(e.to_string()))?;
    let [statement] = statements.as_slice() else {
        return Err(plan_error(format!(
            "a continuous query is exactly one INSERT INTO <topic> SELECT … statement, not {} statements \
             (run CREATE TABLE first, as its own statement)",
            statements.len()
        )));
    };
    let Statement::Insert(insert) = statement else {
        return Err(plan_error(format!(
            "a continuous query must be INSERT INTO <topic> SELECT …, not {}",
            statement.to_string().split_whitespace().take(2).collect::<Vec<_>>().join(" ")
        )));
    };
    let TableObject::TableName(target) = &insert.table else {
        return Err(plan_error("INSERT INTO a table function is not supported; name the output topic"));
    };
    if !insert.columns.is_empty() {
        return Err(plan_error(
            "INSERT INTO <topic> (columns) is not supported: the output is the SELECT's columns as JSON",
        ));
    }
    let out_topic = object_name(target);
    let Some(source) = &insert.source else {
        return Err(plan_error("INSERT INTO <topic> needs a SELECT (VALUES are not a stream)"));
    };
    let mut query: Query = (**source).clone();
    if query.with.is_some() || query.order_by.is_some() || query.limit_clause.is_some() || query.fetch.is_some() {
        return Err(plan_error(
            "WITH, ORDER BY, LIMIT and FETCH are not supported in continuous queries (a stream has no end to sort or limit)",
        ));
    }
    let SetExpr::Select(select) = query.body.as_mut() else {
        return Err(plan_error("a continuous query is one SELECT (UNION and other set operations are not supported)"));
    };
    let [from] = select.from.as_mut_slice() else {
        return Err(plan_error(
            "a continuous query reads one table, or one table JOIN another (a comma-separated FROM list is a \
             cross join, which a stream does not support)",
        ));
    };
    let (source_table, window, alias) = match &from.relation {
        TableFactor::Table { name, args: None, alias, .. } => (object_name(name), None, alias.clone()),
        TableFactor::Table { name, args: Some(args), alias, .. } => {
            let (table, window, column) = window_function(name, &args.args)?;
            (table, Some((window, column)), alias.clone())
        }
        other => return Err(plan_error(format!("a continuous query reads a table or a window function, not {other}"))),
    };
    // The rows keep the name the query gives them, so that `src.col` still resolves.
    let alias = alias.unwrap_or_else(|| table_alias(last_ident(&source_table)));
    let source_alias = alias.name.value.clone();
    from.relation = renamed_table(INPUT_TABLE, alias);
    let (lookup, interval) = match from.joins.as_mut_slice() {
        [] => (None, None),
        [join] => {
            if window.is_some() {
                return Err(plan_error(
                    "joins in windowed continuous queries are not supported yet: join in a stateless query \
                     writing a topic, and window that topic",
                ));
            }
            let (left, constraint) = match &join.join_operator {
                JoinOperator::Join(c) | JoinOperator::Inner(c) => (false, c),
                JoinOperator::Left(c) | JoinOperator::LeftOuter(c) => (true, c),
                _ => {
                    return Err(plan_error(
                        "a continuous query joins its stream with a table by [INNER] JOIN or LEFT [OUTER] JOIN \
                         (RIGHT, FULL, CROSS, SEMI and ANTI joins need the stream's end)",
                    ))
                }
            };
            let TableFactor::Table { name, args: None, alias: given_alias, .. } = &join.relation else {
                return Err(plan_error(format!("a continuous query joins a table (a topic), not {}", join.relation)));
            };
            let table = object_name(name);
            let joined_alias = given_alias.clone().unwrap_or_else(|| table_alias(last_ident(&table)));
            let JoinConstraint::On(on) = constraint else {
                return Err(plan_error(format!(
                    "join {table} ON <stream expression> = {}._key: the table is looked up by its Kafka key",
                    joined_alias.name.value
                )));
            };
            let table_name = joined_alias.name.value.clone();
            if let Some(stream_key) = key_equality(on, &table_name) {
                join.relation = renamed_table(LOOKUP_TABLE, joined_alias);
                (Some(LookupJoin { table, stream_key_sql: stream_key.to_string(), left }), None)
            } else if let Some((interval, rest)) = interval_join(on, &source_alias, &table_name)? {
                if left {
                    return Err(plan_error(
                        "LEFT interval joins are not supported yet (they emit unmatched records when the interval \
                         expires): use JOIN",
                    ));
                }
                if table.eq_ignore_ascii_case(&source_table) {
                    return Err(plan_error("an interval join of a topic with itself is not supported"));
                }
                // Each result row is one pair the join stage found; the ON condition's other
                // conjuncts (keys included) are checked again.
                let pair = Expr::BinaryOp {
                    left: Box::new(qualified(&source_alias, PAIR_COLUMN)),
                    op: BinaryOperator::Eq,
                    right: Box::new(qualified(&table_name, PAIR_COLUMN)),
                };
                let checked = rest.into_iter().fold(pair, |all, c| Expr::BinaryOp {
                    left: Box::new(all),
                    op: BinaryOperator::And,
                    right: Box::new(Expr::Nested(Box::new(c))),
                });
                join.join_operator = JoinOperator::Inner(JoinConstraint::On(checked));
                join.relation = renamed_table(LOOKUP_TABLE, joined_alias);
                (None, Some(IntervalJoin { table, table_alias: table_name, ..interval }))
            } else {
                return Err(plan_error_at(
                    format!(
                        "a continuous join is either a stream-table join, ON <stream expression> = {t}._key (the \
                         table is the latest value per Kafka key of its topic), or an interval join, ON \
                         {s}.k = {t}.k AND {t}.time BETWEEN {s}.time - INTERVAL … AND {s}.time + INTERVAL …; \
                         other conditions may follow with AND. Not ON {on}",
                        t = table_name,
                        s = source_alias
                    ),
                    datafusion::sql::sqlparser::ast::Spanned::span(on),
                ));
            }
        }
        _ => return Err(plan_error("a continuous query joins at most one table")),
    };
    let group_by: Vec<Expr> = match &select.group_by {
        GroupByExpr::Expressions(exprs, modifiers) if modifiers.is_empty() => exprs.clone(),
        GroupByExpr::Expressions(..) => {
            return Err(plan_error("GROUP BY modifiers (ROLLUP, CUBE, GROUPING SETS) are not supported continuously"))
        }
        GroupByExpr::All(_) => return Err(plan_error("GROUP BY ALL is not supported in continuous queries")),
    };
    let mut group_keys = Vec::new();
    if window.is_some() {
        let is_window_column = |e: &Expr| matches!(e, Expr::Identifier(i) if is_window_name(&i.value));
        let grouped = |name: &str| {
            group_by.iter().any(|e| matches!(e, Expr::Identifier(i) if i.value.eq_ignore_ascii_case(name)))
        };
        if !grouped(WINDOW_START) || !grouped(WINDOW_END) {
            return Err(plan_error(
                "a windowed continuous query must GROUP BY window_start, window_end (and its keys): results are \
                 emitted once per window when it closes",
            ));
        }
        for (i, expr) in group_by.iter().filter(|e| !is_window_column(e)).enumerate() {
            let expr = resolve_group_expr(expr, &select.projection)?;
            let name = match &expr {
                Expr::Identifier(ident) => ident.value.clone(),
                Expr::CompoundIdentifier(parts) => parts.last().map(|p| p.value.clone()).unwrap_or_default(),
                other => other.to_string(),
            };
            select.projection.push(SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias: Ident::with_quote('"', format!("{KEY_COLUMN_PREFIX}{i}")),
            });
            group_keys.push(GroupKey { sql: expr.to_string(), name });
        }
        select.projection.push(SelectItem::ExprWithAlias {
            expr: Expr::Identifier(Ident::new(WINDOW_END)),
            alias: Ident::with_quote('"', WINDOW_END_COLUMN),
        });
        if let Some(expr) = &partition_by {
            select.projection.push(SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias: Ident::with_quote('"', PARTITION_KEY_COLUMN),
            });
        }
    } else if interval.is_some() {
        if !group_by.is_empty() || select.having.is_some() {
            return Err(plan_error("GROUP BY over an interval join is not supported yet: write the join to a topic"));
        }
        select.projection.push(SelectItem::ExprWithAlias {
            expr: qualified(&source_alias, PAIR_COLUMN),
            alias: Ident::with_quote('"', PAIR_OUT_COLUMN),
        });
        if let Some(expr) = &partition_by {
            select.projection.push(SelectItem::ExprWithAlias {
                expr: expr.clone(),
                alias: Ident::with_quote('"', PARTITION_KEY_COLUMN),
            });
        }
    } else {
        if !group_by.is_empty() || select.having.is_some() {
            return Err(plan_error(
                "GROUP BY needs a window in a continuous query: read FROM TUMBLE(…), HOP(…) or SESSION(…) \
                 (an unwindowed aggregate never closes)",
            ));
        }
        // Qualified: a joined table has these columns too.
        let source_column =
            |name: &str| Expr::CompoundIdentifier(vec![Ident::with_quote('"', source_alias.clone()), Ident::new(name)]);
        select.projection.push(SelectItem::ExprWithAlias {
            expr: partition_by.clone().unwrap_or_else(|| source_column("_key")),
            alias: Ident::with_quote('"', SOURCE_KEY_COLUMN),
        });
        select.projection.push(SelectItem::ExprWithAlias {
            expr: source_column("_timestamp"),
            alias: Ident::with_quote('"', SOURCE_TS_COLUMN),
        });
    }
    if lookup.is_some() {
        // A hash join may reorder rows; a micro-batch holds one source partition's records, so
        // ordering by their offsets keeps every key's results in the stream's order.
        query.order_by = Some(OrderBy {
            kind: OrderByKind::Expressions(vec![OrderByExpr {
                expr: Expr::CompoundIdentifier(vec![
                    Ident::with_quote('"', source_alias.clone()),
                    Ident::new("_offset"),
                ]),
                options: OrderByOptions { asc: Some(true), nulls_first: None },
                with_fill: None,
            }]),
            interpolate: None,
        });
    }
    Ok(ContinuousPlan {
        out_topic,
        source_table,
        window,
        group_keys,
        select_sql: query.to_string(),
        source_alias,
        lookup,
        interval,
        partition_by: partition_by.map(|e| e.to_string()),
    })
}

fn qualified(table: &str, column: &str) -> Expr {
    Expr::CompoundIdentifier(vec![Ident::with_quote('"', table), Ident::with_quote('"', column)])
}

/// The conjuncts of an ON condition.
fn conjuncts(e: &Expr) -> Vec<&Expr> {
    match e {
        Expr::Nested(inner) => conjuncts(inner),
        Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
            let mut all = conjuncts(left);
            all.extend(conjuncts(right));
            all
        }
        other => vec![other],
    }
}

/// The table qualifiers an expression reads (None: it reads something unqualified or unknown).
fn qualifiers(e: &Expr, into: &mut Vec<String>) -> Option<()> {
    match e {
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
            into.push(parts[0].value.to_ascii_lowercase());
            Some(())
        }
        Expr::Value(_) | Expr::Interval(_) | Expr::TypedString { .. } => Some(()),
        Expr::Nested(inner) | Expr::UnaryOp { expr: inner, .. } | Expr::Cast { expr: inner, .. } => {
            qualifiers(inner, into)
        }
        Expr::BinaryOp { left, right, .. } => {
            qualifiers(left, into)?;
            qualifiers(right, into)
        }
        Expr::Function(f) => match &f.args {
            datafusion::sql::sqlparser::ast::FunctionArguments::List(list) => {
                for arg in &list.args {
                    match arg {
                        FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => qualifiers(e, into)?,
                        _ => return None,
                    }
                }
                Some(())
            }
            datafusion::sql::sqlparser::ast::FunctionArguments::None => Some(()),
            _ => None,
        },
        _ => None,
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Side {
    Left,
    Right,
}

fn side_of(e: &Expr, left: &str, right: &str) -> Option<Side> {
    let mut found = Vec::new();
    qualifiers(e, &mut found)?;
    let (l, r) = (left.to_ascii_lowercase(), right.to_ascii_lowercase());
    if !found.is_empty() && found.iter().all(|q| *q == l) {
        Some(Side::Left)
    } else if !found.is_empty() && found.iter().all(|q| *q == r) {
        Some(Side::Right)
    } else {
        None
    }
}

/// `t.col`, `t.col + INTERVAL …`, `t.col - INTERVAL …`: (qualifier, column, offset in ms).
fn time_term(e: &Expr) -> Option<(String, String, i64)> {
    match e {
        Expr::Nested(inner) => time_term(inner),
        Expr::CompoundIdentifier(parts) if parts.len() == 2 => {
            Some((parts[0].value.to_ascii_lowercase(), parts[1].value.clone(), 0))
        }
        Expr::BinaryOp { left, op: op @ (BinaryOperator::Plus | BinaryOperator::Minus), right } => {
            let (q, c, d) = time_term(left)?;
            let ms = interval_ms(right).ok()?;
            Some((q, c, if *op == BinaryOperator::Plus { d + ms } else { d - ms }))
        }
        _ => None,
    }
}

/// An interval join's keys and bounds from its ON condition, `None` when it has no time bounds
/// between the two tables (then it is not an interval join).
/// The time bounds are enforced on event times by the join stage (they compare a BIGINT column
/// with an INTERVAL, which SQL cannot); the other conjuncts are returned for the SELECT to check.
fn interval_join(on: &Expr, left: &str, right: &str) -> Result<Option<(IntervalJoin, Vec<Expr>)>, StreamsError> {
    let (l, r) = (left.to_ascii_lowercase(), right.to_ascii_lowercase());
    let mut join = IntervalJoin {
        table: String::new(),
        table_alias: String::new(),
        left_keys: Vec::new(),
        right_keys: Vec::new(),
        left_time: String::new(),
        right_time: String::new(),
        lower_ms: i64::MIN,
        upper_ms: i64::MAX,
    };
    let mut bounded = (false, false);
    // `x OP y` with one side a time term of each table: right time OP left time + d.
    let mut bound = |x: &Expr, op: &BinaryOperator, y: &Expr| -> Result<bool, StreamsError> {
        let (Some(a), Some(b)) = (time_term(x), time_term(y)) else { return Ok(false) };
        let flip = |op: &BinaryOperator| match op {
            BinaryOperator::Gt => BinaryOperator::Lt,
            BinaryOperator::GtEq => BinaryOperator::LtEq,
            BinaryOperator::Lt => BinaryOperator::Gt,
            BinaryOperator::LtEq => BinaryOperator::GtEq,
            other => other.clone(),
        };
        let (op, (_, lc, ld), (_, rc, rd)) = if a.0 == r && b.0 == l {
            (op.clone(), b, a)
        } else if a.0 == l && b.0 == r {
            (flip(op), a, b)
        } else {
            return Ok(false);
        };
        // rc + rd OP lc + ld  ⇔  rc OP lc + (ld − rd)
        let d = ld - rd;
        for (have, name, what) in [(&mut join.left_time, lc, left), (&mut join.right_time, rc, right)] {
            if have.is_empty() {
                *have = name;
            } else if *have != name {
                return Err(plan_error(format!(
                    "an interval join bounds one time column of {what}, not both {have} and {name}"
                )));
            }
        }
        // Event times are whole milliseconds: a strict bound is the next millisecond.
        match op {
            BinaryOperator::Gt | BinaryOperator::GtEq => {
                let d = if op == BinaryOperator::Gt { d.saturating_add(1) } else { d };
                join.lower_ms = join.lower_ms.max(d);
                bounded.0 = true;
            }
            BinaryOperator::Lt | BinaryOperator::LtEq => {
                let d = if op == BinaryOperator::Lt { d.saturating_sub(1) } else { d };
                join.upper_ms = join.upper_ms.min(d);
                bounded.1 = true;
            }
            _ => return Ok(false),
        }
        Ok(true)
    };
    let mut keys = Vec::new();
    let mut rest = Vec::new();
    for c in conjuncts(on) {
        let consumed = match c {
            Expr::Between { expr, negated: false, low, high } => {
                bound(expr, &BinaryOperator::GtEq, low)? & bound(expr, &BinaryOperator::LtEq, high)?
            }
            Expr::BinaryOp {
                left: x,
                op: op @ (BinaryOperator::Gt | BinaryOperator::GtEq | BinaryOperator::Lt | BinaryOperator::LtEq),
                right: y,
            } => bound(x, op, y)?,
            Expr::BinaryOp { left: x, op: BinaryOperator::Eq, right: y } => {
                match (side_of(x, &l, &r), side_of(y, &l, &r)) {
                    (Some(Side::Left), Some(Side::Right)) => keys.push((x.to_string(), y.to_string())),
                    (Some(Side::Right), Some(Side::Left)) => keys.push((y.to_string(), x.to_string())),
                    _ => {}
                }
                false
            }
            _ => false,
        };
        if !consumed {
            rest.push(c.clone());
        }
    }
    match bounded {
        (false, false) => return Ok(None),
        (true, true) => {}
        _ => {
            return Err(plan_error(format!(
                "an interval join needs a lower and an upper bound: {right}.time BETWEEN {left}.time - INTERVAL … \
                 AND {left}.time + INTERVAL …"
            )))
        }
    }
    if join.lower_ms > join.upper_ms {
        return Err(plan_error(format!(
            "the interval join's bounds are empty: {} ms after {left}'s time to {} ms after",
            join.lower_ms, join.upper_ms
        )));
    }
    if keys.is_empty() {
        return Err(plan_error(format!(
            "an interval join needs a key equality between the tables ({left}.k = {right}.k): a stream cannot be \
             joined with every record of another"
        )));
    }
    join.left_keys = keys.iter().map(|(a, _)| a.clone()).collect();
    join.right_keys = keys.into_iter().map(|(_, b)| b).collect();
    Ok(Some((join, rest)))
}

fn last_ident(name: &str) -> &str {
    name.rsplit('.').next().unwrap_or(name)
}

fn table_alias(name: &str) -> TableAlias {
    TableAlias { explicit: true, name: Ident::with_quote('"', name), columns: Vec::new(), at: None }
}

fn renamed_table(table: &str, alias: TableAlias) -> TableFactor {
    TableFactor::Table {
        name: ObjectName(vec![ObjectNamePart::Identifier(Ident::new(table))]),
        alias: Some(alias),
        args: None,
        with_hints: Vec::new(),
        version: None,
        with_ordinality: false,
        partitions: Vec::new(),
        json_path: None,
        sample: None,
        index_hints: Vec::new(),
    }
}

/// The stream side of the conjunct `<expr> = table._key` (either way round) of `on`.
fn key_equality<'a>(on: &'a Expr, table: &str) -> Option<&'a Expr> {
    match on {
        Expr::Nested(inner) => key_equality(inner, table),
        Expr::BinaryOp { left, op: BinaryOperator::And, right } => {
            key_equality(left, table).or_else(|| key_equality(right, table))
        }
        Expr::BinaryOp { left, op: BinaryOperator::Eq, right } => {
            let is_key = |e: &Expr| {
                matches!(e, Expr::CompoundIdentifier(p) if p.len() == 2
                    && p[0].value.eq_ignore_ascii_case(table) && p[1].value.eq_ignore_ascii_case("_key"))
            };
            // A stream side that reads the table fails to plan over the stream's rows alone.
            if is_key(right) {
                Some(left)
            } else if is_key(left) {
                Some(right)
            } else {
                None
            }
        }
        _ => None,
    }
}

/// Splits a trailing `PARTITION BY expr` (ksqlDB's, which SQL parsers do not know) off the
/// statement. Only at nesting depth 0, so `OVER (PARTITION BY …)` stays.
fn split_partition_by(sql: &str) -> Result<(&str, Option<Expr>), StreamsError> {
    let dialect = GenericDialect {};
    let tokens = Tokenizer::new(&dialect, sql)
        .with_unescape(false)
        .tokenize_with_location()
        .map_err(|e| plan_error(e.to_string()))?;
    let mut depth = 0i32;
    let significant: Vec<&_> = tokens.iter().filter(|t| !matches!(t.token, Token::Whitespace(_))).collect();
    for (i, t) in significant.iter().enumerate() {
        match &t.token {
            Token::LParen => depth += 1,
            Token::RParen => depth -= 1,
            Token::Word(w) if depth == 0 && w.keyword == Keyword::PARTITION => {
                let by = significant
                    .get(i + 1)
                    .is_some_and(|n| matches!(&n.token, Token::Word(b) if b.keyword == Keyword::BY));
                if !by {
                    continue;
                }
                let start = byte_offset(sql, t.span.start.line, t.span.start.column);
                let after_by = significant[i + 1].span.end;
                let rest = &sql[byte_offset(sql, after_by.line, after_by.column)..];
                let rest = rest.trim().trim_end_matches(';').trim();
                let mut parser = Parser::new(&dialect).try_with_sql(rest).map_err(|e| plan_error(e.to_string()))?;
                let expr = parser.parse_expr().map_err(|e| plan_error(format!("PARTITION BY: {e}")))?;
                if parser.peek_token().token != Token::EOF {
                    return Err(plan_error(format!(
                        "PARTITION BY takes one expression and ends the statement; found more after {expr}"
                    )));
                }
                return Ok((&sql[..start], Some(expr)));
            }
            _ => {}
        }
    }
    Ok((sql, None))
}

/// Byte offset of 1-based (line, column in characters) in `text`.
fn byte_offset(text: &str, line: u64, column: u64) -> usize {
    let mut offset = 0;
    for (i, l) in text.split_inclusive('\n').enumerate() {
        if i as u64 + 1 == line {
            return offset + l.char_indices().nth(column.saturating_sub(1) as usize).map_or(l.len(), |(b, _)| b);
        }
        offset += l.len();
    }
    text.len()
}

fn is_window_name(name: &str) -> bool {
    name.eq_ignore_ascii_case(WINDOW_START) || name.eq_ignore_ascii_case(WINDOW_END)
}

/// `GROUP BY 2` and `GROUP BY alias` name a select item: the key is that item's expression.
fn resolve_group_expr(expr: &Expr, projection: &[SelectItem]) -> Result<Expr, StreamsError> {
    match expr {
        Expr::Value(v) => {
            if let Value::Number(n, _) = &v.value {
                let index: usize =
                    n.parse().map_err(|_| plan_error(format!("GROUP BY {n} is not a column position")))?;
                return match index.checked_sub(1).and_then(|i| projection.get(i)) {
                    Some(SelectItem::UnnamedExpr(e)) | Some(SelectItem::ExprWithAlias { expr: e, .. }) => Ok(e.clone()),
                    _ => Err(plan_error(format!("GROUP BY {index} does not name a select item"))),
                };
            }
            Ok(expr.clone())
        }
        Expr::Identifier(ident) => {
            for item in projection {
                if let SelectItem::ExprWithAlias { expr: e, alias } = item {
                    if alias.value == ident.value && !matches!(e, Expr::Identifier(i) if i.value == ident.value) {
                        return Ok(e.clone());
                    }
                }
            }
            Ok(expr.clone())
        }
        _ => Ok(expr.clone()),
    }
}

fn object_name(name: &ObjectName) -> String {
    name.0
        .iter()
        .map(|p| match p {
            ObjectNamePart::Identifier(i) => i.value.clone(),
            other => other.to_string(),
        })
        .collect::<Vec<_>>()
        .join(".")
}

/// `TUMBLE(t, ts, size)`, `HOP(t, ts, slide, size)`, `SESSION(t, ts, gap)`.
fn window_function(name: &ObjectName, args: &[FunctionArg]) -> Result<(String, WindowSpec, String), StreamsError> {
    let function = object_name(name).to_ascii_uppercase();
    let expected = match function.as_str() {
        "TUMBLE" => "TUMBLE(table, time_column, size)",
        "HOP" => "HOP(table, time_column, slide, size)",
        "SESSION" => "SESSION(table, time_column, gap)",
        other => {
            return Err(plan_error(format!(
                "unknown table function {other}: continuous queries read a table, TUMBLE(…), HOP(…) or SESSION(…)"
            )))
        }
    };
    let arity = if function == "HOP" { 4 } else { 3 };
    let exprs: Vec<&Expr> = args
        .iter()
        .filter_map(|a| match a {
            FunctionArg::Unnamed(FunctionArgExpr::Expr(e)) => Some(e),
            _ => None,
        })
        .collect();
    if exprs.len() != args.len() || exprs.len() != arity {
        return Err(plan_error(format!("{function} takes {arity} arguments: {expected}")));
    }
    let table = match exprs[0] {
        Expr::Identifier(i) => i.value.clone(),
        Expr::CompoundIdentifier(parts) => parts.iter().map(|p| p.value.clone()).collect::<Vec<_>>().join("."),
        // Flink's `TABLE t` form.
        Expr::Function(f) if object_name(&f.name).eq_ignore_ascii_case("TABLE") => f.args.to_string(),
        other => return Err(plan_error(format!("{function}'s first argument must be a table name, not {other}"))),
    };
    let column = match exprs[1] {
        Expr::Identifier(i) => i.value.clone(),
        // Flink's `DESCRIPTOR(ts)`.
        Expr::Function(f) if object_name(&f.name).eq_ignore_ascii_case("DESCRIPTOR") => {
            f.args.to_string().trim_matches(|c| c == '(' || c == ')').trim().to_owned()
        }
        other => {
            return Err(plan_error_at(
                format!("{function}'s second argument must be the time column's name, not {other}"),
                datafusion::sql::sqlparser::ast::Spanned::span(other),
            ))
        }
    };
    let interval = |i: usize, what: &str| -> Result<i64, StreamsError> {
        let ms = interval_ms(exprs[i]).map_err(|e| {
            plan_error_at(
                format!("{function}'s {what} must be an INTERVAL such as INTERVAL '10' SECOND: {e}"),
                datafusion::sql::sqlparser::ast::Spanned::span(exprs[i]),
            )
        })?;
        if ms <= 0 {
            return Err(plan_error(format!("{function}'s {what} must be positive, not {ms} ms")));
        }
        Ok(ms)
    };
    let window = match function.as_str() {
        "TUMBLE" => WindowSpec::Tumble { size_ms: interval(2, "size")? },
        "HOP" => {
            let (slide_ms, size_ms) = (interval(2, "slide")?, interval(3, "size")?);
            if slide_ms > size_ms {
                return Err(plan_error(format!("HOP's slide ({slide_ms} ms) must not exceed its size ({size_ms} ms)")));
            }
            WindowSpec::Hop { slide_ms, size_ms }
        }
        _ => WindowSpec::Session { gap_ms: interval(2, "gap")? },
    };
    Ok((table, window, column))
}

/// Milliseconds of an `INTERVAL '10' SECOND` / `INTERVAL '10 seconds'` expression.
fn interval_ms(expr: &Expr) -> Result<i64, String> {
    let Expr::Interval(interval) = expr else {
        return Err(format!("{expr} is not an interval"));
    };
    let text = match interval.value.as_ref() {
        Expr::Value(v) => match &v.value {
            Value::SingleQuotedString(s) | Value::DoubleQuotedString(s) => s.clone(),
            Value::Number(n, _) => n.clone(),
            other => return Err(format!("{other} is not a number of units")),
        },
        other => return Err(format!("{other} is not a literal")),
    };
    let text = match &interval.leading_field {
        Some(field) => format!("{} {}", text.trim(), unit_name(field)?),
        None => text,
    };
    parse_duration_ms(&text)
}

fn unit_name(field: &DateTimeField) -> Result<&'static str, String> {
    Ok(match field {
        DateTimeField::Millisecond | DateTimeField::Milliseconds => "milliseconds",
        DateTimeField::Second | DateTimeField::Seconds => "seconds",
        DateTimeField::Minute | DateTimeField::Minutes => "minutes",
        DateTimeField::Hour | DateTimeField::Hours => "hours",
        DateTimeField::Day | DateTimeField::Days => "days",
        other => return Err(format!("unit {other} is not fixed in length (use milliseconds to days)")),
    })
}

/// `10 seconds`, `1 minute 30 seconds`, `500 ms`: a sum of number-unit pairs, in milliseconds.
pub(crate) fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let words: Vec<&str> = text.split_whitespace().collect();
    if words.is_empty() || !words.len().is_multiple_of(2) {
        return Err(format!("'{text}' is not <number> <unit> [<number> <unit>…]"));
    }
    let mut total: i64 = 0;
    for pair in words.chunks(2) {
        let n: i64 = pair[0].parse().map_err(|_| format!("'{}' is not a whole number", pair[0]))?;
        let unit_ms: i64 = match pair[1].to_ascii_lowercase().as_str() {
            "ms" | "millisecond" | "milliseconds" => 1,
            "s" | "sec" | "secs" | "second" | "seconds" => 1_000,
            "min" | "mins" | "minute" | "minutes" => 60_000,
            "h" | "hour" | "hours" => 3_600_000,
            "d" | "day" | "days" => 86_400_000,
            other => return Err(format!("unknown unit '{other}' (milliseconds, seconds, minutes, hours, days)")),
        };
        total =
            n.checked_mul(unit_ms).and_then(|v| total.checked_add(v)).ok_or_else(|| format!("'{text}' overflows"))?;
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err(sql: &str) -> String {
        match analyze(sql) {
            Err(StreamsError::SqlPlan { message, .. }) => message,
            other => panic!("expected a plan error for {sql}, got {other:?}"),
        }
    }

    #[test]
    fn tumble_query_is_rewritten_to_read_the_input_table() {
        let plan = analyze(
            "INSERT INTO out SELECT window_start, window_end, k, count(*) AS n, sum(x) \
             FROM TUMBLE(src, ts, INTERVAL '10' SECOND) GROUP BY window_start, window_end, k",
        )
        .unwrap();
        assert_eq!(plan.out_topic, "out");
        assert_eq!(plan.source_table, "src");
        assert_eq!(plan.window, Some((WindowSpec::Tumble { size_ms: 10_000 }, "ts".into())));
        assert_eq!(plan.group_keys, vec![GroupKey { sql: "k".into(), name: "k".into() }]);
        assert!(plan.select_sql.contains("FROM __spate_input"), "{}", plan.select_sql);
        assert!(plan.select_sql.contains("k AS \"__spate_key_0\""), "{}", plan.select_sql);
    }

    #[test]
    fn hop_and_session_arguments() {
        let plan = analyze(
            "INSERT INTO o SELECT window_start, count(*) FROM HOP(s, _timestamp, INTERVAL '5 seconds', \
             INTERVAL '1' MINUTE) GROUP BY window_start, window_end",
        )
        .unwrap();
        assert_eq!(plan.window, Some((WindowSpec::Hop { slide_ms: 5_000, size_ms: 60_000 }, "_timestamp".into())));
        assert!(plan.group_keys.is_empty());
        let plan = analyze(
            "INSERT INTO o SELECT user_id AS u, count(*) FROM SESSION(s, ts, INTERVAL '30' SECOND) \
             GROUP BY window_start, window_end, u",
        )
        .unwrap();
        assert_eq!(plan.window, Some((WindowSpec::Session { gap_ms: 30_000 }, "ts".into())));
        assert_eq!(plan.group_keys, vec![GroupKey { sql: "user_id".into(), name: "user_id".into() }]);
    }

    #[test]
    fn group_by_position_names_the_select_item() {
        let plan = analyze(
            "INSERT INTO o SELECT lower(k), window_start, count(*) FROM TUMBLE(s, ts, INTERVAL '1' SECOND) \
             GROUP BY 1, window_start, window_end",
        )
        .unwrap();
        assert_eq!(plan.group_keys[0].sql, "lower(k)");
    }

    #[test]
    fn stateless_query_carries_the_source_key() {
        let plan = analyze("INSERT INTO o SELECT a, b * 2 AS c FROM s WHERE a > 1").unwrap();
        assert_eq!(plan.window, None);
        assert!(plan.select_sql.contains("\"s\"._key AS \"__spate_source_key\""), "{}", plan.select_sql);
        assert_eq!(plan.source_alias, "s");
        assert_eq!(plan.lookup, None);
        assert_eq!(plan.partition_by, None);
        assert!(plan.select_sql.contains("WHERE a > 1"));
    }

    #[test]
    fn clear_errors_for_what_is_not_supported() {
        assert!(err("SELECT * FROM s").contains("INSERT INTO"));
        assert!(err("INSERT INTO o SELECT count(*) FROM TUMBLE(s, ts, INTERVAL '1' SECOND) GROUP BY k")
            .contains("window_start"));
        assert!(err("INSERT INTO o SELECT count(*) FROM TUMBLE(s, ts, INTERVAL '1' SECOND) GROUP BY window_start")
            .contains("window_end"));
        assert!(err("INSERT INTO o SELECT k, count(*) FROM s GROUP BY k").contains("needs a window"));
        assert!(err("INSERT INTO o SELECT * FROM TUMBLE(s, ts) GROUP BY window_start").contains("3 arguments"));
        assert!(err("INSERT INTO o SELECT * FROM TUMBLE(s, ts, 10) GROUP BY window_start").contains("INTERVAL"));
        assert!(err(
            "INSERT INTO o SELECT * FROM HOP(s, ts, INTERVAL '2' MINUTE, INTERVAL '1' MINUTE) GROUP BY window_start"
        )
        .contains("slide"));
        assert!(
            err("INSERT INTO o SELECT * FROM GENERATE(s, ts, INTERVAL '1' SECOND)").contains("unknown table function")
        );
        assert!(err("INSERT INTO o SELECT * FROM a JOIN b ON a.id = b.id").contains("b._key"));
        assert!(err("INSERT INTO o SELECT * FROM a RIGHT JOIN b ON a.id = b._key").contains("LEFT"));
        assert!(err("INSERT INTO o SELECT * FROM a, b").contains("cross join"));
        assert!(err("INSERT INTO o SELECT count(*) FROM TUMBLE(a, ts, INTERVAL '1' SECOND) JOIN b ON a.id = b._key \
             GROUP BY window_start, window_end")
        .contains("windowed"));
        assert!(err("INSERT INTO o SELECT * FROM s PARTITION BY a, b").contains("one expression"));
        assert!(err("INSERT INTO o SELECT * FROM s; INSERT INTO p SELECT * FROM s").contains("2 statements"));
        assert!(err("INSERT INTO o SELECT * FROM s ORDER BY a").contains("ORDER BY"));
        assert!(err("INSERT INTO o SELECT * FROM TUMBLE(s, ts, INTERVAL '1' MONTH) GROUP BY window_start")
            .contains("not fixed"));
    }

    #[test]
    fn stream_table_joins_and_partition_by() {
        let plan = analyze(
            "INSERT INTO o SELECT o.id, u.name FROM orders AS o LEFT JOIN users u \
             ON u._key = CAST(o.user_id AS VARCHAR) AND u.active PARTITION BY u.name;",
        )
        .unwrap();
        assert_eq!(
            plan.lookup,
            Some(LookupJoin { table: "users".into(), stream_key_sql: "CAST(o.user_id AS VARCHAR)".into(), left: true })
        );
        assert_eq!(plan.source_alias, "o");
        assert_eq!(plan.partition_by.as_deref(), Some("u.name"));
        assert!(plan.select_sql.contains("LEFT JOIN __spate_lookup u ON"), "{}", plan.select_sql);
        assert!(plan.select_sql.contains("u.name AS \"__spate_source_key\""), "{}", plan.select_sql);
        // OVER (PARTITION BY …) is not the output key; a table without an alias keeps its name.
        let plan = analyze("INSERT INTO o SELECT x, row_number() OVER (PARTITION BY k) FROM s JOIN t ON s.k = t._key")
            .unwrap();
        assert_eq!(plan.partition_by, None);
        assert!(plan.select_sql.contains("JOIN __spate_lookup AS \"t\""), "{}", plan.select_sql);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration_ms("5 seconds"), Ok(5_000));
        assert_eq!(parse_duration_ms("1 minute 30 seconds"), Ok(90_000));
        assert_eq!(parse_duration_ms("250 ms"), Ok(250));
        assert!(parse_duration_ms("5").is_err());
        assert!(parse_duration_ms("5 fortnights").is_err());
    }
}
