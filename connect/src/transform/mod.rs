//! Single message transforms: Kafka Connect's chain syntax (`transforms=a,b`,
//! `transforms.a.type=…`, `transforms.a.predicate=p`, `transforms.a.negate=true`,
//! `predicates=p`, `predicates.p.type=…`), the built-ins with Kafka's names and keys
//! ([`builtin`]), and scripted transforms ([`rhai`]).
//!
//! A chain runs over a whole batch: each step turns its input vector into an output vector, so
//! no per-record allocation beyond what a step itself needs. A record that fails a step is
//! taken out of the batch as a [`FailedRecord`] (stage `TRANSFORMATION`) and the rest carry on.

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::Arc;

use crate::config::Props;
use crate::connector::FailedRecord;
use crate::error::{ConnectError, Result};
use crate::record::ConnectRecord;

pub mod builtin;
pub mod rhai;

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

/// Spate's class name for scripted transforms; `Rhai` is accepted as its short form.
const RHAI_CLASS: &str = "io.spate.connect.transforms.Rhai";

/// The `__connect.errors.stage` of a record a transform refused.
const STAGE: &str = "TRANSFORMATION";

/// The configured chain of a connector.
pub struct TransformChain {
    steps: Vec<Step>,
    /// The output vector of the last run, kept empty with its capacity for the next batch.
    spare: Vec<ConnectRecord>,
}

struct Step {
    alias: String,
    /// The canonical class name (Kafka's full name for built-ins), for the dead-letter headers.
    class_name: String,
    op: Op,
    /// The predicate and `negate`: the step applies where `test(record) != negate`.
    predicate: Option<(Box<dyn Predicate>, bool)>,
}

enum Op {
    /// Built-ins change the record in place and leave it untouched when they refuse it.
    Builtin(Box<dyn builtin::RecordOp>),
    /// Plugins (Rhai) consume the record, so the chain keeps a copy for the dead-letter route.
    Custom(Box<dyn Transformation>),
}

impl TransformChain {
    /// An empty chain.
    pub fn empty() -> Self {
        TransformChain { steps: Vec::new(), spare: Vec::new() }
    }

    /// Whether there are no steps.
    pub fn is_empty(&self) -> bool {
        self.steps.is_empty()
    }

    /// Builds the chain from a connector config; `plugins_dir` is where `Rhai` scripts may be
    /// loaded from. A bad entry is a [`crate::ConnectError::Config`] naming its key (the first
    /// one found; [`TransformChain::validate`] lists them all).
    pub fn from_config(props: &Props, plugins_dir: &Path) -> Result<Self> {
        let mut errors = Vec::new();
        let steps = build_steps(props, plugins_dir, &mut errors);
        match errors.into_iter().next() {
            Some(e) => Err(e),
            None => Ok(TransformChain { steps, spare: Vec::new() }),
        }
    }

    /// Every error in the `transforms` and `predicates` keys of `props`, as `(key, message)`
    /// pairs for `PUT /connector-plugins/{plugin}/config/validate`; empty when the chain builds.
    pub fn validate(props: &Props, plugins_dir: &Path) -> Vec<(String, String)> {
        let mut errors = Vec::new();
        build_steps(props, plugins_dir, &mut errors);
        errors
            .into_iter()
            .map(|e| match e {
                ConnectError::Config { key, reason } => (key, reason),
                // Only plugin builds fail otherwise; they are charged to the entry's type.
                ConnectError::Transform { name, reason } => (format!("transforms.{name}.type"), reason),
                other => ("transforms".to_owned(), other.to_string()),
            })
            .collect()
    }

