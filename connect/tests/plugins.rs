//! Runs every script in `plugins/transforms/` through the Rhai engine against the fixtures
//! beside it: `<name>.in.jsonl` holds input records, `<name>.out.jsonl` what must come out, one
//! JSON object per line (`{"topic", "value", "headers"}`, plus `key`, `partition` and
//! `timestamp` when set). A string `value` is a text value, anything else structured data. A
//! dropped record is simply absent from the output; a record the script fails is
//! `{"failed": "<part of the reason>"}`. A script without both fixtures fails the test.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use bytes::Bytes;
use serde_json::{json, Map, Value as Json};
use spate_connect::config::Props;
use spate_connect::record::{ConnectRecord, Header, Value};
use spate_connect::transform::rhai::build;
use spate_connect::ConnectError;

/// Test failures as text (the crate keeps `anyhow` out of its dependencies).
type Result<T> = std::result::Result<T, String>;

macro_rules! ensure {
    ($cond:expr, $($fmt:tt)+) => {
        if !$cond {
            return Err(format!($($fmt)+));
        }
    };
}

fn plugins_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("../plugins");
    dir.canonicalize().unwrap_or(dir)
}

fn record_from_json(line: &Json) -> Result<ConnectRecord> {
    let obj = line.as_object().ok_or("an input line is not a JSON object")?;
    let value = |v: Option<&Json>| match v {
        None | Some(Json::Null) => None,
        Some(Json::String(s)) => Some(Value::from_string(s.clone())),
        Some(other) => Some(Value::Json(other.clone())),
    };
    let topic = obj.get("topic").and_then(Json::as_str).unwrap_or("in");
    let mut record = ConnectRecord::new(Arc::from(topic), value(obj.get("value")));
    record.key = value(obj.get("key"));
    record.partition =
        obj.get("partition").and_then(Json::as_i64).map(i32::try_from).transpose().map_err(|e| e.to_string())?;
    record.timestamp_ms = obj.get("timestamp").and_then(Json::as_i64);
    if let Some(headers) = obj.get("headers").and_then(Json::as_object) {
        for (k, v) in headers {
            let value = match v {
                Json::Null => None,
                Json::String(s) => Some(Bytes::from(s.clone())),
                other => Some(Bytes::from(other.to_string())),
            };
            record.headers.push(Header { key: k.clone(), value });
        }
    }
    Ok(record)
}

fn record_to_json(r: &ConnectRecord) -> Json {
    let value = |v: &Option<Value>| match v {
        None => Json::Null,
        Some(Value::Json(j)) => j.clone(),
        Some(v) => match v.as_str() {
            Some(s) => Json::String(s.to_owned()),
            None => json!({"bytes": format!("{v:?}")}),
        },
    };
    let mut obj = Map::new();
    obj.insert("topic".into(), Json::String(r.topic.to_string()));
    if r.key.is_some() {
        obj.insert("key".into(), value(&r.key));
    }
    obj.insert("value".into(), value(&r.value));
    if let Some(p) = r.partition {
        obj.insert("partition".into(), p.into());
    }
    if let Some(t) = r.timestamp_ms {
        obj.insert("timestamp".into(), t.into());
    }
    let headers: Map<String, Json> = r
        .headers
        .iter()
        .map(|h| {
            let v = h.value.as_ref().map_or(Json::Null, |b| Json::String(String::from_utf8_lossy(b).into_owned()));
            (h.key.clone(), v)
        })
        .collect();
    obj.insert("headers".into(), Json::Object(headers));
    Json::Object(obj)
}

fn read_jsonl(path: &Path) -> Result<Vec<Json>> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("{} is missing: {e}", path.display()))?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| serde_json::from_str(l).map_err(|e| format!("{}:{}: {e}", path.display(), i + 1)))
        .collect()
}

fn check_script(script: &Path) -> Result<()> {
    let inputs = read_jsonl(&script.with_extension("in.jsonl"))?;
    let expected = read_jsonl(&script.with_extension("out.jsonl"))?;
    ensure!(!inputs.is_empty(), "{} has no input records", script.display());
    let source = std::fs::read_to_string(script).map_err(|e| e.to_string())?;
    ensure!(source.starts_with("//"), "{} does not open with a comment header", script.display());

    let mut props = Props::new();
    props.insert("type".into(), "Rhai".into());
    props.insert("script".into(), script.display().to_string());
    let mut transform = build("fixture", &props, &plugins_dir()).map_err(|e| format!("{}: {e}", script.display()))?;

    let mut actual = Vec::new();
    for line in &inputs {
        let mut out = Vec::new();
        match transform.apply(record_from_json(line)?, &mut out) {
            Ok(()) => actual.extend(out.iter().map(record_to_json)),
            Err(ConnectError::Transform { reason, .. }) => actual.push(json!({ "failed": reason })),
            Err(other) => return Err(format!("{}: unexpected error {other}", script.display())),
        }
    }
    ensure!(
        actual.len() == expected.len(),
        "{}: {} records out, {} expected:\n{}",
        script.display(),
        actual.len(),
        expected.len(),
        actual.iter().map(Json::to_string).collect::<Vec<_>>().join("\n")
    );
    for (i, (a, e)) in actual.iter().zip(&expected).enumerate() {
        let same = match (a.get("failed"), e.get("failed")) {
            (Some(Json::String(reason)), Some(Json::String(part))) => reason.contains(part.as_str()),
            _ => a == e,
        };
        ensure!(same, "{} output record {}:\n  got      {a}\n  expected {e}", script.display(), i + 1);
    }
    Ok(())
}

#[test]
fn every_plugin_script_passes_its_fixtures() {
    if let Err(e) = check_all() {
        panic!("{e}");
    }
}

fn check_all() -> Result<()> {
    let dir = plugins_dir().join("transforms");
    let mut scripts: Vec<PathBuf> = std::fs::read_dir(&dir)
        .map_err(|e| format!("{} is missing: {e}", dir.display()))?
        .map(|e| e.map(|e| e.path()))
        .collect::<std::io::Result<_>>()
        .map_err(|e| e.to_string())?;
    scripts.retain(|p| p.extension().is_some_and(|e| e == "rhai"));
    scripts.sort();
    ensure!(!scripts.is_empty(), "no scripts in {}", dir.display());
    let failures: Vec<String> = scripts.iter().filter_map(|s| check_script(s).err()).collect();
    ensure!(failures.is_empty(), "{}", failures.join("\n\n"));
    Ok(())
}
