//! Scripted transforms in Rhai (`transforms.x.type=Rhai`).

use std::path::Path;

use crate::config::Props;
use crate::error::{ConnectError, Result};
use crate::transform::Transformation;

/// Builds a Rhai transform from its own keys (`script`, `source`, limits; the
/// `transforms.<alias>.` prefix already stripped). Scripts load from `plugins_dir` only.
pub fn build(alias: &str, config: &Props, plugins_dir: &Path) -> Result<Box<dyn Transformation>> {
    let _ = (config, plugins_dir);
    Err(ConnectError::transform(alias, "Rhai transforms are not built yet"))
}
