use crate::{free_port, wait_for};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;
use tempfile::TempDir;

/// nginx with the project's own template (`deploy/nginx`) in front of the
/// given replicas, on a free loopback port, in a prefix of its own.
pub struct Nginx {
    pub port: u16,
    child: Child,
    _dir: TempDir,
}

fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .ancestors()
        .nth(2)
        .expect("crates/test-support lives two levels below the workspace")
        .to_path_buf()
}

impl Nginx {
    pub fn start(bidders: &[SocketAddr], sse: &[SocketAddr], ws: &[SocketAddr]) -> Nginx {
        let upstreams = |addrs: &[SocketAddr]| {
            addrs
                .iter()
                .map(|addr| format!("server {addr};"))
                .collect::<Vec<_>>()
                .join(" ")
        };
        let dir = tempfile::Builder::new()
            .prefix("auction-nginx-")
            .tempdir()
            .expect("temporary directory");
        let port = free_port();
        let root = workspace_root();
        let rendered = Command::new(root.join("deploy/nginx/render.sh"))
            .env("BIDDER_UPSTREAMS", upstreams(bidders))
            .env("SSE_UPSTREAMS", upstreams(sse))
            .env("WS_UPSTREAMS", upstreams(ws))
            .env("LISTEN", format!("127.0.0.1:{port}"))
            .output()
            .expect("run deploy/nginx/render.sh");
        assert!(
            rendered.status.success(),
            "render.sh failed: {}",
            String::from_utf8_lossy(&rendered.stderr)
        );
        let conf = dir.path().join("nginx.conf");
        std::fs::write(&conf, rendered.stdout).expect("write nginx.conf");
        let prefix = format!("{}/", dir.path().display());
        let child = Command::new("nginx")
            .args(["-p", &prefix, "-c"])
            .arg(&conf)
            .args(["-e", "stderr", "-g", "daemon off;"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nginx is not installed (apt-get install nginx)");
        wait_for("nginx to listen", Duration::from_secs(10), || {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Nginx {
            port,
            child,
            _dir: dir,
        }
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // SIGTERM: the master stops its workers. (SIGKILL would kill only
        // the master and leave the workers running.)
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let deadline = std::time::Instant::now() + Duration::from_secs(5);
        while std::time::Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
