//! Rate limits on what a script could use to flood the portal or someone's
//! inbox: applications, e-mails sent on request, and link minting. Each is
//! counted per key (a client address, a recipient, a grant) in memory, on
//! this replica: with N replicas behind a load balancer a client gets up to
//! N times the rate, which the defaults allow for.

use std::{
    collections::HashMap,
    fmt,
    sync::{Mutex, PoisonError},
    time::{Duration, Instant},
};

use governor::{
    DefaultKeyedRateLimiter, Quota, RateLimiter,
    clock::{Clock, DefaultClock},
};

use crate::config::{Config, Rate};

/// The governor quota of a rate: `burst` at once, one more every
/// `per / burst`.
fn quota(rate: Rate) -> Quota {
    let every = (rate.per / rate.burst.get()).max(Duration::from_nanos(1));
    Quota::with_period(every)
        .expect("a period is not zero")
        .allow_burst(rate.burst)
}

/// One limit: a name for metrics and logs, what a refused person reads, and
/// the counters by key.
pub(crate) struct Limit {
    pub(crate) name: &'static str,
    pub(crate) what: &'static str,
    limiter: DefaultKeyedRateLimiter<String>,
    /// Keys refused lately, with the time each may send again: a client
    /// still over its limit is refused before any work (see `lanes`).
    refused: Mutex<HashMap<String, Instant>>,
}

impl fmt::Debug for Limit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Limit")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

/// Keys kept before the counters of idle keys are dropped.
const MAX_KEYS: usize = 100_000;

impl Limit {
    pub(crate) fn new(name: &'static str, what: &'static str, rate: Rate) -> Self {
        Self {
            name,
            what,
            limiter: RateLimiter::keyed(quota(rate)),
            refused: Mutex::default(),
        }
    }

    /// Counts one request for `key`; `Err` with the time to wait when the
    /// key is over its limit (the refused request is not counted).
    pub(crate) fn check(&self, key: &str) -> Result<(), Duration> {
        if self.limiter.len() > MAX_KEYS {
            self.limiter.retain_recent();
        }
        let key = key.to_owned();
        self.limiter.check_key(&key).map_err(|not_until| {
            let wait = not_until.wait_time_from(DefaultClock::default().now());
            let mut refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
            if refused.len() >= MAX_KEYS {
                let now = Instant::now();
                refused.retain(|_, until| *until > now);
                if refused.len() >= MAX_KEYS {
                    refused.clear();
                }
            }
            refused.insert(key, Instant::now() + wait);
            wait
        })
    }

    /// The time to wait when `key` was refused lately and would be refused
    /// now, without counting a request. A refused request does not count
    /// either, so until that time [`Limit::check`] refuses the key too.
    pub(crate) fn refusing(&self, key: &str) -> Option<Duration> {
        let refused = self.refused.lock().unwrap_or_else(PoisonError::into_inner);
        let wait = refused.get(key)?.checked_duration_since(Instant::now())?;
        (!wait.is_zero()).then_some(wait)
    }
}

/// Every rate limit of a replica.
#[derive(Debug)]
pub(crate) struct RateLimits {
    /// Application forms sent from one client address.
    pub(crate) applications_per_address: Limit,
    /// E-mails sent on someone's request (application confirmations and
    /// notices, sign-in links) to one address, whether or not it belongs
    /// to anyone: the answer never says which.
    pub(crate) mail_per_recipient: Limit,
    /// Sign-in link requests from one client address.
    pub(crate) signin_per_address: Limit,
    /// Pages and manifests with freshly signed links for one grant.
    pub(crate) links_per_grant: Limit,
    /// Pages and manifests with freshly signed links from one client address.
    pub(crate) links_per_address: Limit,
    /// Fetches refused on their link alone from one client address.
    pub(crate) bad_links_per_address: Limit,
    /// API requests with one token.
    pub(crate) api_per_token: Limit,
    /// API requests with a token not accepted, from one client address.
    pub(crate) bad_tokens_per_address: Limit,
}

impl RateLimits {
    pub(crate) fn new(config: &Config) -> Self {
        Self {
            applications_per_address: Limit::new(
                "applications_per_address",
                "Too many applications were sent from your address",
                config.limit_applications_per_address,
            ),
            mail_per_recipient: Limit::new(
                "mail_per_recipient",
                "Too many e-mails were asked for this address",
                config.limit_mail_per_recipient,
            ),
            signin_per_address: Limit::new(
                "signin_per_address",
                "Too many sign-in links were asked for from your address",
                config.limit_signin_per_address,
            ),
            links_per_grant: Limit::new(
                "links_per_grant",
                "Fresh links for this access were asked for too often",
                config.limit_links_per_grant,
            ),
            links_per_address: Limit::new(
                "links_per_address",
                "Fresh links were asked for too often from your address",
                config.limit_links_per_address,
            ),
            bad_links_per_address: Limit::new(
                "bad_links_per_address",
                "Too many invalid download links were sent from your address",
                config.limit_bad_links_per_address,
            ),
            api_per_token: Limit::new(
                "api_per_token",
                "Too many requests were sent with this token",
                config.limit_api_per_token,
            ),
            bad_tokens_per_address: Limit::new(
                "bad_tokens_per_address",
                "Too many requests with an invalid token were sent from your address",
                config.limit_bad_tokens_per_address,
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_key_over_its_burst_waits_and_others_do_not() {
        let limit = Limit::new("test", "Too many", "2/1h".parse().unwrap());
        assert!(limit.check("a").is_ok());
        assert!(limit.check("a").is_ok());
        let wait = limit.check("a").unwrap_err();
        assert!(
            wait > Duration::from_secs(1_700) && wait <= Duration::from_secs(1_800),
            "one more every half hour: {wait:?}"
        );
        assert!(limit.check("b").is_ok());
    }

    #[test]
    fn a_key_refused_lately_is_known_without_counting_a_request() {
        let limit = Limit::new("test", "Too many", "2/1h".parse().unwrap());
        for _ in 0..10 {
            assert_eq!(limit.refusing("a"), None, "asking counts nothing");
        }
        assert!(limit.check("a").is_ok());
        assert!(limit.check("a").is_ok());
        assert_eq!(limit.refusing("a"), None, "not refused yet");
        let wait = limit.check("a").unwrap_err();
        let told = limit.refusing("a").expect("refused lately");
        assert!(
            told <= wait && told > wait - Duration::from_secs(5),
            "{told:?} {wait:?}"
        );
        assert_eq!(limit.refusing("b"), None);
        // Past the wait it is for the limit to say again.
        let short = Limit::new("test", "Too many", "1/100ms".parse().unwrap());
        assert!(short.check("a").is_ok());
        assert!(short.check("a").is_err());
        std::thread::sleep(Duration::from_millis(150));
        assert_eq!(short.refusing("a"), None);
        assert!(short.check("a").is_ok());
    }
}
