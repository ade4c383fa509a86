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
        Cluster::start_with(0)
    }

    /// Three masters with `replicas` replicas each (all in `nodes`).
    pub fn start_with(replicas: usize) -> Cluster {
        let dir = std::env::temp_dir().join(format!(
            "sidecar-cluster-{}-{}",
            std::process::id(),
            free_port()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let nodes: Vec<RedisServer> = (0..3 * (1 + replicas))
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
                    // No test fails a node on purpose: a long timeout keeps
                    // a machine loaded by the other tests from making the
                    // nodes suspect each other (and answer CLUSTERDOWN).
                    "--cluster-node-timeout",
                    "10000",
                ])
            })
            .collect();
        let mut create = Command::new("redis-cli");
        create.arg("--cluster").arg("create");
        for node in &nodes {
            create.arg(node.addr.to_string());
        }
        let out = create
            .args(["--cluster-replicas", &replicas.to_string(), "--cluster-yes"])
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
        let synced = wait_until(Duration::from_secs(20), || {
            nodes.iter().all(|node| {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut node.client())
                    .unwrap_or_default();
                info.contains("role:master") || info.contains("master_link_status:up")
            })
        });
        assert!(synced, "the replicas never synced");
        Cluster { nodes, dir }
    }

    pub fn url(&self) -> String {
        let hosts: Vec<String> = self.nodes.iter().map(|n| n.addr.to_string()).collect();
        format!("redis+cluster://{}", hosts.join(","))
    }

    /// The node that holds `key`. A node that does not serve the key's
    /// slot answers MOVED; any other error (a reply timeout on a loaded
    /// machine) is asked again, and reported if it lasts.
    #[track_caller]
    pub fn holder(&self, key: &str) -> &RedisServer {
        let mut answers = Vec::new();
        let mut holder = None;
        wait_until(Duration::from_secs(10), || {
            answers.clear();
            let mut retry = false;
            for (index, node) in self.nodes.iter().enumerate() {
                let answer: redis::RedisResult<i64> =
                    redis::cmd("EXISTS").arg(key).query(&mut node.client());
                match &answer {
                    Ok(1) => {
                        holder = Some(index);
                        return true;
                    }
                    Err(e) if e.code() != Some("MOVED") => retry = true,
                    _ => {}
                }
                answers.push(format!("{}: {answer:?}", node.addr));
            }
            // Every node answered: the key is nowhere, no use asking again.
            !retry
        });
        match holder {
            Some(index) => &self.nodes[index],
            None => panic!("no node holds {key}: {answers:?}"),
        }
    }
}

impl Cluster {
    /// The nodes that are replicas now.
    pub fn replicas(&self) -> Vec<&RedisServer> {
        self.nodes
            .iter()
            .filter(|node| {
                let info: String = redis::cmd("INFO")
                    .arg("replication")
                    .query(&mut node.client())
                    .unwrap_or_default();
                info.contains("role:slave")
            })
            .collect()
    }

    /// Every shard's events stream, from the node holding each: the entries'
    /// field/value pairs, in the order of their ids.
    pub fn stream_entries(&self) -> Vec<Vec<(String, String)>> {
        let mut entries = Vec::new();
        for node in &self.nodes {
            let mut client = node.client();
            let keys: Vec<String> = redis::cmd("KEYS")
                .arg("session:e:*")
                .query(&mut client)
                .unwrap_or_default();
            for key in keys {
                let value: redis::Value = redis::cmd("XRANGE")
                    .arg(&key)
                    .arg("-")
                    .arg("+")
                    .query(&mut client)
                    .unwrap_or(redis::Value::Nil);
                for entry in super::assertions::array(&value) {
                    let parts = super::assertions::array(&entry);
                    let (ms, seq) = super::assertions::text(&parts[0])
                        .split_once('-')
                        .map(|(m, s)| {
                            (m.parse::<u64>().unwrap_or(0), s.parse::<u64>().unwrap_or(0))
                        })
                        .unwrap_or((0, 0));
                    let fields = super::assertions::array(&parts[1])
                        .chunks(2)
                        .map(|kv| {
                            (
                                super::assertions::text(&kv[0]),
                                super::assertions::text(&kv[1]),
                            )
                        })
                        .collect();
                    entries.push(((ms, seq), fields));
                }
            }
        }
        entries.sort_by_key(|(order, _)| *order);
        entries.into_iter().map(|(_, fields)| fields).collect()
    }

    /// Keys held by each master (DBSIZE), in node order.
    pub fn keys_per_node(&self) -> Vec<i64> {
        self.nodes
            .iter()
            .map(|node| redis::cmd("DBSIZE").query(&mut node.client()).unwrap_or(-1))
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
