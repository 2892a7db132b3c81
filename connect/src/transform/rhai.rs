//! Scripted transforms in Rhai (`transforms.x.type=Rhai`).
//!
//! `transforms.x.script=plugins/transforms/NAME.rhai` (a file inside the worker's plugins
//! directory) or `transforms.x.source=<inline script>`. The script defines
//! `fn transform(record)`: `record` is a map with `key`, `value` (a map or array when the value
//! holds JSON, else a string, or a blob for non-UTF-8 bytes; `()` for null), `headers` (name →
//! string), `topic`, `partition` and `timestamp` (ms, or `()`). It returns a record map (fields it
//! leaves out keep the input's), an array of record maps (fan-out), or `()` (drop).
//!
//! The script is compiled once per transform instance. Each record runs in a sandbox: no `eval`,
//! no `sleep`, imports only from the plugins directory, no file or network functions (Rhai has
//! none without its `std`-only extras), and per-record limits on operations, call depth,
//! expression depth, string/array/map sizes and wall time. Anything the script does wrong is a
//! [`ConnectError::Transform`] for that record, which the chain routes like any record failure.

mod convert;
mod helpers;

use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rhai::module_resolvers::FileModuleResolver;
use rhai::packages::{Package, StandardPackage};
use rhai::{
    CallFnOptions, Dynamic, Engine, EvalAltResult, Map, Module, ModuleResolver, Position, Scope, Shared, AST, FLOAT,
    INT,
};

use crate::config::{ConfigDef, ConfigType, Importance, ParsedConfig, Props, Validator};
use crate::error::{ConnectError, Result};
use crate::record::ConnectRecord;
use crate::transform::Transformation;

const SCRIPT: &str = "script";
const SOURCE: &str = "source";
const MAX_OPERATIONS: &str = "max.operations";
const MAX_CALL_LEVELS: &str = "max.call.levels";
const MAX_EXPR_DEPTH: &str = "max.expr.depth";
const MAX_STRING_BYTES: &str = "max.string.bytes";
const MAX_ARRAY_SIZE: &str = "max.array.size";
const MAX_MAP_SIZE: &str = "max.map.size";
const TIMEOUT_MS: &str = "timeout.ms";
/// Keys under this prefix are the script's own settings, read with `config("name")`.
const SCRIPT_CONFIG_PREFIX: &str = "config.";

/// A script larger than this is refused (a typo pointing `script` at a log file should not load
/// the log into memory).
const MAX_SCRIPT_BYTES: u64 = 1 << 20;

/// How many operations pass between two wall-clock checks: reading the clock on every
/// operation would cost more than most scripts do.
const CLOCK_CHECK_EVERY_OPS: u64 = 256;

/// The name of the function every script defines.
const ENTRY_POINT: &str = "transform";

/// The keys a `Rhai` transform takes (besides `type`), with their defaults; the user docs.
pub fn config_def() -> ConfigDef {
    ConfigDef::new()
        .define(
            SCRIPT,
            ConfigType::String,
            Some(""),
            Importance::High,
            "Path of the script, e.g. plugins/transforms/nginx_access.rhai (relative paths resolve against the \
             worker's current directory); it must lie inside the worker's plugins directory. Give this or source.",
        )
        .define(
            SOURCE,
            ConfigType::String,
            Some(""),
            Importance::High,
            "The script itself, inline. Give this or script.",
        )
        .define(
            MAX_OPERATIONS,
            ConfigType::Long,
            Some("1000000"),
            Importance::Low,
            "Most Rhai operations one record may take; a script that needs more fails that record.",
        )
        .with_validator(Validator::Range { min: 1.0, max: 1e12 })
        .define(
            MAX_CALL_LEVELS,
            ConfigType::Int,
            Some("32"),
            Importance::Low,
            "Deepest nesting of function calls (recursion) a script may reach.",
        )
        .with_validator(Validator::Range { min: 1.0, max: 128.0 })
        .define(
            MAX_EXPR_DEPTH,
            ConfigType::Int,
            Some("64"),
            Importance::Low,
            "Deepest nesting of expressions the script's parser accepts (also inside functions).",
        )
        .with_validator(Validator::Range { min: 4.0, max: 256.0 })
        .define(
            MAX_STRING_BYTES,
            ConfigType::Int,
            Some("1048576"),
            Importance::Low,
            "Largest string a script may build, in bytes.",
        )
        .with_validator(Validator::Range { min: 1.0, max: 1_073_741_824.0 })
        .define(
            MAX_ARRAY_SIZE,
            ConfigType::Int,
            Some("10000"),
            Importance::Low,
            "Most elements in an array or bytes in a blob a script may build (a fan-out returns at most this many \
             records).",
        )
        .with_validator(Validator::Range { min: 1.0, max: 100_000_000.0 })
        .define(
            MAX_MAP_SIZE,
            ConfigType::Int,
            Some("10000"),
            Importance::Low,
            "Most properties in a map a script may build.",
        )
        .with_validator(Validator::Range { min: 1.0, max: 100_000_000.0 })
        .define(
            TIMEOUT_MS,
            ConfigType::Long,
            Some("500"),
            Importance::Low,
            "Wall-clock time one record may take in the script, in milliseconds.",
        )
        .with_validator(Validator::Range { min: 1.0, max: 3_600_000.0 })
}

