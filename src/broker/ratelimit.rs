//! Per-client publish rate limit: token buckets for messages/s and payload bytes/s.
//!
//! Each connection owns one [`PublishRateLimiter`] (no sharing, no locks) and asks it about
//! every inbound PUBLISH. Time is passed in (`now: Instant`) so the arithmetic is testable
//! without sleeping.
//!
//! Two ways to use it:
//! - **Throttle** ([`PublishRateLimiter::acquire`]): always admit the message and get back how
//!   long to pause before reading the next packet. The client is slowed by TCP backpressure
//!   and nothing is lost; this is the "flow control" the seed asks for.
//! - **Reject** ([`PublishRateLimiter::try_acquire`]): admit only if tokens are available now;
//!   otherwise the message is refused (e.g. v5 PUBACK/PUBREC 0x97 Quota exceeded, or DISCONNECT
//!   0x96 Message rate too high) and the buckets are left untouched.
//!
//! A bucket holds up to `burst` seconds' worth of tokens (default one second), so short bursts
//! pass at full speed while the long-run average stays at the configured rate. A message whose
//! payload is larger than the byte bucket can ever hold is admitted when the bucket is full and
//! leaves it in debt, instead of being blocked forever; the debt is repaid before anything else
//! passes, so the average still holds.

use std::time::{Duration, Instant};

/// Limits for one client; `None` means unlimited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct PublishRateLimit {
    pub messages_per_sec: Option<u32>,
    pub bytes_per_sec: Option<u64>,
    /// Bucket capacity in seconds of rate; values below the cost of one message are raised to
    /// one message. Default 1.0.
    pub burst_secs: f64,
}

impl Default for PublishRateLimit {
    fn default() -> Self {
        PublishRateLimit {
            messages_per_sec: None,
            bytes_per_sec: None,
            burst_secs: 1.0,
        }
    }
}

impl PublishRateLimit {
    pub fn is_unlimited(&self) -> bool {
        self.messages_per_sec.is_none() && self.bytes_per_sec.is_none()
    }
}

#[derive(Debug, Clone)]
struct TokenBucket {
    /// Tokens per second.
    rate: f64,
    capacity: f64,
    /// May go negative (debt) after an oversized message.
    tokens: f64,
    last: Instant,
}

impl TokenBucket {
    fn new(rate: f64, burst_secs: f64, now: Instant) -> TokenBucket {
        let capacity = (rate * burst_secs).max(1.0);
        TokenBucket {
            rate,
            capacity,
            tokens: capacity,
            last: now,
        }
    }

    fn refill(&mut self, now: Instant) {
        // A clock that appears to go backwards (an earlier `now`) adds nothing.
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = self.last.max(now);
        self.tokens = (self.tokens + elapsed * self.rate).min(self.capacity);
    }

    /// Tokens needed before a message of `cost` may pass: the cost itself, or a full bucket
    /// for a message larger than the bucket.
    fn threshold(&self, cost: f64) -> f64 {
        cost.min(self.capacity)
    }

    /// How long until `cost` could pass (zero if it can now). Call after `refill`.
    fn wait_for(&self, cost: f64) -> Duration {
        let missing = self.threshold(cost) - self.tokens;
        if missing <= 0.0 {
            Duration::ZERO
        } else {
            duration_from_secs(missing / self.rate)
        }
    }
}

/// `Duration::from_secs_f64` panics on overflow or NaN; rates here are positive and finite, but
/// clamp anyway so no input can panic.
fn duration_from_secs(secs: f64) -> Duration {
    if secs.is_finite() && secs > 0.0 {
        Duration::try_from_secs_f64(secs).unwrap_or(Duration::MAX)
    } else {
        Duration::ZERO
    }
}

/// The publish rate limiter of one connection.
#[derive(Debug, Clone)]
pub struct PublishRateLimiter {
    messages: Option<TokenBucket>,
    bytes: Option<TokenBucket>,
}

impl PublishRateLimiter {
    /// A limit of 0 for either rate is treated as "unlimited" (the usual config meaning of 0).
    pub fn new(limit: PublishRateLimit, now: Instant) -> PublishRateLimiter {
        let burst = if limit.burst_secs.is_finite() && limit.burst_secs > 0.0 {
            limit.burst_secs
        } else {
            1.0
        };
        PublishRateLimiter {
            messages: limit
                .messages_per_sec
                .filter(|&r| r > 0)
                .map(|r| TokenBucket::new(f64::from(r), burst, now)),
            bytes: limit
                .bytes_per_sec
                .filter(|&r| r > 0)
                .map(|r| TokenBucket::new(r as f64, burst, now)),
        }
    }

    pub fn is_unlimited(&self) -> bool {
        self.messages.is_none() && self.bytes.is_none()
    }

