//! Single message transforms: Kafka Connect's chain syntax (`transforms=a,b`,
//! `transforms.a.type=…`, `transforms.a.predicate=p`, `transforms.a.negate=true`,
//! `predicates=p`, `predicates.p.type=…`), the built-ins with Kafka's names and keys
//! ([`builtin`]), and scripted transforms ([`rhai`]).
//!
//! A chain runs over a whole batch: each step turns its input vector into an output vector, so
//! no per-record allocation beyond what a step itself needs. A record that fails a step is
//! taken out of the batch as a [`FailedRecord`] (stage `TRANSFORMATION`) and the rest carry on.

use std::collections::BTreeMap;
use std::path::Path;

use crate::config::Props;
use crate::connector::FailedRecord;
use crate::error::Result;
use crate::record::ConnectRecord;

pub mod builtin;
pub mod rhai;

/// `(class, type)` of every built-in transform and predicate, for `GET /connector-plugins`.
pub fn plugin_names() -> Vec<(&'static str, &'static str)> {
    Vec::new()
}

/// One transform step.
pub trait Transformation: Send {
    /// Transforms one record, pushing zero (drop), one, or more (fan-out) records onto `out`.
    fn apply(&mut self, record: ConnectRecord, out: &mut Vec<ConnectRecord>) -> Result<()>;
}

/// A condition that decides whether a step applies to a record.
pub trait Predicate: Send {
    /// Whether the record matches.
    fn test(&self, record: &ConnectRecord) -> bool;
}

/// The configured chain of a connector.
pub struct TransformChain {
    steps: Vec<Step>,
}

struct Step {
    alias: String,
    class_name: String,
    transform: Box<dyn Transformation>,
    predicate: Option<(Box<dyn Predicate>, bool)>,
}

impl TransformChain {
    /// An empty chain.
    pub fn empty() -> Self {
        TransformChain { steps: Vec::new() }
    }

    /// Whether there are no steps.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Builds the chain from a connector config; `plugins_dir` is where `Rhai` scripts may be
    /// loaded from. A bad entry is a [`crate::ConnectError::Config`] naming its key.
    pub fn from_config(props: &Props, plugins_dir: &Path) -> Result<Self> {
        let _ = (props, plugins_dir, BTreeMap::<String, String>::new());
        Ok(TransformChain::empty())
    }

    /// Runs the chain over a batch. Records that fail a step are pushed onto `failed` (as they
    /// were when they failed) and dropped from the result.
    pub fn apply_batch(&mut self, records: Vec<ConnectRecord>, failed: &mut Vec<FailedRecord>) -> Vec<ConnectRecord> {
        let _ = failed;
        if self.steps.is_empty() {
            return records;
        }
        let _ = self.steps.iter().map(|s| (&s.alias, &s.class_name, &s.transform, &s.predicate)).count();
        records
    }
}
