use std::time::Instant;

use bytes::Bytes;
use serde_json::json;

use super::*;
use crate::record::{Header, Value};

fn inline(source: &str) -> Props {
    let mut p = Props::new();
    p.insert("type".into(), "Rhai".into());
    p.insert(SOURCE.into(), source.into());
    p
}

fn build_inline(source: &str) -> Box<dyn Transformation> {
    build("x", &inline(source), Path::new(".")).expect("script builds")
}

fn record(value: &str) -> ConnectRecord {
    ConnectRecord::new(Arc::from("in"), Some(Value::from_string(value)))
}

fn run(t: &mut dyn Transformation, r: ConnectRecord) -> Result<Vec<ConnectRecord>> {
    let mut out = Vec::new();
    t.apply(r, &mut out)?;
    Ok(out)
}

fn transform_error(r: Result<Vec<ConnectRecord>>) -> String {
    match r {
        Err(ConnectError::Transform { name, reason }) => {
            assert_eq!(name, "x");
            reason
        }
        other => panic!("expected a transform error, got {other:?}"),
    }
}

fn config_error(r: Result<Box<dyn Transformation>>) -> (String, String) {
    match r {
        Err(ConnectError::Config { key, reason }) => (key, reason),
        Err(other) => panic!("expected a config error, got {other:?}"),
        Ok(_) => panic!("expected a config error, got a transform"),
    }
}

