//! `spate connectors`: manage the connectors of a Connect worker group through Kafka Connect's
//! REST API (any worker; followers forward to the leader), like `curl` against
//! `/connectors` but with short tables. A connector file is JSON (`{"name", "config"}` or a
//! flat config with `name`) or TOML (a flat table, or `name` plus a `[config]` table); lists in
//! TOML or JSON become Kafka's comma-separated values.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::{json, Map, Value};
use spate_connect::rest::client::Method;
use spate_connect::rest::RestClient;

use crate::common::print_out;

/// A connector file above this is not a connector config (the worker refuses bodies over 1 MiB).
const CONNECTOR_FILE_BYTES_MAX: u64 = 1024 * 1024;

#[derive(clap::Args, Debug)]
#[command(after_help = "Examples:\n  spate connectors list\n  spate connectors create file-source.toml\n  \
spate connectors status file-source\n  spate connectors restart file-source --include-tasks --only-failed\n  \
spate connectors offsets file-source --alter offsets.json")]
pub struct ConnectorsArgs {
    /// A Connect worker's REST URL (any worker of the group).
    #[arg(long, global = true, default_value = "http://127.0.0.1:8083", env = "SPATE_CONNECT_URL")]
    pub url: String,
    #[command(subcommand)]
    pub action: Action,
}

#[derive(clap::Subcommand, Debug)]
pub enum Action {
    /// Connectors with their type, state and running tasks.
    List,
    /// Create a connector from a JSON or TOML file.
    Create { file: PathBuf },
    /// A connector's state and its tasks' states (with the failure trace of failed ones).
    Status { name: String },
    /// A connector's config, as JSON.
    Config { name: String },
    /// Pause a connector (its tasks stop processing, offsets are kept).
    Pause { name: String },
    /// Resume a paused or stopped connector.
    Resume { name: String },
    /// Stop a connector (its tasks are shut down; needed before altering offsets).
    Stop { name: String },
    /// Restart a connector, and with --include-tasks its tasks.
    Restart {
        name: String,
        /// Restart the connector's tasks too.
        #[arg(long)]
        include_tasks: bool,
        /// Only the failed instances.
        #[arg(long)]
        only_failed: bool,
    },
    /// Delete a connector (its offsets stay in the offsets topic).
    Delete { name: String },
    /// A connector's offsets as JSON; --reset deletes them, --alter FILE sets them from a
    /// `{"offsets": [{"partition": …, "offset": …}]}` file (the connector must be stopped).
    Offsets {
        name: String,
        #[arg(long)]
        reset: bool,
        #[arg(long, value_name = "FILE", conflicts_with = "reset")]
        alter: Option<PathBuf>,
    },
    /// Installed connector plugins.
    Plugins,
    /// Validate a connector file against its `connector.class`; fails when a value is refused.
    Validate { file: PathBuf },
}

