//! Bundle delivery over real HTTP on loopback: the README's way of serving a bundle
//! (`python3 -m http.server`), and a small server of our own that cuts connections, ignores or
//! honours ranges, and answers errors, for what a flaky network does to a download.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use collm_bundle::{ExportPlan, GraphOptions, Parts, WeightFormat};
use collm_fetch::{
    Backoff, BundleDownload, BundleUrl, FetchError, FetchOptions, Fetched, MARKER, Sha256Hex, fetch,
};

/// The tiny model exported and packed; returns (archive, its SHA-256).
fn tiny_archive(dir: &Path) -> (PathBuf, String) {
    let ckpt = collm_checkpoint::tiny::checkpoint(&Default::default(), 7).expect("tiny model");
    let plan = ExportPlan {
        split_layer: 2,
        exit_layers: vec![2],
        weights: WeightFormat::F32,
        graph: GraphOptions::default(),
    };
    let bundle = dir.join("tiny");
    collm_bundle::export(ckpt, &plan, &bundle, &mut |_| {}).expect("exports");
    let archive = dir.join("tiny.tar");
    let packed = collm_bundle::pack(&bundle, &archive).expect("packs");
    (archive, packed.sha256)
}

fn quick() -> FetchOptions {
    FetchOptions {
        backoff: Backoff {
            attempts: 4,
            first: Duration::from_millis(50),
            max: Duration::from_millis(200),
        },
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(2),
    }
}

fn download(url: &str, sha256: &str, dir: &Path) -> BundleDownload {
    BundleDownload {
        url: BundleUrl::parse(url).expect("url"),
        sha256: Sha256Hex::parse(sha256).expect("sha"),
        max_bytes: 1 << 30,
        dir: dir.join("pod-volume").join("bundle"),
    }
}

/// What the test server does with request number n (0-based).
#[derive(Clone, Copy, Debug)]
enum Behaviour {
    /// Serve, honouring `Range` when `ranges` is set.
    Serve {
        ranges: bool,
    },
    /// Send the headers and `fraction` of the body, then close the connection.
    CutAfter {
        fraction: f64,
        ranges: bool,
    },
    Status(u16),
}

struct TestServer {
    url: String,
    requests: Arc<Mutex<Vec<Option<String>>>>,
}

impl TestServer {
    /// Serves `body` at /b.tar; request n behaves as `plan[n]` (the last entry repeats).
    fn start(body: Vec<u8>, plan: Vec<Behaviour>) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        let url = format!("http://{}/b.tar", listener.local_addr().expect("addr"));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let seen = requests.clone();
        let body = Arc::new(body);
        let count = Arc::new(AtomicUsize::new(0));
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let n = count.fetch_add(1, Ordering::SeqCst);
                let behaviour = plan[n.min(plan.len() - 1)];
                let (body, seen) = (body.clone(), seen.clone());
                std::thread::spawn(move || serve_one(stream, &body, behaviour, &seen));
            }
        });
        Self { url, requests }
    }

    fn ranges_asked(&self) -> Vec<Option<String>> {
        self.requests.lock().expect("lock").clone()
    }
}

