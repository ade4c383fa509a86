//! A real 3-master Redis Cluster on loopback (`redis-cli --cluster create`),
//! for the tests of write-through and passthrough to a cluster.

use std::process::Command;
use std::time::Duration;

use super::{RedisServer, free_port, wait_until};

/// Three cluster-enabled redis-servers joined with `redis-cli --cluster create`.
pub struct Cluster {
    pub nodes: Vec<RedisServer>,
    dir: std::path::PathBuf,
}

impl Cluster {
    pub fn start() -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "sidecar-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let nodes: Vec<RedisServer> = (0..3)
            .map(|i| {
                let config = dir
                    .join(format!("nodes-{i}.conf"))
                    .to_string_lossy()
                    .into_owned();
                RedisServer::start(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    &config,
                    "--cluster-node-timeout",
                    "2000",
                ])
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(node.addr.to_string());
        }
        let out = create
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .expect("redis-cli runs");
        assert!(
            out.status.success(),
            "cluster create failed: {}",
            String::from_utf8_lossy(&out.stdout)
        );
        let ok = wait_until(Duration::from_secs(20), || {
            nodes.iter().all(|node| {
                let info: String = redis::cmd("CLUSTER")
                    .arg("INFO")
                    .query(&mut node.client())
                    .unwrap_or_default();
                info.contains("cluster_state:ok")
            })
        });
        assert!(ok, "the cluster never reached cluster_state:ok");
        Cluster { nodes, dir }
    }

    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|n| n.addr.to_string()).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The node that holds `key`.
    pub fn holder(&self, key: &str) -> &RedisServer {
        self.nodes
            .iter()
            .find(|node| {
                let exists: i64 = redis::cmd("EXISTS")
                    .arg(key)
                    .query(&mut node.client())
                    .unwrap_or(0);
                exists == 1
            })
            .unwrap_or_else(|| panic!("no node holds {key}"))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
