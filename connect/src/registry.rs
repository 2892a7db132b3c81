//! The installed connector plugins, by class name and alias.

use std::sync::Arc;

use crate::connector::Connector;

/// Every built-in plugin.
pub fn builtin() -> Vec<Arc<dyn Connector>> {
    Vec::new()
}
