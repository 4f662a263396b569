//! Prometheus metrics of the daemon.
//!
//! The event loop owns one [`Metrics`]: it records probe verdicts and
//! transitions as they happen, and at scrape time renders them together with
//! what it reads right then (gauges, kernel counters) into a [`Live`]. The
//! HTTP [`Server`] owns nothing: each `GET /metrics` becomes a [`Scrape`] sent
//! to the loop, and whatever text comes back is the answer, so the loop stays
//! the only owner of every value.
//!
//! Format: the Prometheus text exposition format, version 0.0.4
//! ([`CONTENT_TYPE`]), which every Prometheus-compatible scraper reads.
//! Kernel counters are exported with counter semantics (`_total`) at the value
//! read, the way `ConstCounter` is meant to be used.
use std::{collections::HashMap, fmt, net::SocketAddr, time::Duration};

use log::{debug, error, warn};
use prometheus_client::{
    collector::Collector,
    encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric, prometheus_text},
    metrics::{
        MetricType, counter::ConstCounter, counter::Counter, family::Family, gauge::ConstGauge,
        histogram::Histogram,
    },
    registry::Registry,
};
use thiserror::Error;
use tokio::{
    io::{AsyncReadExt as _, AsyncWriteExt as _},
    net::{TcpListener, TcpStream},
    sync::{mpsc, oneshot},
    task::{JoinHandle, JoinSet},
    time::timeout,
};

/// `Content-Type` of [`Metrics::render`]'s text (Prometheus text format 0.0.4).
pub const CONTENT_TYPE: &str = prometheus_text::CONTENT_TYPE;

/// Upper bounds (seconds) of `redirector_probe_duration_seconds`: 50 µs .. 1 s.
const PROBE_BUCKETS: [f64; 14] = [
    50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0,
];

/// Upper bounds (seconds) of `redirector_detection_seconds`: 100 µs .. 10 s.
const DETECTION_BUCKETS: [f64; 16] = [
    100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 2.5, 5.0,
    10.0,
];

/// Labels of `redirector_probe_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeTiming {
    service: String,
    backend: String,
    kind: String,
}

/// Labels of `redirector_probes_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ProbeVerdict {
    service: String,
    backend: String,
    result: String,
    reason: String,
}

/// Labels of `redirector_transitions_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Transition {
    service: String,
    cause: String,
}

/// Labels of `redirector_detection_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ServiceLabel {
    service: String,
}

/// Labels of `redirector_signals_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalLabel {
    service: String,
    backend: String,
    /// `rst_closed` or `unreachable`.
    kind: String,
    /// `verdict` (evidence: counted as a failed probe, and a probe asked),
    /// `probing` (a hint: a confirmation probe asked), `pending` (one is
    /// already asked), `skipped` (the backend already counts as down).
    action: String,
}

/// Labels of `redirector_signal_checks_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SignalCheckLabel {
    service: String,
    backend: String,
    /// `confirmed` (the probe failed) or `dismissed` (it passed).
    result: String,
}

/// Labels of `redirector_hooks_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookLabel {
    service: String,
    /// `promote` or `notify`.
    hook: String,
    /// `ok`, `failed` (non-zero exit or signal), `timeout`, `error` (could
    /// not start) or `skipped` (too many in flight).
    result: String,
}

/// Labels of `redirector_hook_duration_seconds`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct HookTiming {
    service: String,
    hook: String,
}

/// Buckets of `redirector_hook_duration_seconds`: 1 ms .. 10 min.
const HOOK_BUCKETS: [f64; 12] = [
    1e-3, 5e-3, 10e-3, 50e-3, 100e-3, 250e-3, 500e-3, 1.0, 5.0, 30.0, 120.0, 600.0,
];

fn hook_histogram() -> Histogram {
    Histogram::new(HOOK_BUCKETS)
}

/// Labels of `redirector_drift_total`.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct MapLabel {
    map: String,
}

/// The maps (and "pin") `redirector_drift_total` always shows, at 0 until
/// something drifts, so an alert on `increase()` sees every series.
const DRIFT_MAPS: &[&str] = &[
    "SWITCH",
    "SERVICES",
    "SERVICE_VIPS",
    "VIPS",
    "BACKENDS",
    "BACKEND_ADDRS",
    "REVERSE",
    "PORTS",
    "ALLOW",
    "DENY",
    "pin",
];

/// A histogram family whose histograms all get the same buckets.
type HistogramFamily<S> = Family<S, Histogram, fn() -> Histogram>;

fn probe_histogram() -> Histogram {
    Histogram::new(PROBE_BUCKETS)
}

fn detection_histogram() -> Histogram {
    Histogram::new(DETECTION_BUCKETS)
}

/// Every label set one service has created, so that [`Metrics::remove_service`]
/// can remove them (a [`Family`] cannot be listed).
#[derive(Debug, Default)]
struct Series {
    timings: Vec<ProbeTiming>,
    verdicts: Vec<ProbeVerdict>,
    transitions: Vec<Transition>,
    detection: bool,
    signals: Vec<SignalLabel>,
    signal_checks: Vec<SignalCheckLabel>,
    hooks: Vec<HookLabel>,
    hook_timings: Vec<HookTiming>,
}

