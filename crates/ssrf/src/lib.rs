//! aob-ssrf: the SSRF guard and the guarded outbound HTTP client used for
//! every request aob makes on a user's behalf (http nodes, agent tools,
//! OpenAPI actions).
//!
//! ```no_run
//! # async fn demo() -> Result<(), aob_ssrf::FetchError> {
//! use aob_ssrf::{Guard, Policy, Request};
//! let guard = Guard::new(Policy::default());
//! let resp = guard.send(Request::get("https://example.com/")).await?;
//! assert_eq!(resp.status, 200);
//! # Ok(()) }
//! ```

mod allow;
mod error;
mod guard;
mod ip;

pub use allow::AllowRule;
pub use error::{FetchError, GuardError, find_guard_error};
pub use guard::{DROPPED_REQUEST_HEADERS, Guard, Policy, Request, Resolver, Response, SystemResolver};
pub use ip::is_blocked_ip;
pub use url::Url;
