//! The file sink of `[audit] sink = "file:PATH"`: every committed record reaches the file as
//! the export's JSON line, in order; the file rotates and keeps `keep` rotated files (0600);
//! a sink whose directory disappears and comes back loses nothing and repeats nothing; a
//! node restart resumes from the cursor, and a cursor left behind the file (a crash between
//! fsync and cursor update) repeats nothing either. Also `palyra serve` with `[audit]`.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use palyra::audit::{FileSinkConfig, SinkHandle, SinkMonitor};
use palyra::testkit::{self, NodeInternals, TestNode, palyra_bin};
use palyra::wire::pb::identity::v1::{self as identity, identity_service_client::IdentityServiceClient};

async fn calls(node: &TestNode, n: usize) {
    let mut ids = IdentityServiceClient::new(node.operator().await);
    for _ in 0..n {
        ids.who_am_i(identity::WhoAmIRequest {}).await.unwrap();
    }
    node.node.audit().flush().await.unwrap();
}

/// Waits until the sink has delivered everything committed (at most 30 s).
async fn caught_up(node: &TestNode, monitor: &SinkMonitor) -> u64 {
    node.node.audit().flush().await.unwrap();
    let head = *node.node.audit().committed().borrow();
    for _ in 0..600 {
        let status = monitor.status();
        if status.delivered >= head {
            assert_eq!(status.lag, *node.node.audit().committed().borrow() - status.delivered);
            return status.delivered;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("the sink did not catch up to {head}: {:?}", monitor.status());
}

fn start(node: &TestNode, config: FileSinkConfig) -> SinkHandle {
    node.node.start_audit_sink(config).unwrap()
}

/// The JSON lines of `path` and its rotations, oldest first, as (sequence, line).
fn delivered(path: &Path) -> Vec<(u64, serde_json::Value)> {
    let mut files: Vec<PathBuf> = (1..100)
        .rev()
        .map(|n| PathBuf::from(format!("{}.{n}", path.display())))
        .filter(|p| p.exists())
        .collect();
    files.push(path.to_path_buf());
    let mut all = Vec::new();
    for file in files {
        let text = std::fs::read_to_string(&file).unwrap_or_default();
        assert!(text.is_empty() || text.ends_with('\n'), "{} ends with a torn line", file.display());
        for line in text.lines() {
            let value: serde_json::Value = serde_json::from_str(line).unwrap();
            all.push((value["sequence"].as_u64().unwrap(), value));
        }
    }
    all
}

/// The lines are exactly the records `first..=last` of the table, once each, in order.
async fn assert_exactly(node: &TestNode, lines: &[(u64, serde_json::Value)], first: u64, last: u64) {
    let sequences: Vec<u64> = lines.iter().map(|l| l.0).collect();
    assert_eq!(sequences, (first..=last).collect::<Vec<_>>(), "a gap, a repeat or disorder");
    let records = testkit::audit_records(node.operator().await).await;
    for (sequence, line) in lines {
        let record = records.iter().find(|r| r.sequence == *sequence).unwrap();
        assert_eq!(line["hash"], record.hash.as_str());
        assert_eq!(line["action"], record.action.as_str());
        assert_eq!(line["principal"], record.principal.as_str());
    }
}

#[cfg(unix)]
fn mode(path: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).unwrap().permissions().mode() & 0o777
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_record_reaches_the_file_in_order_and_rotation_keeps_n_files() {
    let node = TestNode::start().await;
    let dir = node.dir.path().join("sink");
    let path = dir.join("audit.jsonl");
    let config = FileSinkConfig { path: path.clone(), max_bytes: 4096, keep: 3 };
    let sink = start(&node, config);
    let monitor = sink.monitor();
    calls(&node, 150).await;
    let last = caught_up(&node, &monitor).await;
    assert_eq!(monitor.status().last_error, None);
    assert_eq!(monitor.delivered_through(), last);

    // Rotated more than three times: PATH, PATH.1..PATH.3, no PATH.4; each at most max_bytes.
    for n in 1..=3 {
        assert!(Path::new(&format!("{}.{n}", path.display())).exists(), "PATH.{n}");
    }
    assert!(!Path::new(&format!("{}.4", path.display())).exists());
    #[cfg(unix)]
    {
        assert_eq!(mode(&dir), 0o700);
        for name in ["audit.jsonl", "audit.jsonl.1", "audit.jsonl.2", "audit.jsonl.3"] {
            assert_eq!(mode(&dir.join(name)), 0o600, "{name}");
            assert!(std::fs::metadata(dir.join(name)).unwrap().len() <= 4096, "{name}");
        }
    }
    // What is kept is the newest records, contiguous up to the last one.
    let lines = delivered(&path);
    let first = lines[0].0;
    assert!(first > 1, "the oldest rotations were removed");
    assert_exactly(&node, &lines, first, last).await;
    sink.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sink_whose_directory_goes_away_loses_nothing_and_repeats_nothing() {
    let node = TestNode::start().await;
    let dir = node.dir.path().join("sink");
    let away = node.dir.path().join("sink-away");
    let path = dir.join("audit.jsonl");
    let sink = start(&node, FileSinkConfig::new(path.clone()));
    let monitor = sink.monitor();
    calls(&node, 20).await;
    let before = caught_up(&node, &monitor).await;

    // The directory disappears (an unmounted volume, an operator's mistake): records go on.
    std::fs::rename(&dir, &away).unwrap();
    calls(&node, 40).await;
    let mut failing = None;
    for _ in 0..200 {
        let status = monitor.status();
        if status.last_error.is_some() && status.lag > 0 {
            failing = Some(status);
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let failing = failing.expect("the sink reports its failure and its lag");
    assert!(failing.last_error.as_deref().unwrap_or_default().contains("missing"), "{failing:?}");
    calls(&node, 10).await;

    // It comes back: the sink catches up, in order, exactly once.
    std::fs::rename(&away, &dir).unwrap();
    let last = caught_up(&node, &monitor).await;
    assert_eq!(monitor.status().last_error, None);
    assert!(last >= before + 50);
    assert_exactly(&node, &delivered(&path), 1, last).await;
    sink.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_retention_never_prunes_a_record_the_sink_has_not_delivered() {
    use palyra::audit::Retention;
    let node = TestNode::start().await;
    let dir = node.dir.path().join("sink");
    let away = node.dir.path().join("sink-away");
    let path = dir.join("audit.jsonl");
    let sink = start(&node, FileSinkConfig::new(path.clone()));
    let monitor = sink.monitor();
    calls(&node, 10).await;
    let delivered_before = caught_up(&node, &monitor).await;

    // The sink stops delivering; the log grows; a prune keeping only 5 records runs.
    std::fs::rename(&dir, &away).unwrap();
    calls(&node, 30).await;
    let keep_five = Retention { records: Some(5), max_age: None };
    let report = node.node.audit().prune(keep_five, std::time::SystemTime::now()).await.unwrap();
    let stuck = monitor.status().delivered;
    assert!(stuck >= delivered_before);
    assert!(report.through <= stuck, "pruned through {} while the sink had {stuck}", report.through);

    // Back: it delivers everything, none lost to the prune.
    std::fs::rename(&away, &dir).unwrap();
    let last = caught_up(&node, &monitor).await;
    let sequences: Vec<u64> = delivered(&path).iter().map(|l| l.0).collect();
    assert_eq!(sequences, (1..=last).collect::<Vec<_>>(), "a record was lost (or repeated)");
    // And the next prune may go as far as the retention says.
    let report = node.node.audit().prune(keep_five, std::time::SystemTime::now()).await.unwrap();
    assert!(report.through > stuck, "{report:?}");
    sink.stop().await;
    node.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_resumes_from_the_cursor_and_a_stale_cursor_repeats_nothing() {
    let node = TestNode::start().await;
    let data = node.data_dir();
    let path = node.dir.path().join("sink").join("audit.jsonl");
    let name = FileSinkConfig::new(path.clone()).name();
    let sink = start(&node, FileSinkConfig::new(path.clone()));
    calls(&node, 30).await;
    let first_run = caught_up(&node, &sink.monitor()).await;
    sink.stop().await;
    let (dir, stopped) = node.stop().await;
    stopped.close_db();
    drop(stopped);

    // A crash after the fsync of a batch and before its cursor was saved: the cursor is behind
    // the file.
    let db = rusqlite::Connection::open(data.join("palyra.db")).unwrap();
    let cursor: i64 = db
        .query_row("SELECT delivered FROM audit_sink_cursor WHERE sink = ?1", [&name], |r| r.get(0))
        .unwrap();
    assert_eq!(cursor as u64, first_run);
    db.execute("UPDATE audit_sink_cursor SET delivered = 7 WHERE sink = ?1", [&name]).unwrap();
    drop(db);

    let node = TestNode::start_in(dir, &data).await;
    calls(&node, 25).await;
    let sink = start(&node, FileSinkConfig::new(path.clone()));
    let last = caught_up(&node, &sink.monitor()).await;
    assert!(last >= first_run + 25);
    assert_exactly(&node, &delivered(&path), 1, last).await;
    sink.stop().await;
    node.stop().await;
}

#[test]
fn serve_delivers_to_the_configured_sink_and_refuses_a_bad_one() {
    let bin = palyra_bin!();
    let tmp = palyra::testkit::private_tempdir();
    let data = tmp.path().join("node");
    let out = bin.run(&data, &["init"]);
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let sink = tmp.path().join("logs").join("audit.jsonl");
    let config =
        format!("[audit]\nsink = \"file:{}\"\nsink_max_bytes = 1048576\nsink_keep = 2\n", sink.display());
    std::fs::write(data.join("palyra.toml"), config).unwrap();
    let mut serving = bin.serve(&data, "warn");
    let mut lines = Vec::new();
    for _ in 0..600 {
        lines = std::fs::read_to_string(&sink).unwrap_or_default().lines().map(str::to_owned).collect();
        if !lines.is_empty() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    serving.kill();
    assert!(!lines.is_empty(), "serve delivers the audit log to its sink");
    let first: serde_json::Value = serde_json::from_str(&lines[0]).unwrap();
    assert_eq!(first["sequence"], 1);

    std::fs::write(data.join("palyra.toml"), "[audit]\nsink = \"file:relative.jsonl\"\n").unwrap();
    let out = bin
        .run(&data, &["serve", "--grpc-addr", "127.0.0.1:0", "--quic-addr", "127.0.0.1:0", "--no-console"]);
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("audit.sink"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A syslog daemon on a Unix datagram socket at `path`, collecting messages until stopped.
#[cfg(unix)]
struct Syslogd {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    messages: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    thread: std::thread::JoinHandle<()>,
}

#[cfg(unix)]
impl Syslogd {
    fn start(path: &Path, messages: std::sync::Arc<std::sync::Mutex<Vec<String>>>) -> Syslogd {
        let socket = std::os::unix::net::UnixDatagram::bind(path).unwrap();
        socket.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let thread = std::thread::spawn({
            let (stop, messages) = (stop.clone(), messages.clone());
            move || {
                let mut buffer = vec![0u8; 65_536];
                while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                    if let Ok(n) = socket.recv(&mut buffer) {
                        messages.lock().unwrap().push(String::from_utf8(buffer[..n].to_vec()).unwrap());
                    }
                }
            }
        });
        Syslogd { stop, messages, thread }
    }

    fn count(&self) -> usize {
        self.messages.lock().unwrap().len()
    }

    fn stop(self, path: &Path) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        self.thread.join().unwrap();
        std::fs::remove_file(path).unwrap();
    }
}

#[cfg(unix)]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_syslog_sink_sends_every_record_once_across_a_daemon_restart() {
    let node = TestNode::start().await;
    let socket = node.dir.path().join("log.sock");
    let messages = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
    let daemon = Syslogd::start(&socket, messages.clone());
    let sink =
        node.node.start_audit_sink(palyra::audit::SyslogSinkConfig { socket: socket.clone() }).unwrap();
    let monitor = sink.monitor();
    calls(&node, 20).await;
    let before = caught_up(&node, &monitor).await;
    while daemon.count() < before as usize {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // The daemon goes away; records go on and wait in the table.
    daemon.stop(&socket);
    calls(&node, 30).await;
    let mut failing = false;
    for _ in 0..200 {
        let status = monitor.status();
        if status.last_error.is_some() && status.lag > 0 {
            failing = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(failing, "the sink reports the daemon's absence: {:?}", monitor.status());
    let daemon = Syslogd::start(&socket, messages.clone());
    let last = caught_up(&node, &monitor).await;
    while daemon.count() < last as usize {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    sink.stop().await;
    daemon.stop(&socket);
    let lines: Vec<(u64, serde_json::Value)> = messages
        .lock()
        .unwrap()
        .iter()
        .map(|m| {
            assert!(m.starts_with("<86>1 ") || m.starts_with("<85>1 "), "{m}");
            let (_, json) =
                m.split_once(" palyra ").and_then(|(_, rest)| rest.split_once(" audit - ")).unwrap();
            let value: serde_json::Value = serde_json::from_str(json).unwrap();
            (value["sequence"].as_u64().unwrap(), value)
        })
        .collect();
    assert_exactly(&node, &lines, 1, last).await;
    node.stop().await;
}