    /// Runs the chain over a batch. Records that fail a step are pushed onto `failed` (as they
    /// were before that step) and dropped from the result.
    pub fn apply_batch(&mut self, records: Vec<ConnectRecord>, failed: &mut Vec<FailedRecord>) -> Vec<ConnectRecord> {
        if self.steps.is_empty() {
            return records;
        }
        let mut input = records;
        let mut output = std::mem::take(&mut self.spare);
        for step in &mut self.steps {
            output.clear();
            output.reserve(input.len());
            for mut record in input.drain(..) {
                if let Some((predicate, negate)) = &step.predicate {
                    if predicate.test(&record) == *negate {
                        output.push(record);
                        continue;
                    }
                }
                match &mut step.op {
                    Op::Builtin(op) => match op.apply(&mut record) {
                        Ok(true) => output.push(record),
                        Ok(false) => {}
                        Err(reason) => failed.push(FailedRecord {
                            record,
                            error: Arc::new(ConnectError::transform(&step.alias, reason)),
                            stage: STAGE,
                            class_name: step.class_name.clone(),
                        }),
                    },
                    Op::Custom(transform) => {
                        let before = record.clone();
                        let pushed = output.len();
                        if let Err(e) = transform.apply(record, &mut output) {
                            // A fan-out that failed half way takes nothing with it.
                            output.truncate(pushed);
                            let error = match e {
                                e @ ConnectError::Transform { .. } => e,
                                other => ConnectError::transform(&step.alias, other.to_string()),
                            };
                            failed.push(FailedRecord {
                                record: before,
                                error: Arc::new(error),
                                stage: STAGE,
                                class_name: step.class_name.clone(),
                            });
                        }
                    }
                }
            }
            std::mem::swap(&mut input, &mut output);
        }
        self.spare = output;
        input
    }
}

/// Every transform and predicate class this worker has, with its kind (`transformation` or
/// `predicate`, as `GET /connector-plugins?connectorsOnly=false` names them).
pub fn plugin_classes() -> Vec<(String, &'static str)> {
    builtin::transform_classes()
        .chain(std::iter::once(RHAI_CLASS.to_owned()))
        .map(|c| (c, "transformation"))
        .chain(builtin::predicate_classes().map(|c| (c, "predicate")))
        .collect()
}

/// Builds the steps of `props`, pushing every error onto `errors` (the steps built are only
/// usable when there are none).
fn build_steps(props: &Props, plugins_dir: &Path, errors: &mut Vec<ConnectError>) -> Vec<Step> {
    let list = |key: &str| -> Vec<String> {
        props
            .get(key)
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    };

    // Predicates first: each is checked once here, and built again for every step naming it.
    let mut predicates: BTreeMap<String, Option<builtin::Resolved>> = BTreeMap::new();
    for alias in list("predicates") {
        if predicates.contains_key(&alias) {
            errors.push(ConnectError::config("predicates", format!("the alias {alias} is listed twice")));
            continue;
        }
        let prefix = format!("predicates.{alias}.");
        let cfg = builtin::EntryConfig::new(&prefix, props);
        let resolved = match cfg.get("type").map(str::trim).filter(|t| !t.is_empty()) {
            None => {
                errors.push(cfg.error("type", "missing: name the predicate's class"));
                None
            }
            Some(class) => match builtin::resolve_predicate(class) {
                None => {
                    errors.push(cfg.error(
                        "type",
                        format!("{class} is not a predicate (TopicNameMatches, HasHeaderKey, RecordIsTombstone)"),
                    ));
                    None
                }
                Some(r) => match r.build_predicate(&cfg) {
                    Ok(_) => Some(r),
                    Err(e) => {
                        errors.push(e);
                        None
                    }
                },
            },
        };
        predicates.insert(alias, resolved);
    }

    let mut seen = BTreeSet::new();
    let mut steps = Vec::new();
    for alias in list("transforms") {
        if !seen.insert(alias.clone()) {
            errors.push(ConnectError::config("transforms", format!("the alias {alias} is listed twice")));
            continue;
        }
        let prefix = format!("transforms.{alias}.");
        let cfg = builtin::EntryConfig::new(&prefix, props);

        let predicate = match cfg.get("predicate").map(str::trim).filter(|p| !p.is_empty()) {
            None => None,
            Some(name) => match predicates.get(name) {
                None => {
                    errors.push(cfg.error("predicate", format!("{name} is not listed in predicates")));
                    None
                }
                // Its own error is already reported.
                Some(None) => None,
                Some(Some(resolved)) => {
                    let pcfg_prefix = format!("predicates.{name}.");
                    match resolved.build_predicate(&builtin::EntryConfig::new(&pcfg_prefix, props)) {
                        Ok(p) => Some(p),
                        Err(e) => {
                            errors.push(e);
                            None
                        }
                    }
                }
            },
        };
        let negate = match cfg.bool_or("negate", false) {
            Ok(n) => n,
            Err(e) => {
                errors.push(e);
                false
            }
        };
        if negate && cfg.get("predicate").is_none() {
            errors.push(cfg.error("negate", "is set but the transform has no predicate"));
        }

        let Some(class) = cfg.get("type").map(str::trim).filter(|t| !t.is_empty()) else {
            errors.push(cfg.error("type", "missing: name the transform's class"));
            continue;
        };
        let built = if class == RHAI_CLASS || class == "Rhai" {
            rhai::build(&alias, &cfg.stripped(), plugins_dir).map(|t| (RHAI_CLASS.to_owned(), Op::Custom(t)))
        } else if let Some(resolved) = builtin::resolve_transform(class) {
            resolved.build_transform(&cfg).map(|op| (resolved.class_name, Op::Builtin(op)))
        } else {
            Err(cfg.error("type", format!("{class} is not a transform this worker has (see GET /connector-plugins)")))
        };
        match built {
            Ok((class_name, op)) => {
                steps.push(Step { alias, class_name, op, predicate: predicate.map(|p| (p, negate)) })
            }
            Err(ConnectError::Config { key, reason }) if !key.starts_with(&prefix) => {
                // A plugin that names its own keys without the prefix: say where they live.
                errors.push(ConnectError::config(format!("{prefix}{key}"), reason));
            }
            Err(e) => errors.push(e),
        }
    }
    steps
}

