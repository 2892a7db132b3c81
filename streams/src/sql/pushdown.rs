//! Filters on the metadata columns become fetch ranges (sans-IO).
//!
//! `_partition` picks the partitions read, `_offset` the offsets within them, and a lower bound
//! on `_timestamp` the start offset (looked up with ListOffsets by timestamp). Every derived bound
//! is a superset of the rows the filter keeps: DataFusion applies the filter again on what the
//! scan returns (`TableProviderFilterPushDown::Inexact`), so a bound only saves fetching.

use std::collections::BTreeSet;

use datafusion::common::ScalarValue;
use datafusion::logical_expr::{Between, BinaryExpr, Expr, Operator};

use super::format::{OFFSET_COLUMN, PARTITION_COLUMN, TIMESTAMP_COLUMN};

/// What the pushed-down filters allow a scan to skip.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct FetchBounds {
    /// `Some`: only these partitions (from `=` and `IN`).
    pub partitions_in: Option<BTreeSet<i32>>,
    /// Inclusive bounds on the partition number (from comparisons).
    pub partition_min: i64,
    pub partition_max: i64,
    /// First offset to read (inclusive).
    pub offset_start: i64,
    /// Offset to stop before (exclusive).
    pub offset_end: i64,
    /// Read from the first record whose timestamp is at least this (ms since the epoch).
    pub timestamp_start_ms: Option<i64>,
}

impl Default for FetchBounds {
    fn default() -> Self {
        FetchBounds {
            partitions_in: None,
            partition_min: i64::MIN,
            partition_max: i64::MAX,
            offset_start: 0,
            offset_end: i64::MAX,
            timestamp_start_ms: None,
        }
    }
}

impl FetchBounds {
    /// Bounds from DataFusion's pushed-down filters (each one a conjunct; all must hold).
    /// Filters this does not understand are ignored.
    pub(crate) fn from_filters(filters: &[Expr]) -> FetchBounds {
        let mut bounds = FetchBounds::default();
        for filter in filters {
            bounds.apply(filter);
        }
        bounds
    }

    /// Whether `partition` may hold rows the filters keep.
    pub(crate) fn keeps_partition(&self, partition: i32) -> bool {
        let p = i64::from(partition);
        p >= self.partition_min
            && p <= self.partition_max
            && self.partitions_in.as_ref().is_none_or(|set| set.contains(&partition))
    }

    /// The offsets to read of a partition holding `[log_start_offset, high_watermark)`, given
    /// the offset of its first record at or after `timestamp_start_ms` (`None` when there is no
    /// timestamp bound; `Some(-1)` when no record is that recent). `None` when nothing is to be
    /// read.
    pub(crate) fn offset_range(
        &self,
        log_start_offset: i64,
        high_watermark: i64,
        timestamp_offset: Option<i64>,
    ) -> Option<(i64, i64)> {
        let mut start = self.offset_start.max(log_start_offset);
        match timestamp_offset {
            Some(offset) if offset < 0 => return None,
            Some(offset) => start = start.max(offset),
            None => {}
        }
        let end = self.offset_end.min(high_watermark);
        (start < end).then_some((start, end))
    }

    fn apply(&mut self, expr: &Expr) {
        match expr {
            Expr::BinaryExpr(BinaryExpr { left, op: Operator::And, right }) => {
                self.apply(left);
                self.apply(right);
            }
            Expr::BinaryExpr(BinaryExpr { op: Operator::Or, .. }) | Expr::InList(_) => {
                if let Some(set) = partition_set(expr) {
                    self.restrict_partitions(set);
                }
            }
            Expr::BinaryExpr(BinaryExpr { left, op, right }) => {
                if let (Some(column), Some(value)) = (metadata_column(left), literal(right)) {
                    self.compare(column, *op, value);
                } else if let (Some(value), Some(column)) = (literal(left), metadata_column(right)) {
                    if let Some(op) = op.swap() {
                        self.compare(column, op, value);
                    }
                }
            }
            Expr::Between(Between { expr, negated: false, low, high }) => {
                if let (Some(column), Some(low), Some(high)) = (metadata_column(expr), literal(low), literal(high)) {
                    self.compare(column, Operator::GtEq, low);
                    self.compare(column, Operator::LtEq, high);
                }
            }
            _ => {}
        }
    }

