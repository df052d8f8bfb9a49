//! The node's Prometheus metrics (`palyra serve --metrics-addr`): one [`Metrics`] handle, built
//! once by `node.rs` and cloned into the gate, the edges and the services that count something.
//!
//! Off unless asked for: a disabled handle ([`Metrics::disabled`]) holds nothing and every
//! call on it is a branch on `None`. When on, the hot path (a gRPC call) touches no lock and
//! allocates nothing: each known method's counters are resolved once, the status code picks one
//! of 17 pre-made counters by index, and a decision is one atomic add. Labels come only from
//! closed sets (a known method name or `other`, a gRPC code name, `allow`/`deny`, an outcome
//! name): no label ever carries a scope, key, device name or value.
//!
//! Values that are a property of the node's state rather than a count of events (stored
//! secrets, database size, certificate expiry) are set just before each scrape with
//! [`Metrics::set`]; a number another part keeps for itself is exposed with
//! [`Metrics::gauge_fn`], read at scrape time.

use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, OnceLock, PoisonError};
use std::time::Instant;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeMetric};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// The `Content-Type` of [`Metrics::encode`]'s text (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// The name the audit sink's lag will be exposed under ([`Metrics::gauge_fn`]; the sink
/// registers it when it is wired in).
#[cfg_attr(not(feature = "testkit"), allow(dead_code))]
pub const AUDIT_SINK_LAG: &str = "palyra_audit_sink_lag_records";

/// The gRPC status codes, by number (0..=16): the `code` label's closed set.
const CODES: [&str; 17] = [
    "OK",
    "CANCELLED",
    "UNKNOWN",
    "INVALID_ARGUMENT",
    "DEADLINE_EXCEEDED",
    "NOT_FOUND",
    "ALREADY_EXISTS",
    "PERMISSION_DENIED",
    "RESOURCE_EXHAUSTED",
    "FAILED_PRECONDITION",
    "ABORTED",
    "OUT_OF_RANGE",
    "UNIMPLEMENTED",
    "INTERNAL",
    "UNAVAILABLE",
    "DATA_LOSS",
    "UNAUTHENTICATED",
];

/// The `method` label of a method the node does not serve.
const OTHER: &str = "other";

/// Latency buckets of `palyra_rpc_duration_seconds`, 250 µs to 10 s.
const DURATION_BUCKETS: [f64; 14] =
    [0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0];

/// How a pairing attempt ended (the `outcome` label of `palyra_pairing_attempts_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum PairingOutcome {
    /// A device was paired (the operator approved its request, or it enrolled with a key).
    Paired,
    /// A handshake finished; its request waits for the operator's approval.
    Pending,
    /// A wrong PIN or enrollment secret (the handshake's confirmation failed).
    Failed,
    /// A handshake was refused at its start or finish: the code or key unknown, used up,
    /// expired or revoked, the session expired, a malformed message, a rate limit.
    Refused,
    /// The operator rejected the request.
    Rejected,
}

impl PairingOutcome {
    const ALL: [PairingOutcome; 5] = [
        PairingOutcome::Paired,
        PairingOutcome::Pending,
        PairingOutcome::Failed,
        PairingOutcome::Refused,
        PairingOutcome::Rejected,
    ];

    fn label(self) -> &'static str {
        match self {
            PairingOutcome::Paired => "paired",
            PairingOutcome::Pending => "pending",
            PairingOutcome::Failed => "failed",
            PairingOutcome::Refused => "refused",
            PairingOutcome::Rejected => "rejected",
        }
    }
}

/// A value of the node's state, set before each scrape ([`Metrics::set`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum StateGauge {
    /// `palyra_secrets`: live (not deleted) secrets.
    Secrets,
    /// `palyra_db_size_bytes`: the database file and its write-ahead log.
    DbSizeBytes,
    /// `palyra_audit_records_total`: the audit chain's last sequence (records ever written).
    AuditRecords,
    /// `palyra_server_certificate_expiry_timestamp_seconds`: the node's server certificate.
    ServerCertificateExpiry,
    /// `palyra_device_certificate_expiry_timestamp_seconds`: the soonest-expiring certificate
    /// of an active device (absent with no device).
    DeviceCertificateExpiry,
    /// `palyra_event_subscribers`: live event subscriptions (QUIC `node.stream_events`, gRPC
    /// WatchSecrets, the console).
    EventSubscribers,
    /// `palyra_event_subscriber_lagged_total`: times a live subscriber fell behind the live
    /// buffer (and caught up from the database).
    EventLagged,
}

