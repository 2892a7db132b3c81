//! Functions scripts get besides Rhai's standard library, chosen for log parsing:
//! `parse_json(text)`, `to_json(value)`, `regex_captures(text, pattern)`,
//! `regex_matches(text, pattern)`, `regex_find_all(text, pattern)`,
//! `regex_replace(text, pattern, replacement)`, `now_ms()`, `parse_time_ms(text)`,
//! `parse_time_ms(text, format)`, `format_time_ms(ms)` and `config(name)` /
//! `config(name, default)` for the transform's `config.*` keys.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use chrono::{DateTime, SecondsFormat, TimeZone, Utc};
use regex::{Regex, RegexBuilder};
use rhai::{Array, Dynamic, Engine, EvalAltResult, ImmutableString, Map, INT};

use super::convert::{dynamic_to_json, JsonDynamic};
use super::Limits;
use crate::config::Props;

type FnResult<T> = Result<T, Box<EvalAltResult>>;

/// Compiled patterns kept per transform; a script that builds patterns from record data would
/// otherwise grow this without end, so past this many it starts over.
const REGEX_CACHE_ENTRIES: usize = 64;

/// The compiled-program size a pattern may reach (the regex crate's default is 10 MiB).
const REGEX_SIZE_LIMIT_BYTES: usize = 1 << 20;

/// Patterns compiled once and shared by every call of one transform's engine.
#[derive(Default)]
struct RegexCache {
    patterns: Mutex<HashMap<ImmutableString, Regex>>,
}

impl RegexCache {
    fn get(&self, pattern: &ImmutableString) -> FnResult<Regex> {
        let mut patterns = self.patterns.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if let Some(re) = patterns.get(pattern) {
            return Ok(re.clone());
        }
        let re = RegexBuilder::new(pattern)
            .size_limit(REGEX_SIZE_LIMIT_BYTES)
            .build()
            .map_err(|e| format!("bad regular expression {pattern:?}: {e}"))?;
        if patterns.len() >= REGEX_CACHE_ENTRIES {
            patterns.clear();
        }
        patterns.insert(pattern.clone(), re.clone());
        Ok(re)
    }
}

fn text(s: &str) -> Dynamic {
    Dynamic::from(ImmutableString::from(s))
}

