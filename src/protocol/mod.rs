//! The Postgres wire format, with no I/O: framing of the message stream and the few messages pgmix
//! builds or reads itself. Everything here works on byte buffers and is tested byte for byte.

pub mod codec;
pub mod frames;
pub mod messages;

pub use frames::{FrameError, Framer, Step};