/// The sandbox's limits, as configured.
#[derive(Debug, Clone, Copy)]
struct Limits {
    max_operations: u64,
    max_call_levels: usize,
    max_expr_depth: usize,
    max_string_bytes: usize,
    max_array_size: usize,
    max_map_size: usize,
    timeout: Duration,
}

impl Limits {
    fn from_config(parsed: &ParsedConfig) -> Result<Limits> {
        let get = |key: &str| -> Result<u64> {
            let v = parsed.get_i64(key)?.ok_or_else(|| ConnectError::config(key, "missing"))?;
            u64::try_from(v).map_err(|_| ConnectError::config(key, format!("{v} is negative")))
        };
        let size = |key: &str| -> Result<usize> {
            let v = get(key)?;
            usize::try_from(v).map_err(|_| ConnectError::config(key, format!("{v} is too large")))
        };
        Ok(Limits {
            max_operations: get(MAX_OPERATIONS)?,
            max_call_levels: size(MAX_CALL_LEVELS)?,
            max_expr_depth: size(MAX_EXPR_DEPTH)?,
            max_string_bytes: size(MAX_STRING_BYTES)?,
            max_array_size: size(MAX_ARRAY_SIZE)?,
            max_map_size: size(MAX_MAP_SIZE)?,
            timeout: Duration::from_millis(get(TIMEOUT_MS)?),
        })
    }
}

/// Builds a Rhai transform from its own keys (`script`, `source`, limits; the
/// `transforms.<alias>.` prefix already stripped). Scripts load from `plugins_dir` only.
pub fn build(alias: &str, config: &Props, plugins_dir: &Path) -> Result<Box<dyn Transformation>> {
    let parsed = config_def().parse(config)?;
    let limits = Limits::from_config(&parsed)?;
    let script = parsed.get_str(SCRIPT).unwrap_or("").trim();
    let source = parsed.get_str(SOURCE).unwrap_or("");
    let (text, key, origin) = match (script.is_empty(), source.trim().is_empty()) {
        (false, true) => {
            let path = script_path(script, plugins_dir)?;
            (read_script(&path)?, SCRIPT, path.display().to_string())
        }
        (true, false) if source.len() as u64 > MAX_SCRIPT_BYTES => {
            return Err(ConnectError::config(SOURCE, format!("longer than {MAX_SCRIPT_BYTES} bytes")))
        }
        (true, false) => (source.to_owned(), SOURCE, format!("transforms.{alias}.source")),
        (false, false) => return Err(ConnectError::config(SCRIPT, "give either script or source, not both")),
        (true, true) => return Err(ConnectError::config(SCRIPT, "missing: give script (a file) or source (inline)")),
    };
    let script_config: Props = config
        .iter()
        .filter_map(|(k, v)| k.strip_prefix(SCRIPT_CONFIG_PREFIX).map(|name| (name.to_owned(), v.clone())))
        .collect();

    let clock = Arc::new(Deadline::new());
    let engine = sandboxed_engine(&limits, plugins_dir, Arc::clone(&clock), script_config);
    let mut ast = engine.compile(&text).map_err(|e| ConnectError::config(key, format!("{origin}: {e}")))?;
    ast.set_source(origin.as_str());
    if !ast.iter_functions().any(|f| f.name == ENTRY_POINT && f.params.len() == 1) {
        return Err(ConnectError::config(key, format!("{origin} defines no fn {ENTRY_POINT}(record)")));
    }
    Ok(Box::new(RhaiTransform { alias: alias.to_owned(), engine, ast, scope: Scope::new(), clock, limits }))
}

/// Resolves `script` (relative to the current directory) and checks that it lies inside
/// `plugins_dir` once both are canonical, so `..` and symlinks cannot lead out of it.
fn script_path(script: &str, plugins_dir: &Path) -> Result<PathBuf> {
    let root = plugins_dir.canonicalize().map_err(|e| {
        ConnectError::config(SCRIPT, format!("the plugins directory {} is not readable: {e}", plugins_dir.display()))
    })?;
    let path = Path::new(script)
        .canonicalize()
        .map_err(|e| ConnectError::config(SCRIPT, format!("{script} is not readable: {e}")))?;
    if !path.starts_with(&root) {
        return Err(ConnectError::config(
            SCRIPT,
            format!("{script} is outside the plugins directory {}; scripts load from there only", root.display()),
        ));
    }
    Ok(path)
}

