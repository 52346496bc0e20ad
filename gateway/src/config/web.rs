//! `[web]`: the staff web page's listener, sessions and sign-in lockout.

use std::net::SocketAddr;

use serde::Deserialize;

/// `[web]`: the staff web page (HTTPS with the gateway's certificate; staff sign in with a
/// password, so client certificates are not asked for). Off when the section is absent.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WebSection {
    /// Where the page listens (its own listener: the API listener keeps requiring client
    /// certificates).
    pub listen: SocketAddr,
    /// A session ends this long after sign-in, minutes.
    #[serde(default = "default_session_minutes")]
    pub session_minutes: u64,
    /// ...or after this long without a request, minutes.
    #[serde(default = "default_idle_minutes")]
    pub idle_minutes: u64,
    /// Wrong passwords in a row that lock an account.
    #[serde(default = "default_max_failures")]
    pub max_failures: u32,
    /// How long such a lock lasts, seconds.
    #[serde(default = "default_lockout_seconds")]
    pub lockout_seconds: u64,
}

fn default_session_minutes() -> u64 {
    480
}
fn default_idle_minutes() -> u64 {
    30
}
fn default_max_failures() -> u32 {
    5
}
fn default_lockout_seconds() -> u64 {
    900
}

impl WebSection {
    /// Checks the bounds; an error names the field.
    pub(super) fn check(&self) -> Result<(), (&'static str, String)> {
        if !(1..=24 * 60).contains(&self.session_minutes) {
            return Err((
                "web.session_minutes",
                format!("{} is outside 1..=1440", self.session_minutes),
            ));
        }
        if !(1..=self.session_minutes).contains(&self.idle_minutes) {
            return Err((
                "web.idle_minutes",
                format!(
                    "{} is outside 1..=web.session_minutes ({})",
                    self.idle_minutes, self.session_minutes
                ),
            ));
        }
        if !(1..=100).contains(&self.max_failures) {
            return Err((
                "web.max_failures",
                format!("{} is outside 1..=100", self.max_failures),
            ));
        }
        if !(1..=86_400).contains(&self.lockout_seconds) {
            return Err((
                "web.lockout_seconds",
                format!("{} is outside 1..=86400", self.lockout_seconds),
            ));
        }
        Ok(())
    }
}