impl StateGauge {
    const ALL: [StateGauge; 7] = [
        StateGauge::Secrets,
        StateGauge::DbSizeBytes,
        StateGauge::AuditRecords,
        StateGauge::ServerCertificateExpiry,
        StateGauge::DeviceCertificateExpiry,
        StateGauge::EventSubscribers,
        StateGauge::EventLagged,
    ];

    /// Name (without a counter's `_total`), help, type.
    fn describe(self) -> (&'static str, &'static str, MetricType) {
        match self {
            StateGauge::Secrets => ("palyra_secrets", "Live secrets in the vault", MetricType::Gauge),
            StateGauge::DbSizeBytes => {
                ("palyra_db_size_bytes", "Size of palyra.db and its write-ahead log", MetricType::Gauge)
            }
            StateGauge::AuditRecords => {
                ("palyra_audit_records", "Audit records written (the chain's last sequence)", MetricType::Counter)
            }
            StateGauge::ServerCertificateExpiry => (
                "palyra_server_certificate_expiry_timestamp_seconds",
                "When the node's server certificate expires (unix seconds)",
                MetricType::Gauge,
            ),
            StateGauge::DeviceCertificateExpiry => (
                "palyra_device_certificate_expiry_timestamp_seconds",
                "When the soonest-expiring certificate of an active device expires (unix seconds)",
                MetricType::Gauge,
            ),
            StateGauge::EventSubscribers => {
                ("palyra_event_subscribers", "Live event subscriptions", MetricType::Gauge)
            }
            StateGauge::EventLagged => (
                "palyra_event_subscriber_lagged",
                "Times a live event subscriber fell behind the live buffer and caught up from the database",
                MetricType::Counter,
            ),
        }
    }
}

/// A number read at scrape time.
pub type GaugeFn = Arc<dyn Fn() -> i64 + Send + Sync>;

/// Why [`Metrics::gauge_fn`] refused a name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum MetricNameError {
    /// Not `palyra_` followed by lower-case letters, digits and underscores.
    #[error("a metric name is palyra_ followed by [a-z0-9_]")]
    Invalid,
    /// Already registered.
    #[error("the metric is already registered")]
    Taken,
}

/// Labels from closed sets: `'static` strings, never text from a request.
type Labels<const N: usize> = [(&'static str, &'static str); N];
/// `palyra_rpc_requests_total`, by method and code.
type Requests = Family<Labels<2>, Counter>;
/// `palyra_rpc_duration_seconds`, by method.
type Histograms = Family<Labels<1>, Histogram, fn() -> Histogram>;

/// The series of one gRPC method: a counter per status code and its latency, each made on
/// its first use (a scrape shows only what happened) and then reached without a lock.
#[derive(Debug)]
struct MethodMetrics {
    method: &'static str,
    codes: [OnceLock<Counter>; 17],
    duration: OnceLock<Histogram>,
    requests: Requests,
    durations: Histograms,
}

impl MethodMetrics {
    fn new(
        method: &'static str,
        requests: &Requests,
        durations: &Histograms,
    ) -> Self {
        MethodMetrics {
            method,
            codes: Default::default(),
            duration: OnceLock::new(),
            requests: requests.clone(),
            durations: durations.clone(),
        }
    }

    fn record(&self, code: usize, seconds: f64) {
        let method = self.method;
        self.codes[code]
            .get_or_init(|| self.requests.get_or_create(&[("method", method), ("code", CODES[code])]).clone())
            .inc();
        self.duration
            .get_or_init(|| self.durations.get_or_create(&[("method", method)]).clone())
            .observe(seconds);
    }
}

/// Values set before a scrape and callbacks read during it.
#[derive(Default)]
struct ScrapeValues {
    state: Mutex<HashMap<&'static str, (i64, &'static str, MetricType)>>,
    callbacks: Mutex<Vec<(String, String, GaugeFn)>>,
}

impl fmt::Debug for ScrapeValues {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ScrapeValues").finish_non_exhaustive()
    }
}

impl Collector for ScrapeValues {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        let state: Vec<_> = {
            let state = self.state.lock().unwrap_or_else(PoisonError::into_inner);
            StateGauge::ALL.iter().filter_map(|g| state.get(g.describe().0).map(|v| (g.describe().0, *v))).collect()
        };
        for (name, (value, help, kind)) in state {
            let metric = encoder.encode_descriptor(name, help, None, kind)?;
            if kind == MetricType::Counter {
                ConstCounter::new(value.max(0) as u64).encode(metric)?;
            } else {
                ConstGauge::new(value).encode(metric)?;
            }
        }
        let callbacks: Vec<_> = self.callbacks.lock().unwrap_or_else(PoisonError::into_inner).clone();
        for (name, help, read) in callbacks {
            ConstGauge::new(read()).encode(encoder.encode_descriptor(&name, &help, None, MetricType::Gauge)?)?;
        }
        Ok(())
    }
}