fn serve_one(
    mut stream: TcpStream,
    body: &[u8],
    behaviour: Behaviour,
    seen: &Mutex<Vec<Option<String>>>,
) {
    let mut reader = BufReader::new(stream.try_clone().expect("clone"));
    let mut range = None;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("range:") {
            range = Some(v.trim().to_string());
        }
    }
    seen.lock().expect("lock").push(range.clone());
    let start = range
        .as_deref()
        .and_then(|r| r.strip_prefix("bytes="))
        .and_then(|r| r.strip_suffix('-'))
        .and_then(|s| s.parse::<usize>().ok());
    let respond = |stream: &mut TcpStream, ranges: bool, fraction: f64| {
        let (status, from) = match start {
            Some(from) if ranges => ("206 Partial Content", from),
            _ => ("200 OK", 0),
        };
        let part = &body[from..];
        let mut head = format!("HTTP/1.1 {status}\r\nContent-Length: {}\r\n", part.len());
        if from > 0 {
            head.push_str(&format!(
                "Content-Range: bytes {from}-{}/{}\r\n",
                body.len() - 1,
                body.len()
            ));
        }
        head.push_str("Connection: close\r\n\r\n");
        let _ = stream.write_all(head.as_bytes());
        let sent = ((part.len() as f64) * fraction) as usize;
        let _ = stream.write_all(&part[..sent]);
        let _ = stream.flush();
    };
    match behaviour {
        Behaviour::Serve { ranges } => respond(&mut stream, ranges, 1.0),
        Behaviour::CutAfter { fraction, ranges } => respond(&mut stream, ranges, fraction),
        Behaviour::Status(code) => {
            let _ = stream.write_all(
                format!("HTTP/1.1 {code} Nope\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                    .as_bytes(),
            );
        }
    }
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

#[test]
fn a_bundle_served_by_python_http_server_is_fetched_verified_and_reused() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (archive, sha) = tiny_archive(dir.path());
    let port = collm_testkit::free_port();
    let mut server = PythonServer::start(archive.parent().expect("dir"), port);
    let url = format!("http://127.0.0.1:{port}/tiny.tar");
    let d = download(&url, &sha, dir.path());

    let mut log = Vec::new();
    let fetched = fetch(&d, Parts::Edge, quick(), &mut |l| log.push(l.to_string()))
        .unwrap_or_else(|e| panic!("{e}\n{}", server.stderr()));
    assert!(matches!(fetched, Fetched::Downloaded { resumed: false, .. }), "{fetched:?}");
    collm_bundle::Bundle::open(&d.dir, Parts::All).expect("the bundle opens");
    assert_eq!(std::fs::read_to_string(d.dir.join(MARKER)).expect("marker"), sha);
    let leftovers: Vec<_> = std::fs::read_dir(d.dir.parent().expect("parent").join(".fetch"))
        .expect("work dir")
        .flatten()
        .collect();
    assert!(leftovers.is_empty(), "the archive is deleted once unpacked: {leftovers:?}");

    // A restarted init container finds the bundle and downloads nothing.
    server.stop();
    assert_eq!(fetch(&d, Parts::Edge, quick(), &mut |_| {}).expect("no-op"), Fetched::AlreadyThere);
}

#[test]
fn a_wrong_sha256_leaves_no_bundle_and_names_the_url_and_both_digests() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (archive, sha) = tiny_archive(dir.path());
    let server = TestServer::start(
        std::fs::read(&archive).expect("read"),
        vec![Behaviour::Serve { ranges: true }],
    );
    let wrong = "0".repeat(64);
    let d = download(&server.url, &wrong, dir.path());
    let err = fetch(&d, Parts::Cloud, quick(), &mut |_| {}).expect_err("mismatch");
    assert!(matches!(err, FetchError::Checksum { .. }), "{err:?}");
    let text = err.to_string();
    assert!(text.contains(&server.url) && text.contains(&sha) && text.contains(&wrong), "{text}");
    assert!(!d.dir.exists(), "no bundle directory after a mismatch");

    // Fixed digest: the same directory gets the bundle.
    let fixed = download(&server.url, &sha, dir.path());
    fetch(&fixed, Parts::Cloud, quick(), &mut |_| {}).expect("fetches");
    collm_bundle::Bundle::open(&fixed.dir, Parts::Cloud).expect("opens");
}

#[test]
fn a_cut_download_resumes_from_where_it_stopped_when_the_server_allows_ranges() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (archive, sha) = tiny_archive(dir.path());
    let body = std::fs::read(&archive).expect("read");
    let server = TestServer::start(
        body.clone(),
        vec![
            Behaviour::CutAfter { fraction: 0.4, ranges: true },
            Behaviour::Status(503),
            Behaviour::CutAfter { fraction: 0.5, ranges: true },
            Behaviour::Serve { ranges: true },
        ],
    );
    let d = download(&server.url, &sha, dir.path());
    let fetched = fetch(&d, Parts::Edge, quick(), &mut |_| {}).expect("fetches after retries");
    assert_eq!(
        fetched,
        Fetched::Downloaded { bytes: body.len() as u64, attempts: 4, resumed: true }
    );
    let ranges = server.ranges_asked();
    let cut = (body.len() as f64 * 0.4) as usize;
    assert_eq!(ranges[0], None, "the first request asks for everything");
    assert_eq!(ranges[1].as_deref(), Some(format!("bytes={cut}-").as_str()), "{ranges:?}");
    assert!(ranges[3].is_some(), "the last request resumes: {ranges:?}");
    collm_bundle::Bundle::open(&d.dir, Parts::All).expect("opens");
}

