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
    tracing_subscriber::registry()
        .with(RateLimit::new(REPEAT_WINDOW))
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(std::io::stderr().is_terminal())
                .with_filter(filter),
        )
        .init();
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
