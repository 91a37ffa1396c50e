//! Prometheus metrics served at `/metrics`.

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::Registry;

/// Labels of HTTP metrics.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteLabels {
    /// Route template.
    pub route: String,
    /// Status code.
    pub status: u16,
}

/// Labels of latency histograms.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RouteOnly {
    /// Route template.
    pub route: String,
}

/// Labels of attestation counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct AttestLabels {
    /// TEE name.
    pub tee: String,
    /// `affirming`, `warning`, `contraindicated`, `none` or `rejected`.
    pub result: String,
}

/// Labels of resource-release counters.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReleaseLabels {
    /// `released`, `denied` or `not_found`.
    pub result: String,
}

/// All KBS metrics.
pub struct Metrics {
    /// The registry rendered at `/metrics`.
    pub registry: Registry,
    /// Requests by route and status.
    pub requests: Family<RouteLabels, Counter>,
    /// Latency by route.
    pub latency: Family<RouteOnly, Histogram, fn() -> Histogram>,
    /// Attestations by TEE and result.
    pub attestations: Family<AttestLabels, Counter>,
    /// Resource releases by result.
    pub releases: Family<ReleaseLabels, Counter>,
}

fn latency_histogram() -> Histogram {
    Histogram::new([
        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5, 1.0,
    ])
}

impl Metrics {
    /// Creates and registers every metric.
    pub fn new() -> Self {
        let mut registry = Registry::with_prefix("kbs");
        let requests = Family::<RouteLabels, Counter>::default();
        let latency = Family::<RouteOnly, Histogram>::new_with_constructor(
            latency_histogram as fn() -> Histogram,
        );
        let attestations = Family::<AttestLabels, Counter>::default();
        let releases = Family::<ReleaseLabels, Counter>::default();
        registry.register(
            "http_requests",
            "HTTP requests by route and status",
            requests.clone(),
        );
        registry.register(
            "http_request_duration_seconds",
            "HTTP request latency",
            latency.clone(),
        );
        registry.register(
            "attestations",
            "Attestations by TEE and result",
            attestations.clone(),
        );
        registry.register(
            "resource_releases",
            "Resource requests by result",
            releases.clone(),
        );
        Self {
            registry,
            requests,
            latency,
            attestations,
            releases,
        }
    }

    /// Renders the text exposition format.
    pub fn render(&self) -> String {
        let mut out = String::new();
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}
