//! Refusals anyone can provoke at will, counted rather than logged one by
//! one: fetches refused on their link alone (malformed, a bad signature, no
//! grant of this portal, a retired key, expired, valid for too long) and
//! sign-ins refused as throttled, and requests for links through a
//! withdrawn or lapsed access URL or under an ended grant, which anyone who
//! once saw the URL can repeat. Such a request costs its sender nothing, and
//! an event each would let anyone fill the database's disk (about 2 KB a
//! refusal) and so stop every download.
//!
//! Per client network (an IPv4 address, an IPv6 /64), reason and grant, the
//! first refusal of each window is written at once, as any refusal was; the
//! rest of the window is counted, and when the window ends one event with the
//! count (`occurrences`) and a sample is written, so each grant's history
//! shows its own. Past [`MAX_NETWORKS`] keys in a window, further networks
//! share one tally per reason. Fetches refused on a grant's state (revoked
//! or expired grants, spent quotas, another model's file), which need a live
//! signed link, keep an event each.

use std::{
    collections::{HashMap, HashSet},
    sync::{Mutex, PoisonError},
    time::Duration,
};

use super::{AuditLog, Event};

/// Networks with events of their own in one window.
pub const MAX_NETWORKS: usize = 100;

/// The network that refusals beyond [`MAX_NETWORKS`] are counted under.
pub(crate) const OTHER_NETWORKS: &str = "other networks";

/// (network, reason, grant).
type Key = (String, String, String);

#[derive(Default)]
struct Window {
    /// Keys whose first refusal of the window was written.
    seen: HashSet<Key>,
    /// Refusals after the first, per key, with the first of them as sample.
    counted: HashMap<Key, (u64, Event)>,
}

/// Whether a refusal gets an event of its own.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Tallied {
    /// The first of its network and reason this window: write it.
    First,
    /// Counted; it is in the window's summary.
    Counted,
}

/// The window of one replica.
pub struct RefusalTally {
    every: Duration,
    window: Mutex<Window>,
}

impl std::fmt::Debug for RefusalTally {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RefusalTally")
            .field("every", &self.every)
            .finish_non_exhaustive()
    }
}

impl RefusalTally {
    pub(crate) fn new(every: Duration) -> Self {
        Self {
            every: every.max(Duration::from_secs(1)),
            window: Mutex::default(),
        }
    }

    /// Counts a refusal from `network`; says whether it needs an event of
    /// its own.
    pub(crate) fn note(&self, network: &str, event: &Event) -> Tallied {
        let reason = event.reason.clone().unwrap_or_default();
        let mut window = self.window.lock().unwrap_or_else(PoisonError::into_inner);
        let grant = event.grant_id.clone().unwrap_or_default();
        let mut key = (network.to_owned(), reason, grant);
        if !window.seen.contains(&key) && window.seen.len() >= MAX_NETWORKS {
            key = (OTHER_NETWORKS.to_owned(), key.1, String::new());
        }
        if window.seen.insert(key.clone()) {
            return Tallied::First;
        }
        let shared = key.0 == OTHER_NETWORKS;
        let sample = || {
            let mut sample = event.clone();
            if shared {
                // Counted with other grants' refusals: the sample names none.
                sample.grant_id = None;
                sample.researcher_id = None;
            }
            sample
        };
        window.counted.entry(key).or_insert_with(|| (0, sample())).0 += 1;
        Tallied::Counted
    }

    /// Ends the window: one summary event per network and reason counted.
    pub(crate) fn close_window(&self) -> Vec<Event> {
        let window = std::mem::take(&mut *self.window.lock().unwrap_or_else(PoisonError::into_inner));
        let mut summaries: Vec<Event> = window
            .counted
            .into_iter()
            .map(|((network, reason, _), (count, mut event))| {
                let sample = event.subject.take().unwrap_or_default();
                event.subject = Some(format!(
                    "{count} more refused from {network} ({reason}); the first of them: {sample}"
                ));
                event.occurrences = Some(count);
                event.client.ip = Some(network);
                event.client.request_id = None;
                event
            })
            .collect();
        summaries.sort_by(|a, b| a.subject.cmp(&b.subject));
        summaries
    }

