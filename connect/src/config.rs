//! Typed connector configs: a [`ConfigDef`] lists the keys a connector (or transform) takes,
//! with type, default, importance and docs; [`ConfigDef::parse`] is the pure validation behind
//! both connector start-up and `PUT /connector-plugins/{plugin}/config/validate`, and
//! [`ConfigDef::validate`] gives the per-key result that endpoint returns.

use std::collections::BTreeMap;

use crate::error::{ConnectError, Result};

/// A connector or task config as Kafka Connect stores it: string keys and string values.
pub type Props = BTreeMap<String, String>;

/// Kafka's `ConfigDef.Type` names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigType {
    Boolean,
    String,
    Int,
    Long,
    Double,
    /// Comma-separated list.
    List,
    /// A class name (connector class, converter, transform type).
    Class,
    /// A secret: never echoed back by the API.
    Password,
}

impl ConfigType {
    /// The name `/config/validate` reports.
    pub fn name(self) -> &'static str {
        match self {
            ConfigType::Boolean => "BOOLEAN",
            ConfigType::String => "STRING",
            ConfigType::Int => "INT",
            ConfigType::Long => "LONG",
            ConfigType::Double => "DOUBLE",
            ConfigType::List => "LIST",
            ConfigType::Class => "CLASS",
            ConfigType::Password => "PASSWORD",
        }
    }
}

/// Kafka's `ConfigDef.Importance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Importance {
    High,
    Medium,
    Low,
}

impl Importance {
    /// The name `/config/validate` reports.
    pub fn name(self) -> &'static str {
        match self {
            Importance::High => "HIGH",
            Importance::Medium => "MEDIUM",
            Importance::Low => "LOW",
        }
    }
}

/// Extra checks on a value that already has the right type.
#[derive(Debug, Clone)]
pub enum Validator {
    /// Inclusive numeric range (for Int, Long, Double).
    Range { min: f64, max: f64 },
    /// One of these strings (case-sensitive, as Kafka's `ValidString`).
    OneOf(&'static [&'static str]),
    /// Must not be empty.
    NonEmpty,
    /// Any check; the error says what is wrong with the value.
    Custom(fn(&str) -> std::result::Result<(), String>),
}

/// One key of a config.
#[derive(Debug, Clone)]
pub struct ConfigKey {
    pub name: String,
    pub ty: ConfigType,
    /// `None`: required.
    pub default: Option<String>,
    pub importance: Importance,
    /// The user docs (served by the API, copied into README).
    pub documentation: String,
    pub group: Option<String>,
    pub validator: Option<Validator>,
}

/// The per-key outcome `/config/validate` reports.
#[derive(Debug, Clone, PartialEq)]
pub struct ConfigValueResult {
    pub name: String,
    /// The value given, or the default; `None` for an unset required key (and for passwords).
    pub value: Option<String>,
    pub errors: Vec<String>,
    pub recommended_values: Vec<String>,
}

/// A set of config keys.
#[derive(Debug, Clone, Default)]
pub struct ConfigDef {
    keys: Vec<ConfigKey>,
}

impl ConfigDef {
    /// An empty definition.
    pub fn new() -> Self {
        ConfigDef::default()
    }

    /// Adds a key (builder style). `default = None` makes it required.
    pub fn define(
        mut self,
        name: &str,
        ty: ConfigType,
        default: Option<&str>,
        importance: Importance,
        documentation: &str,
    ) -> Self {
        self.keys.push(ConfigKey {
            name: name.to_owned(),
            ty,
            default: default.map(str::to_owned),
            importance,
            documentation: documentation.to_owned(),
            group: None,
            validator: None,
        });
        self
    }

    /// Sets the validator of the key defined last.
    pub fn with_validator(mut self, validator: Validator) -> Self {
        if let Some(k) = self.keys.last_mut() {
            k.validator = Some(validator);
        }
        self
    }

    /// Sets the group of the key defined last.
    pub fn in_group(mut self, group: &str) -> Self {
        if let Some(k) = self.keys.last_mut() {
            k.group = Some(group.to_owned());
        }
        self
    }

    /// Adds every key of `other` not already defined here.
    pub fn merge(mut self, other: &ConfigDef) -> Self {
        for k in &other.keys {
            if !self.keys.iter().any(|mine| mine.name == k.name) {
                self.keys.push(k.clone());
            }
        }
        self
    }

    /// The keys of this definition that `other` does not define.
    pub fn retain_not_in(mut self, other: &ConfigDef) -> Self {
        self.keys.retain(|k| !other.keys.iter().any(|o| o.name == k.name));
        self
    }

    /// The keys, in definition order.
    pub fn keys(&self) -> &[ConfigKey] {
        &self.keys
    }

    /// Per-key validation of `props` (unknown keys are allowed and ignored, as in Kafka).
    pub fn validate(&self, props: &Props) -> Vec<ConfigValueResult> {
        self.keys
            .iter()
            .map(|k| {
                let given = props.get(&k.name).cloned();
                let value = given.clone().or_else(|| k.default.clone());
                let mut errors = Vec::new();
                match &value {
                    None => errors
                        .push(format!("Missing required configuration \"{}\" which has no default value.", k.name)),
                    Some(v) => {
                        if let Err(e) = check_value(k, v) {
                            errors.push(e);
                        }
                    }
                }
                let recommended_values = match &k.validator {
                    Some(Validator::OneOf(values)) => values.iter().map(|s| (*s).to_owned()).collect(),
                    _ => Vec::new(),
                };
                ConfigValueResult {
                    name: k.name.clone(),
                    value: if k.ty == ConfigType::Password { None } else { value },
                    errors,
                    recommended_values,
                }
            })
            .collect()
    }

