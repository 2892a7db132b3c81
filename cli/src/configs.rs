//! `spate configs`, like Kafka's `kafka-configs.sh`: describe topic and broker configs, and
//! alter topic configs (`--add-config k=v,k2=[a,b] --delete-config k3`) through
//! IncrementalAlterConfigs. Broker configs are static in Spate (flags, env, file): altering one
//! is refused by the broker with a message saying so.

use std::fmt::Write as _;

use anyhow::{bail, Context, Result};
use spate_client::admin::{AlterConfigOp, ConfigEntry, ConfigResource, ConfigSource};

use crate::common::{print_out, BootstrapArgs};

#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntityType {
    #[value(name = "topics", alias = "topic")]
    Topics,
    #[value(name = "brokers", alias = "broker")]
    Brokers,
}

#[derive(clap::Args, Debug)]
#[command(group(clap::ArgGroup::new("action").required(true).multiple(false).args(["describe", "alter"])))]
#[command(after_help = "Examples:\n  \
spate configs --describe --entity-type topics --entity-name orders\n  \
spate configs --describe --topic orders --all\n  \
spate configs --describe --entity-type brokers --entity-name 1 --all\n  \
spate configs --alter --topic orders --add-config retention.ms=86400000,cleanup.policy=[compact,delete]\n  \
spate configs --alter --topic orders --delete-config retention.ms")]
pub struct ConfigsArgs {
    #[command(flatten)]
    pub bootstrap: BootstrapArgs,
    /// Show configs: the overrides (dynamic configs), or every config with --all.
    #[arg(long)]
    pub describe: bool,
    /// Change topic configs with --add-config / --delete-config.
    #[arg(long)]
    pub alter: bool,
    /// `topics` or `brokers`.
    #[arg(long = "entity-type", value_enum)]
    pub entity_type: Option<EntityType>,
    /// Topic name or broker id; without it --describe covers every topic or broker.
    #[arg(long = "entity-name")]
    pub entity_name: Option<String>,
    /// Short for --entity-type topics --entity-name T.
    #[arg(long, conflicts_with_all = ["entity_type", "entity_name", "broker"])]
    pub topic: Option<String>,
    /// Short for --entity-type brokers --entity-name N.
    #[arg(long, conflicts_with_all = ["entity_type", "entity_name"])]
    pub broker: Option<i32>,
    /// With --describe: every config, defaults included, not just overrides.
    #[arg(long, conflicts_with = "alter")]
    pub all: bool,
    /// With --alter: `k=v,k2=v2`; a value holding commas goes in brackets: `k=[a,b]`.
    #[arg(long = "add-config", conflicts_with = "describe")]
    pub add_config: Option<String>,
    /// With --alter: comma-separated keys to return to their defaults.
    #[arg(long = "delete-config", conflicts_with = "describe")]
    pub delete_config: Option<String>,
}

pub async fn run(args: ConfigsArgs) -> Result<()> {
    let (entity_type, name) = entity(&args)?;
    let admin = args.bootstrap.admin("spate-configs").await?;
    if args.alter {
        let Some(name) = name else { bail!("--alter needs --entity-name (or --topic / --broker)") };
        let resource = resource(entity_type, &name)?;
        let ops = alter_ops(args.add_config.as_deref(), args.delete_config.as_deref())?;
        admin
            .incremental_alter_configs(&resource, &ops)
            .await
            .with_context(|| format!("altering {}", label(&resource)))?;
        print_out(&format!("Completed updating config for {}.\n", label(&resource)));
        return Ok(());
    }
    let resources: Vec<ConfigResource> = match (entity_type, name) {
        (kind, Some(name)) => vec![resource(kind, &name)?],
        (EntityType::Topics, None) => {
            admin.list_topics(true).await.context("listing topics")?.into_iter().map(ConfigResource::Topic).collect()
        }
        (EntityType::Brokers, None) => {
            let cluster = admin.describe_cluster().await.context("describing the cluster")?;
            let mut ids: Vec<i32> = cluster.brokers.iter().map(|b| b.node_id).collect();
            ids.sort_unstable();
            ids.into_iter().map(ConfigResource::Broker).collect()
        }
    };
    let described = admin.describe_configs(&resources, &[]).await.context("describing configs")?;
    let mut out = String::new();
    let mut failed = Vec::new();
    for (resource, entries) in described {
        match entries {
            Ok(entries) => render(&mut out, &resource, &entries, args.all)?,
            Err(e) => failed.push(format!("{}: {e}", label(&resource))),
        }
    }
    print_out(&out);
    if !failed.is_empty() {
        bail!("{}", failed.join("; "));
    }
    Ok(())
}