/// The metrics the event loop accumulates: probe verdicts and transitions.
/// Everything else is read at scrape time and passed to [`Metrics::render`].
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    probe_duration: HistogramFamily<ProbeTiming>,
    probes: Family<ProbeVerdict, Counter>,
    transitions: Family<Transition, Counter>,
    detection: HistogramFamily<ServiceLabel>,
    drift: Family<MapLabel, Counter>,
    suspect: Counter,
    signals: Family<SignalLabel, Counter>,
    signal_checks: Family<SignalCheckLabel, Counter>,
    hooks: Family<HookLabel, Counter>,
    hook_duration: HistogramFamily<HookTiming>,
    series: HashMap<String, Series>,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Empty metrics, every family registered.
    #[must_use]
    pub fn new() -> Metrics {
        let probe_duration = HistogramFamily::new_with_constructor(probe_histogram as fn() -> Histogram);
        let probes = Family::default();
        let transitions = Family::default();
        let detection = HistogramFamily::new_with_constructor(detection_histogram as fn() -> Histogram);
        let drift: Family<MapLabel, Counter> = Family::default();
        for map in DRIFT_MAPS {
            let _ = drift.get_or_create(&MapLabel {
                map: (*map).to_owned(),
            });
        }
        let suspect = Counter::default();
        let signals = Family::default();
        let signal_checks = Family::default();
        let hooks = Family::default();
        let hook_duration = HistogramFamily::new_with_constructor(hook_histogram as fn() -> Histogram);
        let mut registry = Registry::default();
        // The registry appends the final full stop to each help text.
        registry.register(
            "redirector_probe_duration_seconds",
            "Time a health probe took until its verdict, in seconds",
            probe_duration.clone(),
        );
        registry.register(
            "redirector_probes",
            "Health probe verdicts, by result (pass, fail, or local: no verdict, the probe could not run or judge on this host) and reason",
            probes.clone(),
        );
        registry.register(
            "redirector_transitions",
            "Changes of a service's active backend or health, by cause",
            transitions.clone(),
        );
        registry.register(
            "redirector_detection_seconds",
            "Time from the first probe that saw a health change to the transition that followed, in seconds",
            detection.clone(),
        );
        registry.register(
            "redirector_drift",
            "Map entries found different from the decision or the configuration and repaired (a failed write retried, or another writer), and pins removed under the daemon and pinned again, by map",
            drift.clone(),
        );
        registry.register(
            "redirector_gateway_suspect",
            "Probe failures not counted against their backend because most backends failed at once (the gateway is suspected)",
            suspect.clone(),
        );
        registry.register(
            "redirector_signals",
            "Signs in the traffic that a backend failed (a closed port's RST to a SYN, a destination unreachable), reported by the data plane, by what the daemon did with them (verdict: evidence from a backend_interfaces link; otherwise a hint)",
            signals.clone(),
        );
        registry.register(
            "redirector_signal_checks",
            "Verdicts of the probes data-path signals asked for: confirmed (the probe failed) or dismissed (it passed)",
            signal_checks.clone(),
        );
        registry.register(
            "redirector_hooks",
            "Transition hooks run (promote before traffic moves, notify after an event), by result: ok, failed (non-zero exit or a signal), timeout (killed with its process group), error (could not start), skipped (too many notify hooks waiting)",
            hooks.clone(),
        );
        registry.register(
            "redirector_hook_duration_seconds",
            "Time a transition hook ran, in seconds",
            hook_duration.clone(),
        );
        Metrics {
            registry,
            probe_duration,
            probes,
            transitions,
            detection,
            drift,
            suspect,
            signals,
            signal_checks,
            hooks,
            hook_duration,
            series: HashMap::new(),
        }
    }

    /// A hook ended (`took`: how long it ran) or was skipped (`None`).
    pub fn hook(&mut self, service: &str, hook: &str, result: &str, took: Option<Duration>) {
        let label = HookLabel {
            service: service.to_owned(),
            hook: hook.to_owned(),
            result: result.to_owned(),
        };
        if self.hooks.get(&label).is_none() {
            self.series_of(service).hooks.push(label.clone());
        }
        self.hooks.get_or_create(&label).inc();
        if let Some(took) = took {
            let timing = HookTiming {
                service: service.to_owned(),
                hook: hook.to_owned(),
            };
            if self.hook_duration.get(&timing).is_none() {
                self.series_of(service).hook_timings.push(timing.clone());
            }
            self.hook_duration
                .get_or_create(&timing)
                .observe(took.as_secs_f64());
        }
    }

    /// A probe failure not counted: most backends failed at once.
    pub fn gateway_suspect(&mut self) {
        self.suspect.inc();
    }

    /// A data-path signal and what was done with it.
    pub fn signal(&mut self, service: &str, backend: &str, kind: &str, action: &str) {
        let label = SignalLabel {
            service: service.to_owned(),
            backend: backend.to_owned(),
            kind: kind.to_owned(),
            action: action.to_owned(),
        };
        if self.signals.get(&label).is_none() {
            self.series_of(service).signals.push(label.clone());
        }
        self.signals.get_or_create(&label).inc();
    }

    /// The verdict of a probe a signal asked for.
    pub fn signal_checked(&mut self, service: &str, backend: &str, result: &str) {
        let label = SignalCheckLabel {
            service: service.to_owned(),
            backend: backend.to_owned(),
            result: result.to_owned(),
        };
        if self.signal_checks.get(&label).is_none() {
            self.series_of(service).signal_checks.push(label.clone());
        }
        self.signal_checks.get_or_create(&label).inc();
    }

    /// Entries of `map` repaired by a reconciliation ("pin": a pin restored).
    pub fn drift(&mut self, map: &str, repaired: usize) {
        self.drift
            .get_or_create(&MapLabel { map: map.to_owned() })
            .inc_by(repaired as u64);
    }

    /// A probe verdict: histogram `redirector_probe_duration_seconds{service,backend,kind}`
    /// (buckets 50 µs .. 1 s) and counter
    /// `redirector_probes_total{service,backend,result="pass"|"fail"|"local",reason}`
    /// ("local": the probe could not run on this host, no verdict).
    /// `backend` is the role, `"primary"` or `"secondary"`.
    pub fn probe(
        &mut self,
        service: &str,
        backend: &str,
        kind: &str,
        result: &str,
        reason: &str,
        latency: Duration,
    ) {
        let timing = ProbeTiming {
            service: service.to_owned(),
            backend: backend.to_owned(),
            kind: kind.to_owned(),
        };
        let verdict = ProbeVerdict {
            service: service.to_owned(),
            backend: backend.to_owned(),
            result: result.to_owned(),
            reason: reason.to_owned(),
        };
        if self.probe_duration.get(&timing).is_none() {
            self.series_of(service).timings.push(timing.clone());
        }
        self.probe_duration
            .get_or_create(&timing)
            .observe(latency.as_secs_f64());
        if self.probes.get(&verdict).is_none() {
            self.series_of(service).verdicts.push(verdict.clone());
        }
        self.probes.get_or_create(&verdict).inc();
    }

    /// A transition of the active backend or of health: counter
    /// `redirector_transitions_total{service,cause}` (`cause` a short snake_case
    /// word: `failover`, `failback`, `manual_flip`, `override_expired`,
    /// `all_down`, `drain`, `health_change`…) and, when `detection` is known
    /// (from the first probe that saw the change to this transition), histogram
    /// `redirector_detection_seconds{service}` (buckets 100 µs .. 10 s).
    pub fn transition(&mut self, service: &str, cause: &str, detection: Option<Duration>) {
        let transition = Transition {
            service: service.to_owned(),
            cause: cause.to_owned(),
        };
        if self.transitions.get(&transition).is_none() {
            self.series_of(service).transitions.push(transition.clone());
        }
        self.transitions.get_or_create(&transition).inc();
        if let Some(detection) = detection {
            self.series_of(service).detection = true;
            let labels = ServiceLabel {
                service: service.to_owned(),
            };
            self.detection
                .get_or_create(&labels)
                .observe(detection.as_secs_f64());
        }
    }

    /// Forgets every series of a removed service (on reload).
    pub fn remove_service(&mut self, service: &str) {
        let Some(series) = self.series.remove(service) else {
            return;
        };
        for labels in &series.timings {
            self.probe_duration.remove(labels);
        }
        for labels in &series.verdicts {
            self.probes.remove(labels);
        }
        for labels in &series.transitions {
            self.transitions.remove(labels);
        }
        if series.detection {
            self.detection.remove(&ServiceLabel {
                service: service.to_owned(),
            });
        }
        for labels in &series.signals {
            self.signals.remove(labels);
        }
        for labels in &series.signal_checks {
            self.signal_checks.remove(labels);
        }
        for labels in &series.hooks {
            self.hooks.remove(labels);
        }
        for labels in &series.hook_timings {
            self.hook_duration.remove(labels);
        }
    }

    /// Renders everything in the Prometheus text format ([`CONTENT_TYPE`]):
    /// the accumulated families, then the gauges and counters of `live`.
    #[must_use]
    pub fn render(&self, live: &Live) -> String {
        let mut scraped = Registry::default();
        scraped.register_collector(Box::new(LiveCollector(live.clone())));
        let mut text = String::new();
        for registry in [&self.registry, &scraped] {
            // Writing into a String cannot fail; an error here is an encoder bug.
            if let Err(e) = prometheus_text::encode(&mut text, registry) {
                error!("rendering metrics failed: {e}");
            }
        }
        text
    }

    /// The index entry of `service`, created on first use (a new label set).
    fn series_of(&mut self, service: &str) -> &mut Series {
        self.series.entry(service.to_owned()).or_default()
    }
}