pub async fn run(args: ConnectorsArgs) -> Result<()> {
    let api = Api { client: RestClient::default(), url: args.url.trim_end_matches('/').to_owned() };
    match args.action {
        Action::List => {
            let all = api.call(Method::GET, "/connectors?expand=status&expand=info", None).await?;
            print_out(&list_table(&all));
        }
        Action::Create { file } => {
            let (name, config) = read_connector_file(&file)?;
            let info = api.call(Method::POST, "/connectors", Some(json!({"name": name, "config": config}))).await?;
            print_out(&format!("{}\n", pretty(&info)));
        }
        Action::Status { name } => {
            let status = api.call(Method::GET, &format!("/connectors/{}/status", segment(&name)), None).await?;
            print_out(&status_table(&status));
        }
        Action::Config { name } => {
            let config = api.call(Method::GET, &format!("/connectors/{}/config", segment(&name)), None).await?;
            print_out(&format!("{}\n", pretty(&config)));
        }
        Action::Pause { name } => api.state_change(&name, "pause", "paused").await?,
        Action::Resume { name } => api.state_change(&name, "resume", "resumed").await?,
        Action::Stop { name } => api.state_change(&name, "stop", "stopped").await?,
        Action::Restart { name, include_tasks, only_failed } => {
            let path =
                format!("/connectors/{}/restart?includeTasks={include_tasks}&onlyFailed={only_failed}", segment(&name));
            let status = api.call(Method::POST, &path, None).await?;
            if status.is_null() {
                print_out(&format!("restarted {name}\n"));
            } else {
                print_out(&status_table(&status));
            }
        }
        Action::Delete { name } => {
            api.call(Method::DELETE, &format!("/connectors/{}", segment(&name)), None).await?;
            print_out(&format!("deleted {name}\n"));
        }
        Action::Offsets { name, reset, alter } => {
            let path = format!("/connectors/{}/offsets", segment(&name));
            let answer = if reset {
                api.call(Method::DELETE, &path, None).await?
            } else if let Some(file) = alter {
                let offsets: Value = serde_json::from_str(&read_bounded(&file)?)
                    .with_context(|| format!("{} is not JSON", file.display()))?;
                api.call(Method::PATCH, &path, Some(offsets)).await?
            } else {
                api.call(Method::GET, &path, None).await?
            };
            match answer.get("message").and_then(Value::as_str) {
                Some(message) => print_out(&format!("{message}\n")),
                None => print_out(&format!("{}\n", pretty(&answer))),
            }
        }
        Action::Plugins => {
            let plugins = api.call(Method::GET, "/connector-plugins?connectorsOnly=false", None).await?;
            print_out(&plugins_table(&plugins));
        }
        Action::Validate { file } => {
            let (_, config) = read_connector_file(&file)?;
            let Some(class) = config.get("connector.class").and_then(Value::as_str).map(str::to_owned) else {
                bail!("{} has no connector.class to validate against", file.display());
            };
            let path = format!("/connector-plugins/{}/config/validate", segment(&class));
            let result = api.call(Method::PUT, &path, Some(Value::Object(config))).await?;
            let errors = validation_errors(&result);
            if errors.is_empty() {
                print_out(&format!("{}: valid for {class}\n", file.display()));
            } else {
                print_out(&errors.join(""));
                bail!("{} has {} invalid value(s) for {class}", file.display(), errors.len());
            }
        }
    }
    Ok(())
}

/// How long a request is repeated while the worker answers that it is rebalancing.
const REBALANCE_WAIT: std::time::Duration = std::time::Duration::from_secs(15);

struct Api {
    client: RestClient,
    url: String,
}

impl Api {
    /// The answer's JSON for a 2xx status; the worker's `message` as the error otherwise. A 409
    /// that says the worker is between configurations (a rebalance, a config snapshot behind: Kafka
    /// Connect's "momentarily" answers) or that a stopping connector's tasks are not down yet is asked again for up to [`REBALANCE_WAIT`], as Kafka
    /// Connect's clients do; a 409 that says the connector exists is not.
    async fn call(&self, method: Method, path: &str, body: Option<Value>) -> Result<Value> {
        let deadline = std::time::Instant::now() + REBALANCE_WAIT;
        loop {
            let (status, answer) =
                self.client.request(method.clone(), &format!("{}{path}", self.url), body.clone()).await?;
            if (200..300).contains(&status) {
                return Ok(answer);
            }
            let message =
                answer.get("message").and_then(Value::as_str).map_or_else(|| answer.to_string(), str::to_owned);
            // "try again shortly": a connector still stopping its tasks (offsets of a stopped
            // connector can be altered only once every task is down).
            let transient = status == 409
                && (message.contains("momentarily")
                    || message.contains("rebalance")
                    || message.contains("try again shortly"));
            if transient && std::time::Instant::now() < deadline {
                tokio::time::sleep(std::time::Duration::from_millis(250)).await;
                continue;
            }
            bail!("{message} (HTTP {status} from {})", self.url)
        }
    }

    async fn state_change(&self, name: &str, action: &str, done: &str) -> Result<()> {
        self.call(Method::PUT, &format!("/connectors/{}/{action}", segment(name)), None).await?;
        print_out(&format!("{done} {name}\n"));
        Ok(())
    }
}

/// `name` as one URL path segment: everything but RFC 3986's unreserved characters escaped.
pub(crate) fn segment(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

fn pretty(value: &Value) -> String {
    serde_json::to_string_pretty(value).unwrap_or_else(|_| value.to_string())
}

fn read_bounded(path: &Path) -> Result<String> {
    let len = std::fs::metadata(path).with_context(|| format!("cannot read {}", path.display()))?.len();
    if len > CONNECTOR_FILE_BYTES_MAX {
        bail!("{} is {len} bytes; a connector file is at most {CONNECTOR_FILE_BYTES_MAX}", path.display());
    }
    std::fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))
}