struct Inner {
    registry: Mutex<Registry>,
    methods: HashMap<&'static str, MethodMetrics>,
    other: MethodMetrics,
    decisions: [Counter; 2],
    quic_connections: Gauge,
    quic_streams: Gauge,
    quic_streams_total: Counter,
    pairing: [Counter; 5],
    audit_verify: [Counter; 2],
    scrape: Arc<ScrapeValues>,
}

impl fmt::Debug for Inner {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metrics").field("methods", &self.methods.len()).finish_non_exhaustive()
    }
}

/// The node's metrics; cheap to clone (clones share everything). See the module doc.
#[derive(Debug, Clone, Default)]
pub struct Metrics {
    inner: Option<Arc<Inner>>,
}

impl Metrics {
    /// Metrics that record nothing (the node without `--metrics-addr`).
    pub fn disabled() -> Self {
        Metrics { inner: None }
    }

    /// Metrics for a node serving the gRPC `methods` (full names without the leading slash;
    /// any other method is counted as `other`), `version` in `palyra_build_info`.
    pub fn new(methods: &[&'static str], version: &'static str) -> Self {
        let mut registry = Registry::default();
        let requests = Requests::default();
        registry.register("palyra_rpc_requests", "gRPC requests by method and status code", requests.clone());
        let durations: Histograms = Family::new_with_constructor(|| Histogram::new(DURATION_BUCKETS));
        registry.register(
            "palyra_rpc_duration_seconds",
            "gRPC request latency until the response's headers, by method",
            durations.clone(),
        );
        let decisions_family = Family::<Labels<1>, Counter>::default();
        registry.register(
            "palyra_authz_decisions",
            "Authorization decisions (method gate and resource checks, every edge)",
            decisions_family.clone(),
        );
        let decisions = ["allow", "deny"].map(|d| decisions_family.get_or_create(&[("decision", d)]).clone());
        let quic_connections = Gauge::default();
        registry.register("palyra_quic_connections", "Open QUIC connections", quic_connections.clone());
        let quic_streams = Gauge::default();
        registry.register("palyra_quic_streams", "Open QUIC streams", quic_streams.clone());
        let quic_streams_total = Counter::default();
        registry.register("palyra_quic_streams_opened", "QUIC streams accepted", quic_streams_total.clone());
        let pairing_family = Family::<Labels<1>, Counter>::default();
        registry.register("palyra_pairing_attempts", "Pairing attempts by outcome", pairing_family.clone());
        let pairing = PairingOutcome::ALL.map(|o| pairing_family.get_or_create(&[("outcome", o.label())]).clone());
        let verify_family = Family::<Labels<1>, Counter>::default();
        registry.register("palyra_audit_verify", "Audit log verifications by result", verify_family.clone());
        let audit_verify = ["ok", "broken"].map(|r| verify_family.get_or_create(&[("result", r)]).clone());
        let build = Family::<Labels<1>, Gauge>::default();
        build.get_or_create(&[("version", version)]).set(1);
        registry.register("palyra_build_info", "The running palyra's version", build);
        let scrape = Arc::new(ScrapeValues::default());
        registry.register_collector(Box::new(Arc::clone(&scrape)));
        let methods =
            methods.iter().map(|&m| (m, MethodMetrics::new(m, &requests, &durations))).collect::<HashMap<_, _>>();
        let other = MethodMetrics::new(OTHER, &requests, &durations);
        Metrics {
            inner: Some(Arc::new(Inner {
                registry: Mutex::new(registry),
                methods,
                other,
                decisions,
                quic_connections,
                quic_streams,
                quic_streams_total,
                pairing,
                audit_verify,
                scrape,
            })),
        }
    }

    /// Whether these metrics record anything.
    pub fn is_enabled(&self) -> bool {
        self.inner.is_some()
    }

    /// A gRPC call to `path` (`/package.Service/Method`) starts; [`RpcTimer::finish`] it with
    /// its status code.
    pub fn rpc_started(&self, path: &str) -> RpcTimer<'_> {
        RpcTimer {
            method: self.inner.as_deref().map(|inner| {
                let name = path.strip_prefix('/').unwrap_or(path);
                (inner.methods.get(name).unwrap_or(&inner.other), Instant::now())
            }),
        }
    }

    /// An authorization decision.
    pub fn decision(&self, allow: bool) {
        if let Some(inner) = &self.inner {
            inner.decisions[usize::from(!allow)].inc();
        }
    }

