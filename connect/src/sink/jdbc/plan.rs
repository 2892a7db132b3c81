//! The batching plan of one table's share of a chunk (sans-IO): which statements, in which
//! order, so that the table ends as if the records had been applied one by one.
//!
//! Multi-row statements cannot touch a row twice (PostgreSQL refuses an `ON CONFLICT` that
//! would, and an `UPDATE … FROM` picks an arbitrary match), so in `upsert` and `update` modes
//! the records of one key are folded first, in order: a delete forgets earlier writes; later
//! fields override earlier ones and fields only an earlier write named are kept (the same row
//! sequential upserts would leave); in `update` mode a write after a delete is dropped (the row
//! is gone). Then all deletes run, then the writes, one statement per column set. In `insert`
//! mode nothing is folded: runs of writes and deletes keep their order.

use std::collections::HashMap;
use std::sync::Arc;

use super::row::{Cell, Columns, Op, Row};

/// `insert.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum InsertMode {
    Insert,
    Upsert,
    Update,
}

/// Delete by key or write (insert/upsert/update by mode).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Kind {
    Delete,
    Write,
}

/// Rows of one shape for one statement.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Group {
    pub(crate) kind: Kind,
    pub(crate) cols: Arc<Columns>,
    pub(crate) rows: Vec<Vec<Cell>>,
    /// Per row, the indices of the records it carries (several when records were folded).
    pub(crate) sources: Vec<Vec<u32>>,
}

impl Group {
    fn new(kind: Kind, cols: Arc<Columns>) -> Self {
        Group { kind, cols, rows: Vec::new(), sources: Vec::new() }
    }
}

/// Appends a row to the group of its shape (same kind and columns), creating it if needed.
fn push(groups: &mut Vec<Group>, kind: Kind, row: Row, sources: Vec<u32>) {
    let pos = groups.iter().position(|g| g.kind == kind && (Arc::ptr_eq(&g.cols, &row.cols) || g.cols == row.cols));
    let g = match pos {
        Some(i) => &mut groups[i],
        None => {
            groups.push(Group::new(kind, row.cols.clone()));
            groups.last_mut().expect("pushed")
        }
    };
    g.rows.push(row.cells);
    g.sources.push(sources);
}

/// The statements for `ops` (record index, operation), in execution order.
pub(crate) fn plan(mode: InsertMode, ops: Vec<(u32, Op)>) -> Vec<Group> {
    match mode {
        InsertMode::Insert => plan_in_order(ops),
        InsertMode::Upsert | InsertMode::Update => plan_folded(mode, ops),
    }
}

fn plan_in_order(ops: Vec<(u32, Op)>) -> Vec<Group> {
    let mut out: Vec<Group> = Vec::new();
    let mut run: Vec<Group> = Vec::new();
    let mut run_kind = None;
    for (src, op) in ops {
        let (kind, row) = match op {
            Op::Write(r) => (Kind::Write, r),
            Op::Delete(r) => (Kind::Delete, r),
        };
        if run_kind != Some(kind) {
            out.append(&mut run);
            run_kind = Some(kind);
        }
        push(&mut run, kind, row, vec![src]);
    }
    out.append(&mut run);
    out
}

#[derive(Default)]
struct KeyState {
    delete: Option<(Row, u32)>,
    write: Option<(Row, Vec<u32>)>,
}

fn plan_folded(mode: InsertMode, ops: Vec<(u32, Op)>) -> Vec<Group> {
    let mut index: HashMap<Vec<u8>, usize> = HashMap::with_capacity(ops.len());
    let mut states: Vec<KeyState> = Vec::with_capacity(ops.len());
    for (src, op) in ops {
        let key = op.row().key_bytes();
        let i = *index.entry(key).or_insert_with(|| {
            states.push(KeyState::default());
            states.len() - 1
        });
        let st = &mut states[i];
        match op {
            Op::Delete(r) => {
                st.delete = Some((r, src));
                st.write = None;
            }
            Op::Write(r) => {
                if mode == InsertMode::Update && st.delete.is_some() {
                    continue;
                }
                st.write = Some(match st.write.take() {
                    None => (r, vec![src]),
                    Some((prev, mut srcs)) => {
                        srcs.push(src);
                        (merge(prev, r), srcs)
                    }
                });
            }
        }
    }
    let mut deletes: Vec<Group> = Vec::new();
    let mut writes: Vec<Group> = Vec::new();
    for st in states {
        if let Some((r, src)) = st.delete {
            push(&mut deletes, Kind::Delete, r, vec![src]);
        }
        if let Some((r, srcs)) = st.write {
            push(&mut writes, Kind::Write, r, srcs);
        }
    }
    deletes.append(&mut writes);
    deletes
}

/// `next` applied over `prev` (same key): `next`'s fields, plus those only `prev` had.
fn merge(prev: Row, next: Row) -> Row {
    if Arc::ptr_eq(&prev.cols, &next.cols) || prev.cols == next.cols {
        return next;
    }
    let mut names = next.cols.names.clone();
    let mut types = next.cols.types.clone();
    let mut cells = next.cells;
    for (i, name) in prev.cols.names.iter().enumerate().skip(prev.cols.pk_len) {
        if !names.contains(name) {
            names.push(name.clone());
            types.push(prev.cols.types[i].clone());
            cells.push(prev.cells[i].clone());
        }
    }
    Row { cols: Arc::new(Columns { names, types, pk_len: next.cols.pk_len }), cells }
}
