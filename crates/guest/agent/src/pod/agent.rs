//! The agent's ttrpc services.

use std::collections::HashMap;

/// The services the agent serves, by ttrpc service name.
pub fn services() -> HashMap<String, ttrpc::r#async::Service> {
    HashMap::new()
}