    /// A QUIC connection opened; it counts until the guard drops.
    pub fn quic_connection(&self) -> GaugeGuard {
        GaugeGuard::new(self.inner.as_ref().map(|i| i.quic_connections.clone()))
    }

    /// A QUIC stream opened; it counts until the guard drops.
    pub fn quic_stream(&self) -> GaugeGuard {
        if let Some(inner) = &self.inner {
            inner.quic_streams_total.inc();
        }
        GaugeGuard::new(self.inner.as_ref().map(|i| i.quic_streams.clone()))
    }

    /// A pairing attempt ended with `outcome`.
    pub fn pairing(&self, outcome: PairingOutcome) {
        if let Some(inner) = &self.inner {
            let i = PairingOutcome::ALL.iter().position(|o| *o == outcome).unwrap_or(0);
            inner.pairing[i].inc();
        }
    }

    /// An audit log verification ended (`ok`: the chain checked out).
    pub fn audit_verified(&self, ok: bool) {
        if let Some(inner) = &self.inner {
            inner.audit_verify[usize::from(!ok)].inc();
        }
    }

    /// Sets a value of the node's state (shown from the next scrape on).
    pub fn set(&self, gauge: StateGauge, value: i64) {
        if let Some(inner) = &self.inner {
            let (name, help, kind) = gauge.describe();
            inner.scrape.state.lock().unwrap_or_else(PoisonError::into_inner).insert(name, (value, help, kind));
        }
    }

    /// Forgets a value of the node's state (the series disappears).
    pub fn clear(&self, gauge: StateGauge) {
        if let Some(inner) = &self.inner {
            inner.scrape.state.lock().unwrap_or_else(PoisonError::into_inner).remove(gauge.describe().0);
        }
    }

    /// Exposes `read()` as the gauge `name` (e.g. [`AUDIT_SINK_LAG`]), called at every scrape
    /// (keep it cheap: an atomic load). On disabled metrics it is accepted and never called.
    pub fn gauge_fn(&self, name: &str, help: &str, read: GaugeFn) -> Result<(), MetricNameError> {
        let valid = name.strip_prefix("palyra_").is_some_and(|rest| {
            !rest.is_empty() && rest.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_')
        });
        if !valid || name.len() > 100 {
            return Err(MetricNameError::Invalid);
        }
        let Some(inner) = &self.inner else { return Ok(()) };
        let builtin = StateGauge::ALL.iter().any(|g| name.starts_with(g.describe().0));
        let mut callbacks = inner.scrape.callbacks.lock().unwrap_or_else(PoisonError::into_inner);
        if builtin || callbacks.iter().any(|(n, _, _)| n == name) {
            return Err(MetricNameError::Taken);
        }
        // Help text is the caller's own constant; keep it one line.
        callbacks.push((name.to_owned(), help.replace(['\n', '\r'], " "), read));
        Ok(())
    }

    /// Every metric in the Prometheus text format ([`CONTENT_TYPE`]); `None` when disabled.
    pub fn encode(&self) -> Option<String> {
        let inner = self.inner.as_ref()?;
        let mut text = String::with_capacity(16 * 1024);
        let registry = inner.registry.lock().unwrap_or_else(PoisonError::into_inner);
        match prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
            Ok(()) => Some(text),
            Err(_) => None,
        }
    }
}

/// `t` in whole seconds since the epoch (a timestamp gauge's value); `None` before 1970.
pub fn unix_seconds(t: std::time::SystemTime) -> Option<i64> {
    t.duration_since(std::time::SystemTime::UNIX_EPOCH).ok().and_then(|d| i64::try_from(d.as_secs()).ok())
}

/// A gRPC call being timed ([`Metrics::rpc_started`]).
#[derive(Debug)]
#[must_use]
pub struct RpcTimer<'a> {
    method: Option<(&'a MethodMetrics, Instant)>,
}

impl RpcTimer<'_> {
    /// The call answered with gRPC status `code` (an unknown number counts as `UNKNOWN`).
    pub fn finish(self, code: i32) {
        if let Some((method, started)) = self.method {
            let code = usize::try_from(code).ok().filter(|c| *c < CODES.len()).unwrap_or(2);
            method.record(code, started.elapsed().as_secs_f64());
        }
    }
}

/// Counts one open thing (a connection, a stream) until dropped.
#[derive(Debug)]
pub struct GaugeGuard(Option<Gauge>);

impl GaugeGuard {
    fn new(gauge: Option<Gauge>) -> Self {
        if let Some(g) = &gauge {
            g.inc();
        }
        GaugeGuard(gauge)
    }
}