#[test]
fn json_values_arrive_as_maps_and_leave_as_json() {
    let mut t = build_inline(r#"fn transform(r) { r.value.level = "warn"; r.value.n += 1; r }"#);
    let out = run(&mut *t, record(r#"{"n": 1, "msg": "hi"}"#)).unwrap();
    assert_eq!(out.len(), 1);
    assert_eq!(out[0].value, Some(Value::Json(json!({"n": 2, "msg": "hi", "level": "warn"}))));
    assert_eq!(&*out[0].topic, "in");
}

#[test]
fn fields_left_out_keep_the_input() {
    let mut t = build_inline(r#"fn transform(r) { #{ topic: "out", headers: #{ a: "1", b: () } } }"#);
    let mut r = record("plain text");
    r.key = Some(Value::from_string("k"));
    r.timestamp_ms = Some(7);
    r.headers.push(Header { key: "old".into(), value: Some(Bytes::from_static(b"v")) });
    let out = run(&mut *t, r).unwrap();
    assert_eq!(&*out[0].topic, "out");
    assert_eq!(out[0].value, Some(Value::from_string("plain text")));
    assert_eq!(out[0].key, Some(Value::from_string("k")));
    assert_eq!(out[0].timestamp_ms, Some(7));
    assert_eq!(
        out[0].headers,
        vec![
            Header { key: "a".into(), value: Some(Bytes::from_static(b"1")) },
            Header { key: "b".into(), value: None }
        ]
    );
}

#[test]
fn the_script_sees_every_field() {
    let mut t = build_inline(
        r#"fn transform(r) {
            #{ value: `${type_of(r.value)} ${r.topic} ${r.partition} ${r.timestamp} ${r.headers.h} ${type_of(r.key)}` }
        }"#,
    );
    let mut r = ConnectRecord::new(Arc::from("logs"), Some(Value::Bytes(Bytes::from_static(&[0xff, 0xfe]))));
    r.partition = Some(3);
    r.timestamp_ms = Some(1000);
    r.headers.push(Header { key: "h".into(), value: Some(Bytes::from_static(b"hv")) });
    let out = run(&mut *t, r).unwrap();
    assert_eq!(out[0].value, Some(Value::from_string("blob logs 3 1000 hv ()")));

    // Text that only looks like JSON stays a string.
    let mut t = build_inline(r#"fn transform(r) { #{ value: type_of(r.value) } }"#);
    let out = run(&mut *t, record("{not json")).unwrap();
    assert_eq!(out[0].value, Some(Value::from_string("string")));
}

#[test]
fn unit_drops_the_record() {
    let mut t = build_inline(r#"fn transform(r) { if r.value.contains("debug") { () } else { r } }"#);
    assert!(run(&mut *t, record("a debug line")).unwrap().is_empty());
    assert_eq!(run(&mut *t, record("an info line")).unwrap().len(), 1);
}

#[test]
fn an_array_fans_out() {
    let mut t = build_inline(
        r#"fn transform(r) {
            let out = [];
            for part in r.value.split(",") { out.push(#{ value: part }); }
            out.push(#{ topic: "count", value: out.len() });
            out
        }"#,
    );
    let out = run(&mut *t, record("a,b,c")).unwrap();
    let values: Vec<_> = out.iter().map(|r| r.value.clone()).collect();
    assert_eq!(
        values,
        vec![
            Some(Value::from_string("a")),
            Some(Value::from_string("b")),
            Some(Value::from_string("c")),
            Some(Value::Json(json!(3)))
        ]
    );
    assert_eq!(&*out[0].topic, "in");
    assert_eq!(&*out[3].topic, "count");
}

#[test]
fn a_bad_fan_out_fails_the_whole_record() {
    let mut t = build_inline(r#"fn transform(r) { [#{ value: "ok" }, 42] }"#);
    let mut out = vec![record("earlier")];
    let err = t.apply(record("x"), &mut out);
    assert!(matches!(err, Err(ConnectError::Transform { .. })), "{err:?}");
    assert_eq!(out.len(), 1, "nothing of the failed record is left in the output");
}

#[test]
fn garbage_results_are_record_failures() {
    for (script, needle) in [
        ("fn transform(r) { 42 }", "i64"),
        (r#"fn transform(r) { #{ vaule: "typo" } }"#, "unknown field \"vaule\""),
        (r#"fn transform(r) { #{ topic: "" } }"#, "topic"),
        ("fn transform(r) { #{ partition: -1 } }", "partition"),
        ("fn transform(r) { #{ value: 1.0 / 0.0 } }", "not JSON"),
        (r#"fn transform(r) { throw "bad record" }"#, "bad record"),
        ("fn transform(r) { r.value.no_such_method() }", "no_such_method"),
    ] {
        let mut t = build_inline(script);
        let reason = transform_error(run(&mut *t, record("v")));
        assert!(reason.contains(needle), "{script}: {reason}");
        // The transform keeps working after a failure.
        let mut ok = build_inline("fn transform(r) { r }");
        assert_eq!(run(&mut *ok, record("v")).unwrap().len(), 1);
    }
}

#[test]
fn an_infinite_loop_hits_max_operations_quickly() {
    let mut t = build_inline("fn transform(r) { loop { } }");
    let started = Instant::now();
    let reason = transform_error(run(&mut *t, record("v")));
    assert!(reason.contains("max.operations=1000000"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The next record runs normally again.
    let reason = transform_error(run(&mut *t, record("v")));
    assert!(reason.contains("max.operations"), "{reason}");
}

#[test]
fn a_slow_script_hits_the_wall_clock_timeout() {
    let mut props = inline("fn transform(r) { let s = 0; loop { s += 1; } }");
    props.insert(MAX_OPERATIONS.into(), "1000000000000".into());
    props.insert(TIMEOUT_MS.into(), "50".into());
    let mut t = build("x", &props, Path::new(".")).unwrap();
    let started = Instant::now();
    let reason = transform_error(run(&mut *t, record("v")));
    assert!(reason.contains("timeout.ms=50"), "{reason}");
    assert!(started.elapsed() < Duration::from_secs(10));
    // The deadline is re-armed per record: a quick record after a slow one passes.
    let mut props = inline(r#"fn transform(r) { if r.value == "slow" { loop { } } r }"#);
    props.insert(MAX_OPERATIONS.into(), "1000000000000".into());
    props.insert(TIMEOUT_MS.into(), "50".into());
    let mut t = build("x", &props, Path::new(".")).unwrap();
    transform_error(run(&mut *t, record("slow")));
    assert_eq!(run(&mut *t, record("fast")).unwrap().len(), 1);
}

#[test]
fn a_huge_string_hits_max_string_bytes() {
    let mut t = build_inline(r#"fn transform(r) { let s = "x"; loop { s += s; } }"#);
    let reason = transform_error(run(&mut *t, record("v")));
    assert!(reason.contains("max.string.bytes=1048576"), "{reason}");

    let mut t = build_inline(r#"fn transform(r) { let a = []; loop { a.push(1); } }"#);
    let reason = transform_error(run(&mut *t, record("v")));
    assert!(reason.contains("max.array.size=10000"), "{reason}");

    let mut t =
        build_inline(r#"fn transform(r) { let big = "x"; big.pad(600000, "x"); regex_replace("aaaa", "a", big) }"#);
    let reason = transform_error(run(&mut *t, record("v")));
    assert!(reason.contains("max.string.bytes"), "{reason}");
}

#[test]
fn deep_recursion_hits_max_call_levels() {
    let mut t = build_inline("fn f(n) { f(n + 1) } fn transform(r) { f(0) }");
    let reason = transform_error(run(&mut *t, record("v")));
    assert!(reason.contains("max.call.levels=32"), "{reason}");
}

#[test]
fn deeply_nested_output_is_refused() {
    let mut t = build_inline("fn transform(r) { let m = #{}; for i in 0..200 { m = #{ a: m }; } #{ value: m } }");
    let reason = transform_error(run(&mut *t, record("v")));
    assert!(reason.contains("nested deeper"), "{reason}");
}

#[test]
fn eval_and_sleep_are_not_available() {
    let (key, reason) = config_error(build("x", &inline(r#"fn transform(r) { eval("r") }"#), Path::new(".")));
    assert_eq!(key, SOURCE);
    assert!(reason.contains("eval"), "{reason}");
    // Nor through a function pointer.
    let mut t = build_inline(r#"fn transform(r) { Fn("eval").call("1") }"#);
    transform_error(run(&mut *t, record("v")));
    let mut t = build_inline(r#"fn transform(r) { call(Fn("ev" + "al"), "1") }"#);
    transform_error(run(&mut *t, record("v")));

    let mut t = build_inline("fn transform(r) { sleep(10); r }");
    let started = Instant::now();
    let reason = transform_error(run(&mut *t, record("v")));
    assert!(reason.contains("sleep is not available"), "{reason}");
    let mut t = build_inline("fn transform(r) { sleep(10.0); r }");
    transform_error(run(&mut *t, record("v")));
    assert!(started.elapsed() < Duration::from_secs(5));
}

#[test]
fn scripts_load_from_the_plugins_dir_only() {
    let plugins = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::create_dir(plugins.path().join("transforms")).unwrap();
    let inside = plugins.path().join("transforms/ok.rhai");
    std::fs::write(&inside, "fn transform(r) { #{ value: \"ok\" } }").unwrap();
    let outside = elsewhere.path().join("evil.rhai");
    std::fs::write(&outside, "fn transform(r) { r }").unwrap();

    let props = |path: &Path| {
        let mut p = Props::new();
        p.insert(SCRIPT.into(), path.display().to_string());
        p
    };
    let mut t = build("x", &props(&inside), plugins.path()).unwrap();
    assert_eq!(run(&mut *t, record("v")).unwrap()[0].value, Some(Value::from_string("ok")));

    let (key, reason) = config_error(build("x", &props(&outside), plugins.path()));
    assert_eq!(key, SCRIPT);
    assert!(reason.contains("outside the plugins directory"), "{reason}");
    // `..` out of the plugins directory is caught after canonicalisation.
    let sneaky = plugins.path().join("transforms/../..").join(elsewhere.path().file_name().unwrap()).join("evil.rhai");
    let (key, _) = config_error(build("x", &props(&sneaky), plugins.path()));
    assert_eq!(key, SCRIPT);
    let (key, reason) = config_error(build("x", &props(&plugins.path().join("missing.rhai")), plugins.path()));
    assert_eq!(key, SCRIPT);
    assert!(reason.contains("not readable"), "{reason}");
}

#[test]
fn imports_resolve_inside_the_plugins_dir_only() {
    let plugins = tempfile::tempdir().unwrap();
    let elsewhere = tempfile::tempdir().unwrap();
    std::fs::write(plugins.path().join("helpers.rhai"), "fn shout(s) { s.to_upper() }").unwrap();
    std::fs::write(elsewhere.path().join("evil.rhai"), "fn shout(s) { s }").unwrap();

    let mut t = build(
        "x",
        &inline(r#"import "helpers" as h; fn transform(r) { #{ value: h::shout(r.value) } }"#),
        plugins.path(),
    )
    .unwrap();
    assert_eq!(run(&mut *t, record("hi")).unwrap()[0].value, Some(Value::from_string("HI")));

    let evil = elsewhere.path().join("evil");
    let source =
        format!(r#"import "{}" as evil; fn transform(r) {{ #{{ value: evil::shout(r.value) }} }}"#, evil.display());
    let mut t = build("x", &inline(&source), plugins.path()).unwrap();
    let reason = transform_error(run(&mut *t, record("hi")));
    assert!(reason.contains("plugins directory only"), "{reason}");
}

#[test]
fn bad_configs_name_their_key() {
    let (key, _) = config_error(build("x", &Props::new(), Path::new(".")));
    assert_eq!(key, SCRIPT);
    let (key, reason) = config_error(build("x", &inline("fn other(r) { r }"), Path::new(".")));
    assert_eq!(key, SOURCE);
    assert!(reason.contains("fn transform(record)"), "{reason}");
    let (key, _) = config_error(build("x", &inline("fn transform(r) { r"), Path::new(".")));
    assert_eq!(key, SOURCE);
    let mut props = inline("fn transform(r) { r }");
    props.insert(TIMEOUT_MS.into(), "0".into());
    let (key, _) = config_error(build("x", &props, Path::new(".")));
    assert_eq!(key, TIMEOUT_MS);
    let huge = format!("fn transform(r) {{ r }} // {}", "x".repeat(MAX_SCRIPT_BYTES as usize));
    let (key, _) = config_error(build("x", &inline(&huge), Path::new(".")));
    assert_eq!(key, SOURCE);
    let mut props = inline("fn transform(r) { r }");
    props.insert(SCRIPT.into(), "plugins/transforms/x.rhai".into());
    let (key, reason) = config_error(build("x", &props, Path::new(".")));
    assert_eq!(key, SCRIPT);
    assert!(reason.contains("not both"), "{reason}");
}

#[test]
fn a_script_setting_of_the_wrong_type_fails_the_record() {
    let mut props = inline(r#"fn transform(r) { #{ value: config("n", 1) } }"#);
    props.insert("config.n".into(), "many".into());
    let mut t = build("x", &props, Path::new(".")).unwrap();
    let reason = transform_error(run(&mut *t, record("v")));
    assert!(reason.contains("config.n=many is not an integer"), "{reason}");
}

#[test]
fn helpers_for_log_parsing() {
    let mut props = inline(
        r#"fn transform(r) {
            let m = regex_captures(r.value, "(?P<user>\\w+)@(?P<host>[\\w.]+)");
            let a = regex_captures("k=v", "(\\w)=(\\w)(x)?");
            #{ value: #{
                user: m.user, host: m.host, groups: a, none: regex_captures("zzz", "\\d"),
                json: parse_json(`{"a":[1,2.5,null,true]}`), text: to_json(#{ b: [1, "x"] }),
                found: regex_find_all("a1 b22 c333", "\\d+"), matches: regex_matches("abc", "^a"),
                redacted: regex_replace("id=12 id=345", "id=(\\d+)", "id=<$1>"),
                ts: parse_time_ms("10/Oct/2000:13:55:36 -0700", "%d/%b/%Y:%H:%M:%S %z"),
                rfc: parse_time_ms("2000-10-10T20:55:36Z"), bad: parse_time_ms("nope"),
                iso: format_time_ms(971211336000), now: now_ms() > 1600000000000,
                field: config("field"), missing: config("missing", "dflt"), level: config("level", 1) + 1,
            } }
        }"#,
    );
    props.insert("config.field".into(), "service".into());
    props.insert("config.level".into(), "40".into());
    let mut t = build("x", &props, Path::new(".")).unwrap();
    let out = run(&mut *t, record("mail bob@example.com now")).unwrap();
    assert_eq!(
        out[0].value,
        Some(Value::Json(json!({
            "user": "bob", "host": "example.com", "groups": ["k=v", "k", "v", null], "none": null,
            "json": {"a": [1, 2.5, null, true]}, "text": r#"{"b":[1,"x"]}"#,
            "found": ["1", "22", "333"], "matches": true, "redacted": "id=<12> id=<345>",
            "ts": 971211336000_i64, "rfc": 971211336000_i64, "bad": null,
            "iso": "2000-10-10T20:55:36.000Z", "now": true,
            "field": "service", "missing": "dflt", "level": 41,
        })))
    );
    let mut t = build_inline(r#"fn transform(r) { regex_captures("x", "(") }"#);
    let reason = transform_error(run(&mut *t, record("v")));
    assert!(reason.contains("bad regular expression"), "{reason}");
}

#[test]
fn top_level_constants_and_schemas() {
    let mut t = build_inline(
        r#"const PREFIX = "p-";
        fn transform(r) { #{ value: global::PREFIX + r.value } }"#,
    );
    let mut r = record("v");
    r.value_schema = Some(Arc::new(json!({"type": "string"})));
    let out = run(&mut *t, r).unwrap();
    assert_eq!(out[0].value, Some(Value::from_string("p-v")));
    assert_eq!(out[0].value_schema, None, "a changed value loses its schema");

    let mut t = build_inline("fn transform(r) { r }");
    let mut r = record("v");
    r.value_schema = Some(Arc::new(json!({"type": "string"})));
    let out = run(&mut *t, r).unwrap();
    assert!(out[0].value_schema.is_some(), "an unchanged value keeps its schema");
}

/// Prints records/s of a small JSON-editing script (no assertion on speed: machines differ).
#[test]
fn throughput_of_a_simple_script() {
    let mut t =
        build_inline(r#"fn transform(r) { if r.value.level == "debug" { return (); } r.value.seen = true; r }"#);
    let n = if cfg!(debug_assertions) { 20_000 } else { 200_000 };
    let line = Bytes::from_static(br#"{"level":"info","msg":"GET /index.html 200","ms":12}"#);
    let mut out = Vec::with_capacity(n);
    let started = Instant::now();
    for _ in 0..n {
        let r = ConnectRecord::new(Arc::from("in"), Some(Value::Text(line.clone())));
        t.apply(r, &mut out).unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    assert_eq!(out.len(), n);
    println!("rhai: {n} JSON records in {secs:.3}s = {:.0} records/s", n as f64 / secs);

    let mut t = build_inline("fn transform(r) { r.value = r.value.to_upper(); r }");
    let started = Instant::now();
    out.clear();
    for _ in 0..n {
        t.apply(record("GET /index.html HTTP/1.1 200 512"), &mut out).unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    println!("rhai: {n} text records in {secs:.3}s = {:.0} records/s", n as f64 / secs);
}