/// What the event loop reads at scrape time: gauges and kernel counters,
/// exported as they are.
#[derive(Clone, Debug, Default)]
pub struct Live {
    /// Every configured service.
    pub services: Vec<LiveService>,
    /// Global data-plane counters as (reason, value), e.g. `("passed", 12)` →
    /// `redirector_datapath_packets_total{reason="passed"} 12`.
    pub datapath: Vec<(&'static str, u64)>,
    /// Flow-table entries counted by the last sweep (None: not counted yet) →
    /// gauge `redirector_flow_entries`.
    pub flow_entries: Option<u64>,
    /// Probes per second being spent → gauge `redirector_probe_rate`.
    pub probe_rate: f64,
    /// Probes per second allowed → gauge `redirector_probe_budget`.
    pub probe_budget: u32,
}

/// One service's state at scrape time.
#[derive(Clone, Debug)]
pub struct LiveService {
    /// The service's name (label `service`).
    pub name: String,
    /// The active backend, `"primary"` or `"secondary"` → gauge
    /// `redirector_active_backend{service,backend}`, 1 for it and 0 for the other.
    pub active: &'static str,
    /// Both backends down → gauge `redirector_all_down{service}` 1.
    pub all_down: bool,
    /// An operator override is in force → gauge `redirector_override{service}` 1.
    pub overridden: bool,
    /// Packets its allow/deny lists refused → counter `redirector_refused_packets_total{service}`.
    pub refused: u64,
    /// Primary, then secondary.
    pub backends: [LiveBackend; 2],
}

/// One backend's state and kernel counters at scrape time.
#[derive(Clone, Debug)]
pub struct LiveBackend {
    /// `"primary"` or `"secondary"` (label `backend`).
    pub role: &'static str,
    /// The backend's address (label `address` of `redirector_backend_up`).
    pub address: String,
    /// `"up"`, `"down"` or `"unknown"` → gauge
    /// `redirector_backend_up{service,backend,address}` 1, 0 or -1.
    pub health: &'static str,
    /// Drained by the operator → gauge `redirector_backend_drained{service,backend}` 1.
    pub drained: bool,
    /// Packets sent to the backend
    /// (`redirector_backend_packets_total{direction="to_backend"}`).
    pub packets: u64,
    /// Bytes sent to the backend (`redirector_backend_bytes_total{direction="to_backend"}`).
    pub bytes: u64,
    /// Reply packets sent back to clients (`direction="to_client"`).
    pub reply_packets: u64,
    /// Reply bytes sent back to clients (`direction="to_client"`).
    pub reply_bytes: u64,
}

/// Encodes a [`Live`] snapshot (a collector must own what it encodes).
#[derive(Debug)]
struct LiveCollector(Live);

impl Collector for LiveCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> fmt::Result {
        let live = &self.0;
        let backends = || {
            live.services
                .iter()
                .flat_map(|s| s.backends.iter().map(move |b| (s.name.as_str(), s, b)))
        };
        let gauge = |v: bool| ConstGauge::new(i64::from(v));