fn entity(args: &ConfigsArgs) -> Result<(EntityType, Option<String>)> {
    if let Some(topic) = &args.topic {
        return Ok((EntityType::Topics, Some(topic.clone())));
    }
    if let Some(broker) = args.broker {
        return Ok((EntityType::Brokers, Some(broker.to_string())));
    }
    match args.entity_type {
        Some(kind) => Ok((kind, args.entity_name.clone())),
        None => bail!("say which configs: --entity-type topics|brokers (or --topic T / --broker N)"),
    }
}

fn resource(kind: EntityType, name: &str) -> Result<ConfigResource> {
    Ok(match kind {
        EntityType::Topics => ConfigResource::Topic(name.to_string()),
        EntityType::Brokers => ConfigResource::Broker(
            name.parse().with_context(|| format!("--entity-name for brokers is a broker id, not '{name}'"))?,
        ),
    })
}

fn label(resource: &ConfigResource) -> String {
    match resource {
        ConfigResource::Topic(name) => format!("topic {name}"),
        ConfigResource::Broker(id) => format!("broker {id}"),
    }
}

/// `--add-config` as kafka-configs.sh reads it: comma-separated `k=v`, where a value in square
/// brackets may hold commas (`cleanup.policy=[compact,delete]`, sent without the brackets).
fn parse_add_config(raw: &str) -> Result<Vec<(String, String)>> {
    let mut pairs = Vec::new();
    let mut depth = 0usize;
    let mut start = 0;
    let mut pieces = Vec::new();
    for (i, c) in raw.char_indices() {
        match c {
            '[' => depth += 1,
            ']' => depth = depth.checked_sub(1).with_context(|| format!("unbalanced ']' in --add-config '{raw}'"))?,
            ',' if depth == 0 => {
                pieces.push(&raw[start..i]);
                start = i + 1;
            }
            _ => {}
        }
    }
    if depth != 0 {
        bail!("unbalanced '[' in --add-config '{raw}'");
    }
    pieces.push(&raw[start..]);
    for piece in pieces.into_iter().filter(|p| !p.trim().is_empty()) {
        let Some((key, value)) = piece.split_once('=') else {
            bail!("--add-config entries are KEY=VALUE, not '{piece}'");
        };
        let key = key.trim();
        if key.is_empty() {
            bail!("--add-config entry '{piece}' has no key");
        }
        let value = value.trim();
        let value = value.strip_prefix('[').and_then(|v| v.strip_suffix(']')).unwrap_or(value);
        pairs.push((key.to_string(), value.to_string()));
    }
    Ok(pairs)
}

fn alter_ops(add: Option<&str>, delete: Option<&str>) -> Result<Vec<AlterConfigOp>> {
    let mut ops: Vec<AlterConfigOp> = parse_add_config(add.unwrap_or(""))?
        .into_iter()
        .map(|(name, value)| AlterConfigOp::Set { name, value })
        .collect();
    for key in delete.unwrap_or("").split(',').map(str::trim).filter(|k| !k.is_empty()) {
        if ops.iter().any(|op| matches!(op, AlterConfigOp::Set { name, .. } if name == key)) {
            bail!("{key} is both added and deleted");
        }
        ops.push(AlterConfigOp::Delete { name: key.to_string() });
    }
    if ops.is_empty() {
        bail!("--alter needs --add-config and/or --delete-config");
    }
    Ok(ops)
}

fn source_name(source: ConfigSource) -> &'static str {
    match source {
        ConfigSource::DynamicTopicConfig => "DYNAMIC_TOPIC_CONFIG",
        ConfigSource::DynamicBrokerLoggerConfig => "DYNAMIC_BROKER_LOGGER_CONFIG",
        ConfigSource::DynamicBrokerConfig => "DYNAMIC_BROKER_CONFIG",
        ConfigSource::DynamicDefaultBrokerConfig => "DYNAMIC_DEFAULT_BROKER_CONFIG",
        ConfigSource::StaticBrokerConfig => "STATIC_BROKER_CONFIG",
        ConfigSource::DefaultConfig => "DEFAULT_CONFIG",
        ConfigSource::Unknown => "UNKNOWN",
    }
}

fn is_dynamic(source: ConfigSource) -> bool {
    matches!(
        source,
        ConfigSource::DynamicTopicConfig
            | ConfigSource::DynamicBrokerConfig
            | ConfigSource::DynamicDefaultBrokerConfig
            | ConfigSource::DynamicBrokerLoggerConfig
    )
}