fn read_script(path: &Path) -> Result<String> {
    let mut file = File::open(path)
        .map_err(|e| ConnectError::config(SCRIPT, format!("{} is not readable: {e}", path.display())))?;
    let mut text = String::new();
    file.by_ref()
        .take(MAX_SCRIPT_BYTES + 1)
        .read_to_string(&mut text)
        .map_err(|e| ConnectError::config(SCRIPT, format!("{} is not readable UTF-8 text: {e}", path.display())))?;
    if text.len() as u64 > MAX_SCRIPT_BYTES {
        return Err(ConnectError::config(
            SCRIPT,
            format!("{} is larger than {MAX_SCRIPT_BYTES} bytes; is it a script?", path.display()),
        ));
    }
    Ok(text)
}

/// The per-record wall-clock deadline, shared with the engine's progress callback (which runs
/// inside `call_fn` and so cannot borrow the transform).
struct Deadline {
    base: Instant,
    /// Nanoseconds after `base`.
    deadline_nanos: AtomicU64,
}

impl Deadline {
    fn new() -> Deadline {
        Deadline { base: Instant::now(), deadline_nanos: AtomicU64::new(u64::MAX) }
    }

    fn elapsed_nanos(&self) -> u64 {
        u64::try_from(self.base.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }

    fn arm(&self, timeout: Duration) {
        let timeout = u64::try_from(timeout.as_nanos()).unwrap_or(u64::MAX);
        self.deadline_nanos.store(self.elapsed_nanos().saturating_add(timeout), Ordering::Relaxed);
    }

    fn passed(&self) -> bool {
        self.elapsed_nanos() > self.deadline_nanos.load(Ordering::Relaxed)
    }
}

/// An engine with the standard library minus what a sandbox must not have, the configured
/// limits, the log-parsing helpers and an import resolver confined to `plugins_dir`.
fn sandboxed_engine(limits: &Limits, plugins_dir: &Path, clock: Arc<Deadline>, script_config: Props) -> Engine {
    // `new_raw` starts with no functions, no module resolver and print/debug going nowhere.
    let mut engine = Engine::new_raw();
    engine.register_global_module(StandardPackage::new().as_shared_module());
    // `eval` would run text built from record data as code.
    engine.disable_symbol("eval");
    // The standard library's `sleep` blocks the task thread; functions registered on the engine
    // take precedence over the package's.
    engine.register_fn("sleep", |_: INT| -> std::result::Result<(), Box<EvalAltResult>> {
        Err("sleep is not available in transforms".into())
    });
    engine.register_fn("sleep", |_: FLOAT| -> std::result::Result<(), Box<EvalAltResult>> {
        Err("sleep is not available in transforms".into())
    });
    engine.on_print(|s| tracing::debug!(target: "spate_connect::rhai", "{s}"));
    engine.on_debug(|s, source, pos| tracing::debug!(target: "spate_connect::rhai", ?source, %pos, "{s}"));

    engine.set_max_operations(limits.max_operations);
    engine.set_max_call_levels(limits.max_call_levels);
    engine.set_max_expr_depths(limits.max_expr_depth, limits.max_expr_depth);
    engine.set_max_string_size(limits.max_string_bytes);
    engine.set_max_array_size(limits.max_array_size);
    engine.set_max_map_size(limits.max_map_size);
    engine.set_max_modules(64);
    engine.on_progress(
        move |ops| {
            if ops % CLOCK_CHECK_EVERY_OPS == 0 && clock.passed() {
                Some(Dynamic::UNIT)
            } else {
                None
            }
        },
    );

    engine.set_module_resolver(PluginsResolver::new(plugins_dir));
    helpers::register(&mut engine, limits, script_config);
    engine
}

/// Imports resolve against the plugins directory and must stay inside it.
struct PluginsResolver {
    root: Option<PathBuf>,
    files: FileModuleResolver,
}

impl PluginsResolver {
    fn new(plugins_dir: &Path) -> PluginsResolver {
        PluginsResolver { root: plugins_dir.canonicalize().ok(), files: FileModuleResolver::new_with_path(plugins_dir) }
    }
}

impl ModuleResolver for PluginsResolver {
    fn resolve(
        &self,
        engine: &Engine,
        source: Option<&str>,
        path: &str,
        pos: Position,
    ) -> std::result::Result<Shared<Module>, Box<EvalAltResult>> {
        let file = self.files.get_file_path(path, None);
        let inside = match (&self.root, file.canonicalize()) {
            (Some(root), Ok(file)) => file.starts_with(root),
            _ => false,
        };
        if !inside {
            // Not `ErrorModuleNotFound`: Rhai replaces that one's message with the bare path.
            let reason = format!("import {path:?} refused: imports load from the plugins directory only");
            return Err(EvalAltResult::ErrorRuntime(reason.into(), pos).into());
        }
        self.files.resolve(engine, source, path, pos)
    }
}

/// One configured `Rhai` step.
struct RhaiTransform {
    alias: String,
    engine: Engine,
    ast: AST,
    /// Reused for every record (rewound after each call), so its storage is allocated once.
    scope: Scope<'static>,
    clock: Arc<Deadline>,
    limits: Limits,
}

impl RhaiTransform {
    fn fail(&self, reason: impl Into<String>) -> ConnectError {
        ConnectError::transform(self.alias.as_str(), reason)
    }