impl Drop for GaugeGuard {
    fn drop(&mut self) {
        if let Some(g) = &self.0 {
            g.dec();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const METHODS: &[&str] = &["palyra.vault.v1.VaultService/GetSecret", "grpc.health.v1.Health/Check"];

    #[test]
    fn calls_count_by_known_method_and_code_and_anything_else_is_other() {
        let metrics = Metrics::new(METHODS, "9.9.9");
        metrics.rpc_started("/palyra.vault.v1.VaultService/GetSecret").finish(0);
        metrics.rpc_started("/palyra.vault.v1.VaultService/GetSecret").finish(7);
        metrics.rpc_started("/evil.Service/my-secret-scope").finish(12);
        metrics.rpc_started("/palyra.vault.v1.VaultService/GetSecret").finish(99);
        metrics.decision(false);
        metrics.pairing(PairingOutcome::Failed);
        metrics.pairing(PairingOutcome::Failed);
        metrics.audit_verified(true);
        let text = metrics.encode().unwrap_or_default();
        assert!(text.contains(r#"palyra_pairing_attempts_total{outcome="failed"} 2"#), "{text}");
        assert!(text.contains(r#"palyra_pairing_attempts_total{outcome="paired"} 0"#));
        assert!(text.contains(r#"palyra_audit_verify_total{result="ok"} 1"#));
        assert!(text.contains(r#"palyra_rpc_requests_total{method="palyra.vault.v1.VaultService/GetSecret",code="OK"} 1"#), "{text}");
        assert!(text.contains(r#"palyra_rpc_requests_total{method="palyra.vault.v1.VaultService/GetSecret",code="PERMISSION_DENIED"} 1"#));
        assert!(text.contains(r#"palyra_rpc_requests_total{method="palyra.vault.v1.VaultService/GetSecret",code="UNKNOWN"} 1"#));
        assert!(text.contains(r#"palyra_rpc_requests_total{method="other",code="UNIMPLEMENTED"} 1"#));
        assert!(text.contains(r#"palyra_authz_decisions_total{decision="deny"} 1"#));
        assert!(text.contains(r#"palyra_build_info{version="9.9.9"} 1"#));
        assert!(text.contains("palyra_rpc_duration_seconds_bucket{"));
        assert!(!text.contains("my-secret-scope"));
    }

    #[test]
    fn state_values_and_callbacks_show_at_scrape_time() {
        let metrics = Metrics::new(METHODS, "1");
        metrics.set(StateGauge::Secrets, 3);
        metrics.set(StateGauge::AuditRecords, 42);
        let lag = Arc::new(std::sync::atomic::AtomicI64::new(5));
        let read = Arc::clone(&lag);
        metrics.gauge_fn(AUDIT_SINK_LAG, "records not yet in the sink", Arc::new(move || read.load(std::sync::atomic::Ordering::Relaxed))).unwrap_or_default();
        assert_eq!(metrics.gauge_fn(AUDIT_SINK_LAG, "again", Arc::new(|| 0)), Err(MetricNameError::Taken));
        assert_eq!(metrics.gauge_fn("palyra_Bad name", "", Arc::new(|| 0)), Err(MetricNameError::Invalid));
        assert_eq!(metrics.gauge_fn("palyra_secrets", "", Arc::new(|| 0)), Err(MetricNameError::Taken));
        lag.store(7, std::sync::atomic::Ordering::Relaxed);
        let text = metrics.encode().unwrap_or_default();
        assert!(text.contains("\npalyra_secrets 3\n"), "{text}");
        assert!(text.contains("\npalyra_audit_records_total 42\n"), "{text}");
        assert!(text.contains("\npalyra_audit_sink_lag_records 7\n"), "{text}");
        metrics.clear(StateGauge::Secrets);
        assert!(!metrics.encode().unwrap_or_default().contains("palyra_secrets "));
    }

    #[test]
    fn open_things_count_until_dropped_and_disabled_metrics_record_nothing() {
        let metrics = Metrics::new(METHODS, "1");
        let a = metrics.quic_connection();
        let b = metrics.quic_connection();
        drop(a);
        assert!(metrics.encode().unwrap_or_default().contains("\npalyra_quic_connections 1\n"));
        drop(b);
        assert!(metrics.encode().unwrap_or_default().contains("\npalyra_quic_connections 0\n"));
        let off = Metrics::disabled();
        off.rpc_started("/x/y").finish(0);
        let _guard = off.quic_stream();
        assert!(off.encode().is_none());
        assert!(off.gauge_fn(AUDIT_SINK_LAG, "", Arc::new(|| 0)).is_ok());
    }
}