#[test]
fn a_server_without_ranges_gets_a_fresh_download_and_the_hash_still_holds() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (archive, sha) = tiny_archive(dir.path());
    let server = TestServer::start(
        std::fs::read(&archive).expect("read"),
        vec![
            Behaviour::CutAfter { fraction: 0.7, ranges: false },
            Behaviour::Serve { ranges: false },
        ],
    );
    let d = download(&server.url, &sha, dir.path());
    fetch(&d, Parts::Edge, quick(), &mut |_| {}).expect("fetches");
    collm_bundle::Bundle::open(&d.dir, Parts::All).expect("opens");
}

#[test]
fn unreachable_missing_or_oversized_archives_fail_with_a_reason() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (archive, sha) = tiny_archive(dir.path());
    let body = std::fs::read(&archive).expect("read");

    let dead = format!("http://127.0.0.1:{}/b.tar", collm_testkit::free_port());
    let err = fetch(&download(&dead, &sha, dir.path()), Parts::Edge, quick(), &mut |_| {})
        .expect_err("unreachable");
    assert!(matches!(err, FetchError::Unreachable { attempts: 4, .. }), "{err:?}");
    assert!(err.to_string().contains(&dead), "{err}");

    let missing = TestServer::start(body.clone(), vec![Behaviour::Status(404)]);
    let err = fetch(&download(&missing.url, &sha, dir.path()), Parts::Edge, quick(), &mut |_| {})
        .expect_err("404");
    assert!(err.to_string().contains("HTTP 404"), "{err}");
    assert_eq!(missing.ranges_asked().len(), 1, "a 404 is not retried");

    let server = TestServer::start(body.clone(), vec![Behaviour::Serve { ranges: true }]);
    let mut small = download(&server.url, &sha, dir.path());
    small.max_bytes = 1000;
    let err = fetch(&small, Parts::Edge, quick(), &mut |_| {}).expect_err("too large");
    assert!(err.to_string().contains("larger than the limit of 1000 bytes"), "{err}");
}

#[test]
fn an_archive_whose_bundle_is_corrupt_is_refused_after_the_checksum_matches() {
    let dir = tempfile::tempdir().expect("tempdir");
    let bundle_dir = dir.path().join("b");
    // Packed by hand from a bundle whose tokenizer was changed after export.
    let (archive, _) = tiny_archive(dir.path());
    collm_bundle::unpack(&archive, &bundle_dir, Default::default()).expect("unpack");
    std::fs::write(bundle_dir.join("tokenizer.json"), "{}").expect("corrupt");
    let bad = dir.path().join("bad.tar");
    {
        let mut tar = tar::Builder::new(std::fs::File::create(&bad).expect("create"));
        tar.append_dir_all(".", &bundle_dir).expect("append");
        tar.finish().expect("finish");
    }
    let sha = collm_bundle::sha256_file(&bad).expect("hash");
    let server = TestServer::start(
        std::fs::read(&bad).expect("read"),
        vec![Behaviour::Serve { ranges: true }],
    );
    let d = download(&server.url, &sha, dir.path());
    let err = fetch(&d, Parts::Edge, quick(), &mut |_| {}).expect_err("corrupt bundle");
    assert!(matches!(err, FetchError::Bundle { .. }), "{err:?}");
    assert!(err.to_string().contains("tokenizer.json"), "{err}");
    assert!(!d.dir.exists());
}

/// `python3 -m http.server`, as the README serves bundles.
struct PythonServer {
    child: Option<Child>,
    log: PathBuf,
}

impl PythonServer {
    fn start(dir: &Path, port: u16) -> Self {
        let log = dir.join("http.server.log");
        let child = Command::new("python3")
            .args(["-m", "http.server", "--bind", "127.0.0.1", &port.to_string()])
            .current_dir(dir)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).expect("log"))
            .spawn()
            .expect("python3 runs");
        let up = collm_testkit::wait_until(Duration::from_secs(20), || {
            TcpStream::connect(("127.0.0.1", port)).is_ok()
        });
        assert!(up, "python3 -m http.server did not listen on {port}");
        Self { child: Some(child), log }
    }

    fn stderr(&self) -> String {
        let mut text = String::new();
        let _ = std::fs::File::open(&self.log).and_then(|mut f| f.read_to_string(&mut text));
        text
    }

    fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PythonServer {
    fn drop(&mut self) {
        self.stop();
    }
}