        family(
            &mut encoder,
            "redirector_active_backend",
            "1 for the backend a service currently sends new traffic to, 0 for the other",
            backends().map(|(name, s, b)| {
                (
                    [("service", name), ("backend", b.role)],
                    gauge(b.role == s.active),
                )
            }),
        )?;
        family(
            &mut encoder,
            "redirector_all_down",
            "1 while both backends of a service are down",
            live.services
                .iter()
                .map(|s| ([("service", s.name.as_str())], gauge(s.all_down))),
        )?;
        family(
            &mut encoder,
            "redirector_override",
            "1 while an operator override pins a service's active backend",
            live.services
                .iter()
                .map(|s| ([("service", s.name.as_str())], gauge(s.overridden))),
        )?;
        family(
            &mut encoder,
            "redirector_refused_packets_total",
            "Packets a service's allow/deny lists refused (dropped in XDP)",
            live.services
                .iter()
                .map(|s| ([("service", s.name.as_str())], ConstCounter::new(s.refused))),
        )?;
        family(
            &mut encoder,
            "redirector_backend_up",
            "Health of a backend: 1 up, 0 down, -1 unknown (no verdict yet)",
            backends().map(|(name, _, b)| {
                let up = match b.health {
                    "up" => 1,
                    "down" => 0,
                    _ => -1,
                };
                let labels = [
                    ("service", name),
                    ("backend", b.role),
                    ("address", b.address.as_str()),
                ];
                (labels, ConstGauge::new(up))
            }),
        )?;
        family(
            &mut encoder,
            "redirector_backend_drained",
            "1 while a backend is drained (gets no new flows)",
            backends().map(|(name, _, b)| ([("service", name), ("backend", b.role)], gauge(b.drained))),
        )?;
        family(
            &mut encoder,
            "redirector_backend_packets_total",
            "Packets the data plane forwarded, to the backend or back to the client",
            backends().flat_map(|(name, _, b)| {
                [("to_backend", b.packets), ("to_client", b.reply_packets)].map(|(direction, v)| {
                    let labels = [("service", name), ("backend", b.role), ("direction", direction)];
                    (labels, ConstCounter::new(v))
                })
            }),
        )?;
        family(
            &mut encoder,
            "redirector_backend_bytes_total",
            "Bytes the data plane forwarded, to the backend or back to the client",
            backends().flat_map(|(name, _, b)| {
                [("to_backend", b.bytes), ("to_client", b.reply_bytes)].map(|(direction, v)| {
                    let labels = [("service", name), ("backend", b.role), ("direction", direction)];
                    (labels, ConstCounter::new(v))
                })
            }),
        )?;
        family(
            &mut encoder,
            "redirector_datapath_packets_total",
            "Packets the XDP program handled, by what it did with them",
            live.datapath
                .iter()
                .map(|&(reason, v)| ([("reason", reason)], ConstCounter::new(v))),
        )?;
        if let Some(entries) = live.flow_entries {
            single(
                &mut encoder,
                "redirector_flow_entries",
                "Entries in the flow table at the last sweep",
                ConstGauge::new(entries),
            )?;
        }
        single(
            &mut encoder,
            "redirector_probe_rate",
            "Health probes per second currently being sent",
            ConstGauge::new(live.probe_rate),
        )?;
        single(
            &mut encoder,
            "redirector_probe_budget",
            "Health probes per second allowed",
            ConstGauge::new(live.probe_budget),
        )
    }
}

/// Encodes one labelled family (nothing when it has no series). `name` is the
/// full name as exported; `help` gets the final full stop, as the registry's do.
fn family<S: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    series: impl IntoIterator<Item = (S, M)>,
) -> fmt::Result {
    let series: Vec<(S, M)> = series.into_iter().collect();
    let Some((_, first)) = series.first() else {
        return Ok(());
    };
    let metric_type = first.metric_type();
    // The encoder appends `_total` to a counter's name.
    let name = match metric_type {
        MetricType::Counter => name.strip_suffix("_total").unwrap_or(name),
        _ => name,
    };
    let mut metric = encoder.encode_descriptor(name, &format!("{help}."), None, metric_type)?;
    for (labels, value) in &series {
        value.encode(metric.encode_family(labels)?)?;
    }
    Ok(())
}

/// Encodes one metric without labels.
fn single(
    encoder: &mut DescriptorEncoder<'_>,
    name: &str,
    help: &str,
    metric: impl EncodeMetric,
) -> fmt::Result {
    metric.encode(encoder.encode_descriptor(name, &format!("{help}."), None, metric.metric_type())?)
}

/// Errors of the metrics endpoint.
#[derive(Debug, Error)]
pub enum MetricsError {
    /// The listening socket could not be set up.
    #[error(
        "metrics endpoint {addr}: cannot listen: {source} (is the port in use, or the address not on this \
         host? change `metrics` in [control])"
    )]
    Bind {
        /// The address asked for.
        addr: SocketAddr,
        /// The system's answer.
        #[source]
        source: std::io::Error,
    },
}

/// A scrape handed to the event loop: it answers with [`Metrics::render`]'s text.
#[derive(Debug)]
pub struct Scrape {
    /// Where the rendered text goes.
    pub reply: oneshot::Sender<String>,
}

/// Longest request head (request line and headers) accepted.
const MAX_HEAD: usize = 8 * 1024;
/// A client must send its whole request head within this long.
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// A client must take the whole response within this long.
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// The event loop must answer a scrape within this long, or the answer is 503.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);
/// Connections served at once; further ones wait in the listen backlog.
const MAX_CONNECTIONS: usize = 16;

/// The HTTP endpoint: `GET /metrics` (and `HEAD`) answered with the event
/// loop's rendering; anything else 404 (405 for another method on
/// `/metrics`). HTTP/1.1, one request per connection (`Connection: close`).
/// Runs as a task on the caller's runtime; dropping it stops the task and
/// every connection it serves.
#[derive(Debug)]
pub struct Server {
    addr: SocketAddr,
    task: JoinHandle<()>,
}