    fn restrict_partitions(&mut self, set: BTreeSet<i32>) {
        self.partitions_in = Some(match self.partitions_in.take() {
            Some(old) => old.intersection(&set).copied().collect(),
            None => set,
        });
    }

    fn compare(&mut self, column: Column, op: Operator, value: Literal) {
        match (column, value) {
            (Column::Partition, Literal::Int(v)) => {
                let (min, max) = int_bounds(op, v);
                self.partition_min = self.partition_min.max(min);
                self.partition_max = self.partition_max.min(max);
            }
            (Column::Offset, Literal::Int(v)) => {
                let (min, max) = int_bounds(op, v);
                self.offset_start = self.offset_start.max(min);
                self.offset_end = self.offset_end.min(max.saturating_add(1));
            }
            (Column::Timestamp, Literal::TimestampMs(ms)) => {
                // Only a lower bound: it moves the start offset through ListOffsets, which finds
                // the first record at or after a timestamp. An upper bound cannot end a fetch:
                // CreateTime is set by producers and is not monotonic within a partition, so a
                // record after one past the bound may still be within it.
                let start = match op {
                    Operator::GtEq | Operator::Eq => Some(ms),
                    Operator::Gt => Some(ms.saturating_add(1)),
                    _ => None,
                };
                if let Some(start) = start {
                    self.timestamp_start_ms = Some(self.timestamp_start_ms.map_or(start, |s| s.max(start)));
                }
            }
            _ => {}
        }
    }
}

/// The partitions an `=`, `IN` or an `OR` of them on `_partition` allows; `None` when the
/// expression is anything else (an `OR` with any other condition bounds nothing).
fn partition_set(expr: &Expr) -> Option<BTreeSet<i32>> {
    match expr {
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Or, right }) => {
            let mut set = partition_set(left)?;
            set.extend(partition_set(right)?);
            Some(set)
        }
        Expr::BinaryExpr(BinaryExpr { left, op: Operator::Eq, right }) => {
            let (column, value) = match (metadata_column(left), literal(right)) {
                (Some(c), Some(v)) => (c, v),
                _ => (metadata_column(right)?, literal(left)?),
            };
            match (column, value) {
                // A partition number outside i32 matches no partition.
                (Column::Partition, Literal::Int(v)) => Some(i32::try_from(v).into_iter().collect()),
                _ => None,
            }
        }
        Expr::InList(list) if !list.negated && metadata_column(&list.expr) == Some(Column::Partition) => {
            let mut set = BTreeSet::new();
            for item in &list.list {
                match literal(item)? {
                    Literal::Int(v) => set.extend(i32::try_from(v)),
                    Literal::TimestampMs(_) => return None,
                }
            }
            Some(set)
        }
        _ => None,
    }
}

