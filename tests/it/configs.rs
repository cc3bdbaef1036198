//! The configs we ship (`proxy.toml`, `deploy/*.toml`) load and validate as shipped, once the
//! TLS files they name are made the way their comments say (`pgmix certs`); and validation
//! really reads them: a copy with an unknown key is refused, naming the file and the key.

use std::path::{Path, PathBuf};

use pgmix::cluster::certs;

use crate::harness::TempDir;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// proxy.toml, then deploy/*.toml in name order.
fn shipped_configs() -> Vec<PathBuf> {
    let mut deploy: Vec<PathBuf> = std::fs::read_dir(root().join("deploy"))
        .expect("deploy/")
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    deploy.sort();
    assert!(!deploy.is_empty(), "deploy/ holds node configs");
    let mut all = vec![root().join("proxy.toml")];
    all.extend(deploy);
    all
}

/// The `[tls]` cert and key a config names when its TLS is on (paths as written in the file).
fn tls_files(text: &str, file: &Path) -> Option<(String, String)> {
    let table: toml::Table = text.parse().unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    let tls = table.get("tls")?.as_table()?;
    if tls.get("mode").and_then(|m| m.as_str()).unwrap_or("disable") == "disable" {
        return None;
    }
    let path = |k: &str| {
        tls.get(k).and_then(|v| v.as_str()).unwrap_or_else(|| panic!("{}: tls.{k}", file.display())).to_owned()
    };
    Some((path("cert"), path("key")))
}

#[test]
fn shipped_configs_load_and_validate() {
    for path in shipped_configs() {
        let shown = path.display();
        let text = std::fs::read_to_string(&path).unwrap();
        let tmp = TempDir::new("configs");
        let copy = tmp.0.join(path.file_name().unwrap());
        std::fs::write(&copy, &text).unwrap();

        let tls = tls_files(&text, &path);
        if let Some((cert, key)) = &tls {
            // Without its certificates the config is refused, naming the missing file.
            let err = pgmix::config::load(&copy).unwrap_err().to_string();
            assert!(err.contains("tls.cert") && err.contains(cert.as_str()), "{shown}: {err}");

            // `pgmix certs --dir <dir> --nodes <node>` makes exactly the files the config names.
            let cert_path = Path::new(cert);
            let dir = tmp.0.join(cert_path.parent().unwrap());
            let node = cert_path.file_stem().unwrap().to_str().unwrap().to_owned();
            let hosts: Vec<String> = certs::DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect();
            let made = certs::ensure_cluster(&dir, std::slice::from_ref(&node), &hosts).expect("certs");
            assert_eq!(made.nodes[0].cert, tmp.0.join(cert), "{shown}: tls.cert");
            assert_eq!(made.nodes[0].key, tmp.0.join(key), "{shown}: tls.key");
        }

        // A cluster node's peer certificates, made as the compose file's `certs` service does.
        let table: toml::Table = text.parse().unwrap();
        if let Some(cluster) = table.get("cluster").and_then(|c| c.as_table()) {
            let cert = Path::new(cluster["cert"].as_str().unwrap());
            let node = table["node_name"].as_str().unwrap().to_owned();
            let hosts: Vec<String> = certs::DEFAULT_HOSTS.iter().map(|h| h.to_string()).collect();
            certs::ensure_cluster(&tmp.0.join(cert.parent().unwrap()), &[node], &hosts).expect("cluster certs");
        }
        let cfg = pgmix::config::load(&copy).unwrap_or_else(|e| panic!("{shown} does not validate: {e}"));
        assert_eq!(cfg.tls.is_some(), tls.is_some(), "{shown}: TLS as configured");
        if let Some(settings) = &cfg.tls {
            assert!(settings.end_point.is_ok(), "{shown}: SCRAM-SHA-256-PLUS is offered with the made certificate");
            let (cert, _) = tls.as_ref().unwrap();
            let stem = Path::new(cert).file_stem().unwrap().to_str().unwrap();
            assert_eq!(stem, cfg.node_name, "{shown}: the node serves its own certificate");
        }
        assert!(!cfg.users.is_empty(), "{shown}: someone can log in");

        // Broken copies are refused with the file and the key named: an unknown key at the top
        // level and one inside a section.
        let broken = tmp.0.join("broken.toml");
        for (bad, edited) in [
            ("no_such_key", format!("no_such_key = 1\n{text}")),
            ("socket_dir", text.replacen("[backend]\n", "[backend]\nsocket_dir = \"/tmp\"\n", 1)),
        ] {
            assert_ne!(edited, text, "{shown}: the edit applies");
            std::fs::write(&broken, &edited).unwrap();
            let err = pgmix::config::load(&broken).unwrap_err().to_string();
            assert!(err.starts_with(&format!("{}:", broken.display())), "{shown}: {err}");
            assert!(err.contains(bad), "{shown}: {err}");
        }
    }
}

#[test]
fn shipped_compose_file_mounts_each_deploy_config_next_to_its_postgres() {
    let compose = std::fs::read_to_string(root().join("docker-compose.yml")).unwrap();
    for path in shipped_configs().into_iter().skip(1) {
        let name = path.file_name().unwrap().to_str().unwrap();
        assert!(
            compose.contains(&format!("\"./deploy/{name}:/etc/pgmix/proxy.toml:ro\", \"certs:/etc/pgmix/certs:ro\"")),
            "{name} is mounted, with the cluster certificates"
        );
        let table: toml::Table = std::fs::read_to_string(&path).unwrap().parse().unwrap();
        let host = table["backend"]["host"].as_str().unwrap();
        assert!(compose.contains(&format!("\n  {host}:\n")), "{name}: backend host `{host}` is a compose service");
    }
}