impl Server {
    /// Listens on `addr` and serves it on the current runtime, sending each
    /// scrape to `tx`.
    pub async fn bind(addr: SocketAddr, tx: mpsc::Sender<Scrape>) -> Result<Server, MetricsError> {
        let bind_error = |source| MetricsError::Bind { addr, source };
        let listener = TcpListener::bind(addr).await.map_err(bind_error)?;
        let local = listener.local_addr().map_err(bind_error)?;
        let task = tokio::spawn(serve(listener, tx));
        Ok(Server { addr: local, task })
    }

    /// The address actually bound (its port, when asked for port 0).
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Accepts while fewer than [`MAX_CONNECTIONS`] are being served. The
/// connections live in a [`JoinSet`], so aborting this task ends them too.
async fn serve(listener: TcpListener, tx: mpsc::Sender<Scrape>) {
    let mut connections = JoinSet::new();
    loop {
        while connections.try_join_next().is_some() {}
        if connections.len() >= MAX_CONNECTIONS {
            connections.join_next().await;
            continue;
        }
        match listener.accept().await {
            Ok((stream, peer)) => {
                connections.spawn(connection(stream, peer, tx.clone()));
            }
            Err(e) => {
                // Out of descriptors and the like: pause instead of spinning.
                warn!("metrics endpoint: accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

/// What a request head asks for.
#[derive(Debug, PartialEq, Eq)]
enum Route {
    /// `GET /metrics` (`head_only`: `HEAD /metrics`).
    Metrics { head_only: bool },
    /// Another method on `/metrics`.
    MethodNotAllowed,
    /// Another path.
    NotFound,
    /// Not an HTTP/1 request line.
    BadRequest,
}

/// Reads the request line of `head` (headers are not needed).
fn route(head: &[u8]) -> Route {
    let line = head.split(|&b| b == b'\n').next().unwrap_or_default();
    let Ok(line) = std::str::from_utf8(line) else {
        return Route::BadRequest;
    };
    let mut parts = line.trim_end_matches('\r').split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Route::BadRequest;
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Route::BadRequest;
    }
    let path = target.split_once('?').map_or(target, |(path, _)| path);
    match (method, path) {
        ("GET", "/metrics") => Route::Metrics { head_only: false },
        ("HEAD", "/metrics") => Route::Metrics { head_only: true },
        (_, "/metrics") => Route::MethodNotAllowed,
        _ => Route::NotFound,
    }
}

/// Why no request head was read.
#[derive(Debug)]
enum HeadError {
    /// Longer than [`MAX_HEAD`].
    TooLarge,
    /// The client closed or the socket failed before the head ended.
    Closed,
}

/// Reads up to the blank line that ends the request head.
async fn read_head(stream: &mut TcpStream) -> Result<Vec<u8>, HeadError> {
    let mut buf = vec![0u8; MAX_HEAD];
    let mut len = 0;
    loop {
        if len == buf.len() {
            return Err(HeadError::TooLarge);
        }
        let n = match stream.read(&mut buf[len..]).await {
            Ok(0) | Err(_) => return Err(HeadError::Closed),
            Ok(n) => n,
        };
        // The blank line may straddle two reads: look back 3 bytes.
        let from = len.saturating_sub(3);
        len += n;
        let window = &buf[from..len];
        let end = window
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .or_else(|| window.windows(2).position(|w| w == b"\n\n"));
        if let Some(end) = end {
            buf.truncate(from + end);
            return Ok(buf);
        }
    }
}

/// Serves one request and closes.
async fn connection(mut stream: TcpStream, peer: SocketAddr, tx: mpsc::Sender<Scrape>) {
    let response = match timeout(READ_TIMEOUT, read_head(&mut stream)).await {
        Err(_) => Response::text("408 Request Timeout", "request head not received in time\n"),
        Ok(Err(HeadError::Closed)) => return,
        Ok(Err(HeadError::TooLarge)) => {
            Response::text("431 Request Header Fields Too Large", "request head over 8 KiB\n")
        }
        Ok(Ok(head)) => match route(&head) {
            Route::Metrics { head_only } => match scrape(&tx).await {
                Some(text) => Response {
                    status: "200 OK",
                    content_type: CONTENT_TYPE,
                    allow: false,
                    body: text,
                    head_only,
                },
                None => Response::text(
                    "503 Service Unavailable",
                    "the redirector event loop did not answer in time\n",
                ),
            },
            Route::MethodNotAllowed => Response {
                allow: true,
                ..Response::text(
                    "405 Method Not Allowed",
                    "only GET and HEAD are served on /metrics\n",
                )
            },
            Route::NotFound => Response::text("404 Not Found", "metrics are served on /metrics\n"),
            Route::BadRequest => Response::text("400 Bad Request", "not an HTTP/1 request\n"),
        },
    };
    match timeout(WRITE_TIMEOUT, response.write(&mut stream)).await {
        Ok(Ok(())) => {}
        Ok(Err(e)) => debug!("metrics endpoint: answering {peer}: {e}"),
        Err(_) => debug!("metrics endpoint: {peer} did not take the response in time"),
    }
}

/// Asks the event loop for a rendering; None when it does not answer in
/// [`SCRAPE_TIMEOUT`] or has gone.
async fn scrape(tx: &mpsc::Sender<Scrape>) -> Option<String> {
    let ask = async {
        let (reply, answer) = oneshot::channel();
        tx.send(Scrape { reply }).await.ok()?;
        answer.await.ok()
    };
    timeout(SCRAPE_TIMEOUT, ask).await.ok().flatten()
}

/// An HTTP response about to be written.
struct Response {
    status: &'static str,
    content_type: &'static str,
    /// Send `Allow: GET, HEAD` (405).
    allow: bool,
    body: String,
    /// Headers only (a HEAD request).
    head_only: bool,
}

impl Response {
    fn text(status: &'static str, body: &str) -> Response {
        Response {
            status,
            content_type: "text/plain; charset=utf-8",
            allow: false,
            body: body.to_owned(),
            head_only: false,
        }
    }

    async fn write(&self, stream: &mut TcpStream) -> std::io::Result<()> {
        let allow = if self.allow { "Allow: GET, HEAD\r\n" } else { "" };
        let head = format!(
            "HTTP/1.1 {}\r\nContent-Type: {}\r\nContent-Length: {}\r\n{allow}Connection: close\r\n\r\n",
            self.status,
            self.content_type,
            self.body.len()
        );
        stream.write_all(head.as_bytes()).await?;
        if !self.head_only {
            stream.write_all(self.body.as_bytes()).await?;
        }
        stream.shutdown().await
    }
}

#[cfg(test)]
mod tests {
    #![expect(clippy::unwrap_used, reason = "tests")]

    use std::collections::BTreeMap;

    use super::*;

    /// One sample line: name, labels, value.
    #[derive(Debug, Clone)]
    struct Sample {
        name: String,
        labels: BTreeMap<String, String>,
        value: f64,
    }

    /// The parsed exposition: families' HELP and TYPE, and every sample.
    #[derive(Debug, Default)]
    struct Exposition {
        help: BTreeMap<String, String>,
        types: BTreeMap<String, String>,
        samples: Vec<Sample>,
    }

    impl Exposition {
        /// Parses the text format strictly enough to catch malformed output.
        fn parse(text: &str) -> Exposition {
            let mut out = Exposition::default();
            for line in text.lines() {
                if let Some(rest) = line.strip_prefix("# HELP ") {
                    let (name, help) = rest.split_once(' ').unwrap();
                    assert!(
                        out.help.insert(name.to_owned(), help.to_owned()).is_none(),
                        "{line}"
                    );
                } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                    let (name, ty) = rest.split_once(' ').unwrap();
                    assert!(
                        out.types.insert(name.to_owned(), ty.to_owned()).is_none(),
                        "{line}"
                    );
                } else {
                    assert!(
                        !line.starts_with('#') && !line.is_empty(),
                        "unexpected line {line:?}"
                    );
                    out.samples.push(parse_sample(line));
                }
            }
            out
        }

        /// The samples named `name` whose labels include all of `labels`.
        fn find(&self, name: &str, labels: &[(&str, &str)]) -> Vec<&Sample> {
            self.samples
                .iter()
                .filter(|s| s.name == name)
                .filter(|s| {
                    labels
                        .iter()
                        .all(|(k, v)| s.labels.get(*k).map(String::as_str) == Some(*v))
                })
                .collect()
        }

        /// Every sample of `service`, whatever its family.
        fn find_service(&self, service: &str) -> Vec<&Sample> {
            self.samples
                .iter()
                .filter(|s| s.labels.get("service").map(String::as_str) == Some(service))
                .collect()
        }

        /// The value of the one sample with exactly these labels.
        fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
            let found: Vec<_> = self
                .find(name, labels)
                .into_iter()
                .filter(|s| s.labels.len() == labels.len())
                .collect();
            assert_eq!(found.len(), 1, "{name} {labels:?}: {found:?}");
            found[0].value
        }
    }

    fn parse_sample(line: &str) -> Sample {
        let (name, mut rest) = line.split_at(line.find(['{', ' ']).unwrap());
        let mut labels = BTreeMap::new();
        if let Some(mut inner) = rest.strip_prefix('{') {
            loop {
                if let Some(after) = inner.strip_prefix('}') {
                    rest = after;
                    break;
                }
                let (key, quoted) = inner.split_once("=\"").unwrap();
                let mut value = String::new();
                let mut chars = quoted.char_indices();
                let end = loop {
                    match chars.next().unwrap() {
                        (_, '\\') => match chars.next().unwrap().1 {
                            'n' => value.push('\n'),
                            c => value.push(c),
                        },
                        (i, '"') => break i,
                        (_, c) => value.push(c),
                    }
                };
                assert!(
                    labels.insert(key.to_owned(), value).is_none(),
                    "duplicate label in {line}"
                );
                inner = &quoted[end + 1..];
                inner = inner.strip_prefix(',').unwrap_or(inner);
            }
        }
        let value = match rest.strip_prefix(' ').unwrap() {
            "+Inf" => f64::INFINITY,
            v => v.parse().unwrap(),
        };
        Sample {
            name: name.to_owned(),
            labels,
            value,
        }
    }

    fn backend(role: &'static str, address: &str, health: &'static str, n: u64) -> LiveBackend {
        LiveBackend {
            role,
            address: address.to_owned(),
            health,
            drained: role == "secondary",
            packets: n,
            bytes: n * 100,
            reply_packets: n + 1,
            reply_bytes: (n + 1) * 100,
        }
    }

    fn live() -> Live {
        Live {
            services: vec![
                LiveService {
                    name: "web".to_owned(),
                    active: "secondary",
                    all_down: false,
                    overridden: true,
                    refused: 3,
                    backends: [
                        backend("primary", "198.18.1.1:80", "down", 10),
                        backend("secondary", "198.18.1.2:80", "up", 20),
                    ],
                },
                LiveService {
                    name: "dns".to_owned(),
                    active: "primary",
                    all_down: true,
                    overridden: false,
                    refused: 0,
                    backends: [
                        backend("primary", "198.18.2.1:53", "unknown", 30),
                        backend("secondary", "[2001:2:0:3::2]:53", "down", 40),
                    ],
                },
            ],
            datapath: vec![("passed", 12), ("redirected", 34)],
            flow_entries: Some(56),
            probe_rate: 7.5,
            probe_budget: 100,
        }
    }

    fn sample_metrics() -> Metrics {
        let mut m = Metrics::new();
        m.probe("web", "primary", "tcp", "pass", "ok", Duration::from_micros(70));
        m.probe("web", "primary", "tcp", "pass", "ok", Duration::from_millis(3));
        m.probe("web", "primary", "tcp", "fail", "timeout", Duration::from_secs(2));
        m.probe(
            "web",
            "secondary",
            "http",
            "pass",
            "ok",
            Duration::from_millis(20),
        );
        m.probe(
            "dns",
            "primary",
            "udp",
            "fail",
            "refused",
            Duration::from_micros(40),
        );
        m.transition("web", "failover", Some(Duration::from_millis(30)));
        m.transition("web", "manual_flip", None);
        m.transition("dns", "all_down", Some(Duration::from_secs(20)));
        m
    }

    #[test]
    fn renders_every_family_with_help_and_type() {
        let text = sample_metrics().render(&live());
        let e = Exposition::parse(&text);
        let families = [
            ("redirector_probe_duration_seconds", "histogram"),
            ("redirector_probes_total", "counter"),
            ("redirector_transitions_total", "counter"),
            ("redirector_detection_seconds", "histogram"),
            ("redirector_drift_total", "counter"),
            ("redirector_gateway_suspect_total", "counter"),
            ("redirector_active_backend", "gauge"),
            ("redirector_all_down", "gauge"),
            ("redirector_override", "gauge"),
            ("redirector_refused_packets_total", "counter"),
            ("redirector_backend_up", "gauge"),
            ("redirector_backend_drained", "gauge"),
            ("redirector_backend_packets_total", "counter"),
            ("redirector_backend_bytes_total", "counter"),
            ("redirector_datapath_packets_total", "counter"),
            ("redirector_flow_entries", "gauge"),
            ("redirector_probe_rate", "gauge"),
            ("redirector_probe_budget", "gauge"),
        ];
        for (name, ty) in families {
            assert_eq!(e.types.get(name).map(String::as_str), Some(ty), "TYPE of {name}");
            let help = e.help.get(name).unwrap();
            assert!(
                help.len() > 10 && help.ends_with('.') && !help.ends_with(".."),
                "{name}: {help}"
            );
        }
        assert_eq!(e.types.len(), families.len(), "{:?}", e.types.keys());
        // Every sample belongs to a described family.
        for s in &e.samples {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| s.name.strip_suffix(suffix).filter(|f| e.types.contains_key(*f)))
                .unwrap_or(&s.name);
            assert!(e.help.contains_key(family), "{} has no HELP", s.name);
        }
    }

    #[test]
    fn renders_probe_verdicts_and_durations() {
        let e = Exposition::parse(&sample_metrics().render(&Live::default()));
        let verdict = |service, backend, result, reason| {
            e.value(
                "redirector_probes_total",
                &[
                    ("service", service),
                    ("backend", backend),
                    ("result", result),
                    ("reason", reason),
                ],
            )
        };
        assert_eq!(verdict("web", "primary", "pass", "ok"), 2.0);
        assert_eq!(verdict("web", "primary", "fail", "timeout"), 1.0);
        assert_eq!(verdict("web", "secondary", "pass", "ok"), 1.0);
        assert_eq!(verdict("dns", "primary", "fail", "refused"), 1.0);
        assert_eq!(e.find("redirector_probes_total", &[]).len(), 4);

        let web = [("service", "web"), ("backend", "primary"), ("kind", "tcp")];
        let bucket = |le| {
            let mut labels = web.to_vec();
            labels.push(("le", le));
            e.value("redirector_probe_duration_seconds_bucket", &labels)
        };
        assert_eq!(bucket("5e-05"), 0.0);
        assert_eq!(bucket("0.0001"), 1.0);
        assert_eq!(bucket("0.0025"), 1.0);
        assert_eq!(bucket("0.005"), 2.0);
        assert_eq!(bucket("1"), 2.0);
        assert_eq!(bucket("+Inf"), 3.0);
        let les: Vec<_> = e
            .find("redirector_probe_duration_seconds_bucket", &web)
            .iter()
            .map(|s| s.labels["le"].clone())
            .collect();
        assert_eq!(les.len(), PROBE_BUCKETS.len() + 1, "{les:?}");
        assert_eq!(e.value("redirector_probe_duration_seconds_count", &web), 3.0);
        let sum = e.value("redirector_probe_duration_seconds_sum", &web);
        assert!((sum - 2.00307).abs() < 1e-9, "{sum}");
        // A 40 µs probe falls in the first bucket.
        let dns = [
            ("service", "dns"),
            ("backend", "primary"),
            ("kind", "udp"),
            ("le", "5e-05"),
        ];
        assert_eq!(e.value("redirector_probe_duration_seconds_bucket", &dns), 1.0);
    }

    #[test]
    fn renders_transitions_and_detection() {
        let e = Exposition::parse(&sample_metrics().render(&Live::default()));
        let transitions = |service, cause| {
            e.value(
                "redirector_transitions_total",
                &[("service", service), ("cause", cause)],
            )
        };
        assert_eq!(transitions("web", "failover"), 1.0);
        assert_eq!(transitions("web", "manual_flip"), 1.0);
        assert_eq!(transitions("dns", "all_down"), 1.0);
        // Only transitions with a detection time are observed.
        assert_eq!(
            e.value("redirector_detection_seconds_count", &[("service", "web")]),
            1.0
        );
        assert_eq!(
            e.value("redirector_detection_seconds_sum", &[("service", "web")]),
            0.03
        );
        let web = |le| {
            e.value(
                "redirector_detection_seconds_bucket",
                &[("service", "web"), ("le", le)],
            )
        };
        assert_eq!(web("0.025"), 0.0);
        assert_eq!(web("0.05"), 1.0);
        let dns = |le| {
            e.value(
                "redirector_detection_seconds_bucket",
                &[("service", "dns"), ("le", le)],
            )
        };
        assert_eq!(dns("10"), 0.0);
        assert_eq!(dns("+Inf"), 1.0);
        assert_eq!(
            e.find("redirector_detection_seconds_bucket", &[("service", "web")])
                .len(),
            DETECTION_BUCKETS.len() + 1
        );
    }

    #[test]
    fn renders_live_values() {
        let e = Exposition::parse(&Metrics::new().render(&live()));
        // Nothing accumulated yet: those families are absent, not empty.
        assert!(!e.types.contains_key("redirector_probes_total"));
        let active = |s, b| e.value("redirector_active_backend", &[("service", s), ("backend", b)]);
        assert_eq!(active("web", "primary"), 0.0);
        assert_eq!(active("web", "secondary"), 1.0);
        assert_eq!(active("dns", "primary"), 1.0);
        assert_eq!(active("dns", "secondary"), 0.0);
        assert_eq!(e.value("redirector_all_down", &[("service", "web")]), 0.0);
        assert_eq!(e.value("redirector_all_down", &[("service", "dns")]), 1.0);
        assert_eq!(e.value("redirector_override", &[("service", "web")]), 1.0);
        assert_eq!(e.value("redirector_override", &[("service", "dns")]), 0.0);
        assert_eq!(
            e.value("redirector_refused_packets_total", &[("service", "web")]),
            3.0
        );
        let up = |s, b, a| {
            e.value(
                "redirector_backend_up",
                &[("service", s), ("backend", b), ("address", a)],
            )
        };
        assert_eq!(up("web", "primary", "198.18.1.1:80"), 0.0);
        assert_eq!(up("web", "secondary", "198.18.1.2:80"), 1.0);
        assert_eq!(up("dns", "primary", "198.18.2.1:53"), -1.0);
        assert_eq!(up("dns", "secondary", "[2001:2:0:3::2]:53"), 0.0);
        let drained = |s, b| e.value("redirector_backend_drained", &[("service", s), ("backend", b)]);
        assert_eq!(drained("web", "primary"), 0.0);
        assert_eq!(drained("web", "secondary"), 1.0);
        let traffic = |name, s, b, d| e.value(name, &[("service", s), ("backend", b), ("direction", d)]);
        let packets = "redirector_backend_packets_total";
        let bytes = "redirector_backend_bytes_total";
        assert_eq!(traffic(packets, "web", "primary", "to_backend"), 10.0);
        assert_eq!(traffic(packets, "web", "primary", "to_client"), 11.0);
        assert_eq!(traffic(bytes, "dns", "secondary", "to_backend"), 4000.0);
        assert_eq!(traffic(bytes, "dns", "secondary", "to_client"), 4100.0);
        assert_eq!(e.find(packets, &[]).len(), 8);
        assert_eq!(
            e.value("redirector_datapath_packets_total", &[("reason", "passed")]),
            12.0
        );
        assert_eq!(
            e.value("redirector_datapath_packets_total", &[("reason", "redirected")]),
            34.0
        );
        assert_eq!(e.value("redirector_flow_entries", &[]), 56.0);
        assert_eq!(e.value("redirector_probe_rate", &[]), 7.5);
        assert_eq!(e.value("redirector_probe_budget", &[]), 100.0);

        // Not counted yet: no flow-entries gauge at all (not a misleading 0).
        let uncounted = Live {
            flow_entries: None,
            ..live()
        };
        let e = Exposition::parse(&Metrics::new().render(&uncounted));
        assert!(e.find("redirector_flow_entries", &[]).is_empty());
        assert!(!e.types.contains_key("redirector_flow_entries"));
    }

    #[test]
    fn remove_service_drops_its_series() {
        let mut m = sample_metrics();
        m.remove_service("web");
        m.remove_service("never-existed");
        let e = Exposition::parse(&m.render(&Live::default()));
        assert!(e.find_service("web").is_empty(), "{:?}", e.find_service("web"));
        assert_eq!(
            e.value(
                "redirector_probes_total",
                &[
                    ("service", "dns"),
                    ("backend", "primary"),
                    ("result", "fail"),
                    ("reason", "refused")
                ]
            ),
            1.0
        );
        assert_eq!(
            e.value("redirector_detection_seconds_count", &[("service", "dns")]),
            1.0
        );

        // A service added again under the same name starts from zero.
        m.transition("web", "failover", None);
        let e = Exposition::parse(&m.render(&Live::default()));
        assert_eq!(
            e.value(
                "redirector_transitions_total",
                &[("service", "web"), ("cause", "failover")]
            ),
            1.0
        );
        assert_eq!(e.find_service("web").len(), 1);

        // With every service gone the families disappear entirely.
        m.remove_service("web");
        m.remove_service("dns");
        let e = Exposition::parse(&m.render(&Live::default()));
        let left: Vec<_> = e.types.keys().map(String::as_str).collect();
        assert_eq!(
            left,
            [
                "redirector_drift_total",
                "redirector_gateway_suspect_total",
                "redirector_probe_budget",
                "redirector_probe_rate"
            ]
        );
    }

    #[test]
    fn label_values_are_escaped() {
        let mut m = Metrics::new();
        m.probe(
            "a\"b\\c",
            "primary",
            "http",
            "fail",
            "status\n500",
            Duration::from_millis(1),
        );
        let e = Exposition::parse(&m.render(&Live::default()));
        let v = e.value(
            "redirector_probes_total",
            &[
                ("service", "a\"b\\c"),
                ("backend", "primary"),
                ("result", "fail"),
                ("reason", "status\n500"),
            ],
        );
        assert_eq!(v, 1.0);
    }

    #[test]
    fn routes_requests() {
        assert_eq!(
            route(b"GET /metrics HTTP/1.1\r\nHost: x"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route(b"GET /metrics?name[]=up HTTP/1.0"),
            Route::Metrics { head_only: false }
        );
        assert_eq!(
            route(b"HEAD /metrics HTTP/1.1"),
            Route::Metrics { head_only: true }
        );
        assert_eq!(route(b"POST /metrics HTTP/1.1"), Route::MethodNotAllowed);
        assert_eq!(route(b"GET / HTTP/1.1"), Route::NotFound);
        assert_eq!(route(b"GET /metrics/ HTTP/1.1"), Route::NotFound);
        assert_eq!(route(b"GET /metrics"), Route::BadRequest);
        assert_eq!(route(b"GET /metrics HTTP/2 extra"), Route::BadRequest);
        assert_eq!(route(b"GET metrics HTTP/1.1"), Route::BadRequest);
        assert_eq!(route(b"\xff\xfe"), Route::BadRequest);
        assert_eq!(route(b""), Route::BadRequest);
    }
}
