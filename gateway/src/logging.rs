//! Logging for the journal: plain text without colour codes unless stderr is a terminal, and
//! repeated warnings and errors rate-limited (an unreachable peer would otherwise log the same
//! error every retry, burying everything else).

use std::collections::HashMap;
use std::hash::{Hash, Hasher};
use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::field::{Field, Visit};
use tracing::{Event, Level, Subscriber};
use tracing_subscriber::layer::{Context, Layer};
use tracing_subscriber::prelude::*;

/// The same warning or error (same place in the code, same fields) is logged at most once per
/// this window.
pub const REPEAT_WINDOW: Duration = Duration::from_secs(60);
/// How many distinct messages are remembered; past it the memory starts afresh.
const MAX_KEYS: usize = 4096;

/// Drops a warning or error identical to one logged less than `window` ago.
pub struct RateLimit {
    window: Duration,
    seen: Mutex<HashMap<u64, Instant>>,
}

impl RateLimit {
    pub fn new(window: Duration) -> Self {
        Self {
            window,
            seen: Mutex::new(HashMap::new()),
        }
    }
}

struct FieldHash<'a>(&'a mut std::collections::hash_map::DefaultHasher);

impl Visit for FieldHash<'_> {
    fn record_debug(&mut self, field: &Field, value: &dyn std::fmt::Debug) {
        field.name().hash(self.0);
        format!("{value:?}").hash(self.0);
    }
}

impl<S: Subscriber> Layer<S> for RateLimit {
    fn event_enabled(&self, event: &Event<'_>, _ctx: Context<'_, S>) -> bool {
        // INFO and more verbose levels pass: they are not repeated on a timer.
        if *event.metadata().level() > Level::WARN {
            return true;
        }
        let mut h = std::collections::hash_map::DefaultHasher::new();
        event.metadata().callsite().hash(&mut h);
        event.record(&mut FieldHash(&mut h));
        let key = h.finish();
        let now = Instant::now();
        let mut seen = self.seen.lock().unwrap_or_else(|p| p.into_inner());
        match seen.get(&key) {
            Some(t) if now.duration_since(*t) < self.window => false,
            _ => {
                if seen.len() >= MAX_KEYS {
                    seen.clear();
                }
                seen.insert(key, now);
                true
            }
        }
    }
}

/// Sets up the process's logging: `RUST_LOG` (default `warn`), to stderr, colours only on a
/// terminal, repeated warnings and errors at most once per [`REPEAT_WINDOW`].
pub fn init() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    subscriber(filter, std::io::stderr().is_terminal()).init();
}

/// The subscriber [`init`] installs. `filter` applies to the whole of it, not to the output
/// layer alone: a layer without a filter (the rate limit) would otherwise declare interest in
/// every callsite, so every `debug!` and `trace!` of sled, openraft, rustls and hyper was built
/// and dispatched (and the `log` crate's maximum set to `trace`) only for the output layer to
/// drop it: 17 % of the gateways' CPU per event at 1 client, ~5 % at 256 (docs/benchmarks.md,
/// "Logging that is off costs nothing").
fn subscriber(
    filter: tracing_subscriber::EnvFilter,
    ansi: bool,
) -> impl Subscriber + Send + Sync + for<'a> tracing_subscriber::registry::LookupSpan<'a> {
    tracing_subscriber::registry()
        .with(filter)
        .with(RateLimit::new(REPEAT_WINDOW))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(ansi),
        )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    struct Count(Arc<AtomicUsize>);
    impl<S: Subscriber> Layer<S> for Count {
        fn on_event(&self, _e: &Event<'_>, _c: Context<'_, S>) {
            self.0.fetch_add(1, Ordering::SeqCst);
        }
    }

    /// What the filter leaves out is off at its callsite: the subscriber's level hint is the
    /// filter's (so the `log` crate's maximum is too) and a `debug!` is not enabled at all.
    #[test]
    fn the_filter_switches_off_what_it_leaves_out_at_the_callsite() {
        use tracing::level_filters::LevelFilter;
        let sub = subscriber(tracing_subscriber::EnvFilter::new("warn"), false);
        assert_eq!(sub.max_level_hint(), Some(LevelFilter::WARN));
        tracing::subscriber::with_default(sub, || {
            assert!(!tracing::enabled!(Level::DEBUG));
            assert!(!tracing::enabled!(Level::INFO));
            assert!(tracing::enabled!(Level::WARN));
        });
        let sub = subscriber(
            tracing_subscriber::EnvFilter::new("warn,medledger_gateway=debug"),
            false,
        );
        assert_eq!(sub.max_level_hint(), Some(LevelFilter::DEBUG));
        tracing::subscriber::with_default(sub, || {
            assert!(tracing::enabled!(Level::DEBUG));
            assert!(!tracing::enabled!(target: "sled::tree", Level::DEBUG));
        });
    }

    #[test]
    fn repeated_errors_are_logged_once_per_window_and_distinct_ones_each() {
        let n = Arc::new(AtomicUsize::new(0));
        let sub = tracing_subscriber::registry()
            .with(RateLimit::new(Duration::from_secs(3600)))
            .with(Count(n.clone()));
        tracing::subscriber::with_default(sub, || {
            for _ in 0..10 {
                tracing::error!(peer = 2, "peer unreachable");
            }
            tracing::error!(peer = 3, "peer unreachable");
            for _ in 0..3 {
                tracing::info!("informational lines are never dropped");
            }
        });
        assert_eq!(n.load(Ordering::SeqCst), 1 + 1 + 3);
    }
}