    /// Validates `props` and returns them with defaults filled in; the first error found is
    /// returned as [`ConnectError::Config`].
    pub fn parse(&self, props: &Props) -> Result<ParsedConfig> {
        for r in self.validate(props) {
            if let Some(e) = r.errors.into_iter().next() {
                return Err(ConnectError::config(r.name, e));
            }
        }
        let mut values = props.clone();
        for k in &self.keys {
            if let Some(d) = &k.default {
                values.entry(k.name.clone()).or_insert_with(|| d.clone());
            }
        }
        Ok(ParsedConfig { values })
    }
}

fn check_value(key: &ConfigKey, v: &str) -> std::result::Result<(), String> {
    let name = &key.name;
    let number: Option<f64> = match key.ty {
        ConfigType::Int => Some(
            v.trim()
                .parse::<i32>()
                .map_err(|_| format!("Invalid value {v} for configuration {name}: Not a number of type INT"))?
                as f64,
        ),
        ConfigType::Long => Some(
            v.trim()
                .parse::<i64>()
                .map_err(|_| format!("Invalid value {v} for configuration {name}: Not a number of type LONG"))?
                as f64,
        ),
        ConfigType::Double => Some(
            v.trim()
                .parse::<f64>()
                .map_err(|_| format!("Invalid value {v} for configuration {name}: Not a number of type DOUBLE"))?,
        ),
        ConfigType::Boolean => {
            if !v.trim().eq_ignore_ascii_case("true") && !v.trim().eq_ignore_ascii_case("false") {
                return Err(format!(
                    "Invalid value {v} for configuration {name}: Expected value to be either true or false"
                ));
            }
            None
        }
        _ => None,
    };
    match &key.validator {
        Some(Validator::Range { min, max }) => {
            if let Some(n) = number {
                if n < *min || n > *max {
                    return Err(format!("Invalid value {v} for configuration {name}: Value must be in [{min}, {max}]"));
                }
            }
        }
        Some(Validator::OneOf(values)) if !values.contains(&v.trim()) => {
            return Err(format!(
                "Invalid value {v} for configuration {name}: String must be one of: {}",
                values.join(", ")
            ));
        }
        Some(Validator::NonEmpty) if v.trim().is_empty() => {
            return Err(format!("Invalid value for configuration {name}: String must be non-empty"));
        }
        Some(Validator::OneOf(_) | Validator::NonEmpty) => {}
        Some(Validator::Custom(f)) => f(v).map_err(|e| format!("Invalid value {v} for configuration {name}: {e}"))?,
        None => {}
    }
    Ok(())
}

/// A validated config with defaults applied; getters parse values the definition checked
/// (a key the definition does not know reads as absent).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ParsedConfig {
    values: Props,
}

impl ParsedConfig {
    /// Wraps props without a definition (tests, pass-through).
    pub fn from_props(values: Props) -> Self {
        ParsedConfig { values }
    }

    /// All values, defaults included.
    pub fn props(&self) -> &Props {
        &self.values
    }

    /// A string value.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.values.get(key).map(String::as_str)
    }

    /// A string that must be present.
    pub fn require_str(&self, key: &str) -> Result<&str> {
        self.get_str(key).ok_or_else(|| ConnectError::config(key, "missing"))
    }

    /// A boolean (`true`/`false`, any case).
    pub fn get_bool(&self, key: &str) -> Result<Option<bool>> {
        self.values
            .get(key)
            .map(|v| match v.trim().to_ascii_lowercase().as_str() {
                "true" => Ok(true),
                "false" => Ok(false),
                _ => Err(ConnectError::config(key, format!("{v} is not true or false"))),
            })
            .transpose()
    }

    /// An integer (Int or Long).
    pub fn get_i64(&self, key: &str) -> Result<Option<i64>> {
        self.values
            .get(key)
            .map(|v| v.trim().parse::<i64>().map_err(|_| ConnectError::config(key, format!("{v} is not a number"))))
            .transpose()
    }

    /// A floating-point number.
    pub fn get_f64(&self, key: &str) -> Result<Option<f64>> {
        self.values
            .get(key)
            .map(|v| v.trim().parse::<f64>().map_err(|_| ConnectError::config(key, format!("{v} is not a number"))))
            .transpose()
    }

    /// A comma-separated list, items trimmed, empty items dropped; empty when absent.
    pub fn get_list(&self, key: &str) -> Vec<String> {
        self.values
            .get(key)
            .map(|v| v.split(',').map(str::trim).filter(|s| !s.is_empty()).map(str::to_owned).collect())
            .unwrap_or_default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn def() -> ConfigDef {
        ConfigDef::new()
            .define("file", ConfigType::String, None, Importance::High, "the file")
            .define("batch.size", ConfigType::Int, Some("2000"), Importance::Low, "lines per batch")
            .with_validator(Validator::Range { min: 1.0, max: 1e6 })
            .define("mode", ConfigType::String, Some("a"), Importance::Low, "mode")
            .with_validator(Validator::OneOf(&["a", "b"]))
    }

    #[test]
    fn defaults_fill_in_and_errors_name_the_key() {
        let mut props = Props::new();
        props.insert("file".into(), "/tmp/x".into());
        let parsed = def().parse(&props).unwrap();
        assert_eq!(parsed.get_i64("batch.size").unwrap(), Some(2000));
        props.insert("batch.size".into(), "0".into());
        props.insert("mode".into(), "c".into());
        let results = def().validate(&props);
        assert!(results[1].errors[0].contains("batch.size"));
        assert_eq!(results[2].recommended_values, vec!["a", "b"]);
        props.remove("file");
        match def().parse(&props) {
            Err(ConnectError::Config { key, .. }) => assert_eq!(key, "file"),
            other => panic!("{other:?}"),
        }
    }
}
