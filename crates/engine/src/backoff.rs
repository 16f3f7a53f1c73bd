use aob_model::RetryPolicy;
use sha2::{Digest, Sha256};

/// Longest single retry delay when the policy names none.
const DEFAULT_CAP_MS: u64 = 5 * 60 * 1000;

/// Delay before attempt `attempt + 1`, after `attempt` failed: exponential with
/// "equal jitter" (half fixed, half pseudo-random). The random half is derived from
/// `seed` so that the engine stays deterministic and replayable.
pub fn retry_delay_ms(policy: &RetryPolicy, attempt: u32, seed: &str) -> u64 {
    let exp = policy.backoff_multiplier.max(1.0).powi(attempt.saturating_sub(1).min(60) as i32);
    let cap = policy.max_backoff_ms.unwrap_or(DEFAULT_CAP_MS) as f64;
    let base = (policy.backoff_ms as f64 * exp).min(cap);
    let digest = Sha256::digest(format!("{seed}:{attempt}").as_bytes());
    let mut b = [0u8; 8];
    b.copy_from_slice(&digest[..8]);
    let frac = u64::from_le_bytes(b) as f64 / u64::MAX as f64;
    (base * (0.5 + 0.5 * frac)) as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_and_stays_within_bounds() {
        let p = RetryPolicy {
            max_attempts: 5,
            backoff_ms: 100,
            backoff_multiplier: 2.0,
            max_backoff_ms: Some(350),
        };
        let d1 = retry_delay_ms(&p, 1, "r:n");
        let d2 = retry_delay_ms(&p, 2, "r:n");
        let d3 = retry_delay_ms(&p, 3, "r:n");
        assert!((50..=100).contains(&d1));
        assert!((100..=200).contains(&d2));
        assert!((175..=350).contains(&d3));
        assert_eq!(d2, retry_delay_ms(&p, 2, "r:n"));
    }
}