/// Inclusive `(min, max)` of the integers `x` with `x op v`.
fn int_bounds(op: Operator, v: i64) -> (i64, i64) {
    match op {
        Operator::Eq => (v, v),
        Operator::Gt => (v.saturating_add(1), i64::MAX),
        Operator::GtEq => (v, i64::MAX),
        Operator::Lt => (i64::MIN, v.saturating_sub(1)),
        Operator::LtEq => (i64::MIN, v),
        _ => (i64::MIN, i64::MAX),
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Partition,
    Offset,
    Timestamp,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Literal {
    Int(i64),
    TimestampMs(i64),
}

/// The metadata column an expression is, possibly under a cast DataFusion's type coercion put
/// there (e.g. `_timestamp` compared with a nanosecond `now()`).
fn metadata_column(expr: &Expr) -> Option<Column> {
    match expr {
        Expr::Column(c) => match c.name.as_str() {
            PARTITION_COLUMN => Some(Column::Partition),
            OFFSET_COLUMN => Some(Column::Offset),
            TIMESTAMP_COLUMN => Some(Column::Timestamp),
            _ => None,
        },
        // Widening casts only: integers to wider integers, timestamps to other units or zones.
        Expr::Cast(cast) if cast.field.data_type().is_integer() || cast.field.data_type().is_temporal() => {
            metadata_column(&cast.expr)
        }
        _ => None,
    }
}

/// An integer or timestamp literal (a timestamp in milliseconds, rounded down: for the lower
/// bounds it is used for, rounding down only reads more).
fn literal(expr: &Expr) -> Option<Literal> {
    let Expr::Literal(value, _) = expr else { return None };
    Some(match value {
        ScalarValue::Int8(Some(v)) => Literal::Int(i64::from(*v)),
        ScalarValue::Int16(Some(v)) => Literal::Int(i64::from(*v)),
        ScalarValue::Int32(Some(v)) => Literal::Int(i64::from(*v)),
        ScalarValue::Int64(Some(v)) => Literal::Int(*v),
        ScalarValue::UInt8(Some(v)) => Literal::Int(i64::from(*v)),
        ScalarValue::UInt16(Some(v)) => Literal::Int(i64::from(*v)),
        ScalarValue::UInt32(Some(v)) => Literal::Int(i64::from(*v)),
        ScalarValue::UInt64(Some(v)) => Literal::Int(i64::try_from(*v).unwrap_or(i64::MAX)),
        ScalarValue::TimestampSecond(Some(v), _) => Literal::TimestampMs(v.saturating_mul(1000)),
        ScalarValue::TimestampMillisecond(Some(v), _) => Literal::TimestampMs(*v),
        ScalarValue::TimestampMicrosecond(Some(v), _) => Literal::TimestampMs(v.div_euclid(1000)),
        ScalarValue::TimestampNanosecond(Some(v), _) => Literal::TimestampMs(v.div_euclid(1_000_000)),
        _ => return None,
    })
}

/// Whether a filter gives [`FetchBounds`] anything (so the scan reports it as pushed down).
pub(crate) fn bounds_fetch(filter: &Expr) -> bool {
    FetchBounds::from_filters(std::slice::from_ref(filter)) != FetchBounds::default()
}

#[cfg(test)]
mod tests {
    use datafusion::logical_expr::{col, lit};

    use super::*;

    fn ts(ms: i64) -> Expr {
        lit(ScalarValue::TimestampMillisecond(Some(ms), None))
    }

    #[test]
    fn partitions_from_eq_in_and_comparisons() {
        let b = FetchBounds::from_filters(&[col("_partition").eq(lit(1))]);
        assert!(b.keeps_partition(1) && !b.keeps_partition(0) && !b.keeps_partition(2));
        let b = FetchBounds::from_filters(&[col("_partition").in_list(vec![lit(0), lit(2)], false)]);
        assert!(b.keeps_partition(0) && !b.keeps_partition(1) && b.keeps_partition(2));
        let b = FetchBounds::from_filters(&[col("_partition").in_list(vec![lit(0), lit(2)], true)]);
        assert!(b.keeps_partition(1), "NOT IN gives no bound");
        let b = FetchBounds::from_filters(&[col("_partition").gt(lit(0)), lit(3).gt(col("_partition"))]);
        assert!(!b.keeps_partition(0) && b.keeps_partition(1) && b.keeps_partition(2) && !b.keeps_partition(3));
        let b = FetchBounds::from_filters(&[col("_partition").eq(lit(1)).and(col("_partition").eq(lit(2)))]);
        assert!(!b.keeps_partition(1) && !b.keeps_partition(2), "contradiction keeps nothing");
        let b = FetchBounds::from_filters(&[col("_partition").eq(lit(1)).or(col("_partition").eq(lit(2)))]);
        assert!(!b.keeps_partition(0) && b.keeps_partition(1) && b.keeps_partition(2), "an OR of partitions");
        let b = FetchBounds::from_filters(&[col("_partition").eq(lit(1)).or(col("x").eq(lit(2)))]);
        assert!(b.keeps_partition(0), "an OR with another condition gives no bound");
        let b = FetchBounds::from_filters(&[col("_partition").gt(lit(i64::MAX))]);
        assert!(!b.keeps_partition(i32::MAX));
        let b = FetchBounds::from_filters(&[col("_partition").not_eq(lit(1))]);
        assert_eq!(b, FetchBounds::default());
    }

    #[test]
    fn offsets_from_comparisons_and_between() {
        let b = FetchBounds::from_filters(&[col("_offset").gt_eq(lit(10i64)), col("_offset").lt(lit(20i64))]);
        assert_eq!((b.offset_start, b.offset_end), (10, 20));
        let b = FetchBounds::from_filters(&[col("_offset").between(lit(5i64), lit(7i64))]);
        assert_eq!((b.offset_start, b.offset_end), (5, 8));
        let b = FetchBounds::from_filters(&[col("_offset").gt(lit(5i64)), col("_offset").lt_eq(lit(9i64))]);
        assert_eq!((b.offset_start, b.offset_end), (6, 10));
        let b = FetchBounds::from_filters(&[col("_offset").eq(lit(3i64))]);
        assert_eq!((b.offset_start, b.offset_end), (3, 4));
        let b = FetchBounds::from_filters(&[col("_offset").not_between(lit(5i64), lit(7i64))]);
        assert_eq!(b, FetchBounds::default());
        let b = FetchBounds::from_filters(&[col("_offset").lt_eq(lit(i64::MAX))]);
        assert_eq!(b.offset_end, i64::MAX);
        // The range within a partition.
        let b = FetchBounds::from_filters(&[col("_offset").gt_eq(lit(10i64)), col("_offset").lt(lit(20i64))]);
        assert_eq!(b.offset_range(0, 100, None), Some((10, 20)));
        assert_eq!(b.offset_range(15, 100, None), Some((15, 20)));
        assert_eq!(b.offset_range(0, 12, None), Some((10, 12)));
        assert_eq!(b.offset_range(0, 10, None), None);
        assert_eq!(b.offset_range(0, 100, Some(18)), Some((18, 20)));
        assert_eq!(b.offset_range(0, 100, Some(-1)), None, "no record that recent");
        assert_eq!(b.offset_range(0, 100, Some(30)), None);
    }

    #[test]
    fn timestamp_lower_bound_only() {
        let b = FetchBounds::from_filters(&[col("_timestamp").gt_eq(ts(1000))]);
        assert_eq!(b.timestamp_start_ms, Some(1000));
        let b = FetchBounds::from_filters(&[col("_timestamp").gt(ts(1000)), col("_timestamp").gt_eq(ts(500))]);
        assert_eq!(b.timestamp_start_ms, Some(1001));
        let b = FetchBounds::from_filters(&[col("_timestamp").lt(ts(1000))]);
        assert_eq!(b, FetchBounds::default(), "an upper bound cannot end a fetch");
        let b = FetchBounds::from_filters(&[col("_timestamp").between(ts(1000), ts(2000))]);
        assert_eq!(b.timestamp_start_ms, Some(1000));
        let nanos = lit(ScalarValue::TimestampNanosecond(Some(1_500_999_999), Some("+00:00".into())));
        let cast = Expr::Cast(datafusion::logical_expr::Cast::new(
            Box::new(col("_timestamp")),
            datafusion::arrow::datatypes::DataType::Timestamp(
                datafusion::arrow::datatypes::TimeUnit::Nanosecond,
                Some("+00:00".into()),
            ),
        ));
        let b = FetchBounds::from_filters(&[cast.gt_eq(nanos)]);
        assert_eq!(b.timestamp_start_ms, Some(1500), "rounded down");
        assert!(bounds_fetch(&col("_timestamp").gt_eq(ts(1))));
        assert!(!bounds_fetch(&col("_timestamp").lt_eq(ts(1))));
        assert!(!bounds_fetch(&col("user_id").eq(lit(1))));
    }
}
