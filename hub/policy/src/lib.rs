//! Who is asking, and may they: the hub's authentication and authorisation.
//!
//! Authentication is by bearer token. A [`TokenRegistry`] holds the SHA-256 hashes of the hub's API tokens
//! (never the secrets) and turns a presented secret into a [`Principal`]: a subject and the roles the token
//! carries. Requests without a token act as [`Principal::anonymous`].
//!
//! Authorisation is a casbin policy ([`CASBIN_MODEL`]) over `(subject, object, action)` with glob object
//! patterns ([`object_matches`]) and role inheritance. The [`PolicyEngine`] keeps the policy and a cache of
//! decisions in one immutable snapshot that is swapped whole when the policy changes, so checks take no lock
//! and a new policy applies to the very next check. The crate does no I/O: loading and saving tokens and policy
//! text is the caller's job (the store), which converts its records to [`TokenInfo`].

mod abac;
mod consent;
mod engine;
mod error;
mod glob;
pub mod objects;
mod principal;
mod rules;
mod token;

pub use abac::{DataClass, LabelOrigin, LabelSource, Labelled, Labels, ResolvedLabels, metadata_keys};
pub use consent::Grant;
pub use engine::{CASBIN_MODEL, DEFAULT_CACHE_CAPACITY, DEFAULT_DOMAIN, DEFAULT_POLICY, Explanation, PolicyEngine};
pub use error::{AuthError, PolicyError};
pub use glob::{object_matches, pattern_within};
pub use principal::{ANONYMOUS, Action, Attributes, MAX_NAME_LEN, Principal, validate_name};
pub use rules::{MAX_OBJECT_LEN, validate_object_pattern};
pub use token::{TOKEN_PREFIX, TokenInfo, TokenRegistry};
