//! A Redis Sentinel deployment on loopback: a master, one replica and three
//! real `redis-sentinel` processes watching them as `mymaster`, each on a
//! free port, killed on drop.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::polling::wait_until;
use super::redis_server::{RedisServer, free_port};
use super::tools::TempDir;

const REDIS_SENTINEL: &str = "/usr/bin/redis-sentinel";
pub const MASTER_NAME: &str = "mymaster";

pub struct Sentinels {
    pub master: RedisServer,
    pub replica: RedisServer,
    sentinels: Vec<(Child, u16)>,
    _dir: TempDir,
}

impl Sentinels {
    pub fn start() -> Sentinels {
        let master = RedisServer::start(&[]);
        let master_port = master.port().to_string();
        let replica = RedisServer::start(&["--replicaof", "127.0.0.1", &master_port]);
        let synced = wait_until(Duration::from_secs(15), || {
            let info: String = redis::cmd("INFO")
                .arg("replication")
                .query(&mut replica.client())
                .unwrap_or_default();
            info.contains("master_link_status:up")
        });
        assert!(synced, "the replica never synced with the master");
        let dir = TempDir::new("sentinel");
        let mut sentinels = Vec::new();
        for i in 0..3 {
            let port = free_port();
            let conf = dir.0.join(format!("sentinel-{i}.conf"));
            std::fs::write(
                &conf,
                format!(
                    "port {port}\nbind 127.0.0.1\ndir {}\n\
                     sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                     sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                     sentinel failover-timeout {MASTER_NAME} 5000\n",
                    dir.0.display()
                ),
            )
            .expect("write the sentinel config");
            let child = Command::new(REDIS_SENTINEL)
                .arg(&conf)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn redis-sentinel");
            sentinels.push((child, port));
        }
        let set = Sentinels {
            master,
            replica,
            sentinels,
            _dir: dir,
        };
        // Every sentinel knows the master and its replica (a failover needs
        // the replica) and the other sentinels (the quorum).
        let ready = wait_until(Duration::from_secs(20), || {
            set.sentinels.iter().all(|(_, port)| {
                let Ok(mut c) = redis::Client::open(format!("redis://127.0.0.1:{port}"))
                    .and_then(|c| c.get_connection())
                else {
                    return false;
                };
                let replicas: Vec<redis::Value> = redis::cmd("SENTINEL")
                    .arg("REPLICAS")
                    .arg(MASTER_NAME)
                    .query(&mut c)
                    .unwrap_or_default();
                let others: Vec<redis::Value> = redis::cmd("SENTINEL")
                    .arg("SENTINELS")
                    .arg(MASTER_NAME)
                    .query(&mut c)
                    .unwrap_or_default();
                !replicas.is_empty() && others.len() == 2
            })
        });
        assert!(ready, "the sentinels never saw the replica and each other");
        set
    }

    /// `redis+sentinel://...` naming every sentinel and the master.
    pub fn url(&self) -> String {
        let hosts: Vec<String> = self
            .sentinels
            .iter()
            .map(|(_, port)| format!("127.0.0.1:{port}"))
            .collect();
        format!("redis+sentinel://{}/{MASTER_NAME}", hosts.join(","))
    }

    /// The master's port as the sentinels report it.
    pub fn master_port(&self) -> Option<u16> {
        let (_, port) = self.sentinels.first()?;
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .ok()?
            .get_connection()
            .ok()?;
        let addr: Vec<String> = redis::cmd("SENTINEL")
            .arg("GET-MASTER-ADDR-BY-NAME")
            .arg(MASTER_NAME)
            .query(&mut c)
            .ok()?;
        addr.get(1)?.parse().ok()
    }

    /// SENTINEL FAILOVER, then waits until the replica is the master.
    pub fn failover(&self) {
        let (_, port) = &self.sentinels[0];
        let mut c = redis::Client::open(format!("redis://127.0.0.1:{port}"))
            .unwrap()
            .get_connection()
            .unwrap();
        let _: () = redis::cmd("SENTINEL")
            .arg("FAILOVER")
            .arg(MASTER_NAME)
            .query(&mut c)
            .expect("SENTINEL FAILOVER");
        let promoted = wait_until(Duration::from_secs(20), || {
            self.master_port() == Some(self.replica.port())
        });
        assert!(promoted, "the replica was never promoted");
    }
}

impl Drop for Sentinels {
    fn drop(&mut self) {
        for (child, _) in &mut self.sentinels {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