    /// Writes each window's summaries as it ends; runs until dropped.
    pub(crate) async fn run(self: std::sync::Arc<Self>, audit: AuditLog) {
        let mut ticks = tokio::time::interval(self.every);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        ticks.tick().await;
        loop {
            ticks.tick().await;
            self.flush(&audit).await;
        }
    }

    /// Writes the current window's summaries now, and starts a new window.
    pub async fn flush(&self, audit: &AuditLog) {
        for event in self.close_window() {
            if let Err(err) = audit.record(event).await {
                tracing::error!(error = %format!("{err:#}"), "cannot record a summary of refused fetches");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::audit::Action;

    fn refusal(reason: &str, subject: &str) -> Event {
        Event::refused(Action::FileFetch, reason).subject(subject)
    }

    #[test]
    fn the_first_refusal_of_a_window_is_written_and_the_rest_counted() {
        let tally = RefusalTally::new(Duration::from_secs(60));
        assert_eq!(
            tally.note("203.0.113.9", &refusal("bad_signature", "a")),
            Tallied::First
        );
        for n in 0..5 {
            let subject = format!("b{n}");
            assert_eq!(
                tally.note("203.0.113.9", &refusal("bad_signature", &subject)),
                Tallied::Counted
            );
        }
        assert_eq!(
            tally.note("203.0.113.9", &refusal("malformed_link", "c")),
            Tallied::First
        );
        assert_eq!(
            tally.note("198.51.100.1", &refusal("bad_signature", "d")),
            Tallied::First
        );
        let summaries = tally.close_window();
        assert_eq!(summaries.len(), 1);
        assert_eq!(summaries[0].occurrences, Some(5));
        assert_eq!(summaries[0].client.ip.as_deref(), Some("203.0.113.9"));
        assert!(
            summaries[0]
                .subject
                .as_deref()
                .unwrap()
                .ends_with("the first of them: b0")
        );
        // A new window starts afresh.
        assert_eq!(
            tally.note("203.0.113.9", &refusal("bad_signature", "e")),
            Tallied::First
        );
        assert!(tally.close_window().is_empty());
    }

    #[test]
    fn networks_past_the_limit_share_one_tally() {
        let tally = RefusalTally::new(Duration::from_secs(60));
        for n in 0..MAX_NETWORKS + 50 {
            tally.note(
                &format!("10.0.{}.{}", n / 256, n % 256),
                &refusal("bad_signature", "x"),
            );
        }
        let summaries = tally.close_window();
        assert_eq!(summaries.len(), 1, "one event past the first of other networks");
        assert_eq!(summaries[0].client.ip.as_deref(), Some(OTHER_NETWORKS));
        assert_eq!(summaries[0].occurrences, Some(49));
    }

    #[test]
    fn each_grant_keeps_its_own_tally() {
        let tally = RefusalTally::new(Duration::from_secs(60));
        let of_grant = |grant: &str| {
            let mut event = Event::refused(Action::LinksIssued, "access_url_withdrawn");
            event.grant_id = Some(grant.to_owned());
            event
        };
        for grant in ["g1", "g2"] {
            assert_eq!(tally.note("203.0.113.9", &of_grant(grant)), Tallied::First);
            assert_eq!(tally.note("203.0.113.9", &of_grant(grant)), Tallied::Counted);
        }
        let mut grants: Vec<_> = tally
            .close_window()
            .into_iter()
            .map(|e| e.grant_id.unwrap())
            .collect();
        grants.sort();
        assert_eq!(grants, ["g1", "g2"], "each grant's history shows its own summary");
    }
}