/// A connector file's name and config. TOML when the extension says so, JSON otherwise.
pub(crate) fn read_connector_file(path: &Path) -> Result<(String, Map<String, Value>)> {
    let text = read_bounded(path)?;
    let is_toml = path.extension().is_some_and(|e| e.eq_ignore_ascii_case("toml"));
    let document: Value = if is_toml {
        let table: toml::Table =
            toml::from_str(&text).with_context(|| format!("{} is not valid TOML", path.display()))?;
        serde_json::to_value(table)?
    } else {
        serde_json::from_str(&text).with_context(|| format!("{} is not valid JSON", path.display()))?
    };
    parse_connector(document).with_context(|| format!("in {}", path.display()))
}

/// `{"name", "config": {…}}` or a flat config with `name`; values become strings.
fn parse_connector(document: Value) -> Result<(String, Map<String, Value>)> {
    let Value::Object(mut top) = document else { bail!("a connector file is an object/table") };
    let (outer_name, raw) = match top.remove("config") {
        Some(Value::Object(config)) => (top.remove("name"), config),
        Some(_) => bail!("config must be an object/table of settings"),
        None => (None, top),
    };
    let mut config = Map::new();
    for (key, value) in raw {
        config.insert(key.clone(), Value::String(config_value(&key, &value)?));
    }
    let name = match (outer_name, config.get("name")) {
        (Some(Value::String(outer)), Some(Value::String(inner))) if outer != *inner => {
            bail!("name {outer} and config.name {inner} disagree")
        }
        (Some(Value::String(outer)), _) => outer,
        (Some(_), _) => bail!("name must be a string"),
        (None, Some(Value::String(inner))) => inner.clone(),
        (None, _) => bail!("no connector name (give \"name\")"),
    };
    config.insert("name".to_owned(), Value::String(name.clone()));
    Ok((name, config))
}

/// A config value as Kafka's string form: lists comma-separated.
fn config_value(key: &str, value: &Value) -> Result<String> {
    Ok(match value {
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        Value::Bool(b) => b.to_string(),
        Value::Array(items) => items.iter().map(|item| config_value(key, item)).collect::<Result<Vec<_>>>()?.join(","),
        Value::Null | Value::Object(_) => bail!("{key}: a value must be a string, number, boolean or list"),
    })
}

fn str_at<'a>(value: &'a Value, pointer: &str) -> &'a str {
    value.pointer(pointer).and_then(Value::as_str).unwrap_or("-")
}

