//! A small EC2 instance metadata server (IMDSv2) for tests: no package
//! provides one, and moto's does not work with the Rust SDK.
//!
//! It keeps the rules a client must follow: a session token from
//! `PUT /latest/api/token` with the TTL header (400 without it), and 401 for
//! any read without a valid token. It serves `instance-id`,
//! `placement/region`, `instance-type`, `ami-id`, `instance-life-cycle`,
//! `tags/instance/*`, and `spot/instance-action` and
//! `events/recommendations/rebalance`, which answer 404 until a test
//! switches them on. It runs on plain threads, on a free loopback port.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::{Arc, Mutex, PoisonError};

/// What the server says about "its" instance.
#[derive(Debug, Clone)]
pub struct InstanceInfo {
    pub instance_id: String,
    pub region: String,
    pub instance_type: String,
    pub ami_id: String,
    /// `spot` or `on-demand`.
    pub lifecycle: String,
    pub tags: BTreeMap<String, String>,
    /// `ami-launch-index`: the instance's place in its launch request.
    pub launch_index: u32,
}

impl InstanceInfo {
    /// A spot instance with the given id and tags.
    pub fn spot(instance_id: &str, tags: &[(&str, &str)]) -> Self {
        Self {
            instance_id: instance_id.to_owned(),
            region: "us-east-1".to_owned(),
            instance_type: "c6i.large".to_owned(),
            ami_id: "ami-0123456789abcdef0".to_owned(),
            lifecycle: "spot".to_owned(),
            launch_index: 0,
            tags: tags
                .iter()
                .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
                .collect(),
        }
    }
}

#[derive(Debug)]
struct State {
    info: InstanceInfo,
    tokens: Vec<String>,
    spot_action: Option<String>,
    rebalance: Option<String>,
    requests: usize,
}

/// The running server; stops accepting when dropped.
pub struct Imds {
    addr: SocketAddr,
    state: Arc<Mutex<State>>,
}

impl Imds {
    /// Serves `info` on a free loopback port.
    pub fn start(info: InstanceInfo) -> Self {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind the IMDS port");
        let addr = listener.local_addr().expect("IMDS address");
        let state = Arc::new(Mutex::new(State {
            info,
            tokens: Vec::new(),
            spot_action: None,
            rebalance: None,
            requests: 0,
        }));
        let shared = state.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let shared = shared.clone();
                std::thread::spawn(move || serve(stream, &shared));
            }
        });
        Self { addr, state }
    }

    /// `http://127.0.0.1:PORT`, for `AWS_EC2_METADATA_SERVICE_ENDPOINT` or
    /// the agent's `--imds-endpoint`.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// From now on, `spot/instance-action` announces a termination in two
    /// minutes.
    pub fn announce_spot_interruption(&self) {
        self.lock().spot_action =
            Some(r#"{"action": "terminate", "time": "2026-11-24T23:59:00Z"}"#.to_owned());
    }

    /// From now on, a rebalance recommendation is announced.
    pub fn recommend_rebalance(&self) {
        self.lock().rebalance = Some(r#"{"noticeTime": "2026-11-24T23:50:00Z"}"#.to_owned());
    }

    /// Sets (or with `None` removes) one of the instance's tags, as EC2
    /// does when a tag of an instance with tags in its metadata changes.
    pub fn set_tag(&self, key: &str, value: Option<&str>) {
        let tags = &mut self.lock().info.tags;
        match value {
            Some(v) => tags.insert(key.to_owned(), v.to_owned()),
            None => tags.remove(key),
        };
    }

    /// Requests served so far.
    pub fn requests(&self) -> usize {
        self.lock().requests
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

fn serve(stream: TcpStream, state: &Mutex<State>) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut headers = BTreeMap::new();
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            let line = line.trim_end();
            if line.is_empty() {
                break;
            }
            if let Some((k, v)) = line.split_once(':') {
                headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_owned());
            }
        }
        let mut parts = request_line.split_whitespace();
        let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
        let (status, body) = answer(state, method, path, &headers);
        // A token carries its TTL back, as the real service does.
        let extra = match (
            method,
            status,
            headers.get("x-aws-ec2-metadata-token-ttl-seconds"),
        ) {
            ("PUT", 200, Some(ttl)) => format!("x-aws-ec2-metadata-token-ttl-seconds: {ttl}\r\n"),
            _ => String::new(),
        };
        let reason = match status {
            200 => "OK",
            400 => "Bad Request",
            401 => "Unauthorized",
            _ => "Not Found",
        };
        let response = format!(
            "HTTP/1.1 {status} {reason}\r\ncontent-type: text/plain\r\n{extra}content-length: {}\r\n\r\n{body}",
            body.len()
        );
        if writer.write_all(response.as_bytes()).is_err() {
            return;
        }
    }
}

fn answer(
    state: &Mutex<State>,
    method: &str,
    path: &str,
    headers: &BTreeMap<String, String>,
) -> (u16, String) {
    let mut s = state.lock().unwrap_or_else(PoisonError::into_inner);
    s.requests += 1;
    if method == "PUT" && path == "/latest/api/token" {
        if !headers.contains_key("x-aws-ec2-metadata-token-ttl-seconds") {
            return (400, String::new());
        }
        let token = format!("token-{}", s.tokens.len());
        s.tokens.push(token.clone());
        return (200, token);
    }
    let authorised = headers
        .get("x-aws-ec2-metadata-token")
        .is_some_and(|t| s.tokens.contains(t));
    if method != "GET" || !authorised {
        return (401, String::new());
    }
    let Some(key) = path.strip_prefix("/latest/meta-data/") else {
        return (404, String::new());
    };
    let info = &s.info;
    let found = match key {
        "instance-id" => Some(info.instance_id.clone()),
        "placement/region" => Some(info.region.clone()),
        "instance-type" => Some(info.instance_type.clone()),
        "ami-id" => Some(info.ami_id.clone()),
        "instance-life-cycle" => Some(info.lifecycle.clone()),
        "ami-launch-index" => Some(info.launch_index.to_string()),
        "tags/instance" | "tags/instance/" => {
            Some(info.tags.keys().cloned().collect::<Vec<_>>().join("\n"))
        }
        "spot/instance-action" => s.spot_action.clone(),
        "events/recommendations/rebalance" => s.rebalance.clone(),
        other => other
            .strip_prefix("tags/instance/")
            .and_then(|k| info.tags.get(k).cloned()),
    };
    match found {
        Some(body) => (200, body),
        None => (404, String::new()),
    }
}
