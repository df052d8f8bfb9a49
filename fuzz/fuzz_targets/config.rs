//! The config file (`src/config.rs`, `palyra.toml`): TOML text up to the 64 KiB the loader
//! reads, then what the node does with its fields (`ServerName::parse` for each extra server
//! name, the key backend choice). Checks: errors name the file; accepted values are in range;
//! a parsed server name re-parses to itself.

#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use palyra::config::{ConfigError, FileConfig, MAX_CONFIG_BYTES};
use palyra::identity::ca::ServerName;
use palyra::node::KeyBackendChoice;

fuzz_target!(|data: &[u8]| {
    if data.len() as u64 > MAX_CONFIG_BYTES {
        return;
    }
    let Ok(text) = std::str::from_utf8(data) else { return };
    let path = Path::new("/etc/palyra/palyra.toml");
    match FileConfig::parse(text, path) {
        Ok(config) => {
            if let Some(backend) = &config.key_backend {
                assert!(backend.parse::<KeyBackendChoice>().is_ok());
            }
            assert!(config.max_value_bytes.is_none_or(|n| (1..=16 * 1024 * 1024).contains(&n)));
            for name in config.server_names.iter().flatten() {
                if let Ok(parsed) = ServerName::parse(name) {
                    let text = match &parsed {
                        ServerName::Dns(dns) => dns.clone(),
                        ServerName::Ip(ip) => ip.to_string(),
                    };
                    assert_eq!(ServerName::parse(&text).as_ref().ok(), Some(&parsed));
                }
            }
            assert_eq!(FileConfig::parse(text, path).ok(), Some(config), "parsing is deterministic");
        }
        Err(e @ ConfigError::Invalid { .. }) => {
            assert!(e.to_string().starts_with("config file /etc/palyra/palyra.toml: "), "{e}");
        }
        Err(e) => panic!("parsing text can only find it invalid: {e:?}"),
    }
});
