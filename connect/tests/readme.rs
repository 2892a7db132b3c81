//! README's connector config reference is generated from the config definitions (the text
//! `/config/validate` serves), so the two cannot drift: this test fails when they differ, and
//! `SPATE_UPDATE_README=1 cargo test -p spate-connect --test readme` rewrites the block.

use spate_connect::config::ConfigDef;
use spate_connect::connector::ConnectorType;
use spate_connect::registry::{common_config_def, Registry};

const BEGIN: &str = "<!-- connect-config:begin -->";
const END: &str = "<!-- connect-config:end -->";

fn table(title: &str, def: &ConfigDef) -> String {
    let mut out = format!("**{title}**\n\n| key | type | default | |\n| --- | --- | --- | --- |\n");
    for k in def.keys() {
        let default = match &k.default {
            None => "required".to_owned(),
            Some(d) if d.is_empty() => "\"\"".to_owned(),
            Some(d) => format!("`{d}`"),
        };
        let doc = k.documentation.replace('|', "\\|").replace('\n', " ");
        out.push_str(&format!("| `{}` | {} | {} | {} |\n", k.name, k.ty.name().to_lowercase(), default, doc));
    }
    out.push('\n');
    out
}

fn generated() -> String {
    let mut out = String::from("\n");
    out.push_str(&table("Every source connector", &common_config_def(ConnectorType::Source)));
    out.push_str(&table(
        "Sink connectors add",
        &ConfigDef::new()
            .merge(&common_config_def(ConnectorType::Sink))
            .retain_not_in(&common_config_def(ConnectorType::Source)),
    ));
    for plugin in Registry::builtin().plugins() {
        out.push_str(&table(&format!("`{}` ({})", plugin.class(), plugin.kind().name()), &plugin.config_def()));
    }
    out.push_str(&table(
        "Transform `Rhai` (`transforms.<alias>.` + key)",
        &spate_connect::transform::rhai::config_def(),
    ));
    out
}

#[test]
fn readme_lists_every_connector_key() {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../README.md");
    let readme = std::fs::read_to_string(path).unwrap();
    let start = readme.find(BEGIN).expect("README lacks the connect-config:begin marker") + BEGIN.len();
    let end = readme.find(END).expect("README lacks the connect-config:end marker");
    let want = generated();
    if readme[start..end] == want {
        return;
    }
    if std::env::var_os("SPATE_UPDATE_README").is_some() {
        let updated = format!("{}{}{}", &readme[..start], want, &readme[end..]);
        std::fs::write(path, updated).unwrap();
        return;
    }
    panic!("README's connector config reference is stale: run SPATE_UPDATE_README=1 cargo test -p spate-connect --test readme");
}