/// Pads each column to its widest cell.
fn table(rows: &[Vec<String>]) -> String {
    let columns = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..columns)
        .map(|c| rows.iter().filter_map(|r| r.get(c)).map(|s| s.chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let mut line = String::new();
        for (c, cell) in row.iter().enumerate() {
            if c + 1 == row.len() {
                line.push_str(cell);
            } else {
                let _ = write!(line, "{cell:<width$}  ", width = widths[c]);
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn list_table(all: &Value) -> String {
    let mut rows = vec![vec!["NAME".into(), "TYPE".into(), "STATE".into(), "TASKS".into(), "CLASS".into()]];
    for (name, entry) in all.as_object().into_iter().flatten() {
        let tasks = entry.pointer("/status/tasks").and_then(Value::as_array).map_or(&[][..], Vec::as_slice);
        let running = tasks.iter().filter(|t| t["state"] == "RUNNING").count();
        rows.push(vec![
            name.clone(),
            str_at(entry, "/status/type").to_owned(),
            str_at(entry, "/status/connector/state").to_owned(),
            format!("{running}/{} running", tasks.len()),
            str_at(entry, "/info/config/connector.class").to_owned(),
        ]);
    }
    table(&rows)
}

fn status_table(status: &Value) -> String {
    let mut rows = vec![vec!["INSTANCE".into(), "STATE".into(), "WORKER".into()]];
    rows.push(vec![
        format!("{} (connector)", str_at(status, "/name")),
        str_at(status, "/connector/state").to_owned(),
        str_at(status, "/connector/worker_id").to_owned(),
    ]);
    let tasks = status["tasks"].as_array().map_or(&[][..], Vec::as_slice);
    for task in tasks {
        rows.push(vec![
            format!("task {}", task["id"]),
            str_at(task, "/state").to_owned(),
            str_at(task, "/worker_id").to_owned(),
        ]);
    }
    let mut out = table(&rows);
    let traces = std::iter::once(("connector".to_owned(), &status["connector"]))
        .chain(tasks.iter().map(|t| (format!("task {}", t["id"]), t)));
    for (who, state) in traces {
        if let Some(trace) = state.get("trace").and_then(Value::as_str) {
            let _ = write!(out, "\n{who} trace:\n{trace}\n");
        }
    }
    out
}

fn plugins_table(plugins: &Value) -> String {
    let mut rows = vec![vec!["CLASS".into(), "TYPE".into(), "VERSION".into()]];
    for plugin in plugins.as_array().into_iter().flatten() {
        rows.push(vec![
            str_at(plugin, "/class").to_owned(),
            str_at(plugin, "/type").to_owned(),
            str_at(plugin, "/version").to_owned(),
        ]);
    }
    table(&rows)
}

/// `key: error` lines of a `ConfigInfos` answer.
fn validation_errors(result: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for config in result["configs"].as_array().into_iter().flatten() {
        for error in config.pointer("/value/errors").and_then(Value::as_array).into_iter().flatten() {
            out.push(format!("{}: {}\n", str_at(config, "/value/name"), error.as_str().unwrap_or("?")));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connector_files_in_every_accepted_shape() {
        let nested = json!({"name": "a", "config": {"connector.class": "FileStreamSource", "tasks.max": 1}});
        let (name, config) = parse_connector(nested).unwrap();
        assert_eq!(name, "a");
        assert_eq!(config["tasks.max"], "1");
        assert_eq!(config["name"], "a");

        let flat = json!({"name": "b", "connector.class": "X", "topics": ["t1", "t2"], "errors.log.enable": true});
        let (name, config) = parse_connector(flat).unwrap();
        assert_eq!(name, "b");
        assert_eq!(config["topics"], "t1,t2");
        assert_eq!(config["errors.log.enable"], "true");

        let toml_flat: toml::Table =
            toml::from_str("name = \"c\"\n\"connector.class\" = \"X\"\n\"tasks.max\" = 2\n").unwrap();
        let (name, config) = parse_connector(serde_json::to_value(toml_flat).unwrap()).unwrap();
        assert_eq!((name.as_str(), config["tasks.max"].as_str()), ("c", Some("2")));

        let toml_nested: toml::Table =
            toml::from_str("name = \"d\"\n[config]\n\"connector.class\" = \"X\"\nfile = \"/var/log/*.log\"\n").unwrap();
        let (name, config) = parse_connector(serde_json::to_value(toml_nested).unwrap()).unwrap();
        assert_eq!((name.as_str(), config["file"].as_str()), ("d", Some("/var/log/*.log")));

        assert!(parse_connector(json!({"connector.class": "X"})).is_err());
        assert!(parse_connector(json!({"name": "a", "config": {"name": "b"}})).is_err());
        assert!(parse_connector(json!({"name": "a", "config": {"x": {"y": 1}}})).is_err());
    }

    #[test]
    fn tables_and_segments() {
        assert_eq!(segment("my conn/1"), "my%20conn%2F1");
        let status = json!({"name": "a", "connector": {"state": "RUNNING", "worker_id": "w1"},
            "tasks": [{"id": 0, "state": "FAILED", "worker_id": "w2", "trace": "boom"}]});
        let text = status_table(&status);
        assert!(text.contains("a (connector)  RUNNING  w1"), "{text}");
        assert!(text.contains("task 0         FAILED   w2"), "{text}");
        assert!(text.contains("task 0 trace:\nboom"), "{text}");
        let list =
            list_table(&json!({"a": {"status": status, "info": {"config": {"connector.class": "FileStreamSource"}}}}));
        assert!(list.contains("0/1 running"), "{list}");
        assert!(list.contains("FileStreamSource"), "{list}");
    }
}
