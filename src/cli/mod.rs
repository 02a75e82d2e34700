//! The commands other than `serve`: their flags (clap), and what they print. The work is
//! the library's.

pub(crate) mod bench;
pub(crate) mod join;
pub(crate) mod shaper;
pub(crate) mod token;