    fn refill(&mut self, now: Instant) {
        for b in [&mut self.messages, &mut self.bytes].into_iter().flatten() {
            b.refill(now);
        }
    }

    fn wait_for(&self, payload_len: usize) -> Duration {
        let m = self
            .messages
            .as_ref()
            .map_or(Duration::ZERO, |b| b.wait_for(1.0));
        let y = self
            .bytes
            .as_ref()
            .map_or(Duration::ZERO, |b| b.wait_for(payload_len as f64));
        m.max(y)
    }

    fn consume(&mut self, payload_len: usize) {
        if let Some(b) = &mut self.messages {
            b.tokens -= 1.0;
        }
        if let Some(b) = &mut self.bytes {
            b.tokens -= payload_len as f64;
        }
    }

    /// Reject mode: `Ok(())` and the message is charged if both buckets have room now;
    /// otherwise `Err(retry_after)` and nothing is charged.
    pub fn try_acquire(&mut self, now: Instant, payload_len: usize) -> Result<(), Duration> {
        if self.is_unlimited() {
            return Ok(());
        }
        self.refill(now);
        let wait = self.wait_for(payload_len);
        if wait > Duration::ZERO {
            return Err(wait);
        }
        self.consume(payload_len);
        Ok(())
    }

    /// `acquire` now; without limits (the default) it reads no clock, which matters per publish.
    pub fn acquire_now(&mut self, payload_len: usize) -> Duration {
        if self.is_unlimited() {
            return Duration::ZERO;
        }
        self.acquire(Instant::now(), payload_len)
    }