pub(super) fn register(engine: &mut Engine, limits: &Limits, script_config: Props) {
    let max_string_bytes = limits.max_string_bytes;
    let max_array_size = limits.max_array_size;

    engine.register_fn("parse_json", |s: &str| -> FnResult<Dynamic> {
        serde_json::from_str::<JsonDynamic>(s)
            .map(|j| j.0)
            .map_err(|e| format!("parse_json: not valid JSON: {e}").into())
    });
    engine.register_fn("to_json", move |v: Dynamic| -> FnResult<ImmutableString> {
        let j = dynamic_to_json(v).map_err(|e| format!("to_json: cannot write {e}"))?;
        let s = j.to_string();
        if s.len() > max_string_bytes {
            return Err(format!("to_json: the JSON text is over max.string.bytes={max_string_bytes}").into());
        }
        Ok(s.into())
    });

    let cache = Arc::new(RegexCache::default());
    let c = Arc::clone(&cache);
    // Named groups → a map of the groups that matched; otherwise an array of the whole match
    // and each group (`()` where a group did not take part). No match → `()`.
    engine.register_fn("regex_captures", move |s: &str, pattern: ImmutableString| -> FnResult<Dynamic> {
        let re = c.get(&pattern)?;
        let Some(caps) = re.captures(s) else { return Ok(Dynamic::UNIT) };
        let named: Vec<&str> = re.capture_names().flatten().collect();
        if named.is_empty() {
            let groups: Array = caps.iter().map(|m| m.map_or(Dynamic::UNIT, |m| text(m.as_str()))).collect();
            Ok(Dynamic::from_array(groups))
        } else {
            let map: Map =
                named.into_iter().filter_map(|n| caps.name(n).map(|m| (n.into(), text(m.as_str())))).collect();
            Ok(Dynamic::from_map(map))
        }
    });
    let c = Arc::clone(&cache);
    engine.register_fn("regex_matches", move |s: &str, pattern: ImmutableString| -> FnResult<bool> {
        Ok(c.get(&pattern)?.is_match(s))
    });
    let c = Arc::clone(&cache);
    engine.register_fn("regex_find_all", move |s: &str, pattern: ImmutableString| -> FnResult<Array> {
        let re = c.get(&pattern)?;
        let mut found = Array::new();
        for m in re.find_iter(s) {
            if found.len() >= max_array_size {
                return Err(format!("regex_find_all: more than max.array.size={max_array_size} matches").into());
            }
            found.push(text(m.as_str()));
        }
        Ok(found)
    });
    let c = cache;
    // Replaces every match; `$1`/`$name` in `replacement` expand to groups. Built by hand to
    // stop at max.string.bytes instead of building an unbounded string first.
    engine.register_fn(
        "regex_replace",
        move |s: &str, pattern: ImmutableString, replacement: &str| -> FnResult<ImmutableString> {
            let re = c.get(&pattern)?;
            let mut out = String::with_capacity(s.len());
            let mut last = 0;
            for caps in re.captures_iter(s) {
                let Some(m) = caps.get(0) else { continue };
                out.push_str(&s[last..m.start()]);
                caps.expand(replacement, &mut out);
                last = m.end();
                if out.len() > max_string_bytes {
                    return Err(format!("regex_replace: the result is over max.string.bytes={max_string_bytes}").into());
                }
            }
            out.push_str(&s[last..]);
            if out.len() > max_string_bytes {
                return Err(format!("regex_replace: the result is over max.string.bytes={max_string_bytes}").into());
            }
            Ok(out.into())
        },
    );

    engine.register_fn("now_ms", || -> INT { Utc::now().timestamp_millis() });
    // RFC 3339 text → milliseconds since the epoch, or `()` when it does not parse.
    engine.register_fn("parse_time_ms", |s: &str| -> Dynamic {
        DateTime::parse_from_rfc3339(s.trim()).map_or(Dynamic::UNIT, |t| Dynamic::from_int(t.timestamp_millis()))
    });
    // Text in a chrono format that includes the zone (e.g. nginx's `%d/%b/%Y:%H:%M:%S %z`)
    // → milliseconds since the epoch, or `()` when it does not parse.
    engine.register_fn("parse_time_ms", |s: &str, format: &str| -> Dynamic {
        DateTime::parse_from_str(s.trim(), format).map_or(Dynamic::UNIT, |t| Dynamic::from_int(t.timestamp_millis()))
    });
    engine.register_fn("format_time_ms", |ms: INT| -> Dynamic {
        Utc.timestamp_millis_opt(ms)
            .single()
            .map_or(Dynamic::UNIT, |t| text(&t.to_rfc3339_opts(SecondsFormat::Millis, true)))
    });

    let script_config = Arc::new(script_config);
    let c = Arc::clone(&script_config);
    engine.register_fn("config", move |name: &str| -> Dynamic { c.get(name).map_or(Dynamic::UNIT, |v| text(v)) });
    let c = script_config;
    // The configured text read as the default's type (an integer default gives an integer).
    engine.register_fn("config", move |name: &str, default: Dynamic| -> FnResult<Dynamic> {
        let Some(v) = c.get(name) else { return Ok(default) };
        let wrong = |ty: &str| format!("config.{name}={v} is not {ty}");
        if default.is_int() {
            return v.trim().parse::<INT>().map(Dynamic::from_int).map_err(|_| wrong("an integer").into());
        }
        if default.is_float() {
            return v.trim().parse::<f64>().map(Dynamic::from_float).map_err(|_| wrong("a number").into());
        }
        if default.is_bool() {
            return v.trim().parse::<bool>().map(Dynamic::from_bool).map_err(|_| wrong("true or false").into());
        }
        Ok(text(v))
    });
}