    /// Says which limit a script hit, by its config key, or passes Rhai's message on.
    fn describe(&self, err: &EvalAltResult) -> String {
        let mut root = err;
        while let EvalAltResult::ErrorInFunctionCall(_, _, inner, _) | EvalAltResult::ErrorInModule(_, inner, _) = root
        {
            root = inner;
        }
        match root {
            EvalAltResult::ErrorTerminated(_, pos) => {
                format!("script ran longer than {TIMEOUT_MS}={}{}", self.limits.timeout.as_millis(), at(*pos))
            }
            EvalAltResult::ErrorTooManyOperations(pos) => {
                format!("script took more than {MAX_OPERATIONS}={} operations{}", self.limits.max_operations, at(*pos))
            }
            EvalAltResult::ErrorStackOverflow(pos) => {
                format!("script nested calls deeper than {MAX_CALL_LEVELS}={}{}", self.limits.max_call_levels, at(*pos))
            }
            EvalAltResult::ErrorDataTooLarge(what, pos) => format!(
                "script built a {what} over its limit ({MAX_STRING_BYTES}={}, {MAX_ARRAY_SIZE}={}, {MAX_MAP_SIZE}={}){}",
                self.limits.max_string_bytes,
                self.limits.max_array_size,
                self.limits.max_map_size,
                at(*pos)
            ),
            _ => err.to_string(),
        }
    }
}

/// " at line L, position P", or nothing when Rhai does not know where.
fn at(pos: Position) -> String {
    if pos.is_none() {
        String::new()
    } else {
        format!(" at {pos}")
    }
}

impl Transformation for RhaiTransform {
    fn apply(&mut self, record: ConnectRecord, out: &mut Vec<ConnectRecord>) -> Result<()> {
        let input = Dynamic::from_map(convert::record_to_map(&record));
        self.clock.arm(self.limits.timeout);
        // `eval_ast` runs the script's top-level statements (constants, imports) before each
        // call, so `global::NAME` and imported modules behave as Rhai documents them.
        let options = CallFnOptions::new().eval_ast(true).rewind_scope(true);
        let result =
            self.engine.call_fn_with_options::<Dynamic>(options, &mut self.scope, &self.ast, ENTRY_POINT, (input,));
        self.scope.clear();
        let result = result.map_err(|e| self.fail(self.describe(&e)))?;
        let result = result.flatten();

        if result.is_unit() {
            return Ok(());
        }
        if result.is_map() {
            let map = result.try_cast::<Map>().unwrap_or_default();
            let mut record = record;
            convert::apply_map(map, &mut record).map_err(|e| self.fail(format!("transform returned {e}")))?;
            out.push(record);
            return Ok(());
        }
        if result.is_array() {
            let items = result.into_array().unwrap_or_default();
            let before = out.len();
            let mut last = Some(record);
            let n = items.len();
            out.reserve(n);
            for (i, item) in items.into_iter().enumerate() {
                let item = item.flatten();
                let converted = if item.is_map() {
                    let base = if i + 1 == n { last.take() } else { last.clone() };
                    match base {
                        Some(mut base) => convert::apply_map(item.try_cast::<Map>().unwrap_or_default(), &mut base)
                            .map(|()| base)
                            .map_err(|e| format!("element {i} of the returned array is {e}")),
                        None => Err("the input record was already used".to_owned()),
                    }
                } else {
                    Err(format!("element {i} of the returned array is a {}, not a record map", item.type_name()))
                };
                match converted {
                    Ok(r) => out.push(r),
                    Err(e) => {
                        // A fan-out is all or nothing: the record fails as a whole.
                        out.truncate(before);
                        return Err(self.fail(e));
                    }
                }
            }
            return Ok(());
        }
        Err(self.fail(format!(
            "transform returned a {} (expected a record map, an array of record maps, or () to drop the record)",
            result.type_name()
        )))
    }
}

#[cfg(test)]
mod tests;
