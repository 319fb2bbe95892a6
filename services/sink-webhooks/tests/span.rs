//! Each attempt is a `webhook.delivery` span (exported through OpenTelemetry) linked to the
//! ingress request's trace (the `traceparent` record header the ingress wrote), and the
//! receiver gets a `traceparent` naming the attempt's own span.

#[macro_use]
mod support;

use std::sync::{Arc, Mutex};

use bytes::Bytes;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::error::OTelSdkResult;
use opentelemetry_sdk::trace::{SdkTracerProvider, SpanData, SpanExporter};
use support::receiver::Receiver;
use support::*;
use tracing_subscriber::layer::SubscriberExt;

/// Keeps every exported span (the SDK's simple processor hands them over as they end).
#[derive(Clone, Debug, Default)]
struct Collected(Arc<Mutex<Vec<SpanData>>>);

impl SpanExporter for Collected {
    fn export(&self, batch: Vec<SpanData>) -> impl Future<Output = OTelSdkResult> + Send {
        self.0.lock().unwrap().extend(batch);
        std::future::ready(Ok(()))
    }
}

const INGRESS_TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const INGRESS_SPAN: &str = "00f067aa0ba902b7";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_attempt_is_a_span_linked_to_the_ingress_trace() {
    let spans = Collected::default();
    let provider = SdkTracerProvider::builder()
        .with_simple_exporter(spans.clone())
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("test")));
    // global: the attempts run on the runtime's worker threads
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let (db, target) = database(Dialect::Sqlite).await;
    let log = TestLog::new();
    let receiver = Receiver::start(Receiver::ok()).await;
    let running = start(
        &log.log,
        &target,
        settings(vec![endpoint("traced", &receiver.url())]),
    );
    let traceparent = format!("00-{INGRESS_TRACE}-{INGRESS_SPAN}-01");
    let envelope = terra_testkit::envelope(
        &body("activity", "u", 1),
        None,
        terra_core::keys::now_ms() / 1000,
        None,
    );
    let record = terra_eventlog::Record::of_envelope(
        &envelope,
        [("traceparent".to_owned(), Bytes::from(traceparent.clone()))],
    );
    log.append(vec![record]).await;
    wait_for(&target, LIMIT, "delivered", all_ended(1)).await;
    running.stop().await;
    provider.force_flush().unwrap();

    let spans = spans.0.lock().unwrap().clone();
    let attempt = spans
        .iter()
        .find(|s| s.name == "webhook.delivery")
        .unwrap_or_else(|| {
            let names: Vec<_> = spans.iter().map(|s| s.name.to_string()).collect();
            panic!("no webhook.delivery span among {names:?}")
        });
    let links: Vec<_> = attempt
        .links
        .links
        .iter()
        .map(|l| &l.span_context)
        .collect();
    assert_eq!(links.len(), 1, "one link: the ingress request");
    assert_eq!(links[0].trace_id().to_string(), INGRESS_TRACE);
    assert_eq!(links[0].span_id().to_string(), INGRESS_SPAN);
    let endpoint_attr = attempt
        .attributes
        .iter()
        .find(|kv| kv.key.as_str() == "endpoint")
        .map(|kv| kv.value.to_string());
    assert_eq!(endpoint_attr.as_deref(), Some("traced"));

    let seen = receiver.seen();
    let sent = seen[0].headers["traceparent"].to_str().unwrap();
    let own = format!(
        "00-{}-{}-01",
        attempt.span_context.trace_id(),
        attempt.span_context.span_id()
    );
    assert_eq!(sent, own, "the receiver is told the attempt's own span");
    assert_ne!(sent, traceparent);
    db.drop_now().await;
}