/// kafka-configs.sh's layout: a heading, then `  key=value sensitive=… synonyms={SOURCE:key=value}`
/// per entry; without `all` only the dynamic (overridden) entries.
fn render(out: &mut String, resource: &ConfigResource, entries: &[ConfigEntry], all: bool) -> std::fmt::Result {
    let which = if all { "All" } else { "Dynamic" };
    writeln!(out, "{which} configs for {} are:", label(resource))?;
    let mut shown: Vec<&ConfigEntry> = entries.iter().filter(|e| all || is_dynamic(e.source)).collect();
    shown.sort_by(|a, b| a.name.cmp(&b.name));
    for e in shown {
        let value = if e.is_sensitive { None } else { e.value.as_deref() };
        let value = value.unwrap_or("null");
        writeln!(
            out,
            "  {}={value} sensitive={} synonyms={{{}:{}={value}}}",
            e.name,
            e.is_sensitive,
            source_name(e.source),
            e.name
        )?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        args: ConfigsArgs,
    }

    #[test]
    fn add_config_splits_on_commas_outside_brackets() {
        let pairs = parse_add_config("retention.ms=1000, cleanup.policy=[compact,delete],x=a=b").unwrap();
        assert_eq!(
            pairs,
            vec![
                ("retention.ms".into(), "1000".into()),
                ("cleanup.policy".into(), "compact,delete".into()),
                ("x".into(), "a=b".into())
            ]
        );
        for bad in ["novalue", "=1", "a=[1,2", "a=1]"] {
            assert!(parse_add_config(bad).is_err(), "{bad}");
        }
        let ops = alter_ops(Some("a=1"), Some("b, c")).unwrap();
        assert_eq!(ops.len(), 3);
        assert!(matches!(&ops[2], AlterConfigOp::Delete { name } if name == "c"));
        assert!(alter_ops(Some("a=1"), Some("a")).is_err());
        assert!(alter_ops(None, None).is_err());
    }

    #[test]
    fn flags_name_one_entity_and_one_action() {
        let cli = Cli::try_parse_from(["configs", "--describe", "--topic", "t", "--all"]).unwrap();
        assert_eq!(entity(&cli.args).unwrap(), (EntityType::Topics, Some("t".into())));
        let cli = Cli::try_parse_from(["configs", "--describe", "--entity-type", "brokers"]).unwrap();
        assert_eq!(entity(&cli.args).unwrap(), (EntityType::Brokers, None));
        let cli = Cli::try_parse_from(["configs", "--alter", "--broker", "2", "--add-config", "a=1"]).unwrap();
        assert_eq!(entity(&cli.args).unwrap(), (EntityType::Brokers, Some("2".into())));
        assert!(Cli::try_parse_from(["configs", "--topic", "t"]).is_err());
        assert!(Cli::try_parse_from(["configs", "--describe", "--alter", "--topic", "t"]).is_err());
        assert!(Cli::try_parse_from(["configs", "--describe", "--topic", "t", "--add-config", "a=1"]).is_err());
        let cli = Cli::try_parse_from(["configs", "--describe"]).unwrap();
        assert!(entity(&cli.args).is_err());
        assert!(resource(EntityType::Brokers, "x").is_err());
    }

    #[test]
    fn describe_shows_overrides_or_everything() {
        let entry = |name: &str, value: &str, source| ConfigEntry {
            name: name.into(),
            value: Some(value.into()),
            source,
            is_default: source == ConfigSource::DefaultConfig,
            read_only: false,
            is_sensitive: false,
        };
        let entries = vec![
            entry("segment.bytes", "1073741824", ConfigSource::DefaultConfig),
            entry("retention.ms", "1000", ConfigSource::DynamicTopicConfig),
        ];
        let topic = ConfigResource::Topic("orders".into());
        let mut out = String::new();
        render(&mut out, &topic, &entries, false).unwrap();
        assert_eq!(
            out,
            "Dynamic configs for topic orders are:\n  retention.ms=1000 sensitive=false \
             synonyms={DYNAMIC_TOPIC_CONFIG:retention.ms=1000}\n"
        );
        let mut out = String::new();
        render(&mut out, &topic, &entries, true).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "All configs for topic orders are:");
        assert!(lines[2].starts_with("  segment.bytes=1073741824 sensitive=false synonyms={DEFAULT_CONFIG:"));
    }
}
