//! Who may do what in Gantry.
//!
//! - [`role`]: roles (`viewer` < `approver` < `operator` < `admin`), the
//!   actions a request can take, and [`Caller::allows`], the one check.
//! - [`token`]: bearer tokens, stored only as hashes, with an expiry and
//!   revocation, and the admin token given at start.
//! - [`audit`]: the hash-chained audit log.
//!
//! Everything is kept through `gantry-store`, so it works on every backend.

pub mod audit;
pub mod role;
pub mod token;

pub use audit::{AuditLog, AuditRecord, Broken, Entry};
pub use role::{Action, Caller, Role, same_identity};
pub use token::{AuthError, IssueRequest, Issued, TokenRecord, Tokens};
