//! The event bus: producers publish [`Event`]s, `GET /api/v1/events`
//! subscribers receive them. Publishing costs nothing while nobody watches.

use std::sync::Arc;

use neuwerk_core::events::{
    DnsEvent, DnsObserver, DnsQueryView, Event, FilteredEvent, FilteredView,
};
use tokio::sync::broadcast;

use crate::metrics::Metrics;

/// Fan-out of [`Event`]s to any number of subscribers. A subscriber that
/// falls more than the capacity behind loses the oldest events and is told
/// how many (a `lost` line on the stream). Cloning shares the bus.
#[derive(Debug, Clone)]
pub struct EventBus {
    tx: broadcast::Sender<Arc<Event>>,
}

impl Default for EventBus {
    fn default() -> Self {
        EventBus::new(EventBus::DEFAULT_CAPACITY)
    }
}

impl EventBus {
    /// Events buffered per subscriber by [`EventBus::default`].
    pub const DEFAULT_CAPACITY: usize = 4096;

    /// A bus buffering up to `capacity` events per subscriber.
    pub fn new(capacity: usize) -> EventBus {
        let (tx, _) = broadcast::channel(capacity.max(1));
        EventBus { tx }
    }

    /// Whether anyone is subscribed; producers may skip building events
    /// when not.
    pub fn has_subscribers(&self) -> bool {
        self.tx.receiver_count() > 0
    }

    /// Number of current subscribers.
    pub fn subscribers(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Sends `event` to every subscriber; does nothing without any.
    pub fn publish(&self, event: Event) {
        if self.has_subscribers() {
            let _ = self.tx.send(Arc::new(event));
        }
    }

    /// Builds the event only if someone is subscribed, then sends it.
    pub fn publish_with(&self, make: impl FnOnce() -> Event) {
        if self.has_subscribers() {
            let _ = self.tx.send(Arc::new(make()));
        }
    }

    /// A new subscription, receiving events published from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<Arc<Event>> {
        self.tx.subscribe()
    }
}

/// Publishes every finished query as an [`Event::Dns`] and every
/// special-use address left out as an [`Event::Filtered`], copying the
/// borrowed view only when someone is subscribed.
impl DnsObserver for EventBus {
    fn query(&self, q: &DnsQueryView<'_>) {
        self.publish_with(|| Event::Dns(DnsEvent::from(q)));
    }

    fn filtered(&self, f: &FilteredView<'_>) {
        self.publish_with(|| Event::Filtered(FilteredEvent::from(f)));
    }
}

/// The DNS observer the daemon hands to the proxy: counts each query in
/// [`Metrics`] and publishes it on the [`EventBus`].
#[derive(Debug, Clone)]
pub struct MgmtObserver {
    /// Where queries are counted.
    pub metrics: Arc<Metrics>,
    /// Where queries are published.
    pub bus: EventBus,
}

impl DnsObserver for MgmtObserver {
    fn query(&self, q: &DnsQueryView<'_>) {
        self.metrics.query(q);
        self.bus.query(q);
    }

    fn filtered(&self, f: &FilteredView<'_>) {
        self.metrics.filtered(f);
        self.bus.filtered(f);
    }
}