#[cfg(test)]
mod tests {
    use serde_json::{json, Value as Json};

    use super::*;
    use crate::record::{Header, Value};

    fn props(pairs: &[(&str, &str)]) -> Props {
        pairs.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())).collect()
    }

    fn chain(pairs: &[(&str, &str)]) -> TransformChain {
        TransformChain::from_config(&props(pairs), Path::new("plugins")).unwrap()
    }

    fn rec(topic: &str, value: Json) -> ConnectRecord {
        ConnectRecord::new(Arc::from(topic), Some(Value::Json(value)))
    }

    fn error_key(pairs: &[(&str, &str)]) -> String {
        match TransformChain::from_config(&props(pairs), Path::new("plugins")) {
            Err(ConnectError::Config { key, .. }) => key,
            Err(other) => panic!("not a config error: {other}"),
            Ok(_) => panic!("built"),
        }
    }

    #[test]
    fn no_transforms_is_an_empty_chain_that_passes_batches_through() {
        let mut c = chain(&[("name", "x")]);
        assert!(c.is_empty());
        let mut failed = Vec::new();
        let out = c.apply_batch(vec![rec("t", json!(1))], &mut failed);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_chain_runs_its_steps_in_order_with_full_and_short_class_names() {
        let mut c = chain(&[
            ("transforms", "hoist, insert ,route"),
            ("transforms.hoist.type", "org.apache.kafka.connect.transforms.HoistField$Value"),
            ("transforms.hoist.field", "line"),
            ("transforms.insert.type", "InsertField$Value"),
            ("transforms.insert.topic.field", "topic"),
            ("transforms.route.type", "org.apache.kafka.connect.transforms.RegexRouter"),
            ("transforms.route.regex", "(.*)"),
            ("transforms.route.replacement", "$1-out"),
        ]);
        let mut failed = Vec::new();
        let out =
            c.apply_batch(vec![ConnectRecord::new(Arc::from("logs"), Some(Value::from_string("hi")))], &mut failed);
        assert!(failed.is_empty());
        assert_eq!(&*out[0].topic, "logs-out");
        assert_eq!(out[0].value, Some(Value::Json(json!({"line": "hi", "topic": "logs"}))));
    }

    #[test]
    fn predicates_with_negate_pick_the_records_a_step_applies_to() {
        let mut c = chain(&[
            ("transforms", "dropTombstones,dropOthers,tag"),
            ("transforms.dropTombstones.type", "Filter"),
            ("transforms.dropTombstones.predicate", "isTombstone"),
            ("transforms.dropOthers.type", "org.apache.kafka.connect.transforms.Filter"),
            ("transforms.dropOthers.predicate", "isLogs"),
            ("transforms.dropOthers.negate", "true"),
            ("transforms.tag.type", "InsertHeader"),
            ("transforms.tag.header", "seen"),
            ("transforms.tag.value.literal", "yes"),
            ("transforms.tag.predicate", "hasTrace"),
            ("predicates", "isTombstone,isLogs,hasTrace"),
            ("predicates.isTombstone.type", "org.apache.kafka.connect.transforms.predicates.RecordIsTombstone"),
            ("predicates.isLogs.type", "TopicNameMatches"),
            ("predicates.isLogs.pattern", "logs-.*"),
            ("predicates.hasTrace.type", "HasHeaderKey"),
            ("predicates.hasTrace.name", "trace"),
        ]);
        let mut traced = rec("logs-b", json!(2));
        traced.headers.push(Header { key: "trace".into(), value: None });
        let batch = vec![
            rec("logs-a", json!(1)),
            ConnectRecord::new(Arc::from("logs-a"), None),
            rec("metrics", json!(3)),
            traced,
        ];
        let mut failed = Vec::new();
        let out = c.apply_batch(batch, &mut failed);
        assert!(failed.is_empty());
        let topics: Vec<&str> = out.iter().map(|r| &*r.topic).collect();
        assert_eq!(topics, ["logs-a", "logs-b"]);
        assert!(out[0].header("seen").is_none());
        assert!(out[1].header("seen").is_some());

        // The same chain object serves the next batch (the spare vector is reused).
        let out = c.apply_batch(vec![rec("metrics", json!(1)), rec("logs-x", json!(1))], &mut failed);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn a_refused_record_goes_to_failed_as_it_was_and_the_rest_pass() {
        let mut c = chain(&[
            ("transforms", "insert,cast"),
            ("transforms.insert.type", "InsertField$Value"),
            ("transforms.insert.static.field", "origin"),
            ("transforms.insert.static.value", "spate"),
            ("transforms.cast.type", "Cast$Value"),
            ("transforms.cast.spec", "n:int32"),
        ]);
        let batch = vec![
            rec("t", json!({"n": "1"})),
            rec("t", json!({"n": "one"})),
            ConnectRecord::new(Arc::from("t"), Some(Value::from_string("not json"))),
            rec("t", json!({"n": 2.5})),
        ];
        let mut failed = Vec::new();
        let out = c.apply_batch(batch, &mut failed);
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].value, Some(Value::Json(json!({"n": 1, "origin": "spate"}))));
        assert_eq!(out[1].value, Some(Value::Json(json!({"n": 2, "origin": "spate"}))));
        assert_eq!(failed.len(), 2);
        // Refused by the cast: the record as the cast got it (after insert).
        let cast_failure = failed.iter().find(|f| f.class_name.ends_with("Cast$Value")).unwrap();
        assert_eq!(cast_failure.record.value, Some(Value::Json(json!({"n": "one", "origin": "spate"}))));
        assert_eq!(cast_failure.stage, "TRANSFORMATION");
        assert!(matches!(&*cast_failure.error, ConnectError::Transform { name, .. } if name == "cast"));
        let insert_failure =
            failed.iter().find(|f| f.class_name == "org.apache.kafka.connect.transforms.InsertField$Value").unwrap();
        assert_eq!(insert_failure.record.value, Some(Value::from_string("not json")));
    }

    struct FanOutThenFail;

    impl Transformation for FanOutThenFail {
        fn apply(&mut self, record: ConnectRecord, out: &mut Vec<ConnectRecord>) -> Result<()> {
            out.push(record.clone());
            if record.value == Some(Value::Json(json!("bad"))) {
                return Err(ConnectError::Internal("script returned garbage".into()));
            }
            out.push(record);
            Ok(())
        }
    }

    #[test]
    fn a_plugin_step_can_fan_out_and_its_failures_take_nothing_with_them() {
        let mut c = TransformChain::empty();
        c.steps.push(Step {
            alias: "script".into(),
            class_name: RHAI_CLASS.into(),
            op: Op::Custom(Box::new(FanOutThenFail)),
            predicate: None,
        });
        let mut failed = Vec::new();
        let out =
            c.apply_batch(vec![rec("t", json!("ok")), rec("t", json!("bad")), rec("t", json!("ok2"))], &mut failed);
        let values: Vec<_> = out.iter().map(|r| r.value.clone().unwrap()).collect();
        assert_eq!(
            values,
            [json!("ok"), json!("ok"), json!("ok2"), json!("ok2")].map(Value::Json).to_vec(),
            "the failed record's partial fan-out is taken back"
        );
        assert_eq!(failed.len(), 1);
        assert_eq!(failed[0].record.value, Some(Value::Json(json!("bad"))));
        assert!(matches!(&*failed[0].error, ConnectError::Transform { name, .. } if name == "script"));
    }

    #[test]
    fn config_errors_name_the_exact_key() {
        assert_eq!(error_key(&[("transforms", "a")]), "transforms.a.type");
        assert_eq!(error_key(&[("transforms", "a"), ("transforms.a.type", "Nope")]), "transforms.a.type");
        assert_eq!(error_key(&[("transforms", "a"), ("transforms.a.type", "InsertField")]), "transforms.a.type");
        assert_eq!(error_key(&[("transforms", "a,a"), ("transforms.a.type", "Filter")]), "transforms");
        assert_eq!(error_key(&[("transforms", "a"), ("transforms.a.type", "HoistField$Key")]), "transforms.a.field");
        assert_eq!(
            error_key(&[("transforms", "a"), ("transforms.a.type", "Filter"), ("transforms.a.predicate", "p")]),
            "transforms.a.predicate"
        );
        assert_eq!(
            error_key(&[("transforms", "a"), ("transforms.a.type", "Filter"), ("transforms.a.negate", "true")]),
            "transforms.a.negate"
        );
        assert_eq!(
            error_key(&[
                ("transforms", "a"),
                ("transforms.a.type", "Filter"),
                ("transforms.a.predicate", "p"),
                ("transforms.a.negate", "yes"),
                ("predicates", "p"),
                ("predicates.p.type", "RecordIsTombstone"),
            ]),
            "transforms.a.negate"
        );
        assert_eq!(error_key(&[("predicates", "p")]), "predicates.p.type");
        assert_eq!(error_key(&[("predicates", "p"), ("predicates.p.type", "Filter")]), "predicates.p.type");
        assert_eq!(
            error_key(&[("predicates", "p"), ("predicates.p.type", "TopicNameMatches")]),
            "predicates.p.pattern"
        );
        // A Rhai entry goes to the Rhai builder, which refuses one without a script.
        assert!(TransformChain::from_config(
            &props(&[("transforms", "x"), ("transforms.x.type", "Rhai")]),
            Path::new("plugins")
        )
        .is_err());
    }

    #[test]
    fn validate_lists_every_error() {
        let errors = TransformChain::validate(
            &props(&[
                ("transforms", "a,b,c"),
                ("transforms.a.type", "Nope"),
                ("transforms.b.type", "Cast$Value"),
                ("transforms.b.spec", "x:int128"),
                ("transforms.c.type", "Filter"),
                ("transforms.c.predicate", "p"),
                ("predicates", "p"),
                ("predicates.p.type", "HasHeaderKey"),
            ]),
            Path::new("plugins"),
        );
        let keys: Vec<&str> = errors.iter().map(|(k, _)| k.as_str()).collect();
        assert_eq!(keys, ["predicates.p.name", "transforms.a.type", "transforms.b.spec"], "{errors:?}");
        assert!(TransformChain::validate(
            &props(&[("transforms", "f"), ("transforms.f.type", "Filter")]),
            Path::new(".")
        )
        .is_empty());
    }

    #[test]
    fn plugin_classes_lists_kafkas_names() {
        let classes = plugin_classes();
        assert!(classes.contains(&("org.apache.kafka.connect.transforms.ValueToKey".to_owned(), "transformation")));
        assert!(classes.contains(&(RHAI_CLASS.to_owned(), "transformation")));
        assert!(classes
            .contains(&("org.apache.kafka.connect.transforms.predicates.RecordIsTombstone".to_owned(), "predicate")));
    }
}