    /// Throttle mode: charge the message unconditionally and return how long the connection
    /// should pause before reading its next packet so the client stays within the limits
    /// (zero when it is within them). Calling again before that pause has passed keeps
    /// adding to the debt, so the returned pauses always add up to the configured rate.
    pub fn acquire(&mut self, now: Instant, payload_len: usize) -> Duration {
        if self.is_unlimited() {
            return Duration::ZERO;
        }
        self.refill(now);
        // Pause until both buckets are back to zero after this charge (full for an oversized
        // message), i.e. until the *next* message could pass if it were free.
        self.consume(payload_len);
        let m = self
            .messages
            .as_ref()
            .map_or(Duration::ZERO, |b| b.wait_for(0.0));
        let y = self
            .bytes
            .as_ref()
            .map_or(Duration::ZERO, |b| b.wait_for(0.0));
        m.max(y)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limiter(msgs: Option<u32>, bytes: Option<u64>, t0: Instant) -> PublishRateLimiter {
        PublishRateLimiter::new(
            PublishRateLimit {
                messages_per_sec: msgs,
                bytes_per_sec: bytes,
                burst_secs: 1.0,
            },
            t0,
        )
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn approx(d: Duration, expected: Duration) -> bool {
        d.abs_diff(expected) < Duration::from_micros(10)
    }

    #[test]
    fn unlimited_limiter_admits_everything_without_waiting() {
        let t0 = Instant::now();
        let mut l = limiter(None, None, t0);
        assert!(l.is_unlimited());
        for _ in 0..10_000 {
            assert_eq!(l.try_acquire(t0, 1 << 20), Ok(()));
            assert_eq!(l.acquire(t0, 1 << 20), Duration::ZERO);
        }
        // Zero means unlimited too.
        assert!(limiter(Some(0), Some(0), t0).is_unlimited());
    }

    #[test]
    fn message_rate_allows_a_burst_then_rejects_until_tokens_refill() {
        let t0 = Instant::now();
        let mut l = limiter(Some(10), None, t0);
        for i in 0..10 {
            assert_eq!(l.try_acquire(t0, 100), Ok(()), "message {i} of the burst");
        }
        let wait = l
            .try_acquire(t0, 100)
            .expect_err("11th message in the same instant");
        assert!(approx(wait, ms(100)), "{wait:?}");
        // Rejections charge nothing: still exactly one token after 100 ms.
        assert!(l.try_acquire(t0 + ms(50), 100).is_err());
        assert_eq!(l.try_acquire(t0 + ms(100), 100), Ok(()));
        assert!(l.try_acquire(t0 + ms(100), 100).is_err());
    }

    #[test]
    fn long_run_average_matches_the_message_rate() {
        let t0 = Instant::now();
        let mut l = limiter(Some(50), None, t0);
        // Offer a message every millisecond for 10 s: 10 000 attempts.
        let admitted = (0..10_000u64)
            .filter(|i| l.try_acquire(t0 + ms(*i), 10).is_ok())
            .count();
        // 50/s for ~10 s plus the initial burst of 50.
        assert!((549..=551).contains(&admitted), "{admitted}");
    }

    #[test]
    fn byte_rate_limits_by_payload_size() {
        let t0 = Instant::now();
        let mut l = limiter(None, Some(1000), t0);
        assert_eq!(l.try_acquire(t0, 600), Ok(()));
        let wait = l.try_acquire(t0, 600).expect_err("only 400 bytes left");
        assert!(approx(wait, ms(200)), "{wait:?}");
        // Small messages still fit in what is left.
        assert_eq!(l.try_acquire(t0, 400), Ok(()));
        assert!(l.try_acquire(t0, 1).is_err());
    }

    #[test]
    fn both_limits_must_allow_and_neither_is_charged_on_rejection() {
        let t0 = Instant::now();
        let mut l = limiter(Some(2), Some(100), t0);
        assert_eq!(l.try_acquire(t0, 90), Ok(()));
        // Message bucket has room (1 left), byte bucket does not (10 left).
        assert!(l.try_acquire(t0, 50).is_err());
        // The rejected attempt did not use the message token.
        assert_eq!(l.try_acquire(t0, 10), Ok(()));
        // Now the message bucket is empty even for an empty payload.
        let wait = l.try_acquire(t0, 0).expect_err("message bucket empty");
        assert!(approx(wait, ms(500)), "{wait:?}");
    }

    #[test]
    fn oversized_message_passes_when_bucket_is_full_and_leaves_debt() {
        let t0 = Instant::now();
        let mut l = limiter(None, Some(1000), t0);
        assert_eq!(l.try_acquire(t0, 5000), Ok(()));
        // 4000 bytes of debt: a 1-byte message needs 4001 bytes of refill = 4.001 s.
        let wait = l.try_acquire(t0, 1).expect_err("in debt");
        assert!(approx(wait, ms(4001)), "{wait:?}");
        // And the oversized one again needs a full bucket: 5 s from the start.
        assert!(l.try_acquire(t0 + ms(4999), 5000).is_err());
        assert_eq!(l.try_acquire(t0 + ms(5000), 5000), Ok(()));
    }

    #[test]
    fn throttle_pauses_add_up_to_the_configured_rate() {
        let t0 = Instant::now();
        let mut l = limiter(Some(100), Some(10_000), t0);
        // A client that sends 1 000 messages of 200 bytes as fast as it is allowed: it may send
        // the next one after each returned pause.
        let mut now = t0;
        for _ in 0..1000 {
            now += l.acquire(now, 200);
        }
        // 200 kB at 10 kB/s with a 10 kB burst: the byte limit dominates, ~19 s.
        let elapsed = now - t0;
        assert!(approx(elapsed, Duration::from_secs(19)), "{elapsed:?}");
    }

    #[test]
    fn throttle_returns_zero_within_the_burst() {
        let t0 = Instant::now();
        let mut l = limiter(Some(5), None, t0);
        for _ in 0..5 {
            assert_eq!(l.acquire(t0, 1), Duration::ZERO);
        }
        assert!(approx(l.acquire(t0, 1), ms(200)));
        // Calling again without pausing deepens the debt.
        assert!(approx(l.acquire(t0, 1), ms(400)));
    }

    #[test]
    fn idle_time_refills_only_up_to_the_burst() {
        let t0 = Instant::now();
        let mut l = limiter(Some(10), None, t0);
        let later = t0 + Duration::from_secs(3600);
        let admitted = (0..100).filter(|_| l.try_acquire(later, 0).is_ok()).count();
        assert_eq!(admitted, 10);
    }

    #[test]
    fn burst_setting_scales_capacity_and_bad_values_fall_back() {
        let t0 = Instant::now();
        let mk = |burst| {
            PublishRateLimiter::new(
                PublishRateLimit {
                    messages_per_sec: Some(10),
                    bytes_per_sec: None,
                    burst_secs: burst,
                },
                t0,
            )
        };
        let count =
            |mut l: PublishRateLimiter| (0..100).filter(|_| l.try_acquire(t0, 0).is_ok()).count();
        assert_eq!(count(mk(2.0)), 20);
        assert_eq!(count(mk(0.01)), 1); // at least one message
        assert_eq!(count(mk(f64::NAN)), 10);
        assert_eq!(count(mk(-1.0)), 10);
    }

    #[test]
    fn earlier_timestamp_does_not_panic_or_add_tokens() {
        let t0 = Instant::now() + Duration::from_secs(10);
        let mut l = limiter(Some(1), None, t0);
        assert_eq!(l.try_acquire(t0, 0), Ok(()));
        assert!(l.try_acquire(t0 - Duration::from_secs(5), 0).is_err());
        assert!(l.try_acquire(t0 + ms(999), 0).is_err());
        assert_eq!(l.try_acquire(t0 + ms(1000), 0), Ok(()));
    }
}
