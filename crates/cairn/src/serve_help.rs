//! `cairn serve --help` shows what each flag defaults to. The flags are optional overrides of
//! the config file (a clap `default_value` would override the file too), so the defaults are
//! read from `Config::default()`, the one source of truth, and appended to each flag's help.

use cairn_core::{Config, OriginConfig};

/// The default of each `serve` flag, by clap argument id.
fn defaults() -> Vec<(&'static str, String)> {
    let c = Config::default();
    let o = c.origins.first().cloned().unwrap_or_else(OriginConfig::local_default);
    let or_none = |s: &str| if s.is_empty() { "none".to_owned() } else { s.to_owned() };
    let first_key = c.auth.keys.first();
    vec![
        ("config", "none: every field at its default".into()),
        ("listen", c.node.listen.clone()),
        ("admin_listen", c.node.admin_listen.clone()),
        ("cache_dir", c.cache.dir.clone()),
        ("ram_capacity", c.cache.ram_capacity.to_string()),
        ("disk_capacity", c.cache.disk_capacity.to_string()),
        ("free_space_reserve", c.cache.free_space_reserve.to_string()),
        ("readahead", c.cache.readahead_chunks.to_string()),
        ("origin", format!("{} in account mode", o.url)),
        ("bucket", "none: account mode".into()),
        ("origin_options", "none".into()),
        ("chunk_size", o.chunk_size.to_string()),
        ("metadata", o.metadata.to_string()),
        ("durability", o.durability.to_string()),
        ("dirty_max", c.writeback.dirty_max.to_string()),
        ("access_key", first_key.map_or("none".into(), |k| k.access_key.clone())),
        ("secret_key", first_key.map_or("none".into(), |k| k.secret_key.clone())),
        ("allow_anonymous", if c.auth.allow_anonymous { "on" } else { "off" }.into()),
        ("cluster_map", "none: a single node, unless --seeds".into()),
        ("node_id", or_none(&c.cluster.node_id)),
        ("peer_listen", c.cluster.peer_listen.clone()),
        ("cluster_secret", or_none(&c.cluster.secret)),
        ("seeds", "none".into()),
        ("zone", c.cluster.zone.clone()),
        ("rack", c.cluster.rack.clone()),
        ("cell", "the zone".into()),
        ("advertise", "the --peer-listen address".into()),
        ("k8s_node_name", or_none(&c.kubernetes.node_name)),
        ("k8s_zone_label", c.kubernetes.zone_label.clone()),
        ("k8s_rack_label", or_none(&c.kubernetes.rack_label)),
        ("kv_listen", c.kv.listen.clone()),
        ("kv_ram_capacity", c.kv.ram_capacity.to_string()),
        ("kv_disk_capacity", c.kv.disk_capacity.to_string()),
        ("kv_password", or_none(&c.kv.requirepass)),
        ("kv_allow_anonymous", if c.kv.allow_anonymous { "on" } else { "off" }.into()),
        ("tls", "none".into()),
        ("tls_cert", or_none(&c.tls.cert)),
        ("tls_key", or_none(&c.tls.key)),
        ("tls_ca", or_none(&c.tls.ca)),
        ("tls_client_ca", "none: no client certificates".into()),
    ]
}

/// The `serve` subcommand with "[default: ...]" after each flag's help.
pub fn with_defaults(mut cmd: clap::Command) -> clap::Command {
    for (id, default) in defaults() {
        cmd = cmd.mut_arg(id, |arg| {
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            let arg = arg.help(format!("{help} [default: {default}]"));
            match arg.get_long_help().map(|h| h.to_string()) {
                Some(long) => arg.long_help(format!("{long}\n\n[default: {default}]")),
                None => arg,
            }
        });
    }
    cmd
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    fn serve() -> clap::Command {
        let cli = crate::Cli::command();
        let serve = cli.find_subcommand("serve").expect("serve").clone();
        with_defaults(serve)
    }

    #[test]
    fn every_serve_flag_is_described() {
        for arg in serve().get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.len() > "[default: x]".len() + 10, "--{id} has no description: {help:?}");
        }
    }

    #[test]
    fn every_value_flag_shows_its_default() {
        for arg in serve().get_arguments() {
            let id = arg.get_id().as_str();
            if matches!(id, "help" | "version" | "print_config") {
                continue;
            }
            let help = arg.get_help().map(|h| h.to_string()).unwrap_or_default();
            assert!(help.contains("[default: "), "--{id} shows no default: {help:?}");
        }
        let ids: Vec<String> = serve().get_arguments().map(|a| a.get_id().to_string()).collect();
        for (id, _) in defaults() {
            assert!(ids.iter().any(|i| i == id), "no serve flag {id}");
        }
    }
}
