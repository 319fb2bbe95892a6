//! The result writer and the endpoints' states: attempts recorded in batches, endpoints
//! disabled, re-enabled and refreshed from SQL.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use terra_runtime::{Backoff, CancellationToken, Retry};
use terra_schema::{SqlError, SqlTarget};
use tokio::sync::mpsc;

use crate::admin::{self, EndpointState};
use crate::dispatch::{FINISH_BATCH, Outcome, Shared, View, Views, now_ms};
use crate::endpoint::WebhookSettings;
use crate::endpoints_store;
use crate::metrics::WebhookMetrics;
use crate::store::{self, Finished};

/// Records results in batches (retrying outages: a result is never dropped while the process
/// lives), then moves endpoints on: a success clears a failing streak and re-enables a
/// disabled endpoint (a probe answered); a 410 disables it; a streak longer than
/// `disable_after` disables it.
pub(crate) async fn write_results(
    target: SqlTarget,
    settings: Arc<WebhookSettings>,
    mut inbox: mpsc::Receiver<Outcome>,
    views: Views,
    shared: Shared,
    metrics: WebhookMetrics,
) {
    let never = CancellationToken::new();
    let backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    let mut batch: Vec<Outcome> = Vec::with_capacity(FINISH_BATCH);
    while inbox.recv_many(&mut batch, FINISH_BATCH).await > 0 {
        let finished: Vec<Finished> = batch.iter().filter_map(|r| r.finished.clone()).collect();
        let mut retry = Retry::new(backoff, &never, "recording webhook attempts");
        loop {
            match store::finish(&target, &finished, now_ms()).await {
                Ok(_) => break,
                Err(err) => {
                    retry.wait(&err.to_string()).await;
                }
            }
        }
        retry.done(());
        let now = now_ms();
        let mut by_endpoint: HashMap<&str, (bool, bool)> = HashMap::new();
        for r in &batch {
            let entry = by_endpoint.entry(&r.endpoint).or_default();
            entry.0 |= r.delivered;
            entry.1 |= r.gone;
        }
        for (endpoint, (succeeded, gone)) in by_endpoint {
            let change = endpoint_change(&settings, &views, endpoint, succeeded, gone, now);
            let mut retry = Retry::new(backoff, &never, "recording webhook endpoint health");
            loop {
                let done = async {
                    endpoints_store::record_health(&target, endpoint, succeeded, now).await?;
                    if let Some((state, reason)) = &change {
                        admin::set_state(&target, endpoint, *state, reason.as_deref(), now).await?;
                    }
                    Ok::<_, SqlError>(())
                };
                match done.await {
                    Ok(()) => break,
                    Err(err) => {
                        retry.wait(&err.to_string()).await;
                    }
                }
            }
            retry.done(());
            if let Some((state, reason)) = change {
                let state = state.as_str();
                tracing::warn!(
                    endpoint,
                    state,
                    reason = reason.as_deref().unwrap_or(""),
                    "webhook endpoint state changed"
                );
                metrics.state(endpoint, state);
            }
            // a finished delivery may let a user's next one go (per_user), a re-enabled
            // endpoint has its backlog due
            shared.wake(endpoint);
        }
        batch.clear();
    }
}

/// The state an endpoint moves to after a batch of its attempts, if any, updating the view.
fn endpoint_change(
    settings: &WebhookSettings,
    views: &Views,
    endpoint: &str,
    succeeded: bool,
    gone: bool,
    now: i64,
) -> Option<(EndpointState, Option<String>)> {
    let mut views = views.lock().ok()?;
    let view = views.entry(endpoint.to_owned()).or_default();
    let current = view.state.clone();
    let change = if succeeded {
        view.failing_since_ms = None;
        (current == "disabled").then_some((EndpointState::Enabled, None))
    } else {
        let since = *view.failing_since_ms.get_or_insert(now);
        let too_long = now - since >= settings.disable_after.as_millis() as i64;
        if current == "enabled" && gone {
            Some((
                EndpointState::Disabled,
                Some("the endpoint answered 410 Gone".to_owned()),
            ))
        } else if current == "enabled" && too_long {
            Some((
                EndpointState::Disabled,
                Some(format!(
                    "no delivery succeeded for {} s",
                    (now - since) / 1000
                )),
            ))
        } else {
            None
        }
    };
    if let Some((state, _)) = &change {
        view.state = state.as_str().to_owned();
        view.next_probe_at_ms = None;
        if *state == EndpointState::Enabled {
            view.failing_since_ms = None;
        }
    }
    change
}

pub(crate) async fn load_views(
    target: &SqlTarget,
    settings: &WebhookSettings,
    views: &Views,
    metrics: &WebhookMetrics,
) {
    let Ok(rows) = endpoints_store::endpoint_rows(target).await else {
        return;
    };
    let Ok(mut views) = views.lock() else {
        return;
    };
    for row in rows {
        if settings.endpoint(&row.name).is_none() {
            continue;
        }
        metrics.state(&row.name, &row.state);
        views.insert(
            row.name,
            View {
                state: row.state,
                failing_since_ms: row.failing_since_ms,
                next_probe_at_ms: row.next_probe_at_ms,
            },
        );
    }
}

/// Reads every endpoint's state (every poll interval: an operator may change it from another
/// process) and the backlog metrics (every few seconds).
pub(crate) async fn refresh(
    target: SqlTarget,
    settings: Arc<WebhookSettings>,
    views: Views,
    metrics: WebhookMetrics,
    stop: CancellationToken,
) {
    let mut last_backlog = Instant::now() - Duration::from_secs(60);
    while !stop.is_cancelled() {
        load_views(&target, &settings, &views, &metrics).await;
        if last_backlog.elapsed() >= Duration::from_secs(5) {
            last_backlog = Instant::now();
            let now = now_ms();
            match endpoints_store::backlog(&target, now).await {
                Ok(backlog) => {
                    for endpoint in &settings.endpoints {
                        let (due, oldest) =
                            backlog.get(&endpoint.name).copied().unwrap_or((0, None));
                        let age = oldest.map_or(0, |t| (now - t).max(0));
                        metrics.backlog(&endpoint.name, due, Duration::from_millis(age as u64));
                    }
                }
                Err(err) => tracing::warn!(error = %err, "cannot read the webhook backlog"),
            }
        }
        tokio::select! {
            () = tokio::time::sleep(settings.poll_interval) => {}
            () = stop.cancelled() => {}
        }
    }
}
