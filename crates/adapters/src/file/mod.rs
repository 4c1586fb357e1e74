//! The FILE adapter.
//!
//! - receive (`receive.rs`): poll a folder for a mask, claim each file by renaming it to
//!   `.<name>.mbx-claimed-<instance id>`, submit, delete only after the submit committed;
//!   put files back when the submit fails; reject oversized files to `.mbx-rejected/`.
//! - send (`send.rs`): one file per message named by macros, written to a temp name,
//!   fsync'd and renamed; or append mode.
//!
//! Names starting with `.` belong to the adapter (claimed, temporary and rejected files)
//! and never match a receive mask.

pub mod config;
pub mod receive;
pub mod send;

pub use config::{FileReceiveConfig, FileSendConfig, Mask, NamePattern};
pub use receive::{reclaim_claimed_files, FileReceiveAdapter, PollReport};
pub use send::{FileSendAdapter, FileSendError};
