//! A token bucket, driven by the `Instant`s the caller passes in.

use std::time::Instant;

#[derive(Debug, Clone)]
pub struct TokenBucket {
    capacity: f64,
    per_second: f64,
    tokens: f64,
    last: Option<Instant>,
}

impl TokenBucket {
    /// A full bucket of `capacity` tokens refilled at `per_second`.
    pub fn new(capacity: f64, per_second: f64) -> Self {
        Self {
            capacity,
            per_second,
            tokens: capacity,
            last: None,
        }
    }

    /// Refills at `per_second` from now on.
    pub fn set_rate(&mut self, per_second: f64) {
        self.per_second = per_second;
    }

    /// Takes `amount` tokens if there are that many.
    pub fn try_take(&mut self, amount: f64, now: Instant) -> bool {
        if let Some(last) = self.last {
            let elapsed = now.saturating_duration_since(last).as_secs_f64();
            self.tokens = (self.tokens + elapsed * self.per_second).min(self.capacity);
        }
        self.last = Some(now);
        if self.tokens >= amount {
            self.tokens -= amount;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn bursts_then_refills() {
        let t0 = Instant::now();
        let mut bucket = TokenBucket::new(3.0, 10.0);
        assert!((0..3).all(|_| bucket.try_take(1.0, t0)));
        assert!(!bucket.try_take(1.0, t0));
        assert!(bucket.try_take(1.0, t0 + Duration::from_millis(100)));
        assert!(!bucket.try_take(1.0, t0 + Duration::from_millis(100)));
        // Never above capacity, however long it waits.
        let later = t0 + Duration::from_secs(60);
        assert!((0..3).all(|_| bucket.try_take(1.0, later)));
        assert!(!bucket.try_take(1.0, later));
    }
}
